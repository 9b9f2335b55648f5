//! Index assembly against a real registry (Debian's docker-registry on loopback), checked with
//! an independent client (skopeo).

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use archforge::api::MediaType;
use archforge::plan::Platform;
use archforge::registry::{
    DockerConfig, PlatformImage, Registry, RegistryError, RegistryOptions, RetryPolicy,
    sha256_digest,
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

#[tokio::test]
async fn wrong_password_is_a_credentials_error() {
    let reg = TestRegistry::start(Mode::Htpasswd);
    let images = push_two(
        &Registry::new(reg.options()),
        &reg.image("team/app"),
        MediaType::Oci,
    )
    .await;
    let mut options = reg.options();
    options.credentials =
        DockerConfig::from_json("test", reg.docker_config_json("wrong-password").as_bytes())
            .unwrap();
    let err = Registry::new(options)
        .assemble_index(
            &reg.image("team/app:v1"),
            &images,
            MediaType::Oci,
            &annotations(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Credentials { .. }), "{err:?}");
    assert!(err.to_string().contains(&reg.addr), "{err}");
}

#[tokio::test]
async fn missing_credentials_are_a_credentials_error() {
    let reg = TestRegistry::start(Mode::Htpasswd);
    let images = push_two(
        &Registry::new(reg.options()),
        &reg.image("team/app"),
        MediaType::Oci,
    )
    .await;
    let options = RegistryOptions {
        insecure: vec![reg.addr.clone()],
        ..reg.options()
    };
    let options = RegistryOptions {
        credentials: DockerConfig::default(),
        ..options
    };
    let err = Registry::new(options)
        .assemble_index(
            &reg.image("team/app:v1"),
            &images,
            MediaType::Oci,
            &annotations(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Credentials { .. }), "{err:?}");
}

#[tokio::test]
async fn unknown_ca_is_a_tls_error() {
    let reg = TestRegistry::start(Mode::Tls);
    let images = push_two(
        &Registry::new(reg.options()),
        &reg.image("team/app"),
        MediaType::Oci,
    )
    .await;
    let options = RegistryOptions {
        ca_pems: Vec::new(),
        ..reg.options()
    };
    let err = Registry::new(options)
        .assemble_index(
            &reg.image("team/app:v1"),
            &images,
            MediaType::Oci,
            &annotations(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Tls { .. }), "{err:?}");
    assert!(err.to_string().contains("--ca-file"), "{err}");
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
    let reg = TestRegistry::start(Mode::Plain);
    let registry = Registry::new(reg.options());
    let images = push_two(&registry, &reg.image("team/app"), MediaType::Oci).await;
    let swapped = vec![
        images[0].clone(),
        PlatformImage {
            platform: platform("linux/arm64"),
            digest: images[0].digest.clone(),
        },
    ];
    let target = reg.image("team/app:v1");
    let err = registry
        .assemble_index(&target, &swapped, MediaType::Oci, &annotations())
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::PlatformMismatch { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("linux/arm64 was built as linux/amd64"),
        "{text}"
    );
    assert!(
        !tag_exists(&reg, &target),
        "nothing may be pushed when an input is wrong"
    );
}

#[tokio::test]
async fn a_missing_platform_manifest_is_named() {
    let reg = TestRegistry::start(Mode::Plain);
    let registry = Registry::new(reg.options());
    let mut images = push_two(&registry, &reg.image("team/app"), MediaType::Oci).await;
    images[1].digest = sha256_digest(b"never pushed");
    let target = reg.image("team/app:v1");
    let err = registry
        .assemble_index(&target, &images, MediaType::Oci, &annotations())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RegistryError::ManifestNotFound { platform, .. } if platform == "linux/arm64"),
        "{err:?}"
    );
    assert!(!tag_exists(&reg, &target));
}

#[tokio::test]
async fn an_index_is_not_an_image() {
    let reg = TestRegistry::start(Mode::Plain);
    let registry = Registry::new(reg.options());
    let images = push_two(&registry, &reg.image("team/app"), MediaType::Oci).await;
    let first = registry
        .assemble_index(
            &reg.image("team/app:inner"),
            &images,
            MediaType::Oci,
            &annotations(),
        )
        .await
        .unwrap();
    let nested = vec![PlatformImage {
        platform: platform("linux/amd64"),
        digest: first.digest,
    }];
    let err = registry
        .assemble_index(
            &reg.image("team/app:outer"),
            &nested,
            MediaType::Oci,
            &annotations(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NestedIndex { .. }), "{err:?}");
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
    let err = Registry::new(options)
        .assemble_index(
            &format!("{addr}/team/app:v1"),
            &images,
            MediaType::Oci,
            &annotations(),
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
    let mut reg = TestRegistry::start(Mode::Plain);
    let registry = Registry::new(RegistryOptions {
        retry: RetryPolicy {
            attempts: 8,
            first_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(1),
        },
        ..reg.options()
    });
    let images = push_two(&registry, &reg.image("team/app"), MediaType::Oci).await;
    reg.stop();
    let target = reg.image("team/app:v1");
    let annotations = annotations();
    let assembling = registry.assemble_index(&target, &images, MediaType::Oci, &annotations);
    let restarting = async {
        tokio::time::sleep(Duration::from_millis(600)).await;
        tokio::task::block_in_place(|| reg.restart());
    };
    let (pushed, ()) = tokio::join!(assembling, restarting);
    let pushed = pushed.expect("the retries outlast the outage");
    let (_, digest) = skopeo_raw(&reg, &target);
    assert_eq!(digest, pushed.digest);
}

#[tokio::test]
async fn index_create_cli() {
    let reg = TestRegistry::start(Mode::Htpasswd);
    let images = push_two(
        &Registry::new(reg.options()),
        &reg.image("team/app"),
        MediaType::Oci,
    )
    .await;
    let config = reg.dir.path().join("docker-config.json");
    std::fs::write(&config, reg.docker_config_json(PASSWORD)).unwrap();
    let target = reg.image("team/app:v1");
    let out = Command::new(env!("CARGO_BIN_EXE_archforge"))
        .args(["index", "create", "--image", &target])
        .args(["--source", &format!("linux/amd64={}", images[0].digest)])
        .args(["--source", &format!("linux/arm64={}", images[1].digest)])
        .args(["--docker-config", &config.display().to_string()])
        .args(["--insecure-registry", &reg.addr])
        .args(["--annotation", "org.opencontainers.image.revision=abc123"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let (index, digest) = skopeo_raw(&reg, &target);
    assert_eq!(printed.trim(), digest);
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
    assert_eq!(
        index["annotations"]["org.opencontainers.image.revision"],
        "abc123"
    );

    // A bad --source is refused with a clear message before any network traffic.
    let out = Command::new(env!("CARGO_BIN_EXE_archforge"))
        .args([
            "index",
            "create",
            "--image",
            &target,
            "--source",
            "linux/arm64:sha256:abc",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PLATFORM=DIGEST"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
