//! The confinement of BuildKit builders: the shipped AppArmor profile compiles with the real
//! apparmor_parser and keeps the runtime default's denials, the seccomp profile (compiled by
//! the real libseccomp) lets rootlesskit create a user namespace and mount in it and refuses
//! the dangerous calls, and config/ and the chart ship the same bytes the operator names.

mod common;

use std::path::Path;
use std::process::Command;

use archforge::settings::{BuilderSettings, SeccompProfile};

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

fn apparmor_parse(path: &Path) -> std::process::Output {
    Command::new("apparmor_parser")
        // -Q: compile only, never load into this machine's kernel.
        .args(["-Q", "-K", "-T"])
        .arg(path)
        .output()
        .expect("apparmor_parser (Debian package apparmor; `make setup`)")
}

#[test]
fn the_buildkit_apparmor_profile_compiles_allows_mounts_and_keeps_the_denials() {
    let path = common::repo_root().join("config/apparmor/archforge-buildkit");
    let output = apparmor_parse(&path);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let name = BuilderSettings::default().buildkit_apparmor_profile;
    assert!(text.contains(&format!("\nprofile {name} flags=")));
    for line in ["mount,", "umount,", "pivot_root,"] {
        assert!(text.lines().any(|l| l.trim() == line), "lost {line}");
    }
    assert!(!text.lines().any(|l| l.trim().starts_with("deny mount")));
    for denial in [
        "deny @{PROC}/sysrq-trigger rwklx,",
        "deny @{PROC}/kcore rwklx,",
        "deny /sys/firmware/** rwklx,",
        "deny /sys/kernel/security/** rwklx,",
    ] {
        assert!(text.contains(denial), "lost {denial}");
    }
    // RUN steps share buildkitd's PID namespace: they may read, never trace, its processes.
    let ptrace: Vec<&str> = text
        .lines()
        .filter(|l| l.trim().starts_with("ptrace"))
        .collect();
    assert_eq!(ptrace, ["  ptrace (read) peer=archforge-buildkit,"]);
    // The parser really checks: a typo is refused.
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken");
    std::fs::write(&broken, text.replace("pivot_root,", "pivot_root")).unwrap();
    assert!(!apparmor_parse(&broken).status.success());

    // Loaded by the same DaemonSet as buildah's, from the same ConfigMap.
    let objects = kustomize("config/apparmor");
    let map = objects.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
    assert_eq!(map["data"]["archforge-buildkit"], text.as_str());
    let loader = objects.iter().find(|o| o["kind"] == "DaemonSet").unwrap();
    let script = loader["spec"]["template"]["spec"]["initContainers"][0]["command"][2]
        .as_str()
        .unwrap();
    assert!(
        script
            .contains("apparmor_parser --replace --write-cache /etc/apparmor.d/archforge-buildkit")
    );
}

fn under_seccomp(profile: &Path, command: &[&str]) -> std::process::Output {
    Command::new("/usr/bin/python3")
        .arg(common::repo_root().join("scripts/seccomp-exec.py"))
        .arg(profile)
        .args(command)
        .output()
        .expect("/usr/bin/python3 with python3-seccomp (`make setup`)")
}

#[test]
fn the_buildkit_seccomp_profile_allows_rootlesskit_and_refuses_the_dangerous_calls() {
    let path = common::repo_root().join("config/seccomp/archforge-buildkit.json");
    let text = std::fs::read_to_string(&path).unwrap();
    // What rootlesskit and runc need: a user and a mount namespace, and mounts in them.
    let mount = under_seccomp(
        &path,
        &[
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            "mount -t tmpfs tmpfs /mnt && mount --bind /mnt /mnt && echo mounted",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&mount.stdout).trim(),
        "mounted",
        "{}",
        String::from_utf8_lossy(&mount.stderr)
    );
    // acct(NULL) is refused with EPERM under the profile (and works without it).
    let acct = [
        "/usr/bin/python3",
        "-c",
        "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); r = libc.syscall(163, None); \
         print('ok' if r == 0 else os.strerror(ctypes.get_errno()))",
    ];
    let denied = under_seccomp(&path, &acct);
    assert!(
        String::from_utf8_lossy(&denied.stdout).contains("Operation not permitted"),
        "{denied:?}"
    );
    let profile: serde_json::Value = serde_json::from_str(&text).unwrap();
    let denied: Vec<&str> = profile["syscalls"][0]["names"]
        .as_array()
        .unwrap()
        .iter()
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
    for call in [
        "unshare",
        "mount",
        "umount2",
        "pivot_root",
        "setns",
        "clone",
        "clone3",
    ] {
        assert!(!denied.contains(&call), "{call} must stay allowed");
    }
    // Installed by the same loaders as buildah's, where the default setting points.
    let SeccompProfile::Localhost(relative) = BuilderSettings::default().buildkit_seccomp_profile
    else {
        panic!("the BuildKit default is the shipped Localhost profile");
    };
    assert_eq!(relative, "archforge/archforge-buildkit.json");
    let objects = kustomize("config/seccomp");
    let map = objects.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
    assert_eq!(map["data"]["archforge-buildkit.json"], text.as_str());
    let loader = objects.iter().find(|o| o["kind"] == "DaemonSet").unwrap();
    let script = loader["spec"]["template"]["spec"]["initContainers"][0]["command"][2]
        .as_str()
        .unwrap();
    assert!(script.contains(&format!("/seccomp/{relative}")), "{script}");
    let chart = std::fs::read_to_string(
        common::repo_root().join("charts/archforge/files/archforge-buildkit.json"),
    )
    .unwrap();
    assert_eq!(
        chart, text,
        "charts/archforge/files/ must be a copy of config/seccomp/"
    );
    let template = std::fs::read_to_string(
        common::repo_root().join("charts/archforge/templates/seccomp-loader.yaml"),
    )
    .unwrap();
    assert!(template.contains(".Files.Get \"files/archforge-buildkit.json\""));
    assert!(template.contains(&format!("/seccomp/{relative}")));
}
