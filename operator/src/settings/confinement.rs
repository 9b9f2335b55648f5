//! The settings that fit builder pods to their nodes' confinement: the AppArmor mode, an
//! SELinux type, and BuildKit's snapshotter (which decides whether a fuse device is needed).
//! Parsing and the start-up check only; `render` applies them.

use std::fmt;
use std::str::FromStr;

use super::{BuilderSettings, KubeVersion};
use crate::podsecurity::{self, Level};

/// How builder containers ask for AppArmor. The kubelet refuses a pod that asks for any
/// profile (the runtime's default included) on a node without AppArmor ("Cannot enforce
/// AppArmor: AppArmor is not enabled on the host"), so nodes without it need `none`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AppArmorMode {
    /// The profile named by `--apparmor-profile` (BuildKit: `--buildkit-apparmor-profile`),
    /// loaded on every build node (the node-profiles loader does it): the default.
    #[default]
    Localhost,
    /// The container runtime's default profile (`runtime/default`; `RuntimeDefault` on 1.30+).
    /// containerd's and CRI-O's defaults deny mount, which both rootless builders need, so
    /// this fits only runtimes whose default profile was changed to allow it.
    RuntimeDefault,
    /// No annotation and no field: nodes without AppArmor (SELinux distributions, minimal
    /// kernels). Where AppArmor is on, the runtime then applies its default profile.
    None,
}

impl FromStr for AppArmorMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "localhost" => Ok(AppArmorMode::Localhost),
            "runtime-default" => Ok(AppArmorMode::RuntimeDefault),
            "none" => Ok(AppArmorMode::None),
            _ => Err(format!(
                "{s:?} is not an AppArmor mode: use localhost (the profile named by \
                 --apparmor-profile), runtime-default or none (nodes without AppArmor)"
            )),
        }
    }
}

impl fmt::Display for AppArmorMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AppArmorMode::Localhost => "localhost",
            AppArmorMode::RuntimeDefault => "runtime-default",
            AppArmorMode::None => "none",
        })
    }
}

/// An SELinux type for `securityContext.seLinuxOptions.type`: an identifier of letters,
/// digits and '_' (the kubelet hands it to the runtime as part of a label, where ':' would
/// start another field).
pub fn selinux_type(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && s.as_bytes()[0].is_ascii_alphabetic();
    ok.then(|| s.to_string())
        .ok_or_else(|| format!("{s:?} is not an SELinux type like container_t"))
}

/// The snapshotter BuildKit's rootless buildkitd stores layers with
/// (`--oci-worker-snapshotter`); it decides whether BuildKit pods need the fuse device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BuildkitSnapshotter {
    /// BuildKit's own choice, the default: native overlayfs where the kernel allows it in a
    /// user namespace (5.11 and newer), otherwise fuse-overlayfs; so the pod asks for the
    /// fuse device. buildkitd gets no flag.
    #[default]
    Auto,
    /// Kernel overlayfs in the user namespace: kernels 5.11 and newer; no fuse device.
    Overlayfs,
    /// fuse-overlayfs: any kernel; the pod asks for the fuse device.
    FuseOverlayfs,
    /// Plain copies: any kernel, no device, but every layer is copied whole (slow, large).
    Native,
}

impl BuildkitSnapshotter {
    /// Whether BuildKit pods need `/dev/fuse` from the fuse device plugin.
    pub fn needs_fuse(self) -> bool {
        matches!(
            self,
            BuildkitSnapshotter::Auto | BuildkitSnapshotter::FuseOverlayfs
        )
    }

    /// The `--oci-worker-snapshotter` flag buildkitd gets; none for `auto`, its default.
    pub fn flag(self) -> Option<String> {
        (self != BuildkitSnapshotter::Auto).then(|| format!("--oci-worker-snapshotter={self}"))
    }
}

impl FromStr for BuildkitSnapshotter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(BuildkitSnapshotter::Auto),
            "overlayfs" => Ok(BuildkitSnapshotter::Overlayfs),
            "fuse-overlayfs" => Ok(BuildkitSnapshotter::FuseOverlayfs),
            "native" => Ok(BuildkitSnapshotter::Native),
            _ => Err(format!(
                "{s:?} is not a BuildKit snapshotter: use auto, overlayfs (kernel 5.11+, no \
                 fuse device), fuse-overlayfs or native"
            )),
        }
    }
}

impl fmt::Display for BuildkitSnapshotter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BuildkitSnapshotter::Auto => "auto",
            BuildkitSnapshotter::Overlayfs => "overlayfs",
            BuildkitSnapshotter::FuseOverlayfs => "fuse-overlayfs",
            BuildkitSnapshotter::Native => "native",
        })
    }
}

/// Checks what the settings ask of the nodes against the Pod Security level on the server's
/// version, before any Job exists: the SELinux types Pod Security `baseline` admits depend
/// on the version (container_engine_t from 1.31), so a flag alone cannot be checked.
pub fn check(settings: &BuilderSettings, version: KubeVersion) -> Result<(), String> {
    if let Some(type_) = &settings.selinux_type
        && settings.pod_security_level >= Level::Baseline
        && !podsecurity::selinux_type_allowed(type_, version)
    {
        let allowed = podsecurity::selinux_types(version).join(", ");
        return Err(format!(
            "--selinux-type {type_} would be refused by Pod Security baseline on a {version} \
             server, which admits only {allowed} (container_engine_t from 1.31); choose one of \
             those or set --pod-security-level privileged for privileged build namespaces"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apparmor_modes_parse_and_print_back() {
        for mode in ["localhost", "runtime-default", "none"] {
            assert_eq!(mode.parse::<AppArmorMode>().unwrap().to_string(), mode);
        }
        for bad in ["", "Localhost", "unconfined", "localhost/archforge-builder"] {
            let err = bad.parse::<AppArmorMode>().unwrap_err();
            assert!(err.contains("is not an AppArmor mode"), "{err}");
        }
    }

    #[test]
    fn selinux_types_are_identifiers() {
        assert_eq!(
            selinux_type("container_engine_t").unwrap(),
            "container_engine_t"
        );
        for bad in [
            "",
            "spc_t:s0",
            "system_u:system_r:container_t",
            "_t",
            "a b",
            "t\n",
        ] {
            assert!(selinux_type(bad).is_err(), "{bad:?}");
        }
        assert!(selinux_type(&"a".repeat(254)).is_err());
    }

    #[test]
    fn only_fuse_snapshotters_ask_for_the_device() {
        let all = ["auto", "overlayfs", "fuse-overlayfs", "native"];
        let needs: Vec<bool> = all
            .iter()
            .map(|s| s.parse::<BuildkitSnapshotter>().unwrap().needs_fuse())
            .collect();
        assert_eq!(needs, [true, false, true, false]);
        assert_eq!(BuildkitSnapshotter::Auto.flag(), None);
        assert_eq!(
            BuildkitSnapshotter::Overlayfs.flag().as_deref(),
            Some("--oci-worker-snapshotter=overlayfs")
        );
        assert!("stargz".parse::<BuildkitSnapshotter>().is_err());
    }

    fn with_selinux(type_: &str, level: Level) -> BuilderSettings {
        BuilderSettings {
            selinux_type: Some(type_.to_string()),
            pod_security_level: level,
            ..BuilderSettings::default()
        }
    }

    #[test]
    fn an_selinux_type_baseline_refuses_stops_the_start() {
        let v = |s: &str| s.parse::<KubeVersion>().unwrap();
        assert_eq!(check(&BuilderSettings::default(), v("1.24")), Ok(()));
        assert_eq!(
            check(&with_selinux("container_t", Level::Baseline), v("1.24")),
            Ok(())
        );
        let engine = with_selinux("container_engine_t", Level::Baseline);
        let err = check(&engine, v("1.30")).unwrap_err();
        assert!(err.contains("on a 1.30 server"), "{err}");
        assert!(
            err.contains("container_t, container_init_t, container_kvm_t"),
            "{err}"
        );
        assert_eq!(check(&engine, v("1.31")), Ok(()));
        let spc = with_selinux("spc_t", Level::Restricted);
        assert!(check(&spc, v("1.33")).is_err());
        // A privileged namespace admits any type.
        assert_eq!(
            check(&with_selinux("spc_t", Level::Privileged), v("1.24")),
            Ok(())
        );
    }
}
