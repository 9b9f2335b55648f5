//! Operator-wide settings that shape every builder Job, and the facts about the cluster that
//! do (the API server's version). Flags with environment fallbacks; the Helm chart's values
//! map one to one onto them. No decisions live here: `plan` and `render` take these as input.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

mod confinement;

pub use confinement::{AppArmorMode, BuildkitSnapshotter, check as check_confinement};

/// The Kubernetes API server's version, which decides which pod fields may be set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
}

impl KubeVersion {
    /// The oldest server archforge supports.
    pub const OLDEST: KubeVersion = KubeVersion {
        major: 1,
        minor: 24,
    };

    /// `securityContext.appArmorProfile` exists from 1.30; an older server rejects it.
    pub fn has_apparmor_field(self) -> bool {
        self >= KubeVersion {
            major: 1,
            minor: 30,
        }
    }

    /// From the `major`/`minor` strings of `/version` (which may carry a `+` suffix).
    pub fn from_info(major: &str, minor: &str) -> Option<Self> {
        let digits = |s: &str| -> Option<u32> {
            s.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse()
                .ok()
        };
        Some(KubeVersion {
            major: digits(major)?,
            minor: digits(minor)?,
        })
    }
}

impl FromStr for KubeVersion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim_start_matches('v');
        let mut parts = s.split('.');
        let (Some(major), Some(minor)) = (parts.next(), parts.next()) else {
            return Err(format!("{s:?} is not a Kubernetes version like 1.30"));
        };
        KubeVersion::from_info(major, minor)
            .ok_or_else(|| format!("{s:?} is not a Kubernetes version like 1.30"))
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// The seccomp profile of builder containers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeccompProfile {
    /// No syscall filter: an explicit opt-in for nodes where neither the runtime's default
    /// nor the shipped localhost profile lets rootless buildah run. Pod Security `baseline`
    /// refuses it, so build namespaces would have to be `privileged`.
    Unconfined,
    /// The container runtime's default profile, the default (it needs nothing on the nodes).
    /// containerd 1.6's refuses `unshare(CLONE_NEWUSER)` to a process without CAP_SYS_ADMIN,
    /// which kills rootless buildah at once; the shipped localhost profile allows it.
    RuntimeDefault,
    /// A profile file under the kubelet's seccomp directory, such as the shipped
    /// `archforge/archforge-builder.json` for runtimes whose default blocks user namespaces.
    Localhost(String),
}

impl FromStr for SeccompProfile {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Unconfined" => Ok(SeccompProfile::Unconfined),
            "RuntimeDefault" => Ok(SeccompProfile::RuntimeDefault),
            _ => match s.strip_prefix("localhost/") {
                // The kubelet refuses a profile path that is absolute or climbs out of its
                // seccomp directory.
                Some(path)
                    if !path.is_empty()
                        && !path.starts_with('/')
                        && !path.split('/').any(|part| part == ".." || part.is_empty()) =>
                {
                    Ok(SeccompProfile::Localhost(path.to_string()))
                }
                _ => Err(format!(
                    "{s:?} is not a seccomp profile: use Unconfined, RuntimeDefault or localhost/<path>"
                )),
            },
        }
    }
}

impl fmt::Display for SeccompProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SeccompProfile::Unconfined => f.write_str("Unconfined"),
            SeccompProfile::RuntimeDefault => f.write_str("RuntimeDefault"),
            SeccompProfile::Localhost(path) => write!(f, "localhost/{path}"),
        }
    }
}

/// Operator-wide settings that shape every builder Job. Flags with environment fallbacks;
/// the Helm chart's values map one to one onto them.
#[derive(clap::Args, Clone, Debug, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuilderSettings {
    /// Image of the builder container (buildah, run as a non-root user).
    #[arg(
        long,
        env = "ARCHFORGE_BUILDER_IMAGE",
        default_value = "quay.io/buildah/stable:v1.43.0"
    )]
    pub builder_image: String,

    /// Image of the git-sync v4 init container that fetches the source.
    #[arg(
        long,
        env = "ARCHFORGE_GIT_SYNC_IMAGE",
        default_value = "registry.k8s.io/git-sync/git-sync:v4.4.0"
    )]
    pub git_sync_image: String,

    /// How builder containers ask for AppArmor: localhost (the profiles named by
    /// --apparmor-profile and --buildkit-apparmor-profile, loaded on every build node),
    /// runtime-default, or none for nodes without AppArmor (the kubelet refuses a pod that
    /// asks for any profile there).
    #[arg(long, env = "ARCHFORGE_APPARMOR", default_value = "localhost")]
    #[serde(serialize_with = "as_display")]
    pub apparmor: AppArmorMode,

    /// Name of the AppArmor profile loaded on the nodes for the builder container.
    #[arg(
        long,
        env = "ARCHFORGE_APPARMOR_PROFILE",
        default_value = "archforge-builder",
        value_parser = profile_name
    )]
    pub apparmor_profile: String,

    /// SELinux type of builder containers (securityContext.seLinuxOptions.type) for SELinux
    /// nodes, e.g. container_engine_t; none by default (the runtime's, container_t). Pod
    /// Security baseline admits container_t, container_init_t, container_kvm_t and, from
    /// Kubernetes 1.31, container_engine_t; the operator refuses to start with another.
    #[arg(long, env = "ARCHFORGE_SELINUX_TYPE", value_parser = confinement::selinux_type)]
    pub selinux_type: Option<String>,

    /// Extended resource that gives the builder /dev/fuse (from a fuse device plugin).
    #[arg(
        long,
        env = "ARCHFORGE_FUSE_RESOURCE",
        default_value = "github.com/fuse",
        value_parser = extended_resource
    )]
    pub fuse_resource: String,

    /// How many of the fuse resource each builder requests.
    #[arg(long, env = "ARCHFORGE_FUSE_QUANTITY", default_value = "1", value_parser = whole_number)]
    pub fuse_quantity: String,

    /// Seccomp profile of the builder container: RuntimeDefault, localhost/<path> (for
    /// example localhost/archforge/archforge-builder.json, shipped in config/seccomp and
    /// installed by the node-profiles loader, which containerd 1.6 nodes need) or, as an
    /// explicit opt-in that Pod Security baseline refuses, Unconfined.
    #[arg(
        long,
        env = "ARCHFORGE_SECCOMP_PROFILE",
        default_value = "RuntimeDefault"
    )]
    #[serde(serialize_with = "as_display")]
    pub seccomp_profile: SeccompProfile,

    /// Emulation of ImageBuilds that set no spec.emulation: Never, Fallback or Always.
    #[arg(long, env = "ARCHFORGE_DEFAULT_EMULATION", default_value = "Never")]
    #[serde(serialize_with = "as_display")]
    pub default_emulation: crate::api::Emulation,

    /// Pod Security level builder pods must meet (privileged, baseline or restricted): the
    /// level of the namespaces ImageBuilds run in. A Job whose pod would break it is not
    /// created; the ImageBuild is Stalled with the rule named.
    #[arg(long, env = "ARCHFORGE_POD_SECURITY_LEVEL", default_value = "baseline")]
    pub pod_security_level: crate::podsecurity::Level,

    /// Timeout of one platform's build when spec.timeout is not set.
    #[arg(long, env = "ARCHFORGE_DEFAULT_TIMEOUT", default_value = "30m", value_parser = humantime::parse_duration)]
    #[serde(serialize_with = "as_humantime")]
    pub default_timeout: Duration,

    /// Retries of ImageBuilds that set none (spec.retries, platformSettings[].retries).
    /// Not a flag: 1, or a BuildPolicy's defaults.retries for its namespaces.
    #[arg(skip = 1)]
    #[serde(skip)]
    pub default_retries: i32,

    /// How long finished builder Jobs are kept before Kubernetes deletes them.
    #[arg(long, env = "ARCHFORGE_JOB_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    #[serde(rename = "jobTTL", serialize_with = "as_humantime")]
    pub job_ttl: Duration,

    /// UID (and GID) the builder runs as; must have subordinate ID ranges in the builder image.
    #[arg(long, env = "ARCHFORGE_BUILDER_UID", default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=2_147_483_647))]
    pub builder_uid: i64,

    /// Build strategy of ImageBuilds that set no spec.strategy: buildah or buildkit.
    #[arg(long, env = "ARCHFORGE_DEFAULT_STRATEGY", default_value = "buildah")]
    #[serde(serialize_with = "as_display")]
    pub default_strategy: crate::api::Strategy,

    /// Image of the BuildKit builder container: a rootless BuildKit image with
    /// buildctl-daemonless.sh, rootlesskit and a user 1000 with subordinate IDs.
    #[arg(
        long,
        env = "ARCHFORGE_BUILDKIT_IMAGE",
        default_value = "docker.io/moby/buildkit:v0.17.0-rootless"
    )]
    pub buildkit_image: String,

    /// Name of the AppArmor profile loaded on the nodes for BuildKit builder containers
    /// (config/apparmor/archforge-buildkit).
    #[arg(
        long,
        env = "ARCHFORGE_BUILDKIT_APPARMOR_PROFILE",
        default_value = "archforge-buildkit",
        value_parser = profile_name
    )]
    pub buildkit_apparmor_profile: String,

    /// Seccomp profile of BuildKit builder containers. The default is the shipped
    /// config/seccomp/archforge-buildkit.json (installed by the node-profiles loader): the
    /// runtimes' default profiles refuse the unshare and mount calls rootlesskit and runc make.
    #[arg(
        long,
        env = "ARCHFORGE_BUILDKIT_SECCOMP_PROFILE",
        default_value = "localhost/archforge/archforge-buildkit.json"
    )]
    #[serde(serialize_with = "as_display")]
    pub buildkit_seccomp_profile: SeccompProfile,

    /// Snapshotter of BuildKit's buildkitd: auto (BuildKit's choice; the pod asks for the
    /// fuse device), overlayfs (kernel 5.11+, no fuse device), fuse-overlayfs or native.
    #[arg(long, env = "ARCHFORGE_BUILDKIT_SNAPSHOTTER", default_value = "auto")]
    #[serde(serialize_with = "as_display")]
    pub buildkit_snapshotter: BuildkitSnapshotter,

    /// Image of the push container that uploads each built image (`archforge push-image`):
    /// the operator's own image, in which no user code runs. It alone mounts the push
    /// credentials; the builder container that runs the Dockerfile never has them.
    #[arg(
        long,
        env = "ARCHFORGE_PUSHER_IMAGE",
        default_value = concat!("ghcr.io/archforge-dev/archforge:", env!("CARGO_PKG_VERSION"))
    )]
    pub pusher_image: String,

    /// Registry trust for the builders (plain-HTTP registries, CA certificates per host):
    /// read and checked at start from the registry flags (`--insecure-registry`,
    /// `--registry-ca-dir`), which `--print-config` shows.
    #[arg(skip)]
    #[serde(skip)]
    pub registry_trust: crate::plan::trust::RegistryTrust,
}

/// The UID (and GID) of the rootless BuildKit image's user: its /etc/subuid maps that user
/// only, and changing it means rebuilding the image, so it is not a setting.
pub const BUILDKIT_UID: i64 = 1000;

impl Default for BuilderSettings {
    fn default() -> Self {
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            settings: BuilderSettings,
        }
        // Parsing no arguments yields exactly the documented defaults (ignoring the
        // environment would need clap's `env` to be switched off; tests set none).
        <Defaults as clap::Parser>::parse_from(["archforge"]).settings
    }
}

/// An AppArmor profile name as the kubelet's `localhost/<name>` takes it.
fn profile_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && s.as_bytes()[0].is_ascii_alphanumeric();
    ok.then(|| s.to_string()).ok_or_else(|| {
        format!("{s:?} is not an AppArmor profile name (letters, digits, '.', '_', '-')")
    })
}

/// An extended resource name as a device plugin advertises it: `domain/name`.
fn extended_resource(s: &str) -> Result<String, String> {
    let ok = s.split_once('/').is_some_and(|(domain, name)| {
        !domain.is_empty()
            && !name.is_empty()
            && domain.contains('.')
            && domain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b))
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    });
    ok.then(|| s.to_string())
        .ok_or_else(|| format!("{s:?} is not an extended resource name like github.com/fuse"))
}

/// A positive whole number, as an extended resource is counted.
fn whole_number(s: &str) -> Result<String, String> {
    match s.parse::<u32>() {
        Ok(n) if n > 0 && s == n.to_string() => Ok(s.to_string()),
        _ => Err(format!("{s:?} is not a positive whole number")),
    }
}

/// A duration as its flag is written (`30m`, `1h`), for `--print-config`.
pub fn as_humantime<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

fn as_display<T: fmt::Display, S: serde::Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_versions() {
        assert_eq!(
            KubeVersion::from_info("1", "24+"),
            Some(KubeVersion {
                major: 1,
                minor: 24
            })
        );
        assert_eq!(
            "v1.30.2".parse::<KubeVersion>().unwrap(),
            KubeVersion {
                major: 1,
                minor: 30
            }
        );
        assert!(!KubeVersion::OLDEST.has_apparmor_field());
        assert!("1.30".parse::<KubeVersion>().unwrap().has_apparmor_field());
        assert!("one.two".parse::<KubeVersion>().is_err());
    }

    #[test]
    fn seccomp_profiles_parse() {
        assert_eq!(
            "Unconfined".parse::<SeccompProfile>().unwrap(),
            SeccompProfile::Unconfined
        );
        assert_eq!(
            "localhost/p.json".parse::<SeccompProfile>().unwrap(),
            SeccompProfile::Localhost("p.json".into())
        );
        assert!("localhost/".parse::<SeccompProfile>().is_err());
        assert!("unconfined".parse::<SeccompProfile>().is_err());
    }
}
