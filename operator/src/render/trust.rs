//! What a builder container gets of the registry trust settings (`plan::trust`): the
//! rendered registries.conf drop-in or buildkitd.toml and each registry host's CA bundle as
//! environment variables, and the emptyDir volumes the builder script writes them into.
//! Builder pods run in the tenant's namespace and cannot mount the operator's ConfigMap, so
//! the Job itself carries the (bounded, checked at start) settings. Pure.

use serde_json::{Value, json};

use crate::api::Strategy;
use crate::plan::trust::RegistryTrust;

/// The buildah builder's home (`HOME`): buildah reads its user configuration under it.
pub(super) const BUILDAH_HOME: &str = "/home/build";
/// Where buildah reads drop-ins added to the image's registries.conf.
const BUILDAH_REGISTRIES_D: &str = "/home/build/.config/containers/registries.conf.d";
/// Where buildah reads each registry's CA bundles, `<host[:port]>/ca.crt`.
const BUILDAH_CERTS_D: &str = "/home/build/.config/containers/certs.d";
/// Where the BuildKit builder writes buildkitd.toml and `certs.d/<host[:port]>/ca.crt`.
pub const BUILDKIT_TRUST_DIR: &str = "/var/run/archforge/trust";

/// The buildkitd.toml the BuildKit builder writes, and buildkitd reads with `--config`.
pub fn buildkitd_config_file() -> String {
    format!("{BUILDKIT_TRUST_DIR}/buildkitd.toml")
}

/// The builder's environment for `trust`: nothing when nothing is configured.
pub(super) fn trust_env(trust: &RegistryTrust, strategy: Strategy) -> Vec<Value> {
    let mut env = Vec::new();
    if trust.is_empty() {
        return env;
    }
    match strategy {
        Strategy::Buildah => {
            if !trust.insecure().is_empty() {
                env.push(
                    json!({"name": "ARCHFORGE_REGISTRIES_CONF", "value": trust.registries_conf()}),
                );
            }
        }
        Strategy::Buildkit => {
            let toml =
                trust.buildkitd_toml(|host| format!("{BUILDKIT_TRUST_DIR}/certs.d/{host}/ca.crt"));
            env.push(json!({"name": "ARCHFORGE_BUILDKITD_TOML", "value": toml}));
            env.push(json!({"name": "ARCHFORGE_TRUST_DIR", "value": BUILDKIT_TRUST_DIR}));
        }
    }
    let certificates: Vec<_> = trust.certificates().collect();
    if !certificates.is_empty() {
        env.push(
            json!({"name": "ARCHFORGE_REGISTRY_CA_COUNT", "value": certificates.len().to_string()}),
        );
    }
    for (i, (host, pem)) in certificates.into_iter().enumerate() {
        env.push(
            json!({"name": format!("ARCHFORGE_REGISTRY_CA_HOST_{i}"), "value": host.as_str()}),
        );
        env.push(json!({"name": format!("ARCHFORGE_REGISTRY_CA_{i}"), "value": pem}));
    }
    env
}

/// The builder's mounts for `trust`: emptyDirs where the script writes the files, so that
/// they are writable whatever UID the builder runs as, and the image's own configuration
/// beside them (buildah's storage.conf in ~/.config/containers) stays visible.
pub(super) fn trust_mounts(trust: &RegistryTrust, strategy: Strategy) -> Vec<Value> {
    let mut mounts = Vec::new();
    match strategy {
        Strategy::Buildah => {
            if !trust.insecure().is_empty() {
                mounts.push(json!({"name": "registries-conf", "mountPath": BUILDAH_REGISTRIES_D}));
            }
            if trust.certificates().next().is_some() {
                mounts.push(json!({"name": "registry-certs", "mountPath": BUILDAH_CERTS_D}));
            }
        }
        Strategy::Buildkit if !trust.is_empty() => {
            mounts.push(json!({"name": "registry-trust", "mountPath": BUILDKIT_TRUST_DIR}));
        }
        Strategy::Buildkit => {}
    }
    mounts
}

/// The emptyDir volumes [`trust_mounts`] mounts.
pub(super) fn trust_volumes(trust: &RegistryTrust, strategy: Strategy) -> Vec<Value> {
    trust_mounts(trust, strategy)
        .iter()
        .map(|mount| json!({"name": mount["name"], "emptyDir": {}}))
        .collect()
}
