//! The Rust twin of the CRD's schema and CEL rules.
//!
//! Kubernetes 1.24 does not enforce CEL, and `archforge build --local` and `archforge render`
//! read files no API server has seen, so every rule of the schema exists here as well, with
//! a message that names the field. Tests check both layers reject the same inputs.

use std::fmt;
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};

use crate::api::{
    BUILD_ARG_NAME_PATTERN, DNS_LABEL_PATTERN, DURATION_PATTERN, GIT_REF_PATTERN,
    GIT_URL_PASSWORD_MESSAGE, GIT_URL_PASSWORD_PATTERN, GIT_URL_PATTERN, GIT_URL_QUERY_MESSAGE,
    GIT_URL_QUERY_PATTERN, GIT_URL_USERINFO_MESSAGE, GIT_URL_USERINFO_PATTERN, IMAGE_REF_PATTERN,
    ImageBuildSpec, KNOWN_PLATFORMS, LABEL_KEY_MESSAGE, LABEL_KEY_PATTERN,
    LABEL_PREFIX_TOO_LONG_PATTERN, LABEL_VALUE_PATTERN, MAX_LABEL_KEY_LENGTH,
    MAX_NODE_SELECTOR_ENTRIES, MAX_RESOURCE_ENTRIES, MAX_TIMEOUT_SECONDS, MAX_TOLERATIONS,
    QUANTITY_PATTERN, RELATIVE_PATH_PATTERN, REPOSITORY_PATTERN, RESERVED_NODE_SELECTOR_KEYS,
    RESOURCE_CLAIMS_MESSAGE, RESOURCE_NAME_MESSAGE, RESOURCE_NAME_PATTERN, TARGET_PATTERN,
    TOLERATION_EFFECTS, TOLERATION_EMPTY_KEY_MESSAGE, TOLERATION_EXISTS_VALUE_MESSAGE,
    TOLERATION_OPERATORS, TOLERATION_SECONDS_MESSAGE,
};

/// One broken rule: the field it concerns and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// JSON path of the field, for example `spec.platforms[1]`.
    pub field: String,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every broken rule of a spec, in field order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidSpec(pub Vec<Invalid>);

impl fmt::Display for InvalidSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&all.join("; "))
    }
}

impl std::error::Error for InvalidSpec {}

/// An ImageBuild whose spec passed every rule: what [`crate::plan::plan`] takes, so a plan is
/// never made from an unchecked spec and the check runs once per reconcile.
#[derive(Clone, Copy, Debug)]
pub struct ValidSpec<'a> {
    build: &'a crate::api::ImageBuild,
}

impl<'a> ValidSpec<'a> {
    /// Checks `build`'s spec ([`ImageBuildSpec::validate`]).
    pub fn check(build: &'a crate::api::ImageBuild) -> Result<Self, InvalidSpec> {
        build.spec.validate()?;
        Ok(ValidSpec { build })
    }

    pub fn imagebuild(&self) -> &'a crate::api::ImageBuild {
        self.build
    }
}

fn compiled(pattern: &str) -> Regex {
    Regex::new(pattern).expect("archforge's own patterns compile")
}

static IMAGE_REF: LazyLock<Regex> = LazyLock::new(|| compiled(IMAGE_REF_PATTERN));
static REPOSITORY: LazyLock<Regex> = LazyLock::new(|| compiled(REPOSITORY_PATTERN));
static DNS_LABEL: LazyLock<Regex> = LazyLock::new(|| compiled(DNS_LABEL_PATTERN));
static GIT_URL: LazyLock<Regex> = LazyLock::new(|| compiled(GIT_URL_PATTERN));
static GIT_REF: LazyLock<Regex> = LazyLock::new(|| compiled(GIT_REF_PATTERN));
static RELATIVE_PATH: LazyLock<Regex> = LazyLock::new(|| compiled(RELATIVE_PATH_PATTERN));
static BUILD_ARG_NAME: LazyLock<Regex> = LazyLock::new(|| compiled(BUILD_ARG_NAME_PATTERN));
static TARGET: LazyLock<Regex> = LazyLock::new(|| compiled(TARGET_PATTERN));
static DURATION: LazyLock<Regex> = LazyLock::new(|| compiled(DURATION_PATTERN));
static GIT_URL_PASSWORD: LazyLock<Regex> = LazyLock::new(|| compiled(GIT_URL_PASSWORD_PATTERN));
static GIT_URL_USERINFO: LazyLock<Regex> = LazyLock::new(|| compiled(GIT_URL_USERINFO_PATTERN));
static GIT_URL_QUERY: LazyLock<Regex> = LazyLock::new(|| compiled(GIT_URL_QUERY_PATTERN));
static LABEL_KEY: LazyLock<Regex> = LazyLock::new(|| compiled(LABEL_KEY_PATTERN));
static LABEL_PREFIX_TOO_LONG: LazyLock<Regex> =
    LazyLock::new(|| compiled(LABEL_PREFIX_TOO_LONG_PATTERN));
static LABEL_VALUE: LazyLock<Regex> = LazyLock::new(|| compiled(LABEL_VALUE_PATTERN));
static RESOURCE_NAME: LazyLock<Regex> = LazyLock::new(|| compiled(RESOURCE_NAME_PATTERN));
static QUANTITY: LazyLock<Regex> = LazyLock::new(|| compiled(QUANTITY_PATTERN));

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

/// Whether `name` is a resource name Kubernetes accepts in a container's requests or limits.
pub fn is_resource_name(name: &str) -> bool {
    RESOURCE_NAME.is_match(name) && !LABEL_PREFIX_TOO_LONG.is_match(name)
}

/// The largest quantity Kubernetes represents, in nano-units: `2^63-1` units. Larger values
/// are capped by the API server, so they compare equal here too.
const MAX_NANOS: i128 = i64::MAX as i128 * 1_000_000_000;

/// Parses a Kubernetes quantity (`500m`, `2`, `1.5Gi`, `1e3`) into nano-units, rounding up
/// sub-nano fractions and capping at `2^63-1` units as the API server does. `None` when the
/// text is not a quantity.
pub fn parse_quantity(text: &str) -> Option<i128> {
    let (negative, rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let number_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
        return None;
    }
    let (exp10, exp2): (i64, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        _ => {
            // Go's ParseInt decides what an exponent is: optional sign, decimal digits.
            let exponent = suffix.strip_prefix(['e', 'E'])?;
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (exponent.parse().ok()?, 0)
        }
    };
    // The significand as an integer of at most 38 digits (more cannot change the capped or
    // nano-rounded result); dropped non-zero digits only matter for rounding up.
    let mut significand: u128 = 0;
    let mut digits = 0u32;
    let mut scale = exp10.checked_sub(fraction.len() as i64)?;
    let mut dropped = false;
    for b in whole.bytes().chain(fraction.bytes()) {
        let d = u128::from(b - b'0');
        if significand == 0 && d == 0 {
            continue;
        }
        if digits < 38 {
            significand = significand * 10 + d;
            digits += 1;
        } else {
            scale += 1;
            dropped |= d != 0;
        }
    }
    let cap = MAX_NANOS as u128;
    let nano_scale = scale + 9;
    let nanos = if significand == 0 {
        0
    } else if nano_scale >= 0 {
        let mut n = significand.saturating_mul(1 << exp2);
        for _ in 0..nano_scale.min(40) {
            n = n.saturating_mul(10);
        }
        n
    } else {
        let shifted = significand.checked_mul(1 << exp2);
        let base = shifted.unwrap_or(significand);
        let divisor = 10u128.checked_pow(u32::try_from(-nano_scale).ok()?);
        let mut n = match divisor {
            Some(divisor) => {
                base.div_ceil(divisor) + u128::from(dropped && base.is_multiple_of(divisor))
            }
            None => 1,
        };
        if shifted.is_none() {
            n = n.saturating_mul(1 << exp2);
        }
        n
    };
    let nanos = nanos.min(cap) as i128;
    Some(if negative { -nanos } else { nanos })
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

/// Whether git would hand `-...` to ssh as the user or host of `url`.
fn user_or_host_is_an_option(url: &str) -> bool {
    let authority = match url.split_once("://") {
        Some((_, rest)) => rest.split(['/', '?', '#']).next().unwrap_or(""),
        None => url.split(':').next().unwrap_or(""),
    };
    let (user, host) = authority.rsplit_once('@').unwrap_or(("", authority));
    user.starts_with('-') || host.starts_with('-')
}

/// Parses a timeout in the `1h30m` form the schema allows.
pub fn parse_timeout(value: &str) -> Option<Duration> {
    if value.is_empty() || !DURATION.is_match(value) {
        return None;
    }
    humantime::parse_duration(value).ok()
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

#[derive(Default)]
struct Problems(Vec<Invalid>);

impl Problems {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(Invalid {
            field: field.into(),
            message: message.into(),
        });
    }

    fn check_pattern(&mut self, field: &str, value: &str, re: &Regex, max: usize, what: &str) {
        if value.chars().count() > max {
            self.add(field, format!("must be at most {max} characters"));
        } else if !re.is_match(value) {
            // Never the value itself: it may be a secret pasted into the wrong field, and
            // the controller copies these messages into status and Events.
            self.add(field, format!("is not {what}"));
        }
    }

    fn check_git_url(&mut self, field: &str, url: &str) {
        if url.chars().count() > 2048 {
            self.add(field, "must be at most 2048 characters");
            return;
        }
        for (re, message) in [
            (&*GIT_URL_PASSWORD, GIT_URL_PASSWORD_MESSAGE),
            (&*GIT_URL_USERINFO, GIT_URL_USERINFO_MESSAGE),
            (&*GIT_URL_QUERY, GIT_URL_QUERY_MESSAGE),
        ] {
            if re.is_match(url) {
                self.add(field, message);
            }
        }
        if !GIT_URL.is_match(url) {
            if user_or_host_is_an_option(url) {
                self.add(
                    field,
                    "the user and host of a git URL must not start with '-' (git would pass them to ssh as options)",
                );
            } else {
                self.add(
                    field,
                    "is not a git URL (https://, http://, ssh://, git:// or user@host:path)",
                );
            }
        }
    }

    fn check_node_selector(&mut self, selector: &std::collections::BTreeMap<String, String>) {
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

    fn check_tolerations(&mut self, tolerations: &[Toleration]) {
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

    fn check_resources(&mut self, resources: &ResourceRequirements) {
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
                        "is not a Kubernetes quantity (like 500m, 2, 512Mi or 4Gi)",
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

    fn check_relative_path(&mut self, field: &str, value: &str) {
        self.check_pattern(
            field,
            value,
            &RELATIVE_PATH,
            1024,
            "a relative path (letters, digits, '.', '_', '-', '/'; not starting with '/' or '-')",
        );
        if value.split('/').any(|segment| segment == "..") {
            self.add(field, "must stay inside the repository (no '..')");
        }
    }
}

impl ImageBuildSpec {
    /// Checks every rule the CRD schema and its CEL rules express.
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        let mut p = Problems::default();
        let git = &self.source.git;
        p.check_git_url("spec.source.git.url", &git.url);
        p.check_pattern(
            "spec.source.git.ref",
            &git.r#ref,
            &GIT_REF,
            255,
            "a branch, tag or commit SHA",
        );
        if git.depth.is_some_and(|d| d < 0) {
            p.add("spec.source.git.depth", "must be 0 (full history) or more");
        }
        if let Some(secret) = &git.credentials_secret {
            p.check_pattern(
                "spec.source.git.credentialsSecret",
                secret,
                &DNS_LABEL,
                63,
                "a valid Secret name (lowercase DNS label)",
            );
        }
        p.check_relative_path("spec.source.contextDir", &self.source.context_dir);
        p.check_relative_path("spec.source.dockerfile", &self.source.dockerfile);

        if self.platforms.is_empty() {
            p.add("spec.platforms", "at least one platform is required");
        }
        if self.platforms.len() > 8 {
            p.add("spec.platforms", "at most 8 platforms may be requested");
        }
        for (i, platform) in self.platforms.iter().enumerate() {
            if !KNOWN_PLATFORMS.contains(&platform.as_str()) {
                p.add(
                    format!("spec.platforms[{i}]"),
                    format!(
                        "unsupported platform {platform:?}; supported: {}",
                        KNOWN_PLATFORMS.join(", ")
                    ),
                );
            } else if self.platforms[..i].contains(platform) {
                p.add(
                    format!("spec.platforms[{i}]"),
                    format!("{platform} is listed more than once"),
                );
            }
        }

        p.check_pattern(
            "spec.output.image",
            &self.output.image,
            &IMAGE_REF,
            255,
            "an image reference with a registry host and a tag (registry.example.com/team/app:v1; tag at most 110 characters)",
        );
        if let Some(secret) = &self.output.push_secret {
            p.check_pattern(
                "spec.output.pushSecret",
                secret,
                &DNS_LABEL,
                63,
                "a valid Secret name (lowercase DNS label)",
            );
        }

        if self.build_args.len() > 64 {
            p.add("spec.buildArgs", "at most 64 build arguments");
        }
        for (i, arg) in self.build_args.iter().enumerate() {
            let field = format!("spec.buildArgs[{i}].name");
            p.check_pattern(&field, &arg.name, &BUILD_ARG_NAME, 128, "a valid ARG name");
            if self.build_args[..i].iter().any(|a| a.name == arg.name) {
                p.add(field, format!("{} is given more than once", arg.name));
            }
            if arg.value.chars().count() > 4096 {
                p.add(
                    format!("spec.buildArgs[{i}].value"),
                    "must be at most 4096 characters",
                );
            }
        }
        if let Some(target) = &self.target {
            p.check_pattern("spec.target", target, &TARGET, 128, "a build stage name");
        }
        if let Some(cache) = &self.cache {
            p.check_pattern(
                "spec.cache.image",
                &cache.image,
                &REPOSITORY,
                255,
                "a repository with a registry host and no tag (registry.example.com/team/app-cache)",
            );
        }
        if let Some(resources) = &self.resources {
            p.check_resources(resources);
        }
        if let Some(timeout) = &self.timeout {
            match parse_timeout(timeout) {
                Some(d) if !d.is_zero() && d.as_secs() <= MAX_TIMEOUT_SECONDS => {}
                _ => p.add(
                    "spec.timeout",
                    format!(
                        "{timeout:?} is not a positive duration of at most 24h (like 30m or 1h30m)"
                    ),
                ),
            }
        }
        if let Some(retries) = self.retries
            && !(0..=10).contains(&retries)
        {
            p.add("spec.retries", "must be between 0 and 10");
        }
        if let Some(selector) = &self.node_selector {
            p.check_node_selector(selector);
        }
        if let Some(tolerations) = &self.tolerations {
            p.check_tolerations(tolerations);
        }

        if p.0.is_empty() {
            Ok(())
        } else {
            Err(InvalidSpec(p.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NANO: i128 = 1_000_000_000;

    #[test]
    fn quantities_parse_to_nano_units() {
        for (text, nanos) in [
            ("0", 0),
            ("2", 2 * NANO),
            ("+2", 2 * NANO),
            ("500m", NANO / 2),
            ("0.5", NANO / 2),
            (".5", NANO / 2),
            ("5.", 5 * NANO),
            ("1.5Gi", 1_610_612_736 * NANO),
            ("1536Mi", 1_610_612_736 * NANO),
            ("1Ki", 1024 * NANO),
            ("1k", 1000 * NANO),
            ("1e3", 1000 * NANO),
            ("1E3", 1000 * NANO),
            ("1E", 1_000_000_000_000_000_000 * NANO),
            ("1e-3", NANO / 1000),
            ("250u", 250_000),
            ("7n", 7),
            ("-1", -NANO),
            ("0001.000", NANO),
        ] {
            assert_eq!(parse_quantity(text), Some(nanos), "{text}");
        }
    }

    #[test]
    fn sub_nano_fractions_round_up_and_huge_values_are_capped() {
        assert_eq!(parse_quantity("0.1n"), Some(1));
        assert_eq!(parse_quantity("1.0000000001"), Some(NANO + 1));
        assert_eq!(parse_quantity("1e-30"), Some(1));
        assert_eq!(parse_quantity("9223372036854775807"), Some(MAX_NANOS));
        assert_eq!(parse_quantity("100Ei"), Some(MAX_NANOS));
        assert_eq!(parse_quantity("1e400"), Some(MAX_NANOS));
        assert_eq!(
            parse_quantity("0.00000000012345678901234567890123456789012345"),
            Some(1)
        );
        assert_eq!(
            parse_quantity("99999999999999999999999999999999999999999"),
            Some(MAX_NANOS)
        );
    }

    #[test]
    fn non_quantities_are_refused() {
        for text in [
            "", "-", "+", ".", "1..2", "1.2.3", "Gi", "1GB", "1g", "1e", "1e+", "1e1.5", "1 Gi",
            "1Gi ", "0x10", "1K", "1mi", "--1",
        ] {
            assert_eq!(parse_quantity(text), None, "{text:?}");
        }
    }

    #[test]
    fn the_schema_pattern_and_the_parser_agree() {
        for text in [
            "2", "500m", "1.5Gi", ".5", "5.", "1e3", "1E", "1e-3", "+1", "1e1.5", "1GB", "1e",
            "-1", "1K", "Gi", "",
        ] {
            let by_parser = !text.starts_with('-') && parse_quantity(text).is_some();
            assert_eq!(QUANTITY.is_match(text), by_parser, "{text:?}");
        }
    }

    #[test]
    fn git_urls_with_an_option_for_user_or_host_are_recognised() {
        for url in [
            "-oProxyCommand=x@host:repo.git",
            "git@-oProxyCommand=x:repo.git",
            "ssh://-oProxyCommand=x@host/repo.git",
            "ssh://git@-host/repo.git",
            "https://-host/repo.git",
        ] {
            assert!(user_or_host_is_an_option(url), "{url}");
        }
        for url in ["git@github.com:org/repo.git", "https://host/-repo.git"] {
            assert!(!user_or_host_is_an_option(url), "{url}");
        }
    }
}
