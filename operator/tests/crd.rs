//! The committed CRD is generated: it must equal `archforge crd` byte for byte, and every CEL
//! rule in it must compile and fit the API server's cost budget.

mod common;

use archforge::api::ImageBuild;
use kube::CustomResourceExt;

const COMMITTED: &str = "crds/imagebuilds.archforge.dev.yaml";

#[test]
fn committed_crd_matches_the_code() {
    let committed =
        std::fs::read_to_string(common::repo_root().join(COMMITTED)).expect("committed CRD");
    let generated = archforge::manifest::crd_yaml();
    assert!(
        committed == generated,
        "{COMMITTED} is out of date with operator/src/api.rs; regenerate it with `make crds`"
    );
}

#[test]
fn crd_names_and_columns() {
    let crd = ImageBuild::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("imagebuilds.archforge.dev")
    );
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.short_names, Some(vec!["ib".to_string()]));
    assert_eq!(
        crd.spec.names.categories,
        Some(vec!["archforge".to_string()])
    );
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let columns: Vec<&str> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        ["Phase", "Platforms", "Waiting", "Image", "Digest", "Age"]
    );
    // `kubectl get ib -o wide` says why a Queued run waits.
    let waiting = version
        .additional_printer_columns
        .iter()
        .flatten()
        .find(|c| c.name == "Waiting")
        .unwrap();
    assert_eq!(
        waiting.json_path,
        ".status.conditions[?(@.type==\"Reconciling\")].message"
    );
    let phase = &crd.spec.versions[0]
        .schema
        .as_ref()
        .unwrap()
        .open_api_v3_schema;
    let phase = serde_json::to_value(phase).unwrap();
    let phases = &phase["properties"]["status"]["properties"]["phase"]["enum"];
    assert!(
        phases.as_array().unwrap().iter().any(|p| p == "Queued"),
        "{phases}"
    );
}

#[test]
fn every_field_is_documented() {
    // `kubectl explain` shows these descriptions; an undocumented field is a bug.
    fn walk(schema: &serde_json::Value, path: &str, missing: &mut Vec<String>) {
        if let Some(properties) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, child) in properties {
                let child_path = format!("{path}.{name}");
                // Embedded Kubernetes types (resources, tolerations, conditions) carry their own docs.
                if child.get("description").is_none()
                    && path.starts_with(".spec") | path.starts_with(".status")
                {
                    missing.push(child_path.clone());
                }
                walk(child, &child_path, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(items, &format!("{path}[]"), missing);
        }
    }
    let mut missing = Vec::new();
    for schema in [common::crd_schema(), common::policy_crd_schema()] {
        for top in ["spec", "status"] {
            walk(&schema["properties"][top], &format!(".{top}"), &mut missing);
        }
    }
    assert_eq!(
        missing,
        Vec::<String>::new(),
        "fields without a doc comment"
    );
}

#[test]
fn cel_rules_compile_within_budget() {
    for schema in [common::crd_schema(), common::policy_crd_schema()] {
        let compiled = kube::core::cel::compile_schema(&schema);
        let errors: Vec<String> = compiled
            .compilation_errors()
            .iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(errors, Vec::<String>::new());
    }
}

/// Every CEL rule in the schema, with the path of the node that carries it.
fn cel_rules(schema: &serde_json::Value, path: &str, rules: &mut Vec<(String, String)>) {
    if let Some(validations) = schema
        .get("x-kubernetes-validations")
        .and_then(|v| v.as_array())
    {
        for rule in validations {
            rules.push((path.to_string(), rule["rule"].as_str().unwrap().to_string()));
        }
    }
    if let Some(properties) = schema.get("properties").and_then(|p| p.as_object()) {
        for (name, child) in properties {
            cel_rules(child, &format!("{path}.{name}"), rules);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = schema.get(key).filter(|c| c.is_object()) {
            cel_rules(child, &format!("{path}[]"), rules);
        }
    }
}

#[test]
fn cel_rules_use_only_what_kubernetes_1_25_has() {
    // The first API servers to enforce CEL (1.25) lack the quantity, format, IP/CIDR and
    // semver libraries, and their string extensions differ between releases, so the rules
    // stay with the standard library (matches, all, exists, size, in, has).
    const LATER: &[&str] = &[
        "quantity(",
        "isQuantity(",
        "format.",
        "split(",
        "ip(",
        "cidr(",
        "semver(",
        "url(",
        "isURL(",
        ".join(",
        "lowerAscii(",
    ];
    let mut rules = Vec::new();
    cel_rules(&common::crd_schema(), "", &mut rules);
    assert!(rules.len() >= 14, "{rules:?}");
    cel_rules(&common::policy_crd_schema(), ".policy", &mut rules);
    for (path, rule) in &rules {
        for later in LATER {
            assert!(!rule.contains(later), "{path}: {rule} uses {later}");
        }
    }
}

#[test]
fn quantities_are_int_or_string_with_the_quantity_pattern() {
    // What controller-gen emits for resource.Quantity, so `kubectl explain` and validating
    // tools see the same shape as in a built-in container.
    let schema = common::crd_schema();
    let resources = &schema["properties"]["spec"]["properties"]["resources"]["properties"];
    for kind in ["limits", "requests"] {
        let quantity = &resources[kind]["additionalProperties"];
        assert_eq!(quantity["x-kubernetes-int-or-string"], true, "{kind}");
        assert_eq!(quantity.get("type"), None, "{kind}");
        assert_eq!(
            quantity["pattern"],
            archforge::api::QUANTITY_PATTERN,
            "{kind}"
        );
    }
    assert_eq!(resources["claims"]["maxItems"], 0);
}

/// Every `pattern` in the schema, with the path of the node that carries it.
fn patterns(schema: &serde_json::Value, path: &str, found: &mut Vec<(String, String)>) {
    if let Some(pattern) = schema.get("pattern").and_then(|p| p.as_str()) {
        found.push((path.to_string(), pattern.to_string()));
    }
    if let Some(properties) = schema.get("properties").and_then(|p| p.as_object()) {
        for (name, child) in properties {
            patterns(child, &format!("{path}.{name}"), found);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = schema.get(key).filter(|c| c.is_object()) {
            patterns(child, &format!("{path}[]"), found);
        }
    }
}

#[test]
fn patterns_and_cel_regexes_avoid_classes_that_differ_between_rust_and_re2() {
    // The API server runs schema patterns and CEL matches() with Go's RE2, whose \s, \d and
    // \w are ASCII; archforge's Rust validation and these tests read them as Unicode. So
    // neither may use them (nor \b or Unicode classes), and both engines agree.
    let schema = common::crd_schema();
    let mut found = Vec::new();
    patterns(&schema, "", &mut found);
    cel_rules(&schema, "", &mut found);
    assert!(found.len() >= 20, "{found:?}");
    let policy = common::policy_crd_schema();
    patterns(&policy, ".policy", &mut found);
    cel_rules(&policy, ".policy", &mut found);
    for (path, text) in &found {
        for class in [
            r"\s", r"\S", r"\d", r"\D", r"\w", r"\W", r"\b", r"\B", r"\p", r"\P",
        ] {
            assert!(!text.contains(class), "{path}: {text} uses {class}");
        }
    }
}

/// The nodes a CEL rule reaches from the node that carries it: the node itself (`self`) and
/// every property, at any depth below it, whose name the rule mentions after a `.` (the
/// elements of a list or map it iterates included). A structural over-approximation of what
/// the API server's cost estimator reads, so that a new rule cannot reach an unbounded field.
fn reached_by_rule<'a>(
    node: &'a serde_json::Value,
    path: &str,
    names: &std::collections::BTreeSet<String>,
    reached: &mut Vec<(String, &'a serde_json::Value)>,
) {
    reached.push((path.to_string(), node));
    if let Some(properties) = node.get("properties").and_then(|p| p.as_object()) {
        for (name, child) in properties {
            if names.contains(name) {
                reached_by_rule(child, &format!("{path}.{name}"), names, reached);
            }
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = node.get(key).filter(|c| c.is_object()) {
            reached_by_rule(child, &format!("{path}[]"), names, reached);
        }
    }
}

/// Why a schema node leaves a CEL rule's cost unbounded, if it does: the API server's
/// estimator counts only maxLength, maxItems and maxProperties (an enum bounds nothing).
fn unbounded(node: &serde_json::Value) -> Option<&'static str> {
    let is_map = node
        .get("additionalProperties")
        .is_some_and(|a| a.is_object());
    match node.get("type").and_then(|t| t.as_str()) {
        Some("string") if node.get("maxLength").is_none() => Some("a string without maxLength"),
        Some("array") if node.get("maxItems").is_none() => Some("a list without maxItems"),
        Some("object") if is_map && node.get("maxProperties").is_none() => {
            Some("a map without maxProperties")
        }
        _ => None,
    }
}

/// Every field a CEL rule reaches, as `(rule path, field path, why unbounded)`.
fn cel_fields_without_bounds(schema: &serde_json::Value) -> Vec<(String, String, &'static str)> {
    let mut rules = Vec::new();
    cel_rules(schema, "", &mut rules);
    let identifier = regex::Regex::new(r"\.([A-Za-z_][A-Za-z0-9_]*)").unwrap();
    let mut found = Vec::new();
    for (path, rule) in &rules {
        let names = identifier
            .captures_iter(rule)
            .map(|c| c[1].to_string())
            .collect();
        let node = schema_at(schema, path);
        let mut reached = Vec::new();
        reached_by_rule(node, path, &names, &mut reached);
        for (field, node) in reached {
            if let Some(why) = unbounded(node) {
                found.push((path.clone(), field, why));
            }
        }
    }
    found
}

/// The schema node at a path written as `cel_rules` writes it (`.spec.platforms[]`).
fn schema_at<'a>(schema: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
    let mut node = schema;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, elements) = (part.trim_end_matches("[]"), part.matches("[]").count());
        node = &node["properties"][name];
        for _ in 0..elements {
            node = node
                .get("items")
                .filter(|i| i.is_object())
                .unwrap_or(&node["additionalProperties"]);
        }
    }
    node
}

#[test]
fn every_field_a_cel_rule_reaches_is_bounded() {
    // A real 1.26 API server refused the CRD when the platformSettings rules compared
    // platform strings that had an enum but no maxLength ("estimated rule cost exceeds
    // budget by factor of 2.0x"). The estimator multiplies the declared bounds of what a
    // rule reads, so every such field must declare one.
    for schema in [common::crd_schema(), common::policy_crd_schema()] {
        assert_eq!(
            cel_fields_without_bounds(&schema),
            Vec::<(String, String, &str)>::new(),
            "(rule at, field it reaches, why its cost is unbounded)"
        );
    }
}

#[test]
fn every_string_and_list_of_the_policy_is_bounded() {
    // BuildPolicy's rules are few today; every field is bounded so that any later rule
    // stays within the cost budget.
    fn walk(node: &serde_json::Value, path: &str, found: &mut Vec<String>) {
        if let Some(why) = unbounded(node) {
            found.push(format!("{path}: {why}"));
        }
        if let Some(properties) = node.get("properties").and_then(|p| p.as_object()) {
            for (name, child) in properties {
                walk(child, &format!("{path}.{name}"), found);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(child) = node.get(key).filter(|c| c.is_object()) {
                walk(child, &format!("{path}[]"), found);
            }
        }
    }
    let mut found = Vec::new();
    walk(
        &common::policy_crd_schema()["properties"]["spec"],
        ".spec",
        &mut found,
    );
    assert_eq!(found, Vec::<String>::new());
}

#[test]
fn committed_policy_crd_matches_the_code_and_is_cluster_scoped() {
    let path = "crds/buildpolicies.archforge.dev.yaml";
    let committed = std::fs::read_to_string(common::repo_root().join(path)).expect("committed CRD");
    assert!(
        committed == archforge::manifest::policy_crd_yaml(),
        "{path} is out of date with operator/src/api/policy.rs; regenerate it with `make manifests`"
    );
    let crd = archforge::api::BuildPolicy::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("buildpolicies.archforge.dev")
    );
    assert_eq!(crd.spec.scope, "Cluster");
}

#[test]
fn the_bound_check_sees_an_enum_only_string_a_rule_compares() {
    // Today's fix taken back: the check must name both fields the platformSettings rules
    // reached without a bound.
    let mut schema = common::crd_schema();
    let spec = &mut schema["properties"]["spec"]["properties"];
    spec["platforms"]["items"]
        .as_object_mut()
        .unwrap()
        .remove("maxLength");
    spec["platformSettings"]["items"]["properties"]["platform"]
        .as_object_mut()
        .unwrap()
        .remove("maxLength");
    let found = cel_fields_without_bounds(&schema);
    let fields: std::collections::BTreeSet<&str> =
        found.iter().map(|(_, field, _)| field.as_str()).collect();
    assert_eq!(
        fields,
        std::collections::BTreeSet::from([
            ".spec.platforms[]",
            ".spec.platformSettings[].platform"
        ]),
        "{found:?}"
    );
}

/// The BuildPolicy of docs/multi-tenant.md.
fn documented_policy() -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "archforge.dev/v1alpha1", "kind": "BuildPolicy",
        "metadata": {"name": "team-limits"},
        "spec": {
            "namespaceSelector": {
                "matchLabels": {"archforge.dev/tier": "shared"},
                "matchExpressions": [{"key": "team", "operator": "NotIn", "values": ["platform"]}]
            },
            "allowedEmulation": ["Never"],
            "allowedStrategies": ["buildah", "buildkit"],
            "maxTimeout": "1h", "maxRetries": 2,
            "maxResources": {"cpu": "4", "memory": "8Gi"},
            "maxConcurrentBuilds": 10,
            "signing": {"allowed": false},
            "allowedRepositories": ["registry.example.com/team-a"],
            "defaults": {"timeout": "30m", "emulation": "Never", "strategy": "buildah", "retries": 1}
        }
    })
}

#[test]
fn the_policy_schema_admits_the_documented_policy_and_refuses_hostile_ones() {
    let schema = common::policy_crd_schema();
    let good = documented_policy();
    assert_eq!(
        common::schema_errors(&schema, &good, ""),
        Vec::<String>::new()
    );
    assert_eq!(common::cel_errors(&schema, &good), Vec::<String>::new());
    let with = |field: &str, value: serde_json::Value| {
        let mut policy = documented_policy();
        policy["spec"][field] = value;
        policy
    };
    // Refused by the structural schema, which every API server enforces.
    for (field, value) in [
        ("maxRetries", serde_json::json!(11)),
        ("maxConcurrentBuilds", serde_json::json!(-1)),
        ("maxTimeout", serde_json::json!("1d")),
        ("maxResources", serde_json::json!({"cpu": "-1"})),
        (
            "maxResources",
            serde_json::json!({"memory": "1e4294967296"}),
        ),
        (
            "allowedRepositories",
            serde_json::json!(["registry.example.com/team-a@evil.com"]),
        ),
        (
            "allowedRepositories",
            serde_json::json!(["https://registry.example.com"]),
        ),
        (
            "allowedRepositories",
            serde_json::json!([format!("r.example.com/{}", "a".repeat(300))]),
        ),
        ("allowedEmulation", serde_json::json!(["Sometimes"])),
        ("allowedEmulation", serde_json::json!([])),
        (
            "namespaceSelector",
            serde_json::json!({"matchLabels": {"team": "has space"}}),
        ),
        (
            "namespaceSelector",
            serde_json::json!({"matchExpressions": [{"key": "team", "operator": "Gt", "values": ["1"]}]}),
        ),
    ] {
        let policy = with(field, value.clone());
        assert!(
            !common::schema_errors(&schema, &policy, "").is_empty(),
            "{field}: {value} was admitted"
        );
    }
    // Refused by CEL where the API server runs it (the operator refuses or widens the rest).
    for (field, value) in [
        ("maxTimeout", serde_json::json!("25h")),
        (
            "namespaceSelector",
            serde_json::json!({"matchExpressions": [{"key": "team", "operator": "In"}]}),
        ),
        (
            "namespaceSelector",
            serde_json::json!({"matchExpressions": [{"key": "team", "operator": "Exists", "values": ["a"]}]}),
        ),
    ] {
        let policy = with(field, value.clone());
        assert!(
            !common::cel_errors(&schema, &policy).is_empty(),
            "{field}: {value} passed CEL"
        );
    }
}
