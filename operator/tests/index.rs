//! Index assembly against a real registry (Debian's docker-registry on loopback), checked with
//! an independent client (skopeo).

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use archforge::api::MediaType;
use archforge::plan::Platform;
use archforge::registry::{
    DockerConfig, MAX_CONFIG_BYTES, PlatformImage, PushedIndex, Registry, RegistryError,
    RegistryOptions, RegistryResult, RetryPolicy, parse_reference, sha256_digest,
};
use common::registry::hostile::{
    Body, Counts, HostileRegistry, Script, Tricks, config_prefix, manifest_json,
};
use common::registry::{Mode, PASSWORD, TestRegistry};
use serde_json::Value;

fn platform(s: &str) -> Platform {
    s.parse().unwrap()
}

fn annotations() -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "org.opencontainers.image.source".into(),
            "https://git.example.com/app.git".into(),
        ),
        (
            "org.opencontainers.image.revision".into(),
            "0123456789abcdef0123456789abcdef01234567".into(),
        ),
        (
            "org.opencontainers.image.created".into(),
            "2026-11-23T10:00:00Z".into(),
        ),
    ])
}

/// Pushes amd64 and arm64 images under `<repo>:v1-<platform>` and returns them.
async fn push_two(registry: &Registry, repo: &str, media_type: MediaType) -> Vec<PlatformImage> {
    let mut images = Vec::new();
    for p in ["linux/amd64", "linux/arm64"] {
        let platform = platform(p);
        let tag = format!("{repo}:v1-{}", platform.slug());
        let digest = registry
            .push_synthetic_image(&tag, &platform, media_type, "test")
            .await
            .unwrap();
        images.push(PlatformImage { platform, digest });
    }
    images
}

fn skopeo_raw(reg: &TestRegistry, reference: &str) -> (Value, String) {
    let raw = reg.skopeo_inspect(reference, &["--raw"]);
    (
        serde_json::from_str(&raw).unwrap(),
        sha256_digest(raw.as_bytes()),
    )
}

/// The manifest digest a client resolves from `reference` when it asks for linux/`arch`:
/// skopeo copies that image out of the index and its manifest is hashed.
fn skopeo_digest_for_arch(reg: &TestRegistry, reference: &str, arch: &str) -> String {
    let out = reg.skopeo_inspect(
        reference,
        &["--override-os", "linux", "--override-arch", arch],
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["Architecture"], arch);
    let dir = reg.skopeo_copy_to_dir(
        reference,
        &["--override-os", "linux", "--override-arch", arch],
    );
    sha256_digest(&std::fs::read(dir.path().join("manifest.json")).unwrap())
}

async fn assemble_and_verify(mode: Mode, media_type: MediaType) {
    let reg = TestRegistry::start(mode);
    let registry = Registry::new(reg.options());
    let repo = reg.image("team/app");
    let images = push_two(&registry, &repo, media_type).await;
    let target = format!("{repo}:v1");
    let pushed = registry
        .assemble_index(&target, &images, media_type, &annotations())
        .await
        .unwrap();

    let (index, raw_digest) = skopeo_raw(&reg, &target);
    assert_eq!(
        raw_digest, pushed.digest,
        "the digest returned is the digest of the bytes stored"
    );
    let (index_type, manifest_type) = match media_type {
        MediaType::Oci => (
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.oci.image.manifest.v1+json",
        ),
        MediaType::Docker => (
            "application/vnd.docker.distribution.manifest.list.v2+json",
            "application/vnd.docker.distribution.manifest.v2+json",
        ),
    };
    assert_eq!(index["mediaType"], index_type);
    let entries = index["manifests"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    for (entry, image) in entries.iter().zip(&images) {
        assert_eq!(entry["digest"], image.digest.as_str());
        assert_eq!(entry["mediaType"], manifest_type);
        assert_eq!(entry["platform"]["os"], "linux");
        assert_eq!(
            entry["platform"]["architecture"],
            image.platform.architecture.as_str()
        );
        let (manifest, manifest_digest) = skopeo_raw(&reg, &format!("{repo}@{}", image.digest));
        assert_eq!(manifest_digest, image.digest);
        assert_eq!(
            entry["size"].as_u64().unwrap() as usize,
            serde_json::to_vec(&manifest).unwrap().len()
        );
    }
    match media_type {
        MediaType::Oci => assert_eq!(
            index["annotations"]["org.opencontainers.image.revision"],
            "0123456789abcdef0123456789abcdef01234567"
        ),
        MediaType::Docker => assert!(index.get("annotations").is_none()),
    }
    assert_eq!(
        skopeo_digest_for_arch(&reg, &target, "arm64"),
        images[1].digest
    );
    assert_eq!(
        skopeo_digest_for_arch(&reg, &target, "amd64"),
        images[0].digest
    );

    // Assembling the same run again gives the same bytes, so the same digest.
    let again = registry
        .assemble_index(&target, &images, media_type, &annotations())
        .await
        .unwrap();
    assert_eq!(again.digest, pushed.digest);
}

#[tokio::test]
async fn oci_index_over_plain_http() {
    assemble_and_verify(Mode::Plain, MediaType::Oci).await;
}

#[tokio::test]
async fn docker_manifest_list_over_plain_http() {
    assemble_and_verify(Mode::Plain, MediaType::Docker).await;
}

#[tokio::test]
async fn oci_index_with_basic_auth() {
    assemble_and_verify(Mode::Htpasswd, MediaType::Oci).await;
}

#[tokio::test]
async fn oci_index_over_tls_with_private_ca() {
    assemble_and_verify(Mode::Tls, MediaType::Oci).await;
}

/// A real registry holding amd64 and arm64 images (see `push_two`) under `team/app`, and the
/// tag an index of them goes to.
struct TwoImages {
    reg: TestRegistry,
    images: Vec<PlatformImage>,
    target: String,
}

impl TwoImages {
    async fn start(mode: Mode) -> Self {
        let reg = TestRegistry::start(mode);
        let images = push_two(
            &Registry::new(reg.options()),
            &reg.image("team/app"),
            MediaType::Oci,
        )
        .await;
        let target = reg.image("team/app:v1");
        TwoImages {
            reg,
            images,
            target,
        }
    }

    /// A client with the options that reach this registry.
    fn registry(&self) -> Registry {
        Registry::new(self.reg.options())
    }

    /// Assembles the two images at `target` with a client configured by `options`.
    async fn assemble_with(&self, options: RegistryOptions) -> RegistryResult<PushedIndex> {
        assemble(&Registry::new(options), &self.target, &self.images).await
    }

    /// `err` is the permanent `reason`, and `target` was never pushed.
    fn assert_refused(&self, err: &RegistryError, reason: &str) {
        assert_permanent(err, reason);
        assert!(
            !tag_exists(&self.reg, &self.target),
            "nothing may be pushed when an input is wrong: {err}"
        );
    }
}

/// Assembles an OCI index of `images` at `target`, with the test annotations.
async fn assemble(
    registry: &Registry,
    target: &str,
    images: &[PlatformImage],
) -> RegistryResult<PushedIndex> {
    registry
        .assemble_index(target, images, MediaType::Oci, &annotations())
        .await
}

/// Assembles the two images of a registry in `mode` with its options changed by `change`,
/// which must be refused as `reason` with nothing pushed; returns the registry and the error.
async fn refused_with(
    mode: Mode,
    change: impl FnOnce(&TestRegistry, &mut RegistryOptions),
    reason: &str,
) -> (TwoImages, RegistryError) {
    let two = TwoImages::start(mode).await;
    let mut options = two.reg.options();
    change(&two.reg, &mut options);
    let err = two.assemble_with(options).await.unwrap_err();
    two.assert_refused(&err, reason);
    (two, err)
}

#[tokio::test]
async fn wrong_password_is_a_credentials_error() {
    let wrong_password = |reg: &TestRegistry, options: &mut RegistryOptions| {
        let config = reg.docker_config_json("wrong-password");
        options.credentials = DockerConfig::from_json("test", config.as_bytes()).unwrap();
    };
    let (two, err) = refused_with(Mode::Htpasswd, wrong_password, "RegistryCredentials").await;
    assert!(err.to_string().contains(&two.reg.addr), "{err}");
}

#[tokio::test]
async fn missing_credentials_are_a_credentials_error() {
    let no_credentials = |reg: &TestRegistry, options: &mut RegistryOptions| {
        options.insecure = vec![reg.addr.clone()];
        options.credentials = DockerConfig::default();
    };
    refused_with(Mode::Htpasswd, no_credentials, "RegistryCredentials").await;
}

#[tokio::test]
async fn unknown_ca_is_a_tls_error() {
    let no_ca = |_: &TestRegistry, options: &mut RegistryOptions| options.ca_pems.clear();
    let (_, err) = refused_with(Mode::Tls, no_ca, "RegistryTLS").await;
    assert!(err.to_string().contains("--ca-file"), "{err}");
}

#[tokio::test]
async fn a_plain_http_registry_reached_over_https_is_named_with_the_fix() {
    let https = |_: &TestRegistry, options: &mut RegistryOptions| options.insecure.clear();
    let (two, err) = refused_with(Mode::Plain, https, "RegistryPlainHTTP").await;
    let text = err.to_string();
    let addr = &two.reg.addr;
    assert!(
        text.contains(&format!(
            "registry {addr} answered in plain HTTP to an HTTPS request"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("--insecure-registry {addr}")),
        "{text}"
    );
    assert!(text.contains("registry.insecureRegistries"), "{text}");
    assert!(!text.contains("InvalidContentType"), "{text}");
}

/// Whether `reference` exists, asked of the registry directly.
fn tag_exists(reg: &TestRegistry, reference: &str) -> bool {
    Command::new("skopeo")
        .arg("inspect")
        .arg("--raw")
        .args(reg.skopeo_tls_args())
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap()
        .status
        .success()
}

#[tokio::test]
async fn an_amd64_image_in_the_arm64_slot_is_refused_and_nothing_is_pushed() {
    let two = TwoImages::start(Mode::Plain).await;
    let swapped = vec![
        two.images[0].clone(),
        PlatformImage {
            platform: platform("linux/arm64"),
            digest: two.images[0].digest.clone(),
        },
    ];
    let err = assemble(&two.registry(), &two.target, &swapped)
        .await
        .unwrap_err();
    two.assert_refused(&err, "PlatformMismatch");
    let text = err.to_string();
    assert!(
        text.contains("linux/arm64 was built as linux/amd64"),
        "{text}"
    );
}

#[tokio::test]
async fn a_missing_platform_manifest_is_named() {
    let mut two = TwoImages::start(Mode::Plain).await;
    two.images[1].digest = sha256_digest(b"never pushed");
    let err = assemble(&two.registry(), &two.target, &two.images)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RegistryError::ManifestNotFound { platform, .. } if platform == "linux/arm64"),
        "{err:?}"
    );
    two.assert_refused(&err, "ManifestNotFound");
}

#[tokio::test]
async fn an_index_is_not_an_image() {
    let two = TwoImages::start(Mode::Plain).await;
    let registry = two.registry();
    let inner_tag = two.reg.image("team/app:inner");
    let inner = assemble(&registry, &inner_tag, &two.images).await.unwrap();
    // So that `assert_refused`'s "never pushed" can fail: a pushed tag is seen.
    assert!(tag_exists(&two.reg, &inner_tag));
    let nested = vec![PlatformImage {
        platform: platform("linux/amd64"),
        digest: inner.digest,
    }];
    let err = assemble(&registry, &two.target, &nested).await.unwrap_err();
    two.assert_refused(&err, "NestedIndex");
}

#[tokio::test]
async fn an_unreachable_registry_fails_after_bounded_retries() {
    // A port nobody listens on: connections are refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let options = RegistryOptions {
        insecure: vec![addr.clone()],
        retry: RetryPolicy {
            attempts: 3,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(200),
        },
        ..Default::default()
    };
    let images = vec![PlatformImage {
        platform: platform("linux/amd64"),
        digest: sha256_digest(b"x"),
    }];
    let started = Instant::now();
    let err = assemble(
        &Registry::new(options),
        &format!("{addr}/team/app:v1"),
        &images,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, RegistryError::Unreachable { attempts: 3, .. }),
        "{err:?}"
    );
    assert!(err.is_transient());
    // Bounded: three attempts with 100 ms and 200 ms pauses, not a hang.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_comes_back_is_retried_to_success() {
    let TwoImages {
        mut reg,
        images,
        target,
    } = TwoImages::start(Mode::Plain).await;
    let registry = Registry::new(RegistryOptions {
        retry: RetryPolicy {
            attempts: 8,
            first_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(1),
        },
        ..reg.options()
    });
    reg.stop();
    let assembling = assemble(&registry, &target, &images);
    let restarting = async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        tokio::task::block_in_place(|| reg.restart());
    };
    let (pushed, ()) = tokio::join!(assembling, restarting);
    let pushed = pushed.expect("the retries outlast the outage");
    let (_, digest) = skopeo_raw(&reg, &target);
    assert_eq!(digest, pushed.digest);
}

/// Runs `archforge index create` with `args`; returns whether it succeeded, its stdout and
/// its stderr.
fn index_create(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_archforge"))
        .args(["index", "create"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `archforge index create` with `args`, which must fail, and returns its stderr.
fn index_create_refused(args: &[&str]) -> String {
    let (ok, _, stderr) = index_create(args);
    assert!(!ok, "{args:?} was accepted: {stderr}");
    stderr
}

#[tokio::test]
async fn index_create_cli() {
    let two = TwoImages::start(Mode::Htpasswd).await;
    let config = two.reg.dir.path().join("docker-config.json");
    std::fs::write(&config, two.reg.docker_config_json(PASSWORD)).unwrap();
    let (ok, printed, stderr) = index_create(&[
        "--image",
        &two.target,
        "--source",
        &format!("linux/amd64={}", two.images[0].digest),
        "--source",
        &format!("linux/arm64={}", two.images[1].digest),
        "--docker-config",
        &config.display().to_string(),
        "--insecure-registry",
        &two.reg.addr,
        "--annotation",
        "org.opencontainers.image.revision=abc123",
    ]);
    assert!(ok, "{stderr}");
    let (index, digest) = skopeo_raw(&two.reg, &two.target);
    assert_eq!(printed.trim(), digest);
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
    assert_eq!(
        index["annotations"]["org.opencontainers.image.revision"],
        "abc123"
    );

    // A bad --source is refused with a clear message before any network traffic.
    let stderr =
        index_create_refused(&["--image", &two.target, "--source", "linux/arm64:sha256:abc"]);
    assert!(stderr.contains("PLATFORM=DIGEST"), "{stderr}");
}

// ---- A hostile or broken registry ----

const MIB: u64 = 1 << 20;

/// Options to reach a hostile registry: plain HTTP, quick retries.
fn hostile_options(reg: &HostileRegistry) -> RegistryOptions {
    RegistryOptions {
        insecure: vec![reg.addr.clone()],
        retry: RetryPolicy {
            attempts: 3,
            first_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(50),
        },
        ..Default::default()
    }
}

/// Assembles `images` from `reg` at `team/app:v1`.
async fn assemble_hostile(
    reg: &HostileRegistry,
    images: &[PlatformImage],
) -> RegistryResult<PushedIndex> {
    assemble(
        &Registry::new(hostile_options(reg)),
        &reg.image("team/app:v1"),
        images,
    )
    .await
}

/// Assembles one linux/amd64 image whose manifest is `manifest_digest` from `reg`.
async fn assemble_from(reg: &HostileRegistry, manifest_digest: &str) -> RegistryError {
    let images = [PlatformImage {
        platform: platform("linux/amd64"),
        digest: manifest_digest.to_string(),
    }];
    assemble_hostile(reg, &images)
        .await
        .expect_err("the hostile registry's answer must be refused")
}

/// A script whose manifest is honest and names a config of `declared` bytes served as `config`.
fn config_script(declared: u64, config: Body) -> (Script, String, String) {
    let config_digest = sha256_digest(b"the config the manifest promises");
    let manifest = manifest_json(&config_digest, declared);
    let manifest_digest = sha256_digest(&manifest);
    let script = Script {
        manifest: Body::Exact(manifest),
        manifest_type: "application/vnd.oci.image.manifest.v1+json".into(),
        config,
        push_digest: None,
    };
    (script, manifest_digest, config_digest)
}

fn assert_permanent(err: &RegistryError, reason: &str) {
    assert_eq!(err.reason(), reason, "{err}");
    assert!(!err.is_transient(), "{reason} must not be retried: {err}");
}

/// Assembles the amd64 image `manifest_digest` from a hostile registry serving `script`. Its
/// answer must be refused as the permanent `reason` with an error that says each of `says`,
/// after exactly `seen` requests: what it took to find the fault, no retry, and nothing
/// pushed after it.
async fn refused_by(
    script: Script,
    manifest_digest: &str,
    reason: &str,
    seen: Counts,
    says: &[&str],
) -> (HostileRegistry, RegistryError) {
    let reg = HostileRegistry::start(script);
    let err = assemble_from(&reg, manifest_digest).await;
    assert_permanent(&err, reason);
    assert_eq!(reg.counts(), seen, "{reason}: {:?}", reg.requests());
    let text = err.to_string();
    for part in says {
        assert!(text.contains(part), "{part:?} is not in: {text}");
    }
    (reg, err)
}

/// What a refusal of the config may cost: the manifest and the config fetched once each.
const MANIFEST_AND_CONFIG: Counts = Counts {
    manifest_gets: 1,
    blob_gets: 1,
    pushes: 0,
};

/// What a refusal of the manifest, or of a config before fetching it, may cost.
const MANIFEST_ONLY: Counts = Counts {
    manifest_gets: 1,
    blob_gets: 0,
    pushes: 0,
};

/// How many bytes the server got out: a refusal at a limit must stop reading near it.
fn assert_read_stopped(sent: &AtomicU64) {
    let sent = sent.load(Ordering::Relaxed);
    assert!(
        sent < 8 * MIB,
        "the client read on after the limit: the server got {sent} bytes out"
    );
}

#[tokio::test]
async fn a_config_far_bigger_than_declared_is_refused_without_reading_it() {
    // The descriptor says 1500 bytes; the registry streams 600 MiB without announcing a length.
    let (script, manifest_digest, config_digest) = config_script(
        1500,
        Body::Chunked {
            prefix: config_prefix(),
            total: 600 * MIB,
        },
    );
    let (reg, err) = refused_by(
        script,
        &manifest_digest,
        "BlobTooLarge",
        MANIFEST_AND_CONFIG,
        &[&config_digest, "descriptor's size of 1500 bytes"],
    )
    .await;
    assert!(
        matches!(err, RegistryError::BlobTooLarge { limit: 1500, .. }),
        "{err:?}"
    );
    assert_read_stopped(&reg.stats.blob_bytes_sent);
}

#[tokio::test]
async fn a_config_bigger_than_the_cap_is_refused_at_the_cap() {
    // The descriptor claims exactly the cap, so only the cap stops the read; the registry
    // also announces its 600 MiB honestly in Content-Length, which is refused before reading.
    for (body, detail) in [
        (
            Body::Chunked {
                prefix: config_prefix(),
                total: 600 * MIB,
            },
            "sent more than 4194304 bytes",
        ),
        (
            Body::Announced {
                prefix: config_prefix(),
                total: 600 * MIB,
            },
            "announces 629145600 bytes",
        ),
    ] {
        let (script, manifest_digest, config_digest) = config_script(MAX_CONFIG_BYTES, body);
        let (reg, _) = refused_by(
            script,
            &manifest_digest,
            "BlobTooLarge",
            MANIFEST_AND_CONFIG,
            &[&config_digest, detail],
        )
        .await;
        assert_read_stopped(&reg.stats.blob_bytes_sent);
    }
}

#[tokio::test]
async fn a_config_declared_huge_is_refused_before_it_is_fetched() {
    let (script, manifest_digest, config_digest) = config_script(600 * MIB, Body::Status(500));
    refused_by(
        script,
        &manifest_digest,
        "BlobTooLarge",
        MANIFEST_ONLY,
        &[
            &config_digest,
            "declares 629145600 bytes",
            "limit of 4194304 bytes",
        ],
    )
    .await;
}

#[tokio::test]
async fn a_huge_manifest_is_refused_at_the_cap() {
    let manifest_digest = sha256_digest(b"a manifest nobody can have");
    let script = Script {
        manifest: Body::Chunked {
            prefix: br#"{"schemaVersion":2,"padding":""#.to_vec(),
            total: 600 * MIB,
        },
        manifest_type: "application/vnd.oci.image.manifest.v1+json".into(),
        config: Body::Status(500),
        push_digest: None,
    };
    let (reg, _) = refused_by(
        script,
        &manifest_digest,
        "ManifestTooLarge",
        MANIFEST_ONLY,
        &[&manifest_digest, "limit of 4194304 bytes"],
    )
    .await;
    assert_read_stopped(&reg.stats.manifest_bytes_sent);
}

#[tokio::test]
async fn bytes_that_do_not_hash_to_the_digest_are_refused_at_once() {
    // The manifest asked for is not the one served.
    let (script, _, _) = config_script(10, Body::Status(500));
    let asked = sha256_digest(b"the manifest the builder pushed");
    refused_by(script, &asked, "DigestMismatch", MANIFEST_ONLY, &[&asked]).await;

    // The config served is the declared size but other bytes.
    let wrong = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let (script, manifest_digest, config_digest) =
        config_script(wrong.len() as u64, Body::Exact(wrong));
    refused_by(
        script,
        &manifest_digest,
        "DigestMismatch",
        MANIFEST_AND_CONFIG,
        &[&config_digest],
    )
    .await;
}

/// A script that serves a valid amd64 image.
fn honest_script() -> (Script, String) {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let manifest = manifest_json(&sha256_digest(config), config.len() as u64);
    let digest = sha256_digest(&manifest);
    (
        Script {
            manifest: Body::Exact(manifest),
            manifest_type: "application/vnd.oci.image.manifest.v1+json".into(),
            config: Body::Exact(config.to_vec()),
            push_digest: None,
        },
        digest,
    )
}

#[tokio::test]
async fn a_push_answer_naming_another_digest_is_a_permanent_mismatch() {
    let (mut script, digest) = honest_script();
    // The honest script is accepted, so what fails below is the push answer alone.
    let reg = HostileRegistry::start(script.clone());
    let pushed = assemble_hostile(
        &reg,
        &[PlatformImage {
            platform: platform("linux/amd64"),
            digest: digest.clone(),
        }],
    )
    .await
    .unwrap();
    let one_push = Counts {
        pushes: 1,
        ..MANIFEST_AND_CONFIG
    };
    assert_eq!(reg.counts(), one_push);

    let claimed = sha256_digest(b"something else");
    script.push_digest = Some(claimed.clone());
    // One push, not retried.
    refused_by(
        script,
        &digest,
        "DigestMismatch",
        one_push,
        &[&claimed, &pushed.digest],
    )
    .await;
}

#[tokio::test]
async fn only_outages_and_overload_are_retried() {
    for (code, transient) in [(503, true), (429, true), (400, false), (403, false)] {
        let reg = HostileRegistry::start(Script {
            manifest: Body::Status(code),
            manifest_type: "application/json".into(),
            config: Body::Status(500),
            push_digest: None,
        });
        let err = assemble_from(&reg, &sha256_digest(b"x")).await;
        let gets = reg.counts().manifest_gets;
        assert_eq!(err.is_transient(), transient, "HTTP {code}: {err:?}");
        if transient {
            assert!(
                matches!(err, RegistryError::Unreachable { attempts: 3, .. }),
                "{err:?}"
            );
            assert_eq!(gets, 3, "HTTP {code} is retried up to the policy");
        } else {
            assert_eq!(gets, 1, "HTTP {code} is final: {err}");
        }
        assert!(err.to_string().contains(&code.to_string()), "{err}");
    }
}

#[tokio::test]
async fn an_oversized_config_in_a_real_registry_is_refused_by_the_cap() {
    let reg = TestRegistry::start(Mode::Plain);
    let registry = Registry::new(reg.options());
    let target = parse_reference(&reg.image("team/app:v1-linux-amd64")).unwrap();
    // An 8 MiB config that is otherwise a true amd64 config, honestly described.
    let mut config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"padding":""#.to_vec();
    config.resize(8 * MIB as usize - 2, b'x');
    config.extend_from_slice(br#""}"#);
    let config_digest = sha256_digest(&config);
    let client = registry.client();
    client
        .auth(
            &target,
            &oci_client::secrets::RegistryAuth::Anonymous,
            oci_client::RegistryOperation::Push,
        )
        .await
        .unwrap();
    client
        .push_blob(&target, config.clone(), &config_digest)
        .await
        .unwrap();
    let manifest = manifest_json(&config_digest, config.len() as u64);
    client
        .push_manifest_raw(
            &target,
            manifest.clone(),
            http::HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
        )
        .await
        .unwrap();
    let images = vec![PlatformImage {
        platform: platform("linux/amd64"),
        digest: sha256_digest(&manifest),
    }];
    let index = reg.image("team/app:v1");
    let err = assemble(&registry, &index, &images).await.unwrap_err();
    assert_permanent(&err, "BlobTooLarge");
    let text = err.to_string();
    assert!(text.contains(&config_digest), "{text}");
    assert!(text.contains("declares 8388608 bytes"), "{text}");
    assert!(text.contains("limit of 4194304 bytes"), "{text}");
    assert!(!tag_exists(&reg, &index), "nothing is pushed");
}

#[tokio::test]
async fn the_same_platform_twice_is_refused_before_any_request() {
    let (script, digest) = honest_script();
    let reg = HostileRegistry::start(script);
    let other = sha256_digest(b"another amd64 image");
    for (first, second) in [
        ("linux/amd64", "linux/amd64"),
        ("linux/arm64", "linux/arm64/v8"),
    ] {
        let images = [
            PlatformImage {
                platform: platform(first),
                digest: digest.clone(),
            },
            PlatformImage {
                platform: platform(second),
                digest: other.clone(),
            },
        ];
        let err = assemble_hostile(&reg, &images).await.unwrap_err();
        assert_permanent(&err, "DuplicatePlatform");
        assert!(
            err.to_string()
                .contains(&format!("platform {second} is given twice")),
            "{err}"
        );
    }

    let stderr = index_create_refused(&[
        "--image",
        &reg.image("team/app:v1"),
        "--source",
        &format!("linux/amd64={digest}"),
        "--source",
        &format!("linux/amd64={other}"),
        "--insecure-registry",
        &reg.addr,
    ]);
    assert!(
        stderr.contains("platform linux/amd64 is given twice"),
        "{stderr}"
    );
    assert!(
        reg.requests().is_empty(),
        "nothing may be fetched or pushed: {:?}",
        reg.requests()
    );
}

/// A one-answer HTTP server on `ip`: every request gets `reply(path)`; the request heads it
/// received are kept, to see what a client sent there.
struct Canned {
    addr: String,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Canned {
    fn start(ip: &str, reply: impl Fn(&str) -> String + Send + 'static) -> Canned {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut stream = stream;
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                seen.lock().unwrap().push(head);
                let _ = stream.write_all(reply(&path).as_bytes());
            }
        });
        Canned { addr, heads }
    }

    fn saw_authorization(&self) -> bool {
        self.heads
            .lock()
            .unwrap()
            .iter()
            .any(|h| h.to_ascii_lowercase().contains("\nauthorization:"))
    }
}

const ONE_ATTEMPT: RetryPolicy = RetryPolicy {
    attempts: 1,
    first_delay: Duration::from_millis(10),
    max_delay: Duration::from_millis(10),
};

/// Assembles an index of one amd64 image at `registry`, expecting a refusal.
async fn assemble_one_amd64(options: RegistryOptions, registry: &str) -> RegistryError {
    let sources = [PlatformImage {
        platform: platform("linux/amd64"),
        digest: format!("sha256:{}", "2d".repeat(32)),
    }];
    Registry::new(options)
        .assemble_index(
            &format!("{registry}/team/app:v1"),
            &sources,
            MediaType::Oci,
            &annotations(),
        )
        .await
        .unwrap_err()
}

fn http(status: &str, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The registry redirects its manifest to another host, which asks for credentials with a
/// token realm of its choosing: the registry's password must go nowhere.
#[tokio::test]
async fn credentials_never_follow_a_redirect_into_another_hosts_token_realm() {
    let realm = Canned::start("127.0.0.3", |_| http("200 OK", "", r#"{"token":"t"}"#));
    let realm_url = format!("http://{}/token", realm.addr);
    let storage = Canned::start("127.0.0.2", move |_| {
        http(
            "401 Unauthorized",
            &format!("WWW-Authenticate: Bearer realm=\"{realm_url}\",service=\"x\"\r\n"),
            "",
        )
    });
    let storage_addr = storage.addr.clone();
    let registry = Canned::start("127.0.0.1", move |path| {
        http(
            "307 Temporary Redirect",
            &format!("Location: http://{storage_addr}{path}\r\n"),
            "",
        )
    });
    let config = format!(
        r#"{{"auths":{{"{}":{{"username":"alice","password":"S3cretPW"}}}}}}"#,
        registry.addr
    );
    let options = RegistryOptions {
        credentials: DockerConfig::from_json("test", config.as_bytes()).unwrap(),
        // Every host is listed, so that only the rule under test can stop the password.
        insecure: vec![
            registry.addr.clone(),
            storage.addr.clone(),
            realm.addr.clone(),
        ],
        retry: ONE_ATTEMPT,
        ..Default::default()
    };
    let err = assemble_one_amd64(options, &registry.addr).await;
    let text = err.to_string();
    assert_eq!(err.reason(), "RegistryCredentials", "{text}");
    assert!(
        text.contains("after a redirect") && text.contains(&storage.addr),
        "{text}"
    );
    assert!(
        !realm.saw_authorization(),
        "the password went to the foreign realm"
    );
    assert!(!text.contains("S3cretPW"));
}

/// A redirect to an internal page: the page's text must not reach status and Events, and an
/// HTTPS registry may not be led down to plain HTTP.
#[tokio::test]
async fn a_redirect_to_another_host_is_not_quoted() {
    let internal = Canned::start("127.0.0.2", |_| {
        http(
            "418 I'm a teapot",
            "",
            "internal-only page: db_password=hunter2",
        )
    });
    let internal_addr = internal.addr.clone();
    let registry = Canned::start("127.0.0.1", move |_| {
        http(
            "302 Found",
            &format!("Location: http://{internal_addr}/internal/admin?x=1\r\n"),
            "",
        )
    });
    let options = RegistryOptions {
        // The internal host is listed: plain HTTP to an unlisted one is not even followed.
        insecure: vec![registry.addr.clone(), internal.addr.clone()],
        retry: ONE_ATTEMPT,
        ..Default::default()
    };
    let err = assemble_one_amd64(options, &registry.addr).await;
    let text = err.to_string();
    assert!(!text.contains("hunter2"), "{text}");
    assert!(
        text.contains("after a redirect") && text.contains(&internal.addr),
        "{text}"
    );
}

/// A registry that answers too slowly (here: never) is given up on at the assembly's
/// deadline, as a transient failure the next reconcile retries.
#[tokio::test]
async fn an_assembly_that_outlives_its_deadline_is_given_up() {
    let slow = Canned::start("127.0.0.1", |_| {
        std::thread::sleep(Duration::from_secs(30));
        http("200 OK", "", "")
    });
    let options = RegistryOptions {
        insecure: vec![slow.addr.clone()],
        deadline: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    let started = Instant::now();
    let err = assemble_one_amd64(options, &slow.addr).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(err.is_transient(), "{err}");
    assert!(err.to_string().contains("not assembled within 1s"), "{err}");
}

// ---- Pushes and token requests take no redirect; plain HTTP only to listed hosts; signed
// URLs stay out of messages; a connection that breaks mid-answer ----

/// Options to reach every one of `listed` over plain HTTP, with `hostile_options`' retries:
/// so that only the rule under test can stop a request to any of them.
fn listed_options(listed: &[&HostileRegistry]) -> RegistryOptions {
    RegistryOptions {
        insecure: listed.iter().map(|r| r.addr.clone()).collect(),
        ..hostile_options(listed[0])
    }
}

/// Assembles the linux/amd64 image `digest` from `reg` at `team/app:v1` with `options`.
async fn assemble_with_options(
    reg: &HostileRegistry,
    options: RegistryOptions,
    digest: &str,
) -> RegistryResult<PushedIndex> {
    let images = [PlatformImage {
        platform: platform("linux/amd64"),
        digest: digest.to_string(),
    }];
    assemble(&Registry::new(options), &reg.image("team/app:v1"), &images).await
}

#[tokio::test]
async fn a_connection_dropped_mid_body_is_retried_then_unreachable() {
    // A manifest cut off after a few bytes is the network's doing, not the registry's
    // considered answer: worth another attempt, like a refused connection.
    let registry = HostileRegistry::start(Script {
        manifest: Body::Truncated {
            prefix: br#"{"schemaVersion":2,"#.to_vec(),
            total: 1000,
        },
        ..honest_script().0
    });
    let err = assemble_with_options(
        &registry,
        listed_options(&[&registry]),
        &sha256_digest(b"x"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, RegistryError::Unreachable { attempts: 3, .. }),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert!(err.to_string().contains("broke off"), "{err}");
    assert_eq!(
        registry.counts().manifest_gets,
        3,
        "retried up to the policy"
    );
}

/// A docker config with `alice`'s password for `reg`.
fn alice_for(reg: &HostileRegistry) -> DockerConfig {
    let json = format!(
        r#"{{"auths": {{"{}": {{"username": "alice", "password": "S3cretPW"}}}}}}"#,
        reg.addr
    );
    DockerConfig::from_json("config.json", json.as_bytes()).unwrap()
}

#[tokio::test]
async fn a_redirected_index_push_is_not_followed() {
    // The registry answers the index PUT with a 307 elsewhere. Following it would push the
    // index to a host nobody named (and call it done): a push goes to the registry or fails.
    let (script, digest) = honest_script();
    let elsewhere = HostileRegistry::start(script.clone());
    let registry = HostileRegistry::start_with(
        script,
        Tricks {
            push: Some(Body::Redirect {
                status: 307,
                location: format!(
                    "http://{}/v2/team/app/manifests/v1?X-Amz-Signature=S1GNED",
                    elsewhere.addr
                ),
            }),
            ..Tricks::default()
        },
    );
    let err = assemble_with_options(&registry, listed_options(&[&registry, &elsewhere]), &digest)
        .await
        .unwrap_err();
    assert_eq!(
        elsewhere.requests(),
        Vec::<String>::new(),
        "the push went elsewhere"
    );
    assert_permanent(&err, "RegistryError");
    assert_eq!(registry.counts().pushes, 1, "not retried");
    let text = err.to_string();
    for part in [
        registry.addr.as_str(),
        elsewhere.addr.as_str(),
        "HTTP 307",
        "push",
    ] {
        assert!(text.contains(part), "{part:?} is not in: {text}");
    }
    assert!(!text.contains("S1GNED"), "{text}");
}

#[tokio::test]
async fn a_redirected_token_request_is_not_followed() {
    // The registry's challenge names realm T; T redirects the token request to U. The
    // credentials are for the realm the registry named, and a token is taken from it alone:
    // U must hear nothing, and the Authorization headers recorded show who got what.
    let (script, digest) = honest_script();
    let elsewhere = HostileRegistry::start(Script::default());
    let realm = HostileRegistry::start_with(
        Script::default(),
        Tricks {
            token: Some(Body::Redirect {
                status: 307,
                location: format!("http://{}/token", elsewhere.addr),
            }),
            ..Tricks::default()
        },
    );
    let registry = HostileRegistry::start_with(
        script,
        Tricks {
            challenge: Some(format!(
                r#"Bearer realm="http://{}/token",service="x""#,
                realm.addr
            )),
            ..Tricks::default()
        },
    );
    let options = RegistryOptions {
        credentials: alice_for(&registry),
        ..listed_options(&[&registry, &realm, &elsewhere])
    };
    let err = assemble_with_options(&registry, options, &digest)
        .await
        .unwrap_err();
    assert_eq!(elsewhere.requests(), Vec::<String>::new(), "{err}");
    assert_eq!(
        registry.authorized(),
        Vec::<String>::new(),
        "no token, none sent"
    );
    let given = realm.authorized();
    assert!(
        given.len() == 1 && given[0].starts_with("GET /token?") && given[0].contains(": Basic "),
        "alice's credentials go to the named realm, once: {given:?}"
    );
    assert_permanent(&err, "RegistryCredentials");
    let text = err.to_string();
    for part in [realm.addr.as_str(), "HTTP 307", "redirect"] {
        assert!(text.contains(part), "{part:?} is not in: {text}");
    }
    assert!(!text.contains("S3cretPW"), "{text}");
}

#[tokio::test]
async fn a_redirect_to_plain_http_elsewhere_is_not_followed() {
    // Plain HTTP goes only to hosts listed as insecure, whoever names them: the registry
    // being plain HTTP itself lists it, not the hosts it points at.
    let elsewhere = HostileRegistry::start(honest_script().0);
    let registry = HostileRegistry::start(Script {
        manifest: Body::Redirect {
            status: 307,
            location: format!("http://{}/v2/team/app/manifests/x", elsewhere.addr),
        },
        ..Script::default()
    });
    let err = assemble_with_options(
        &registry,
        listed_options(&[&registry]),
        &sha256_digest(b"x"),
    )
    .await
    .unwrap_err();
    assert_eq!(elsewhere.requests(), Vec::<String>::new(), "{err}");
    assert_permanent(&err, "RegistryError");
    assert_eq!(registry.counts().manifest_gets, 1, "not retried");
    let text = err.to_string();
    for part in [
        registry.addr.as_str(),
        elsewhere.addr.as_str(),
        "--insecure-registry",
    ] {
        assert!(text.contains(part), "{part:?} is not in: {text}");
    }
}

#[tokio::test]
async fn a_signed_query_in_a_redirect_never_reaches_the_message() {
    // Storage redirects carry pre-signed URLs whose query is a credential. reqwest names the
    // URL a refused redirect came from (here the signed one, hop after hop): not shown.
    let digest = sha256_digest(b"x");
    let looping = HostileRegistry::start(Script {
        manifest: Body::Redirect {
            status: 308,
            location: format!("/v2/team/app/manifests/{digest}?X-Amz-Signature=S1GNED"),
        },
        ..Script::default()
    });
    let err = assemble_with_options(&looping, listed_options(&[&looping]), &digest)
        .await
        .unwrap_err();
    assert_permanent(&err, "RegistryError");
    let text = err.to_string();
    assert!(text.contains("follows at most 3"), "{text}");
    assert!(!text.contains("S1GNED"), "{text}");
}

#[tokio::test]
async fn an_outage_of_the_storage_a_read_is_redirected_to_is_retried() {
    // The storage behind a registry has outages and overload like the registry: its 503 is
    // worth another attempt (its body still unquoted), its 404 is the image not being there.
    for (code, transient, reason) in [
        (503, true, "RegistryUnreachable"),
        (404, false, "ManifestNotFound"),
    ] {
        let storage = HostileRegistry::start(Script {
            manifest: Body::Status(code),
            ..Script::default()
        });
        let registry = HostileRegistry::start(Script {
            manifest: Body::Redirect {
                status: 307,
                location: format!("http://{}/s/v2/team/app/manifests/x", storage.addr),
            },
            ..Script::default()
        });
        let err = assemble_with_options(
            &registry,
            listed_options(&[&registry, &storage]),
            &sha256_digest(b"x"),
        )
        .await
        .unwrap_err();
        assert_eq!(err.reason(), reason, "HTTP {code}: {err}");
        assert_eq!(err.is_transient(), transient, "HTTP {code}: {err}");
        let attempts = if transient { 3 } else { 1 };
        assert_eq!(
            storage.counts().manifest_gets,
            attempts,
            "HTTP {code}: {err}"
        );
        let text = err.to_string();
        if transient {
            for part in [storage.addr.as_str(), "HTTP 503", "after a redirect"] {
                assert!(text.contains(part), "{part:?} is not in: {text}");
            }
        }
        assert!(
            !text.contains("scripted"),
            "the storage's body is quoted: {text}"
        );
    }
}
