//! The `seLinuxOptions` rule of Pod Security baseline, the one rule that changed with the
//! policy version since 1.24. Pure.

use super::{Checker, Level};
use crate::settings::KubeVersion;

/// SELinux types the baseline level allows at every policy version, besides none.
const SELINUX_TYPES: &[&str] = &["container_t", "container_init_t", "container_kvm_t"];
/// Allowed too from policy version 1.31: the type container-selinux made for running
/// container engines (podman, buildah) inside a container.
const SELINUX_ENGINE_TYPE: &str = "container_engine_t";
const SELINUX_ENGINE_SINCE: KubeVersion = KubeVersion {
    major: 1,
    minor: 31,
};

/// The newest policy version whose rules differ from older ones; [`super::check`] and
/// [`super::check_job`] check at this version.
pub const NEWEST_POLICY: KubeVersion = SELINUX_ENGINE_SINCE;

/// The non-empty SELinux types the baseline level admits at `version`.
pub fn selinux_types(version: KubeVersion) -> Vec<&'static str> {
    let mut types = SELINUX_TYPES.to_vec();
    if version >= SELINUX_ENGINE_SINCE {
        types.push(SELINUX_ENGINE_TYPE);
    }
    types
}

/// Whether the baseline level admits the SELinux type `type_` at `version`.
pub fn selinux_type_allowed(type_: &str, version: KubeVersion) -> bool {
    type_.is_empty() || selinux_types(version).contains(&type_)
}

pub(super) fn check_selinux(
    c: &mut Checker,
    whose: &str,
    se: &k8s_openapi::api::core::v1::SELinuxOptions,
) {
    let type_ = se.type_.as_deref().unwrap_or_default();
    if !selinux_type_allowed(type_, c.version) {
        let version = c.version;
        c.flag(
            Level::Baseline,
            "seLinuxOptions",
            format!(
                "{whose} sets SELinux type {type_:?}, not admitted at policy version {version}"
            ),
        );
    }
    if se.user.as_deref().is_some_and(|u| !u.is_empty())
        || se.role.as_deref().is_some_and(|r| !r.is_empty())
    {
        c.flag(
            Level::Baseline,
            "seLinuxOptions",
            format!("{whose} sets an SELinux user or role"),
        );
    }
}
