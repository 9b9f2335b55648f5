//! The `BuildPolicy` custom resource (`archforge.dev/v1alpha1`, cluster-scoped): what a
//! platform team allows the ImageBuilds of a group of namespaces, and the defaults it gives
//! them. Tenants cannot override it: it is cluster-scoped, and the aggregated `edit` and
//! `admin` roles do not include it. [`crate::policy`] evaluates it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::rules::*;
use super::{Emulation, Strategy};

/// Most repository prefixes one policy lists.
pub const MAX_ALLOWED_REPOSITORIES: usize = 64;
/// Longest repository prefix (a registry host and path).
pub const MAX_REPOSITORY_PREFIX_LENGTH: usize = 255;
/// A repository prefix: a registry host (with an optional port) and zero or more path
/// components, as in an image reference without its tag.
pub const REPOSITORY_PREFIX_PATTERN: &str = r"^(localhost|[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)+|\[[0-9a-fA-F:]+\])(:[0-9]{1,5})?(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$";
/// Most entries of a namespace selector's matchLabels and matchExpressions.
pub const MAX_SELECTOR_ENTRIES: usize = 16;
/// Most values of one matchExpressions entry.
pub const MAX_SELECTOR_VALUES: usize = 32;
/// Label selector operators.
pub const SELECTOR_OPERATORS: &[&str] = &["In", "NotIn", "Exists", "DoesNotExist"];

/// What the ImageBuilds of the selected namespaces may ask for, and the defaults they get.
/// A spec asking for more is refused (Stalled, reason PolicyViolation), never clamped.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "archforge.dev",
    version = "v1alpha1",
    kind = "BuildPolicy",
    shortname = "bpol",
    category = "archforge",
    doc = "BuildPolicy limits what the ImageBuilds of the namespaces it selects may ask for (emulation, strategy, timeout, retries, resources, signing, registries, concurrency) and gives them defaults. Cluster-scoped, so tenants cannot override it. Every policy selecting a namespace applies."
)]
#[serde(rename_all = "camelCase")]
pub struct BuildPolicySpec {
    /// Namespaces this policy applies to, by their labels. Omitted or empty: every namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "namespace_selector_schema")]
    pub namespace_selector: Option<LabelSelector>,

    /// Emulation modes an ImageBuild may use (Never, Fallback, Always). Omitted: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 3))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[schemars(extend("items" = {"type": "string", "maxLength": 8, "enum": ["Never", "Fallback", "Always"]}))]
    pub allowed_emulation: Option<Vec<Emulation>>,

    /// Build strategies an ImageBuild may use (buildah, buildkit). Omitted: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    #[schemars(extend("items" = {"type": "string", "maxLength": 8, "enum": ["buildah", "buildkit"]}))]
    pub allowed_strategies: Option<Vec<Strategy>>,

    /// Longest timeout a platform's build may have (spec.timeout and each
    /// platformSettings[].timeout), as whole hours, minutes and seconds. Omitted: 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(min = 2, max = 32))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s') && duration(self) <= duration('24h')").message("spec.maxTimeout: must be a positive duration of at most 24h"))]
    pub max_timeout: Option<String>,

    /// Most retries a platform's build may have (spec.retries and each
    /// platformSettings[].retries). Omitted: 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub max_retries: Option<i32>,

    /// Largest cpu and memory a builder may request or be limited to (spec.resources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_resources: Option<MaxResources>,

    /// Most builder Jobs running at once in each selected namespace (at least 1).
    /// Omitted: the operator's limits alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_concurrent_builds: Option<u32>,

    /// Whether ImageBuilds may sign their images (spec.output.signing). Omitted: allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<SigningPolicy>,

    /// Repository prefixes spec.output.image and spec.cache.image must be under, as a
    /// registry host with an optional path (registry.example.com/team-a). A prefix matches
    /// itself and what lies below it at a `/`: registry.example.com/team-a allows
    /// registry.example.com/team-a/app, not registry.example.com/team-ab. Omitted: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    #[schemars(extend("items" = {"type": "string", "maxLength": MAX_REPOSITORY_PREFIX_LENGTH, "pattern": REPOSITORY_PREFIX_PATTERN}))]
    pub allowed_repositories: Option<Vec<String>>,

    /// Values for what an ImageBuild leaves unset, before the operator's own defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<PolicyDefaults>,
}

/// Upper bounds of a builder's compute resources.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MaxResources {
    /// Most cpu a builder may request or be limited to, as a quantity (for example 4 or
    /// 3500m). Omitted: no bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = QUANTITY_PATTERN), length(max = 64))]
    pub cpu: Option<String>,
    /// Most memory a builder may request or be limited to, as a quantity (for example 8Gi).
    /// Omitted: no bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = QUANTITY_PATTERN), length(max = 64))]
    pub memory: Option<String>,
}

/// Whether signing is allowed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SigningPolicy {
    /// Whether ImageBuilds of the selected namespaces may set spec.output.signing.
    pub allowed: bool,
}

/// Defaults for fields an ImageBuild leaves unset. They must satisfy the policy's own
/// limits (and those of every other policy selecting the namespace).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyDefaults {
    /// Timeout of a platform's build when neither spec.timeout nor its platformSettings
    /// set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(min = 2, max = 32))]
    #[x_kube(validation = Rule::new("duration(self) > duration('0s') && duration(self) <= duration('24h')").message("spec.defaults.timeout: must be a positive duration of at most 24h"))]
    pub timeout: Option<String>,
    /// Emulation mode when spec.emulation is unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 8))]
    pub emulation: Option<Emulation>,
    /// Build strategy when spec.strategy is unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxLength" = 8))]
    pub strategy: Option<Strategy>,
    /// Retries when neither spec.retries nor its platformSettings set them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub retries: Option<i32>,
}

/// `spec.namespaceSelector`: a metav1 LabelSelector whose every string and list is bounded,
/// with the API server's rule that In and NotIn need values and Exists and DoesNotExist none.
fn namespace_selector_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let label_value = json!({"type": "string", "maxLength": 63, "pattern": LABEL_VALUE_PATTERN});
    let operator_length = SELECTOR_OPERATORS.iter().map(|o| o.len()).max();
    serde_json::from_value(json!({
        "description": "Namespaces this policy applies to, by their labels. Omitted or empty: every namespace.",
        "type": "object",
        "nullable": true,
        "properties": {
            "matchLabels": {
                "description": "Labels a namespace must have, each with this value.",
                "type": "object",
                "maxProperties": MAX_SELECTOR_ENTRIES,
                "additionalProperties": label_value,
            },
            "matchExpressions": {
                "description": "Requirements on a namespace's labels; all must hold.",
                "type": "array",
                "maxItems": MAX_SELECTOR_ENTRIES,
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {
                            "description": "The label key.",
                            "type": "string",
                            "maxLength": MAX_LABEL_KEY_LENGTH,
                            "pattern": LABEL_KEY_PATTERN,
                        },
                        "operator": {
                            "description": "In, NotIn, Exists or DoesNotExist.",
                            "type": "string",
                            "enum": SELECTOR_OPERATORS,
                            "maxLength": operator_length,
                        },
                        "values": {
                            "description": "The values for In and NotIn; empty for Exists and DoesNotExist.",
                            "type": "array",
                            "maxItems": MAX_SELECTOR_VALUES,
                            "items": label_value,
                        },
                    },
                    "x-kubernetes-validations": [{
                        "rule": "(self.operator in ['In', 'NotIn']) == (has(self.values) && size(self.values) > 0)",
                        "message": "spec.namespaceSelector.matchExpressions[]: In and NotIn need values, Exists and DoesNotExist take none",
                    }],
                },
            },
        },
    }))
    .expect("a valid schema")
}
