//! `archforge build --local` with the real tools: a git smart-HTTP server, buildah, qemu-user-static
//! and a registry, all on this machine. Checked afterwards with skopeo.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use archforge::registry::sha256_digest;
use common::fixtures::publish_busybox_base;
use common::git::GitServer;
use common::registry::{Mode, TestRegistry};
use serde_json::Value;

struct Setup {
    registry: TestRegistry,
    git: GitServer,
    work: tempfile::TempDir,
    base: String,
}

async fn setup() -> Setup {
    let registry = TestRegistry::start(Mode::Plain);
    let git = GitServer::start();
    let work = tempfile::tempdir().unwrap();
    let base = registry.image("base/busybox:1");
    publish_busybox_base(
        &base,
        &["linux/amd64", "linux/arm64"],
        registry.options(),
        work.path(),
    )
    .await;
    Setup {
        registry,
        git,
        work,
        base,
    }
}

fn imagebuild(path: &Path, url: &str, git_ref: &str, image: &str, build_args: &str) -> String {
    let text = format!(
        "apiVersion: archforge.dev/v1alpha1\nkind: ImageBuild\nmetadata:\n  name: app\nspec:\n  source:\n    git:\n      url: {url}\n      ref: {git_ref}\n    contextDir: app\n  platforms: [linux/amd64, linux/arm64]\n  output:\n    image: {image}\n{build_args}"
    );
    std::fs::write(path, text).unwrap();
    path.display().to_string()
}

fn archforge_build(file: &str, registry: &TestRegistry) -> Output {
    Command::new(env!("CARGO_BIN_EXE_archforge"))
        .args([
            "build",
            "--local",
            file,
            "--insecure-registry",
            &registry.addr,
        ])
        .output()
        .unwrap()
}

/// Copies one image out of the registry and returns (config, the file `name` from its top layer).
fn read_file_from_image(reg: &TestRegistry, reference: &str, name: &str) -> (Value, String) {
    let dir = reg.skopeo_copy_to_dir(reference, &[]);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    let blob = |digest: &str| dir.path().join(digest.trim_start_matches("sha256:"));
    let config: Value = serde_json::from_slice(
        &std::fs::read(blob(manifest["config"]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let top = manifest["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let tar = Command::new("tar")
        .arg("-xzOf")
        .arg(blob(&top))
        .arg(name)
        .output()
        .unwrap();
    assert!(
        tar.status.success(),
        "{name} is not in the top layer: {}",
        String::from_utf8_lossy(&tar.stderr)
    );
    (config, String::from_utf8(tar.stdout).unwrap())
}

#[tokio::test]
async fn two_platforms_built_natively_and_emulated_with_verbatim_build_args() {
    let s = setup().await;
    let marker = s.work.path().join("pwned");
    let hostile = format!("$(touch {}); echo \"x' `id`", marker.display());
    let dockerfile = format!(
        "FROM {}\nARG EVIL\nRUN uname -m > /arch.txt && printf '%s' \"$EVIL\" > /evil.txt\n",
        s.base
    );
    let (url, sha) = s
        .git
        .commit("app", &[("app/Dockerfile", &dockerfile)], "app");
    let image = s.registry.image("team/app:v1");
    let args = format!(
        "  buildArgs:\n    - name: EVIL\n      value: {}\n",
        serde_json::to_string(&hostile).unwrap()
    );
    let file = imagebuild(&s.work.path().join("ib.yaml"), &url, "main", &image, &args);

    let out = archforge_build(&file, &s.registry);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains(&format!("commit  {sha}")),
        "the ref was pinned to the pushed commit:\n{stdout}"
    );
    assert!(
        stderr.contains("linux/arm64 is emulated"),
        "emulation is announced:\n{stderr}"
    );

    let raw = s.registry.skopeo_inspect(&image, &["--raw"]);
    let index: Value = serde_json::from_str(&raw).unwrap();
    assert!(
        stdout.contains(&format!("digest  {}", sha256_digest(raw.as_bytes()))),
        "{stdout}"
    );
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(
        index["annotations"]["org.opencontainers.image.revision"],
        sha.as_str()
    );
    assert_eq!(
        index["annotations"]["org.opencontainers.image.source"],
        url.as_str()
    );
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2);

    for (entry, (arch, uname)) in entries
        .iter()
        .zip([("amd64", "x86_64"), ("arm64", "aarch64")])
    {
        assert_eq!(entry["platform"]["architecture"], arch);
        let reference = format!(
            "{}@{}",
            s.registry.image("team/app"),
            entry["digest"].as_str().unwrap()
        );
        let (config, arch_txt) = read_file_from_image(&s.registry, &reference, "arch.txt");
        assert_eq!(config["architecture"], arch);
        assert_eq!(arch_txt.trim(), uname, "RUN really ran as {arch}");
        let (_, evil) = read_file_from_image(&s.registry, &reference, "evil.txt");
        assert_eq!(evil, hostile, "the build arg arrived verbatim");
        // The per-platform tag points at the same image the index names.
        let tagged = s
            .registry
            .skopeo_inspect(&format!("{image}-linux-{arch}"), &["--raw"]);
        assert_eq!(
            sha256_digest(tagged.as_bytes()),
            entry["digest"].as_str().unwrap()
        );
    }
    assert!(!marker.exists(), "a build arg was executed by a shell");
}

#[tokio::test]
async fn a_failing_dockerfile_fails_the_run_with_its_log() {
    let s = setup().await;
    let dockerfile = format!(
        "FROM {}\nRUN echo archforge-test-boom-$(uname -m) >&2 && false\n",
        s.base
    );
    let (url, _) = s
        .git
        .commit("broken", &[("app/Dockerfile", &dockerfile)], "broken");
    let image = s.registry.image("team/broken:v1");
    let file = imagebuild(&s.work.path().join("ib.yaml"), &url, "main", &image, "");
    let out = archforge_build(&file, &s.registry);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("failed: buildah build exited"), "{stderr}");
    assert!(
        stderr.contains("archforge-test-boom-"),
        "the log tail is shown:\n{stderr}"
    );
    let index_exists = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{image}"),
        ])
        .output()
        .unwrap()
        .status
        .success();
    assert!(!index_exists, "no index is pushed when a platform fails");
}

#[tokio::test]
async fn an_unknown_ref_is_refused_before_building() {
    let s = setup().await;
    let (url, _) = s.git.commit(
        "app",
        &[("app/Dockerfile", &format!("FROM {}\n", s.base))],
        "app",
    );
    let file = imagebuild(
        &s.work.path().join("ib.yaml"),
        &url,
        "no-such-branch",
        &s.registry.image("team/app:v1"),
        "",
    );
    let out = archforge_build(&file, &s.registry);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("has no branch or tag \"no-such-branch\""),
        "{stderr}"
    );
    assert!(!stderr.contains("building"), "nothing was built:\n{stderr}");
}

#[tokio::test]
async fn tags_are_pinned_to_their_commit() {
    let s = setup().await;
    let (url, first) = s.git.commit(
        "app",
        &[(
            "app/Dockerfile",
            &format!("FROM {}\nRUN echo one > /v.txt\n", s.base),
        )],
        "one",
    );
    s.git.tag("app", "v1.0");
    let (_, second) = s.git.commit(
        "app",
        &[(
            "app/Dockerfile",
            &format!("FROM {}\nRUN echo two > /v.txt\n", s.base),
        )],
        "two",
    );
    assert_ne!(first, second);
    let image = s.registry.image("team/app:tagged");
    let file = imagebuild(&s.work.path().join("ib.yaml"), &url, "v1.0", &image, "");
    let out = archforge_build(&file, &s.registry);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("commit  {first}")));
    let (_, v) = read_file_from_image(&s.registry, &format!("{image}-linux-arm64"), "v.txt");
    assert_eq!(v.trim(), "one");
}

/// The processes whose command line mentions `marker`.
fn processes_mentioning(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(marker) {
                found.push(format!("{}: {text}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

#[tokio::test]
async fn ctrl_c_stops_every_builder_process() {
    let s = setup().await;
    let marker = format!("archforge-cancel-{}", std::process::id());
    let dockerfile = format!("FROM {}\nRUN sleep 120 && echo {marker}\n", s.base);
    let (url, _) = s
        .git
        .commit("slow", &[("app/Dockerfile", &dockerfile)], "slow");
    let file = imagebuild(
        &s.work.path().join("ib.yaml"),
        &url,
        "main",
        &s.registry.image("team/slow:v1"),
        "",
    );
    let storage = s.work.path().join(format!("storage-{marker}"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_archforge"))
        .args([
            "build",
            "--local",
            &file,
            "--insecure-registry",
            &s.registry.addr,
        ])
        .arg("--storage")
        .arg(&storage)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until both platforms' RUN steps are running.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while processes_mentioning(&marker).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the RUN steps never started: {:?}",
            processes_mentioning(&marker)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("interrupted"), "{stderr}");
    let storage_text = storage.display().to_string();
    let leftovers: Vec<String> = processes_mentioning(&marker)
        .into_iter()
        .chain(processes_mentioning(&storage_text))
        .collect();
    assert_eq!(
        leftovers,
        Vec::<String>::new(),
        "processes outlived the run"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&storage_text), "mounts outlived the run");
}
