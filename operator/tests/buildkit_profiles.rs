//! The confinement of BuildKit builders: the shipped AppArmor profile compiles with the real
//! apparmor_parser and keeps the runtime default's denials, the seccomp profile (compiled by
//! the real libseccomp) lets rootlesskit create a user namespace and mount in it and refuses
//! the dangerous calls, and config/ and the chart ship the same bytes the operator names.

mod common;

use std::process::Command;

use archforge::settings::{BuilderSettings, SeccompProfile};
use common::profiles::{
    ROOTLESS_CALLS, assert_chart_copy, check_apparmor_profile, check_seccomp_profile, loader_script,
};

fn kustomize(dir: &str) -> Vec<serde_json::Value> {
    let out = Command::new("kubectl")
        .args(["kustomize", dir])
        .current_dir(common::repo_root())
        .output()
        .expect("kubectl (`make setup`)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_multiple::<serde_json::Value>(&String::from_utf8(out.stdout).unwrap())
        .unwrap()
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

#[test]
fn the_buildkit_apparmor_profile_compiles_allows_mounts_and_keeps_the_denials() {
    let path = common::repo_root().join("config/apparmor/archforge-buildkit");
    let name = BuilderSettings::default().buildkit_apparmor_profile;
    // Compiles, keeps the denials, and the parser refuses a typo.
    let text = check_apparmor_profile(&path, &name, "pivot_root,");
    for line in ["umount,", "pivot_root,"] {
        assert!(text.lines().any(|l| l.trim() == line), "lost {line}");
    }
    // RUN steps share buildkitd's PID namespace: they may read, never trace, its processes.
    let ptrace: Vec<&str> = text
        .lines()
        .filter(|l| l.trim().starts_with("ptrace"))
        .collect();
    assert_eq!(ptrace, ["  ptrace (read) peer=archforge-buildkit,"]);

    // Loaded by the same DaemonSet as buildah's, from the same ConfigMap.
    let objects = kustomize("config/node-profiles");
    let script = loader_script(&objects, "apparmor", "archforge-buildkit", &text);
    assert!(
        script
            .contains("apparmor_parser --replace --write-cache /etc/apparmor.d/archforge-buildkit")
    );
    assert_chart_copy("archforge-buildkit", &text);
}

#[test]
fn the_buildkit_seccomp_profile_allows_rootlesskit_and_refuses_the_dangerous_calls() {
    let path = common::repo_root().join("config/seccomp/archforge-buildkit.json");
    // What rootlesskit and runc need: a user and a mount namespace, and mounts in them; and
    // acct(NULL) is refused with EPERM.
    let text = check_seccomp_profile(
        &path,
        "mount -t tmpfs tmpfs /mnt && mount --bind /mnt /mnt && echo mounted",
    );
    let profile: serde_json::Value = serde_json::from_str(&text).unwrap();
    let denied: Vec<&str> = profile["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| rule["names"].as_array().unwrap())
        .map(|n| n.as_str().unwrap())
        .collect();
    // Without a process sandbox a RUN step sees buildkitd's processes: no tracing, reading
    // their memory or taking their file descriptors.
    for call in [
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "pidfd_getfd",
        "kcmp",
        "kexec_load",
        "init_module",
        "bpf",
        "keyctl",
    ] {
        assert!(denied.contains(&call), "{call} is not denied");
    }
    // runc joins a session keyring for every RUN step and tolerates only ENOSYS there.
    for rule in profile["syscalls"].as_array().unwrap() {
        let names = rule["names"].as_array().unwrap();
        let keyring = names
            .iter()
            .filter(|n| n.as_str().unwrap().contains("key"))
            .count();
        assert!(keyring == 0 || keyring == names.len(), "{rule}");
        let errno = if keyring > 0 { 38 } else { 1 };
        assert_eq!(rule["errnoRet"], errno, "{rule}");
    }
    for call in ROOTLESS_CALLS.into_iter().chain(["clone3"]) {
        assert!(!denied.contains(&call), "{call} must stay allowed");
    }
    // Installed by the same loaders as buildah's, where the default setting points.
    let SeccompProfile::Localhost(relative) = BuilderSettings::default().buildkit_seccomp_profile
    else {
        panic!("the BuildKit default is the shipped Localhost profile");
    };
    assert_eq!(relative, "archforge/archforge-buildkit.json");
    let script = loader_script(
        &kustomize("config/node-profiles"),
        "seccomp",
        "archforge-buildkit.json",
        &text,
    );
    assert!(script.contains(&format!("/seccomp/{relative}")), "{script}");
    assert_chart_copy("archforge-buildkit.json", &text);
    let template = std::fs::read_to_string(
        common::repo_root().join("charts/archforge/templates/node-profiles.yaml"),
    )
    .unwrap();
    assert!(template.contains(".Files.Get \"files/archforge-buildkit.json\""));
    assert!(template.contains(&format!("/seccomp/{relative}")));
}
