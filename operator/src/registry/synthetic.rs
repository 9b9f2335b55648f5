//! Images pushed without building anything, for tests, benches and the e2e suite's simulated
//! nodes (behind the `test-support` feature: the operator itself never needs one).

use crate::api::MediaType;
use crate::plan::Platform;

use super::bounded::sha256_digest;
use super::error::RegistryResult;
use crate::plan::UNKNOWN_DIGEST;

use super::{DOCKER_CONFIG, DOCKER_MANIFEST, OCI_CONFIG, OCI_MANIFEST, Registry, parse_reference};

/// An empty tar archive (two zero blocks), gzip-compressed: the smallest valid layer.
const EMPTY_LAYER_GZ: [u8; 29] = [
    31, 139, 8, 0, 0, 0, 0, 0, 2, 3, 99, 96, 24, 5, 163, 96, 20, 140, 84, 0, 0, 46, 175, 181, 239,
    0, 4, 0, 0,
];
/// The digest of the uncompressed empty tar, the layer's `diff_id`.
const EMPTY_LAYER_DIFF_ID: &str =
    "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";

impl Registry {
    /// Pushes a one-layer image whose config says `platform`, tagged `reference`, and
    /// returns its manifest digest. For tests and for the e2e suite's simulated nodes,
    /// which stand in for a builder without building anything. A `reference` ending in
    /// `@@unknown-digest@@` (`host/repo@@unknown-digest@@`, what buildah is given for a
    /// digest-only push) pushes by digest only, leaving no tag.
    pub async fn push_synthetic_image(
        &self,
        reference: &str,
        platform: &Platform,
        media_type: MediaType,
        label: &str,
    ) -> RegistryResult<String> {
        let by_digest = reference.strip_suffix(UNKNOWN_DIGEST);
        let target = match by_digest {
            // Any tag makes it parse; the manifest is pushed by digest, not under it.
            Some(repo) => parse_reference(&format!("{repo}:unused"))?,
            None => parse_reference(reference)?,
        };
        let auth = self.auth_for(&target)?;
        self.with_retries(target.registry(), || {
            self.client
                .auth(&target, &auth, oci_client::RegistryOperation::Push)
        })
        .await?;
        let (manifest_type, config_type, layer_type) = match media_type {
            MediaType::Oci => (
                OCI_MANIFEST,
                OCI_CONFIG,
                "application/vnd.oci.image.layer.v1.tar+gzip",
            ),
            MediaType::Docker => (
                DOCKER_MANIFEST,
                DOCKER_CONFIG,
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
            ),
        };
        let mut config = serde_json::json!({
            "architecture": platform.architecture,
            "os": platform.os,
            "config": {"Labels": {"dev.archforge.synthetic": label}},
            "rootfs": {"type": "layers", "diff_ids": [EMPTY_LAYER_DIFF_ID]},
        });
        if let Some(variant) = &platform.variant {
            config["variant"] = serde_json::json!(variant);
        }
        let config = serde_json::to_vec(&config).expect("config serializes");
        let config_digest = sha256_digest(&config);
        let layer_digest = sha256_digest(&EMPTY_LAYER_GZ);
        for (blob, digest) in [
            (&EMPTY_LAYER_GZ[..], &layer_digest),
            (&config[..], &config_digest),
        ] {
            self.with_retries(target.registry(), || {
                self.client.push_blob(&target, blob.to_vec(), digest)
            })
            .await?;
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": layer_type, "digest": layer_digest, "size": EMPTY_LAYER_GZ.len()}],
        }))
        .expect("manifest serializes");
        let digest = sha256_digest(&manifest);
        let target = match by_digest {
            Some(_) => target.clone_with_digest(digest.clone()),
            None => target,
        };
        self.with_retries(target.registry(), || {
            self.client.push_manifest_raw(
                &target,
                manifest.clone(),
                http::HeaderValue::from_static(manifest_type),
            )
        })
        .await?;
        Ok(digest)
    }
}
