//! The build strategies (buildah, rootless BuildKit) and the BuildKit-specific settings of the
//! resource. Kept apart from the rest of the resource so each strategy's words live together.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The rootless builder of each platform's one-shot Job: buildah or buildkit (one BuildKit
/// daemon per builder pod, started and stopped with it). Defaults to the operator's default
/// strategy (buildah unless the operator says otherwise).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Rootless buildah (`buildah build`, then `buildah push`).
    #[default]
    Buildah,
    /// Rootless BuildKit, one daemon per pod (`buildctl-daemonless.sh build`): the daemon
    /// starts and stops with the builder container, so no state outlives a build.
    Buildkit,
}

impl Strategy {
    /// The word `spec.strategy` and `--default-strategy` take.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Buildah => "buildah",
            Strategy::Buildkit => "buildkit",
        }
    }
}

impl std::str::FromStr for Strategy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "buildah" => Ok(Strategy::Buildah),
            "buildkit" => Ok(Strategy::Buildkit),
            _ => Err(format!(
                "{s:?} is not a build strategy: use buildah or buildkit"
            )),
        }
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// BuildKit: PerPlatform (the default) imports and exports only each platform's own ref,
/// <image>:<os>-<arch>[-<variant>]; Shared also imports the other platforms' refs, while each
/// platform still writes only its own. Ignored by buildah, whose cache is keyed by layer
/// content.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheScope {
    /// Each platform imports and exports only its own ref, `<cache.image>:<os>-<arch>[-<variant>]`.
    /// Platforms never overwrite each other's cache (one ref written by several builders keeps
    /// only the last writer's platform: docker/buildx#1044).
    #[default]
    PerPlatform,
    /// Each platform still exports only to its own ref, and imports the refs of every
    /// platform of spec.platforms as well, so stages that do not depend on the target
    /// platform (FROM --platform=$BUILDPLATFORM) are reused across platforms.
    Shared,
}
