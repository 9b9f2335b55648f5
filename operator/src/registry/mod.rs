//! Assembling per-platform images into one multi-architecture image index, with `oci-client`.
//!
//! Shared by the controller, the local executor and `archforge index create`. Each input is
//! checked against the image it names (its config's os/architecture/variant must be the
//! requested platform) before anything is pushed, and the index is pushed exactly once.
//!
//! A registry is untrusted input: every read is bounded (see `wire`), every byte read is
//! checked against the digest asked for, and an answer that cannot change by waiting
//! (a digest mismatch, an oversized blob, a 4xx) is a permanent error, not a retry.

mod wire;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use base64::Engine;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api::MediaType;
use crate::plan::Platform;

use wire::{Kind, Wire, quote};
pub use wire::{MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The annotation keys the index carries (OCI image-spec pre-defined annotations).
pub const ANNOTATION_SOURCE: &str = "org.opencontainers.image.source";
pub const ANNOTATION_REVISION: &str = "org.opencontainers.image.revision";
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";

/// What went wrong talking to a registry, specific enough to act on.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{reference} is not a valid image reference: {message}")]
    InvalidReference { reference: String, message: String },

    #[error("{platform} was built as {actual}, not {platform} ({reference}); refusing to ship it")]
    PlatformMismatch {
        platform: String,
        actual: String,
        reference: String,
    },

    #[error(
        "the {platform} image {reference} is itself an index ({media_type}), not an image manifest"
    )]
    NestedIndex {
        platform: String,
        reference: String,
        media_type: String,
    },

    #[error("the {platform} image {reference} was not found in the registry")]
    ManifestNotFound { platform: String, reference: String },

    #[error(
        "registry {registry} refused the credentials ({status}): check the docker config / push secret for {registry}"
    )]
    Credentials { registry: String, status: String },

    #[error(
        "TLS to registry {registry} failed: {message} (give its CA with --ca-file, or list it as insecure if it speaks plain HTTP)"
    )]
    Tls { registry: String, message: String },

    #[error(
        "registry {registry} answered in plain HTTP to an HTTPS request; if it really serves plain HTTP, add it with --insecure-registry {registry} (Helm value registry.insecureRegistries)"
    )]
    PlainHttp { registry: String },

    #[error("registry {registry} unreachable after {attempts} attempts: {message}")]
    Unreachable {
        registry: String,
        attempts: u32,
        message: String,
    },

    #[error("registry {registry} refused the request: {message}")]
    Registry { registry: String, message: String },

    #[error("registry {registry} does not have it: {message}")]
    NotFound { registry: String, message: String },

    #[error("{what} from {reference} is malformed: {message}")]
    Malformed {
        what: &'static str,
        reference: String,
        message: String,
    },

    #[error(
        "{reference}: the registry stored digest {registry_digest}, but the pushed bytes have {local_digest}"
    )]
    DigestMismatch {
        reference: String,
        local_digest: String,
        registry_digest: String,
    },

    #[error(
        "the {what} {reference} read from the registry hashes to {actual}: the registry served other bytes than the digest names; refusing them"
    )]
    ContentDigestMismatch {
        what: &'static str,
        reference: String,
        actual: String,
    },

    #[error(
        "the manifest {reference} is over {what_limits} of {limit} bytes ({detail}); refusing to read it (manifests are capped at {MAX_MANIFEST_BYTES} bytes, 4 MiB)"
    )]
    ManifestTooLarge {
        reference: String,
        limit: u64,
        what_limits: &'static str,
        detail: String,
    },

    #[error(
        "the config blob {reference} is over {what_limits} of {limit} bytes ({detail}); refusing to read it (image configs are capped at {MAX_CONFIG_BYTES} bytes, 4 MiB)"
    )]
    BlobTooLarge {
        reference: String,
        limit: u64,
        what_limits: &'static str,
        detail: String,
    },

    #[error(
        "the {what} {reference} is {actual} bytes, but its descriptor declares {declared}; refusing it"
    )]
    SizeMismatch {
        what: &'static str,
        reference: String,
        declared: u64,
        actual: u64,
    },

    #[error(
        "the {what} digest {digest:?} in {reference} is not a sha256:<64 lowercase hex> digest; archforge verifies only sha256"
    )]
    UnsupportedDigest {
        what: &'static str,
        reference: String,
        digest: String,
    },

    #[error(
        "the {platform} image {reference} has {what} media type {media_type:?}; an index entry must be an OCI image manifest or a Docker v2 manifest with an image config"
    )]
    UnsupportedMediaType {
        platform: String,
        reference: String,
        what: &'static str,
        media_type: String,
    },

    #[error(
        "platform {platform} is given twice ({first} and {second}); an index has one image per platform"
    )]
    DuplicatePlatform {
        platform: String,
        first: String,
        second: String,
    },

    #[error("docker config {path}: {message}")]
    DockerConfig { path: String, message: String },

    #[error("CA file {path}: {message}")]
    CaFile { path: String, message: String },

    #[error("no platform images given: an index needs at least one")]
    NoSources,
}

impl RegistryError {
    /// A stable name for metrics and condition reasons.
    pub fn reason(&self) -> &'static str {
        match self {
            RegistryError::InvalidReference { .. } => "InvalidReference",
            RegistryError::PlatformMismatch { .. } => "PlatformMismatch",
            RegistryError::NestedIndex { .. } => "NestedIndex",
            RegistryError::ManifestNotFound { .. } => "ManifestNotFound",
            RegistryError::Credentials { .. } => "RegistryCredentials",
            RegistryError::Tls { .. } => "RegistryTLS",
            RegistryError::PlainHttp { .. } => "RegistryPlainHTTP",
            RegistryError::Unreachable { .. } => "RegistryUnreachable",
            RegistryError::Registry { .. } => "RegistryError",
            RegistryError::NotFound { .. } => "NotFound",
            RegistryError::Malformed { .. } => "MalformedManifest",
            RegistryError::DigestMismatch { .. } => "DigestMismatch",
            RegistryError::ContentDigestMismatch { .. } => "DigestMismatch",
            RegistryError::ManifestTooLarge { .. } => "ManifestTooLarge",
            RegistryError::BlobTooLarge { .. } => "BlobTooLarge",
            RegistryError::SizeMismatch { .. } => "SizeMismatch",
            RegistryError::UnsupportedDigest { .. } => "UnsupportedDigest",
            RegistryError::UnsupportedMediaType { .. } => "UnsupportedMediaType",
            RegistryError::DuplicatePlatform { .. } => "DuplicatePlatform",
            RegistryError::DockerConfig { .. } => "DockerConfig",
            RegistryError::CaFile { .. } => "CAFile",
            RegistryError::NoSources => "NoSources",
        }
    }

    /// Whether trying again later could succeed (the controller backs off and retries).
    /// Only a registry that could not be reached, timed out, or answered 5xx / 429 through
    /// every retry is: any other answer (a digest mismatch, an oversized blob, a 4xx, bad
    /// credentials) is the same the next time, so the run fails with `reason()`.
    pub fn is_transient(&self) -> bool {
        matches!(self, RegistryError::Unreachable { .. })
    }
}

pub type RegistryResult<T> = Result<T, RegistryError>;

/// Registry credentials in the format of `~/.docker/config.json` and of
/// `kubernetes.io/dockerconfigjson` Secrets.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Clone, Default, Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl std::fmt::Debug for DockerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DockerAuth(<redacted>)")
    }
}

/// `https://index.docker.io/v1/` and `registry.example.com` name the same registry key.
fn registry_key(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

impl DockerConfig {
    pub fn from_json(path: &str, bytes: &[u8]) -> RegistryResult<Self> {
        // serde's own message quotes offending values, which here may be credentials, and
        // this error reaches status and Events: say only where the JSON went wrong.
        serde_json::from_slice(bytes).map_err(|e| RegistryError::DockerConfig {
            path: path.to_string(),
            message: format!(
                "not a docker config ({:?} error at line {}, column {})",
                e.classify(),
                e.line(),
                e.column()
            ),
        })
    }

    pub fn from_file(path: &str) -> RegistryResult<Self> {
        let bytes = std::fs::read(path).map_err(|e| RegistryError::DockerConfig {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        Self::from_json(path, &bytes)
    }

    /// The credentials for `registry` (`host[:port]`), anonymous when there are none.
    pub fn auth_for(&self, registry: &str) -> RegistryResult<RegistryAuth> {
        let Some(entry) = self
            .auths
            .iter()
            .find(|(key, _)| registry_key(key) == registry)
            .map(|(_, v)| v)
        else {
            return Ok(RegistryAuth::Anonymous);
        };
        if let (Some(user), Some(password)) = (&entry.username, &entry.password) {
            return Ok(RegistryAuth::Basic(user.clone(), password.clone()));
        }
        let malformed = |message: &str| RegistryError::DockerConfig {
            path: format!("auths[{registry}]"),
            message: message.to_string(),
        };
        match &entry.auth {
            Some(encoded) => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .map_err(|_| malformed("auth is not base64"))?;
                let text =
                    String::from_utf8(decoded).map_err(|_| malformed("auth is not UTF-8"))?;
                let (user, password) = text
                    .split_once(':')
                    .ok_or_else(|| malformed("auth is not base64 of user:password"))?;
                Ok(RegistryAuth::Basic(user.to_string(), password.to_string()))
            }
            None => Ok(RegistryAuth::Anonymous),
        }
    }
}

/// How many times, and how patiently, a failing request is retried.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(4),
        }
    }
}

/// How to reach registries: credentials, trust and retries.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    pub credentials: DockerConfig,
    /// Extra CA certificates (PEM) to trust, for registries with a private CA.
    pub ca_pems: Vec<Vec<u8>>,
    /// `host:port` of registries reached over plain HTTP.
    pub insecure: Vec<String>,
    pub retry: RetryPolicy,
}

impl RegistryOptions {
    /// Reads a PEM bundle to trust in addition to the system roots.
    pub fn add_ca_file(&mut self, path: &str) -> RegistryResult<()> {
        let pem = std::fs::read(path).map_err(|e| RegistryError::CaFile {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(RegistryError::CaFile {
                path: path.to_string(),
                message: "no PEM certificate in it".to_string(),
            });
        }
        self.ca_pems.push(pem);
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The digest (`sha256:<hex>`) of exactly these bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// The platform an image is for, as a key: `linux/arm64/v8` and `linux/arm64` are one
/// (v8 is the only arm64 variant), so both in one index would be the same platform twice.
fn platform_key(platform: &Platform) -> (String, String, Option<String>) {
    let variant = platform
        .variant
        .clone()
        .filter(|v| !(platform.architecture == "arm64" && v == "v8"));
    (platform.os.clone(), platform.architecture.clone(), variant)
}

/// Refuses a list that names one platform twice, before anything is fetched or pushed.
pub fn check_unique_platforms(images: &[PlatformImage]) -> RegistryResult<()> {
    let mut seen: BTreeMap<_, &PlatformImage> = BTreeMap::new();
    for image in images {
        if let Some(first) = seen.insert(platform_key(&image.platform), image) {
            return Err(RegistryError::DuplicatePlatform {
                platform: image.platform.to_string(),
                first: format!("{}={}", first.platform, first.digest),
                second: format!("{}={}", image.platform, image.digest),
            });
        }
    }
    Ok(())
}

/// One platform's image, already pushed to the target repository.
#[derive(Clone, Debug, PartialEq)]
pub struct PlatformImage {
    pub platform: Platform,
    pub digest: String,
}

/// The OCI annotations archforge puts on every index: where the source is, which commit
/// was built, and when. `created` is passed in so a repeated assembly pushes the same bytes.
pub fn run_annotations(source: &str, revision: &str, created: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (ANNOTATION_SOURCE.to_string(), source.to_string()),
        (ANNOTATION_REVISION.to_string(), revision.to_string()),
        (ANNOTATION_CREATED.to_string(), created.to_string()),
    ])
}

/// An OCI image index / Docker manifest list entry's platform.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexPlatform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexEntry {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub platform: IndexPlatform,
}

/// The index document, with fields in a fixed order so equal inputs give equal bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    pub media_type: String,
    pub manifests: Vec<IndexEntry>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// What `assemble_index` pushed.
#[derive(Clone, Debug, PartialEq)]
pub struct PushedIndex {
    /// `host/repo:tag` the index was pushed to.
    pub reference: String,
    /// Digest of the pushed bytes, confirmed by the registry.
    pub digest: String,
    pub media_type: String,
    pub index: Index,
}

/// The manifest and config fields archforge reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestHead {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: Option<String>,
    digest: String,
    #[serde(default)]
    size: Option<u64>,
}

#[derive(Deserialize)]
struct ImageConfig {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

/// Whether an image built for `actual` satisfies a request for `wanted`. An arm64 image
/// may carry variant v8, which is the only arm64 variant; any other variant must match.
fn platform_matches(wanted: &Platform, actual: &IndexPlatform) -> bool {
    if wanted.os != actual.os || wanted.architecture != actual.architecture {
        return false;
    }
    match (&wanted.variant, &actual.variant) {
        (None, None) => true,
        (None, Some(v)) => wanted.architecture == "arm64" && v == "v8",
        (Some(w), Some(v)) => w == v,
        (Some(_), None) => false,
    }
}

fn describe(platform: &IndexPlatform) -> String {
    match &platform.variant {
        Some(v) => format!("{}/{}/{v}", platform.os, platform.architecture),
        None => format!("{}/{}", platform.os, platform.architecture),
    }
}

/// A registry client with credentials, trust settings and retries.
pub struct Registry {
    client: Client,
    wire: Wire,
    options: RegistryOptions,
}

impl Registry {
    pub fn new(options: RegistryOptions) -> Self {
        let config = ClientConfig {
            protocol: if options.insecure.is_empty() {
                ClientProtocol::Https
            } else {
                ClientProtocol::HttpsExcept(options.insecure.clone())
            },
            extra_root_certificates: options
                .ca_pems
                .iter()
                .map(|pem| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect(),
            connect_timeout: Some(Duration::from_secs(5)),
            read_timeout: Some(Duration::from_secs(60)),
            // An index given as a platform's image is an error, not something to resolve.
            platform_resolver: None,
            user_agent: concat!("archforge/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        Registry {
            client: Client::new(config),
            wire: Wire::new(&options),
            options,
        }
    }

    /// The oci-client underneath, for callers outside index assembly (tests, e2e). Its reads
    /// are not bounded; assembly does not use it for reading.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn auth_for(&self, reference: &Reference) -> RegistryResult<RegistryAuth> {
        self.options
            .credentials
            .auth_for(reference.resolve_registry())
    }

    /// Runs `op`, retrying connection failures, 5xx and 429 answers with exponential backoff.
    pub async fn with_retries<T, F, Fut>(&self, registry: &str, mut op: F) -> RegistryResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, OciDistributionError>>,
    {
        self.retrying(registry, || {
            let attempt = op();
            async move { attempt.await.map_err(|e| classify(registry, &e)) }
        })
        .await
    }

    /// `with_retries` for operations that classify their own failures.
    async fn retrying<T, F, Fut>(&self, registry: &str, mut op: F) -> RegistryResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Classified>>,
    {
        let policy = self.options.retry;
        let mut delay = policy.first_delay;
        let mut attempt = 1;
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(classified) => {
                    let retriable = matches!(classified, Classified::Retriable(_));
                    if !retriable || attempt >= policy.attempts {
                        return Err(match classified {
                            Classified::Retriable(message) => RegistryError::Unreachable {
                                registry: registry.to_string(),
                                attempts: attempt,
                                message,
                            },
                            Classified::Final(error) => error,
                        });
                    }
                    if let Classified::Retriable(message) = &classified {
                        tracing::debug!(registry, attempt, error = %message, "registry request failed; retrying");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(policy.max_delay);
                    attempt += 1;
                }
            }
        }
    }

    /// Fetches one platform's manifest and config, checks them, and returns its index entry.
    async fn inspect(&self, repo: &Reference, image: &PlatformImage) -> RegistryResult<IndexEntry> {
        let platform = image.platform.to_string();
        let registry = repo.resolve_registry();
        let shown = format!("{registry}/{}@{}", repo.repository(), image.digest);
        let accepted = [OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST];
        let manifest = self
            .retrying(registry, || {
                self.wire
                    .fetch(repo, Kind::Manifest, &image.digest, None, &accepted)
            })
            .await
            .map_err(|e| not_found_as(e, &platform, &shown))?;
        let malformed = |message: String| RegistryError::Malformed {
            what: "manifest",
            reference: shown.clone(),
            message,
        };
        // serde quotes the offending value, which here is the registry's text: keep it short.
        let head: ManifestHead = serde_json::from_slice(&manifest.bytes)
            .map_err(|e| malformed(quote(&e.to_string())))?;
        // OCI manifests may leave mediaType out; the Content-Type then says what it is.
        let media_type = head
            .media_type
            .or(manifest.content_type)
            .filter(|t| !t.is_empty() && t != "application/json")
            .unwrap_or_else(|| OCI_MANIFEST.to_string());
        if head.manifests.is_some() || media_type == OCI_INDEX || media_type == DOCKER_LIST {
            return Err(RegistryError::NestedIndex {
                platform,
                reference: shown,
                media_type: quote(&media_type),
            });
        }
        if media_type != OCI_MANIFEST && media_type != DOCKER_MANIFEST {
            return Err(RegistryError::UnsupportedMediaType {
                platform,
                reference: shown,
                what: "manifest",
                media_type: quote(&media_type),
            });
        }
        let config = head
            .config
            .ok_or_else(|| malformed("no config descriptor".to_string()))?;
        if let Some(config_type) = &config.media_type
            && config_type != OCI_CONFIG
            && config_type != DOCKER_CONFIG
        {
            return Err(RegistryError::UnsupportedMediaType {
                platform,
                reference: shown,
                what: "config",
                media_type: quote(config_type),
            });
        }
        // The size is required by the image spec; without one, only the cap bounds the read.
        let blob = self
            .retrying(registry, || {
                self.wire.fetch(
                    repo,
                    Kind::Config,
                    &config.digest,
                    config.size,
                    &[OCI_CONFIG, DOCKER_CONFIG],
                )
            })
            .await
            .map_err(|e| not_found_as(e, &platform, &shown))?;
        let config: ImageConfig =
            serde_json::from_slice(&blob.bytes).map_err(|e| RegistryError::Malformed {
                what: "config",
                reference: shown.clone(),
                message: quote(&e.to_string()),
            })?;
        let actual = IndexPlatform {
            architecture: config.architecture,
            os: config.os,
            variant: config.variant.filter(|v| !v.is_empty()),
        };
        if !platform_matches(&image.platform, &actual) {
            return Err(RegistryError::PlatformMismatch {
                platform,
                actual: quote(&describe(&actual)),
                reference: shown,
            });
        }
        Ok(IndexEntry {
            media_type,
            digest: image.digest.clone(),
            size: manifest.bytes.len() as u64,
            platform: actual,
        })
    }

    /// Checks every platform image, then pushes one index referencing them all to `target`
    /// (`host/repo:tag`, the repository the platform images live in). Nothing is pushed
    /// unless every input checks out. `annotations` are passed in (not taken from the clock)
    /// so that assembling the same run twice yields the same bytes and digest.
    pub async fn assemble_index(
        &self,
        target: &str,
        images: &[PlatformImage],
        media_type: MediaType,
        annotations: &BTreeMap<String, String>,
    ) -> RegistryResult<PushedIndex> {
        if images.is_empty() {
            return Err(RegistryError::NoSources);
        }
        check_unique_platforms(images)?;
        let repo = parse_reference(target)?;
        let mut manifests = Vec::with_capacity(images.len());
        for entry in futures::future::join_all(images.iter().map(|i| self.inspect(&repo, i))).await
        {
            manifests.push(entry?);
        }
        let (index_type, annotations) = match media_type {
            MediaType::Oci => (OCI_INDEX, annotations.clone()),
            // The Docker manifest list format has no annotations.
            MediaType::Docker => (DOCKER_LIST, BTreeMap::new()),
        };
        let index = Index {
            schema_version: 2,
            media_type: index_type.to_string(),
            manifests,
            annotations,
        };
        let bytes = serde_json::to_vec(&index).expect("an index serializes");
        let digest = sha256_digest(&bytes);
        let answer = self
            .retrying(repo.resolve_registry(), || {
                self.wire.put_manifest(&repo, &bytes, index_type)
            })
            .await?;
        // The registry names the digest it computed (Location, Docker-Content-Digest); a
        // different one means it stored other bytes than were sent.
        for registry_digest in [answer.location_digest, answer.header_digest]
            .into_iter()
            .flatten()
        {
            if registry_digest != digest {
                return Err(RegistryError::DigestMismatch {
                    reference: target.to_string(),
                    local_digest: digest,
                    registry_digest,
                });
            }
        }
        Ok(PushedIndex {
            reference: target.to_string(),
            digest,
            media_type: index_type.to_string(),
            index,
        })
    }
}

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
    /// which stand in for a builder without building anything.
    pub async fn push_synthetic_image(
        &self,
        reference: &str,
        platform: &Platform,
        media_type: MediaType,
        label: &str,
    ) -> RegistryResult<String> {
        let target = parse_reference(reference)?;
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
        self.with_retries(target.registry(), || {
            self.client.push_manifest_raw(
                &target,
                manifest.clone(),
                http::HeaderValue::from_static(manifest_type),
            )
        })
        .await?;
        Ok(sha256_digest(&manifest))
    }
}

/// Parses `host/repo:tag`, insisting on an explicit registry host and tag.
pub fn parse_reference(text: &str) -> RegistryResult<Reference> {
    let invalid = |message: &str| RegistryError::InvalidReference {
        reference: text.to_string(),
        message: message.to_string(),
    };
    let reference: Reference = text
        .parse()
        .map_err(|e: oci_client::ParseError| invalid(&e.to_string()))?;
    let first = text.split('/').next().unwrap_or_default();
    if !(first.contains('.') || first.contains(':') || first == "localhost") {
        return Err(invalid(
            "it needs an explicit registry host (registry.example.com/team/app:tag)",
        ));
    }
    // The parser fills in "latest"; archforge wants the tag spelled out.
    let last = text.rsplit('/').next().unwrap_or_default();
    if !last.contains(':') || reference.digest().is_some() {
        return Err(invalid("it needs a tag and no digest"));
    }
    Ok(reference)
}

/// One failed attempt: worth another (`Retriable`, with what went wrong) or not.
pub(crate) enum Classified {
    Retriable(String),
    Final(RegistryError),
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn classify(registry: &str, e: &OciDistributionError) -> Classified {
    let registry = registry.to_string();
    match e {
        OciDistributionError::UnauthorizedError { .. } => {
            Classified::Final(RegistryError::Credentials {
                registry,
                status: "401 Unauthorized".to_string(),
            })
        }
        OciDistributionError::AuthenticationFailure(message) => {
            Classified::Final(RegistryError::Credentials {
                registry,
                status: message.clone(),
            })
        }
        OciDistributionError::ImageManifestNotFoundError(message) => {
            Classified::Final(RegistryError::NotFound {
                registry,
                message: message.clone(),
            })
        }
        OciDistributionError::ServerError { code, message, .. } => match code {
            401 | 403 => Classified::Final(RegistryError::Credentials {
                registry,
                status: format!("{code} {message}"),
            }),
            404 => Classified::Final(RegistryError::NotFound {
                registry,
                message: message.clone(),
            }),
            408 | 429 | 500.. => Classified::Retriable(format!("HTTP {code}: {}", quote(message))),
            _ => Classified::Final(RegistryError::Registry {
                registry,
                message: format!("HTTP {code}: {}", quote(message)),
            }),
        },
        OciDistributionError::RegistryError { envelope, .. } => {
            use oci_client::errors::OciErrorCode as Code;
            let text = envelope.to_string();
            let has = |wanted: &[Code]| envelope.errors.iter().any(|e| wanted.contains(&e.code));
            if has(&[Code::Toomanyrequests]) {
                Classified::Retriable(quote(&text))
            } else if has(&[Code::ManifestUnknown, Code::BlobUnknown, Code::NameUnknown]) {
                Classified::Final(RegistryError::NotFound {
                    registry,
                    message: text,
                })
            } else if has(&[Code::Unauthorized, Code::Denied]) {
                Classified::Final(RegistryError::Credentials {
                    registry,
                    status: text,
                })
            } else {
                Classified::Final(RegistryError::Registry {
                    registry,
                    message: text,
                })
            }
        }
        OciDistributionError::RequestError(inner) => classify_reqwest(&registry, inner),
        OciDistributionError::DigestError(_) => Classified::Final(RegistryError::Registry {
            registry,
            message: format!("digest mismatch: {}", quote(&error_chain(e))),
        }),
        other => Classified::Final(RegistryError::Registry {
            registry,
            message: quote(&error_chain(other)),
        }),
    }
}

/// What a failed HTTP exchange means: TLS and protocol trouble is final, only a connection
/// that failed, broke or timed out is worth another attempt.
fn classify_reqwest(registry: &str, e: &reqwest::Error) -> Classified {
    let registry = registry.to_string();
    let chain = error_chain(e);
    // rustls reads the first bytes of a plain-HTTP answer ("HTTP/1.1 400 …") as a TLS record
    // of an unknown type and says only "received corrupt message of type InvalidContentType".
    if chain.contains("InvalidContentType") {
        return Classified::Final(RegistryError::PlainHttp { registry });
    }
    let lowered = chain.to_lowercase();
    if lowered.contains("certificate") || lowered.contains("tls") || lowered.contains("handshake") {
        Classified::Final(RegistryError::Tls {
            registry,
            message: chain,
        })
    } else if e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() {
        Classified::Retriable(chain)
    } else {
        Classified::Final(RegistryError::Registry {
            registry,
            message: quote(&chain),
        })
    }
}

/// A 404 while reading a platform's image says which platform is missing.
fn not_found_as(e: RegistryError, platform: &str, reference: &str) -> RegistryError {
    if let RegistryError::NotFound { .. } = e {
        RegistryError::ManifestNotFound {
            platform: platform.to_string(),
            reference: reference.to_string(),
        }
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_forms() {
        let json = br#"{"auths": {
            "https://registry.example.com/v1/": {"auth": "dXNlcjpwYTpzcw=="},
            "127.0.0.1:5000": {"username": "u", "password": "p"}
        }}"#;
        let config = DockerConfig::from_json("config.json", json).unwrap();
        let basic = |u: &str, p: &str| RegistryAuth::Basic(u.into(), p.into());
        assert_eq!(
            format!("{:?}", config.auth_for("registry.example.com").unwrap()),
            format!("{:?}", basic("user", "pa:ss"))
        );
        assert!(
            matches!(config.auth_for("127.0.0.1:5000").unwrap(), RegistryAuth::Basic(u, p) if u == "u" && p == "p")
        );
        assert!(matches!(
            config.auth_for("other.example.com").unwrap(),
            RegistryAuth::Anonymous
        ));
        let misplaced =
            DockerConfig::from_json("c", br#"{"auths": {"r.io": "user:hunter2"}}"#).unwrap_err();
        assert!(!misplaced.to_string().contains("hunter2"), "{misplaced}");
        assert!(misplaced.to_string().contains("line 1"), "{misplaced}");
        let bad = DockerConfig::from_json("c", br#"{"auths": {"r.io": {"auth": "!!"}}}"#).unwrap();
        assert!(matches!(
            bad.auth_for("r.io"),
            Err(RegistryError::DockerConfig { .. })
        ));
    }

    #[test]
    fn arm64_v8_is_arm64() {
        let arm64: Platform = "linux/arm64".parse().unwrap();
        let v7: Platform = "linux/arm/v7".parse().unwrap();
        let p = |arch: &str, variant: Option<&str>| IndexPlatform {
            architecture: arch.into(),
            os: "linux".into(),
            variant: variant.map(Into::into),
        };
        assert!(platform_matches(&arm64, &p("arm64", None)));
        assert!(platform_matches(&arm64, &p("arm64", Some("v8"))));
        assert!(!platform_matches(&arm64, &p("amd64", None)));
        assert!(platform_matches(&v7, &p("arm", Some("v7"))));
        assert!(!platform_matches(&v7, &p("arm", Some("v6"))));
        assert!(!platform_matches(&v7, &p("arm", None)));
    }

    /// One error of every kind, with the reason and transience each must have.
    fn every_error() -> Vec<(RegistryError, &'static str, bool)> {
        let s = || "x".to_string();
        vec![
            (
                RegistryError::InvalidReference {
                    reference: s(),
                    message: s(),
                },
                "InvalidReference",
                false,
            ),
            (
                RegistryError::PlatformMismatch {
                    platform: s(),
                    actual: s(),
                    reference: s(),
                },
                "PlatformMismatch",
                false,
            ),
            (
                RegistryError::NestedIndex {
                    platform: s(),
                    reference: s(),
                    media_type: s(),
                },
                "NestedIndex",
                false,
            ),
            (
                RegistryError::ManifestNotFound {
                    platform: s(),
                    reference: s(),
                },
                "ManifestNotFound",
                false,
            ),
            (
                RegistryError::Credentials {
                    registry: s(),
                    status: s(),
                },
                "RegistryCredentials",
                false,
            ),
            (
                RegistryError::Tls {
                    registry: s(),
                    message: s(),
                },
                "RegistryTLS",
                false,
            ),
            (
                RegistryError::PlainHttp { registry: s() },
                "RegistryPlainHTTP",
                false,
            ),
            (
                RegistryError::Unreachable {
                    registry: s(),
                    attempts: 4,
                    message: s(),
                },
                "RegistryUnreachable",
                true,
            ),
            (
                RegistryError::Registry {
                    registry: s(),
                    message: s(),
                },
                "RegistryError",
                false,
            ),
            (
                RegistryError::NotFound {
                    registry: s(),
                    message: s(),
                },
                "NotFound",
                false,
            ),
            (
                RegistryError::Malformed {
                    what: "manifest",
                    reference: s(),
                    message: s(),
                },
                "MalformedManifest",
                false,
            ),
            (
                RegistryError::DigestMismatch {
                    reference: s(),
                    local_digest: s(),
                    registry_digest: s(),
                },
                "DigestMismatch",
                false,
            ),
            (
                RegistryError::ContentDigestMismatch {
                    what: "manifest",
                    reference: s(),
                    actual: s(),
                },
                "DigestMismatch",
                false,
            ),
            (
                RegistryError::ManifestTooLarge {
                    reference: s(),
                    limit: 1,
                    what_limits: "the limit",
                    detail: s(),
                },
                "ManifestTooLarge",
                false,
            ),
            (
                RegistryError::BlobTooLarge {
                    reference: s(),
                    limit: 1,
                    what_limits: "the limit",
                    detail: s(),
                },
                "BlobTooLarge",
                false,
            ),
            (
                RegistryError::SizeMismatch {
                    what: "config blob",
                    reference: s(),
                    declared: 1,
                    actual: 2,
                },
                "SizeMismatch",
                false,
            ),
            (
                RegistryError::UnsupportedDigest {
                    what: "manifest",
                    reference: s(),
                    digest: s(),
                },
                "UnsupportedDigest",
                false,
            ),
            (
                RegistryError::UnsupportedMediaType {
                    platform: s(),
                    reference: s(),
                    what: "manifest",
                    media_type: s(),
                },
                "UnsupportedMediaType",
                false,
            ),
            (
                RegistryError::DuplicatePlatform {
                    platform: s(),
                    first: s(),
                    second: s(),
                },
                "DuplicatePlatform",
                false,
            ),
            (
                RegistryError::DockerConfig {
                    path: s(),
                    message: s(),
                },
                "DockerConfig",
                false,
            ),
            (
                RegistryError::CaFile {
                    path: s(),
                    message: s(),
                },
                "CAFile",
                false,
            ),
            (RegistryError::NoSources, "NoSources", false),
        ]
    }

    #[test]
    fn only_an_unreachable_registry_is_transient() {
        for (error, reason, transient) in every_error() {
            assert_eq!(error.reason(), reason, "{error:?}");
            assert_eq!(error.is_transient(), transient, "{error:?}");
        }
    }

    #[test]
    fn oci_client_errors_are_classified() {
        let retried =
            |e: OciDistributionError| matches!(classify("r", &e), Classified::Retriable(_));
        let server = |code: u16| OciDistributionError::ServerError {
            code,
            url: "u".into(),
            message: "m".into(),
        };
        assert!(retried(server(503)));
        assert!(retried(server(429)));
        assert!(!retried(server(400)));
        assert!(!retried(server(409)));
        assert!(matches!(
            classify("r", &server(404)),
            Classified::Final(RegistryError::NotFound { .. })
        ));
        let digest =
            OciDistributionError::DigestError(oci_client::errors::DigestError::VerificationError {
                expected: "sha256:a".into(),
                actual: "sha256:b".into(),
            });
        assert!(!retried(digest));
        assert!(!retried(OciDistributionError::SpecViolationError(
            "x".into()
        )));
    }

    #[test]
    fn a_platform_given_twice_is_named() {
        let image = |p: &str, d: &str| PlatformImage {
            platform: p.parse().unwrap(),
            digest: d.into(),
        };
        assert!(
            check_unique_platforms(&[image("linux/amd64", "a"), image("linux/arm64", "b")]).is_ok()
        );
        assert!(
            check_unique_platforms(&[image("linux/arm/v7", "a"), image("linux/arm/v6", "b")])
                .is_ok()
        );
        let err = check_unique_platforms(&[image("linux/amd64", "a"), image("linux/amd64", "b")])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "platform linux/amd64 is given twice (linux/amd64=a and linux/amd64=b); an index has one image per platform"
        );
        assert!(
            check_unique_platforms(&[image("linux/arm64/v8", "a"), image("linux/arm64", "b")])
                .is_err()
        );
    }

    #[test]
    fn references_need_host_and_tag() {
        assert!(parse_reference("127.0.0.1:5000/team/app:v1").is_ok());
        assert!(parse_reference("localhost/app:v1").is_ok());
        assert!(parse_reference("team/app:v1").is_err());
        assert!(parse_reference("r.example.com/app").is_err());
        assert!(parse_reference("r.example.com/app@sha256:0000000000000000000000000000000000000000000000000000000000000000").is_err());
    }
}
