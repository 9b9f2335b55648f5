//! What the controller's stores hold at scale: 1000 two-platform ImageBuilds' Jobs and
//! builder pods (2000 each) as the API server sends them (managed fields, full pod templates
//! and specs, statuses), fed through the same trimming as the reflectors. Prints the figures
//! (`--nocapture`) and bounds them.

use std::sync::Arc;

mod common;

use archforge::api::ImageBuild;
use archforge::controller::Stores;
use common::controller::rendered_jobs;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

fn managed_fields(manager: &str) -> Value {
    // What a real server keeps per writer: a fieldsV1 tree the size of the object's fields.
    let fields: serde_json::Map<String, Value> = (0..60)
        .map(|i| {
            (
                format!("f:field-{i:02}"),
                json!({"f:nested": {}, "f:other": {}}),
            )
        })
        .collect();
    json!([{"manager": manager, "operation": "Update", "apiVersion": "v1",
            "time": "2026-11-23T10:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": fields}])
}

fn objects(i: usize) -> (Vec<Job>, Vec<Pod>) {
    let build: ImageBuild = serde_json::from_value(json!({
        "apiVersion": "archforge.dev/v1alpha1", "kind": "ImageBuild",
        "metadata": {"name": format!("app-{i:04}"), "namespace": "team-a",
                     "uid": format!("00000000-0000-0000-0000-{i:012}"), "generation": 1},
        "spec": {"source": {"git": {"url": "https://git.example.com/team/app.git", "ref": "main"}},
                 "platforms": ["linux/amd64", "linux/arm64"],
                 "output": {"image": "registry.example.com/team/app:v1"}}
    }))
    .unwrap();
    let mut jobs = Vec::new();
    let mut pods = Vec::new();
    for (p, mut job) in rendered_jobs(&build, SHA) {
        job["metadata"]["uid"] = json!(format!("job-{i}-{}", p.platform.slug()));
        job["metadata"]["managedFields"] = managed_fields("kube-controller-manager");
        job["status"] = json!({"active": 1, "ready": 1, "startTime": "2026-11-23T10:00:00Z",
                               "uncountedTerminatedPods": {}, "terminating": 0});
        let template = job["spec"]["template"].clone();
        let name = job["metadata"]["name"].as_str().unwrap().to_string();
        let mut pod = json!({
            "metadata": template["metadata"].clone(),
            "spec": template["spec"].clone(),
            "status": {
                "phase": "Succeeded", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}],
                "hostIP": "192.168.0.1",
                "conditions": [{"type": "Ready", "status": "False"}, {"type": "Initialized", "status": "True"},
                               {"type": "ContainersReady", "status": "False"}, {"type": "PodScheduled", "status": "True"}],
                "initContainerStatuses": [{"name": "git-sync", "image": "registry.k8s.io/git-sync/git-sync:v4.4.0",
                    "imageID": format!("registry.k8s.io/git-sync/git-sync@sha256:{}", "a".repeat(64)),
                    "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0}}}],
                "containerStatuses": [{"name": "builder", "image": "quay.io/buildah/stable:v1.43.0",
                    "imageID": format!("quay.io/buildah/stable@sha256:{}", "b".repeat(64)),
                    "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 0, "message": format!("sha256:{}", "c".repeat(64))}}}]
            }
        });
        pod["metadata"]["name"] = json!(format!("{name}-x7k2p"));
        pod["metadata"]["namespace"] = json!("team-a");
        pod["metadata"]["managedFields"] = managed_fields("kubelet");
        pod["metadata"]["ownerReferences"] = json!([{"apiVersion": "batch/v1", "kind": "Job",
            "name": name, "uid": job["metadata"]["uid"], "controller": true}]);
        jobs.push(serde_json::from_value(job).unwrap());
        pods.push(serde_json::from_value(pod).unwrap());
    }
    (jobs, pods)
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn json_bytes<T: serde::Serialize>(objects: &[T]) -> usize {
    objects
        .iter()
        .map(|o| serde_json::to_vec(o).unwrap().len())
        .sum()
}

fn stored_bytes<T: serde::Serialize>(objects: &[Arc<T>]) -> usize {
    objects
        .iter()
        .map(|o| serde_json::to_vec(&**o).unwrap().len())
        .sum()
}

#[test]
fn a_thousand_imagebuilds_jobs_and_pods_stay_small_in_the_stores() {
    let (stores, mut writers) = Stores::empty();
    let before = rss_kib();
    let mut full_bytes = 0;
    // One object at a time, as watch events come: the full objects never all live at once.
    writers.set_jobs(
        (0..1000)
            .flat_map(|i| objects(i).0)
            .inspect(|j| full_bytes += json_bytes(std::slice::from_ref(j))),
    );
    writers.set_pods(
        (0..1000)
            .flat_map(|i| objects(i).1)
            .inspect(|p| full_bytes += json_bytes(std::slice::from_ref(p))),
    );
    let after = rss_kib();
    let kept_bytes = stored_bytes(&stores.jobs.state()) + stored_bytes(&stores.pods.state());
    let grown_mib = after.saturating_sub(before) as f64 / 1024.0;
    // The bound is 100 MiB for the whole operator at 1000 ImageBuilds.
    println!(
        "2000 Jobs + 2000 pods: {:.1} MiB as sent, {:.1} MiB as stored (JSON); process RSS grew {grown_mib:.1} MiB to {:.1} MiB",
        full_bytes as f64 / 1048576.0,
        kept_bytes as f64 / 1048576.0,
        after as f64 / 1024.0
    );
    let held: Vec<Arc<Job>> = stores.jobs.state();
    assert_eq!((held.len(), stores.pods.state().len()), (2000, 2000));
    let job = &held[0];
    assert!(job.metadata.managed_fields.is_none() && job.spec.is_none());
    assert!(job.metadata.owner_references.is_some(), "ownership is kept");
    let pod = &stores.pods.state()[0];
    assert!(pod.spec.is_none() && pod.metadata.managed_fields.is_none());
    let message = pod
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .state
        .as_ref()
        .unwrap()
        .terminated
        .as_ref()
        .unwrap()
        .message
        .clone();
    assert_eq!(
        message,
        Some(format!("sha256:{}", "c".repeat(64))),
        "the report's input is kept"
    );
    assert!(
        kept_bytes * 8 < full_bytes,
        "trimming keeps under an eighth: {kept_bytes} of {full_bytes} bytes"
    );
    // Generous against allocator noise; untrimmed, the same objects grow it by far more.
    assert!(
        grown_mib < 60.0,
        "the stores grew RSS by {grown_mib:.1} MiB"
    );
}
