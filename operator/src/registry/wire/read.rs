//! Bounded reads: a manifest or config blob by digest, and a manifest by tag.

use oci_client::Reference;
use reqwest::StatusCode;

use super::{Fetched, Kind, Wire, authority, read_limited};
use crate::registry::bounded::{
    MAX_MANIFEST_BYTES, digest_of, error_text, is_sha256_digest, quote,
};
use crate::registry::classify::{foreign_status_error, status_error};
use crate::registry::error::{Classified, RegistryError};

impl Wire {
    /// Reads the manifest or config blob `digest` of `repo`, at most `declared` bytes (when
    /// its descriptor says) and never more than the cap for its kind, hashing as it reads.
    /// Refuses, without reading on, as soon as either is exceeded, and refuses bytes whose
    /// digest is not `digest`.
    pub async fn fetch(
        &self,
        repo: &Reference,
        kind: Kind,
        digest: &str,
        declared: Option<u64>,
        accept: &[&str],
    ) -> Result<Fetched, Classified> {
        let registry = repo.resolve_registry().to_string();
        let shown = format!("{registry}/{}@{digest}", repo.repository());
        if !is_sha256_digest(digest) {
            return Err(Classified::Final(RegistryError::UnsupportedDigest {
                what: kind.what(),
                reference: format!("{registry}/{}", repo.repository()),
                digest: quote(digest),
            }));
        }
        let cap = kind.limit();
        let too_large = |detail: String| {
            let (limit, what_limits) = match declared {
                Some(size) if size <= cap => (size, "its descriptor's size"),
                _ => (cap, "the limit"),
            };
            let error = match kind {
                Kind::Manifest => RegistryError::ManifestTooLarge {
                    reference: shown.clone(),
                    limit,
                    what_limits,
                    detail,
                },
                Kind::Config => RegistryError::BlobTooLarge {
                    reference: shown.clone(),
                    limit,
                    what_limits,
                    detail,
                },
            };
            Classified::Final(error)
        };
        if let Some(size) = declared
            && size > cap
        {
            return Err(too_large(format!("its descriptor declares {size} bytes")));
        }
        let limit = declared.unwrap_or(cap).min(cap);
        let url = format!(
            "{}/{}/{}/{digest}",
            self.base(&registry),
            repo.repository(),
            kind.path()
        );
        let mut response = self.get(repo, &url, accept).await?;
        let status = response.status();
        if status != StatusCode::OK && !self.is_own(response.url(), &registry) {
            // Not the registry's own answer: its body is not quoted into status and Events.
            let message = format!(
                "HTTP {status} from {} after a redirect (for {shown}; the answer is not shown)",
                authority(response.url())
            );
            return Err(foreign_status_error(&registry, status, message));
        }
        if status != StatusCode::OK {
            let text = error_text(response).await;
            return Err(match status_error(&registry, status, &text) {
                Classified::Final(RegistryError::Registry { registry, message })
                    if status.is_success() || status.is_redirection() =>
                {
                    Classified::Final(RegistryError::Registry {
                        registry,
                        message: format!("{message} (expected 200 OK for {shown})"),
                    })
                }
                other => other,
            });
        }
        let (bytes, content_type, hasher) =
            read_limited(&mut response, &registry, limit, too_large).await?;
        drop(response);
        if let Some(size) = declared
            && size != bytes.len() as u64
        {
            return Err(Classified::Final(RegistryError::SizeMismatch {
                what: kind.what(),
                reference: shown,
                declared: size,
                actual: bytes.len() as u64,
            }));
        }
        let actual = digest_of(hasher);
        if actual != digest {
            return Err(Classified::Final(RegistryError::ContentDigestMismatch {
                what: kind.what(),
                reference: shown,
                actual,
            }));
        }
        Ok(Fetched {
            bytes,
            content_type,
        })
    }

    /// Reads the manifest tagged `tag` of `repo`, bounded like `fetch`, and returns it with
    /// the digest of the bytes read; `None` when the registry has no such tag (404).
    pub async fn fetch_tag(
        &self,
        repo: &Reference,
        tag: &str,
        accept: &[&str],
    ) -> Result<Option<(Fetched, String)>, Classified> {
        let registry = repo.resolve_registry().to_string();
        // Tags reach the URL path: only the characters a tag may have (distribution spec).
        if tag.is_empty()
            || tag.len() > 128
            || !tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            return Err(Classified::Final(RegistryError::InvalidReference {
                reference: format!("{registry}/{}:{}", repo.repository(), quote(tag)),
                message: "not a valid tag".to_string(),
            }));
        }
        let shown = format!("{registry}/{}:{tag}", repo.repository());
        let url = format!(
            "{}/{}/manifests/{tag}",
            self.base(&registry),
            repo.repository()
        );
        let mut response = self.get(repo, &url, accept).await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND && self.is_own(response.url(), &registry) {
            return Ok(None);
        }
        if status != StatusCode::OK {
            if !self.is_own(response.url(), &registry) {
                let message = format!(
                    "HTTP {status} from {} after a redirect (for {shown}; the answer is not shown)",
                    authority(response.url())
                );
                return Err(foreign_status_error(&registry, status, message));
            }
            let text = error_text(response).await;
            return Err(status_error(&registry, status, &text));
        }
        let limit = MAX_MANIFEST_BYTES;
        let too_large = |detail: String| {
            Classified::Final(RegistryError::ManifestTooLarge {
                reference: shown.clone(),
                limit,
                what_limits: "the limit",
                detail,
            })
        };
        let (bytes, content_type, hasher) =
            read_limited(&mut response, &registry, limit, too_large).await?;
        Ok(Some((
            Fetched {
                bytes,
                content_type,
            },
            digest_of(hasher),
        )))
    }
}
