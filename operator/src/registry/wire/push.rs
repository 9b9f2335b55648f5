//! Pushes: a manifest, and blobs (from memory or streamed from a file), each only to the
//! registry named, following no redirect.

use oci_client::Reference;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, LOCATION};

use super::{PushAnswer, Wire, authority};
use crate::registry::auth::Operation;
use crate::registry::bounded::{error_text, is_sha256_digest, quote};
use crate::registry::classify::status_error;
use crate::registry::error::{Classified, RegistryError};

impl Wire {
    /// Pushes `bytes` as the manifest `target` (a tag), and returns what the registry says
    /// it stored. The answer's body is never read beyond an error's first lines.
    pub async fn put_manifest(
        &self,
        target: &Reference,
        bytes: &[u8],
        media_type: &'static str,
    ) -> Result<PushAnswer, Classified> {
        let registry = target.resolve_registry().to_string();
        // By digest when the reference has one (a child or an index before its tag moves).
        let tag = target.digest().or(target.tag()).unwrap_or("latest");
        let url = format!(
            "{}/{}/manifests/{tag}",
            self.base(&registry),
            target.repository()
        );
        let response = self
            .send(&self.direct, target, Operation::Push, |http| {
                http.put(&url)
                    .header(CONTENT_TYPE, media_type)
                    .body(bytes.to_vec())
            })
            .await?;
        let status = response.status();
        if status.is_redirection() {
            // Only the Location's host is named: the rest may be a signed URL.
            let to = response
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| response.url().join(l).ok())
                .map(|u| authority(&u))
                .unwrap_or_else(|| "nowhere usable".to_string());
            return Err(Classified::Final(RegistryError::Registry {
                registry: registry.clone(),
                message: format!(
                    "the index push to {registry} was answered HTTP {status} to {to}; archforge pushes only to the registry named and follows no redirect of a push"
                ),
            }));
        }
        if !status.is_success() {
            let text = error_text(response).await;
            return Err(status_error(&registry, status, &text));
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let location_digest = header(LOCATION.as_str()).and_then(|l| {
            let path = l.split(['?', '#']).next().unwrap_or_default();
            path.rsplit('/')
                .next()
                .filter(|d| d.starts_with("sha256:"))
                .map(quote)
        });
        let header_digest = header("docker-content-digest").map(|d| quote(&d));
        Ok(PushAnswer {
            location_digest,
            header_digest,
        })
    }

    /// Whether `repo` has the blob `digest` (HEAD; any answer but 200 counts as no).
    pub async fn has_blob(&self, repo: &Reference, digest: &str) -> Result<bool, Classified> {
        let registry = repo.resolve_registry().to_string();
        if !is_sha256_digest(digest) {
            return Ok(false);
        }
        let url = format!(
            "{}/{}/blobs/{digest}",
            self.base(&registry),
            repo.repository()
        );
        let response = self
            .send(&self.http, repo, Operation::Push, |http| http.head(&url))
            .await?;
        let status = response.status();
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(Classified::Transient(format!("HTTP {status}")));
        }
        Ok(status == StatusCode::OK)
    }

    /// Uploads `bytes` as the blob `digest` of `repo` (see [`Wire::push_blob_body`]).
    pub async fn push_blob(
        &self,
        repo: &Reference,
        bytes: &[u8],
        digest: &str,
    ) -> Result<(), Classified> {
        self.push_blob_body(repo, digest, bytes.len() as u64, || {
            reqwest::Body::from(bytes.to_vec())
        })
        .await
    }

    /// Uploads the `size` bytes of the file `path` as the blob `digest` of `repo`, read as
    /// they are sent: a layer a build wrote can be of any size, and is never held whole.
    pub async fn push_blob_file(
        &self,
        repo: &Reference,
        path: &std::path::Path,
        size: u64,
        digest: &str,
    ) -> Result<(), Classified> {
        self.push_blob_body(repo, digest, size, || file_body(path))
            .await
    }

    /// Uploads the `size` bytes `body` makes (each call a fresh body: an auth challenge
    /// sends the request again) as the blob `digest` of `repo` (POST, then PUT to the
    /// upload URL the registry names, which must be on the registry itself: it receives
    /// the credentials).
    async fn push_blob_body(
        &self,
        repo: &Reference,
        digest: &str,
        size: u64,
        body: impl Fn() -> reqwest::Body,
    ) -> Result<(), Classified> {
        let registry = repo.resolve_registry().to_string();
        let start = format!(
            "{}/{}/blobs/uploads/",
            self.base(&registry),
            repo.repository()
        );
        let response = self
            .send(&self.direct, repo, Operation::Push, |http| {
                http.post(&start)
                    .header(reqwest::header::CONTENT_LENGTH, "0")
            })
            .await?;
        let status = response.status();
        if status != StatusCode::ACCEPTED {
            let text = error_text(response).await;
            return Err(status_error(&registry, status, &text));
        }
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| response.url().join(l).ok())
            .ok_or_else(|| {
                Classified::Final(RegistryError::Registry {
                    registry: registry.clone(),
                    message: "a blob upload was started without a Location to upload to"
                        .to_string(),
                })
            })?;
        drop(response);
        if !self.is_own(&location, &registry) {
            return Err(Classified::Final(RegistryError::Registry {
                registry: registry.clone(),
                message: format!(
                    "the blob upload URL is on {}; archforge uploads only to {registry}",
                    authority(&location)
                ),
            }));
        }
        let mut url = location;
        url.query_pairs_mut().append_pair("digest", digest);
        let response = self
            .send(&self.direct, repo, Operation::Push, |http| {
                http.put(url.clone())
                    .header(CONTENT_TYPE, "application/octet-stream")
                    .header(reqwest::header::CONTENT_LENGTH, size)
                    .body(body())
            })
            .await?;
        let status = response.status();
        if status != StatusCode::CREATED {
            let text = error_text(response).await;
            return Err(status_error(&registry, status, &text));
        }
        Ok(())
    }
}

/// Opens `path` for reading, never through a symlink: the handoff reader hashed the
/// regular file at this path, and a link swapped in since must not send what it points at
/// (credentials) anywhere.
async fn open_no_follow(path: std::path::PathBuf) -> std::io::Result<tokio::fs::File> {
    let mut options = tokio::fs::OpenOptions::new();
    options.read(true).custom_flags(libc::O_NOFOLLOW);
    options.open(path).await
}

/// The file at `path` as a request body, read a chunk at a time as it is sent.
fn file_body(path: &std::path::Path) -> reqwest::Body {
    use futures::{StreamExt, TryStreamExt};
    use tokio::io::AsyncReadExt;
    let path = path.to_path_buf();
    let chunks = futures::stream::once(open_no_follow(path))
        .map_ok(|file| {
            futures::stream::try_unfold(file, |mut file| async move {
                let mut chunk = vec![0u8; 256 << 10];
                let read = file.read(&mut chunk).await?;
                chunk.truncate(read);
                Ok::<_, std::io::Error>((read > 0).then_some((chunk, file)))
            })
        })
        .try_flatten()
        .boxed();
    reqwest::Body::wrap_stream(chunks)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_blob_swapped_for_a_symlink_is_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("config.json");
        std::fs::write(&secret, "credentials").unwrap();
        let blob = dir.path().join("blob");
        std::fs::write(&blob, "layer").unwrap();
        assert!(super::open_no_follow(blob.clone()).await.is_ok());
        std::fs::remove_file(&blob).unwrap();
        std::os::unix::fs::symlink(&secret, &blob).unwrap();
        let refused = super::open_no_follow(blob).await.unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::ELOOP), "{refused}");
    }
}
