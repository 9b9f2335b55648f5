//! The builder container's confinement and resources: seccomp and AppArmor profiles, the
//! SELinux type, capabilities, and the fuse device limit. Pure.

use serde_json::{Value, json};

use crate::api::Strategy;
use crate::plan::{BuildPlan, PlatformPlan};
use crate::settings::{AppArmorMode, BuilderSettings, KubeVersion, SeccompProfile};

fn seccomp(profile: &SeccompProfile) -> Value {
    match profile {
        SeccompProfile::Unconfined => json!({"type": "Unconfined"}),
        SeccompProfile::RuntimeDefault => json!({"type": "RuntimeDefault"}),
        SeccompProfile::Localhost(path) => json!({"type": "Localhost", "localhostProfile": path}),
    }
}

/// The builder container's resources: the spec's, with the fuse device as a limit when the
/// builder's storage needs it (`fuse`).
pub(super) fn builder_resources(plan: &BuildPlan, settings: &BuilderSettings, fuse: bool) -> Value {
    let mut resources = plan
        .pod
        .resources
        .as_ref()
        .map(|r| serde_json::to_value(r).expect("resources serialize"))
        .unwrap_or_else(|| json!({}));
    if !fuse {
        return resources;
    }
    // A device plugin's extended resource must be a limit; Kubernetes copies it to requests.
    resources["limits"][&settings.fuse_resource] = json!(settings.fuse_quantity);
    if let Some(requests) = resources.get_mut("requests").and_then(Value::as_object_mut) {
        requests.remove(&settings.fuse_resource);
    }
    resources
}

/// What the builder container asks of AppArmor, by the `--apparmor` mode: the value of the
/// beta annotation and the `appArmorProfile` field (set on 1.30+ servers), or nothing.
pub(super) struct AppArmor {
    pub annotation: String,
    pub field: Value,
}

pub(super) fn apparmor(platform: &PlatformPlan, settings: &BuilderSettings) -> Option<AppArmor> {
    let profile = match platform.strategy {
        Strategy::Buildah => &settings.apparmor_profile,
        Strategy::Buildkit => &settings.buildkit_apparmor_profile,
    };
    match settings.apparmor {
        AppArmorMode::Localhost => Some(AppArmor {
            annotation: format!("localhost/{profile}"),
            field: json!({"type": "Localhost", "localhostProfile": profile}),
        }),
        AppArmorMode::RuntimeDefault => Some(AppArmor {
            annotation: "runtime/default".to_string(),
            field: json!({"type": "RuntimeDefault"}),
        }),
        AppArmorMode::None => None,
    }
}

/// The builder container's security context: non-root, not privileged, every capability
/// dropped but the two the setuid newuidmap/newgidmap helpers need (both rootless builders
/// map their subordinate IDs with them, so no_new_privs must stay off), the strategy's
/// seccomp profile, its AppArmor profile (the field only on 1.30+ servers; older ones read
/// the pod's annotation) and the SELinux type, when the settings name them.
pub(super) fn builder_security(
    uid: i64,
    seccomp_profile: &SeccompProfile,
    apparmor: Option<&AppArmor>,
    selinux_type: Option<&str>,
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
    if let Some(apparmor) = apparmor
        && version.has_apparmor_field()
    {
        security["appArmorProfile"] = apparmor.field.clone();
    }
    if let Some(type_) = selinux_type {
        security["seLinuxOptions"] = json!({"type": type_});
    }
    security
}

/// The confinement of the containers that run no user code and need no privilege (git-sync
/// and the push container): non-root as `uid`, read-only root, no capabilities, the
/// runtime's default seccomp profile whatever the builder's; and their small resources.
pub(super) fn helper_confinement(uid: i64) -> (Value, Value) {
    let security = json!({
        "runAsUser": uid,
        "runAsGroup": uid,
        "runAsNonRoot": true,
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    });
    let resources = json!({
        "requests": {"cpu": "50m", "memory": "64Mi"},
        "limits": {"memory": "256Mi"},
    });
    (security, resources)
}
