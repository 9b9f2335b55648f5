//! A builder container made by real runc (Debian's runc 1.1 with libseccomp 2.5, as on
//! containerd 1.6 nodes): a shipped seccomp profile turned into the OCI runtime config the
//! way a container runtime turns a Kubernetes `Localhost` profile into one, and a process
//! run under it as the builder runs: a non-root UID with every capability dropped but
//! SETUID and SETGID, privilege escalation allowed (for newuidmap/newgidmap), the host's
//! /usr read-only as its image.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

/// The builder's UID and GID in [`Pod`], with subordinate IDs in its /etc/subuid.
pub const BUILDER_UID: u32 = 1000;

/// How a container runtime reads a `Localhost` seccomp profile file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// containerd (CRI, every version): the file is decoded straight into the OCI
    /// `linux.seccomp` object, so a key the OCI spec lacks (`archMap`) is ignored and runc
    /// filters the node's native architecture only.
    Containerd,
    /// CRI-O and Docker (containers/common, moby): the `archMap` entry of the host's
    /// architecture gives `architectures`, with its sub-architectures.
    ArchMap,
}

pub const RUNTIMES: [Runtime; 2] = [Runtime::Containerd, Runtime::ArchMap];

/// libseccomp's name of this machine's architecture.
pub fn host_seccomp_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "SCMP_ARCH_X86_64",
        "aarch64" => "SCMP_ARCH_AARCH64",
        other => panic!("no seccomp architecture known for {other}"),
    }
}

/// The OCI `linux.seccomp` that `runtime` makes of the profile file `profile`.
pub fn oci_seccomp(profile: &Value, runtime: Runtime) -> Value {
    let mut oci = serde_json::Map::new();
    // The fields of the OCI spec's LinuxSeccomp; a Go json.Unmarshal drops the rest.
    for key in [
        "defaultAction",
        "defaultErrnoRet",
        "architectures",
        "flags",
        "listenerPath",
        "listenerMetadata",
        "syscalls",
    ] {
        if let Some(value) = profile.get(key) {
            oci.insert(key.to_string(), value.clone());
        }
    }
    if runtime == Runtime::ArchMap {
        assert!(
            profile.get("architectures").is_none() || profile.get("archMap").is_none(),
            "CRI-O and Docker refuse a profile with both architectures and archMap"
        );
        let host = profile["archMap"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|entry| entry["architecture"] == host_seccomp_arch());
        if let Some(entry) = host {
            let mut arches = vec![entry["architecture"].clone()];
            arches.extend(
                entry["subArchitectures"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            );
            oci.insert("architectures".into(), Value::Array(arches));
        }
    }
    Value::Object(oci)
}

/// A runc bundle whose process is the builder: the host's /usr and a small /etc naming the
/// builder user, a writable /work (owned by the builder), tmpfs /tmp and /var/tmp, and
/// newuidmap/newgidmap with file capabilities in /helpers (as builder images ship them).
pub struct Pod {
    dir: tempfile::TempDir,
}

static RUNS: AtomicUsize = AtomicUsize::new(0);

impl Pod {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("bundle/rootfs");
        for sub in [
            "proc", "dev", "sys", "tmp", "var/tmp", "usr", "work", "helpers", "etc", "mnt",
        ] {
            std::fs::create_dir_all(rootfs.join(sub)).unwrap();
        }
        // Debian's merged /usr: /bin, /lib... are links into it; otherwise bind them.
        for top in ["bin", "sbin", "lib", "lib64"] {
            let host = Path::new("/").join(top);
            if let Ok(target) = std::fs::read_link(&host) {
                std::os::unix::fs::symlink(target, rootfs.join(top)).unwrap();
            } else if host.is_dir() {
                std::fs::create_dir_all(rootfs.join(top)).unwrap();
            }
        }
        // runc gives a tmpfs the mode of the directory it covers.
        for tmp in ["tmp", "var/tmp"] {
            super::run(Command::new("chmod").arg("1777").arg(rootfs.join(tmp)));
        }
        let etc = rootfs.join("etc");
        let uid = BUILDER_UID;
        let files = [
            (
                "passwd",
                format!("root:x:0:0::/root:/bin/sh\nbuild:x:{uid}:{uid}::/work/home:/bin/sh\n"),
            ),
            ("group", format!("root:x:0:\nbuild:x:{uid}:\n")),
            ("subuid", "build:100000:65536\n".to_string()),
            ("subgid", "build:100000:65536\n".to_string()),
            ("nsswitch.conf", "passwd: files\ngroup: files\n".to_string()),
        ];
        for (name, text) in files {
            std::fs::write(etc.join(name), text).unwrap();
        }
        super::run(
            Command::new("cp")
                .arg("-a")
                .arg("/etc/containers")
                .arg(&etc),
        );
        for (helper, cap) in [
            ("newuidmap", "cap_setuid=ep"),
            ("newgidmap", "cap_setgid=ep"),
        ] {
            let path = rootfs.join("helpers").join(helper);
            std::fs::copy(Path::new("/usr/bin").join(helper), &path).unwrap();
            super::run(Command::new("chmod").arg("0755").arg(&path));
            super::run(Command::new("setcap").arg(cap).arg(&path));
        }
        // buildah's rootless runtime directory must exist and be the user's alone.
        for sub in ["work/home", "work/xdg"] {
            std::fs::create_dir_all(rootfs.join(sub)).unwrap();
        }
        super::run(
            Command::new("chmod")
                .arg("0700")
                .arg(rootfs.join("work/xdg")),
        );
        super::run(
            Command::new("chown")
                .arg("-R")
                .arg(format!("{uid}:{uid}"))
                .arg(rootfs.join("work")),
        );
        super::run(
            Command::new("runc")
                .args(["spec", "--bundle"])
                .arg(dir.path().join("bundle")),
        );
        Pod { dir }
    }

    /// The host path of the pod's /work.
    pub fn work(&self) -> PathBuf {
        self.dir.path().join("bundle/rootfs/work")
    }

    /// Runs `args` in the pod under `seccomp` (an OCI `linux.seccomp`, or none), in /work.
    pub fn run(&self, seccomp: Option<&Value>, args: &[&str]) -> Output {
        let bundle = self.dir.path().join("bundle");
        let config_path = bundle.join("config.json");
        let mut config: Value =
            serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
        let caps = json!(["CAP_SETUID", "CAP_SETGID"]);
        config["process"] = json!({
            "terminal": false,
            "user": {"uid": BUILDER_UID, "gid": BUILDER_UID},
            "args": args,
            "env": ["PATH=/helpers:/usr/bin:/usr/sbin", "HOME=/work/home",
                    "XDG_RUNTIME_DIR=/work/xdg"],
            "cwd": "/work",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": false,
        });
        let mounts = config["mounts"].as_array_mut().unwrap();
        let mut binds = vec![("/usr".to_string(), "/usr".to_string(), "ro")];
        for top in ["/bin", "/sbin", "/lib", "/lib64"] {
            if std::fs::read_link(top).is_err() && Path::new(top).is_dir() {
                binds.push((top.to_string(), top.to_string(), "ro"));
            }
        }
        binds.push(("/work".into(), self.work().display().to_string(), "rw"));
        for (target, source, mode) in binds {
            mounts.push(
                json!({"destination": target, "type": "bind", "source": source,
                               "options": ["rbind", mode]}),
            );
        }
        for target in ["/tmp", "/var/tmp"] {
            mounts.push(
                json!({"destination": target, "type": "tmpfs", "source": "tmpfs",
                               "options": ["nosuid", "nodev"]}),
            );
        }
        match seccomp {
            Some(profile) => config["linux"]["seccomp"] = profile.clone(),
            None => {
                config["linux"].as_object_mut().unwrap().remove("seccomp");
            }
        }
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let id = format!(
            "archforge-test-{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::SeqCst)
        );
        // A bound against a hang only, far above the second or so a run takes.
        Command::new("timeout")
            .args(["--kill-after=10", "600", "runc", "--root"])
            .arg(self.dir.path().join("state"))
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .output()
            .expect("runc (Debian package runc; `make setup`)")
    }

    /// A busybox bundle at /work/<name> for a runc run inside the pod, shaped like a
    /// BuildKit RUN step without a process sandbox (`--oci-worker-no-process-sandbox`):
    /// rootless, no PID namespace, the pod's /proc bound in (a fresh one would be refused
    /// under the pod's masked /proc). It prints `inner ran`.
    pub fn inner_bundle(&self, name: &str) -> String {
        let bundle = self.work().join(name);
        let rootfs = bundle.join("rootfs");
        for sub in ["bin", "proc", "dev", "sys", "tmp"] {
            std::fs::create_dir_all(rootfs.join(sub)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        super::run(
            Command::new("runc")
                .args(["spec", "--rootless", "--bundle"])
                .arg(&bundle),
        );
        let config_path = bundle.join("config.json");
        let mut config: Value =
            serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = json!(["/bin/busybox", "echo", "inner ran"]);
        let linux = &mut config["linux"];
        linux["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|ns| ns["type"] != "pid");
        // In the pod's user namespace the builder is UID 0: runc maps that one ID.
        linux["uidMappings"] = json!([{"containerID": 0, "hostID": 0, "size": 1}]);
        linux["gidMappings"] = json!([{"containerID": 0, "hostID": 0, "size": 1}]);
        for mount in config["mounts"].as_array_mut().unwrap() {
            if mount["destination"] == "/proc" {
                *mount = json!({"destination": "/proc", "type": "bind", "source": "/proc",
                                "options": ["rbind"]});
            }
        }
        std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
        let uid = BUILDER_UID;
        super::run(
            Command::new("chown")
                .arg("-R")
                .arg(format!("{uid}:{uid}"))
                .arg(&bundle),
        );
        format!("/work/{name}")
    }
}

impl Default for Pod {
    fn default() -> Self {
        Self::new()
    }
}
