//! The index document: which platform images it lists, in which format, and its exact bytes.
//! Pure, so that what is pushed can be tested without a registry.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::api::MediaType;
use crate::plan::Platform;

use super::bounded::sha256_digest;
use super::error::{RegistryError, RegistryResult};
use super::{DOCKER_LIST, OCI_INDEX, PlatformImage};

/// The annotation keys the index carries (OCI image-spec pre-defined annotations).
pub const ANNOTATION_SOURCE: &str = "org.opencontainers.image.source";
pub const ANNOTATION_REVISION: &str = "org.opencontainers.image.revision";
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";

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

/// The index media type of an output format.
pub fn index_media_type(media_type: MediaType) -> &'static str {
    match media_type {
        MediaType::Oci => OCI_INDEX,
        MediaType::Docker => DOCKER_LIST,
    }
}

/// The bytes of the index listing `entries`, and their digest (`sha256:` of exactly those
/// bytes). Equal inputs give equal bytes: the fields are in a fixed order and annotations
/// sorted. A Docker manifest list has no annotations, so they are left out of it.
pub fn build_index(
    entries: Vec<IndexEntry>,
    media_type: MediaType,
    annotations: &BTreeMap<String, String>,
) -> (Vec<u8>, String) {
    let index = Index {
        schema_version: 2,
        media_type: index_media_type(media_type).to_string(),
        manifests: entries,
        annotations: match media_type {
            MediaType::Oci => annotations.clone(),
            // The Docker manifest list format has no annotations.
            MediaType::Docker => BTreeMap::new(),
        },
    };
    let bytes = serde_json::to_vec(&index).expect("an index serializes");
    let digest = sha256_digest(&bytes);
    (bytes, digest)
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

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    fn entry(architecture: &str, variant: Option<&str>, digest: &str) -> IndexEntry {
        IndexEntry {
            media_type: super::super::OCI_MANIFEST.to_string(),
            digest: digest.to_string(),
            size: 42,
            platform: IndexPlatform {
                architecture: architecture.to_string(),
                os: "linux".to_string(),
                variant: variant.map(str::to_string),
            },
        }
    }

    fn annotations() -> BTreeMap<String, String> {
        run_annotations(
            "https://git.example.com/app.git",
            "0123abcd",
            "2024-01-02T03:04:05Z",
        )
    }

    #[test]
    fn the_bytes_are_fixed_by_the_inputs() {
        let entries = vec![
            entry("amd64", None, "sha256:a"),
            entry("arm", Some("v7"), "sha256:b"),
        ];
        let (bytes, digest) = build_index(entries.clone(), MediaType::Oci, &annotations());
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            concat!(
                r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","#,
                r#""manifests":["#,
                r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:a","size":42,"#,
                r#""platform":{"architecture":"amd64","os":"linux"}},"#,
                r#"{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:b","size":42,"#,
                r#""platform":{"architecture":"arm","os":"linux","variant":"v7"}}],"#,
                r#""annotations":{"org.opencontainers.image.created":"2024-01-02T03:04:05Z","#,
                r#""org.opencontainers.image.revision":"0123abcd","#,
                r#""org.opencontainers.image.source":"https://git.example.com/app.git"}}"#,
            )
        );
        assert_eq!(
            build_index(entries, MediaType::Oci, &annotations()),
            (bytes, digest)
        );
    }

    #[test]
    fn the_digest_is_sha256_of_exactly_the_bytes() {
        let (bytes, digest) = build_index(
            vec![entry("amd64", None, "sha256:a")],
            MediaType::Oci,
            &annotations(),
        );
        let expected: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(digest, format!("sha256:{expected}"));
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn oci_and_docker_formats() {
        let parse = |media_type| {
            let (bytes, _) = build_index(
                vec![entry("arm64", None, "sha256:a")],
                media_type,
                &annotations(),
            );
            serde_json::from_slice::<Index>(&bytes).unwrap()
        };
        let oci = parse(MediaType::Oci);
        assert_eq!(oci.schema_version, 2);
        assert_eq!(oci.media_type, "application/vnd.oci.image.index.v1+json");
        assert_eq!(oci.annotations, annotations());
        let docker = parse(MediaType::Docker);
        assert_eq!(docker.schema_version, 2);
        assert_eq!(
            docker.media_type,
            "application/vnd.docker.distribution.manifest.list.v2+json"
        );
        assert!(docker.annotations.is_empty(), "{docker:?}");
        assert_eq!(docker.manifests, oci.manifests);
    }

    #[test]
    fn no_annotations_no_key() {
        for media_type in [MediaType::Oci, MediaType::Docker] {
            let (bytes, _) = build_index(
                vec![entry("amd64", None, "sha256:a")],
                media_type,
                &BTreeMap::new(),
            );
            let text = String::from_utf8(bytes).unwrap();
            assert!(!text.contains("annotations"), "{text}");
        }
        let (docker, _) = build_index(
            vec![entry("amd64", None, "sha256:a")],
            MediaType::Docker,
            &annotations(),
        );
        assert!(!String::from_utf8(docker).unwrap().contains("annotations"));
    }

    #[test]
    fn platform_fields_with_and_without_variant() {
        let (bytes, _) = build_index(
            vec![
                entry("arm", Some("v6"), "sha256:a"),
                entry("riscv64", None, "sha256:b"),
            ],
            MediaType::Oci,
            &BTreeMap::new(),
        );
        let index: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            index["manifests"][0]["platform"],
            serde_json::json!({"architecture": "arm", "os": "linux", "variant": "v6"})
        );
        assert_eq!(
            index["manifests"][1]["platform"],
            serde_json::json!({"architecture": "riscv64", "os": "linux"})
        );
        assert_eq!(index["manifests"][1]["digest"], "sha256:b");
        assert_eq!(index["manifests"][1]["size"], 42);
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
}
