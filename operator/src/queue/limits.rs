//! The operator's concurrency limits on builder Jobs, and how their flags are read. Pure.

use std::collections::BTreeMap;

/// How many builder Jobs may run at once. 0 (or an architecture left out) means unlimited;
/// all unlimited is the default and today's behaviour: every run starts at once.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Builder Jobs running at once in the whole cluster.
    pub total: u32,
    /// Builder Jobs running at once per node architecture (an emulated build counts
    /// against the architecture of the node that emulates it).
    pub per_arch: BTreeMap<String, u32>,
    /// Builder Jobs running at once per ImageBuild namespace.
    pub per_namespace: u32,
    /// The per-namespace limits BuildPolicies set (`maxConcurrentBuilds`), by namespace:
    /// in a namespace with one, the smaller of it and `per_namespace` holds.
    #[serde(skip)]
    pub from_policies: BTreeMap<String, u32>,
}

fn limit(n: u32) -> Option<u32> {
    (n > 0).then_some(n)
}

impl Limits {
    /// Whether no limit is set: the queue is not consulted at all.
    pub fn is_unlimited(&self) -> bool {
        self.total == 0
            && self.per_arch.is_empty()
            && self.per_namespace == 0
            && self.from_policies.is_empty()
    }

    /// The limit on the whole cluster.
    pub fn total_limit(&self) -> Option<u32> {
        limit(self.total)
    }

    /// The limit on node architecture `arch`.
    pub fn arch_limit(&self, arch: &str) -> Option<u32> {
        self.per_arch.get(arch).copied().and_then(limit)
    }

    /// The limit on namespace `namespace`. The operator-wide setting today; the hook where
    /// a per-namespace policy can supply its own.
    pub fn namespace_limit(&self, namespace: &str) -> Option<u32> {
        let policy = self.from_policies.get(namespace).copied().and_then(limit);
        match (limit(self.per_namespace), policy) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Whether `arch` reads as a Kubernetes architecture name (`kubernetes.io/arch`):
/// lowercase letters, digits and `_`, at most 32 characters.
fn is_arch_name(arch: &str) -> bool {
    !arch.is_empty()
        && arch.len() <= 32
        && arch
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// `--max-running-per-arch`: `arch=N` pairs separated by commas (`arm64=4,amd64=8`), each
/// N at least 1 and each architecture once; empty sets no limit.
pub fn parse_per_arch(text: &str) -> Result<BTreeMap<String, u32>, String> {
    let mut limits = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((arch, n)) = pair.split_once('=') else {
            return Err(format!("{pair:?} is not arch=N (for example arm64=4)"));
        };
        let arch = arch.trim();
        if !is_arch_name(arch) {
            return Err(format!(
                "{arch:?} in {pair:?} is not an architecture name (as kubernetes.io/arch says it, for example arm64)"
            ));
        }
        let n = match n.trim().parse::<u32>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(format!(
                    "{pair:?}: the limit must be a whole number of at least 1 (leave the architecture out for no limit)"
                ));
            }
        };
        if limits.insert(arch.to_string(), n).is_some() {
            return Err(format!("{arch} is given more than once"));
        }
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_limit_holds_in_its_namespace_the_smaller_of_the_two() {
        let mut limits = Limits {
            per_namespace: 5,
            ..Default::default()
        };
        limits.from_policies.insert("team-a".into(), 2);
        limits.from_policies.insert("team-b".into(), 9);
        assert_eq!(limits.namespace_limit("team-a"), Some(2));
        assert_eq!(limits.namespace_limit("team-b"), Some(5));
        assert_eq!(limits.namespace_limit("team-c"), Some(5));
        let only_policies = Limits {
            from_policies: limits.from_policies.clone(),
            ..Default::default()
        };
        assert!(!only_policies.is_unlimited());
        assert_eq!(only_policies.namespace_limit("team-c"), None);
    }

    #[test]
    fn per_arch_limits_read_as_pairs() {
        let limits = parse_per_arch("arm64=4, amd64=8").unwrap();
        assert_eq!(limits.get("arm64"), Some(&4));
        assert_eq!(limits.get("amd64"), Some(&8));
        assert_eq!(parse_per_arch("").unwrap(), BTreeMap::new());
    }

    #[test]
    fn hostile_per_arch_values_are_refused() {
        for bad in [
            "arm64=-1",
            "=3",
            "arm64=x",
            "arm64",
            "arm64=0",
            "arm64=4,arm64=2",
            "ARM64=1",
            "arm64/v8=1",
            "arm64=99999999999",
            "$(reboot)=1",
        ] {
            assert!(parse_per_arch(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn zero_and_absent_mean_unlimited_and_the_namespace_hook_reads_the_setting() {
        let limits = Limits {
            total: 0,
            per_arch: parse_per_arch("arm64=4").unwrap(),
            per_namespace: 2,
            ..Default::default()
        };
        assert!(!limits.is_unlimited());
        assert_eq!(limits.total_limit(), None);
        assert_eq!(limits.arch_limit("arm64"), Some(4));
        assert_eq!(limits.arch_limit("amd64"), None);
        assert_eq!(limits.namespace_limit("team-a"), Some(2));
        assert!(Limits::default().is_unlimited());
    }
}
