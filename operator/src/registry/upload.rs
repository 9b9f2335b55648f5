//! Uploading an image that buildah wrote to a `dir:` directory, by digest only.
//!
//! buildah 1.33 (containers/image 5.29) pushes without a tag to `repo@@unknown-digest@@`;
//! older buildah (Debian's 1.28, which `build --local` runs) cannot. So the local executor
//! has buildah push to `dir:` (manifest.json plus each blob named by its hex digest) and
//! uploads from there: the blobs the registry lacks, then the manifest by its digest, which
//! leaves no tag behind.

use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use super::bounded::{MAX_MANIFEST_BYTES, is_sha256_digest, sha256_digest};
use super::error::{RegistryError, RegistryResult};
use super::{DOCKER_MANIFEST, OCI_MANIFEST, Registry, parse_reference};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    media_type: Option<String>,
    config: Blob,
    #[serde(default)]
    layers: Vec<Blob>,
}

#[derive(Deserialize)]
struct Blob {
    digest: String,
}

fn local(dir: &Path, message: String) -> RegistryError {
    RegistryError::Malformed {
        what: "local image",
        reference: dir.display().to_string(),
        message,
    }
}

/// Reads at most `limit` bytes of `path`.
fn read_file(path: &Path, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut bytes)?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

/// `sha256:` of the file at `path` and its size, read a chunk at a time.
fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 256 << 10];
    let mut size = 0u64;
    loop {
        let read = file.read(&mut chunk)?;
        if read == 0 {
            break;
        }
        hasher.update(&chunk[..read]);
        size += read as u64;
    }
    Ok((super::bounded::digest_of(hasher), size))
}

impl Registry {
    /// Uploads the image in the `dir:` directory `dir` to `repository` (`host/repo`) by
    /// digest, skipping blobs the registry has, and returns the manifest digest. When
    /// `expected` is given (the digest buildah reported), the manifest must have it.
    pub async fn upload_dir_image(
        &self,
        repository: &str,
        dir: &Path,
        expected: Option<&str>,
    ) -> RegistryResult<String> {
        let repo = parse_reference(&format!("{repository}:upload"))?;
        let manifest_path = dir.join("manifest.json");
        let bytes = read_file(&manifest_path, MAX_MANIFEST_BYTES)
            .map_err(|e| local(dir, format!("cannot read manifest.json: {e}")))?
            .ok_or_else(|| {
                local(
                    dir,
                    format!("manifest.json is over {MAX_MANIFEST_BYTES} bytes"),
                )
            })?;
        let digest = sha256_digest(&bytes);
        if let Some(expected) = expected
            && expected != digest
        {
            return Err(local(
                dir,
                format!("manifest.json is {digest}, buildah reported {expected}"),
            ));
        }
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| local(dir, format!("manifest.json is not an image manifest: {e}")))?;
        let media_type = match manifest.media_type.as_deref() {
            Some(DOCKER_MANIFEST) => DOCKER_MANIFEST,
            Some(OCI_MANIFEST) | None => OCI_MANIFEST,
            Some(other) => {
                return Err(local(
                    dir,
                    format!("manifest.json has media type {other:?}, not an image manifest"),
                ));
            }
        };
        for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
            if !is_sha256_digest(&blob.digest) {
                return Err(local(
                    dir,
                    format!("blob digest {:?} is not sha256", blob.digest),
                ));
            }
            let path = dir.join(blob.digest.trim_start_matches("sha256:"));
            // What the build wrote can be of any size: hashed, then sent, a chunk at a time.
            let (actual, size) = hash_file(&path)
                .map_err(|e| local(dir, format!("cannot read blob {}: {e}", blob.digest)))?;
            if actual != blob.digest {
                return Err(local(
                    dir,
                    format!("blob {} does not have that digest", blob.digest),
                ));
            }
            self.upload_blob_file(&repo, &path, size, &blob.digest)
                .await?;
        }
        let target = repo.clone_with_digest(digest.clone());
        let shown = format!("{repository}@{digest}");
        self.put_checked(&target, &shown, &bytes, media_type, &digest)
            .await?;
        Ok(digest)
    }

    /// Uploads the file `path` (`size` bytes, `digest`) unless the repository has it already.
    async fn upload_blob_file(
        &self,
        repo: &oci_client::Reference,
        path: &Path,
        size: u64,
        digest: &str,
    ) -> RegistryResult<()> {
        let registry = repo.resolve_registry();
        if self
            .retrying(registry, || self.wire.has_blob(repo, digest))
            .await?
        {
            return Ok(());
        }
        self.retrying(registry, || {
            self.wire.push_blob_file(repo, path, size, digest)
        })
        .await
    }
}
