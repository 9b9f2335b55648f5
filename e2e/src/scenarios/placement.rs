//! Where builds run: a platform without a node waits for one, or, when the ImageBuild allows
//! it, builds under emulation on a node of another architecture.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use archforge::api::Phase;
use archforge::plan::emulation_label;
use archforge::render::{ANNOTATION_EMULATED_ON, BUILDER_CONTAINER, LABEL_PLATFORM};
use archforge_e2e::cluster::{
    by_digest, config_platform, read_image_config, select_pool, wait_for,
};
use archforge_e2e::filter::JobFilter;
use archforge_e2e::nodes::{self, POOL_LABEL, SimulatedNode};
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use kube::api::Api;
use serde_json::json;

use crate::case::{AMD64, ARM64, Case, with_case};
use crate::suite::Suite;

/// A platform no node has: the run waits (`NoNodeForPlatform`, naming it) without Jobs,
/// and a node of that architecture, registered, starts it.
pub async fn no_node_for_a_platform_waits_for_one(
    suite: Arc<Suite>,
    test: &'static str,
) -> anyhow::Result<()> {
    let all_nodes: Api<Node> = Api::all(suite.client.clone());
    let mut missing = None;
    for arch in ["riscv64", "s390x", "ppc64le", "mips64le"] {
        let found = all_nodes.list(&nodes::of_arch(arch)).await?;
        if found.items.is_empty() {
            missing = Some(arch);
            break;
        }
    }
    let arch = missing.context("every candidate architecture has a node in this cluster")?;
    let platform = format!("linux/{arch}");
    let outcome = with_case(&suite, test, None, async |case| {
        case.apply(&case.manifest("app", &[AMD64, &platform]))
            .await?;
        let status = wait_for("NoNodeForPlatform", Duration::from_secs(60), || async {
            let (_, status) = case.status("app").await?;
            let waiting = status
                .conditions
                .iter()
                .any(|c| c.reason == "NoNodeForPlatform" && c.message.contains(&platform));
            Ok(waiting.then_some(status))
        })
        .await?;
        ensure!(status.phase == Some(Phase::Pending), "{:?}", status.phase);
        ensure!(
            case.jobs_of(&JobFilter::of("app")).await?.is_empty(),
            "Jobs started without a node"
        );
        case.expect_event("app", "NoNodeForPlatform", "Warning")
            .await?;

        let node = SimulatedNode::shared(arch);
        nodes::ensure(&suite.client, &node, &suite.builder.fuse_resource).await?;
        let heartbeat = tokio::spawn(nodes::keep_ready(
            suite.client.clone(),
            vec![node],
            suite.builder.fuse_resource.clone(),
        ));
        // The operator looks again within 30 s.
        let started = case
            .wait_jobs(&JobFilter::of("app"), 2, Duration::from_secs(90))
            .await;
        let finished = match (&started, suite.settings.simulate_nodes) {
            (Ok(_), true) => case
                .wait_phase("app", Phase::Succeeded, suite.run_timeout())
                .await
                .map(|_| ()),
            _ => Ok(()),
        };
        heartbeat.abort();
        started.and(finished)
    })
    .await;
    if let Err(e) = nodes::remove(&suite.client, &nodes::node_name(arch)).await {
        eprintln!("{test}: could not remove the {arch} node: {e:#}");
    }
    outcome
}

/// A nodeSelector no node matches: the run waits (`NoNodeForPlatform`, naming the selector)
/// without Jobs, though the cluster has nodes of the architecture. A node of the selected
/// pool with a taint the spec does not tolerate does not start it either (the message names
/// the taint); with the taint gone, the run starts on that node.
pub async fn node_selector_matching_no_node_waits_for_one(
    suite: Arc<Suite>,
    test: &'static str,
) -> anyhow::Result<()> {
    with_case(&suite, test, None, async |case| {
        let pool = case.namespace.clone();
        let mut manifest = case.manifest("app", &[AMD64]);
        select_pool(&mut manifest, &pool);
        case.apply(&manifest).await?;
        waits_saying(case, &format!("spec.nodeSelector {{{POOL_LABEL}: {pool}}}")).await?;
        case.expect_event("app", "NoNodeForPlatform", "Warning")
            .await?;

        let taint = "archforge.dev/e2e-untolerated";
        let node = SimulatedNode::pooled("amd64", &pool, []).tainted(taint, "yes", "NoSchedule");
        nodes::ensure(&suite.client, &node, &suite.builder.fuse_resource)
            .await
            .with_context(|| format!("registering node {}", node.name))?;
        let heartbeat = tokio::spawn(nodes::keep_ready(
            suite.client.clone(),
            vec![node.clone()],
            suite.builder.fuse_resource.clone(),
        ));
        let outcome = async {
            waits_saying(case, &format!("with taint {taint}=yes:NoSchedule")).await?;
            nodes::set_taints(&suite.client, &node.name, &[]).await?;
            // The node changed: the operator looks again at once (or within 30 s).
            case.wait_jobs(&JobFilter::of("app"), 1, Duration::from_secs(90))
                .await?;
            if suite.settings.simulate_nodes {
                case.wait_phase("app", Phase::Succeeded, suite.run_timeout())
                    .await?;
                let pods = case.pods_of(&JobFilter::of("app")).await?;
                ensure!(
                    pods.iter()
                        .all(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                            == Some(node.name.as_str())),
                    "the builder pods should have run on the pool's node {}",
                    node.name
                );
            }
            Ok(())
        }
        .await;
        heartbeat.abort();
        if let Err(e) = nodes::remove(&suite.client, &node.name).await {
            eprintln!("{test}: could not remove node {}: {e:#}", node.name);
        }
        outcome
    })
    .await
}

/// Waits until ImageBuild `app` waits for a node (`NoNodeForPlatform`, Pending) with a
/// message naming linux/amd64 and `saying`, and checks that it has no Job.
async fn waits_saying(case: &Case, saying: &str) -> anyhow::Result<()> {
    let last = std::cell::RefCell::new(String::new());
    let waiting = wait_for(
        &format!("NoNodeForPlatform saying {saying:?}"),
        Duration::from_secs(90),
        || async {
            let (_, status) = case.status("app").await?;
            let found = status.conditions.iter().find(|c| {
                c.reason == "NoNodeForPlatform"
                    && c.message.contains(AMD64)
                    && c.message.contains(saying)
            });
            if let Some(c) = status.conditions.iter().find(|c| c.type_ == "Reconciling") {
                *last.borrow_mut() = c.message.clone();
            }
            Ok(found.map(|_| status.phase))
        },
    )
    .await;
    let phase =
        waiting.with_context(|| format!("the last Reconciling message: {:?}", last.borrow()))?;
    ensure!(phase == Some(Phase::Pending), "{phase:?}");
    ensure!(
        case.jobs_of(&JobFilter::of("app")).await?.is_empty(),
        "Jobs started without a node the spec can reach"
    );
    Ok(())
}

/// Only an amd64 node that can emulate arm64 (`emulation.archforge.dev/arm64=true`), the
/// scenario's own, and `emulation: Fallback`: the arm64 Job runs on it with the emulation
/// selector and annotation, status and an Event say emulated, and the index holds an arm64
/// image the simulated builder pushed for the pod's target platform.
///
/// Placement counts only the nodes the spec's selector and tolerations reach: the ImageBuild
/// selects the scenario's pool, whose node carries a taint of its own that the ImageBuild
/// tolerates, so every other node of the cluster (arm64 ones too) is left alone and no
/// other scenario's pod lands on this one.
pub async fn emulated_platform_when_no_native_node(
    suite: Arc<Suite>,
    test: &'static str,
) -> anyhow::Result<()> {
    with_case(&suite, test, None, async |case| {
        let host = SimulatedNode::pooled(
            "amd64",
            &case.namespace,
            [(emulation_label("arm64"), "true".to_string())],
        )
        .tainted(POOL_LABEL, &case.namespace, "NoSchedule");
        let outcome = match nodes::ensure(&suite.client, &host, &suite.builder.fuse_resource).await
        {
            Ok(()) => {
                let heartbeat = tokio::spawn(nodes::keep_ready(
                    suite.client.clone(),
                    vec![host.clone()],
                    suite.builder.fuse_resource.clone(),
                ));
                let outcome = emulated_build(case, &host).await;
                heartbeat.abort();
                outcome
            }
            Err(e) => Err(e.context(format!("registering node {}", host.name))),
        };
        if let Err(e) = nodes::remove(&suite.client, &host.name).await {
            eprintln!("{test}: could not remove node {}: {e:#}", host.name);
        }
        outcome
    })
    .await
}

/// The toleration of the taint a scenario's pooled node carries.
fn tolerate_pool(manifest: &mut serde_json::Value, pool: &str) {
    manifest["spec"]["tolerations"] = json!([
        {"key": POOL_LABEL, "operator": "Equal", "value": pool, "effect": "NoSchedule"}
    ]);
}

async fn emulated_build(case: &Case, host: &SimulatedNode) -> anyhow::Result<()> {
    let suite = &case.suite;
    let mut manifest = case.manifest("app", &[AMD64, ARM64]);
    select_pool(&mut manifest, &case.namespace);
    tolerate_pool(&mut manifest, &case.namespace);
    manifest["spec"]["emulation"] = json!("Fallback");
    manifest["spec"]["emulationAfter"] = json!("0s");
    case.apply(&manifest).await?;
    let status = case
        .wait_phase("app", Phase::Succeeded, suite.run_timeout())
        .await?;

    let platform = |name: &str| {
        status
            .platforms
            .iter()
            .find(|p| p.platform == name)
            .with_context(|| format!("no {name} in status.platforms: {:?}", status.platforms))
    };
    let arm = platform(ARM64)?;
    ensure!(
        arm.emulated == Some(true) && arm.phase == Phase::Succeeded,
        "status.platforms[{ARM64}] should be Succeeded and emulated: {arm:?}"
    );
    let amd = platform(AMD64)?;
    ensure!(
        amd.emulated != Some(true),
        "{AMD64} has a native node and must not be emulated: {amd:?}"
    );

    let arm_filter = JobFilter::of("app").platform(ARM64);
    let jobs = case.jobs_of(&arm_filter).await?;
    ensure!(jobs.len() == 1, "{} Jobs for {ARM64}", jobs.len());
    let on = jobs[0].annotations().get(ANNOTATION_EMULATED_ON);
    ensure!(
        on.map(String::as_str) == Some("amd64"),
        "Job {} should carry {ANNOTATION_EMULATED_ON}=amd64: {on:?}",
        jobs[0].name_any()
    );

    let pods = case.pods_of(&arm_filter).await?;
    ensure!(!pods.is_empty(), "no builder pod for {ARM64}");
    let emulation = emulation_label("arm64");
    for pod in &pods {
        let name = pod.name_any();
        let spec = pod.spec.clone().unwrap_or_default();
        ensure!(
            spec.node_name.as_deref() == Some(host.name.as_str()),
            "the {ARM64} pod {name} should be bound to the amd64 node {}: {:?}",
            host.name,
            spec.node_name
        );
        let selector = spec.node_selector.unwrap_or_default();
        let selects = |key: &str, value: &str| selector.get(key).map(String::as_str) == Some(value);
        ensure!(
            selects(nodes::ARCH_LABEL, "amd64")
                && selects(&emulation, "true")
                && selects(POOL_LABEL, &case.namespace),
            "the {ARM64} pod {name} should select {}=amd64 and {emulation}=true (and its pool): {selector:?}",
            nodes::ARCH_LABEL
        );
        ensure!(
            pod.labels().get(LABEL_PLATFORM).map(String::as_str) == Some("linux-arm64"),
            "the {ARM64} pod {name} is labelled {LABEL_PLATFORM}={:?}",
            pod.labels().get(LABEL_PLATFORM)
        );
        let command = spec
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == BUILDER_CONTAINER)
            .and_then(|c| c.command.clone())
            .unwrap_or_default();
        ensure!(
            command
                .windows(2)
                .any(|w| w[0] == "--platform" && w[1] == ARM64),
            "the builder of {name} must still build for {ARM64} (--platform {ARM64}): {command:?}"
        );
    }
    case.expect_event("app", "Emulated", "Normal").await?;

    let entries = super::pushed_index(&suite.registry, &status).await?;
    let image = status.image.clone().context("status.image")?;
    let pushed: BTreeMap<String, String> = entries.into_iter().collect();
    let in_status: BTreeMap<String, String> = status
        .platforms
        .iter()
        .map(|p| (p.platform.clone(), p.digest.clone().unwrap_or_default()))
        .collect();
    ensure!(
        pushed == in_status && pushed.len() == 2,
        "the index holds {pushed:?}, status says {in_status:?}"
    );
    // What the builder pushed, not only what the index says: an arm64 image from the
    // emulated pod (the simulated builder labels its image with the pod's name).
    // Platform images are pushed by digest only: read it by digest.
    let config = read_image_config(&suite.registry, &by_digest(&image, &pushed[ARM64])?).await?;
    ensure!(
        config_platform(&config) == ARM64,
        "the image behind the index's {ARM64} entry is for {} (an emulated build must produce the target's architecture, not the host's)",
        config_platform(&config)
    );
    let pushed_by = config["config"]["Labels"]["dev.archforge.synthetic"].as_str();
    ensure!(
        pods.iter()
            .any(|p| Some(p.name_any().as_str()) == pushed_by),
        "the {ARM64} image was pushed by {pushed_by:?}, not by the emulated pod ({:?})",
        pods.iter().map(|p| p.name_any()).collect::<Vec<_>>()
    );
    case.ensure_one_job_per_platform("app", 2)
}
