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
//!
//! Here: the client, its redirect policy and the auth challenge (`send`); the reads in
//! `read`, the pushes in `push`.

mod push;
mod read;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use oci_client::Reference;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use reqwest::redirect::Policy;
use sha2::{Digest, Sha256};

use super::auth::{Operation, authorization, parse_challenge};
use super::bounded::{MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, read_at_most};
use super::classify::classify_reqwest;
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
