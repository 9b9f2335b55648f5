//! Signed provenance against real parts: a real registry (docker-registry 2.8, no referrers
//! API), skopeo's `sigstoreSigned` policy as the independent signature verifier, the in-toto
//! project's Python parser for the statements, and `archforge verify` itself.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::process::{Command, Output};

use archforge::api::MediaType;
use archforge::plan::Platform;
use archforge::registry::{PlatformImage, Published, Registry};
use archforge::supply::{BuildFacts, Signer, SigningKey};
use common::keys::python_cosign_key;
use common::registry::{Mode, TestRegistry, push_platform_images};
use common::sigstore::{SigstorePolicy, copy_attachment, python_checks_available, supply_check};
use common::text;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// `archforge verify --require-isolated` against provenance the operator wrote in each mode.
#[path = "supply/isolated.rs"]
mod isolated;

fn facts(commit: &str) -> BuildFacts {
    BuildFacts {
        source_url: "https://git.example.com/app.git".into(),
        commit: commit.into(),
        git_ref: "main".into(),
        dockerfile: "Dockerfile".into(),
        context_dir: ".".into(),
        platforms: vec!["linux/amd64".into(), "linux/arm64".into()],
        builder_image: "quay.io/buildah/stable:v1.38".into(),
        builder_id: "https://archforge.dev/operator@v0".into(),
        invocation_id: "team/app/app-1".into(),
        started_on: "2026-11-23T10:00:00Z".into(),
        finished_on: "2026-11-23T10:05:00Z".into(),
        namespace: "team".into(),
        name: "app".into(),
        ..BuildFacts::default()
    }
}

/// Two synthetic platform images pushed by digest only (no tag), then published signed.
async fn publish_signed(
    reg: &TestRegistry,
    registry: &Registry,
    repo: &str,
    key: &SigningKey,
) -> (Vec<PlatformImage>, Published) {
    let images =
        push_platform_images(registry, |_| format!("{repo}@@unknown-digest@@"), "signed").await;
    let facts = facts(COMMIT);
    let signer = Signer { key, facts: &facts };
    let published = registry
        .publish(
            &format!("{repo}:v1"),
            &images,
            MediaType::Oci,
            &BTreeMap::new(),
            Some(&signer),
        )
        .await
        .unwrap();
    let _ = reg;
    (images, published)
}

/// A fresh registry whose `team/app:v1` is [`publish_signed`] by a new key: the registry, a
/// client of it, the repository, the key, the platform images and what was published.
struct Signed(
    TestRegistry,
    Registry,
    String,
    SigningKey,
    Vec<PlatformImage>,
    Published,
);

impl Signed {
    /// Signs and attests `image` again, its provenance naming `platform` and `commit`.
    async fn resign(&self, image: &PlatformImage, platform: &Platform, commit: &str) {
        let Signed(_, registry, repo, key, ..) = self;
        let facts = facts(commit);
        let signer = Signer { key, facts: &facts };
        registry
            .sign_and_attest(repo, &image.digest, Some(platform), &signer)
            .await
            .unwrap();
    }
}

async fn signed() -> Signed {
    let reg = TestRegistry::start(Mode::Plain);
    let registry = Registry::new(reg.options());
    let repo = reg.image("team/app");
    let key = SigningKey::generate();
    let (images, published) = publish_signed(&reg, &registry, &repo, &key).await;
    Signed(reg, registry, repo, key, images, published)
}

/// `archforge verify` of `image` with `key_file`, which must fail: what it said.
fn verify_fails(reg: &TestRegistry, image: &str, key_file: &std::path::Path) -> String {
    let out = verify(reg, image, key_file);
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    shown
}

/// Deletes the cosign signature tag of `digest` in `repo`.
fn delete_signature(reg: &TestRegistry, repo: &str, digest: &str) {
    common::run(
        Command::new("skopeo")
            .arg("delete")
            .args(reg.skopeo_tls_args())
            .arg(format!("docker://{repo}:{}", sig_tag(digest, "sig"))),
    );
}

fn list_tags(reg: &TestRegistry, repo: &str) -> Vec<String> {
    let out = common::run(
        Command::new("skopeo")
            .arg("list-tags")
            .args(reg.skopeo_tls_args())
            .arg(format!("docker://{repo}")),
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

fn verify(reg: &TestRegistry, image: &str, key_file: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_archforge"))
        .args(["verify", image, "--key"])
        .arg(key_file)
        .args(["--insecure-registry", &reg.addr])
        .output()
        .unwrap()
}

fn sig_tag(digest: &str, suffix: &str) -> String {
    format!("sha256-{}.{suffix}", digest.trim_start_matches("sha256:"))
}

#[tokio::test]
async fn skopeo_accepts_every_signed_image_and_only_tags_are_the_index_and_attachments() {
    let Signed(reg, _, repo, key, images, published) = signed().await;
    let policy = SigstorePolicy::new(&reg, &key.public_pem());

    // The index (all platforms) and each child, by digest, pass a sigstoreSigned policy.
    let (accepted, said) = policy.copy(&reg, &format!("{repo}:v1"), &["--all"]);
    assert!(accepted, "index: {said}");
    for image in &images {
        let (accepted, said) = policy.copy(&reg, &format!("{repo}@{}", image.digest), &[]);
        assert!(accepted, "{}: {said}", image.platform);
    }

    // No per-platform tag: the index tag and the cosign attachment tags only.
    let tags = list_tags(&reg, &repo);
    assert!(tags.iter().all(|t| !t.contains("-linux-")), "{tags:?}");
    let mut expected = vec!["v1".to_string()];
    for digest in images
        .iter()
        .map(|i| &i.digest)
        .chain([&published.index.digest])
    {
        expected.push(sig_tag(digest, "sig"));
        expected.push(sig_tag(digest, "att"));
    }
    let mut sorted = tags.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected);

    // The output tag is written once, after every signature and attestation: the last
    // manifest PUT the registry served (its access log, in order).
    std::thread::sleep(std::time::Duration::from_millis(300));
    let log = std::fs::read_to_string(&reg.log_file).unwrap();
    let puts: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split("\"PUT /v2/team/app/manifests/").nth(1))
        .map(|rest| rest.split(' ').next().unwrap())
        .collect();
    assert_eq!(puts.iter().filter(|p| **p == "v1").count(), 1, "{puts:?}");
    assert_eq!(puts.last(), Some(&"v1"), "{puts:?}");
    assert_eq!(
        puts.iter().filter(|p| p.ends_with(".sig")).count(),
        3,
        "{puts:?}"
    );
    assert_eq!(
        puts.iter().filter(|p| p.ends_with(".att")).count(),
        3,
        "{puts:?}"
    );
    assert!(
        puts.contains(&published.index.digest.as_str()),
        "the index by digest first: {puts:?}"
    );

    // The digests returned are those of the manifests stored under the attachment tags.
    let attached = published.index_attachments.as_ref().unwrap();
    let raw = reg.skopeo_inspect(
        &format!("{repo}:{}", sig_tag(&published.index.digest, "sig")),
        &["--raw"],
    );
    assert_eq!(
        archforge::registry::sha256_digest(raw.as_bytes()),
        attached.signature
    );
    assert_eq!(published.platforms.len(), 2);
}

#[tokio::test]
async fn skopeo_rejects_a_removed_signature_and_another_key() {
    let signed = signed().await;
    let Signed(reg, _, repo, key, images, published) = &signed;

    // Another key: nothing verifies.
    let stranger = SigstorePolicy::new(reg, &SigningKey::generate().public_pem());
    let (accepted, said) = stranger.copy(reg, &format!("{repo}:v1"), &["--all"]);
    assert!(!accepted, "another key accepted the index: {said}");
    let (accepted, said) = stranger.copy(reg, &format!("{repo}@{}", images[1].digest), &[]);
    assert!(!accepted, "another key accepted a child: {said}");

    // The arm64 child's signature removed: it is refused, the index still passes on its own.
    let policy = SigstorePolicy::new(reg, &key.public_pem());
    delete_signature(reg, repo, &images[1].digest);
    let (accepted, said) = policy.copy(reg, &format!("{repo}@{}", images[1].digest), &[]);
    assert!(!accepted, "an unsigned child was accepted: {said}");
    let (accepted, said) = policy.copy(reg, &format!("{repo}@{}", images[0].digest), &[]);
    assert!(accepted, "{said}");
    // The index with all its images: the unsigned arm64 child fails it.
    let (accepted, said) = policy.copy(reg, &format!("{repo}:v1"), &["--all"]);
    assert!(
        !accepted,
        "an index with an unsigned child was accepted: {said}"
    );

    // Signed again, the index with all its images passes; then its own signature removed.
    signed.resign(&images[1], &images[1].platform, COMMIT).await;
    let (accepted, said) = policy.copy(reg, &format!("{repo}:v1"), &["--all"]);
    assert!(accepted, "{said}");
    delete_signature(reg, repo, &published.index.digest);
    let (accepted, said) = policy.copy(reg, &format!("{repo}:v1"), &["--all"]);
    assert!(!accepted, "an unsigned index was accepted: {said}");
}

#[tokio::test]
async fn archforge_verify_names_the_first_broken_link() {
    let signed = signed().await;
    let Signed(reg, _, repo, key, images, published) = &signed;
    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("cosign.pub");
    std::fs::write(&public, key.public_pem()).unwrap();
    let image = format!("{repo}:v1");

    let out = verify(reg, &image, &public);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("signatures verified"), "{shown}");
    for image in images {
        assert!(
            shown.contains(&format!("{repo}@{}  commit {COMMIT}", image.digest)),
            "{shown}"
        );
    }
    assert!(shown.contains(&published.index.digest), "{shown}");

    // Another key: the index is the first link, and it is named.
    let other = dir.path().join("other.pub");
    std::fs::write(&other, SigningKey::generate().public_pem()).unwrap();
    let shown = verify_fails(reg, &image, &other);
    assert!(
        shown.contains(&format!("index {repo}@{}", published.index.digest))
            && shown.contains("not signed by the given key"),
        "{shown}"
    );

    // The amd64 child re-attested (properly signed) as if it were the arm64 image.
    signed.resign(&images[0], &images[1].platform, COMMIT).await;
    let shown = verify_fails(reg, &image, &public);
    assert!(
        shown.contains(&format!("linux/amd64 image {repo}@{}", images[0].digest))
            && shown.contains("its provenance is for platform \"linux/arm64\""),
        "{shown}"
    );
    signed.resign(&images[0], &images[0].platform, COMMIT).await;
    assert!(verify(reg, &image, &public).status.success());

    // The arm64 child re-attested (properly signed) with provenance of another commit.
    let other_commit = "fedcba9876543210fedcba9876543210fedcba98";
    signed
        .resign(&images[1], &images[1].platform, other_commit)
        .await;
    let shown = verify_fails(reg, &image, &public);
    assert!(
        shown.contains(&format!("linux/arm64 image {repo}@{}", images[1].digest))
            && shown.contains(&format!("names commit {other_commit}")),
        "{shown}"
    );

    // The amd64 child's signature removed: it comes first in the index, so it is named.
    delete_signature(reg, repo, &images[0].digest);
    let shown = verify_fails(reg, &image, &public);
    assert!(
        shown.contains(&format!("linux/amd64 image {repo}@{}", images[0].digest))
            && shown.contains("has no signature"),
        "{shown}"
    );
}

#[tokio::test]
async fn provenance_parses_with_the_in_toto_python_package() {
    if !python_checks_available() {
        return;
    }
    let Signed(reg, _, repo, key, images, published) = signed().await;
    let work = tempfile::tempdir().unwrap();
    let public = work.path().join("cosign.pub");
    std::fs::write(&public, key.public_pem()).unwrap();
    let mut dirs = Vec::new();
    for (name, digest) in images
        .iter()
        .map(|i| (i.platform.slug(), &i.digest))
        .chain([("index".to_string(), &published.index.digest)])
    {
        let dir = work.path().join(name);
        copy_attachment(&reg, &format!("{repo}:{}", sig_tag(digest, "att")), &dir);
        dirs.push(dir);
    }
    let mut args: Vec<&OsStr> = vec![OsStr::new("provenance"), OsStr::new("--key")];
    args.push(public.as_os_str());
    args.extend(dirs.iter().map(|d| d.as_os_str()));
    let out = supply_check(&args);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 3, "{shown}");
    for (line, (platform, digest)) in lines.iter().zip(
        images
            .iter()
            .map(|i| (i.platform.to_string(), &i.digest))
            .chain([("index".to_string(), &published.index.digest)]),
    ) {
        assert!(line.contains(&platform), "{line}");
        assert!(line.contains(&format!("{repo}@{digest}")), "{line}");
        assert!(line.contains(COMMIT), "{line}");
    }

    // The Python side is not a rubber stamp: another key's attestation is refused.
    let other = work.path().join("other.pub");
    std::fs::write(&other, SigningKey::generate().public_pem()).unwrap();
    let out = supply_check(&[
        OsStr::new("provenance"),
        OsStr::new("--key"),
        other.as_os_str(),
        dirs[0].as_os_str(),
    ]);
    assert!(!out.status.success(), "{}", text(&out));
}

#[test]
fn cosign_encrypted_keys_written_by_python_are_read() {
    if !python_checks_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let password = "correct horse battery staple";
    let (key, public) = python_cosign_key(dir.path(), password);
    let pem = std::fs::read(&key).unwrap();
    let signing = SigningKey::from_pem(&pem, Some(password.as_bytes())).unwrap();
    let expected = archforge::supply::load_public_key(&std::fs::read(&public).unwrap()).unwrap();
    assert_eq!(signing.public_key(), expected);
    let err = SigningKey::from_pem(&pem, Some(b"wrong")).unwrap_err();
    assert_eq!(err, archforge::supply::KeyError::WrongPassword);
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains("wrong\"") && !shown.contains(password),
        "{shown}"
    );
}

// With an operator-wide key every tenant's build is signed by the same key: that the key
// signed an image says only that archforge built it, from whatever repository its
// ImageBuild named. A tenant who can push to the repository gets a properly signed image
// there built from their own fork. `--source` pins the repository the provenance must name,
// and the output shows it.
#[tokio::test]
async fn archforge_verify_pins_the_source_repository() {
    let reg = TestRegistry::start(Mode::Plain);
    let registry = Registry::new(reg.options());
    let repo = reg.image("team/app");
    let key = SigningKey::generate();
    let (images, _) = publish_signed(&reg, &registry, &repo, &key).await;
    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("cosign.pub");
    std::fs::write(&public, key.public_pem()).unwrap();
    let image = format!("{repo}:v1");
    let ours = facts(COMMIT).source_url;

    let out = verify_from(&reg, &image, &public, &ours);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains(&format!("source {ours}")), "{shown}");

    let theirs = "https://git.example.com/mallory/app.git";
    let out = verify_from(&reg, &image, &public, theirs);
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains(&format!("its provenance names source {ours}"))
            && shown.contains(&format!("--source is {theirs}")),
        "{shown}"
    );

    // One child re-attested, properly signed, as built from another repository at the
    // same commit (a fork has the same commits): the chain is broken there.
    let mut forked = facts(COMMIT);
    forked.source_url = theirs.into();
    registry
        .sign_and_attest(
            &repo,
            &images[1].digest,
            Some(&images[1].platform),
            &Signer {
                key: &key,
                facts: &forked,
            },
        )
        .await
        .unwrap();
    let out = verify(&reg, &image, &public);
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains(&format!("linux/arm64 image {repo}@{}", images[1].digest))
            && shown.contains(&format!("names source {theirs}, the index's names {ours}")),
        "{shown}"
    );
}

fn verify_from(
    reg: &TestRegistry,
    image: &str,
    key_file: &std::path::Path,
    source: &str,
) -> Output {
    Command::new(env!("CARGO_BIN_EXE_archforge"))
        .args(["verify", image, "--key"])
        .arg(key_file)
        .args(["--source", source])
        .args(["--insecure-registry", &reg.addr])
        .output()
        .unwrap()
}

// A registry that takes the connection and never answers (a test double: a real registry
// cannot be made to stall). Each request ends at its own timeout and is retried; the
// verification as a whole must end at the registry's deadline all the same.
#[tokio::test]
async fn archforge_verify_gives_up_on_a_silent_registry_at_its_deadline() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().map_while(Result::ok) {
            held.push(stream);
        }
    });
    let registry = Registry::new(archforge::registry::RegistryOptions {
        insecure: vec![addr.clone()],
        deadline: Some(std::time::Duration::from_secs(2)),
        ..Default::default()
    });
    let key = SigningKey::generate().public_key();
    let started = std::time::Instant::now();
    let verified = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        archforge::supply::verify::verify_image(&registry, &format!("{addr}/team/app:v1"), &key),
    )
    .await
    .expect("verify still waiting after 30 s");
    let took = started.elapsed();
    let err = verified.unwrap_err().to_string();
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    assert!(err.contains("did not finish within 2s"), "{err}");
}
