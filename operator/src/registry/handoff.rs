//! Reading an image a builder handed off on disk, before it is uploaded: buildah's `dir:`
//! format (`manifest.json`, each blob named by its hex digest) or an OCI image layout
//! (`index.json` naming one manifest, blobs under `blobs/sha256/`), as BuildKit's
//! `type=oci,tar=false` output writes it.
//!
//! What is read was written by the build, so it is untrusted: no symlink is followed (a
//! link could point at the pusher's own credentials), every file is a regular file, blob
//! names are made only from checked `sha256:` digests (no `..`, no `/`), manifests and
//! `index.json` are read against [`MAX_MANIFEST_BYTES`], and every blob is hashed before it
//! is sent. The digests are the reader's own, never the builder's word.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::bounded::{MAX_MANIFEST_BYTES, is_sha256_digest, sha256_digest};
use super::error::{RegistryError, RegistryResult};
use super::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};

/// One image read from a handoff directory, checked and ready to upload.
#[derive(Debug)]
pub struct HandoffImage {
    /// The manifest, exactly as it will be pushed.
    pub manifest: Vec<u8>,
    /// `sha256:` of [`HandoffImage::manifest`].
    pub digest: String,
    pub media_type: &'static str,
    /// The config and the layers: digest, file, size (hashed, so the digest is the content's).
    pub blobs: Vec<(String, PathBuf, u64)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    media_type: Option<String>,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
}

#[derive(Deserialize)]
struct LayoutIndex {
    manifests: Vec<Descriptor>,
}

pub(super) fn malformed(dir: &Path, message: String) -> RegistryError {
    RegistryError::Malformed {
        what: "local image",
        reference: dir.display().to_string(),
        message,
    }
}

/// The metadata of `path` itself, refusing a symlink or anything but `want`.
fn check_kind(dir: &Path, path: &Path, want_dir: bool) -> RegistryResult<std::fs::Metadata> {
    let shown = path.strip_prefix(dir).unwrap_or(path).display().to_string();
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| malformed(dir, format!("cannot read {shown}: {e}")))?;
    let ok = if want_dir {
        meta.is_dir()
    } else {
        meta.is_file()
    };
    if !ok {
        let kind = if meta.is_symlink() {
            "a symlink"
        } else {
            "not a regular entry"
        };
        let want = if want_dir { "a directory" } else { "a file" };
        return Err(malformed(
            dir,
            format!("{shown} is {kind}; refusing it (it must be {want})"),
        ));
    }
    Ok(meta)
}

/// Reads at most `limit` bytes of the regular file `path`, never through a symlink.
fn read_bounded(dir: &Path, path: &Path, limit: u64) -> RegistryResult<Vec<u8>> {
    check_kind(dir, path, false)?;
    let shown = path.strip_prefix(dir).unwrap_or(path).display().to_string();
    let mut bytes = Vec::new();
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
        .map_err(|e| malformed(dir, format!("cannot read {shown}: {e}")))?;
    if bytes.len() as u64 > limit {
        return Err(malformed(dir, format!("{shown} is over {limit} bytes")));
    }
    Ok(bytes)
}

/// `sha256:` of the file at `path` and its size, read a chunk at a time.
fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
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

/// Where the blobs of the layout at `dir` are: `dir` itself (`dir:`) or `blobs/sha256`.
struct Layout<'a> {
    dir: &'a Path,
    blobs: PathBuf,
}

impl Layout<'_> {
    /// The file of blob `digest`, checked: only a `sha256:` digest names a file.
    fn blob(&self, digest: &str) -> RegistryResult<PathBuf> {
        if !is_sha256_digest(digest) {
            return Err(malformed(
                self.dir,
                format!(
                    "blob digest {} is not sha256: and 64 lowercase hex digits",
                    super::bounded::quote(digest)
                ),
            ));
        }
        Ok(self.blobs.join(&digest["sha256:".len()..]))
    }

    /// The blob `digest`, hashed: its file and size, refused unless its content has it.
    fn checked_blob(&self, digest: &str) -> RegistryResult<(String, PathBuf, u64)> {
        let path = self.blob(digest)?;
        check_kind(self.dir, &path, false)?;
        let (actual, size) = hash_file(&path)
            .map_err(|e| malformed(self.dir, format!("cannot read blob {digest}: {e}")))?;
        if actual != digest {
            return Err(malformed(
                self.dir,
                format!("blob {digest} does not have that digest (its content is {actual})"),
            ));
        }
        Ok((digest.to_string(), path, size))
    }
}

/// The manifest of an OCI layout: the one entry of `index.json`, read from its blob.
fn layout_manifest(layout: &Layout<'_>) -> RegistryResult<Vec<u8>> {
    let dir = layout.dir;
    let bytes = read_bounded(dir, &dir.join("index.json"), MAX_MANIFEST_BYTES)?;
    let index: LayoutIndex = serde_json::from_slice(&bytes)
        .map_err(|e| malformed(dir, format!("index.json is not an OCI image index: {e}")))?;
    let [entry] = index.manifests.as_slice() else {
        return Err(malformed(
            dir,
            format!(
                "index.json names {} manifests; one platform's build hands off exactly one",
                index.manifests.len()
            ),
        ));
    };
    if matches!(entry.media_type.as_deref(), Some(OCI_INDEX | DOCKER_LIST)) {
        return Err(malformed(
            dir,
            "index.json names an image index, not one image manifest".to_string(),
        ));
    }
    check_kind(dir, &layout.blobs, true)?;
    let manifest = read_bounded(dir, &layout.blob(&entry.digest)?, MAX_MANIFEST_BYTES)?;
    if sha256_digest(&manifest) != entry.digest {
        return Err(malformed(
            dir,
            format!(
                "the manifest blob {} does not have that digest",
                entry.digest
            ),
        ));
    }
    Ok(manifest)
}

/// Reads and checks the image in `dir`: an OCI layout when it has `index.json`, else
/// buildah's `dir:` format.
pub fn read_handoff(dir: &Path) -> RegistryResult<HandoffImage> {
    check_kind(dir, dir, true)?;
    let oci = std::fs::symlink_metadata(dir.join("index.json")).is_ok();
    let layout = Layout {
        dir,
        blobs: if oci {
            check_kind(dir, &dir.join("blobs"), true)?;
            dir.join("blobs").join("sha256")
        } else {
            dir.to_path_buf()
        },
    };
    let manifest = if oci {
        layout_manifest(&layout)?
    } else {
        read_bounded(dir, &dir.join("manifest.json"), MAX_MANIFEST_BYTES)?
    };
    let parsed: Manifest = serde_json::from_slice(&manifest)
        .map_err(|e| malformed(dir, format!("the manifest is not an image manifest: {e}")))?;
    let media_type = match parsed.media_type.as_deref() {
        Some(DOCKER_MANIFEST) => DOCKER_MANIFEST,
        Some(OCI_MANIFEST) | None => OCI_MANIFEST,
        Some(other) => {
            return Err(malformed(
                dir,
                format!(
                    "the manifest has media type {}, not an image manifest",
                    super::bounded::quote(other)
                ),
            ));
        }
    };
    let blobs = std::iter::once(&parsed.config)
        .chain(&parsed.layers)
        .map(|blob| layout.checked_blob(&blob.digest))
        .collect::<RegistryResult<Vec<_>>>()?;
    Ok(HandoffImage {
        digest: sha256_digest(&manifest),
        manifest,
        media_type,
        blobs,
    })
}

#[cfg(test)]
#[path = "handoff_tests.rs"]
mod tests;
