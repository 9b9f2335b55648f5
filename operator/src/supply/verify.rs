//! `archforge verify`: follows an image index's chain of trust link by link (the index's
//! signature and provenance, then each child's) and names the first link that is broken.
//!
//! Every read goes through the registry module's bounded reads: a registry (or whoever
//! wrote the attachment tags) is untrusted, so nothing is read without a limit and every
//! blob is checked against its digest before it is parsed.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use oci_client::Reference;
use serde::Deserialize;
use serde_json::Value;

use crate::registry::{
    DOCKER_LIST, OCI_INDEX, OCI_MANIFEST, Registry, RegistryError, repository_name,
};

use super::{
    DSSE_MEDIA_TYPE, IN_TOTO_PAYLOAD_TYPE, PublicKey, SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING_MEDIA_TYPE, SIMPLE_SIGNING_TYPE, SLSA_PROVENANCE_V1, STATEMENT_TYPE,
    attachment_tag, dsse_pae,
};

/// Why verification failed: a registry problem, or the first broken link of the chain.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("{link}: {reason}")]
    Broken { link: String, reason: String },
}

/// One verified image (a child or the index) and what its provenance says.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifiedImage {
    /// `os/arch[/variant]`, or `index`.
    pub platform: String,
    pub digest: String,
    /// The provenance subject, `host/repo@sha256:...`.
    pub subject: String,
    pub commit: String,
    /// The git repository the provenance says it was built from (`externalParameters.source.url`):
    /// with an operator-wide key, what tells one tenant's build from another's.
    pub source: String,
    /// The isolated build namespace the provenance says the image was built in
    /// (`internalParameters.isolated` true and its `buildNamespace`); `None` when it says
    /// the build ran where a tenant could reach it, or says nothing.
    pub build_namespace: Option<String>,
}

/// Everything `verify` checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Verified {
    pub index: VerifiedImage,
    pub platforms: Vec<VerifiedImage>,
}

impl Verified {
    /// `archforge verify --require-isolated`: the first image (the index, then each
    /// platform image) whose verified provenance does not say it was built in an isolated
    /// build namespace.
    pub fn require_isolated(&self) -> Result<(), VerifyError> {
        let images = std::iter::once(&self.index).chain(&self.platforms);
        match images.into_iter().find(|i| i.build_namespace.is_none()) {
            None => Ok(()),
            Some(image) => Err(broken(
                &image.link(),
                "its provenance does not say it was built in an isolated build namespace (internalParameters.isolated is not true): it was built where a tenant could reach the build, and --require-isolated asks for isolated builds",
            )),
        }
    }
}

impl VerifiedImage {
    /// How a broken link names this image: `index host/repo@sha256:...` or
    /// `linux/arm64 image host/repo@sha256:...`.
    fn link(&self) -> String {
        match self.platform.as_str() {
            "index" => format!("index {}", self.subject),
            platform => format!("{platform} image {}", self.subject),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Layer {
    #[serde(default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct AttachmentManifest {
    #[serde(default)]
    layers: Vec<Layer>,
}

#[derive(Deserialize)]
struct IndexDoc {
    #[serde(default, rename = "mediaType")]
    media_type: Option<String>,
    manifests: Vec<IndexChild>,
}

#[derive(Deserialize)]
struct IndexChild {
    digest: String,
    #[serde(default)]
    platform: Option<ChildPlatform>,
}

#[derive(Deserialize)]
struct ChildPlatform {
    architecture: String,
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "payloadType")]
    payload_type: String,
    payload: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Deserialize)]
struct EnvelopeSignature {
    sig: String,
}

/// At most this many layers of an attachment are looked at (cosign appends one per
/// signature; a tag with thousands is an attack on the verifier's time).
const MAX_LAYERS: usize = 32;

fn broken(link: &str, reason: impl Into<String>) -> VerifyError {
    VerifyError::Broken {
        link: link.to_string(),
        reason: reason.into(),
    }
}

/// Parses `host/repo:tag` or `host/repo@sha256:...`.
fn parse_image(image: &str) -> Result<Reference, VerifyError> {
    let invalid = |message: &str| {
        VerifyError::Registry(RegistryError::InvalidReference {
            reference: image.to_string(),
            message: message.to_string(),
        })
    };
    let reference: Reference = image
        .parse()
        .map_err(|e: oci_client::ParseError| invalid(&e.to_string()))?;
    let first = image.split('/').next().unwrap_or_default();
    if !(first.contains('.') || first.contains(':') || first == "localhost") {
        return Err(invalid(
            "it needs an explicit registry host (registry.example.com/team/app:tag)",
        ));
    }
    Ok(reference)
}

/// Checks that `digest` in `repo` has a simple-signing signature by `key` naming it.
async fn check_signature(
    registry: &Registry,
    repo: &Reference,
    digest: &str,
    key: &PublicKey,
    link: &str,
) -> Result<(), VerifyError> {
    let tag = attachment_tag(digest, "sig").ok_or_else(|| broken(link, "not a sha256 digest"))?;
    let Some(manifest) = registry.read_manifest(repo, &tag, &[OCI_MANIFEST]).await? else {
        return Err(broken(link, format!("has no signature (no tag {tag})")));
    };
    let manifest: AttachmentManifest = serde_json::from_slice(&manifest.bytes)
        .map_err(|_| broken(link, format!("its signature manifest ({tag}) is malformed")))?;
    let identity = repository_name(repo);
    let mut why = format!("its signature manifest ({tag}) has no signature layer");
    for layer in manifest
        .layers
        .iter()
        .filter(|l| l.media_type == SIMPLE_SIGNING_MEDIA_TYPE)
        .take(MAX_LAYERS)
    {
        let Some(signature) = layer
            .annotations
            .get(SIGNATURE_ANNOTATION)
            .and_then(|s| STANDARD.decode(s).ok())
        else {
            why = "its signature layer has no base64 signature annotation".to_string();
            continue;
        };
        let payload = registry
            .read_small_blob(repo, &layer.digest, layer.size)
            .await?;
        if !key.verify(&payload, &signature) {
            why = format!(
                "is not signed by the given key ({}): the signature does not verify",
                key.fingerprint()
            );
            continue;
        }
        let payload: Value = serde_json::from_slice(&payload)
            .map_err(|_| broken(link, "its signed payload is not JSON"))?;
        let critical = &payload["critical"];
        if critical["type"] != SIMPLE_SIGNING_TYPE {
            why = "its signed payload is not a cosign container image signature".to_string();
        } else if critical["image"]["docker-manifest-digest"] != digest {
            why =
                "its signature is for another image: the payload names another digest".to_string();
        } else if critical["identity"]["docker-reference"] != identity.as_str() {
            why = format!("its signature names another repository than {identity}");
        } else {
            return Ok(());
        }
    }
    Err(broken(link, why))
}

/// Checks that `digest` in `repo` has a DSSE attestation by `key` whose statement is SLSA
/// v1 provenance about `digest`, and returns the statement.
async fn check_attestation(
    registry: &Registry,
    repo: &Reference,
    digest: &str,
    key: &PublicKey,
    link: &str,
) -> Result<Value, VerifyError> {
    let tag = attachment_tag(digest, "att").ok_or_else(|| broken(link, "not a sha256 digest"))?;
    let Some(manifest) = registry.read_manifest(repo, &tag, &[OCI_MANIFEST]).await? else {
        return Err(broken(
            link,
            format!("has no provenance attestation (no tag {tag})"),
        ));
    };
    let manifest: AttachmentManifest = serde_json::from_slice(&manifest.bytes).map_err(|_| {
        broken(
            link,
            format!("its attestation manifest ({tag}) is malformed"),
        )
    })?;
    let hex = digest.trim_start_matches("sha256:");
    let mut why = format!("its attestation manifest ({tag}) has no DSSE layer");
    for layer in manifest
        .layers
        .iter()
        .filter(|l| l.media_type == DSSE_MEDIA_TYPE)
        .take(MAX_LAYERS)
    {
        let bytes = registry
            .read_small_blob(repo, &layer.digest, layer.size)
            .await?;
        let Ok(envelope) = serde_json::from_slice::<Envelope>(&bytes) else {
            why = "its attestation is not a DSSE envelope".to_string();
            continue;
        };
        let Ok(payload) = STANDARD.decode(&envelope.payload) else {
            why = "its attestation payload is not base64".to_string();
            continue;
        };
        let pae = dsse_pae(&envelope.payload_type, &payload);
        let signed = envelope.signatures.iter().take(MAX_LAYERS).any(|s| {
            STANDARD
                .decode(&s.sig)
                .is_ok_and(|sig| key.verify(&pae, &sig))
        });
        if !signed {
            why = format!(
                "its attestation is not signed by the given key ({})",
                key.fingerprint()
            );
            continue;
        }
        if envelope.payload_type != IN_TOTO_PAYLOAD_TYPE {
            why = "its attestation is not an in-toto statement".to_string();
            continue;
        }
        let Ok(statement) = serde_json::from_slice::<Value>(&payload) else {
            why = "its attestation statement is not JSON".to_string();
            continue;
        };
        let about_it = statement["subject"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["digest"]["sha256"] == hex));
        if statement["_type"] != STATEMENT_TYPE || statement["predicateType"] != SLSA_PROVENANCE_V1
        {
            why =
                "its attestation is not SLSA v1 provenance in an in-toto v1 statement".to_string();
        } else if !about_it {
            why = "its provenance is about another image: no subject has its digest".to_string();
        } else {
            return Ok(statement);
        }
    }
    Err(broken(link, why))
}

/// The git URL a provenance statement says the image was built from.
fn source_of(statement: &Value) -> Option<String> {
    statement["predicate"]["buildDefinition"]["externalParameters"]["source"]["url"]
        .as_str()
        .map(str::to_string)
}

/// The isolated build namespace a provenance statement names: only when it says
/// `"isolated": true` and names a namespace.
fn build_namespace_of(statement: &Value) -> Option<String> {
    let internal = &statement["predicate"]["buildDefinition"]["internalParameters"];
    if internal["isolated"] != Value::Bool(true) {
        return None;
    }
    internal["buildNamespace"]
        .as_str()
        .filter(|ns| !ns.is_empty())
        .map(str::to_string)
}

/// The commit a provenance statement names (the git dependency's `gitCommit`).
fn commit_of(statement: &Value) -> Option<String> {
    statement["predicate"]["buildDefinition"]["resolvedDependencies"]
        .as_array()?
        .iter()
        .find_map(|d| d["digest"]["gitCommit"].as_str())
        .map(str::to_string)
}

fn describe(platform: &ChildPlatform) -> String {
    match &platform.variant {
        Some(v) => format!("{}/{}/{v}", platform.os, platform.architecture),
        None => format!("{}/{}", platform.os, platform.architecture),
    }
}

/// Verifies `image` (`host/repo:tag` or `@sha256:...`): the index's signature and
/// provenance, each child's signature and provenance, and that every child's provenance
/// names the index's commit and the platform the index lists it under.
///
/// The whole has the registry's deadline: every request is bounded, but a registry
/// trickling its answers within each bound, retried, over the index's and every child's
/// attachments, could otherwise hold a CI job for hours.
pub async fn verify_image(
    registry: &Registry,
    image: &str,
    key: &PublicKey,
) -> Result<Verified, VerifyError> {
    registry
        .within_deadline(
            image,
            &format!("the verification of {image} did not finish"),
            verify_now(registry, image, key),
        )
        .await
}

async fn verify_now(
    registry: &Registry,
    image: &str,
    key: &PublicKey,
) -> Result<Verified, VerifyError> {
    let reference = parse_image(image)?;
    let accept = [OCI_INDEX, DOCKER_LIST];
    let manifest = match reference.digest() {
        Some(digest) => {
            registry
                .read_manifest_digest(&reference, digest, &accept)
                .await?
        }
        None => {
            let tag = reference.tag().unwrap_or("latest");
            registry
                .read_manifest(&reference, tag, &accept)
                .await?
                .ok_or_else(|| broken(image, "no such tag"))?
        }
    };
    let index_link = format!("index {}@{}", repository_name(&reference), manifest.digest);
    let index: IndexDoc = serde_json::from_slice(&manifest.bytes)
        .map_err(|_| broken(&index_link, "is not an image index or manifest list"))?;
    let media_type = index.media_type.or(manifest.content_type);
    if !matches!(media_type.as_deref(), Some(OCI_INDEX) | Some(DOCKER_LIST)) {
        return Err(broken(
            &index_link,
            "is not an image index or manifest list",
        ));
    }
    check_signature(registry, &reference, &manifest.digest, key, &index_link).await?;
    let statement =
        check_attestation(registry, &reference, &manifest.digest, key, &index_link).await?;
    let commit = commit_of(&statement)
        .ok_or_else(|| broken(&index_link, "its provenance names no git commit"))?;
    let source = source_of(&statement)
        .ok_or_else(|| broken(&index_link, "its provenance names no source repository"))?;
    let subject = format!("{}@{}", repository_name(&reference), manifest.digest);
    let build_namespace = build_namespace_of(&statement);
    let mut platforms = Vec::new();
    for child in &index.manifests {
        let platform = child
            .platform
            .as_ref()
            .map(describe)
            .unwrap_or_else(|| "unknown".to_string());
        let link = format!(
            "{platform} image {}@{}",
            repository_name(&reference),
            crate::registry::quote_untrusted(&child.digest)
        );
        check_signature(registry, &reference, &child.digest, key, &link).await?;
        let statement = check_attestation(registry, &reference, &child.digest, key, &link).await?;
        let child_commit = commit_of(&statement)
            .ok_or_else(|| broken(&link, "its provenance names no git commit"))?;
        if child_commit != commit {
            return Err(broken(
                &link,
                format!(
                    "its provenance names commit {}, the index's names {commit}",
                    crate::registry::quote_untrusted(&child_commit)
                ),
            ));
        }
        // The same commit can be in another repository (a fork): the commit alone does not
        // tie a child to the index's source.
        let child_source = source_of(&statement).unwrap_or_default();
        if child_source != source {
            return Err(broken(
                &link,
                format!(
                    "its provenance names source {}, the index's names {source}",
                    crate::registry::quote_untrusted(&child_source)
                ),
            ));
        }
        let claimed = statement["predicate"]["buildDefinition"]["externalParameters"]["platform"]
            .as_str()
            .unwrap_or_default();
        if claimed != platform {
            return Err(broken(
                &link,
                format!(
                    "its provenance is for platform {:?}, the index lists it as {platform}",
                    crate::registry::quote_untrusted(claimed)
                ),
            ));
        }
        platforms.push(VerifiedImage {
            platform,
            digest: child.digest.clone(),
            subject: format!("{}@{}", repository_name(&reference), child.digest),
            commit: child_commit,
            source: child_source,
            build_namespace: build_namespace_of(&statement),
        });
    }
    Ok(Verified {
        index: VerifiedImage {
            platform: "index".to_string(),
            digest: manifest.digest,
            subject,
            commit,
            source,
            build_namespace,
        },
        platforms,
    })
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
