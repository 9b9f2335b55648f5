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
use serde_json::json;

/// API group of every archforge resource.
pub const GROUP: &str = "archforge.dev";

/// The platforms archforge knows how to place on native nodes, as `os/arch[/variant]`.
pub const KNOWN_PLATFORMS: &[&str] = &[
    "linux/amd64",
    "linux/arm64",
    "linux/arm/v7",
    "linux/arm/v6",
    "linux/s390x",
    "linux/ppc64le",
    "linux/riscv64",
    "linux/386",
];

/// A pushable image reference with an explicit registry host and a tag.
///
/// The tag is capped at 110 characters so that the per-platform suffix
/// (`-linux-arm-v7` at most) still fits the 128-character tag limit.
pub const IMAGE_REF_PATTERN: &str = r"^(localhost|[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)+|\[[0-9a-fA-F:]+\])(:[0-9]{1,5})?(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)+:[A-Za-z0-9_][A-Za-z0-9_.-]{0,109}$";
/// A repository with an explicit registry host and no tag or digest (used for the build cache).
pub const REPOSITORY_PATTERN: &str = r"^(localhost|[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)+|\[[0-9a-fA-F:]+\])(:[0-9]{1,5})?(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)+$";
/// An RFC 1123 DNS label, the form the issue asks of secret names.
pub const DNS_LABEL_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
/// A git URL git-sync and git accept. A leading `-` could be read as an option, so the
/// scheme (or `user@host:` for scp-like SSH) is required, and neither the user nor the host
/// may start with `-` (git hands both to ssh, which would read `-oProxyCommand=...` as an
/// option). Credentials in the URL are refused by separate rules with their own messages.
pub const GIT_URL_PATTERN: &str = r"^((https?|ssh|git)://([^-\s/?#@][^\s/?#@]*@)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]*)(:[0-9]{0,5})?([/?#][^\s]*)?|[A-Za-z0-9_][A-Za-z0-9._-]*@[A-Za-z0-9][A-Za-z0-9.-]*:[^\s]+)$";
/// An ssh:// URL whose user info carries a password (`ssh://user:pw@host/...`).
pub const GIT_URL_PASSWORD_PATTERN: &str = r"^ssh://[^/?#@]*:[^/?#@]*@";
/// An http(s):// or git:// URL with any user info: a token is often passed as the user name.
pub const GIT_URL_USERINFO_PATTERN: &str = r"^(https?|git)://[^/?#]*@";
/// An http(s):// URL with a query string or fragment (`?private_token=...`, `?access_token=...`).
pub const GIT_URL_QUERY_PATTERN: &str = r"^https?://[^?#]*[?#]";
/// Why an ssh:// URL with a password is refused. Messages about the URL never quote it: the
/// controller copies them into status and Events, and the URL may hold a secret.
pub const GIT_URL_PASSWORD_MESSAGE: &str = "must not contain a password; put credentials in a Secret and name it in spec.source.git.credentialsSecret";
/// Why an http(s):// or git:// URL with user info is refused.
pub const GIT_URL_USERINFO_MESSAGE: &str = "an http(s):// or git:// URL must not contain a user name, token or password; put credentials in a Secret and name it in spec.source.git.credentialsSecret";
/// Why an http(s):// URL with a query string or fragment is refused.
pub const GIT_URL_QUERY_MESSAGE: &str = "an http(s):// URL must not have a query string or fragment (such as ?private_token=...); put credentials in a Secret and name it in spec.source.git.credentialsSecret";
/// A Kubernetes label key (qualified name): an optional DNS-subdomain prefix and `/`, then a
/// name of at most 63 characters. The prefix's 253-character limit is [`LABEL_PREFIX_TOO_LONG_PATTERN`].
pub const LABEL_KEY_PATTERN: &str = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$";
/// A label key or resource name whose prefix is longer than the 253 characters of a DNS subdomain.
pub const LABEL_PREFIX_TOO_LONG_PATTERN: &str = r"^[^/]{254,}/";
/// The longest label key: a 253-character prefix, `/` and a 63-character name.
pub const MAX_LABEL_KEY_LENGTH: usize = 317;
/// A Kubernetes label value: empty, or at most 63 characters starting and ending alphanumeric.
pub const LABEL_VALUE_PATTERN: &str = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$";
/// A container resource name Kubernetes accepts: a standard one (cpu, memory,
/// ephemeral-storage, hugepages-<size>) or a domain-prefixed (extended) one.
pub const RESOURCE_NAME_PATTERN: &str = r"^(cpu|memory|ephemeral-storage|hugepages-[0-9]+([KMGTPE]i|[kMGTPE])?|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])$";
/// A non-negative Kubernetes quantity: controller-gen's `resource.Quantity` pattern without
/// the `-` sign (container resources may not be negative) and with a whole-number exponent
/// (the API server's parser refuses `1e1.5`, which controller-gen's pattern lets through).
pub const QUANTITY_PATTERN: &str =
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?[0-9]+))?$";
/// Most node selector entries an ImageBuild may add (bounds the CEL cost of the key rule).
pub const MAX_NODE_SELECTOR_ENTRIES: usize = 32;
/// Most tolerations an ImageBuild may add.
pub const MAX_TOLERATIONS: usize = 32;
/// Most resource names in `spec.resources.requests` or `spec.resources.limits`.
pub const MAX_RESOURCE_ENTRIES: usize = 16;
/// Toleration operators Kubernetes accepts (empty means Equal).
pub const TOLERATION_OPERATORS: &[&str] = &["Exists", "Equal", ""];
/// Taint effects Kubernetes accepts in a toleration (empty matches every effect).
pub const TOLERATION_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute", ""];
/// A branch, tag or commit SHA. Never starts with `-` (git would read it as an option).
pub const GIT_REF_PATTERN: &str = r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$";
/// A relative path inside the repository: no leading `/` or `-`.
pub const RELATIVE_PATH_PATTERN: &str = r"^[A-Za-z0-9._][A-Za-z0-9._/-]*$";
/// A build argument name, as a Dockerfile `ARG` accepts it.
pub const BUILD_ARG_NAME_PATTERN: &str = r"^[A-Za-z_][A-Za-z0-9_]*$";
/// A multi-stage target name.
pub const TARGET_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9._-]*$";
/// A positive duration in whole hours, minutes and seconds (`90s`, `30m`, `1h30m`).
pub const DURATION_PATTERN: &str = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$";
/// The longest per-platform build archforge accepts.
pub const MAX_TIMEOUT_SECONDS: u64 = 24 * 3600;
/// Node selector keys archforge sets itself from the platform.
pub const RESERVED_NODE_SELECTOR_KEYS: &[&str] = &["kubernetes.io/arch", "kubernetes.io/os"];

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
pub struct ImageBuildSpec {
    /// Where the build context comes from.
    pub source: Source,

    /// Platforms to build, as os/arch or os/arch/variant (for example linux/amd64,
    /// linux/arm64, linux/arm/v7). Each platform is built natively on a node of that
    /// architecture. At least one; no duplicates.
    #[schemars(length(min = 1, max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[schemars(extend("items" = {"type": "string", "enum": ["linux/amd64", "linux/arm64", "linux/arm/v7", "linux/arm/v6", "linux/s390x", "linux/ppc64le", "linux/riscv64", "linux/386"]}))]
    pub platforms: Vec<String>,

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

    /// Optional registry-backed layer cache shared by all runs and platforms.
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
}

/// What a label key (or a prefixed resource name) must look like.
pub const LABEL_KEY_MESSAGE: &str = "keys must be label keys: an optional DNS subdomain prefix of at most 253 characters and '/', then a name of at most 63 letters, digits, '-', '_' or '.' that starts and ends with a letter or digit";
/// What a resource name must look like.
pub const RESOURCE_NAME_MESSAGE: &str = "resource names are cpu, memory, ephemeral-storage, hugepages-<size> or a domain-prefixed name such as example.com/device (prefix at most 253 characters, name at most 63)";
/// Why an empty toleration key needs operator Exists.
pub const TOLERATION_EMPTY_KEY_MESSAGE: &str =
    "an empty key (match every taint) requires operator Exists";
/// Why operator Exists needs an empty value.
pub const TOLERATION_EXISTS_VALUE_MESSAGE: &str = "operator Exists requires an empty value";
/// Why tolerationSeconds needs effect NoExecute.
pub const TOLERATION_SECONDS_MESSAGE: &str = "tolerationSeconds requires effect NoExecute";
/// Why `resources.claims` is refused.
pub const RESOURCE_CLAIMS_MESSAGE: &str =
    "is not supported: a builder pod has no spec.resourceClaims for a claim to refer to";

/// A `spec.resources` schema that refuses what Kubernetes would refuse in the Job: resource
/// names that are not container resources, quantities that do not parse or are negative, and
/// DRA claims (the builder pod has no resourceClaims). The Rust type stays
/// [`ResourceRequirements`], so render copies it into the container unchanged.
fn resources_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = serde_json::to_value(ResourceRequirements::json_schema(generator))
        .expect("schemas serialize");
    schema["nullable"] = json!(true);
    let properties = &mut schema["properties"];
    properties["claims"] = json!({
        "description": "Not supported: must be empty. A builder pod has no spec.resourceClaims for a claim to refer to.",
        "type": "array",
        "maxItems": 0,
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
    });
    for (name, field) in [
        ("limits", "spec.resources.limits"),
        ("requests", "spec.resources.requests"),
    ] {
        let map = &mut properties[name];
        map["maxProperties"] = json!(MAX_RESOURCE_ENTRIES);
        map["additionalProperties"] = json!({
            "description": "A non-negative Kubernetes quantity, for example 500m, 2, 512Mi or 4Gi.",
            "x-kubernetes-int-or-string": true,
            "pattern": QUANTITY_PATTERN,
            "minimum": 0,
        });
        map["x-kubernetes-validations"] = json!([{
            "rule": format!("self.all(k, k.matches(r'{RESOURCE_NAME_PATTERN}') && !k.matches(r'{LABEL_PREFIX_TOO_LONG_PATTERN}'))"),
            "message": format!("{field}: {RESOURCE_NAME_MESSAGE}"),
        }]);
    }
    serde_json::from_value(schema).expect("a valid schema")
}

/// `spec.nodeSelector`: label values in the structural schema (every API server); keys
/// have no structural rule in Kubernetes, so they are checked by CEL on the field.
fn node_selector_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    serde_json::from_value(json!({
        "type": "object",
        "nullable": true,
        "maxProperties": MAX_NODE_SELECTOR_ENTRIES,
        "additionalProperties": {
            "type": "string",
            "maxLength": 63,
            "pattern": LABEL_VALUE_PATTERN,
        },
    }))
    .expect("a valid schema")
}

/// `spec.tolerations`: k8s-openapi's `Toleration` with the enums, patterns and cross-field
/// rules the API server applies to pods, so a bad toleration is refused at apply time
/// instead of when the controller creates the Job.
fn tolerations_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut item =
        serde_json::to_value(Toleration::json_schema(generator)).expect("schemas serialize");
    let properties = &mut item["properties"];
    properties["operator"]["enum"] = json!(TOLERATION_OPERATORS);
    properties["effect"]["enum"] = json!(TOLERATION_EFFECTS);
    properties["key"]["maxLength"] = json!(MAX_LABEL_KEY_LENGTH);
    // Empty means every key, so the label-key pattern is optional.
    properties["key"]["pattern"] = json!(format!(
        "^({})?$",
        LABEL_KEY_PATTERN
            .trim_start_matches('^')
            .trim_end_matches('$')
    ));
    properties["key"]["x-kubernetes-validations"] = json!([{
        "rule": format!("!self.matches(r'{LABEL_PREFIX_TOO_LONG_PATTERN}')"),
        "message": "spec.tolerations[].key: the prefix before '/' must be at most 253 characters",
    }]);
    properties["value"]["maxLength"] = json!(63);
    properties["value"]["pattern"] = json!(LABEL_VALUE_PATTERN);
    item["x-kubernetes-validations"] = json!([
        {
            "rule": "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
            "message": format!("spec.tolerations[]: {TOLERATION_EMPTY_KEY_MESSAGE}"),
        },
        {
            "rule": "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
            "message": format!("spec.tolerations[]: {TOLERATION_EXISTS_VALUE_MESSAGE}"),
        },
        {
            "rule": "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            "message": format!("spec.tolerations[]: {TOLERATION_SECONDS_MESSAGE}"),
        },
    ]);
    serde_json::from_value(json!({
        "description": "Tolerations added to the builder pods, for example to reach tainted arm64 nodes. At most 32, each as Kubernetes accepts it in a pod.",
        "type": "array",
        "nullable": true,
        "maxItems": MAX_TOLERATIONS,
        "items": item,
    }))
    .expect("a valid schema")
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
    /// repository under the tag suffixed with -os-arch[-variant]; the index gets this tag.
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
    /// Argument name, as declared by ARG in the Dockerfile.
    #[schemars(regex(pattern = BUILD_ARG_NAME_PATTERN), length(max = 128))]
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

    /// The most recent finished runs, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<RunRecord>,
}

/// Where a run (or one platform of it) is.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting to start: resolving the commit or waiting for a node of each architecture.
    Pending,
    /// Builder Jobs are running.
    Building,
    /// Every platform is built; the image index is being assembled and pushed.
    Assembling,
    /// The image index was pushed.
    Succeeded,
    /// A platform failed or the spec is invalid.
    Failed,
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
    /// Pending, Building, Succeeded or Failed.
    pub phase: Phase,
    /// Digest of this platform's pushed image manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// When the builder Job started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When the builder Job finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// Why the platform is where it is; on failure, the end of the builder's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
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
