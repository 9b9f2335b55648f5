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

use base64::Engine;
use oci_client::Reference;
use oci_client::secrets::RegistryAuth;
use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, LOCATION, WWW_AUTHENTICATE,
};
use sha2::{Digest, Sha256};

use super::{Classified, RegistryError, RegistryOptions, classify_reqwest, hex};

/// The most a manifest may weigh: the OCI distribution spec lets registries refuse manifests
/// over 4 MiB, so no conforming image has a bigger one.
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// The most an image config may weigh. Real configs are a few KiB (history and labels); the
/// manifest's limit is the guide.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// How much of an error answer is read, to quote its first lines.
const MAX_ERROR_BYTES: u64 = 64 << 10;
/// The most a token endpoint's answer may weigh (tokens are a few KiB).
const MAX_TOKEN_BYTES: u64 = 1 << 20;
/// How long one request may take in all, so a registry that trickles bytes cannot hold a
/// reconcile for ever (the read timeout only bounds the gap between two reads).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How much of a registry's error text goes into a message (status, Events).
const MAX_QUOTED_CHARS: usize = 300;

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

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Operation {
    Pull,
    Push,
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

/// Whether `digest` is `sha256:` and 64 lowercase hex digits: the only form archforge hashes,
/// and the only one allowed into a URL path (a hostile manifest's "digest" could otherwise
/// be `../../other/manifests/x` or carry a query).
pub(crate) fn is_sha256_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// A registry's text, cut short and kept to one printable line, fit for a message.
pub(crate) fn quote(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_QUOTED_CHARS)
        .collect();
    if text.chars().count() > MAX_QUOTED_CHARS {
        out.push('…');
    }
    out.trim().to_string()
}

/// Reads at most `limit` bytes of the body. `Ok(None)` when the body is longer: the rest is
/// not read, and dropping the response closes the connection.
async fn read_at_most(
    response: &mut reqwest::Response,
    limit: u64,
    mut hasher: Option<&mut Sha256>,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Ok(None);
        }
        if let Some(h) = hasher.as_deref_mut() {
            h.update(&chunk);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// The first `MAX_ERROR_BYTES` of an error answer, as text for a message.
async fn error_text(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = MAX_ERROR_BYTES as usize - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_ERROR_BYTES as usize {
            break;
        }
    }
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<EnvelopeError>,
    }
    #[derive(serde::Deserialize)]
    struct EnvelopeError {
        code: String,
        #[serde(default)]
        message: String,
    }
    let text = match serde_json::from_slice::<Envelope>(&body) {
        Ok(envelope) if !envelope.errors.is_empty() => envelope
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.code, e.message))
            .collect::<Vec<_>>()
            .join("; "),
        _ => String::from_utf8_lossy(&body).into_owned(),
    };
    quote(&text)
}

/// What a non-success status means: the caller retries only `Retriable`.
pub(crate) fn status_error(registry: &str, status: StatusCode, text: &str) -> Classified {
    let registry = registry.to_string();
    let detail = if text.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {text}")
    };
    match status.as_u16() {
        401 | 403 => Classified::Final(RegistryError::Credentials {
            registry,
            status: detail,
        }),
        404 => Classified::Final(RegistryError::NotFound {
            registry,
            message: detail,
        }),
        // Overload and outages pass; everything else is the registry's considered answer.
        408 | 429 | 500.. => Classified::Retriable(detail),
        _ => Classified::Final(RegistryError::Registry {
            registry,
            message: detail,
        }),
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Challenge {
    pub scheme: String,
    pub params: HashMap<String, String>,
}

/// Parses `Bearer realm="…",service="…",scope="…"` (or `Basic realm="…"`).
pub(crate) fn parse_challenge(header: &str) -> Challenge {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_ascii_lowercase();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        params.insert(key, value.trim().to_string());
    }
    Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    }
}

/// The bounded HTTP side of a `Registry`.
pub(crate) struct Wire {
    http: reqwest::Client,
    options: RegistryOptions,
    /// The Authorization header that answered each (registry, repository, operation)'s
    /// challenge, so the challenge is met once per assembly rather than once per request.
    /// Basic credentials are not scoped: they are kept under the repository `*`, for all.
    auth: Mutex<HashMap<(String, String, Operation), HeaderValue>>,
}

impl Wire {
    pub fn new(options: &RegistryOptions) -> Self {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("archforge/", env!("CARGO_PKG_VERSION")));
        for pem in &options.ca_pems {
            // add_ca_file checked these are PEM; a bundle that still fails to parse leaves
            // the system roots, and the TLS error then names --ca-file.
            if let Ok(certs) = reqwest::Certificate::from_pem_bundle(pem) {
                builder = builder.tls_certs_merge(certs);
            }
        }
        Wire {
            http: builder
                .build()
                .expect("a reqwest client with rustls builds"),
            options: options.clone(),
            auth: Mutex::new(HashMap::new()),
        }
    }

    fn base(&self, registry: &str) -> String {
        let scheme = if self.options.insecure.iter().any(|r| r == registry) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{registry}/v2")
    }

    /// Sends the request `build` makes, answering the registry's auth challenge once.
    async fn send(
        &self,
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
            let mut request = build(&self.http).timeout(REQUEST_TIMEOUT);
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
        let challenge = response
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(parse_challenge);
        drop(response);
        let Some(header) = self.answer(reference, operation, challenge).await? else {
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

    /// The Authorization header that meets `challenge`, if the credentials can.
    async fn answer(
        &self,
        reference: &Reference,
        operation: Operation,
        challenge: Option<Challenge>,
    ) -> Result<Option<HeaderValue>, Classified> {
        let registry = reference.resolve_registry();
        let auth = self
            .options
            .credentials
            .auth_for(registry)
            .map_err(Classified::Final)?;
        let header = |value: String| {
            HeaderValue::from_str(&value).map(Some).map_err(|_| {
                Classified::Final(RegistryError::Credentials {
                    registry: registry.to_string(),
                    status: "the credentials or token are not a valid HTTP header value"
                        .to_string(),
                })
            })
        };
        let basic = |user: &str, password: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
            )
        };
        let challenge = challenge.unwrap_or_default();
        match (challenge.scheme.as_str(), &auth) {
            (_, RegistryAuth::Bearer(token)) => header(format!("Bearer {token}")),
            ("bearer", _) => {
                let token = self.token(reference, operation, &challenge, &auth).await?;
                header(format!("Bearer {token}"))
            }
            (_, RegistryAuth::Basic(user, password)) => header(basic(user, password)),
            (_, RegistryAuth::Anonymous) => Ok(None),
        }
    }

    /// Asks the challenge's realm for a token, with basic credentials when there are some.
    async fn token(
        &self,
        reference: &Reference,
        operation: Operation,
        challenge: &Challenge,
        auth: &RegistryAuth,
    ) -> Result<String, Classified> {
        let registry = reference.resolve_registry().to_string();
        let refused = |status: String| {
            Classified::Final(RegistryError::Credentials {
                registry: registry.clone(),
                status,
            })
        };
        let realm = challenge
            .params
            .get("realm")
            .and_then(|r| reqwest::Url::parse(r).ok())
            .filter(|u| matches!(u.scheme(), "https" | "http"))
            .ok_or_else(|| refused("its Bearer challenge names no usable token realm".into()))?;
        // Credentials go to the realm the registry names (as with docker); never in clear
        // text to a host that was not declared as plain HTTP.
        let realm_host = match (realm.host_str(), realm.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_string(),
            _ => String::new(),
        };
        if realm.scheme() == "http" && !self.options.insecure.contains(&realm_host) {
            return Err(refused(format!(
                "its token realm {realm_host} is plain HTTP and not listed with --insecure-registry"
            )));
        }
        let scope = match operation {
            Operation::Pull => format!("repository:{}:pull", reference.repository()),
            Operation::Push => format!("repository:{}:pull,push", reference.repository()),
        };
        let mut query = vec![("scope", scope)];
        if let Some(service) = challenge.params.get("service") {
            query.push(("service", service.clone()));
        }
        let mut request = self.http.get(realm).query(&query).timeout(REQUEST_TIMEOUT);
        if let RegistryAuth::Basic(user, password) = auth {
            request = request.basic_auth(user, Some(password));
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| classify_reqwest(&registry, &e))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            // The token endpoint's text is not quoted: it may echo what was sent.
            return Err(refused(format!(
                "the token endpoint answered HTTP {status}"
            )));
        }
        if !status.is_success() {
            return Err(status_error(&registry, status, "from the token endpoint"));
        }
        let body = read_at_most(&mut response, MAX_TOKEN_BYTES, None)
            .await
            .map_err(|e| classify_reqwest(&registry, &e))?
            .ok_or_else(|| {
                refused(format!(
                    "the token endpoint's answer is over the {MAX_TOKEN_BYTES}-byte limit"
                ))
            })?;
        #[derive(serde::Deserialize)]
        struct Token {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        serde_json::from_slice::<Token>(&body)
            .ok()
            .and_then(|t| t.token.or(t.access_token))
            .filter(|t| !t.is_empty())
            .ok_or_else(|| refused("the token endpoint's answer carries no token".into()))
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
        let accept = accept.join(", ");
        let mut response = self
            .send(repo, Operation::Pull, |http| {
                http.get(&url).header(ACCEPT, accept.as_str())
            })
            .await?;
        let status = response.status();
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
        // The announced length is the registry's word too: refuse early when it is already
        // too much, and never let it size a buffer.
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
        let bytes = read_at_most(&mut response, limit, Some(&mut hasher))
            .await
            .map_err(|e| classify_reqwest(&registry, &e))?
            .ok_or_else(|| too_large(format!("the registry sent more than {limit} bytes")))?;
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
        let actual = format!("sha256:{}", hex(&hasher.finalize()));
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
        let tag = target.tag().unwrap_or("latest");
        let url = format!(
            "{}/{}/manifests/{tag}",
            self.base(&registry),
            target.repository()
        );
        let response = self
            .send(target, Operation::Push, |http| {
                http.put(&url)
                    .header(CONTENT_TYPE, media_type)
                    .body(bytes.to_vec())
            })
            .await?;
        let status = response.status();
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:team/app:pull""#,
        );
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.example.com/token");
        assert_eq!(c.params["service"], "registry.example.com");
        assert_eq!(c.params["scope"], "repository:team/app:pull");
        let c = parse_challenge(r#"Basic realm="archforge-test""#);
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "archforge-test");
        assert_eq!(parse_challenge("Basic").params.len(), 0);
    }

    #[test]
    fn only_sha256_digests_reach_a_url() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert!(is_sha256_digest(&good));
        assert!(!is_sha256_digest(&format!("sha256:{}", "A".repeat(64))));
        assert!(!is_sha256_digest(&format!("sha512:{}", "a".repeat(128))));
        assert!(!is_sha256_digest("sha256:../../x/manifests/latest"));
        assert!(!is_sha256_digest(&format!("{good}?x=1")));
    }

    #[test]
    fn quotes_are_short_single_lines() {
        assert_eq!(quote("a\nb"), "a b");
        let long = "x".repeat(10_000);
        assert_eq!(quote(&long).chars().count(), MAX_QUOTED_CHARS + 1);
    }

    #[test]
    fn only_outages_and_overload_are_retried() {
        let retried = |code: u16| {
            matches!(
                status_error("r", StatusCode::from_u16(code).unwrap(), ""),
                Classified::Retriable(_)
            )
        };
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(retried(code), "{code}");
        }
        for code in [400, 401, 403, 404, 405, 409, 413, 415] {
            assert!(!retried(code), "{code}");
        }
        assert!(matches!(
            status_error("r", StatusCode::NOT_FOUND, ""),
            Classified::Final(RegistryError::NotFound { .. })
        ));
        assert!(matches!(
            status_error("r", StatusCode::FORBIDDEN, ""),
            Classified::Final(RegistryError::Credentials { .. })
        ));
    }
}
