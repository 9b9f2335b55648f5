//! What can go wrong talking to a registry, and which of it is worth waiting out.

use super::{MAX_CONFIG_BYTES, MAX_MANIFEST_BYTES};

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
    ///
    /// Why only outages and overload: they are the registry's state, which changes by
    /// itself; everything else is its considered answer about these bytes and these
    /// credentials, which only a person changing them can change. Retrying those would hide
    /// the reason behind backoff, and would let a hostile registry keep a run busy for ever.
    pub fn is_transient(&self) -> bool {
        matches!(self, RegistryError::Unreachable { .. })
    }
}

pub type RegistryResult<T> = Result<T, RegistryError>;

/// One failed attempt: `Transient` (with what went wrong) is tried again, up to the retry
/// policy, and becomes `RegistryError::Unreachable` when the attempts run out; `Final` is
/// returned at once. The same word as `RegistryError::is_transient`, on purpose: what is
/// retried within one assembly is exactly what the controller retries across reconciles.
pub(crate) enum Classified {
    Transient(String),
    Final(RegistryError),
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
