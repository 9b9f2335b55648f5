//! Schemas for the fields whose Rust type comes from k8s-openapi but whose rules are
//! archforge's: what Kubernetes would refuse in the builder pod is refused at apply time.

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use schemars::JsonSchema;
use serde_json::json;

use super::rules::*;

/// A `spec.resources` schema that refuses what Kubernetes would refuse in the Job: resource
/// names that are not container resources, quantities that do not parse or are negative, and
/// DRA claims (the builder pod has no resourceClaims). The Rust type stays
/// [`ResourceRequirements`], so render copies it into the container unchanged.
pub(super) fn resources_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
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
pub(super) fn node_selector_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
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
pub(super) fn tolerations_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut item =
        serde_json::to_value(Toleration::json_schema(generator)).expect("schemas serialize");
    let properties = &mut item["properties"];
    properties["operator"]["enum"] = json!(TOLERATION_OPERATORS);
    properties["effect"]["enum"] = json!(TOLERATION_EFFECTS);
    // Bounds for the CEL cost estimator, which ignores enums (the cross-field rules below
    // compare these strings).
    properties["operator"]["maxLength"] = json!(longest(TOLERATION_OPERATORS));
    properties["effect"]["maxLength"] = json!(longest(TOLERATION_EFFECTS));
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

/// The length of the longest of these strings: the maxLength of a field with this enum.
fn longest(values: &[&str]) -> usize {
    values.iter().map(|v| v.len()).max().unwrap_or(0)
}
