//! `archforge index create`: assemble pushed platform images into one image index.

use clap::Subcommand;

use super::RegistryArgs;
use crate::api::MediaType;
use crate::plan::Platform;
use crate::registry::{PlatformImage, Registry, check_unique_platforms};

#[derive(Subcommand, Debug)]
pub enum IndexCommand {
    /// Assemble per-platform images (already pushed to the target repository) into one
    /// image index, push it by tag and print its digest.
    Create(IndexCreateArgs),
}

fn parse_source(text: &str) -> Result<PlatformImage, String> {
    let (platform, digest) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not PLATFORM=DIGEST (linux/arm64=sha256:...)"))?;
    let platform: Platform = platform.parse()?;
    let hex = digest.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(format!("{digest:?} is not a sha256:<64 hex> digest"));
    }
    Ok(PlatformImage {
        platform,
        digest: digest.to_string(),
    })
}

fn parse_annotation(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

fn parse_media_type(text: &str) -> Result<MediaType, String> {
    match text {
        "oci" => Ok(MediaType::Oci),
        "docker" => Ok(MediaType::Docker),
        _ => Err(format!("{text:?} is not oci or docker")),
    }
}

#[derive(clap::Args, Debug)]
pub struct IndexCreateArgs {
    /// Tag to push the index to: HOST/REPO:TAG. The platform images must be in HOST/REPO.
    #[arg(long)]
    pub image: String,

    /// A platform image: PLATFORM=DIGEST, e.g. linux/arm64=sha256:... (repeatable).
    #[arg(long = "source", required = true, value_parser = parse_source)]
    pub sources: Vec<PlatformImage>,

    /// oci (OCI image index) or docker (Docker manifest list v2).
    #[arg(long, default_value = "oci", value_parser = parse_media_type)]
    pub media_type: MediaType,

    /// Annotation on the index, KEY=VALUE (repeatable; OCI indexes only).
    #[arg(long = "annotation", value_parser = parse_annotation)]
    pub annotations: Vec<(String, String)>,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub(super) async fn index_create(args: &IndexCreateArgs) -> crate::Result<String> {
    // Before credentials are read or any registry is contacted.
    check_unique_platforms(&args.sources)?;
    let trust = args.registry.trust()?;
    let registry = Registry::new(args.registry.options(&trust)?);
    let annotations = args.annotations.iter().cloned().collect();
    let pushed = registry
        .assemble_index(&args.image, &args.sources, args.media_type, &annotations)
        .await?;
    Ok(pushed.digest)
}
