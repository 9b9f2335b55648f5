//! The node confinement archforge ships (config/apparmor, config/seccomp and the chart's
//! copies), checked with the real apparmor_parser and the real libseccomp.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

/// `apparmor_parser` on `path`, compiling only: never loaded into this machine's kernel.
pub fn apparmor_parse(path: &Path) -> Output {
    Command::new("apparmor_parser")
        .args(["-Q", "-K", "-T"])
        .arg(path)
        .output()
        .expect("apparmor_parser (Debian package apparmor; `make setup`)")
}

/// The AppArmor profile at `path`: it compiles, is named `name`, keeps the runtime default's
/// denials and lets the builder mount; and the parser really checks (the profile with the
/// comma of `typo_line` dropped is refused). Returns the profile's text.
pub fn check_apparmor_profile(path: &Path, name: &str, typo_line: &str) -> String {
    let output = apparmor_parse(path);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(&format!("\nprofile {name} flags=")));
    for denial in [
        "deny @{PROC}/sysrq-trigger rwklx,",
        "deny @{PROC}/kcore rwklx,",
        "deny /sys/firmware/** rwklx,",
        "deny /sys/kernel/security/** rwklx,",
    ] {
        assert!(text.contains(denial), "lost {denial}");
    }
    assert!(
        text.lines().any(|l| l.trim() == "mount,")
            && !text.lines().any(|l| l.trim().starts_with("deny mount")),
        "a rootless builder must be able to mount"
    );
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken");
    let typo = typo_line
        .strip_suffix(',')
        .expect("a rule ends with a comma");
    std::fs::write(&broken, text.replace(typo_line, typo)).unwrap();
    assert!(!apparmor_parse(&broken).status.success());
    text
}

/// Runs `command` under `profile` with the real libseccomp (scripts/seccomp-exec.py).
pub fn under_seccomp(profile: &Path, command: &[&str]) -> Output {
    Command::new("/usr/bin/python3")
        .arg(super::repo_root().join("scripts/seccomp-exec.py"))
        .arg(profile)
        .args(command)
        .output()
        .expect("/usr/bin/python3 with python3-seccomp (`make setup`)")
}

/// A probe that calls acct(NULL), harmless when allowed (it only switches accounting off):
/// prints `ok`, or the error it got.
pub const ACCT_PROBE: [&str; 3] = [
    "/usr/bin/python3",
    "-c",
    "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); r = libc.syscall(163, None); \
     print('ok' if r == 0 else os.strerror(ctypes.get_errno()))",
];

/// A probe that calls keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0): prints
/// `ok`, or the error it got.
pub const KEYCTL_PROBE: [&str; 3] = [
    "/usr/bin/python3",
    "-c",
    "import ctypes, os, platform; libc = ctypes.CDLL(None, use_errno=True); \
     nr = {'x86_64': 250, 'aarch64': 219}[platform.machine()]; \
     r = libc.syscall(nr, 0, -3, 0); print('ok' if r >= 0 else os.strerror(ctypes.get_errno()))",
];

/// The calls a rootless builder makes to enter its user and mount namespaces and mount in
/// them, which every builder seccomp profile allows.
pub const ROOTLESS_CALLS: [&str; 6] = [
    "unshare",
    "mount",
    "umount2",
    "pivot_root",
    "setns",
    "clone",
];

/// Under the seccomp profile at `profile`, `mount_script` runs as root of a new user and
/// mount namespace and prints `mounted`, and [`ACCT_PROBE`] gets EPERM. Returns the
/// profile's text.
pub fn check_seccomp_profile(profile: &Path, mount_script: &str) -> String {
    let mount = under_seccomp(
        profile,
        &[
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            mount_script,
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&mount.stdout).trim(),
        "mounted",
        "{}",
        String::from_utf8_lossy(&mount.stderr)
    );
    let denied = under_seccomp(profile, &ACCT_PROBE);
    assert!(
        String::from_utf8_lossy(&denied.stdout).contains("Operation not permitted"),
        "{denied:?}"
    );
    // The keyring calls look absent (ENOSYS), the one refusal runc tolerates when it
    // joins a session keyring (tests/seccomp_runc.rs runs that step under real runc).
    let keyring = under_seccomp(profile, &KEYCTL_PROBE);
    assert!(
        String::from_utf8_lossy(&keyring.stdout).contains("Function not implemented"),
        "{keyring:?}"
    );
    std::fs::read_to_string(profile).unwrap()
}

/// The node-profiles loader among `objects` (config/node-profiles or a chart render): its
/// ConfigMap holds `text` under `key`; returns the shell script of its init container
/// `container` (`seccomp` or `apparmor`).
pub fn loader_script(objects: &[Value], container: &str, key: &str, text: &str) -> String {
    let map = objects.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
    assert_eq!(map["data"][key], text);
    let loader = objects.iter().find(|o| o["kind"] == "DaemonSet").unwrap();
    let init = loader["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == container)
        .unwrap_or_else(|| panic!("no init container {container}"));
    init["command"][2].as_str().unwrap().to_string()
}

/// `charts/archforge/files/<file>` is a copy of `text`, the profile in config/ (`make
/// manifests` copies it).
pub fn assert_chart_copy(file: &str, text: &str) {
    let chart =
        std::fs::read_to_string(super::repo_root().join("charts/archforge/files").join(file))
            .unwrap();
    assert_eq!(
        chart, text,
        "charts/archforge/files/{file} must be a copy of config/'s: `make manifests`"
    );
}
