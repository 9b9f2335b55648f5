//! Simulated nodes: Node objects the suite registers for clusters whose nodes never run
//! pods, kept Ready the way a kubelet does (node status heartbeats and a Lease in
//! `kube-node-lease`), so that the scheduler binds builder pods to them and the node
//! lifecycle controller never marks them unreachable.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Taint};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// Label on the shared simulated nodes; simulated-mode ImageBuilds select it, so builder
/// pods never land on a real node whose kubelet would run them too.
pub const SIMULATED_LABEL: &str = "archforge.dev/e2e-simulated";
/// Label on a node only one scenario uses (its value: the scenario's namespace). That
/// scenario's ImageBuilds select it instead of [`SIMULATED_LABEL`], so its pods land on that
/// node only, and no other scenario's pod is bound there and lost when the node goes.
pub const POOL_LABEL: &str = "archforge.dev/e2e-pool";
pub const NAME_PREFIX: &str = "archforge-e2e-sim-";
const FIELD_MANAGER: &str = "archforge-e2e-kubelet";
const LEASE_NAMESPACE: &str = "kube-node-lease";

/// The well-known label of a node's architecture, which builder pods select.
pub const ARCH_LABEL: &str = "kubernetes.io/arch";

/// The list parameters that select the nodes of `arch`, simulated or not.
pub fn of_arch(arch: &str) -> ListParams {
    ListParams::default().labels(&format!("{ARCH_LABEL}={arch}"))
}

/// The name of the shared simulated node of `arch`.
pub fn node_name(arch: &str) -> String {
    format!("{NAME_PREFIX}{arch}")
}

pub fn is_simulated(node_name: &str) -> bool {
    node_name.starts_with(NAME_PREFIX)
}

/// A simulated node: its name, architecture, labels and taints.
#[derive(Clone, Debug, PartialEq)]
pub struct SimulatedNode {
    pub name: String,
    pub arch: String,
    /// Every label of the node (architecture, os and hostname included).
    pub labels: BTreeMap<String, String>,
    /// Its taints (none unless a scenario adds some).
    pub taints: Vec<Taint>,
}

impl SimulatedNode {
    fn new(name: String, arch: &str, labels: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut all = BTreeMap::from([
            (ARCH_LABEL.to_string(), arch.to_string()),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            ("kubernetes.io/hostname".to_string(), name.clone()),
        ]);
        all.extend(labels);
        SimulatedNode {
            name,
            arch: arch.to_string(),
            labels: all,
            taints: Vec::new(),
        }
    }

    /// The same node with the taint `key=value:effect` too.
    pub fn tainted(mut self, key: &str, value: &str, effect: &str) -> Self {
        self.taints.push(Taint {
            key: key.to_string(),
            value: Some(value.to_string()),
            effect: effect.to_string(),
            time_added: None,
        });
        self
    }

    /// The node of `arch` every scenario shares ([`node_name`], [`SIMULATED_LABEL`]).
    pub fn shared(arch: &str) -> Self {
        Self::new(
            node_name(arch),
            arch,
            [(SIMULATED_LABEL.to_string(), "true".to_string())],
        )
    }

    /// A node of `arch` for the scenario of `namespace` alone ([`POOL_LABEL`]), with `extra`
    /// labels; named after the namespace's trailing nonce, so that its name stays a valid
    /// hostname label value (63 characters at most).
    pub fn pooled(
        arch: &str,
        namespace: &str,
        extra: impl IntoIterator<Item = (String, String)>,
    ) -> Self {
        let nonce: String = namespace
            .rsplit('-')
            .next()
            .unwrap_or(namespace)
            .chars()
            .take(16)
            .collect();
        let labels = [(POOL_LABEL.to_string(), namespace.to_string())]
            .into_iter()
            .chain(extra);
        Self::new(format!("{NAME_PREFIX}{arch}-{nonce}"), arch, labels)
    }

    /// What the suite sets of the node's spec: schedulable, and its taints if it has any
    /// (those the node controller adds, such as `not-ready` before the first heartbeat, are
    /// otherwise left to it).
    fn spec(&self) -> Value {
        match self.taints.is_empty() {
            true => json!({"unschedulable": null}),
            false => json!({"unschedulable": null, "taints": self.taints}),
        }
    }

    /// The Node object (status is set separately: the API server ignores status on
    /// create).
    pub fn node(&self) -> Node {
        serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": self.labels},
            "spec": self.spec(),
        }))
        .expect("a valid Node")
    }
}

/// Status of a Ready simulated node with room for thousands of builder pods, each asking
/// for one unit of `fuse_resource`.
pub fn node_status(node: &SimulatedNode, fuse_resource: &str, now: jiff::Timestamp) -> Value {
    let capacity = json!({
        "cpu": "512",
        "memory": "2Ti",
        "ephemeral-storage": "100Ti",
        "pods": "10000",
        fuse_resource: "10000",
    });
    let condition = |type_: &str, status: &str, reason: &str| {
        json!({
            "type": type_,
            "status": status,
            "reason": reason,
            "message": "simulated by the archforge e2e suite",
            "lastHeartbeatTime": now.to_string(),
            "lastTransitionTime": now.to_string(),
        })
    };
    let id = format!(
        "archforge-e2e-{}",
        node.name.trim_start_matches(NAME_PREFIX)
    );
    json!({
        "capacity": capacity,
        "allocatable": capacity,
        "conditions": [
            condition("Ready", "True", "KubeletReady"),
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID"),
        ],
        "addresses": [{"type": "InternalIP", "address": "192.0.2.10"}],
        "nodeInfo": {
            "architecture": node.arch,
            "operatingSystem": "linux",
            "osImage": "archforge e2e simulated node",
            "kernelVersion": "6.1.0",
            "containerRuntimeVersion": "simulated://1.0",
            "kubeletVersion": "v1.24.0",
            "kubeProxyVersion": "v1.24.0",
            "machineID": id,
            "systemUUID": id,
            "bootID": id,
        },
    })
}

/// The node's heartbeat Lease, as the kubelet renews it.
pub fn lease(node_name: &str, now: jiff::Timestamp) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": node_name, "namespace": LEASE_NAMESPACE},
        "spec": {
            "holderIdentity": node_name,
            "leaseDurationSeconds": 40,
            "renewTime": archforge_micro_time(now),
        },
    })
}

/// MicroTime as the API server writes it (RFC 3339 with microseconds).
fn archforge_micro_time(now: jiff::Timestamp) -> String {
    now.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

/// Registers `node` if it does not exist, gives it its labels and taints, makes it
/// schedulable (a suite that died mid-scenario may have left it cordoned) and Ready.
pub async fn ensure(
    client: &Client,
    node: &SimulatedNode,
    fuse_resource: &str,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    if nodes.get_opt(&node.name).await?.is_none() {
        nodes.create(&PostParams::default(), &node.node()).await?;
    }
    nodes
        .patch(
            &node.name,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"labels": node.labels},
                "spec": node.spec(),
            })),
        )
        .await?;
    heartbeat(client, node, fuse_resource).await
}

/// Replaces the taints of the node `name` (as `kubectl taint` would, one by one).
pub async fn set_taints(client: &Client, name: &str, taints: &[Taint]) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": taints}})),
        )
        .await?;
    Ok(())
}

/// Removes the simulated node `name` and its Lease (nothing owns the Lease, so the garbage
/// collector would keep it); either may already be gone.
pub async fn remove(client: &Client, name: &str) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    for removed in [
        nodes
            .delete(name, &DeleteParams::default())
            .await
            .map(|_| ()),
        leases
            .delete(name, &DeleteParams::default())
            .await
            .map(|_| ()),
    ] {
        match removed {
            Err(e) if !crate::cluster::is_not_found(&e) => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}

/// Removes the pooled nodes a previous suite left behind (it died before its scenario
/// removed them): only one suite drives a cluster at a time, so every pooled node found at
/// the start is stale.
pub async fn remove_stale_pooled(client: &Client) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    for node in nodes
        .list(&ListParams::default().labels(POOL_LABEL))
        .await?
        .items
    {
        let name = node.metadata.name.unwrap_or_default();
        if is_simulated(&name) {
            remove(client, &name).await?;
        }
    }
    Ok(())
}

/// One heartbeat: node status (Ready, now) and the node Lease.
pub async fn heartbeat(
    client: &Client,
    node: &SimulatedNode,
    fuse_resource: &str,
) -> anyhow::Result<()> {
    let now = jiff::Timestamp::now();
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch_status(
            &node.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": node_status(node, fuse_resource, now)})),
        )
        .await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    leases
        .patch(
            &node.name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(lease(&node.name, now)),
        )
        .await?;
    Ok(())
}

/// Keeps the simulated `nodes` Ready until the process ends (or the task is aborted).
pub async fn keep_ready(client: Client, nodes: Vec<SimulatedNode>, fuse_resource: String) {
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        for node in &nodes {
            if let Err(e) = heartbeat(&client, node, &fuse_resource).await {
                eprintln!("simulated node {}: heartbeat failed: {e}", node.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_simulated_node_is_ready_and_offers_the_fuse_resource() {
        let shared = SimulatedNode::shared("arm64");
        let node = shared.node();
        let labels = node.metadata.labels.unwrap();
        assert_eq!(labels["kubernetes.io/arch"], "arm64");
        assert_eq!(
            of_arch("arm64").label_selector.as_deref(),
            Some("kubernetes.io/arch=arm64")
        );
        assert_eq!(labels[SIMULATED_LABEL], "true");
        assert!(is_simulated(node.metadata.name.as_deref().unwrap()));
        assert!(!is_simulated("kind-worker"));

        let now: jiff::Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
        let status: k8s_openapi::api::core::v1::NodeStatus =
            serde_json::from_value(node_status(&shared, "github.com/fuse", now)).unwrap();
        let ready = status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
        assert_eq!(status.allocatable.unwrap()["github.com/fuse"].0, "10000");
        assert_eq!(status.node_info.unwrap().architecture, "arm64");
    }

    #[test]
    fn a_pooled_node_is_only_its_scenarios() {
        let namespace = "af-e2e-emulated-platform-when-no-native-node-1a2b3";
        let node = SimulatedNode::pooled(
            "amd64",
            namespace,
            [(
                "emulation.archforge.dev/arm64".to_string(),
                "true".to_string(),
            )],
        );
        assert_eq!(node.name, "archforge-e2e-sim-amd64-1a2b3");
        assert!(is_simulated(&node.name));
        assert_ne!(node.name, node_name("amd64"), "not the shared node");
        let labels = node.node().metadata.labels.unwrap();
        assert_eq!(labels[POOL_LABEL], namespace);
        assert_eq!(labels[ARCH_LABEL], "amd64");
        assert_eq!(labels["emulation.archforge.dev/arm64"], "true");
        assert_eq!(labels["kubernetes.io/hostname"], node.name);
        // Other scenarios select SIMULATED_LABEL: none of their pods may land here.
        assert!(!labels.contains_key(SIMULATED_LABEL));

        // A hostname label value has at most 63 characters, whatever the namespace.
        let long = SimulatedNode::pooled("ppc64le", &"n".repeat(63), []);
        assert!(long.name.len() <= 63, "{}", long.name);

        let now: jiff::Timestamp = "2026-11-23T10:00:00Z".parse().unwrap();
        let status = node_status(&node, "f", now);
        assert_eq!(status["nodeInfo"]["machineID"], "archforge-e2e-amd64-1a2b3");
        assert_ne!(
            node_status(&SimulatedNode::shared("amd64"), "f", now)["nodeInfo"]["machineID"],
            status["nodeInfo"]["machineID"]
        );
    }

    #[test]
    fn a_tainted_node_carries_its_taints_from_creation() {
        let node = SimulatedNode::pooled("amd64", "af-e2e-x-1a2b3", []).tainted(
            POOL_LABEL,
            "af-e2e-x-1a2b3",
            "NoSchedule",
        );
        let taints = node.node().spec.unwrap().taints.unwrap();
        assert_eq!(taints.len(), 1);
        assert_eq!(
            (
                taints[0].key.as_str(),
                taints[0].value.as_deref(),
                taints[0].effect.as_str()
            ),
            (POOL_LABEL, Some("af-e2e-x-1a2b3"), "NoSchedule")
        );
        let plain = SimulatedNode::shared("amd64").node();
        assert_eq!(plain.spec.unwrap().taints, None);
    }

    #[test]
    fn the_lease_is_a_valid_micro_time_lease() {
        let now: jiff::Timestamp = "2026-11-23T10:00:00.123456Z".parse().unwrap();
        let lease: Lease = serde_json::from_value(lease("n", now)).unwrap();
        let spec = lease.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("n"));
        assert_eq!(spec.renew_time.unwrap().0, now);
    }
}
