//! The requests index assembly makes (manifest and config reads, the index push, the token
//! exchange), done with reqwest directly so that every body read has a limit.
//!
//! Why not oci-client for these: oci-client 0.18 reads bodies whole. `pull_manifest_raw`
//! buffers the manifest with `bytes()` before looking at it, every call's error path buffers
//! the error page the same way (`validate_registry_response`), and the token endpoint's
//! answer is read with `text()`. None of these takes a limit, so a registry answering with a
//! 600 MiB "manifest", error page or token is held in memory entirely. `pull_blob_stream`
//! streams, but its error path buffers too, and it trusts its descriptor's `urls`. So the
//! handful of requests assembly needs are made here, thinly, and nothing is read past the
//! size its descriptor declares or the absolute cap for its kind.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use oci_client::Reference;
use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, LOCATION, WWW_AUTHENTICATE,
};
use reqwest::redirect::Policy;
use sha2::{Digest, Sha256};

use super::auth::{Operation, authorization, parse_challenge};
use super::bounded::{
    MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, digest_of, error_text, is_sha256_digest, quote,
    read_at_most,
};
use super::classify::{classify_reqwest, foreign_status_error, status_error};
use super::error::{Classified, RegistryError};
use super::{CONNECT_TIMEOUT, READ_TIMEOUT, RegistryOptions, USER_AGENT};

/// How long one request may take in all, so a registry that trickles bytes cannot hold a
/// reconcile for ever (the read timeout only bounds the gap between two reads).
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Redirects followed for one request: storage behind a registry is one or two hops away.
const MAX_REDIRECTS: usize = 3;

/// `host[:port]` of `url`, the way registries are named (the port only when it is given).
fn authority(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

/// Whether `url`'s host is in `insecure` (`host:port`, or `host` alone for the default port).
fn is_listed(insecure: &[String], url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let with_default = format!("{host}:{}", url.port_or_known_default().unwrap_or(0));
    insecure
        .iter()
        .any(|r| *r == authority(url) || *r == with_default)
}

/// Why a redirect was not followed, as the redirect policy hands it to reqwest: found again
/// in the error's sources by `classify_reqwest`, and shown instead of reqwest's wording,
/// which names the URL the redirect came from (after a hop, a signed storage URL).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct RedirectRefused(pub String);

/// Registries redirect reads to storage; a hostile one could point anywhere. Follow a few
/// hops, and to plain HTTP only when that host is listed as insecure: that the registry
/// itself is listed says nothing of the hosts it points at (an internal plain-HTTP page, or
/// a downgrade of what should have been HTTPS). reqwest drops Authorization on a hop to
/// another host; an answer from another host is never quoted and never given credentials
/// (`send`, `fetch`).
fn redirect_policy(insecure: Vec<String>) -> Policy {
    Policy::custom(move |attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            let error = format!(
                "it redirected more than {MAX_REDIRECTS} times in a row (to {host} last); archforge follows at most {MAX_REDIRECTS}",
                host = authority(attempt.url())
            );
            attempt.error(RedirectRefused(error))
        } else if attempt.url().scheme() != "https" && !is_listed(&insecure, attempt.url()) {
            let error = format!(
                "it redirected to plain HTTP at {host}, which is not listed with --insecure-registry; archforge follows redirects to plain HTTP only to hosts so listed (Helm value registry.insecureRegistries)",
                host = authority(attempt.url())
            );
            attempt.error(RedirectRefused(error))
        } else {
            attempt.follow()
        }
    })
}

/// What is being read: decides the absolute cap and how an excess is named.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Kind {
    Manifest,
    Config,
}

impl Kind {
    fn limit(self) -> u64 {
        match self {
            Kind::Manifest => MAX_MANIFEST_BYTES,
            Kind::Config => MAX_CONFIG_BYTES,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Kind::Manifest => "manifests",
            Kind::Config => "blobs",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Kind::Manifest => "manifest",
            Kind::Config => "config blob",
        }
    }
}

/// A body read in full, its digest checked.
pub(crate) struct Fetched {
    pub bytes: Vec<u8>,
    pub content_type: Option<String>,
}

/// What the registry said about a pushed manifest.
pub(crate) struct PushAnswer {
    /// The last path segment of `Location`, when it looks like a digest.
    pub location_digest: Option<String>,
    /// `Docker-Content-Digest`, when sent.
    pub header_digest: Option<String>,
}

/// The bounded HTTP side of a `Registry`.
pub(crate) struct Wire {
    /// For manifest and config reads: follows redirects under `redirect_policy`.
    http: reqwest::Client,
    /// For the index push and the token exchange: follows none. Registries redirect reads
    /// to their storage, never a push; and a token is asked of the realm the registry
    /// named, with its credentials. A redirect there would send the index, or take a
    /// token, somewhere nobody named.
    direct: reqwest::Client,
    options: RegistryOptions,
    /// The Authorization header that answered each (registry, repository, operation)'s
    /// challenge, so the challenge is met once per assembly rather than once per request.
    /// Basic credentials are not scoped: they are kept under the repository `*`, for all.
    auth: Mutex<HashMap<(String, String, Operation), HeaderValue>>,
}

impl Wire {
    pub fn new(options: &RegistryOptions) -> Self {
        let client = |redirects: Policy| {
            let mut builder = reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .read_timeout(READ_TIMEOUT)
                .user_agent(USER_AGENT)
                .redirect(redirects);
            for pem in &options.ca_pems {
                // add_ca_file checked these are PEM; a bundle that still fails to parse
                // leaves the system roots, and the TLS error then names --ca-file.
                if let Ok(certs) = reqwest::Certificate::from_pem_bundle(pem) {
                    builder = builder.tls_certs_merge(certs);
                }
            }
            builder
                .build()
                .expect("a reqwest client with rustls builds")
        };
        Wire {
            http: client(redirect_policy(options.insecure.clone())),
            direct: client(Policy::none()),
            options: options.clone(),
            auth: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `url` is on `registry` itself (same scheme and authority), rather than where
    /// a redirect led.
    fn is_own(&self, url: &reqwest::Url, registry: &str) -> bool {
        let scheme = self.base(registry);
        let same_scheme = scheme.starts_with(&format!("{}://", url.scheme()));
        let host = url.host_str().unwrap_or_default();
        let with_default = format!("{host}:{}", url.port_or_known_default().unwrap_or(0));
        same_scheme && (authority(url) == registry || with_default == registry)
    }

    fn base(&self, registry: &str) -> String {
        let scheme = if self.options.insecure.iter().any(|r| r == registry) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{registry}/v2")
    }

    /// Sends the request `build` makes with `http`, answering the registry's auth challenge
    /// once.
    async fn send(
        &self,
        http: &reqwest::Client,
        reference: &Reference,
        operation: Operation,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Classified> {
        let registry = reference.resolve_registry().to_string();
        let key = (
            registry.clone(),
            reference.repository().to_string(),
            operation,
        );
        let any_repository = (registry.clone(), "*".to_string(), Operation::Pull);
        let cached = {
            let cache = self.auth.lock().expect("auth cache");
            cache
                .get(&key)
                .or_else(|| cache.get(&any_repository))
                .cloned()
        };
        let request = |header: Option<HeaderValue>| {
            let mut request = build(http).timeout(REQUEST_TIMEOUT);
            if let Some(h) = header {
                request = request.header(AUTHORIZATION, h);
            }
            request
        };
        let response = request(cached)
            .send()
            .await
            .map_err(|e| classify_reqwest(&registry, &e))?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        if !self.is_own(response.url(), &registry) {
            // A host the registry redirected to asks for credentials: its token realm could be
            // anyone's. The registry's credentials are for the registry alone.
            return Err(Classified::Final(RegistryError::Credentials {
                registry: registry.clone(),
                status: format!(
                    "401 from {} after a redirect; archforge gives the credentials of {registry} only to {registry}",
                    authority(response.url())
                ),
            }));
        }
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(parse_challenge);
        drop(response);
        let Some(header) =
            authorization(&self.direct, &self.options, reference, operation, challenge).await?
        else {
            return Err(Classified::Final(RegistryError::Credentials {
                registry: registry.clone(),
                status: "401 Unauthorized, and the docker config has no credentials for it"
                    .to_string(),
            }));
        };
        self.auth.lock().expect("auth cache").insert(
            if header.as_bytes().starts_with(b"Basic ") {
                any_repository
            } else {
                key
            },
            header.clone(),
        );
        request(Some(header))
            .send()
            .await
            .map_err(|e| classify_reqwest(&registry, &e))
    }

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

    /// A GET of `url` on `repo`'s registry accepting `accept`, following redirects under
    /// `redirect_policy`.
    async fn get(
        &self,
        repo: &Reference,
        url: &str,
        accept: &[&str],
    ) -> Result<reqwest::Response, Classified> {
        let accept = accept.join(", ");
        self.send(&self.http, repo, Operation::Pull, |http| {
            http.get(url).header(ACCEPT, accept.as_str())
        })
        .await
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

/// A body read to at most `limit` bytes and hashed as it arrives, with its media type. The
/// announced length is the registry's word too: refused early when it is already too much,
/// and never used to size a buffer.
async fn read_limited(
    response: &mut reqwest::Response,
    registry: &str,
    limit: u64,
    too_large: impl Fn(String) -> Classified,
) -> Result<(Vec<u8>, Option<String>, Sha256), Classified> {
    if let Some(length) = response.content_length()
        && length > limit
    {
        return Err(too_large(format!(
            "the registry announces {length} bytes (Content-Length)"
        )));
    }
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
    let mut hasher = Sha256::new();
    let bytes = read_at_most(response, limit, Some(&mut hasher))
        .await
        .map_err(|e| classify_reqwest(registry, &e))?
        .ok_or_else(|| too_large(format!("the registry sent more than {limit} bytes")))?;
    Ok((bytes, content_type, hasher))
}

/// The file at `path` as a request body, read a chunk at a time as it is sent.
fn file_body(path: &std::path::Path) -> reqwest::Body {
    use futures::{StreamExt, TryStreamExt};
    use tokio::io::AsyncReadExt;
    let path = path.to_path_buf();
    let chunks = futures::stream::once(tokio::fs::File::open(path))
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
