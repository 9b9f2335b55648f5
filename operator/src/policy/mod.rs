//! What the BuildPolicies selecting an ImageBuild's namespace allow it, and the defaults they
//! give it. Pure: no client, no clock; the controller passes what its stores hold.
//!
//! Every policy that selects a namespace applies: a spec must satisfy each of them (the most
//! restrictive combination). Defaults come from the first policy, by name, that sets the
//! field, then from the operator; the value a build would run with (the spec's, else the
//! default) is what is checked, so a default another policy forbids is a violation that
//! names the forbidding policy, not a silent choice. A spec over a policy is refused, never
//! clamped.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::api::{BuildPolicy, Emulation, ImageBuildSpec, Strategy};
use crate::settings::BuilderSettings;
use crate::validation::parse_timeout;

mod rules;
mod selector;
#[cfg(test)]
mod tests;

pub use selector::selects;

/// One rule of one policy that a spec breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The BuildPolicy's name.
    pub policy: String,
    /// The ImageBuild field, for example `spec.emulation`.
    pub field: String,
    /// What is not allowed, and what is.
    pub message: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "BuildPolicy {:?}: {} {}",
            self.policy, self.field, self.message
        )
    }
}

/// Every violation of a spec, policy by policy (in name order), field by field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violations(pub Vec<Violation>);

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&all.join("; "))
    }
}

impl std::error::Error for Violations {}

impl Violations {
    /// The names of the policies broken, each once, in name order.
    pub fn policies(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.0.iter().map(|v| v.policy.as_str()).collect();
        names.dedup();
        names
    }
}

/// A default, with where it came from (for messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sourced<T> {
    pub value: T,
    /// The BuildPolicy that set it; `None`: the operator's default.
    pub policy: Option<String>,
}

/// The defaults a build of the namespace gets for what its spec leaves out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Defaults {
    pub timeout: Sourced<Duration>,
    pub emulation: Sourced<Emulation>,
    pub strategy: Sourced<Strategy>,
    pub retries: Sourced<i32>,
}

impl Defaults {
    /// The operator's settings with these defaults: what [`crate::plan::plan`] takes.
    pub fn settings(&self, operator: &BuilderSettings) -> BuilderSettings {
        BuilderSettings {
            default_timeout: self.timeout.value,
            default_emulation: self.emulation.value,
            default_strategy: self.strategy.value,
            default_retries: self.retries.value,
            ..operator.clone()
        }
    }
}

/// The policies that select a namespace with `labels`, in name order.
pub fn selecting<'a>(
    policies: impl IntoIterator<Item = &'a BuildPolicy>,
    labels: &BTreeMap<String, String>,
) -> Vec<&'a BuildPolicy> {
    let mut selected: Vec<&BuildPolicy> = policies
        .into_iter()
        .filter(|p| selects(p.spec.namespace_selector.as_ref(), labels))
        .collect();
    selected.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    selected
}

/// The defaults of `policies` (already [`selecting`] the namespace), then the operator's.
/// A policy default that does not parse is skipped here and reported by [`evaluate`].
pub fn defaults(policies: &[&BuildPolicy], operator: &BuilderSettings) -> Defaults {
    fn first<T>(
        policies: &[&BuildPolicy],
        get: impl Fn(&crate::api::PolicyDefaults) -> Option<T>,
        fallback: T,
    ) -> Sourced<T> {
        policies
            .iter()
            .find_map(|p| {
                let value = get(p.spec.defaults.as_ref()?)?;
                Some(Sourced {
                    value,
                    policy: Some(name(p)),
                })
            })
            .unwrap_or(Sourced {
                value: fallback,
                policy: None,
            })
    }
    Defaults {
        timeout: first(
            policies,
            |d| d.timeout.as_deref().and_then(parse_timeout),
            operator.default_timeout,
        ),
        emulation: first(policies, |d| d.emulation, operator.default_emulation),
        strategy: first(policies, |d| d.strategy, operator.default_strategy),
        retries: first(policies, |d| d.retries, operator.default_retries),
    }
}

/// Evaluates `spec`, of a namespace with `labels`, against every policy: the defaults its
/// build runs with, or every violation.
pub fn evaluate(
    spec: &ImageBuildSpec,
    labels: &BTreeMap<String, String>,
    policies: &[&BuildPolicy],
    operator: &BuilderSettings,
) -> Result<Defaults, Violations> {
    let applying = selecting(policies.iter().copied(), labels);
    let defaults = defaults(&applying, operator);
    let violations: Vec<Violation> = applying
        .iter()
        .flat_map(|p| rules::check(p, spec, &defaults))
        .collect();
    match violations.is_empty() {
        true => Ok(defaults),
        false => Err(Violations(violations)),
    }
}

/// The most builds one policy lets run at once in each namespace it selects.
pub fn namespace_limit(policy: &BuildPolicy) -> Option<u32> {
    // The schema says at least 1; a 0 that got past it holds as tightly as it can, never
    // as "no limit".
    policy.spec.max_concurrent_builds.map(|n| n.max(1))
}

/// The most builds the policies selecting a namespace let run at once there: the smallest.
pub fn namespace_limit_of(policies: &[&BuildPolicy]) -> Option<u32> {
    policies.iter().filter_map(|p| namespace_limit(p)).min()
}

fn name(policy: &BuildPolicy) -> String {
    policy.metadata.name.clone().unwrap_or_default()
}
