use super::*;

fn toleration(value: serde_json::Value) -> Toleration {
    serde_json::from_value(value).unwrap()
}

fn taint(key: &str, value: Option<&str>, effect: &str) -> Taint {
    Taint {
        key: key.into(),
        value: value.map(str::to_string),
        effect: effect.into(),
        time_added: None,
    }
}

/// A Ready linux/arm64 node with `labels` added and `spec` as its spec.
fn node(labels: serde_json::Value, spec: serde_json::Value) -> Node {
    let mut all = serde_json::json!({"kubernetes.io/arch": "arm64", "kubernetes.io/os": "linux"});
    for (k, v) in labels.as_object().unwrap() {
        all[k] = v.clone();
    }
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "n", "labels": all},
        "spec": spec,
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .unwrap()
}

fn selector(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const ARM64: &[(&str, &str)] = &[
    ("kubernetes.io/arch", "arm64"),
    ("kubernetes.io/os", "linux"),
];

#[test]
fn equal_matches_key_value_and_effect() {
    let t = toleration(
        serde_json::json!({"key": "dedicated", "operator": "Equal", "value": "arm", "effect": "NoSchedule"}),
    );
    assert!(tolerates(
        &t,
        &taint("dedicated", Some("arm"), "NoSchedule")
    ));
    assert!(
        !tolerates(&t, &taint("dedicated", Some("x86"), "NoSchedule")),
        "other value"
    );
    assert!(
        !tolerates(&t, &taint("dedicated", Some("arm"), "NoExecute")),
        "other effect"
    );
    assert!(
        !tolerates(&t, &taint("other", Some("arm"), "NoSchedule")),
        "other key"
    );
    assert!(
        !tolerates(&t, &taint("dedicated", None, "NoSchedule")),
        "no value is the empty one"
    );
    // No operator means Equal.
    let implicit = toleration(serde_json::json!({"key": "dedicated", "value": "arm"}));
    assert!(tolerates(
        &implicit,
        &taint("dedicated", Some("arm"), "NoExecute")
    ));
    assert!(!tolerates(
        &implicit,
        &taint("dedicated", Some("ar"), "NoExecute")
    ));
}

#[test]
fn equal_with_an_empty_value_matches_a_taint_without_one() {
    let t = toleration(serde_json::json!({"key": "gpu", "operator": "Equal", "value": ""}));
    assert!(tolerates(&t, &taint("gpu", None, "NoSchedule")));
    assert!(tolerates(&t, &taint("gpu", Some(""), "NoSchedule")));
    assert!(!tolerates(&t, &taint("gpu", Some("a100"), "NoSchedule")));
    let no_value = toleration(serde_json::json!({"key": "gpu"}));
    assert!(tolerates(&no_value, &taint("gpu", None, "NoExecute")));
}

#[test]
fn exists_matches_every_value_of_its_key() {
    let t = toleration(serde_json::json!({"key": "dedicated", "operator": "Exists"}));
    assert!(tolerates(
        &t,
        &taint("dedicated", Some("anything"), "NoSchedule")
    ));
    assert!(tolerates(&t, &taint("dedicated", None, "NoExecute")));
    assert!(
        !tolerates(&t, &taint("dedicate", None, "NoExecute")),
        "keys match whole"
    );
    let scoped = toleration(
        serde_json::json!({"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}),
    );
    assert!(!tolerates(
        &scoped,
        &taint("dedicated", Some("a"), "NoExecute")
    ));
}

#[test]
fn an_empty_key_with_exists_matches_every_taint() {
    let everything = toleration(serde_json::json!({"operator": "Exists"}));
    for t in [
        taint("dedicated", Some("arm"), "NoSchedule"),
        taint("node.kubernetes.io/unschedulable", None, "NoSchedule"),
        taint("x", None, "NoExecute"),
    ] {
        assert!(tolerates(&everything, &t), "{t:?}");
    }
    let no_execute =
        toleration(serde_json::json!({"key": "", "operator": "Exists", "effect": "NoExecute"}));
    assert!(tolerates(&no_execute, &taint("x", Some("y"), "NoExecute")));
    assert!(!tolerates(
        &no_execute,
        &taint("x", Some("y"), "NoSchedule")
    ));
}

#[test]
fn hostile_tolerations_tolerate_only_what_kubernetes_would() {
    // An empty key with Equal (the API server refuses it; archforge's validation too) still
    // means what Kubernetes' own function says: any key whose taint has the same value.
    let empty_equal =
        toleration(serde_json::json!({"key": "", "operator": "Equal", "value": "arm"}));
    assert!(tolerates(
        &empty_equal,
        &taint("dedicated", Some("arm"), "NoSchedule")
    ));
    assert!(!tolerates(
        &empty_equal,
        &taint("dedicated", None, "NoSchedule")
    ));
    // Unknown operators (and Lt/Gt of newer servers, which archforge does not accept)
    // and operators in another case tolerate nothing.
    for op in ["Lt", "Gt", "exists", "In", " Exists"] {
        let t = toleration(serde_json::json!({"key": "dedicated", "operator": op}));
        assert!(
            !tolerates(&t, &taint("dedicated", None, "NoSchedule")),
            "{op}"
        );
    }
    // Effects are compared exactly.
    let lower =
        toleration(serde_json::json!({"key": "k", "operator": "Exists", "effect": "noschedule"}));
    assert!(!tolerates(&lower, &taint("k", None, "NoSchedule")));
}

#[test]
fn a_no_execute_taint_tolerated_for_a_while_is_tolerated() {
    let t = toleration(
        serde_json::json!({"key": "spot", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}),
    );
    assert!(tolerates(&t, &taint("spot", Some("true"), "NoExecute")));
    let zero = toleration(
        serde_json::json!({"key": "spot", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 0}),
    );
    assert!(tolerates(&zero, &taint("spot", Some("true"), "NoExecute")));
}

#[test]
fn only_no_schedule_and_no_execute_taints_keep_a_pod_off() {
    let tainted = |taints: serde_json::Value| {
        node(serde_json::json!({}), serde_json::json!({"taints": taints}))
    };
    let prefer = tainted(serde_json::json!([{"key": "spot", "effect": "PreferNoSchedule"}]));
    assert_eq!(refusal(&prefer, &selector(ARM64), &[]), None);
    let hard = tainted(serde_json::json!([
        {"key": "spot", "effect": "PreferNoSchedule"},
        {"key": "dedicated", "value": "arm", "effect": "NoSchedule"},
        {"key": "maintenance", "effect": "NoExecute"}
    ]));
    assert_eq!(
        refusal(&hard, &selector(ARM64), &[]),
        Some(Refusal::Taint("dedicated=arm:NoSchedule".into()))
    );
    let arm =
        toleration(serde_json::json!({"key": "dedicated", "value": "arm", "effect": "NoSchedule"}));
    assert_eq!(
        refusal(&hard, &selector(ARM64), std::slice::from_ref(&arm)),
        Some(Refusal::Taint("maintenance:NoExecute".into())),
        "every hard taint needs a toleration"
    );
    let maintenance = toleration(serde_json::json!({"key": "maintenance", "operator": "Exists"}));
    assert_eq!(refusal(&hard, &selector(ARM64), &[arm, maintenance]), None);
}

#[test]
fn the_selector_must_match_label_for_label() {
    let ssd = node(
        serde_json::json!({"disk": "ssd", "empty": ""}),
        serde_json::json!({}),
    );
    let wants = |extra: &[(&str, &str)]| {
        let mut s = selector(ARM64);
        s.extend(selector(extra));
        refusal(&ssd, &s, &[])
    };
    assert_eq!(wants(&[("disk", "ssd")]), None);
    assert_eq!(
        wants(&[("empty", "")]),
        None,
        "an empty value matches an empty label"
    );
    assert_eq!(
        wants(&[("disk", "hdd")]),
        Some(Refusal::Unselected("disk=hdd".into()))
    );
    assert_eq!(
        wants(&[("zone", "")]),
        Some(Refusal::Unselected("zone=".into())),
        "an empty value does not match a missing label"
    );
    assert_eq!(
        wants(&[("Disk", "ssd")]),
        Some(Refusal::Unselected("Disk=ssd".into())),
        "keys are case-sensitive"
    );
    let mut windows = selector(ARM64);
    windows.insert("kubernetes.io/os".into(), "windows".into());
    assert_eq!(
        refusal(&ssd, &windows, &[]),
        Some(Refusal::Unselected("kubernetes.io/os=windows".into()))
    );
}

#[test]
fn a_node_must_be_ready_and_not_cordoned_whatever_the_pod_tolerates() {
    let everything = toleration(serde_json::json!({"operator": "Exists"}));
    let mut cordoned = node(
        serde_json::json!({}),
        serde_json::json!({"unschedulable": true,
        "taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]}),
    );
    assert_eq!(
        refusal(
            &cordoned,
            &selector(ARM64),
            std::slice::from_ref(&everything)
        ),
        Some(Refusal::Cordoned)
    );
    cordoned.status = None;
    assert_eq!(
        refusal(&cordoned, &selector(ARM64), &[]),
        Some(Refusal::NotReady)
    );
    let mut unknown = node(serde_json::json!({}), serde_json::json!({}));
    unknown
        .status
        .as_mut()
        .unwrap()
        .conditions
        .as_mut()
        .unwrap()[0]
        .status = "Unknown".into();
    assert_eq!(
        refusal(&unknown, &selector(ARM64), &[]),
        Some(Refusal::NotReady)
    );
    // Another OS is named before readiness: that node never was a candidate.
    let mut windows = selector(ARM64);
    windows.insert("kubernetes.io/os".into(), "windows".into());
    assert_eq!(
        refusal(&unknown, &windows, &[]),
        Some(Refusal::Unselected("kubernetes.io/os=windows".into()))
    );
}

#[test]
fn the_pod_selector_is_the_rendered_jobs() {
    use crate::api::ImageBuild;
    use crate::plan::{AuthFile, plan};
    use crate::settings::{BuilderSettings, KubeVersion};
    use crate::validation::ValidSpec;
    // A hostile spec selector: it names the emulation label itself, with another value.
    let build: ImageBuild = serde_json::from_value(serde_json::json!({
        "apiVersion": "archforge.dev/v1alpha1", "kind": "ImageBuild",
        "metadata": {"name": "app", "namespace": "ns", "generation": 1},
        "spec": {"source": {"git": {"url": "https://g.example.com/a.git"}},
                 "platforms": ["linux/amd64", "linux/arm/v7"],
                 "output": {"image": "r.example.com/a:v1"},
                 "nodeSelector": {"disk": "ssd", "emulation.archforge.dev/arm": "false"}}
    }))
    .unwrap();
    let settings = BuilderSettings::default();
    let plan = plan(
        &ValidSpec::check(&build).unwrap(),
        &settings,
        "main",
        AuthFile::None,
    );
    let spec = build.spec.node_selector.clone().unwrap();
    for platform in &plan.platforms {
        for placement in [
            Placement::Native,
            Placement::Emulated {
                host: "amd64".into(),
            },
        ] {
            let job = crate::render::render_job(
                &build,
                &plan,
                platform,
                &placement,
                &settings,
                KubeVersion::OLDEST,
            );
            let rendered = job
                .spec
                .unwrap()
                .template
                .spec
                .unwrap()
                .node_selector
                .unwrap();
            assert_eq!(
                pod_selector(&spec, platform, &placement),
                rendered,
                "{placement:?}"
            );
        }
    }
}
