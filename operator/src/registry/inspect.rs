//! Reading each platform's image (manifest, then config) and checking it is what its
//! index entry will claim: an image manifest, not an index, built for the platform asked for.

use oci_client::Reference;
use serde::Deserialize;

use crate::plan::Platform;

use super::bounded::quote;
use super::error::{RegistryError, RegistryResult};
use super::index::{IndexEntry, IndexPlatform};
use super::wire::Kind;
use super::{
    DOCKER_CONFIG, DOCKER_LIST, DOCKER_MANIFEST, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST,
    PlatformImage, Registry,
};

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

impl Registry {
    /// Inspects every image at once; the first failure, in input order, is the answer.
    pub(super) async fn inspect_all(
        &self,
        repo: &Reference,
        images: &[PlatformImage],
    ) -> RegistryResult<Vec<IndexEntry>> {
        futures::future::join_all(images.iter().map(|i| self.inspect(repo, i)))
            .await
            .into_iter()
            .collect()
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
