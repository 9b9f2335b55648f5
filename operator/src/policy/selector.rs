//! Which namespaces a BuildPolicy selects: metav1 LabelSelector semantics over a
//! namespace's labels. Pure.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

/// Whether `selector` selects a namespace with `labels`. Omitted or empty selects every
/// namespace, as in Kubernetes. A malformed requirement (an unknown operator, In or NotIn
/// without values, Exists or DoesNotExist with values) also selects every namespace: a
/// policy applies too widely rather than not at all (the CRD's schema refuses such a
/// selector where the API server runs CEL).
pub fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(selector) = selector else {
        return true;
    };
    let requirements = selector.match_expressions.iter().flatten();
    if requirements.clone().any(|r| !well_formed(r)) {
        return true;
    }
    let match_labels = selector.match_labels.iter().flatten();
    match_labels.clone().all(|(k, v)| labels.get(k) == Some(v))
        && requirements.clone().all(|r| holds(r, labels))
}

fn well_formed(r: &LabelSelectorRequirement) -> bool {
    let has_values = r.values.as_ref().is_some_and(|v| !v.is_empty());
    match r.operator.as_str() {
        "In" | "NotIn" => has_values,
        "Exists" | "DoesNotExist" => !has_values,
        _ => false,
    }
}

fn holds(r: &LabelSelectorRequirement, labels: &BTreeMap<String, String>) -> bool {
    let value = labels.get(&r.key);
    let listed = |v: &String| r.values.iter().flatten().any(|x| x == v);
    match r.operator.as_str() {
        "In" => value.is_some_and(listed),
        "NotIn" => !value.is_some_and(listed),
        "Exists" => value.is_some(),
        _ => value.is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn selector(value: serde_json::Value) -> LabelSelector {
        serde_json::from_value(value).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn omitted_or_empty_selects_every_namespace() {
        assert!(selects(None, &labels(&[])));
        assert!(selects(Some(&selector(json!({}))), &labels(&[("a", "b")])));
    }

    #[test]
    fn match_labels_need_every_label_with_its_value() {
        let s = selector(json!({"matchLabels": {"team": "a", "tier": "dev"}}));
        assert!(selects(
            Some(&s),
            &labels(&[("team", "a"), ("tier", "dev"), ("x", "y")])
        ));
        assert!(!selects(Some(&s), &labels(&[("team", "a")])));
        assert!(!selects(
            Some(&s),
            &labels(&[("team", "ab"), ("tier", "dev")])
        ));
        // An empty value is a value, not a wildcard.
        let empty = selector(json!({"matchLabels": {"team": ""}}));
        assert!(!selects(Some(&empty), &labels(&[])));
        assert!(!selects(Some(&empty), &labels(&[("team", "a")])));
        assert!(selects(Some(&empty), &labels(&[("team", "")])));
    }

    #[test]
    fn expressions_follow_kubernetes() {
        let s = |op: &str, values: serde_json::Value| {
            selector(
                json!({"matchExpressions": [{"key": "team", "operator": op, "values": values}]}),
            )
        };
        let a = labels(&[("team", "a")]);
        let none = labels(&[]);
        assert!(selects(Some(&s("In", json!(["a", "b"]))), &a));
        assert!(!selects(Some(&s("In", json!(["b"]))), &a));
        assert!(!selects(Some(&s("In", json!(["a"]))), &none));
        assert!(selects(Some(&s("NotIn", json!(["b"]))), &a));
        assert!(selects(Some(&s("NotIn", json!(["a"]))), &none));
        assert!(!selects(Some(&s("NotIn", json!(["a"]))), &a));
        assert!(selects(Some(&s("Exists", json!([]))), &a));
        assert!(!selects(Some(&s("Exists", json!([]))), &none));
        assert!(selects(Some(&s("DoesNotExist", json!([]))), &none));
        assert!(!selects(Some(&s("DoesNotExist", json!([]))), &a));
    }

    #[test]
    fn a_malformed_selector_selects_every_namespace() {
        for bad in [
            json!({"matchExpressions": [{"key": "team", "operator": "In", "values": []}]}),
            json!({"matchExpressions": [{"key": "team", "operator": "In"}]}),
            json!({"matchExpressions": [{"key": "team", "operator": "Exists", "values": ["a"]}]}),
            json!({"matchExpressions": [{"key": "team", "operator": "Gt", "values": ["1"]}]}),
            json!({"matchLabels": {"team": "nobody"}, "matchExpressions": [{"key": "t", "operator": "in", "values": ["a"]}]}),
        ] {
            assert!(selects(Some(&selector(bad.clone())), &labels(&[])), "{bad}");
        }
    }
}
