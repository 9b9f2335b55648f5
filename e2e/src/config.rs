//! What the suite is pointed at, from the environment. Parsing is pure (it takes a lookup
//! function), so its rules are unit-tested without a cluster.

use std::path::PathBuf;

/// The suite's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The kubeconfig naming the cluster under test (also handed to the operator).
    pub kubeconfig: PathBuf,
    /// `host:port` of a registry that the operator and the builders both reach.
    pub registry: String,
    /// The registry speaks plain HTTP.
    pub insecure_registry: bool,
    /// The cluster's nodes never run pods: the suite registers fake nodes and completes
    /// builder pods itself.
    pub simulate_nodes: bool,
    /// The `archforge` binary run as the operator (out of cluster, same kubeconfig).
    pub operator: PathBuf,
    /// The repository builders fetch. With simulated nodes nothing fetches it, and a full
    /// commit SHA as `git_ref` needs no lookup either.
    pub git_url: String,
    pub git_ref: String,
    /// Keep each test's namespace after the test, for a post-mortem.
    pub keep_namespaces: bool,
}

pub const SIMULATED_GIT_URL: &str = "https://git.example.com/archforge/e2e-fixture.git";
pub const SIMULATED_GIT_REF: &str = "0123456789abcdef0123456789abcdef01234567";

#[derive(Debug, PartialEq)]
pub enum ConfigError {
    NoCluster,
    Missing {
        variable: &'static str,
        why: &'static str,
    },
    Invalid {
        variable: &'static str,
        value: String,
        expected: &'static str,
    },
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::NoCluster => write!(
                f,
                "no cluster was given: set KUBECONFIG to the kubeconfig of the cluster to test \
                 (the suite creates namespaces, a CRD and, with simulated nodes, Nodes in it)"
            ),
            ConfigError::Missing { variable, why } => write!(f, "{variable} is not set: {why}"),
            ConfigError::Invalid {
                variable,
                value,
                expected,
            } => write!(f, "{variable}={value:?} is not {expected}"),
        }
    }
}

impl std::error::Error for ConfigError {}

fn flag(value: Option<String>, variable: &'static str) -> Result<bool, ConfigError> {
    match value.as_deref().map(str::trim) {
        None | Some("" | "0" | "false" | "no") => Ok(false),
        Some("1" | "true" | "yes") => Ok(true),
        Some(other) => Err(ConfigError::Invalid {
            variable,
            value: other.to_string(),
            expected: "1/true/yes or 0/false/no",
        }),
    }
}

/// `host:port` with a non-empty host and a numeric port.
pub fn is_host_port(text: &str) -> bool {
    match text.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.contains('/')
                && !port.is_empty()
                && port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        None => false,
    }
}

impl Settings {
    /// Reads the settings through `lookup` (the process environment in `main`).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
        default_operator: PathBuf,
    ) -> Result<Settings, ConfigError> {
        let kubeconfig = lookup("KUBECONFIG")
            .filter(|v| !v.trim().is_empty())
            .ok_or(ConfigError::NoCluster)?;
        let registry = lookup("ARCHFORGE_E2E_REGISTRY").ok_or(ConfigError::Missing {
            variable: "ARCHFORGE_E2E_REGISTRY",
            why: "host:port of a registry that the operator and the builders can both reach",
        })?;
        if !is_host_port(&registry) {
            return Err(ConfigError::Invalid {
                variable: "ARCHFORGE_E2E_REGISTRY",
                value: registry,
                expected: "host:port",
            });
        }
        let simulate_nodes = flag(
            lookup("ARCHFORGE_E2E_SIMULATE_NODES"),
            "ARCHFORGE_E2E_SIMULATE_NODES",
        )?;
        let (git_url, git_ref) = match (
            lookup("ARCHFORGE_E2E_GIT_URL"),
            lookup("ARCHFORGE_E2E_GIT_REF"),
        ) {
            (Some(url), reference) => (url, reference.unwrap_or_else(|| "main".into())),
            (None, _) if simulate_nodes => (SIMULATED_GIT_URL.into(), SIMULATED_GIT_REF.into()),
            (None, _) => {
                return Err(ConfigError::Missing {
                    variable: "ARCHFORGE_E2E_GIT_URL",
                    why: "real builders fetch a real repository: give one whose Dockerfile builds \
                          on every platform (and ARCHFORGE_E2E_GIT_REF), or set \
                          ARCHFORGE_E2E_SIMULATE_NODES=1",
                });
            }
        };
        Ok(Settings {
            kubeconfig: kubeconfig.into(),
            registry,
            insecure_registry: flag(
                lookup("ARCHFORGE_E2E_INSECURE_REGISTRY"),
                "ARCHFORGE_E2E_INSECURE_REGISTRY",
            )?,
            simulate_nodes,
            operator: lookup("ARCHFORGE_E2E_OPERATOR")
                .map(PathBuf::from)
                .unwrap_or(default_operator),
            git_url,
            git_ref,
            keep_namespaces: flag(lookup("ARCHFORGE_E2E_KEEP"), "ARCHFORGE_E2E_KEEP")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| vars.get(k).cloned(), "target/debug/archforge".into())
    }

    #[test]
    fn without_kubeconfig_no_cluster_is_named() {
        let error = settings(&[("ARCHFORGE_E2E_REGISTRY", "r:5000")]).unwrap_err();
        assert_eq!(error, ConfigError::NoCluster);
        assert!(
            error
                .to_string()
                .starts_with("no cluster was given: set KUBECONFIG")
        );
        assert_eq!(
            settings(&[("KUBECONFIG", " ")]).unwrap_err(),
            ConfigError::NoCluster
        );
    }

    #[test]
    fn registry_is_required_and_checked() {
        assert!(matches!(
            settings(&[("KUBECONFIG", "/k")]).unwrap_err(),
            ConfigError::Missing {
                variable: "ARCHFORGE_E2E_REGISTRY",
                ..
            }
        ));
        for bad in [
            "registry",
            "registry:",
            ":5000",
            "registry:http",
            "https://r:5000",
        ] {
            assert!(
                matches!(
                    settings(&[("KUBECONFIG", "/k"), ("ARCHFORGE_E2E_REGISTRY", bad)]),
                    Err(ConfigError::Invalid { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn simulated_nodes_need_no_repository_real_ones_do() {
        let simulated = settings(&[
            ("KUBECONFIG", "/k"),
            ("ARCHFORGE_E2E_REGISTRY", "10.0.0.5:5000"),
            ("ARCHFORGE_E2E_SIMULATE_NODES", "1"),
            ("ARCHFORGE_E2E_INSECURE_REGISTRY", "true"),
        ])
        .unwrap();
        assert!(simulated.simulate_nodes && simulated.insecure_registry);
        assert_eq!(simulated.git_ref, SIMULATED_GIT_REF);
        assert!(archforge::source::is_full_sha(&simulated.git_ref));
        assert_eq!(simulated.operator, PathBuf::from("target/debug/archforge"));

        let real = settings(&[("KUBECONFIG", "/k"), ("ARCHFORGE_E2E_REGISTRY", "r:5000")]);
        assert!(matches!(
            real,
            Err(ConfigError::Missing {
                variable: "ARCHFORGE_E2E_GIT_URL",
                ..
            })
        ));
        let real = settings(&[
            ("KUBECONFIG", "/k"),
            ("ARCHFORGE_E2E_REGISTRY", "r:5000"),
            ("ARCHFORGE_E2E_GIT_URL", "https://github.com/me/app.git"),
        ])
        .unwrap();
        assert_eq!(
            (real.git_ref.as_str(), real.simulate_nodes),
            ("main", false)
        );
    }

    #[test]
    fn flags_refuse_what_they_do_not_understand() {
        let error = settings(&[
            ("KUBECONFIG", "/k"),
            ("ARCHFORGE_E2E_REGISTRY", "r:5000"),
            ("ARCHFORGE_E2E_SIMULATE_NODES", "on-ish"),
        ])
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("ARCHFORGE_E2E_SIMULATE_NODES=\"on-ish\"")
        );
    }
}
