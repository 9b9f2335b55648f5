//! Uploading an image that a builder wrote to a `dir:` directory or an OCI layout
//! (`handoff`), by digest (and, when asked, under a tag).
//!
//! The builder never pushes: it has no push credentials (a `RUN` step could read them). It
//! writes the image to disk, and this code (the builder pod's `push` container, running
//! `archforge push-image`, or `build --local` in its own process) uploads it: the blobs the
//! registry lacks, then the manifest by its digest, which leaves no tag behind unless one is
//! asked for.

use std::path::Path;

use super::error::RegistryResult;
use super::handoff::{malformed, read_handoff};
use super::{Registry, parse_reference};

impl Registry {
    /// Uploads the image in the `dir:` directory or OCI layout `dir` to `repository`
    /// (`host/repo`) by digest, skipping blobs the registry has, and returns the manifest
    /// digest. When `expected` is given (the digest the builder reported), the manifest must
    /// have it.
    pub async fn upload_dir_image(
        &self,
        repository: &str,
        dir: &Path,
        expected: Option<&str>,
    ) -> RegistryResult<String> {
        self.upload_image(repository, None, dir, expected).await
    }

    /// [`Registry::upload_dir_image`], and then, with a `tag`, the same manifest under it.
    pub async fn upload_image(
        &self,
        repository: &str,
        tag: Option<&str>,
        dir: &Path,
        expected: Option<&str>,
    ) -> RegistryResult<String> {
        let repo = parse_reference(&format!("{repository}:upload"))?;
        let image = read_handoff(dir)?;
        let digest = image.digest.clone();
        if let Some(expected) = expected
            && expected != digest
        {
            return Err(malformed(
                dir,
                format!("the manifest is {digest}, the builder reported {expected}"),
            ));
        }
        for (blob, path, size) in &image.blobs {
            self.upload_blob_file(&repo, path, *size, blob).await?;
        }
        let target = repo.clone_with_digest(digest.clone());
        let shown = format!("{repository}@{digest}");
        self.put_checked(&target, &shown, &image.manifest, image.media_type, &digest)
            .await?;
        if let Some(tag) = tag {
            let tagged = parse_reference(&format!("{repository}:{tag}"))?;
            let shown = format!("{repository}:{tag}");
            self.put_checked(&tagged, &shown, &image.manifest, image.media_type, &digest)
                .await?;
        }
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
