//! The builder container's confinement and resources: seccomp and AppArmor profiles,
//! capabilities, and the fuse device limit. Pure.

use serde_json::{Value, json};

use crate::api::{ImageBuild, Strategy};
use crate::plan::PlatformPlan;
use crate::settings::{BuilderSettings, KubeVersion, SeccompProfile};

fn seccomp(profile: &SeccompProfile) -> Value {
    match profile {
        SeccompProfile::Unconfined => json!({"type": "Unconfined"}),
        SeccompProfile::RuntimeDefault => json!({"type": "RuntimeDefault"}),
        SeccompProfile::Localhost(path) => json!({"type": "Localhost", "localhostProfile": path}),
    }
}

/// The builder container's resources: the spec's, with the fuse device as a limit.
pub(super) fn builder_resources(build: &ImageBuild, settings: &BuilderSettings) -> Value {
    let mut resources = build
        .spec
        .resources
        .as_ref()
        .map(|r| serde_json::to_value(r).expect("resources serialize"))
        .unwrap_or_else(|| json!({}));
    // A device plugin's extended resource must be a limit; Kubernetes copies it to requests.
    resources["limits"][&settings.fuse_resource] = json!(settings.fuse_quantity);
    if let Some(requests) = resources.get_mut("requests").and_then(Value::as_object_mut) {
        requests.remove(&settings.fuse_resource);
    }
    resources
}

/// The AppArmor profile (a name loaded on the nodes) of the builder container.
pub(super) fn apparmor_profile<'a>(
    platform: &PlatformPlan,
    settings: &'a BuilderSettings,
) -> &'a str {
    match platform.strategy {
        Strategy::Buildah => &settings.apparmor_profile,
        Strategy::Buildkit => &settings.buildkit_apparmor_profile,
    }
}

/// The builder container's security context: non-root, not privileged, every capability
/// dropped but the two the setuid newuidmap/newgidmap helpers need (both rootless builders
/// map their subordinate IDs with them, so no_new_privs must stay off), and the strategy's
/// seccomp and AppArmor profiles.
pub(super) fn builder_security(
    uid: i64,
    seccomp_profile: &SeccompProfile,
    apparmor: &str,
    version: KubeVersion,
) -> Value {
    let mut security = json!({
        "runAsUser": uid,
        "runAsGroup": uid,
        "runAsNonRoot": true,
        "privileged": false,
        "allowPrivilegeEscalation": true,
        "capabilities": {"drop": ["ALL"], "add": ["SETUID", "SETGID"]},
        "seccompProfile": seccomp(seccomp_profile),
    });
    if version.has_apparmor_field() {
        security["appArmorProfile"] = json!({"type": "Localhost", "localhostProfile": apparmor});
    }
    security
}
