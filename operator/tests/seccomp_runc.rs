//! The shipped seccomp profiles (config/seccomp, the chart's files/) under real runc 1.1 and
//! libseccomp 2.5, the versions of containerd 1.6 nodes: each profile, read the way
//! containerd reads a Localhost profile and the way CRI-O and Docker do, loads, and lets a
//! process with the builder's UID and capabilities do what its builder needs: rootless
//! buildah a `RUN` step, BuildKit's runc its session-keyring step inside a user namespace.
//! Each check also runs with the one change that breaks it, so each can fail.

mod common;

use std::path::Path;
use std::process::Command;

use common::runc::{Pod, RUNTIMES, Runtime, oci_seccomp};
use common::text;
use serde_json::{Value, json};

fn profile(name: &str) -> Value {
    let path = common::repo_root().join("config/seccomp").join(name);
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

const PROFILES: [&str; 2] = ["archforge-builder.json", "archforge-buildkit.json"];

/// `profile` with `calls` moved from wherever they are to a rule of their own with `errno`.
fn with_errno(profile: &Value, calls: &[&str], errno: i64) -> Value {
    let mut changed = profile.clone();
    for rule in changed["syscalls"].as_array_mut().unwrap() {
        rule["names"]
            .as_array_mut()
            .unwrap()
            .retain(|n| !calls.contains(&n.as_str().unwrap()));
    }
    changed["syscalls"].as_array_mut().unwrap().push(json!({
        "names": calls, "action": "SCMP_ACT_ERRNO", "errnoRet": errno
    }));
    changed
}

/// As root of a new user namespace (its one ID the builder's), mounts a tmpfs.
const USERNS_MOUNT: [&str; 7] = [
    "unshare",
    "--user",
    "--map-root-user",
    "--mount",
    "sh",
    "-c",
    "mount -t tmpfs tmpfs /mnt && echo mounted",
];

#[test]
fn each_profile_loads_in_runc_and_lets_the_builder_create_a_user_namespace() {
    let pod = Pod::new();
    let id = pod.run(None, &["id", "-u"]);
    assert_eq!(
        String::from_utf8_lossy(&id.stdout).trim(),
        "1000",
        "{}",
        text(&id)
    );
    for name in PROFILES {
        for runtime in RUNTIMES {
            let seccomp = oci_seccomp(&profile(name), runtime);
            let out = pod.run(Some(&seccomp), &USERNS_MOUNT);
            assert!(
                out.status.success() && String::from_utf8_lossy(&out.stdout).contains("mounted"),
                "{name} as {runtime:?} reads it: {}",
                text(&out)
            );
        }
        // The same run fails where unshare is refused, as under containerd 1.6's default.
        let denied = with_errno(&profile(name), &["unshare"], 1);
        let out = pod.run(Some(&oci_seccomp(&denied, Runtime::ArchMap)), &USERNS_MOUNT);
        assert!(
            !out.status.success(),
            "{name} without unshare: {}",
            text(&out)
        );
    }
}

#[test]
fn runc_refuses_the_flat_architecture_list_the_profiles_had() {
    // What config/seccomp shipped before: one list naming RISCV64 and big-endian S390X.
    let pod = Pod::new();
    let mut legacy = profile("archforge-builder.json");
    legacy.as_object_mut().unwrap().remove("archMap");
    legacy["architectures"] = json!([
        "SCMP_ARCH_X86_64",
        "SCMP_ARCH_X86",
        "SCMP_ARCH_X32",
        "SCMP_ARCH_AARCH64",
        "SCMP_ARCH_ARM",
        "SCMP_ARCH_PPC64LE",
        "SCMP_ARCH_S390X",
        "SCMP_ARCH_RISCV64"
    ]);
    let out = pod.run(Some(&oci_seccomp(&legacy, Runtime::Containerd)), &["true"]);
    assert!(
        text(&out).contains("SCMP_ARCH_RISCV64 is not a valid arch for seccomp"),
        "{}",
        text(&out)
    );
    let names = legacy["architectures"].as_array_mut().unwrap();
    names.retain(|a| a != "SCMP_ARCH_RISCV64");
    let out = pod.run(Some(&oci_seccomp(&legacy, Runtime::Containerd)), &["true"]);
    assert!(
        text(&out).contains("error adding architecture to seccomp filter"),
        "{}",
        text(&out)
    );
}

#[test]
fn every_arch_map_entry_compiles_with_libseccomp() {
    // The entries of other hosts cannot load here, but libseccomp compiles each for exactly
    // its architectures, refusing an unknown one or a mix of byte orders as runc would.
    for name in PROFILES {
        let path = common::repo_root().join("config/seccomp").join(name);
        let out = compile(&path);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "SCMP_ARCH_X86_64 ok\nSCMP_ARCH_AARCH64 ok\n",
            "{}",
            text(&out)
        );
        let mut mixed = profile(name);
        mixed["archMap"][1]["subArchitectures"] = json!(["SCMP_ARCH_ARM", "SCMP_ARCH_S390X"]);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), mixed.to_string()).unwrap();
        let out = compile(file.path());
        assert!(!out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("refuses SCMP_ARCH_AARCH64"),
            "{}",
            text(&out)
        );
    }
}

fn compile(path: &Path) -> std::process::Output {
    Command::new("/usr/bin/python3")
        .arg(common::repo_root().join("scripts/seccomp-exec.py"))
        .arg("--compile")
        .arg(path)
        .output()
        .expect("/usr/bin/python3 with python3-seccomp (`make setup`)")
}

#[test]
fn under_the_buildkit_profile_runc_joins_its_session_keyring_in_a_user_namespace() {
    // rootlesskit's step, then BuildKit's runc running a RUN step's container.
    let pod = Pod::new();
    let bundle = pod.inner_bundle("step");
    let run_step = |seccomp: &Value| {
        pod.run(
            Some(seccomp),
            &[
                "unshare",
                "--user",
                "--map-root-user",
                "--mount",
                "--",
                "runc",
                "--root",
                "/work/runc-state",
                "run",
                "--bundle",
                &bundle,
                "step",
            ],
        )
    };
    let shipped = profile("archforge-buildkit.json");
    for runtime in RUNTIMES {
        let out = run_step(&oci_seccomp(&shipped, runtime));
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("inner ran"),
            "{runtime:?}: {}",
            text(&out)
        );
    }
    // runc tolerates ENOSYS there and nothing else: EPERM fails every RUN step.
    let eperm = with_errno(&shipped, &["add_key", "keyctl", "request_key"], 1);
    let out = run_step(&oci_seccomp(&eperm, Runtime::Containerd));
    assert!(!out.status.success());
    assert!(
        text(&out).contains("unable to join session keyring"),
        "{}",
        text(&out)
    );
}

#[test]
fn rootless_buildah_runs_a_run_step_under_the_buildah_profile() {
    let pod = Pod::new();
    let context = pod.work().join("context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::copy("/bin/busybox", context.join("busybox")).unwrap();
    // The step prints its user namespace's mapping: buildah's, through newuidmap.
    std::fs::write(
        context.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox cat /proc/self/uid_map && /bin/busybox mkdir /made\"]\n",
    )
    .unwrap();
    common::run(
        Command::new("chown")
            .args(["-R", "1000:1000"])
            .arg(&context),
    );
    let build = |seccomp: &Value| {
        pod.run(
            Some(seccomp),
            &[
                "buildah",
                "--root",
                "/work/storage",
                "--runroot",
                "/work/run",
                "--storage-driver",
                "vfs",
                "bud",
                "--isolation",
                "chroot",
                "-t",
                "probe",
                "/work/context",
            ],
        )
    };
    let shipped = profile("archforge-builder.json");
    let out = build(&oci_seccomp(&shipped, Runtime::Containerd));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    // UID 0 of the step is the builder, and the subordinate range is mapped too.
    let mapping: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() == 3 && f.iter().all(|n| n.parse::<u64>().is_ok()))
        .collect();
    assert_eq!(
        mapping,
        [["0", "1000", "1"], ["1", "100000", "65536"]],
        "{stdout}"
    );
    let denied = with_errno(&shipped, &["unshare"], 1);
    let out = build(&oci_seccomp(&denied, Runtime::Containerd));
    assert!(!out.status.success(), "{}", text(&out));
}
