//! Runs a rendered builder container's real command and environment under `/bin/sh`, in a
//! directory laid out as the pod would be, with a builder image made of small fakes on PATH:
//! what a real builder would receive is observed rather than inferred, and each piece of the
//! image contract can be taken away.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use archforge::render::{BUILDER_CONTAINER, BUILDKIT_TRUST_DIR};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Container;

/// How a newuidmap/newgidmap helper is in the fake image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Helper {
    /// Not on PATH.
    Missing,
    /// Mode 0755, as with file capabilities.
    FileCaps,
    /// Mode 04755, as Debian's `uidmap` installs it.
    SetuidRoot,
}

/// The builder image the script runs against. `Default` holds everything the contract asks.
#[derive(Clone, Debug)]
pub struct FakeImage {
    /// What `buildah --version` says, or no buildah at all.
    pub buildah_version: Option<String>,
    /// How many lines `buildah unshare cat /proc/self/{uid,gid}_map` prints (1: the
    /// single-mapping fallback), and for uid_map alone when `map_lines_uid` says.
    pub map_lines: usize,
    pub map_lines_uid: Option<usize>,
    /// What `buildah unshare` prints and its exit status, instead of a map.
    pub unshare_fails: Option<String>,
    pub newuidmap: Helper,
    pub newgidmap: Helper,
    pub fuse_overlayfs: bool,
    /// A `realpath` that refuses `-m` (BusyBox's) instead of GNU's.
    pub busybox_realpath: bool,
    /// The fuse device the Job names (`/dev/null` is a character device anyone may open).
    pub fuse_device: PathBuf,
    /// /etc/subuid and /etc/subgid; `None` for the running user's range.
    pub subuid: Option<String>,
    pub subgid: Option<String>,
    /// BuildKit's programs besides the recorded one.
    pub buildkit_tools: Vec<&'static str>,
    /// Run the script as this UID (and GID) instead of the test's own, with `setpriv`.
    pub run_as: Option<u32>,
}

impl Default for FakeImage {
    fn default() -> Self {
        FakeImage {
            buildah_version: Some(
                "buildah version 1.43.0 (image-spec 1.1.1, runtime-spec 1.2.0)".into(),
            ),
            map_lines: 3,
            map_lines_uid: None,
            unshare_fails: None,
            newuidmap: Helper::FileCaps,
            newgidmap: Helper::FileCaps,
            fuse_overlayfs: true,
            busybox_realpath: false,
            fuse_device: PathBuf::from("/dev/null"),
            subuid: None,
            subgid: None,
            buildkit_tools: vec!["buildctl", "buildkitd", "rootlesskit"],
            run_as: None,
        }
    }
}

/// What the container did.
pub struct Ran {
    pub output: std::process::Output,
    /// Each call of the recorded tool, with its arguments.
    pub calls: Vec<Vec<String>>,
    /// The pod's `$HOME` (buildah) and BuildKit's trust directory, as run here.
    pub home: PathBuf,
    pub trust_dir: PathBuf,
}

impl Ran {
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
}

pub fn builder(job: &Job) -> &Container {
    let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    pod.init_containers
        .iter()
        .flatten()
        .find(|c| c.name == BUILDER_CONTAINER)
        .expect("a builder init container")
}

fn write_tool(bin: &Path, name: &str, text: &str, mode: u32) {
    let path = bin.join(name);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The system programs the scripts use, linked one by one, so that the image's own
/// (newuidmap, buildah...) are only the fakes.
const SYSTEM_TOOLS: &[&str] = &[
    "sh", "sed", "grep", "tail", "head", "id", "realpath", "find", "readlink", "mkdir", "cat",
    "rm", "cp", "touch", "tr", "wc", "dirname",
];

fn install_image(image: &FakeImage, bin: &Path, sys: &Path, tool: &str, recorder: &str) {
    std::fs::create_dir_all(sys).unwrap();
    for name in SYSTEM_TOOLS {
        if image.busybox_realpath && *name == "realpath" {
            continue;
        }
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.exists());
        if let Some(path) = found {
            std::os::unix::fs::symlink(path, sys.join(name)).unwrap();
        }
    }
    if image.busybox_realpath {
        write_tool(
            bin,
            "realpath",
            "#!/bin/sh\nfor a; do [ \"$a\" = -m ] && { echo 'realpath: unrecognized option: m' >&2; exit 1; }; done\nexit 0\n",
            0o755,
        );
    }
    let recorder_name = format!("{tool}.recorder");
    write_tool(bin, &recorder_name, recorder, 0o755);
    if tool == "buildah" {
        if let Some(version) = &image.buildah_version {
            let map = |lines: usize| -> String {
                (0..lines)
                    .map(|i| format!("{:>10} {:>10} {:>10}\\n", i, 100000 + i, 1))
                    .collect()
            };
            let (uid_map, gid_map) = (
                map(image.map_lines_uid.unwrap_or(image.map_lines)),
                map(image.map_lines),
            );
            let unshare = match &image.unshare_fails {
                Some(message) => format!("printf '%s\\n' '{message}' >&2; exit 1"),
                None => format!(
                    "printf 'WARN[0000] a warning buildah may print\\n' >&2; case \"$*\" in *uid_map*) printf '{uid_map}' ;; *) printf '{gid_map}' ;; esac"
                ),
            };
            write_tool(
                bin,
                "buildah",
                &format!(
                    "#!/bin/sh\ncase \"$1\" in\n  --version) echo '{version}' ;;\n  unshare) {unshare} ;;\n  *) exec \"$(dirname \"$0\")/{recorder_name}\" \"$@\" ;;\nesac\n"
                ),
                0o755,
            );
        }
    } else {
        std::fs::rename(bin.join(&recorder_name), bin.join(tool)).unwrap();
        for other in &image.buildkit_tools {
            write_tool(bin, other, "#!/bin/sh\nexit 0\n", 0o755);
        }
    }
    for (name, helper) in [
        ("newuidmap", image.newuidmap),
        ("newgidmap", image.newgidmap),
    ] {
        match helper {
            Helper::Missing => {}
            Helper::FileCaps => write_tool(bin, name, "#!/bin/sh\nexit 0\n", 0o755),
            Helper::SetuidRoot => write_tool(bin, name, "#!/bin/sh\nexit 0\n", 0o4755),
        }
    }
    if image.fuse_overlayfs {
        write_tool(bin, "fuse-overlayfs", "#!/bin/sh\nexit 0\n", 0o755);
    }
}

/// Runs `job`'s builder container as [`run_container`] does, against `image`.
#[allow(clippy::too_many_arguments)]
pub fn run_container_in(
    image: &FakeImage,
    job: &Job,
    dir: &Path,
    fill: impl FnOnce(&Path),
    tool: &str,
    script: impl FnOnce(&Path) -> String,
    relocate: impl Fn(Option<&str>, &str) -> String,
) -> Ran {
    let builder = builder(job);
    // The workspace git-sync would leave: a link to the checked-out worktree.
    let workspace = dir.join("workspace");
    std::fs::create_dir_all(workspace.join(".worktrees/abc")).unwrap();
    std::os::unix::fs::symlink(".worktrees/abc", workspace.join("source")).unwrap();
    fill(&workspace.join(".worktrees/abc"));
    // The emptyDirs the Job mounts for registry trust.
    let home = dir.join("home");
    for sub in ["registries.conf.d", "certs.d"] {
        std::fs::create_dir_all(home.join(".config/containers").join(sub)).unwrap();
    }
    let trust_dir = dir.join("trust");
    std::fs::create_dir_all(&trust_dir).unwrap();
    let (bin, sys) = (dir.join("bin"), dir.join("sys"));
    std::fs::create_dir(&bin).unwrap();
    let log = dir.join("argv.log");
    install_image(image, &bin, &sys, tool, &script(&log));
    let me = crate::common::run(Command::new("id").arg("-u"));
    let own_range = format!("{me}:100000:65536\n");
    let subuid = dir.join("subuid");
    let subgid = dir.join("subgid");
    std::fs::write(&subuid, image.subuid.as_deref().unwrap_or(&own_range)).unwrap();
    std::fs::write(&subgid, image.subgid.as_deref().unwrap_or(&own_range)).unwrap();

    let command = builder.command.as_ref().unwrap();
    let mut cmd = match image.run_as {
        None => Command::new(&command[0]),
        Some(uid) => {
            // The test's directory is its own (0700): let that user in.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            let mut cmd = Command::new("/usr/bin/setpriv");
            cmd.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .args(["--clear-groups", "--"])
                .arg(&command[0]);
            cmd
        }
    };
    cmd.args(command[1..].iter().map(|a| relocate(None, a)))
        .env_clear()
        .env("PATH", format!("{}:{}", bin.display(), sys.display()));
    for var in builder.env.as_ref().unwrap() {
        let value = var.value.as_deref().unwrap();
        let value = match var.name.as_str() {
            "ARCHFORGE_WORKSPACE" => workspace.display().to_string(),
            "HOME" => home.display().to_string(),
            "ARCHFORGE_FUSE_DEVICE" => image.fuse_device.display().to_string(),
            "ARCHFORGE_SUBUID_FILE" => subuid.display().to_string(),
            "ARCHFORGE_SUBGID_FILE" => subgid.display().to_string(),
            _ => relocate(Some(&var.name), value)
                .replace(BUILDKIT_TRUST_DIR, &trust_dir.display().to_string()),
        };
        cmd.env(&var.name, value);
    }
    let output = cmd.output().unwrap();
    let recorded = std::fs::read_to_string(&log).unwrap_or_default();
    let calls = recorded
        .split("\n\0")
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.split('\0')
                .filter(|a| !a.is_empty())
                .map(String::from)
                .collect()
        })
        .collect();
    Ran {
        output,
        calls,
        home,
        trust_dir,
    }
}

/// Runs `job`'s builder container's real command and environment under `/bin/sh`, in the
/// workspace git-sync would leave in `dir` (`fill` writes its checkout), with a builder
/// image that meets the contract and `tool` on PATH: the script `script(log)` that records
/// each call's arguments in `log`. `relocate` gives each argument (name `None`) and
/// environment value (`Some(name)`) as run here, to move the pod's paths into `dir`. What
/// the run printed, and each call's arguments.
pub fn run_container(
    job: &Job,
    dir: &Path,
    fill: impl FnOnce(&Path),
    tool: &str,
    script: impl FnOnce(&Path) -> String,
    relocate: impl Fn(Option<&str>, &str) -> String,
) -> (std::process::Output, Vec<Vec<String>>) {
    let ran = run_container_in(
        &FakeImage::default(),
        job,
        dir,
        fill,
        tool,
        script,
        relocate,
    );
    (ran.output, ran.calls)
}

/// A `script` for [`run_container`]: records each call's arguments, NUL-separated.
pub fn recorder(log: &Path) -> String {
    format!(
        "#!/bin/sh\nfor a in \"$@\"; do printf '%s\\0' \"$a\" >> {}; done\nprintf '\\n\\0' >> {}\n",
        log.display(),
        log.display()
    )
}
