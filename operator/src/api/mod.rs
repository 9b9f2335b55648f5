//! The `ImageBuild` custom resource (`archforge.dev/v1alpha1`).
//!
//! Every rule is enforced in three places on purpose: the OpenAPI schema (patterns, enums,
//! list types; enforced by every supported API server), CEL `x-kubernetes-validations`
//! (enforced from Kubernetes 1.25, or 1.24 with a feature gate), and [`ImageBuildSpec::validate`]
//! in Rust, which the controller and the CLI run because CEL may not have run at all.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod policy;
mod rules;
mod schema;
mod strategy;

pub use policy::*;
pub use rules::*;
use schema::{node_selector_schema, resources_schema, tolerations_schema};
pub use strategy::*;

/// Desired state of an ImageBuild: what to build, for which platforms, and where to push it.
// Several `printcolumn(...)` entries legitimately repeat `type_ = "string"`.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "archforge.dev",
    version = "v1alpha1",
    kind = "ImageBuild",
    namespaced,
    shortname = "ib",
    category = "archforge",
    status = "ImageBuildStatus",
    doc = "ImageBuild builds a multi-architecture container image from a git repository: one native, rootless builder Job per platform, then one image index pushed to the output tag.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Where the current run is"
    ),
    printcolumn(
        name = "Platforms",
        type_ = "string",
        json_path = ".status.progress",
        description = "Platforms built out of platforms requested"
    ),
    printcolumn(
        name = "Waiting",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Reconciling\")].message",
        description = "What the run waits for: its place in the queue, a node, its builds",
        priority = "1"
    ),
    printcolumn(
        name = "Image",
        type_ = "string",
        json_path = ".spec.output.image",
        description = "Tag the image index is pushed to"
    ),
    printcolumn(
        name = "Digest",
        type_ = "string",
        json_path = ".status.digest",
        description = "Digest of the pushed image index",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.platformSettings) || self.platformSettings.all(s, s.platform in self.platforms)").message("spec.platformSettings: every platform must also be listed in spec.platforms"))]
#[x_kube(validation = Rule::new("!has(self.platformSettings) || self.platforms.exists(p, !self.platformSettings.exists(s, s.platform == p && has(s.allowFailure) && s.allowFailure))").message("spec.platformSettings: at least one platform must not allowFailure: an index needs a platform that must succeed"))]
pub struct ImageBuildSpec {
    /// Where the build context comes from.
    pub source: Source,

    /// Platforms to build, as os/arch or os/arch/variant (for example linux/amd64,
    /// linux/arm64, linux/arm/v7). Each platform is built natively on a node of that
    /// architecture. At least one; no duplicates.
    #[schemars(length(min = 1, max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    // maxLength beside the enum: the API server estimates a CEL rule's cost from declared
    // bounds only, and the platformSettings rules compare these strings (an enum alone left
    // the spec's rules over the cost budget on a real 1.26 server).
    #[schemars(extend("items" = {"type": "string", "maxLength": MAX_PLATFORM_LENGTH, "enum": ["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/arm/v6", "linux/s390x", "linux/ppc64le", "linux/riscv64", "linux/386"]}))]
    pub platforms: Vec<String>,

    /// Per-platform settings, keyed by a platform of spec.platforms: whether it may fail
    /// without failing the run, and its own retries and timeout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["platform"]))]
    pub platform_settings: Vec<PlatformSettings>,

    /// Whether a platform may be built under QEMU emulation on a node of another
    /// architecture: Never (the default unless the operator says otherwise), Fallback (when
    /// no node of its own architecture is schedulable, after emulationAfter) or Always
    /// (every platform on one host architecture). Emulated platforms are marked in
    /// status.platforms[].emulated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emulation: Option<Emulation>,

    /// How long a Fallback run waits for a native node before it emulates, as whole hours,
    /// minutes and seconds (for example 5m, for node pools that scale up). Default 0s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(min = 2, max = 32))]
    #[x_kube(validation = Rule::new("duration(self) <= duration('24h')").message("spec.emulationAfter: must be a duration of at most 24h"))]
    pub emulation_after: Option<String>,

    /// Where the finished image index goes.
    pub output: Output,

    /// Build arguments passed to the Dockerfile's ARG instructions. Values are passed
    /// verbatim as single arguments; they are never interpreted by a shell.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub build_args: Vec<BuildArg>,

    /// Name of the multi-stage build target to stop at. Empty builds the last stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = TARGET_PATTERN), length(max = 128))]
    pub target: Option<String>,

    /// Optional registry-backed layer cache shared by all runs (per platform with BuildKit,
    /// see cache.scope).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<Cache>,

    /// Compute resources of the builder container (requests and limits). The fuse
    /// device limit is added by the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "resources_schema")]
    pub resources: Option<ResourceRequirements>,

    /// Longest time one platform's build may run, as whole hours, minutes and seconds
    /// (for example 30m or 1h30m). Becomes the Job's activeDeadlineSeconds. At most 24h.
    /// Defaults to the operator's default timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(min = 2, max = 32))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s') && duration(self) <= duration('24h')").message("spec.timeout: must be a positive duration of at most 24h"))]
    pub timeout: Option<String>,

    /// How many times a failed build pod is retried before the platform fails
    /// (the Job's backoffLimit). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub retries: Option<i32>,

    /// Extra node labels the builder pods must match: label keys and values, at most 32.
    /// The kubernetes.io/arch and kubernetes.io/os keys are set by archforge from the
    /// platform and may not be given here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "node_selector_schema")]
    #[x_kube(validation = Rule::new("!('kubernetes.io/arch' in self) && !('kubernetes.io/os' in self)").message("spec.nodeSelector: kubernetes.io/arch and kubernetes.io/os are set by archforge from spec.platforms"))]
    #[x_kube(validation = Rule::new(format!("self.all(k, k.matches(r'{LABEL_KEY_PATTERN}') && !k.matches(r'{LABEL_PREFIX_TOO_LONG_PATTERN}'))")).message(format!("spec.nodeSelector: {LABEL_KEY_MESSAGE}").as_str()))]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Tolerations added to the builder pods, for example to reach tainted arm64 nodes.
    /// At most 32, each as Kubernetes accepts it in a pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "tolerations_schema")]
    pub tolerations: Option<Vec<Toleration>>,

    /// The rootless builder of every platform: buildah or buildkit (one BuildKit daemon per
    /// builder pod, started and stopped with it). Defaults to the operator's default
    /// strategy (buildah unless the operator says otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,

    /// kubernetes.io/dockerconfigjson Secret in the ImageBuild's namespace with credentials
    /// for pulling base images (FROM) and for the registry cache (spec.cache). Mounted
    /// read-only in the build container only, where the Dockerfile's RUN steps can read it:
    /// give it read access to the base images and write access to the cache repository,
    /// nothing more. The push credentials (spec.output.pushSecret) never reach the build
    /// container. Anonymous pulls when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS_LABEL_PATTERN), length(max = 63))]
    pub pull_secret: Option<String>,
}

/// How a platform without a node of its own architecture is built.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Emulation {
    /// Only natively: wait for a node of the platform's architecture.
    #[default]
    Never,
    /// Natively when a node of the architecture is schedulable, else under QEMU on a node
    /// labelled as able to emulate it.
    Fallback,
    /// Every platform on one host architecture, the others under QEMU.
    Always,
}

impl std::str::FromStr for Emulation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Never" => Ok(Emulation::Never),
            "Fallback" => Ok(Emulation::Fallback),
            "Always" => Ok(Emulation::Always),
            _ => Err(format!(
                "{s:?} is not an emulation mode: use Never, Fallback or Always"
            )),
        }
    }
}

impl std::fmt::Display for Emulation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Emulation::Never => "Never",
            Emulation::Fallback => "Fallback",
            Emulation::Always => "Always",
        })
    }
}

/// Settings of one platform.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PlatformSettings {
    /// The platform these settings are for; it must be listed in spec.platforms.
    #[schemars(length(max = MAX_PLATFORM_LENGTH))]
    #[schemars(extend("enum" = ["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/arm/v6", "linux/s390x", "linux/ppc64le", "linux/riscv64", "linux/386"]))]
    pub platform: String,

    /// When true, a failure of this platform does not fail the run: the index is pushed
    /// with the platforms that succeeded (at least one that may not fail must succeed), and
    /// Ready names what is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_failure: Option<bool>,

    /// This platform's retries (its Job's backoffLimit); spec.retries otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub retries: Option<i32>,

    /// This platform's timeout (its Job's activeDeadlineSeconds), at most 24h; spec.timeout
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(min = 2, max = 32))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s') && duration(self) <= duration('24h')").message("spec.platformSettings[].timeout: must be a positive duration of at most 24h"))]
    pub timeout: Option<String>,
}

/// Where the build context comes from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// The git repository holding the build context.
    pub git: GitSource,

    /// Directory inside the repository used as the build context. Relative, without "..".
    #[serde(default = "default_context_dir")]
    #[schemars(regex(pattern = RELATIVE_PATH_PATTERN), length(max = 1024))]
    #[x_kube(validation = Rule::new("!self.matches('(^|/)[.][.](/|$)')").message("spec.source.contextDir: must stay inside the repository (no '..')"))]
    pub context_dir: String,

    /// Path of the Dockerfile (or Containerfile), relative to contextDir.
    #[serde(default = "default_dockerfile")]
    #[schemars(regex(pattern = RELATIVE_PATH_PATTERN), length(max = 1024))]
    #[x_kube(validation = Rule::new("!self.matches('(^|/)[.][.](/|$)')").message("spec.source.dockerfile: must stay inside the repository (no '..')"))]
    pub dockerfile: String,
}

fn default_context_dir() -> String {
    ".".to_string()
}

fn default_dockerfile() -> String {
    "Dockerfile".to_string()
}

/// A git repository and the revision to build.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GitSource {
    /// Repository URL: https://, http://, ssh://, git:// or user@host:path. No credentials:
    /// no password, no user name in http(s):// and git:// URLs, no query string in http(s)
    /// URLs; put them in the Secret named by credentialsSecret.
    #[schemars(regex(pattern = GIT_URL_PATTERN), length(max = 2048))]
    #[x_kube(validation = Rule::new(format!("!self.matches(r'{GIT_URL_PASSWORD_PATTERN}')")).message(format!("spec.source.git.url: {GIT_URL_PASSWORD_MESSAGE}").as_str()))]
    #[x_kube(validation = Rule::new(format!("!self.matches(r'{GIT_URL_USERINFO_PATTERN}')")).message(format!("spec.source.git.url: {GIT_URL_USERINFO_MESSAGE}").as_str()))]
    #[x_kube(validation = Rule::new(format!("!self.matches(r'{GIT_URL_QUERY_PATTERN}')")).message(format!("spec.source.git.url: {GIT_URL_QUERY_MESSAGE}").as_str()))]
    pub url: String,

    /// Branch, tag or full commit SHA to build. A branch or tag is resolved to a commit
    /// once per run, so every platform builds the same tree. Changing it starts a new run.
    #[serde(default = "default_git_ref")]
    #[schemars(regex(pattern = GIT_REF_PATTERN), length(max = 255))]
    pub r#ref: String,

    /// History depth to fetch; 0 fetches the full history. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub depth: Option<i32>,

    /// Secret in the ImageBuild's namespace with git credentials: keys username and
    /// password (kubernetes.io/basic-auth) for HTTP(S), or ssh-privatekey and known_hosts
    /// for SSH URLs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS_LABEL_PATTERN), length(max = 63))]
    pub credentials_secret: Option<String>,
}

fn default_git_ref() -> String {
    "main".to_string()
}

/// Where the finished image index is pushed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Output {
    /// Image reference with registry host and tag, for example
    /// registry.example.com/team/app:v1. Each platform's image is pushed to the same
    /// repository (by digest, or under the tag suffixed with -os-arch[-variant] when
    /// platformTags is true); the index gets this tag.
    #[schemars(regex(pattern = IMAGE_REF_PATTERN), length(max = 255))]
    pub image: String,

    /// kubernetes.io/dockerconfigjson Secret in the ImageBuild's namespace with push
    /// credentials for the output (and cache) registry. Anonymous when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS_LABEL_PATTERN), length(max = 63))]
    pub push_secret: Option<String>,

    /// Manifest format: oci (OCI image index, the default) or docker (Docker manifest list v2).
    #[serde(default)]
    pub media_type: MediaType,

    /// Whether each platform's image also gets a tag of its own (the output tag suffixed
    /// with -os-arch[-variant]). Default false: each platform is pushed by digest only, the
    /// index references them by digest, and the output tag is the only tag, moved once,
    /// last. Turn it on only when something outside archforge must pull one platform by a
    /// tag (a tool that cannot read an index, or a registry cleanup policy that deletes
    /// untagged manifests even when an index references them).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub platform_tags: bool,

    /// Sign every platform's image and the index (cosign-compatible signatures) and attach
    /// a signed SLSA v1 provenance attestation to each. Unsigned when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<Signing>,
}

/// How the images of a run are signed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Signing {
    /// Secret in the ImageBuild's namespace holding the ECDSA P-256 signing key: key
    /// cosign.key (PEM private key: PKCS#8, SEC1, or cosign's encrypted format) and, for an
    /// encrypted key, cosign.password. This is the layout `cosign generate-key-pair
    /// k8s://<namespace>/<name>` creates. When omitted, the operator-wide key is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DNS_LABEL_PATTERN), length(max = 63))]
    pub key_secret: Option<String>,
}

/// The manifest format of the pushed images and index.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MediaType {
    /// OCI image index referencing OCI image manifests.
    #[default]
    Oci,
    /// Docker manifest list v2 referencing Docker v2 schema 2 manifests.
    Docker,
}

impl MediaType {
    /// buildah's `build --format` word for it.
    pub fn buildah_build_format(self) -> &'static str {
        match self {
            MediaType::Oci => "oci",
            MediaType::Docker => "docker",
        }
    }

    /// buildah's `push --format` word for it (the Docker format is "v2s2" there).
    pub fn buildah_push_format(self) -> &'static str {
        match self {
            MediaType::Oci => "oci",
            MediaType::Docker => "v2s2",
        }
    }
}

/// A Dockerfile build argument.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct BuildArg {
    /// Argument name, as declared by ARG in the Dockerfile. Not BUILDKIT_SYNTAX: BuildKit
    /// would build with the frontend image it names instead of the Dockerfile.
    #[schemars(regex(pattern = BUILD_ARG_NAME_PATTERN), length(max = 128))]
    #[x_kube(validation = Rule::new("self != 'BUILDKIT_SYNTAX'").message("spec.buildArgs[].name: BUILDKIT_SYNTAX selects BuildKit's frontend image; put a `# syntax=` line in the Dockerfile instead"))]
    pub name: String,
    /// Argument value, passed verbatim.
    #[serde(default)]
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// A registry-backed layer cache.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Cache {
    /// Repository (registry host and path, no tag) that stores cached layers, for
    /// example registry.example.com/team/app-cache. Uses the push secret's credentials.
    #[schemars(regex(pattern = REPOSITORY_PATTERN), length(max = 255))]
    pub image: String,

    /// BuildKit: PerPlatform (the default) imports and exports the ref
    /// <image>:<os>-<arch>[-<variant>] of each platform only; Shared also imports the other
    /// platforms' refs (each platform still writes only its own). Ignored by buildah, whose
    /// cache is keyed by layer content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<CacheScope>,
}

/// Observed state of an ImageBuild.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ImageBuildStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Where the current run is: Pending, Building, Assembling, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// When the current run started (the emulation grace period counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,

    /// Platforms built out of platforms requested in the current run, for example 1/2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,

    /// kstatus-compatible conditions: Ready, Reconciling and Stalled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// The source revision the current run builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceStatus>,

    /// The value of the archforge.dev/rebuild annotation the current run was started for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<String>,

    /// Where the current run's builder Jobs run: the operator's isolated build namespace,
    /// or unset for the ImageBuild's own namespace. Recorded when the run starts; a run
    /// whose operator changes this setting before it ends starts again in the new place,
    /// so that every digest a run signs was built where its provenance says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_namespace: Option<String>,

    /// One entry per requested platform of the current run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["platform"]))]
    pub platforms: Vec<PlatformStatus>,

    /// The image index reference that was pushed (the output tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// Digest of the pushed image index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,

    /// Digest of the index's signature manifest (the cosign `sha256-<digest>.sig` tag), when
    /// spec.output.signing is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,

    /// Digest of the index's provenance attestation manifest (the cosign
    /// `sha256-<digest>.att` tag), when spec.output.signing is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<String>,

    /// The most recent finished runs, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RunRecord>,
}

/// Where a run (or one platform of it) is.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting to start: resolving the commit or waiting for a node of each architecture.
    Pending,
    /// Waiting for its turn under the operator's concurrency limits: no Job of the run
    /// exists yet; the Reconciling condition gives its place in the queue and what it
    /// waits for.
    Queued,
    /// Builder Jobs are running.
    Building,
    /// Every platform is built; the image index is being assembled and pushed.
    Assembling,
    /// The image index was pushed.
    Succeeded,
    /// A platform failed or the spec is invalid.
    Failed,
}

impl Phase {
    /// Whether a run in this phase has ended: only a change to the ImageBuild starts another.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

/// The exact source revision of a run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SourceStatus {
    /// Full commit SHA every platform of the run builds.
    pub commit: String,
}

/// One platform of the current run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PlatformStatus {
    /// The platform, as written in spec.platforms.
    pub platform: String,
    /// Name of the builder Job of this platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// UID of the builder Job the operator created for this platform, recorded when it
    /// was created: a Job of the same name with another UID (deleted and created again by
    /// someone else) is not this run's, and fails the platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_uid: Option<String>,
    /// Pending, Building, Succeeded or Failed.
    pub phase: Phase,
    /// Digest of this platform's pushed image manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Digest of this platform's signature manifest (the cosign `sha256-<digest>.sig` tag),
    /// when spec.output.signing is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Digest of this platform's provenance attestation manifest (the cosign
    /// `sha256-<digest>.att` tag), when spec.output.signing is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<String>,
    /// When the builder Job started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When the builder Job finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// Why the platform is where it is; on failure, the end of the builder's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// One word for what holds the platform up or failed it, as the scheduler, the kubelet
    /// or the Job controller names it (Unschedulable, AppArmor, ErrImagePull,
    /// CreateContainerConfigError, FailedMount, FailedCreate, ...), or archforge's name for a
    /// known builder failure (e.g. SeccompBlocksUserNamespaces); `message` says the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// True when the platform is built under QEMU emulation on a node of another
    /// architecture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emulated: Option<bool>,
}

/// A finished run.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    /// The metadata.generation the run built.
    pub generation: i64,
    /// The rebuild annotation value the run was started for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<String>,
    /// The commit the run built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Digest of the pushed image index, when the run succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Succeeded or Failed.
    pub result: Phase,
    /// When the run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When the run finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// Why the run failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
