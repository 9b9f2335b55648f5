//! The reflectors' stores of one watched scope: what the controller reads instead of
//! listing per reconcile, and how each kind of object is trimmed before it is stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use super::events::{self, EventStores, MAX_STORED_MESSAGE, trim_event};
use super::observe::trim_node;
use crate::api::{BuildPolicy, ImageBuild};
use crate::plan::isolated::ANNOTATION_IMAGEBUILD_NAMESPACE;
use crate::render::{ANNOTATION_IMAGEBUILD, LABEL_MANAGED_BY};

/// What the reflectors have seen of archforge's Jobs and builder pods (of one watched scope)
/// and of the cluster's nodes: the controller reads these instead of listing per reconcile.
/// Objects are trimmed ([`trim_job`], [`trim_pod`], [`trim_node`]) before they are stored.
#[derive(Clone)]
pub struct Stores {
    pub jobs: Store<Job>,
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
    /// The Events that say why a builder pod does not start ([`super::events`]).
    pub events: EventStores,
    /// The BuildPolicies and the namespaces' labels they select by ([`crate::policy`]).
    pub policies: PolicyStores,
    /// The watched scope's ImageBuilds: where the queue finds the runs that wait.
    pub builds: Store<ImageBuild>,
    /// Jobs this process created that the Job store may not show yet (the watch event can
    /// come after the ImageBuild's): without it a quick second reconcile would create them
    /// again, get 409 and read them back.
    created: Arc<Mutex<CreatedJobs>>,
}

/// The cluster's BuildPolicies and namespaces (trimmed to name and labels, [`trim_namespace`]).
#[derive(Clone)]
pub struct PolicyStores {
    pub policies: Store<BuildPolicy>,
    pub namespaces: Store<Namespace>,
}

impl PolicyStores {
    /// The labels of `namespace`; `None` when the store has not seen it yet.
    pub fn labels(&self, namespace: &str) -> Option<std::collections::BTreeMap<String, String>> {
        let ns = self.namespaces.get(&ObjectRef::new(namespace))?;
        Some(ns.metadata.labels.clone().unwrap_or_default())
    }
}

/// Keeps of a namespace only what policies select by: its name and labels.
pub fn trim_namespace(ns: Namespace) -> Namespace {
    Namespace {
        metadata: kube::api::ObjectMeta {
            name: ns.metadata.name,
            labels: ns.metadata.labels,
            resource_version: ns.metadata.resource_version,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Jobs created by this process, with when.
type CreatedJobs = HashMap<ObjectRef<Job>, (Instant, Arc<Job>)>;

/// The writing side of [`Stores`] for callers that feed them by hand (tests, tools); the
/// operator feeds them from watches.
pub struct StoreWriters {
    jobs: Writer<Job>,
    pods: Writer<Pod>,
    nodes: Writer<Node>,
    builds: Writer<ImageBuild>,
    failed_create: Writer<Event>,
    failed_mount: Writer<Event>,
    policies: Writer<BuildPolicy>,
    namespaces: Writer<Namespace>,
}

/// How long a created Job stands in for the store's copy: far longer than a watch event
/// takes, short enough that a Job deleted meanwhile is noticed.
const CREATED_TTL: Duration = Duration::from_secs(120);

impl Stores {
    /// Stores from readers fed elsewhere (by the reflectors of [`super::run`]).
    pub fn new(
        jobs: Store<Job>,
        pods: Store<Pod>,
        nodes: Store<Node>,
        events: EventStores,
        policies: PolicyStores,
        builds: Store<ImageBuild>,
    ) -> Stores {
        Stores {
            jobs,
            pods,
            nodes,
            events,
            policies,
            builds,
            created: Arc::default(),
        }
    }

    /// Empty stores, not ready until their writers replace their contents; the Event
    /// stores are ready and empty (nothing waits for them).
    pub fn empty() -> (Stores, StoreWriters) {
        let mut writers = StoreWriters {
            jobs: Writer::default(),
            pods: Writer::default(),
            nodes: Writer::default(),
            builds: Writer::default(),
            failed_create: Writer::default(),
            failed_mount: Writer::default(),
            policies: Writer::default(),
            namespaces: Writer::default(),
        };
        writers.set_events([]);
        writers.set_policies([]);
        let stores = Stores::new(
            writers.jobs.as_reader(),
            writers.pods.as_reader(),
            writers.nodes.as_reader(),
            EventStores {
                failed_create: writers.failed_create.as_reader(),
                failed_mount: writers.failed_mount.as_reader(),
            },
            PolicyStores {
                policies: writers.policies.as_reader(),
                namespaces: writers.namespaces.as_reader(),
            },
            writers.builds.as_reader(),
        );
        (stores, writers)
    }

    /// Waits until the Job, pod and node stores have had their first list (not the Event
    /// stores: what they add is a better message, and a watch of Events that the operator's
    /// RBAC lacks must not keep it from building). Awaited once, by one task, before
    /// the controllers start: kube's readiness signal wakes only the last of several tasks
    /// waiting on it at once (a oneshot receiver behind a mutex), so reconciles must not be
    /// the ones to wait, or all but one of the first `--concurrency` hang.
    pub async fn wait_until_ready(&self) {
        let _ = self.jobs.wait_until_ready().await;
        let _ = self.pods.wait_until_ready().await;
        let _ = self.nodes.wait_until_ready().await;
        // Without them a build could start that a policy forbids.
        let _ = self.policies.policies.wait_until_ready().await;
        let _ = self.policies.namespaces.wait_until_ready().await;
    }

    /// Remembers a Job this process just created, until the store shows it.
    pub fn created(&self, job: Job) {
        let key = ObjectRef::from_obj(&job);
        self.created
            .lock()
            .expect("created jobs lock")
            .insert(key, (Instant::now(), Arc::new(job)));
    }

    /// Forgets a Job this process deleted.
    pub fn deleted(&self, namespace: &str, name: &str) {
        let key = ObjectRef::new(name).within(namespace);
        self.created.lock().expect("created jobs lock").remove(&key);
    }

    /// Every Job of the store, and those this process created that it does not show yet.
    pub(super) fn all_jobs(&self) -> Vec<Arc<Job>> {
        let mut jobs = self.jobs.state();
        let created = self.created.lock().expect("created jobs lock");
        let unseen = created
            .iter()
            .filter(|(key, (at, _))| at.elapsed() < CREATED_TTL && self.jobs.get(key).is_none());
        jobs.extend(unseen.map(|(_, (_, job))| job.clone()));
        jobs
    }

    /// The Job named `name` in `namespace`: the store's, or the one this process created.
    pub(super) fn job(&self, namespace: &str, name: &str) -> Option<Arc<Job>> {
        let key = ObjectRef::new(name).within(namespace);
        let mut created = self.created.lock().expect("created jobs lock");
        created.retain(|_, (at, _)| at.elapsed() < CREATED_TTL);
        match self.jobs.get(&key) {
            Some(job) => {
                created.remove(&key);
                Some(job)
            }
            None => created.get(&key).map(|(_, job)| job.clone()),
        }
    }
}

fn replace<K>(writer: &mut Writer<K>, objects: impl IntoIterator<Item = K>)
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(object));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
}

impl StoreWriters {
    /// Replaces the Jobs (trimmed as the reflector trims them); the Job store is ready.
    pub fn set_jobs(&mut self, jobs: impl IntoIterator<Item = Job>) {
        replace(&mut self.jobs, jobs.into_iter().map(trim_job));
    }

    /// Replaces the ImageBuilds; the ImageBuild store is ready.
    pub fn set_builds(&mut self, builds: impl IntoIterator<Item = ImageBuild>) {
        replace(&mut self.builds, builds);
    }

    /// Replaces the builder pods (trimmed); the pod store is ready.
    pub fn set_pods(&mut self, pods: impl IntoIterator<Item = Pod>) {
        replace(&mut self.pods, pods.into_iter().map(trim_pod));
    }

    /// Replaces the nodes (trimmed); the node store is ready.
    pub fn set_nodes(&mut self, nodes: impl IntoIterator<Item = Node>) {
        replace(&mut self.nodes, nodes.into_iter().map(trim_node));
    }

    /// Replaces the BuildPolicies; the policy store is ready.
    pub fn set_policies(&mut self, policies: impl IntoIterator<Item = BuildPolicy>) {
        replace(&mut self.policies, policies);
    }

    /// Replaces the namespaces (trimmed); the namespace store is ready.
    pub fn set_namespaces(&mut self, namespaces: impl IntoIterator<Item = Namespace>) {
        replace(
            &mut self.namespaces,
            namespaces.into_iter().map(trim_namespace),
        );
    }

    /// Replaces the Events (trimmed), each into the store whose field selector it matches.
    pub fn set_events(&mut self, items: impl IntoIterator<Item = Event>) {
        let (create, mount): (Vec<Event>, Vec<Event>) = items
            .into_iter()
            .map(trim_event)
            .filter(|e| matches!(e.reason.as_deref(), Some("FailedCreate" | "FailedMount")))
            .partition(|e| e.reason.as_deref() == Some("FailedCreate"));
        replace(&mut self.failed_create, create);
        replace(&mut self.failed_mount, mount);
    }
}

/// Drops what no step reads from a Job: its spec (the pod template is most of the object),
/// managed fields and the status' pod bookkeeping. Kept: metadata (names, labels,
/// annotations, owner references) and the status' counts, times and conditions.
pub fn trim_job(mut job: Job) -> Job {
    job.metadata.managed_fields = None;
    job.spec = None;
    if let Some(status) = job.status.as_mut() {
        status.uncounted_terminated_pods = None;
        for c in status.conditions.iter_mut().flatten() {
            c.last_probe_time = None;
        }
    }
    job
}

/// Keeps of a builder pod only what its report is made from: metadata (owner references,
/// labels), its `PodScheduled` condition, the kubelet's reason and message, and its
/// containers' states. The spec, the other conditions and addresses go; messages are
/// bounded (a pod's status is anyone's who may write it).
pub fn trim_pod(mut pod: Pod) -> Pod {
    pod.metadata.managed_fields = None;
    pod.spec = None;
    // Anyone who may create pods in a namespace can label one as archforge's: only the
    // labels and the annotation archforge reads are kept, not up to 256 KiB of others.
    let ours = |key: &String| key.starts_with("archforge.dev/") || key == LABEL_MANAGED_BY;
    if let Some(labels) = pod.metadata.labels.as_mut() {
        labels.retain(|k, _| ours(k));
    }
    if let Some(annotations) = pod.metadata.annotations.as_mut() {
        annotations
            .retain(|k, _| k == ANNOTATION_IMAGEBUILD || k == ANNOTATION_IMAGEBUILD_NAMESPACE);
    }
    if let Some(status) = pod.status.as_mut() {
        let scheduled = status
            .conditions
            .take()
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled")
            .map(|mut c| {
                c.last_probe_time = None;
                c.message = c.message.map(|m| events::bounded(m, MAX_STORED_MESSAGE));
                c
            });
        status.conditions = scheduled.map(|c| vec![c]);
        status.message = status
            .message
            .take()
            .map(|m| events::bounded(m, MAX_STORED_MESSAGE));
        status.pod_ips = None;
        status.pod_ip = None;
        status.host_ips = None;
        status.host_ip = None;
        status.ephemeral_container_statuses = None;
        for c in status
            .container_statuses
            .iter_mut()
            .flatten()
            .chain(status.init_container_statuses.iter_mut().flatten())
        {
            c.image = String::new();
            c.image_id = String::new();
            c.last_state = None;
            c.volume_mounts = None;
            c.resources = None;
            c.allocated_resources = None;
            c.user = None;
            if let Some(waiting) = c.state.as_mut().and_then(|s| s.waiting.as_mut()) {
                waiting.message = waiting
                    .message
                    .take()
                    .map(|m| events::bounded(m, MAX_STORED_MESSAGE));
            }
        }
    }
    pod
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_stored_namespace_keeps_only_its_name_and_labels() {
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": "team-a", "labels": {"team": "a"},
                         "annotations": {"filler": "f".repeat(200_000)}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}
        }))
        .unwrap();
        let kept = trim_namespace(ns);
        assert_eq!(kept.metadata.name.as_deref(), Some("team-a"));
        assert_eq!(kept.metadata.labels.unwrap()["team"], "a");
        assert!(
            kept.metadata.annotations.is_none() && kept.spec.is_none() && kept.status.is_none()
        );
    }

    #[test]
    fn a_stored_pod_keeps_only_archforges_labels_and_annotation_and_bounded_messages() {
        // A pod anyone in the namespace could create with archforge's label.
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {
                "name": "app-1-linux-amd64-x7k2p",
                "labels": {"app.kubernetes.io/managed-by": "archforge", "archforge.dev/imagebuild": "app", "padding": "p"},
                "annotations": {"archforge.dev/imagebuild": "app", "filler": "f".repeat(200_000)},
            },
            "status": {"phase": "Pending", "message": "m".repeat(1 << 20)}
        }))
        .unwrap();
        let kept = trim_pod(pod);
        let labels = kept.metadata.labels.unwrap();
        assert_eq!(
            labels.keys().collect::<Vec<_>>(),
            ["app.kubernetes.io/managed-by", "archforge.dev/imagebuild"]
        );
        let annotations = kept.metadata.annotations.unwrap();
        assert_eq!(
            annotations.keys().collect::<Vec<_>>(),
            ["archforge.dev/imagebuild"]
        );
        let message = kept.status.unwrap().message.unwrap();
        assert!(message.len() <= MAX_STORED_MESSAGE && message.capacity() < 2 * MAX_STORED_MESSAGE);
    }
}
