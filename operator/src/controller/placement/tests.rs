use serde_json::json;

use super::fixtures::{build_of, node, nodes, plan_of, survey};
use super::*;
use crate::api::ImageBuild;

const MIN: Duration = Duration::from_secs(60);

fn emulated(host: &str) -> Placement {
    Placement::Emulated { host: host.into() }
}

/// Places every platform of `build` on `nodes` after `waited`.
fn placed(
    build: &ImageBuild,
    nodes: &[Arc<Node>],
    waited: Duration,
) -> Result<Vec<(String, Placement)>, Unplaced> {
    let plan = plan_of(build);
    let all: Vec<&PlatformPlan> = plan.platforms.iter().collect();
    place(&plan, &all, &survey(build, nodes), waited)
}

fn native(platforms: &[&str]) -> Vec<(String, Placement)> {
    platforms
        .iter()
        .map(|p| (p.to_string(), Placement::Native))
        .collect()
}

fn unplaced(result: Result<Vec<(String, Placement)>, Unplaced>) -> Unplaced {
    result.expect_err("no node should qualify")
}

#[test]
fn a_node_the_spec_selector_excludes_does_not_count() {
    let build = build_of(json!({"nodeSelector": {"disk": "ssd"}}));
    let cluster = [
        node("a", "amd64", &[("disk", "ssd")], json!({})),
        node("b", "arm64", &[("disk", "hdd")], json!({})),
        node("c", "arm64", &[], json!({})),
    ];
    let waiting = unplaced(placed(&build, &cluster, MIN));
    assert_eq!(waiting.platforms, ["linux/arm64"]);
    assert_eq!(waiting.retry_in, None);
    assert_eq!(
        waiting.why,
        "no Ready, schedulable linux/arm64 node matching spec.nodeSelector {disk: ssd} whose taints spec.tolerations tolerate (2 arm64 nodes: 2 without disk=ssd)"
    );
    let with_ssd = [
        cluster[0].clone(),
        node("d", "arm64", &[("disk", "ssd")], json!({})),
    ];
    assert_eq!(
        placed(&build, &with_ssd, MIN).unwrap(),
        native(&["linux/amd64", "linux/arm64"])
    );
}

#[test]
fn cordoned_unready_and_untolerated_nodes_do_not_count_and_the_message_says_which() {
    let dedicated =
        json!({"taints": [{"key": "dedicated", "value": "arm", "effect": "NoSchedule"}]});
    let mut unready = (*node("d", "arm64", &[("disk", "ssd")], json!({}))).clone();
    unready.status = None;
    let cluster = [
        node("a", "amd64", &[("disk", "ssd")], json!({})),
        node(
            "b",
            "arm64",
            &[("disk", "ssd")],
            json!({"unschedulable": true}),
        ),
        node("c", "arm64", &[("disk", "ssd")], dedicated.clone()),
    ];
    let build = build_of(json!({"nodeSelector": {"disk": "ssd"}}));
    assert_eq!(
        unplaced(placed(&build, &cluster, MIN)).why,
        "no Ready, schedulable linux/arm64 node matching spec.nodeSelector {disk: ssd} whose taints spec.tolerations tolerate (2 arm64 nodes: 1 cordoned, 1 with taint dedicated=arm:NoSchedule)"
    );
    let mut more = cluster.to_vec();
    more.push(Arc::new(unready));
    assert!(
        unplaced(placed(&build, &more, MIN))
            .why
            .contains("(3 arm64 nodes: 1 not Ready, 1 cordoned, 1 with taint")
    );
    // Tolerating the taint makes that node qualify; the cordoned one still does not.
    let tolerating = build_of(json!({
        "nodeSelector": {"disk": "ssd"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]
    }));
    assert_eq!(
        placed(&tolerating, &cluster, MIN).unwrap(),
        native(&["linux/amd64", "linux/arm64"])
    );
    // A PreferNoSchedule taint never keeps a build off.
    let preferred = [
        cluster[0].clone(),
        node(
            "e",
            "arm64",
            &[("disk", "ssd")],
            json!({"taints": [{"key": "spot", "effect": "PreferNoSchedule"}]}),
        ),
    ];
    assert!(placed(&build, &preferred, MIN).is_ok());
}

#[test]
fn a_node_of_another_os_does_not_count() {
    let build = build_of(json!({}));
    let mut windows = (*node("w", "arm64", &[], json!({}))).clone();
    windows
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("kubernetes.io/os".into(), "windows".into());
    let cluster = [node("a", "amd64", &[], json!({})), Arc::new(windows)];
    assert!(
        unplaced(placed(&build, &cluster, MIN))
            .why
            .ends_with("(1 arm64 node: 1 without kubernetes.io/os=linux)")
    );
}

#[test]
fn fallback_emulates_after_the_grace_period_on_a_qualifying_labelled_node() {
    let build = build_of(json!({"emulation": "Fallback", "emulationAfter": "5m"}));
    let amd64_only = nodes(&["amd64"], &[("arm64", "amd64")]);
    let early = unplaced(placed(&build, &amd64_only, 2 * MIN));
    assert_eq!(
        (early.platforms, early.retry_in),
        (vec!["linux/arm64".to_string()], Some(3 * MIN)),
        "within the grace period a native node may still come"
    );
    assert!(!early.why.contains("emulate"), "{}", early.why);
    assert_eq!(
        placed(&build, &amd64_only, 5 * MIN).unwrap(),
        vec![
            ("linux/amd64".into(), Placement::Native),
            ("linux/arm64".into(), emulated("amd64"))
        ]
    );
    // Without a node labelled as able to emulate arm64, it keeps waiting, and says so.
    let late = unplaced(placed(&build, &nodes(&["amd64"], &[]), 10 * MIN));
    assert_eq!(late.retry_in, None);
    assert!(
        late.why.ends_with(", nor such a node labelled emulation.archforge.dev/arm64=true to emulate it (no node is labelled so)"),
        "{}",
        late.why
    );
    // A native node wins over emulation.
    let both = nodes(&["amd64", "arm64"], &[("arm64", "amd64")]);
    assert_eq!(
        placed(&build, &both, 10 * MIN).unwrap(),
        native(&["linux/amd64", "linux/arm64"])
    );
}

#[test]
fn fallback_emulates_when_the_only_native_nodes_do_not_qualify() {
    // The arm64 node is outside the spec's pool; the pool's amd64 node can emulate arm64.
    let build = build_of(json!({
        "emulation": "Fallback", "emulationAfter": "0s", "nodeSelector": {"pool": "builds"}
    }));
    let emulates = crate::plan::emulation_label("arm64");
    let cluster = [
        node("arm", "arm64", &[], json!({})),
        node(
            "pool",
            "amd64",
            &[("pool", "builds"), (&emulates, "true")],
            json!({}),
        ),
        node("other", "amd64", &[(&emulates, "true")], json!({})),
    ];
    assert_eq!(
        placed(&build, &cluster, Duration::ZERO).unwrap(),
        vec![
            ("linux/amd64".into(), Placement::Native),
            ("linux/arm64".into(), emulated("amd64"))
        ]
    );
    // The emulation host must qualify too: tainted, the pool's node does not.
    let tainted = node(
        "pool",
        "amd64",
        &[("pool", "builds"), (&emulates, "true")],
        json!({"taints": [{"key": "maintenance", "effect": "NoExecute"}]}),
    );
    let waiting = unplaced(placed(
        &build,
        &[cluster[0].clone(), tainted],
        Duration::ZERO,
    ));
    assert_eq!(waiting.platforms, ["linux/amd64", "linux/arm64"]);
    assert!(
        waiting
            .why
            .ends_with("to emulate it (1 labelled node: 1 with taint maintenance:NoExecute)"),
        "{}",
        waiting.why
    );
}

#[test]
fn only_a_true_emulation_label_on_another_architecture_makes_a_host() {
    let build = build_of(json!({"emulation": "Fallback", "emulationAfter": "0s"}));
    let emulates = crate::plan::emulation_label("arm64");
    for value in ["false", "True", "", "yes"] {
        let cluster = [node("a", "amd64", &[(&emulates, value)], json!({}))];
        assert!(
            placed(&build, &cluster, Duration::ZERO).is_err(),
            "{value:?}"
        );
    }
}

#[test]
fn always_builds_everything_on_one_host_architecture() {
    let build = build_of(json!({"emulation": "Always"}));
    let both = nodes(
        &["amd64", "arm64"],
        &[("arm64", "amd64"), ("amd64", "arm64")],
    );
    assert_eq!(
        placed(&build, &both, Duration::ZERO).unwrap(),
        vec![
            ("linux/amd64".into(), Placement::Native),
            ("linux/arm64".into(), emulated("amd64"))
        ]
    );
    // Only arm64 nodes can emulate the other: arm64 hosts everything.
    let arm_hosts = nodes(&["amd64", "arm64"], &[("amd64", "arm64")]);
    assert_eq!(
        placed(&build, &arm_hosts, Duration::ZERO).unwrap(),
        vec![
            ("linux/amd64".into(), emulated("arm64")),
            ("linux/arm64".into(), Placement::Native)
        ]
    );
    let waiting = unplaced(placed(
        &build,
        &nodes(&["amd64", "arm64"], &[]),
        Duration::ZERO,
    ));
    assert_eq!(waiting.platforms, ["linux/amd64", "linux/arm64"]);
    assert_eq!(
        waiting.why,
        "emulation is Always, but no one architecture's nodes can build every platform (natively, or labelled emulation.archforge.dev/<arch>=true for the others): linux/amd64 can build on amd64 nodes only; linux/arm64 can build on arm64 nodes only"
    );
}

#[test]
fn always_counts_only_the_nodes_the_spec_can_reach() {
    // A lone arm64 platform: the arm64 node exists but the selector excludes it, so the
    // build goes to the qualifying amd64 host instead of natively there.
    let emulates = crate::plan::emulation_label("arm64");
    let build = build_of(json!({
        "emulation": "Always", "platforms": ["linux/arm64"], "nodeSelector": {"pool": "builds"}
    }));
    let cluster = [
        node("arm", "arm64", &[], json!({})),
        node(
            "pool",
            "amd64",
            &[("pool", "builds"), (&emulates, "true")],
            json!({}),
        ),
    ];
    assert_eq!(
        placed(&build, &cluster, Duration::ZERO).unwrap(),
        vec![("linux/arm64".into(), emulated("amd64"))]
    );
    let in_pool = node("arm", "arm64", &[("pool", "builds")], json!({}));
    assert_eq!(
        placed(&build, &[in_pool, cluster[1].clone()], Duration::ZERO).unwrap(),
        native(&["linux/arm64"])
    );
    let waiting = unplaced(placed(&build, &cluster[..1], Duration::ZERO));
    assert!(
        waiting.why.ends_with(": no Ready, schedulable linux/arm64 node matching spec.nodeSelector {pool: builds} whose taints spec.tolerations tolerate (1 arm64 node: 1 without pool=builds), nor such a node labelled emulation.archforge.dev/arm64=true to emulate it (no node is labelled so)"),
        "{}",
        waiting.why
    );
}

#[test]
fn always_prefers_the_host_most_platforms_build_natively_on() {
    let build = build_of(json!({
        "emulation": "Always", "platforms": ["linux/arm64", "linux/arm/v7"]
    }));
    // amd64 could take both, but arm64 builds one of them natively.
    let n = nodes(
        &["amd64", "arm64"],
        &[("arm64", "amd64"), ("arm", "amd64"), ("arm", "arm64")],
    );
    assert_eq!(
        placed(&build, &n, Duration::ZERO).unwrap(),
        vec![
            ("linux/arm64".into(), Placement::Native),
            ("linux/arm/v7".into(), emulated("arm64"))
        ]
    );
}

#[test]
fn the_message_stays_short_whatever_the_cluster_and_spec() {
    // 32 long selector entries, and 40 nodes each refused for its own reason.
    let long = "a".repeat(63);
    let selector: serde_json::Map<String, serde_json::Value> = (0..32)
        .map(|i| {
            // The longest key there is: a 253-character prefix, a 63-character name.
            let prefix = format!("{}.{}", vec!["d".repeat(63); 3].join("."), "e".repeat(61));
            let key = format!("{prefix}/{}-{i:02}", &long[..60]);
            assert_eq!((prefix.len(), key.len()), (253, 317));
            (key, json!(long.clone()))
        })
        .collect();
    let build = build_of(json!({
        "emulation": "Fallback", "emulationAfter": "0s",
        "platforms": ["linux/arm64", "linux/amd64", "linux/ppc64le", "linux/s390x", "linux/riscv64"],
        "nodeSelector": selector
    }));
    let cluster: Vec<Arc<Node>> = (0..40)
        .map(|i| {
            let taint = json!({"key": format!("{}/t{i}", "k".repeat(250)), "value": long, "effect": "NoSchedule"});
            node(&format!("n{i}"), "arm64", &[], json!({"taints": [taint]}))
        })
        .collect();
    let waiting = unplaced(placed(&build, &cluster, Duration::ZERO));
    assert_eq!(waiting.platforms.len(), 5);
    assert!(waiting.why.len() <= 900, "{}", waiting.why.len());
    assert!(waiting.why.contains("and 29 more}"), "{}", waiting.why);
    // Long keys are cut in the middle: each entry still shows its own name.
    assert!(
        waiting.why.contains("aaaaaaaaaa-01: aaaa"),
        "{}",
        waiting.why
    );
    assert!(
        waiting.why.contains("(40 arm64 nodes: 40 without "),
        "{}",
        waiting.why
    );
    assert!(waiting.why.ends_with("..."), "cut, and says so");
}
