//! Publishing a run: the index by digest, then each child's and the index's signature and
//! provenance attestation, and only then the index under its tag, so the tag never names an
//! index whose signatures do not exist yet.
//!
//! Attachments use cosign's tag scheme (`sha256-<hex>.sig` / `.att` in the same
//! repository): docker-registry 2.8 and most registries in use have no OCI 1.1 referrers
//! API. Pushing referrers as well, where a registry has them, is left for later.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use oci_client::Reference;
use serde_json::json;

use crate::api::MediaType;
use crate::plan::Platform;
use crate::supply::{
    DSSE_MEDIA_TYPE, PREDICATE_TYPE_ANNOTATION, SIGNATURE_ANNOTATION, SIMPLE_SIGNING_MEDIA_TYPE,
    SLSA_PROVENANCE_V1, Signer, attachment_tag, dsse_envelope, provenance_statement,
    simple_signing_payload,
};

use super::bounded::sha256_digest;
use super::error::{RegistryError, RegistryResult};
use super::index::{build_index, check_unique_platforms, index_media_type};
use super::wire::Fetched;
use super::{OCI_CONFIG, OCI_MANIFEST, PlatformImage, PushedIndex, Registry, parse_reference};

/// The digests of what was attached to one image.
#[derive(Clone, Debug, PartialEq)]
pub struct Attached {
    /// Digest of the signature manifest (tag `sha256-<hex>.sig`).
    pub signature: String,
    /// Digest of the attestation manifest (tag `sha256-<hex>.att`).
    pub attestation: String,
}

/// What [`Registry::publish`] pushed.
#[derive(Clone, Debug, PartialEq)]
pub struct Published {
    pub index: PushedIndex,
    /// The index's signature and attestation, when signed.
    pub index_attachments: Option<Attached>,
    /// Each platform's signature and attestation, in input order, when signed.
    pub platforms: Vec<(Platform, Attached)>,
}

/// `host/repo` of a reference: the identity signatures name (as cosign writes it).
pub fn repository_name(reference: &Reference) -> String {
    format!("{}/{}", reference.registry(), reference.repository())
}

/// A manifest read back with [`Registry::read_manifest`].
#[derive(Clone, Debug)]
pub struct ReadManifest {
    pub bytes: Vec<u8>,
    /// The digest of exactly `bytes`.
    pub digest: String,
    pub content_type: Option<String>,
}

impl Registry {
    /// Checks every platform image, pushes the index by digest, signs and attests every
    /// child and the index when `signer` is given, and only then moves `image`'s tag to the
    /// index. With no signer it is `assemble_index`. The same deadline applies to the whole.
    pub async fn publish(
        &self,
        image: &str,
        children: &[PlatformImage],
        media_type: MediaType,
        annotations: &BTreeMap<String, String>,
        signer: Option<&Signer<'_>>,
    ) -> RegistryResult<Published> {
        self.within_deadline(
            image,
            "the index was not assembled",
            self.publish_now(image, children, media_type, annotations, signer),
        )
        .await
    }

    async fn publish_now(
        &self,
        image: &str,
        children: &[PlatformImage],
        media_type: MediaType,
        annotations: &BTreeMap<String, String>,
        signer: Option<&Signer<'_>>,
    ) -> RegistryResult<Published> {
        if children.is_empty() {
            return Err(RegistryError::NoSources);
        }
        check_unique_platforms(children)?;
        let repo = parse_reference(image)?;
        let entries = self.inspect_all(&repo, children).await?;
        let (bytes, digest) = build_index(entries, media_type, annotations);
        let index = PushedIndex {
            reference: image.to_string(),
            digest: digest.clone(),
            media_type: index_media_type(media_type).to_string(),
        };
        let Some(signer) = signer else {
            self.push_index(&repo, image, &bytes, media_type, &digest)
                .await?;
            return Ok(Published {
                index,
                index_attachments: None,
                platforms: Vec::new(),
            });
        };
        let by_digest = repo.clone_with_digest(digest.clone());
        let shown = format!("{}@{digest}", repository_name(&repo));
        self.push_index(&by_digest, &shown, &bytes, media_type, &digest)
            .await?;
        // Every child and the index at once: each attachment is a handful of small requests,
        // so the wait is the round trips, not the bytes.
        let (children_attached, index_attachments) = futures::future::join(
            futures::future::try_join_all(
                children
                    .iter()
                    .map(|c| self.attach(&repo, &c.digest, Some(&c.platform), signer)),
            ),
            self.attach(&repo, &digest, None, signer),
        )
        .await;
        let platforms = children
            .iter()
            .map(|c| c.platform.clone())
            .zip(children_attached?)
            .collect();
        let index_attachments = index_attachments?;
        self.push_index(&repo, image, &bytes, media_type, &digest)
            .await?;
        Ok(Published {
            index,
            index_attachments: Some(index_attachments),
            platforms,
        })
    }

    /// Signs the image `digest` of `repository` (`host/repo`) and attaches its provenance
    /// (about `platform`'s image, or the index when `None`), replacing what its cosign tags
    /// held. `publish` does this for every child and the index.
    pub async fn sign_and_attest(
        &self,
        repository: &str,
        digest: &str,
        platform: Option<&Platform>,
        signer: &Signer<'_>,
    ) -> RegistryResult<Attached> {
        let repo = parse_reference(&format!("{repository}:attachments"))?;
        self.attach(&repo, digest, platform, signer).await
    }

    /// Signs `digest` and attaches its provenance, under the cosign tags of `repo`.
    async fn attach(
        &self,
        repo: &Reference,
        digest: &str,
        platform: Option<&Platform>,
        signer: &Signer<'_>,
    ) -> RegistryResult<Attached> {
        let identity = repository_name(repo);
        let payload = simple_signing_payload(&identity, digest);
        let signature = STANDARD.encode(signer.key.sign(&payload));
        let signature = self
            .push_attachment(
                repo,
                digest,
                "sig",
                &payload,
                SIMPLE_SIGNING_MEDIA_TYPE,
                BTreeMap::from([(SIGNATURE_ANNOTATION.to_string(), signature)]),
            )
            .await?;
        let statement = provenance_statement(signer.facts, &identity, digest, platform);
        let envelope = dsse_envelope(signer.key, &statement);
        let attestation = self
            .push_attachment(
                repo,
                digest,
                "att",
                &envelope,
                DSSE_MEDIA_TYPE,
                BTreeMap::from([
                    (SIGNATURE_ANNOTATION.to_string(), String::new()),
                    (
                        PREDICATE_TYPE_ANNOTATION.to_string(),
                        SLSA_PROVENANCE_V1.to_string(),
                    ),
                ]),
            )
            .await?;
        Ok(Attached {
            signature,
            attestation,
        })
    }

    /// Pushes a one-layer OCI manifest (the layout cosign writes) under the attachment tag
    /// `sha256-<hex>.<suffix>` of `digest`, and returns the manifest's digest.
    ///
    /// The tag is replaced, not appended to: a signature made by someone else under the
    /// same tag is dropped. Merging with what is there is left for later.
    async fn push_attachment(
        &self,
        repo: &Reference,
        digest: &str,
        suffix: &str,
        layer: &[u8],
        layer_media_type: &str,
        annotations: BTreeMap<String, String>,
    ) -> RegistryResult<String> {
        let tag =
            attachment_tag(digest, suffix).ok_or_else(|| RegistryError::InvalidReference {
                reference: format!(
                    "{}@{}",
                    repository_name(repo),
                    super::bounded::quote(digest)
                ),
                message: "only sha256 digests can be signed".to_string(),
            })?;
        let layer_digest = sha256_digest(layer);
        // cosign's config: empty platform, the layer as its only diff_id.
        let config = serde_json::to_vec(&json!({
            "architecture": "",
            "config": {},
            "created": "0001-01-01T00:00:00Z",
            "history": [{"created": "0001-01-01T00:00:00Z"}],
            "os": "",
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }))
        .expect("a config serializes");
        let config_digest = sha256_digest(&config);
        // No HEAD first: a new image's payload, envelope and config are new blobs, and a
        // registry takes a blob it already has again (12 requests fewer for 2 platforms).
        let registry = repo.resolve_registry();
        for (blob, blob_digest) in [(layer, &layer_digest), (&config[..], &config_digest)] {
            self.retrying(registry, || self.wire.push_blob(repo, blob, blob_digest))
                .await?;
        }
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "size": config.len(), "digest": config_digest},
            "layers": [{
                "mediaType": layer_media_type,
                "size": layer.len(),
                "digest": layer_digest,
                "annotations": annotations,
            }],
        }))
        .expect("a manifest serializes");
        let manifest_digest = sha256_digest(&manifest);
        let target = Reference::with_tag(
            repo.registry().to_string(),
            repo.repository().to_string(),
            tag,
        );
        let shown = target.whole();
        self.put_checked(&target, &shown, &manifest, OCI_MANIFEST, &manifest_digest)
            .await?;
        Ok(manifest_digest)
    }

    /// Pushes a manifest to `target` (tag or digest) and refuses an answer naming another
    /// digest than `digest`.
    pub(crate) async fn put_checked(
        &self,
        target: &Reference,
        shown: &str,
        bytes: &[u8],
        media_type: &'static str,
        digest: &str,
    ) -> RegistryResult<()> {
        let answer = self
            .retrying(target.resolve_registry(), || {
                self.wire.put_manifest(target, bytes, media_type)
            })
            .await?;
        for registry_digest in [answer.location_digest, answer.header_digest]
            .into_iter()
            .flatten()
        {
            if registry_digest != digest {
                return Err(RegistryError::DigestMismatch {
                    reference: shown.to_string(),
                    local_digest: digest.to_string(),
                    registry_digest,
                });
            }
        }
        Ok(())
    }

    /// Reads the manifest `tag` of `repo` (bounded), `None` when there is no such tag.
    pub async fn read_manifest(
        &self,
        repo: &Reference,
        tag: &str,
        accept: &[&str],
    ) -> RegistryResult<Option<ReadManifest>> {
        let found = self
            .retrying(repo.resolve_registry(), || {
                self.wire.fetch_tag(repo, tag, accept)
            })
            .await?;
        Ok(found.map(
            |(
                Fetched {
                    bytes,
                    content_type,
                },
                digest,
            )| ReadManifest {
                bytes,
                digest,
                content_type,
            },
        ))
    }

    /// Reads the manifest `digest` of `repo` (bounded, its digest checked).
    pub async fn read_manifest_digest(
        &self,
        repo: &Reference,
        digest: &str,
        accept: &[&str],
    ) -> RegistryResult<ReadManifest> {
        let fetched = self
            .retrying(repo.resolve_registry(), || {
                self.wire
                    .fetch(repo, super::wire::Kind::Manifest, digest, None, accept)
            })
            .await?;
        Ok(ReadManifest {
            bytes: fetched.bytes,
            digest: digest.to_string(),
            content_type: fetched.content_type,
        })
    }

    /// Reads a small blob (a signature payload, an envelope, a config): at most its
    /// declared size and 4 MiB, its digest checked.
    pub async fn read_small_blob(
        &self,
        repo: &Reference,
        digest: &str,
        size: Option<u64>,
    ) -> RegistryResult<Vec<u8>> {
        let fetched = self
            .retrying(repo.resolve_registry(), || {
                self.wire
                    .fetch(repo, super::wire::Kind::Config, digest, size, &["*/*"])
            })
            .await?;
        Ok(fetched.bytes)
    }
}
