//! Supply-chain metadata for what archforge pushes: SLSA v1 provenance (in-toto Statements),
//! cosign-compatible signatures and DSSE-signed attestations.
//!
//! The operator (and `build --local`) writes provenance from what it knows itself (the
//! pinned commit, the spec, the builder image, each platform's digest), never from anything
//! a builder pod says, so a build cannot forge its own provenance.
//!
//! Attachments use cosign's tag scheme, `sha256-<hex>.sig` and `sha256-<hex>.att` in the
//! image's repository, which every registry supports (docker-registry 2.8 has no OCI 1.1
//! referrers API). Referrers, where a registry has them, are left for later, as is keyless
//! signing (Fulcio certificates, Rekor entries), which needs the internet: a `Signer` would
//! then carry a certificate chain next to the key, and the signature layer its annotations.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use crate::plan::Platform;

mod key;
pub mod verify;

pub use key::{COSIGN_KEY, COSIGN_PASSWORD, KeyError, PublicKey, SigningKey, load_public_key};

/// The in-toto Statement type archforge writes.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// The SLSA provenance predicate type.
pub const SLSA_PROVENANCE_V1: &str = "https://slsa.dev/provenance/v1";
/// The build type archforge's provenance describes (what `externalParameters` hold).
pub const BUILD_TYPE: &str = "https://archforge.dev/ImageBuild/v1";
/// The DSSE payload type of an in-toto Statement.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// Media type of a cosign signature layer (the simple signing payload).
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Media type of a cosign attestation layer (a DSSE envelope).
pub const DSSE_MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
/// The layer annotation holding the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The layer annotation naming an attestation's predicate type.
pub const PREDICATE_TYPE_ANNOTATION: &str = "predicateType";
/// The simple signing payload's `type`.
pub const SIMPLE_SIGNING_TYPE: &str = "cosign container image signature";

/// Everything the provenance says about a run, gathered by the operator (or `build
/// --local`), never by a builder.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BuildFacts {
    /// The git URL, without credentials (the spec's URL never has any).
    pub source_url: String,
    /// The full commit SHA every platform built.
    pub commit: String,
    /// The git ref the spec asked for (branch, tag or SHA).
    pub git_ref: String,
    pub dockerfile: String,
    pub context_dir: String,
    pub target: Option<String>,
    pub build_args: BTreeMap<String, String>,
    /// Every platform of the run, as written in the spec.
    pub platforms: Vec<String>,
    /// The builder image reference (by digest where known).
    pub builder_image: String,
    /// Who built it: the operator's builder id URI.
    pub builder_id: String,
    /// The run: `<namespace>/<name>/<run name>` or the local executor's equivalent.
    pub invocation_id: String,
    /// RFC 3339 times of the run's start and end.
    pub started_on: String,
    pub finished_on: String,
    /// The ImageBuild's namespace and name (empty for a local build without one).
    pub namespace: String,
    pub name: String,
    /// The operator's isolated build namespace the run's pods ran in, out of tenants'
    /// reach: from the operator's settings, never from the ImageBuild. `None`: the run was
    /// built where a tenant could reach it (its ImageBuild's namespace, or `build --local`).
    pub build_namespace: Option<String>,
}

impl BuildFacts {
    /// The facts an ImageBuild's spec gives for a run at `commit`; the caller adds who
    /// built it (`builder_image`, `builder_id`), the run (`invocation_id`) and its times.
    pub fn from_spec(build: &crate::api::ImageBuild, commit: &str) -> BuildFacts {
        let spec = &build.spec;
        BuildFacts {
            source_url: crate::source::redact_url(&spec.source.git.url),
            commit: commit.to_string(),
            git_ref: spec.source.git.r#ref.clone(),
            dockerfile: crate::plan::dockerfile_path(spec),
            context_dir: crate::plan::context_dir(spec),
            target: spec.target.clone().filter(|t| !t.is_empty()),
            build_args: spec
                .build_args
                .iter()
                .map(|a| (a.name.clone(), a.value.clone()))
                .collect(),
            platforms: spec.platforms.clone(),
            namespace: build.metadata.namespace.clone().unwrap_or_default(),
            name: build.metadata.name.clone().unwrap_or_default(),
            ..BuildFacts::default()
        }
    }
}

/// `sha256-<hex>.<suffix>`: the tag cosign attaches a signature (`sig`) or attestation
/// (`att`) of `digest` under. `None` for a digest that is not `sha256:<hex>`.
pub fn attachment_tag(digest: &str, suffix: &str) -> Option<String> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("sha256-{hex}.{suffix}"))
}

/// The in-toto Statement (v1) with a SLSA v1 provenance predicate for the image `digest` in
/// `subject_repo` (`host/repo`): one platform's image when `platform` is given, the index
/// otherwise. Pure: the same facts give the same statement.
pub fn provenance_statement(
    facts: &BuildFacts,
    subject_repo: &str,
    digest: &str,
    platform: Option<&Platform>,
) -> Value {
    let (algorithm, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    let mut external = json!({
        "source": {"url": facts.source_url, "ref": facts.git_ref},
        "dockerfile": facts.dockerfile,
        "contextDir": facts.context_dir,
        "platforms": facts.platforms,
        "buildArgs": facts.build_args,
    });
    if let Some(target) = &facts.target {
        external["target"] = json!(target);
    }
    if let Some(platform) = platform {
        external["platform"] = json!(platform.to_string());
    }
    if !facts.name.is_empty() {
        external["imageBuild"] = json!({"namespace": facts.namespace, "name": facts.name});
    }
    let mut dependencies = vec![json!({
        "uri": format!("git+{}", facts.source_url),
        "digest": {"gitCommit": facts.commit},
    })];
    let mut internal = json!({});
    // `build --local` runs this machine's buildah: there is no builder image to name.
    if !facts.builder_image.is_empty() {
        let mut builder = json!({"uri": format!("docker://{}", facts.builder_image)});
        if let Some((_, builder_digest)) = facts.builder_image.split_once("@sha256:") {
            builder["digest"] = json!({"sha256": builder_digest});
        }
        dependencies.push(builder);
        internal["builderImage"] = json!(facts.builder_image);
    }
    internal["isolated"] = json!(facts.build_namespace.is_some());
    if let Some(namespace) = &facts.build_namespace {
        internal["buildNamespace"] = json!(namespace);
    }
    json!({
        "_type": STATEMENT_TYPE,
        "subject": [{"name": subject_repo, "digest": {algorithm: hex}}],
        "predicateType": SLSA_PROVENANCE_V1,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": internal,
                "resolvedDependencies": dependencies,
            },
            "runDetails": {
                "builder": {
                    "id": facts.builder_id,
                    "version": {"archforge": env!("CARGO_PKG_VERSION")},
                },
                "metadata": {
                    "invocationId": facts.invocation_id,
                    "startedOn": facts.started_on,
                    "finishedOn": facts.finished_on,
                },
            },
        },
    })
}

/// What signs a run's images: the key, and the facts its provenance is written from.
#[derive(Clone, Copy, Debug)]
pub struct Signer<'a> {
    pub key: &'a SigningKey,
    pub facts: &'a BuildFacts,
}

/// The cosign "simple signing" payload for `digest` in `docker_reference` (`host/repo`).
/// Its bytes are what is signed; serde_json keeps the keys in this (sorted) order.
pub fn simple_signing_payload(docker_reference: &str, digest: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": digest},
            "type": SIMPLE_SIGNING_TYPE,
        },
        "optional": null,
    }))
    .expect("a payload serializes")
}

/// DSSE's pre-authentication encoding of a payload: what a DSSE signature covers.
pub fn dsse_pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// A DSSE envelope carrying `statement`, signed with `key`.
pub fn dsse_envelope(key: &SigningKey, statement: &Value) -> Vec<u8> {
    let payload = serde_json::to_vec(statement).expect("a statement serializes");
    let signature = key.sign(&dsse_pae(IN_TOTO_PAYLOAD_TYPE, &payload));
    serde_json::to_vec(&json!({
        "payloadType": IN_TOTO_PAYLOAD_TYPE,
        "payload": STANDARD.encode(&payload),
        "signatures": [{"keyid": "", "sig": STANDARD.encode(signature)}],
    }))
    .expect("an envelope serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> BuildFacts {
        BuildFacts {
            source_url: "https://git.example.com/app.git".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            git_ref: "main".into(),
            dockerfile: "Dockerfile".into(),
            context_dir: ".".into(),
            platforms: vec!["linux/amd64".into(), "linux/arm64".into()],
            builder_image: format!("quay.io/buildah/stable@sha256:{}", "b".repeat(64)),
            builder_id: "https://archforge.dev/operator".into(),
            invocation_id: "ns/app/app-1".into(),
            started_on: "2024-01-02T03:04:05Z".into(),
            finished_on: "2024-01-02T03:09:05Z".into(),
            ..BuildFacts::default()
        }
    }

    #[test]
    fn statement_names_subject_commit_and_platform() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let arm64: Platform = "linux/arm64".parse().unwrap();
        let s = provenance_statement(&facts(), "r.example.com/app", &digest, Some(&arm64));
        assert_eq!(s["_type"], STATEMENT_TYPE);
        assert_eq!(s["subject"][0]["digest"]["sha256"], "a".repeat(64));
        assert_eq!(s["subject"][0]["name"], "r.example.com/app");
        let definition = &s["predicate"]["buildDefinition"];
        assert_eq!(definition["externalParameters"]["platform"], "linux/arm64");
        assert_eq!(
            definition["resolvedDependencies"][0]["digest"]["gitCommit"],
            facts().commit
        );
        assert_eq!(
            definition["resolvedDependencies"][1]["digest"]["sha256"],
            "b".repeat(64)
        );
        assert_eq!(definition["internalParameters"]["isolated"], false);
        assert!(
            definition["internalParameters"]
                .get("buildNamespace")
                .is_none()
        );
        let index = provenance_statement(&facts(), "r.example.com/app", &digest, None);
        assert!(
            index["predicate"]["buildDefinition"]["externalParameters"]
                .get("platform")
                .is_none()
        );
    }

    #[test]
    fn an_isolated_run_names_its_build_namespace() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let isolated = BuildFacts {
            build_namespace: Some("archforge-builds".into()),
            ..facts()
        };
        let s = provenance_statement(&isolated, "r.example.com/app", &digest, None);
        let internal = &s["predicate"]["buildDefinition"]["internalParameters"];
        assert_eq!(internal["isolated"], true);
        assert_eq!(internal["buildNamespace"], "archforge-builds");
    }

    #[test]
    fn payload_is_the_simple_signing_layout() {
        let digest = format!("sha256:{}", "c".repeat(64));
        let payload = simple_signing_payload("r.example.com/app", &digest);
        assert_eq!(
            String::from_utf8(payload).unwrap(),
            format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"r.example.com/app"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
            )
        );
        assert_eq!(
            attachment_tag(&digest, "sig").unwrap(),
            format!("sha256-{}.sig", "c".repeat(64))
        );
        assert_eq!(attachment_tag("sha256:../x", "sig"), None);
    }

    #[test]
    fn pae_matches_the_dsse_spec_example() {
        // From the DSSE protocol document.
        assert_eq!(
            dsse_pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
        );
    }
}
