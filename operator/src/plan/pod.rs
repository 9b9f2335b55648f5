//! What a run's pods take from the spec besides the build itself: the Secrets they mount,
//! the repository git-sync fetches, and where they may run. Render reads these from the
//! plan alone, never from the spec, so that what a Job holds is decided in one place.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};

use crate::api::ImageBuildSpec;

/// The Secrets one run mounts, by name: each in one container only (git credentials in
/// git-sync, pull credentials in the builder, push credentials in the push container).
/// Render reads Secret names from here alone, never from the spec, so that where they come
/// from (the ImageBuild's namespace, or per-run copies) is decided in one place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretNames {
    pub git: Option<String>,
    pub push: Option<String>,
    pub pull: Option<String>,
}

impl SecretNames {
    /// The Secrets `spec` names.
    pub fn of(spec: &ImageBuildSpec) -> Self {
        SecretNames {
            git: spec.source.git.credentials_secret.clone(),
            push: spec.output.push_secret.clone(),
            pull: spec.pull_secret.clone(),
        }
    }
}

/// The rest of what the pods take from the spec.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodPlan {
    /// The repository git-sync clones.
    pub git_url: String,
    /// How many commits git-sync fetches (`spec.source.git.depth`, 1 when unset).
    pub git_depth: i32,
    /// Whether git reaches the repository over SSH (its credentials are then a mounted key).
    pub ssh: bool,
    /// The spec's extra node selector (the architecture and OS keys are the operator's).
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Option<Vec<Toleration>>,
    /// The builder container's requests and limits, before the fuse device is added.
    pub resources: Option<ResourceRequirements>,
}

impl PodPlan {
    /// What `spec` asks of the pods.
    pub fn of(spec: &ImageBuildSpec) -> Self {
        let git = &spec.source.git;
        PodPlan {
            git_url: git.url.clone(),
            git_depth: git.depth.unwrap_or(1),
            ssh: crate::render::is_ssh_url(&git.url),
            node_selector: spec.node_selector.clone().unwrap_or_default(),
            tolerations: spec.tolerations.clone(),
            resources: spec.resources.clone(),
        }
    }
}
