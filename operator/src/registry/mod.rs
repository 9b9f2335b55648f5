//! Assembling per-platform images into one multi-architecture image index, with `oci-client`.
//!
//! Shared by the controller, the local executor and `archforge index create`. Each input is
//! checked against the image it names (its config's os/architecture/variant must be the
//! requested platform) before anything is pushed, and the index is pushed exactly once.
//!
//! A registry is untrusted input: every read is bounded (`wire`, `bounded`), every byte read is
//! checked against the digest asked for, and an answer that cannot change by waiting
//! (a digest mismatch, an oversized blob, a 4xx) is a permanent error, not a retry.

mod auth;
mod bounded;
mod classify;
mod error;
mod handoff;
mod index;
mod inspect;
mod publish;
#[cfg(feature = "test-support")]
mod synthetic;
mod upload;
mod wire;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::api::MediaType;
use crate::plan::Platform;

pub use auth::DockerConfig;
pub use bounded::{MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES, sha256_digest};
pub use error::{RegistryError, RegistryResult};
pub use handoff::{HandoffImage, read_handoff};
pub use index::{
    ANNOTATION_CREATED, ANNOTATION_REVISION, ANNOTATION_SOURCE, Index, IndexEntry, IndexPlatform,
    build_index, check_unique_platforms, index_media_type, run_annotations,
};

pub use publish::{Attached, Published, ReadManifest, repository_name};

use classify::classify;
use error::Classified;
use wire::Wire;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Both HTTP clients (oci-client's and the bounded one) reach registries alike.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const USER_AGENT: &str = concat!("archforge/", env!("CARGO_PKG_VERSION"));

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
    /// How long one index assembly may take in all; 10 minutes when `None`.
    pub deadline: Option<Duration>,
}

/// The default deadline of one index assembly.
pub const ASSEMBLY_DEADLINE: Duration = Duration::from_secs(600);

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

/// One platform's image, already pushed to the target repository.
#[derive(Clone, Debug, PartialEq)]
pub struct PlatformImage {
    pub platform: Platform,
    pub digest: String,
}

/// What `assemble_index` pushed.
#[derive(Clone, Debug, PartialEq)]
pub struct PushedIndex {
    /// `host/repo:tag` the index was pushed to.
    pub reference: String,
    /// Digest of the pushed bytes, confirmed by the registry.
    pub digest: String,
    pub media_type: String,
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
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(READ_TIMEOUT),
            // An index given as a platform's image is an error, not something to resolve.
            platform_resolver: None,
            user_agent: USER_AGENT,
            ..ClientConfig::default()
        };
        Registry {
            client: Client::new(config),
            wire: Wire::new(&options),
            options,
        }
    }

    /// How long one whole operation on this registry may take (an assembly, a
    /// verification): `RegistryOptions::deadline`, 10 minutes by default.
    pub fn deadline(&self) -> Duration {
        self.options.deadline.unwrap_or(ASSEMBLY_DEADLINE)
    }

    /// Runs `work` on `image`'s registry within [`Registry::deadline`]: every request is
    /// bounded, but a registry trickling its answers within each bound, retried, could
    /// otherwise hold the caller for hours. Past the deadline, `unfinished` ("the index was
    /// not assembled") says what did not finish, as a transient `Unreachable`.
    pub async fn within_deadline<T, E: From<RegistryError>>(
        &self,
        image: &str,
        unfinished: &str,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let deadline = self.deadline();
        match tokio::time::timeout(deadline, work).await {
            Ok(result) => result,
            Err(_) => Err(RegistryError::Unreachable {
                registry: parse_reference(image)
                    .map(|r| r.resolve_registry().to_string())
                    .unwrap_or_else(|_| image.to_string()),
                attempts: 1,
                message: format!(
                    "{unfinished} within {}; archforge stops waiting on a registry that slow",
                    humantime::format_duration(deadline)
                ),
            }
            .into()),
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
                    let transient = matches!(classified, Classified::Transient(_));
                    if !transient || attempt >= policy.attempts {
                        return Err(match classified {
                            Classified::Transient(message) => RegistryError::Unreachable {
                                registry: registry.to_string(),
                                attempts: attempt,
                                message,
                            },
                            Classified::Final(error) => error,
                        });
                    }
                    if let Classified::Transient(message) = &classified {
                        tracing::debug!(registry, attempt, error = %message, "registry request failed; retrying");
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(policy.max_delay);
                    attempt += 1;
                }
            }
        }
    }

    /// Checks every platform image, then pushes one index referencing them all to `target`
    /// (`host/repo:tag`, the repository the platform images live in). Nothing is pushed
    /// unless every input checks out. `annotations` are passed in (not taken from the clock)
    /// so that assembling the same run twice yields the same bytes and digest.
    ///
    /// The whole assembly has a deadline (`RegistryOptions::deadline`, 10 minutes by default):
    /// every request is bounded, but a registry trickling its answers within each bound,
    /// retried, could otherwise hold the run (and the reconcile) for over an hour. Running out
    /// of time is transient: the next attempt may meet a healthier registry.
    ///
    /// [`Registry::publish`] without a signer.
    pub async fn assemble_index(
        &self,
        target: &str,
        images: &[PlatformImage],
        media_type: MediaType,
        annotations: &BTreeMap<String, String>,
    ) -> RegistryResult<PushedIndex> {
        self.publish(target, images, media_type, annotations, None)
            .await
            .map(|published| published.index)
    }

    /// Pushes the index bytes as `target` (a tag or, before signing, its digest), and
    /// refuses the registry's answer if it names a digest other than `digest`.
    async fn push_index(
        &self,
        repo: &Reference,
        target: &str,
        bytes: &[u8],
        media_type: MediaType,
        digest: &str,
    ) -> RegistryResult<()> {
        // The registry names the digest it computed (Location, Docker-Content-Digest); a
        // different one means it stored other bytes than were sent.
        self.put_checked(repo, target, bytes, index_media_type(media_type), digest)
            .await
    }
}

/// Untrusted text (from a registry or an attachment) cut short to one printable line, fit
/// for a message.
pub fn quote_untrusted(text: &str) -> String {
    bounded::quote(text)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_need_host_and_tag() {
        assert!(parse_reference("127.0.0.1:5000/team/app:v1").is_ok());
        assert!(parse_reference("localhost/app:v1").is_ok());
        assert!(parse_reference("team/app:v1").is_err());
        assert!(parse_reference("r.example.com/app").is_err());
        assert!(parse_reference("r.example.com/app@sha256:0000000000000000000000000000000000000000000000000000000000000000").is_err());
    }
}
