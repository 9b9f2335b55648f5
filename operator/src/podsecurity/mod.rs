//! The Pod Security Standards, checked on a rendered pod before anything is created. Pure.
//!
//! Kubernetes' Pod Security admission enforces a level per namespace on *pods*; a Job whose
//! pods violate it is still created, and its pods are then refused one by one, with the reason
//! only in the Job controller's Events. So archforge checks its own builder pods against the
//! level the operator is configured to target, in `render` and before the controller creates a
//! Job, and names the violated rule. The rules and their names follow the checks of
//! `k8s.io/pod-security-admission` (policy version 1.24 and later). One rule changed since:
//! `seLinuxOptions` admits `container_engine_t` from 1.31 (kubernetes/kubernetes#126165), so
//! a check takes the policy version, which Pod Security admission takes from the namespace's
//! `enforce-version` label (default `latest`: the API server's own version).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, PodSpec, SeccompProfile, SecurityContext,
};

use crate::settings::KubeVersion;

mod selinux;

use selinux::check_selinux;
pub use selinux::{NEWEST_POLICY, selinux_type_allowed, selinux_types};

/// A Pod Security Standards level.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// No restriction.
    Privileged,
    /// Prevents known privilege escalations; what builder namespaces need with archforge.
    Baseline,
    /// Baseline plus hardening; rootless buildah cannot meet it (see [`check`]).
    Restricted,
}

impl FromStr for Level {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "privileged" => Ok(Level::Privileged),
            "baseline" => Ok(Level::Baseline),
            "restricted" => Ok(Level::Restricted),
            _ => Err(format!(
                "{s:?} is not a Pod Security level: use privileged, baseline or restricted"
            )),
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        })
    }
}

/// One broken rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The lowest level that the rule belongs to.
    pub level: Level,
    /// The check's name in pod-security-admission, e.g. `seccompProfile_baseline`.
    pub rule: &'static str,
    /// What breaks it, naming the container.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): {}", self.rule, self.level, self.detail)
    }
}

/// Every broken rule of one pod, for one level.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violations {
    pub level: Level,
    pub violations: Vec<Violation>,
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let all: Vec<String> = self.violations.iter().map(ToString::to_string).collect();
        write!(
            f,
            "the builder pod would be refused by Pod Security {:?}: {}",
            self.level.to_string(),
            all.join("; ")
        )
    }
}

impl std::error::Error for Violations {}

/// Capabilities the baseline level lets a container add (the runtimes' default set).
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Sysctls the baseline level allows (namespaced and isolated from the node).
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
];

/// Volume sources the restricted level allows.
const RESTRICTED_VOLUMES: &[&str] = &[
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

struct Checker {
    target: Level,
    version: KubeVersion,
    found: Vec<Violation>,
}

impl Checker {
    fn flag(&mut self, level: Level, rule: &'static str, detail: String) {
        if level <= self.target {
            self.found.push(Violation {
                level,
                rule,
                detail,
            });
        }
    }
}

fn containers(pod: &PodSpec) -> impl Iterator<Item = &Container> {
    pod.init_containers
        .iter()
        .flatten()
        .chain(pod.containers.iter())
}

fn seccomp_type(profile: Option<&SeccompProfile>) -> Option<&str> {
    profile.map(|p| p.type_.as_str())
}

/// Checks a pod template against `level` at the [`NEWEST_POLICY`] version; see [`check_at`].
pub fn check(
    pod: &PodSpec,
    annotations: &BTreeMap<String, String>,
    level: Level,
) -> Result<(), Violations> {
    check_at(pod, annotations, level, NEWEST_POLICY)
}

/// Checks a pod template against `level` at policy `version`: `Ok` when Pod Security
/// admission at that level admits it, otherwise every broken rule. Ephemeral containers are
/// not rendered by archforge and so not looked at.
pub fn check_at(
    pod: &PodSpec,
    annotations: &BTreeMap<String, String>,
    level: Level,
    version: KubeVersion,
) -> Result<(), Violations> {
    let mut c = Checker {
        target: level,
        version,
        found: Vec::new(),
    };
    if level == Level::Privileged {
        return Ok(());
    }
    let pod_security = pod.security_context.clone().unwrap_or_default();

    // --- baseline ---
    for (set, what) in [
        (pod.host_network, "hostNetwork"),
        (pod.host_pid, "hostPID"),
        (pod.host_ipc, "hostIPC"),
    ] {
        if set == Some(true) {
            c.flag(
                Level::Baseline,
                "hostNamespaces",
                format!("the pod sets {what}=true"),
            );
        }
    }
    if pod_security
        .windows_options
        .as_ref()
        .and_then(|w| w.host_process)
        == Some(true)
    {
        c.flag(
            Level::Baseline,
            "hostProcess",
            "the pod sets windowsOptions.hostProcess=true".into(),
        );
    }
    for volume in pod.volumes.iter().flatten() {
        if volume.host_path.is_some() {
            c.flag(
                Level::Baseline,
                "hostPathVolumes",
                format!("volume {} is a hostPath", volume.name),
            );
        }
    }
    for sysctl in pod_security.sysctls.iter().flatten() {
        if !SAFE_SYSCTLS.contains(&sysctl.name.as_str()) {
            c.flag(
                Level::Baseline,
                "sysctls",
                format!("sysctl {} is not in the safe set", sysctl.name),
            );
        }
    }
    if let Some(se) = &pod_security.se_linux_options {
        check_selinux(&mut c, "the pod", se);
    }
    if seccomp_type(pod_security.seccomp_profile.as_ref()) == Some("Unconfined") {
        c.flag(
            Level::Baseline,
            "seccompProfile_baseline",
            "the pod's seccompProfile is Unconfined".into(),
        );
    }
    for (key, value) in annotations {
        if let Some(container) = key.strip_prefix(APPARMOR_ANNOTATION_PREFIX)
            && value != "runtime/default"
            && !value.starts_with("localhost/")
        {
            c.flag(
                Level::Baseline,
                "appArmorProfile",
                format!("container {container} has AppArmor profile {value:?}"),
            );
        }
    }
    for container in containers(pod) {
        let name = &container.name;
        let sc = container.security_context.clone().unwrap_or_default();
        check_container_baseline(&mut c, name, &sc);
        for port in container.ports.iter().flatten() {
            if let Some(host_port) = port.host_port
                && host_port != 0
            {
                c.flag(
                    Level::Baseline,
                    "hostPorts",
                    format!("container {name} uses hostPort {host_port}"),
                );
            }
        }
    }

    // --- restricted ---
    for volume in pod.volumes.iter().flatten() {
        let source = serde_json::to_value(volume).unwrap_or_default();
        let kinds: Vec<String> = source
            .as_object()
            .map(|o| o.keys().filter(|k| *k != "name").cloned().collect())
            .unwrap_or_default();
        for kind in kinds {
            if !RESTRICTED_VOLUMES.contains(&kind.as_str()) {
                c.flag(
                    Level::Restricted,
                    "restrictedVolumes",
                    format!("volume {} is of type {kind}", volume.name),
                );
            }
        }
    }
    let pod_seccomp_ok = matches!(
        seccomp_type(pod_security.seccomp_profile.as_ref()),
        Some("RuntimeDefault" | "Localhost")
    );
    for container in containers(pod) {
        let name = &container.name;
        let sc = container.security_context.clone().unwrap_or_default();
        if sc.allow_privilege_escalation != Some(false) {
            c.flag(
                Level::Restricted,
                "allowPrivilegeEscalation",
                format!("container {name} must set allowPrivilegeEscalation=false"),
            );
        }
        let non_root = sc.run_as_non_root.or(pod_security.run_as_non_root);
        if non_root != Some(true) {
            c.flag(
                Level::Restricted,
                "runAsNonRoot",
                format!("container {name} must set runAsNonRoot=true"),
            );
        }
        if sc.run_as_user.or(pod_security.run_as_user) == Some(0) {
            c.flag(
                Level::Restricted,
                "runAsUser",
                format!("container {name} runs as UID 0"),
            );
        }
        match seccomp_type(sc.seccomp_profile.as_ref()) {
            Some("RuntimeDefault" | "Localhost") => {}
            None if pod_seccomp_ok => {}
            _ => c.flag(
                Level::Restricted,
                "seccompProfile_restricted",
                format!(
                    "container {name} must use the RuntimeDefault or a Localhost seccomp profile"
                ),
            ),
        }
        let caps = sc.capabilities.clone().unwrap_or_default();
        if !caps.drop.iter().flatten().any(|d| d == "ALL") {
            c.flag(
                Level::Restricted,
                "capabilities_restricted",
                format!("container {name} must drop ALL capabilities"),
            );
        }
        let extra: Vec<&String> = caps
            .add
            .iter()
            .flatten()
            .filter(|a| a.as_str() != "NET_BIND_SERVICE")
            .collect();
        if !extra.is_empty() {
            c.flag(
                Level::Restricted,
                "capabilities_restricted",
                format!(
                    "container {name} may add only NET_BIND_SERVICE, not {}",
                    join(&extra)
                ),
            );
        }
    }

    if c.found.is_empty() {
        Ok(())
    } else {
        Err(Violations {
            level,
            violations: c.found,
        })
    }
}

fn join(items: &[&String]) -> String {
    items
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_container_baseline(c: &mut Checker, name: &str, sc: &SecurityContext) {
    if sc.privileged == Some(true) {
        c.flag(
            Level::Baseline,
            "privileged",
            format!("container {name} is privileged"),
        );
    }
    if sc.windows_options.as_ref().and_then(|w| w.host_process) == Some(true) {
        c.flag(
            Level::Baseline,
            "hostProcess",
            format!("container {name} sets windowsOptions.hostProcess=true"),
        );
    }
    let added: Vec<&String> = sc
        .capabilities
        .as_ref()
        .and_then(|c: &Capabilities| c.add.as_ref())
        .into_iter()
        .flatten()
        .filter(|cap| !BASELINE_CAPABILITIES.contains(&cap.as_str()))
        .collect();
    if !added.is_empty() {
        c.flag(
            Level::Baseline,
            "capabilities_baseline",
            format!(
                "container {name} adds {}, beyond the baseline set",
                join(&added)
            ),
        );
    }
    if sc.proc_mount.as_deref().is_some_and(|m| m != "Default") {
        c.flag(
            Level::Baseline,
            "procMount",
            format!("container {name} sets procMount {:?}", sc.proc_mount),
        );
    }
    if let Some(se) = &sc.se_linux_options {
        check_selinux(c, &format!("container {name}"), se);
    }
    if seccomp_type(sc.seccomp_profile.as_ref()) == Some("Unconfined") {
        c.flag(
            Level::Baseline,
            "seccompProfile_baseline",
            format!("container {name}'s seccompProfile is Unconfined"),
        );
    }
    if let Some(profile) = &sc.app_armor_profile
        && profile.type_ == "Unconfined"
    {
        c.flag(
            Level::Baseline,
            "appArmorProfile",
            format!("container {name}'s appArmorProfile is Unconfined"),
        );
    }
}

/// Checks the pod template of a rendered Job at the [`NEWEST_POLICY`] version. For the
/// operator's own Jobs this is the server's verdict too: it refuses to start with an SELinux
/// type the server's older policy would refuse (`settings::check_confinement`).
pub fn check_job(job: &k8s_openapi::api::batch::v1::Job, level: Level) -> Result<(), Violations> {
    check_job_at(job, level, NEWEST_POLICY)
}

/// Checks the pod template of a rendered Job at policy `version`.
pub fn check_job_at(
    job: &k8s_openapi::api::batch::v1::Job,
    level: Level,
    version: KubeVersion,
) -> Result<(), Violations> {
    let template = job.spec.as_ref().map(|s| &s.template);
    let pod = template.and_then(|t| t.spec.clone()).unwrap_or_default();
    let annotations = template
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    check_at(&pod, &annotations, level, version)
}

#[cfg(test)]
mod tests;
