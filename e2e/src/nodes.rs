//! Simulated nodes: Node objects the suite registers for clusters whose nodes never run
//! pods, kept Ready the way a kubelet does (node status heartbeats and a Lease in
//! `kube-node-lease`), so that the scheduler binds builder pods to them and the node
//! lifecycle controller never marks them unreachable.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// Label on every simulated node; simulated-mode ImageBuilds select it, so builder pods
/// never land on a real node whose kubelet would run them too.
pub const SIMULATED_LABEL: &str = "archforge.dev/e2e-simulated";
pub const NAME_PREFIX: &str = "archforge-e2e-sim-";
const FIELD_MANAGER: &str = "archforge-e2e-kubelet";

/// The well-known label of a node's architecture, which builder pods select.
pub const ARCH_LABEL: &str = "kubernetes.io/arch";

/// The list parameters that select the nodes of `arch`, simulated or not.
pub fn of_arch(arch: &str) -> ListParams {
    ListParams::default().labels(&format!("{ARCH_LABEL}={arch}"))
}

pub fn node_name(arch: &str) -> String {
    format!("{NAME_PREFIX}{arch}")
}

pub fn is_simulated(node_name: &str) -> bool {
    node_name.starts_with(NAME_PREFIX)
}

/// The Node object of a simulated `arch` node (status is set separately: the API server
/// ignores status on create).
pub fn node(arch: &str) -> Node {
    let name = node_name(arch);
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                ARCH_LABEL: arch,
                "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": name,
                SIMULATED_LABEL: "true",
            },
        },
        "spec": {},
    }))
    .expect("a valid Node")
}

/// Status of a Ready simulated node with room for thousands of builder pods, each asking
/// for one unit of `fuse_resource`.
pub fn node_status(arch: &str, fuse_resource: &str, now: jiff::Timestamp) -> Value {
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
            "architecture": arch,
            "operatingSystem": "linux",
            "osImage": "archforge e2e simulated node",
            "kernelVersion": "6.1.0",
            "containerRuntimeVersion": "simulated://1.0",
            "kubeletVersion": "v1.24.0",
            "kubeProxyVersion": "v1.24.0",
            "machineID": format!("archforge-e2e-{arch}"),
            "systemUUID": format!("archforge-e2e-{arch}"),
            "bootID": format!("archforge-e2e-{arch}"),
        },
    })
}

/// The node's heartbeat Lease, as the kubelet renews it.
pub fn lease(node_name: &str, now: jiff::Timestamp) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": node_name, "namespace": "kube-node-lease"},
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

/// Registers the simulated node of `arch` if it does not exist, and makes it Ready.
pub async fn ensure(client: &Client, arch: &str, fuse_resource: &str) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let name = node_name(arch);
    if nodes.get_opt(&name).await?.is_none() {
        nodes.create(&PostParams::default(), &node(arch)).await?;
    }
    heartbeat(client, arch, fuse_resource).await
}

/// One heartbeat: node status (Ready, now) and the node Lease.
pub async fn heartbeat(client: &Client, arch: &str, fuse_resource: &str) -> anyhow::Result<()> {
    let name = node_name(arch);
    let now = jiff::Timestamp::now();
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": node_status(arch, fuse_resource, now)})),
        )
        .await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    leases
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(lease(&name, now)),
        )
        .await?;
    Ok(())
}

/// Keeps the simulated nodes of `arches` Ready until the process ends.
pub async fn keep_ready(client: Client, arches: Vec<String>, fuse_resource: String) {
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        for arch in &arches {
            if let Err(e) = heartbeat(&client, arch, &fuse_resource).await {
                eprintln!("simulated node {arch}: heartbeat failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_simulated_node_is_ready_and_offers_the_fuse_resource() {
        let node = node("arm64");
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
            serde_json::from_value(node_status("arm64", "github.com/fuse", now)).unwrap();
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
    fn the_lease_is_a_valid_micro_time_lease() {
        let now: jiff::Timestamp = "2026-11-23T10:00:00.123456Z".parse().unwrap();
        let lease: Lease = serde_json::from_value(lease("n", now)).unwrap();
        let spec = lease.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("n"));
        assert_eq!(spec.renew_time.unwrap().0, now);
    }
}
