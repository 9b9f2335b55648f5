//! `archforge build --local` with the real tools: a git smart-HTTP server, buildah, qemu-user-static
//! and a registry, all on this machine. Checked afterwards with skopeo.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use archforge::registry::sha256_digest;
use common::fixtures::publish_busybox_base;
use common::git::GitServer;
use common::registry::{Mode, TestRegistry};
use common::ssh::SshServer;
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
    imagebuild_source(
        path,
        url,
        git_ref,
        "    contextDir: app\n",
        image,
        build_args,
    )
}

/// An ImageBuild file whose `spec.source` ends with `source` (indented four spaces), and then
/// `rest` (more of the spec, or further YAML documents). With per-platform tags, which
/// these tests read images by; the digest-only default has its own test.
fn imagebuild_source(
    path: &Path,
    url: &str,
    git_ref: &str,
    source: &str,
    image: &str,
    rest: &str,
) -> String {
    let text = format!(
        "apiVersion: archforge.dev/v1alpha1\nkind: ImageBuild\nmetadata:\n  name: app\nspec:\n  source:\n    git:\n      url: {url}\n      ref: {git_ref}\n{source}  platforms: [linux/amd64, linux/arm64]\n  output:\n    image: {image}\n    platformTags: true\n{rest}"
    );
    std::fs::write(path, text).unwrap();
    path.display().to_string()
}

/// Whether `reference` exists in the registry (anything was pushed under that tag).
fn image_exists(reference: &str) -> bool {
    Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ])
        .output()
        .unwrap()
        .status
        .success()
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

/// `archforge build --local` of a file that holds Secrets, with `tmpdir` as its TMPDIR
/// (where its private SSH directory is made), so everything the run prints can be read.
fn archforge_build_in(file: &str, registry: &TestRegistry, tmpdir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_archforge"))
        .args([
            "build",
            "--local",
            file,
            "--insecure-registry",
            &registry.addr,
        ])
        .env("TMPDIR", tmpdir)
        .output()
        .unwrap()
}

/// A Secret document with `values` as stringData (JSON strings are YAML double-quoted strings).
fn secret_document(name: &str, values: &[(&str, &str)]) -> String {
    let mut doc =
        format!("---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\nstringData:\n");
    for (key, value) in values {
        doc.push_str(&format!(
            "  {key}: {}\n",
            serde_json::to_string(value).unwrap()
        ));
    }
    doc
}

/// Fails if any line of the private key's body shows up in `printed`.
fn assert_key_absent(key: &str, printed: &str) {
    for line in key
        .lines()
        .filter(|l| l.len() > 16 && !l.starts_with("-----"))
    {
        assert!(
            !printed.contains(line),
            "the private key leaked into the output:\n{printed}"
        );
    }
}

/// The `archforge-ssh-*` directories left in `tmpdir`.
fn ssh_dirs_left(tmpdir: &Path) -> Vec<String> {
    std::fs::read_dir(tmpdir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("archforge-ssh-"))
        .collect()
}

fn ssh_imagebuild(s: &Setup, ssh: &SshServer, known_hosts: &str, image: &str) -> (String, String) {
    let dockerfile = format!("FROM {}\nRUN uname -m > /arch.txt\n", s.base);
    let (_, sha) = s
        .git
        .commit("private", &[("app/Dockerfile", &dockerfile)], "private");
    let url = ssh.url(&s.git.bare("private"));
    let secret = secret_document(
        "git-ssh",
        &[
            ("ssh-privatekey", &ssh.client_key),
            ("known_hosts", known_hosts),
        ],
    );
    let file = imagebuild_source(
        &s.work.path().join("ib.yaml"),
        &url,
        "main",
        "      credentialsSecret: git-ssh\n    contextDir: app\n",
        image,
        &secret,
    );
    (file, sha)
}

#[tokio::test]
async fn an_ssh_source_is_fetched_with_the_secrets_key_and_known_hosts() {
    let s = setup().await;
    let ssh = SshServer::start();
    let image = s.registry.image("team/private:v1");
    let (file, sha) = ssh_imagebuild(&s, &ssh, &ssh.known_hosts, &image);
    let tmpdir = tempfile::tempdir().unwrap();

    let out = archforge_build_in(&file, &s.registry, tmpdir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}\nsshd:\n{}",
        ssh.log()
    );
    assert!(
        stdout.contains(&format!("commit  {sha}")),
        "git ls-remote over SSH pinned main:\n{stdout}"
    );
    let accepted = ssh.log().matches("Accepted publickey for root").count();
    assert!(
        accepted >= 2,
        "ls-remote and fetch both logged in with the key:\n{}",
        ssh.log()
    );
    let raw = s.registry.skopeo_inspect(&image, &["--raw"]);
    let index: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        index["annotations"]["org.opencontainers.image.revision"],
        sha.as_str()
    );
    assert_eq!(
        index["annotations"]["org.opencontainers.image.source"],
        archforge::source::redact_url(&ssh.url(&s.git.bare("private"))).as_str()
    );
    let (_, arch) = read_file_from_image(&s.registry, &format!("{image}-linux-arm64"), "arch.txt");
    assert_eq!(arch.trim(), "aarch64");
    assert_key_absent(&ssh.client_key, &format!("{stdout}{stderr}"));
    assert_eq!(
        ssh_dirs_left(tmpdir.path()),
        Vec::<String>::new(),
        "the key's directory is removed"
    );
}

#[tokio::test]
async fn a_wrong_known_hosts_entry_fails_host_key_verification_and_pushes_nothing() {
    let s = setup().await;
    let ssh = SshServer::start();
    let other = common::ssh::keygen(&s.work.path().join("impostor"));
    let known_hosts = format!("[127.0.0.1]:{} {other}\n", ssh.port);
    let image = s.registry.image("team/private:v1");
    let (file, _) = ssh_imagebuild(&s, &ssh, &known_hosts, &image);
    let tmpdir = tempfile::tempdir().unwrap();

    let out = archforge_build_in(&file, &s.registry, tmpdir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        stderr.contains("host key verification failed")
            && stderr.contains("known_hosts of Secret \"git-ssh\""),
        "{stderr}"
    );
    assert!(!stderr.contains("building"), "nothing was built:\n{stderr}");
    assert!(!image_exists(&image), "nothing was pushed");
    assert!(
        !image_exists(&format!("{image}-linux-amd64")),
        "nothing was pushed"
    );
    assert!(
        !ssh.log().contains("Accepted publickey"),
        "the key was never offered to an unverified server:\n{}",
        ssh.log()
    );
    assert_key_absent(&ssh.client_key, &format!("{stdout}{stderr}"));
    assert_eq!(ssh_dirs_left(tmpdir.path()), Vec::<String>::new());
}

/// Runs `archforge build --local` on a repository with `files` and `links`, contextDir
/// `context_dir`, and returns (output, image).
async fn build_linked(
    s: &Setup,
    files: &[(&str, &str)],
    links: &[(&str, &str)],
    context_dir: &str,
) -> (Output, String) {
    let (url, _) = s.git.commit_with_links("links", files, links, "links");
    let image = s.registry.image("team/links:v1");
    let file = imagebuild_source(
        &s.work.path().join("ib.yaml"),
        &url,
        "main",
        &format!("    contextDir: {context_dir}\n"),
        &image,
        "",
    );
    (archforge_build(&file, &s.registry), image)
}

#[tokio::test]
async fn a_context_dir_linked_out_of_the_repository_is_refused() {
    let s = setup().await;
    let dockerfile = format!("FROM {}\nCOPY . /ctx\n", s.base);
    let (out, image) = build_linked(
        &s,
        &[("app/Dockerfile", &dockerfile)],
        &[("rootlink", "/")],
        "rootlink",
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "spec.source.contextDir \"rootlink\" resolves outside the repository (through a symlink)"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("building"), "nothing was built:\n{stderr}");
    assert!(!image_exists(&format!("{image}-linux-amd64")));
}

#[tokio::test]
async fn a_dockerfile_linked_out_of_the_repository_is_refused() {
    let s = setup().await;
    let (out, image) = build_linked(&s, &[], &[("app/Dockerfile", "/etc/passwd")], "app").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "spec.source.dockerfile \"Dockerfile\" resolves outside the repository (through a symlink)"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("building"), "nothing was built:\n{stderr}");
    assert!(!image_exists(&format!("{image}-linux-amd64")));
}

#[tokio::test]
async fn a_missing_context_dir_or_dockerfile_is_named() {
    let s = setup().await;
    let (out, _) = build_linked(&s, &[("app/README", "no Dockerfile here")], &[], "nope").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr
            .contains("spec.source.contextDir \"nope\" does not exist in the repository at commit"),
        "{stderr}"
    );
    let (out, _) = build_linked(&s, &[], &[], "app").await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(
            "spec.source.dockerfile \"Dockerfile\" does not exist in the repository at commit"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("building"), "nothing was built:\n{stderr}");
}

#[tokio::test]
async fn a_symlink_that_stays_in_the_repository_still_builds() {
    let s = setup().await;
    let dockerfile = format!("FROM {}\nCOPY hello.txt /hello.txt\n", s.base);
    let (out, image) = build_linked(
        &s,
        &[
            ("sub/app/Dockerfile", &dockerfile),
            ("sub/app/hello.txt", "through the link\n"),
        ],
        &[("app", "sub/app")],
        "app",
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, hello) =
        read_file_from_image(&s.registry, &format!("{image}-linux-amd64"), "hello.txt");
    assert_eq!(hello, "through the link\n");
}

#[tokio::test]
async fn an_http_source_is_fetched_with_the_secrets_username_and_password() {
    let s = setup().await;
    let password = "pa55-archforge-git-secret";
    let git = GitServer::start_with_basic_auth("bot", password);
    let dockerfile = format!("FROM {}\nRUN uname -m > /arch.txt\n", s.base);
    let (url, sha) = git.commit("private", &[("app/Dockerfile", &dockerfile)], "private");
    let image = s.registry.image("team/basic:v1");
    let write = |password: &str| {
        imagebuild_source(
            &s.work.path().join("ib.yaml"),
            &url,
            "main",
            "      credentialsSecret: git-basic\n    contextDir: app\n",
            &image,
            &secret_document("git-basic", &[("username", "bot"), ("password", password)]),
        )
    };
    let tmpdir = tempfile::tempdir().unwrap();

    let out = archforge_build_in(&write("wrong-password"), &s.registry, tmpdir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("refused the credentials"), "{stderr}");
    assert!(!stderr.contains("wrong-password"), "{stderr}");

    let out = archforge_build_in(&write(password), &s.registry, tmpdir.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains(&format!("commit  {sha}")),
        "main was pinned over smart HTTP with the credentials:\n{stdout}"
    );
    let (_, arch) = read_file_from_image(&s.registry, &format!("{image}-linux-amd64"), "arch.txt");
    assert_eq!(arch.trim(), "x86_64");
    assert!(
        !format!("{stdout}{stderr}").contains(password),
        "the password leaked into the output"
    );
}

/// `archforge build --local` with `--docker-config docker_config`.
fn archforge_build_with_config(
    file: &str,
    registry: &TestRegistry,
    docker_config: &Path,
) -> Output {
    let config = docker_config.display().to_string();
    archforge_build_with(file, registry, &["--docker-config", &config])
}

/// `archforge build --local FILE --insecure-registry ... EXTRA...`.
fn archforge_build_with(file: &str, registry: &TestRegistry, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_archforge"))
        .args([
            "build",
            "--local",
            file,
            "--insecure-registry",
            &registry.addr,
        ])
        .args(extra)
        .output()
        .unwrap()
}

/// The summary line of `platform` on stdout.
fn summary_line<'a>(stdout: &'a str, platform: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.trim_start().starts_with(platform))
        .unwrap_or_else(|| panic!("no summary line for {platform}:\n{stdout}"))
}

#[test]
fn an_unknown_emulation_mode_is_refused_by_the_command_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_archforge"))
        .args(["build", "--local", "ib.yaml", "--emulation", "bogus"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid value 'bogus' for '--emulation")
            && stderr.contains("Never, Fallback, Always"),
        "{stderr}"
    );
}

#[tokio::test]
async fn emulation_never_refuses_a_foreign_platform_with_the_fix_before_anything_starts() {
    assert_eq!(archforge::local::host_architecture(), "amd64");
    let s = setup().await;
    let dockerfile = format!("FROM {}\nRUN uname -m > /arch.txt\n", s.base);
    let (url, _) = s
        .git
        .commit("app", &[("app/Dockerfile", &dockerfile)], "app");
    let image = s.registry.image("team/never:v1");
    let path = s.work.path().join("ib.yaml");

    let file = imagebuild(&path, &url, "main", &image, "");
    let out = archforge_build_with(&file, &s.registry, &["--emulation", "Never"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for wanted in [
        "linux/arm64 cannot be built natively on this amd64 machine and emulation is Never (--emulation)",
        "apt-get install qemu-user-static binfmt-support",
        "update-binfmts --enable qemu-aarch64",
        "--emulation Fallback",
    ] {
        assert!(stderr.contains(wanted), "{wanted:?} missing:\n{stderr}");
    }
    assert!(!stderr.contains("building"), "nothing was built:\n{stderr}");
    assert!(!image_exists(&image), "nothing was pushed");
    assert!(
        !image_exists(&format!("{image}-linux-amd64")),
        "nothing was pushed"
    );

    // spec.emulation alone has the same effect, and says where Never came from.
    let file = imagebuild(&path, &url, "main", &image, "  emulation: Never\n");
    let out = archforge_build(&file, &s.registry);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("emulation is Never (spec.emulation)"),
        "{stderr}"
    );
    assert!(
        !image_exists(&format!("{image}-linux-amd64")),
        "nothing was pushed"
    );
}

#[tokio::test]
async fn emulation_fallback_from_the_flag_beats_the_spec_and_reports_emulated() {
    let s = setup().await;
    let dockerfile = format!("FROM {}\nRUN uname -m > /arch.txt\n", s.base);
    let (url, _) = s
        .git
        .commit("app", &[("app/Dockerfile", &dockerfile)], "app");
    let image = s.registry.image("team/fallback:v1");
    let file = imagebuild(
        &s.work.path().join("ib.yaml"),
        &url,
        "main",
        &image,
        "  emulation: Never\n",
    );
    let out = archforge_build_with(&file, &s.registry, &["--emulation", "Fallback"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        summary_line(&stdout, "linux/arm64").ends_with("(emulated)"),
        "{stdout}"
    );
    assert!(
        !summary_line(&stdout, "linux/amd64").contains("emulated"),
        "{stdout}"
    );
    let (config, arch) =
        read_file_from_image(&s.registry, &format!("{image}-linux-arm64"), "arch.txt");
    assert_eq!(config["architecture"], "arm64");
    assert_eq!(arch.trim(), "aarch64");
}

#[tokio::test]
async fn an_allowed_failure_leaves_it_out_of_the_index_and_a_required_one_fails_the_run() {
    let s = setup().await;
    let only_on = |uname: &str| format!("FROM {}\nRUN [ \"$(uname -m)\" = {uname} ]\n", s.base);
    let settings = "  platformSettings:\n    - platform: linux/arm64\n      allowFailure: true\n      retries: 1\n";
    let path = s.work.path().join("ib.yaml");

    // arm64 may fail, and does (after one retry): the index holds amd64 alone.
    let (url, _) = s.git.commit(
        "amd64-only",
        &[("app/Dockerfile", &only_on("x86_64"))],
        "x86_64 only",
    );
    let image = s.registry.image("team/partial:v1");
    let file = imagebuild(&path, &url, "main", &image, settings);
    let out = archforge_build(&file, &s.registry);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("linux/arm64") && stderr.contains("attempt 1 of 2 failed"),
        "the allowed platform was retried once:\n{stderr}"
    );
    let missing = summary_line(&stdout, "linux/arm64");
    assert!(
        missing.contains(
            "missing (allowFailure, emulated): linux/arm64 failed: buildah build exited with"
        ),
        "{stdout}"
    );
    let index: Value =
        serde_json::from_str(&s.registry.skopeo_inspect(&image, &["--raw"])).unwrap();
    let architectures: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(architectures, ["amd64"]);

    // amd64 may not fail, and does: the run fails and pushes no index, although arm64 built.
    let (url, _) = s.git.commit(
        "arm64-only",
        &[("app/Dockerfile", &only_on("aarch64"))],
        "aarch64 only",
    );
    let image = s.registry.image("team/required:v1");
    let file = imagebuild(&path, &url, "main", &image, settings);
    let out = archforge_build(&file, &s.registry);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("linux/amd64 failed: buildah build exited"),
        "{stderr}"
    );
    assert!(image_exists(&format!("{image}-linux-arm64")), "{stderr}");
    assert!(
        !image_exists(&image),
        "no index without a required platform"
    );
}

#[tokio::test]
async fn a_platform_timeout_stops_its_buildah_and_names_the_timeout() {
    let s = setup().await;
    let marker = format!("archforge-timeout-{}", std::process::id());
    let dockerfile = format!(
        "FROM {}\nRUN if [ \"$(uname -m)\" = aarch64 ]; then sleep 30 && echo {marker}; fi\n",
        s.base
    );
    let (url, _) = s
        .git
        .commit("slow", &[("app/Dockerfile", &dockerfile)], "slow on arm64");
    let image = s.registry.image("team/timeout:v1");
    let file = imagebuild(
        &s.work.path().join("ib.yaml"),
        &url,
        "main",
        &image,
        "  platformSettings:\n    - platform: linux/arm64\n      timeout: 2s\n",
    );
    let started = std::time::Instant::now();
    let out = archforge_build(&file, &s.registry);
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "linux/arm64 failed: timed out after 2s (spec.platformSettings[linux/arm64].timeout)"
        ),
        "{stderr}"
    );
    assert!(
        elapsed < std::time::Duration::from_secs(25),
        "the 30s RUN was cut short: {elapsed:?}\n{stderr}"
    );
    assert_eq!(
        processes_mentioning(&marker),
        Vec::<String>::new(),
        "the timed-out RUN outlived its buildah"
    );
    assert!(!image_exists(&image));
}

#[tokio::test]
async fn a_symlink_out_of_the_repository_cannot_leak_the_push_credentials_through_a_bind_mount() {
    let s = setup().await;
    let password = "archforge-registry-secret-417";
    let config = s.work.path().join("docker-config.json");
    std::fs::write(&config, s.registry.docker_config_json(password)).unwrap();
    // buildah confines COPY to the context, but mounts a bind source's link target from the host.
    let dockerfile = format!(
        "FROM {}\nRUN --mount=type=bind,source=leak,target=/x cat /x > /stolen\n",
        s.base
    );
    let (url, sha) = s.git.commit_with_links(
        "leak",
        &[("app/Dockerfile", &dockerfile)],
        &[("app/leak", config.to_str().unwrap())],
        "leak",
    );
    let image = s.registry.image("team/leak:v1");
    let file = imagebuild(&s.work.path().join("ib.yaml"), &url, "main", &image, "");
    let out = archforge_build_with_config(&file, &s.registry, &config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        let (_, stolen) =
            read_file_from_image(&s.registry, &format!("{image}-linux-amd64"), "stolen");
        panic!(
            "the build ran; the pushed image holds the password: {}\n{stdout}",
            stolen.contains(password)
        );
    }
    assert!(
        stderr.contains(&format!(
            "the repository's symlink \"app/leak\" (at commit {}) points outside it (to {:?})",
            sha, config
        )) && stderr.contains("because a RUN --mount or ADD could read through them"),
        "{stderr}"
    );
    assert!(!stderr.contains("building"), "nothing was built:\n{stderr}");
    assert!(
        !image_exists(&format!("{image}-linux-amd64")),
        "nothing was pushed"
    );
    assert!(
        !image_exists(&format!("{image}-linux-arm64")),
        "nothing was pushed"
    );
    assert!(!image_exists(&image), "nothing was pushed");
    assert!(!format!("{stdout}{stderr}").contains(password));
}

#[tokio::test]
async fn a_symlink_to_a_directory_of_the_repository_still_serves_a_bind_mount() {
    let s = setup().await;
    let dockerfile = format!(
        "FROM {}\nRUN --mount=type=bind,source=lib,target=/x cat /x/util.txt > /got.txt\n",
        s.base
    );
    let (out, image) = build_linked(
        &s,
        &[
            ("app/Dockerfile", &dockerfile),
            ("app/src/lib/util.txt", "in the repository\n"),
        ],
        &[("app/lib", "src/lib"), ("app/readme", "../README")],
        "app",
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, got) = read_file_from_image(&s.registry, &format!("{image}-linux-amd64"), "got.txt");
    assert_eq!(got, "in the repository\n");
}

#[test]
fn build_local_never_prints_a_malformed_secret_of_the_file() {
    for (password_line, line, column) in common::MALFORMED_SECRET_LINES {
        let dir = tempfile::tempdir().unwrap();
        let file = common::write_imagebuild_with_secret_line(dir.path(), password_line);
        let out = Command::new(env!("CARGO_BIN_EXE_archforge"))
            .args(["build", "--local", &file])
            .output()
            .unwrap();
        common::assert_malformed_secret_hidden(&out, line, column);
    }
}

#[tokio::test]
async fn the_git_password_is_not_sent_to_the_host_a_redirect_leads_to() {
    let trap = common::git::RedirectTrap::start();
    let work = tempfile::tempdir().unwrap();
    let password = "pa55-archforge-redirect-secret";
    let url = format!("{}/team/app.git", trap.url);
    // A full SHA is fetched by git itself (no smart-HTTP pinning first); "main" is pinned.
    for git_ref in ["0123456789abcdef0123456789abcdef01234567", "main"] {
        let file = imagebuild_source(
            &work.path().join("ib.yaml"),
            &url,
            git_ref,
            "      credentialsSecret: git-basic\n",
            "127.0.0.1:1/team/app:v1",
            &secret_document("git-basic", &[("username", "bot"), ("password", password)]),
        );
        let before = trap.requests().lines().count();
        let out = Command::new(env!("CARGO_BIN_EXE_archforge"))
            .args(["build", "--local", &file])
            .env("TMPDIR", work.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        let requests = trap.requests();
        assert!(
            requests.lines().count() > before,
            "the redirect was followed ({git_ref}):\n{stderr}"
        );
        assert!(
            requests.lines().all(|l| l.ends_with(" -")),
            "credentials went to the other host ({git_ref}):\n{requests}"
        );
        assert!(!stderr.contains(password), "{stderr}");
        if git_ref != "main" {
            assert!(
                stderr.contains("the git server redirected to http://127.0.0.2:")
                    && stderr.contains(&format!("are only given to {}", trap.url)),
                "{stderr}"
            );
        } else {
            // The smart-HTTP lookup names the host that refused, not the one asked.
            assert!(
                stderr.contains("(HTTP 401) after a redirect to http://127.0.0.2:"),
                "{stderr}"
            );
        }
    }
}

/// A Secret document with the signing key, as `cosign generate-key-pair k8s://` lays it out.
fn signing_secret(name: &str, pem: &str) -> String {
    let indented: String = pem.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\nstringData:\n  cosign.key: |\n{indented}"
    )
}

#[tokio::test]
async fn a_signed_local_build_pushes_by_digest_only_and_verifies() {
    let s = setup().await;
    let (url, commit) = s.git.commit(
        "app",
        &[(
            "app/Dockerfile",
            &format!("FROM {}\nRUN uname -m > /arch.txt\n", s.base),
        )],
        "initial",
    );
    let key = archforge::supply::SigningKey::generate();
    let pem = key.to_pkcs8_pem();
    let image = s.registry.image("team/signed:v1");
    let file = s.work.path().join("signed.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: archforge.dev/v1alpha1\nkind: ImageBuild\nmetadata:\n  name: app\nspec:\n  source:\n    git:\n      url: {url}\n      ref: main\n    contextDir: app\n  platforms: [linux/amd64, linux/arm64]\n  output:\n    image: {image}\n    signing:\n      keySecret: cosign\n{}",
            signing_secret("cosign", &pem)
        ),
    )
    .unwrap();
    let out = archforge_build(&file.display().to_string(), &s.registry);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("signed  index signature sha256:"),
        "{stdout}"
    );
    // Progress names the repository pushed to, not buildah's internal placeholder.
    assert!(
        stderr.contains(&format!("pushing {} (by digest)", repo_of(&image)))
            && !stderr.contains("@@unknown-digest@@"),
        "{stderr}"
    );
    for line in pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(
            !stdout.contains(line) && !stderr.contains(line),
            "key material printed"
        );
    }

    // Digest-only: the index tag and cosign's attachment tags, no -linux-* tag.
    let repo = s.registry.image("team/signed");
    let tags: Value = serde_json::from_str(&common::run(
        Command::new("skopeo")
            .args(["list-tags", "--tls-verify=false"])
            .arg(format!("docker://{repo}")),
    ))
    .unwrap();
    let tags: Vec<&str> = tags["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(tags.iter().all(|t| !t.contains("linux")), "{tags:?}");
    assert_eq!(
        tags.iter().filter(|t| t.ends_with(".sig")).count(),
        3,
        "{tags:?}"
    );
    assert_eq!(
        tags.iter().filter(|t| t.ends_with(".att")).count(),
        3,
        "{tags:?}"
    );

    let public = s.work.path().join("cosign.pub");
    std::fs::write(&public, key.public_pem()).unwrap();
    let verified = Command::new(env!("CARGO_BIN_EXE_archforge"))
        .args(["verify", &image, "--key"])
        .arg(&public)
        .args(["--insecure-registry", &s.registry.addr])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verified.stdout);
    assert!(
        verified.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&verified.stderr)
    );
    assert_eq!(
        said.matches(&format!("commit {commit}")).count(),
        3,
        "{said}"
    );
    // A workstation is no isolated build namespace: the provenance says so.
    assert_eq!(said.matches("not isolated").count(), 3, "{said}");

    let policy = common::sigstore::SigstorePolicy::new(&s.registry, &key.public_pem());
    let (accepted, why) = policy.copy(&s.registry, &image, &["--all"]);
    assert!(accepted, "{why}");
}

#[test]
fn a_malformed_signing_key_fails_before_building_and_is_not_quoted() {
    let work = tempfile::tempdir().unwrap();
    let key = archforge::supply::SigningKey::generate().to_pkcs8_pem();
    // Truncated: the body is still base64 of key bytes, which must not be shown.
    let broken: String =
        key.lines().take(2).collect::<Vec<_>>().join("\n") + "\n-----END PRIVATE KEY-----\n";
    let file = work.path().join("ib.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: archforge.dev/v1alpha1\nkind: ImageBuild\nmetadata:\n  name: app\nspec:\n  source:\n    git:\n      url: https://git.invalid/app.git\n  platforms: [linux/amd64]\n  output:\n    image: 127.0.0.1:9/team/app:v1\n    signing:\n      keySecret: cosign\n{}",
            signing_secret("cosign", &broken)
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_archforge"))
        .args(["build", "--local"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("Secret \"cosign\" (spec.output.signing.keySecret), key cosign.key"),
        "{stderr}"
    );
    let body = key.lines().nth(1).unwrap();
    assert!(!stderr.contains(&body[..20]), "{stderr}");
    // Named before any network: the git host (.invalid) was never asked.
    assert!(!stderr.contains("git.invalid"), "{stderr}");

    // No Secret at all, and --signing-key with a wrong password.
    let missing = std::fs::read_to_string(&file).unwrap();
    let missing = &missing[..missing.find("---").unwrap()];
    std::fs::write(&file, missing).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_archforge"))
        .args(["build", "--local"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("names Secret \"cosign\", which is not in the ImageBuild's file"),
        "{stderr}"
    );
}

/// The repository of `host:port/path:tag`.
fn repo_of(image: &str) -> &str {
    image.rsplit_once(':').map_or(image, |(repo, _)| repo)
}
