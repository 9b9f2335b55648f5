//! The rules Kubernetes itself applies to the fields archforge copies into a builder pod:
//! node selector labels, tolerations and container resources.

use std::sync::LazyLock;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use regex::Regex;

use super::{Problems, compiled, parse_quantity};
use crate::api::{
    LABEL_KEY_MESSAGE, LABEL_KEY_PATTERN, LABEL_PREFIX_TOO_LONG_PATTERN, LABEL_VALUE_PATTERN,
    MAX_LABEL_KEY_LENGTH, MAX_NODE_SELECTOR_ENTRIES, MAX_QUANTITY_EXPONENT_DIGITS,
    MAX_RESOURCE_ENTRIES, MAX_TOLERATIONS, QUANTITY_PATTERN, RESERVED_NODE_SELECTOR_KEYS,
    RESOURCE_CLAIMS_MESSAGE, RESOURCE_NAME_MESSAGE, RESOURCE_NAME_PATTERN, TOLERATION_EFFECTS,
    TOLERATION_EMPTY_KEY_MESSAGE, TOLERATION_EXISTS_VALUE_MESSAGE, TOLERATION_OPERATORS,
    TOLERATION_SECONDS_MESSAGE,
};

static LABEL_KEY: LazyLock<Regex> = LazyLock::new(|| compiled(LABEL_KEY_PATTERN));
static LABEL_PREFIX_TOO_LONG: LazyLock<Regex> =
    LazyLock::new(|| compiled(LABEL_PREFIX_TOO_LONG_PATTERN));
static LABEL_VALUE: LazyLock<Regex> = LazyLock::new(|| compiled(LABEL_VALUE_PATTERN));
static RESOURCE_NAME: LazyLock<Regex> = LazyLock::new(|| compiled(RESOURCE_NAME_PATTERN));
pub(super) static QUANTITY: LazyLock<Regex> = LazyLock::new(|| compiled(QUANTITY_PATTERN));

/// Whether `key` is a Kubernetes label key (qualified name), as the CRD's CEL rule checks it.
pub fn is_label_key(key: &str) -> bool {
    key.len() <= MAX_LABEL_KEY_LENGTH
        && LABEL_KEY.is_match(key)
        && !LABEL_PREFIX_TOO_LONG.is_match(key)
}

/// Whether `value` is a Kubernetes label value (possibly empty).
pub fn is_label_value(value: &str) -> bool {
    value.len() <= 63 && LABEL_VALUE.is_match(value)
}

/// `--build-namespace`: empty (no build namespace) or a namespace name, a DNS-1123 label
/// of at most 63 characters. It becomes a path segment of every Job, pod and Secret request.
pub fn build_namespace(text: &str) -> Result<String, String> {
    let label = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = text.as_bytes();
    let ok = text.is_empty()
        || (text.len() <= 63
            && bytes.iter().all(|&b| label(b) || b == b'-')
            && bytes.first().copied().is_some_and(label)
            && bytes.last().copied().is_some_and(label));
    match ok {
        true => Ok(text.to_string()),
        false => Err(format!(
            "{text:?} is not a namespace name (lowercase letters, digits and '-', at most 63, starting and ending alphanumeric)"
        )),
    }
}

/// Whether `name` is a resource name Kubernetes accepts in a container's requests or limits.
pub fn is_resource_name(name: &str) -> bool {
    RESOURCE_NAME.is_match(name) && !LABEL_PREFIX_TOO_LONG.is_match(name)
}

/// Whether Kubernetes lets a request be below its limit for this resource: not for extended
/// resources (a domain prefix other than kubernetes.io) and not for hugepages.
fn overcommit_allowed(name: &str) -> bool {
    !is_extended_resource(name) && !name.starts_with("hugepages-")
}

/// Extended resources (device plugins and the like) are counted in whole units.
fn is_extended_resource(name: &str) -> bool {
    name.contains('/') && !name.contains("kubernetes.io/")
}

/// `base[key]` when the key is printable (a valid name), else `base`: a malformed key may be
/// long or hostile and is already reported on `base`.
fn keyed(base: &str, key: &str, valid: bool) -> String {
    if valid {
        format!("{base}[{key}]")
    } else {
        base.to_string()
    }
}

impl Problems {
    pub(super) fn check_node_selector(
        &mut self,
        selector: &std::collections::BTreeMap<String, String>,
    ) {
        if selector.len() > MAX_NODE_SELECTOR_ENTRIES {
            self.add(
                "spec.nodeSelector",
                format!("at most {MAX_NODE_SELECTOR_ENTRIES} entries"),
            );
        }
        if RESERVED_NODE_SELECTOR_KEYS
            .iter()
            .any(|key| selector.contains_key(*key))
        {
            self.add(
                "spec.nodeSelector",
                "kubernetes.io/arch and kubernetes.io/os are set by archforge from spec.platforms",
            );
        }
        if !selector.keys().all(|key| is_label_key(key)) {
            self.add("spec.nodeSelector", LABEL_KEY_MESSAGE);
        }
        for (key, value) in selector {
            if !is_label_value(value) {
                self.add(
                    keyed("spec.nodeSelector", key, is_label_key(key)),
                    "must be a label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit (or empty)",
                );
            }
        }
    }

    pub(super) fn check_tolerations(&mut self, tolerations: &[Toleration]) {
        if tolerations.len() > MAX_TOLERATIONS {
            self.add(
                "spec.tolerations",
                format!("at most {MAX_TOLERATIONS} tolerations"),
            );
        }
        for (i, t) in tolerations.iter().enumerate() {
            let field = format!("spec.tolerations[{i}]");
            let key = t.key.as_deref().unwrap_or("");
            let operator = t.operator.as_deref().unwrap_or("");
            let value = t.value.as_deref().unwrap_or("");
            let effect = t.effect.as_deref().unwrap_or("");
            if !TOLERATION_OPERATORS.contains(&operator) {
                self.add(
                    format!("{field}.operator"),
                    "must be Exists or Equal (empty means Equal)",
                );
            }
            if !TOLERATION_EFFECTS.contains(&effect) {
                self.add(
                    format!("{field}.effect"),
                    "must be NoSchedule, PreferNoSchedule or NoExecute (empty matches every effect)",
                );
            }
            if !key.is_empty() && !is_label_key(key) {
                self.add(
                    format!("{field}.key"),
                    format!("must be a label key: {LABEL_KEY_MESSAGE}"),
                );
            }
            if !is_label_value(value) {
                self.add(
                    format!("{field}.value"),
                    "must be a label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit (or empty)",
                );
            }
            if key.is_empty() && operator != "Exists" {
                self.add(&field, TOLERATION_EMPTY_KEY_MESSAGE);
            }
            if operator == "Exists" && !value.is_empty() {
                self.add(&field, TOLERATION_EXISTS_VALUE_MESSAGE);
            }
            if t.toleration_seconds.is_some() && effect != "NoExecute" {
                self.add(&field, TOLERATION_SECONDS_MESSAGE);
            }
        }
    }

    pub(super) fn check_resources(&mut self, resources: &ResourceRequirements) {
        if resources.claims.as_ref().is_some_and(|c| !c.is_empty()) {
            self.add("spec.resources.claims", RESOURCE_CLAIMS_MESSAGE);
        }
        let empty = Default::default();
        let limits = resources.limits.as_ref().unwrap_or(&empty);
        let requests = resources.requests.as_ref().unwrap_or(&empty);
        let mut parsed = [Vec::new(), Vec::new()];
        for (slot, (kind, map)) in [("limits", limits), ("requests", requests)]
            .into_iter()
            .enumerate()
        {
            let base = format!("spec.resources.{kind}");
            if map.len() > MAX_RESOURCE_ENTRIES {
                self.add(&base, format!("at most {MAX_RESOURCE_ENTRIES} resources"));
            }
            if !map.keys().all(|name| is_resource_name(name)) {
                self.add(&base, RESOURCE_NAME_MESSAGE);
            }
            for (name, quantity) in map {
                let field = keyed(&base, name, is_resource_name(name));
                let text = quantity.0.as_str();
                if text.starts_with('-') {
                    self.add(field, "must not be negative");
                    continue;
                }
                let nanos = QUANTITY
                    .is_match(text)
                    .then(|| parse_quantity(text))
                    .flatten();
                let Some(nanos) = nanos else {
                    self.add(
                        field,
                        format!("is not a Kubernetes quantity (like 500m, 2, 512Mi, 4Gi or 1e3; an exponent has at most {MAX_QUANTITY_EXPONENT_DIGITS} digits)"),
                    );
                    continue;
                };
                if is_extended_resource(name) && nanos % 1_000_000_000 != 0 {
                    self.add(field, "must be a whole number for an extended resource");
                }
                // Only well-formed names are compared, so the messages below can name them.
                if is_resource_name(name) {
                    parsed[slot].push((name.as_str(), nanos));
                }
            }
        }
        let [limits, requests] = parsed;
        for (name, request) in &requests {
            let field = keyed("spec.resources.requests", name, true);
            match limits.iter().find(|(n, _)| n == name) {
                Some((_, limit)) if !overcommit_allowed(name) && request != limit => self.add(
                    field,
                    format!("must equal spec.resources.limits[{name}]: extended resources and hugepages cannot be overcommitted"),
                ),
                Some((_, limit)) if request > limit => self.add(
                    field,
                    format!("must not exceed spec.resources.limits[{name}]"),
                ),
                None if !overcommit_allowed(name) => self.add(
                    keyed("spec.resources.limits", name, true),
                    "is required: extended resources and hugepages need a limit when requested",
                ),
                _ => {}
            }
        }
        let hugepages = limits
            .iter()
            .chain(&requests)
            .any(|(n, _)| n.starts_with("hugepages-"));
        let cpu_or_memory = limits
            .iter()
            .chain(&requests)
            .any(|(n, _)| *n == "cpu" || *n == "memory");
        if hugepages && !cpu_or_memory {
            self.add(
                "spec.resources",
                "hugepages require a cpu or memory request or limit",
            );
        }
    }
}

#[cfg(test)]
mod build_namespace_tests {
    use super::build_namespace;

    #[test]
    fn a_build_namespace_is_a_namespace_name_or_nothing() {
        for good in ["", "archforge-builds", "b", "a1"] {
            assert_eq!(build_namespace(good).as_deref(), Ok(good));
        }
        let long = "a".repeat(64);
        for bad in [
            "Builds",
            "-b",
            "b-",
            "a/b",
            "../kube-system",
            "a.b",
            &long,
            "b\n",
        ] {
            assert!(build_namespace(bad).is_err(), "{bad:?}");
        }
    }
}
