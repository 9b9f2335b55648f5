//! Each rule of one BuildPolicy, checked against what a build would run with. A policy limit
//! that does not parse refuses (fail closed): a broken policy must not let everything by.

use std::time::Duration;

use super::{Defaults, Sourced, Violation, name};
use crate::api::{BuildPolicy, ImageBuildSpec, REPOSITORY_PREFIX_PATTERN};
use crate::plan::output_repository;
use crate::validation::{parse_quantity, parse_timeout};

/// Every rule of `policy` that `spec` (with `defaults` for what it leaves out) breaks.
pub(super) fn check(
    policy: &BuildPolicy,
    spec: &ImageBuildSpec,
    defaults: &Defaults,
) -> Vec<Violation> {
    let mut found = Found {
        policy: name(policy),
        violations: Vec::new(),
    };
    emulation(policy, spec, defaults, &mut found);
    strategy(policy, spec, defaults, &mut found);
    timeouts(policy, spec, defaults, &mut found);
    retries(policy, spec, defaults, &mut found);
    resources(policy, spec, &mut found);
    signing(policy, spec, &mut found);
    repositories(policy, spec, &mut found);
    found.violations
}

struct Found {
    policy: String,
    violations: Vec<Violation>,
}

impl Found {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.violations.push(Violation {
            policy: self.policy.clone(),
            field: field.into(),
            message: message.into(),
        });
    }
}

/// How an unset field's value is described: `(unset; default Always from BuildPolicy "a")`.
fn shown<T: std::fmt::Debug>(set: bool, value: &Sourced<T>) -> String {
    let from = match &value.policy {
        Some(p) => format!("BuildPolicy {p:?}"),
        None => "the operator".to_string(),
    };
    match set {
        true => String::new(),
        false => format!(" (unset; the default of {from})"),
    }
}

fn list<T: std::fmt::Debug>(values: &[T]) -> String {
    let all: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    match all.is_empty() {
        true => "none".to_string(),
        false => all.join(", "),
    }
}

fn emulation(policy: &BuildPolicy, spec: &ImageBuildSpec, d: &Defaults, found: &mut Found) {
    let Some(allowed) = &policy.spec.allowed_emulation else {
        return;
    };
    let value = spec.emulation.unwrap_or(d.emulation.value);
    if !allowed.contains(&value) {
        let unset = shown(spec.emulation.is_some(), &d.emulation);
        let message = format!(
            "{value:?}{unset} is not allowed here (allowed: {})",
            list(allowed)
        );
        found.add("spec.emulation", message);
    }
}

fn strategy(policy: &BuildPolicy, spec: &ImageBuildSpec, d: &Defaults, found: &mut Found) {
    let Some(allowed) = &policy.spec.allowed_strategies else {
        return;
    };
    let value = spec.strategy.unwrap_or(d.strategy.value);
    if !allowed.contains(&value) {
        let unset = shown(spec.strategy.is_some(), &d.strategy);
        let names: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
        let message = format!(
            "{}{unset} is not allowed here (allowed: {})",
            value.as_str(),
            names.join(", ")
        );
        found.add("spec.strategy", message);
    }
}

/// Every timeout a platform could run with: spec.timeout (or the default when unset) and
/// each platformSettings[].timeout.
fn timeouts(policy: &BuildPolicy, spec: &ImageBuildSpec, d: &Defaults, found: &mut Found) {
    let Some(max_text) = &policy.spec.max_timeout else {
        return;
    };
    let Some(max) = parse_timeout(max_text) else {
        found.add(
            "spec.timeout",
            format!("cannot be checked: the policy's maxTimeout {max_text:?} is not a duration"),
        );
        return;
    };
    let mut check =
        |field: String, text: Option<&str>, value: Option<Duration>, unset: String| match value {
            Some(v) if v <= max => {}
            Some(v) => {
                let shown =
                    text.map_or_else(|| humantime::format_duration(v).to_string(), String::from);
                found.add(
                    field,
                    format!("{shown}{unset} is over the maximum {max_text}"),
                );
            }
            None => found.add(field, "is not a duration"),
        };
    let unset = shown(spec.timeout.is_some(), &d.timeout);
    let top = spec.timeout.as_deref();
    let value = top.map_or(Some(d.timeout.value), parse_timeout);
    check("spec.timeout".into(), top, value, unset);
    for (i, s) in spec.platform_settings.iter().enumerate() {
        let Some(text) = s.timeout.as_deref() else {
            continue;
        };
        let field = format!("spec.platformSettings[{i}].timeout");
        check(field, Some(text), parse_timeout(text), String::new());
    }
}

fn retries(policy: &BuildPolicy, spec: &ImageBuildSpec, d: &Defaults, found: &mut Found) {
    let Some(max) = policy.spec.max_retries else {
        return;
    };
    let unset = shown(spec.retries.is_some(), &d.retries);
    let top = spec.retries.unwrap_or(d.retries.value);
    let mut values = vec![("spec.retries".to_string(), top, unset)];
    for (i, s) in spec.platform_settings.iter().enumerate() {
        if let Some(r) = s.retries {
            values.push((
                format!("spec.platformSettings[{i}].retries"),
                r,
                String::new(),
            ));
        }
    }
    for (field, value, unset) in values {
        if value > max {
            found.add(field, format!("{value}{unset} is over the maximum {max}"));
        }
    }
}

/// spec.resources' cpu and memory, requests and limits, against maxResources.
fn resources(policy: &BuildPolicy, spec: &ImageBuildSpec, found: &mut Found) {
    let Some(max) = &policy.spec.max_resources else {
        return;
    };
    let requested = spec.resources.as_ref();
    for (resource, bound) in [("cpu", &max.cpu), ("memory", &max.memory)] {
        let Some(bound) = bound else { continue };
        let Some(limit) = parse_quantity(bound) else {
            let message = format!(
                "cannot be checked: the policy's maxResources.{resource} {bound:?} is not a quantity"
            );
            found.add(format!("spec.resources.{resource}"), message);
            continue;
        };
        for (kind, map) in [
            ("requests", requested.and_then(|r| r.requests.as_ref())),
            ("limits", requested.and_then(|r| r.limits.as_ref())),
        ] {
            let Some(quantity) = map.and_then(|m| m.get(resource)) else {
                continue;
            };
            let field = format!("spec.resources.{kind}.{resource}");
            match parse_quantity(&quantity.0) {
                Some(v) if v <= limit => {}
                Some(_) => found.add(field, format!("{} is over the maximum {bound}", quantity.0)),
                None => found.add(field, "is not a quantity"),
            }
        }
    }
}

fn signing(policy: &BuildPolicy, spec: &ImageBuildSpec, found: &mut Found) {
    let allowed = policy.spec.signing.as_ref().is_none_or(|s| s.allowed);
    if spec.output.signing.is_some() && !allowed {
        found.add(
            "spec.output.signing",
            "is not allowed here (signing.allowed: false)",
        );
    }
}

/// spec.output.image and spec.cache.image against allowedRepositories.
fn repositories(policy: &BuildPolicy, spec: &ImageBuildSpec, found: &mut Found) {
    let Some(prefixes) = &policy.spec.allowed_repositories else {
        return;
    };
    let mut images = vec![("spec.output.image", output_repository(&spec.output.image))];
    if let Some(cache) = &spec.cache {
        images.push(("spec.cache.image", cache.image.as_str()));
    }
    for (field, repository) in images {
        if !prefixes.iter().any(|p| is_under(repository, p)) {
            let message = format!(
                "{repository} is not under an allowed repository (allowed: {})",
                prefixes.join(", ")
            );
            found.add(field, message);
        }
    }
}

/// Whether `repository` is `prefix` or lies below it at a `/`. Both must be well-formed
/// repository references: a prefix or repository holding `@`, `#`, a scheme, spaces or
/// upper-case path letters matches nothing.
pub(super) fn is_under(repository: &str, prefix: &str) -> bool {
    static PREFIX: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(REPOSITORY_PREFIX_PATTERN).expect("archforge's own pattern compiles")
    });
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    if !PREFIX.is_match(prefix) || !PREFIX.is_match(repository) {
        return false;
    }
    repository == prefix
        || repository
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}
