//! The scenarios, one module per group; `main.rs` lists them in the order they run.

pub mod buildkit;
pub mod checks;
pub mod failures;
pub mod happy;
pub mod invalid;
pub mod isolation;
pub mod lifecycle;
pub mod placement;
pub mod policy;
pub mod queue;
pub mod registry;
pub mod signing;
pub mod stuck;

use anyhow::{Context as _, ensure};
use archforge::api::ImageBuildStatus;
use archforge::registry::Registry;
use archforge_e2e::cluster::read_index;

/// The entries (platform, digest) of the index `status` says was pushed, read back from the
/// registry; fails unless the digest of what the registry holds is the one in status.
pub async fn pushed_index(
    registry: &Registry,
    status: &ImageBuildStatus,
) -> anyhow::Result<Vec<(String, String)>> {
    let image = status.image.clone().context("status.image")?;
    let (index_digest, entries) = read_index(registry, &image).await?;
    ensure!(
        status.digest.as_deref() == Some(index_digest.as_str()),
        "status.digest {:?} vs pushed {index_digest}",
        status.digest
    );
    Ok(entries)
}
