//! Reading what the cluster (and the git server) says about one ImageBuild's run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, ResourceExt};

use super::Context;
use super::error::{ReconcileError, Result};
use super::placement::{Nodes, PodConstraints};
use crate::api::{ImageBuild, ImageBuildStatus};
use crate::plan::BuildPlan;
use crate::render::{ANNOTATION_REVISION, LABEL_GENERATION, LABEL_IMAGEBUILD};
use crate::source::{GitCredentials, resolve_commit};
use crate::status::{PodReport, owning_job, pod_report};

/// What the reflectors have seen of archforge's Jobs and builder pods (of one watched scope)
/// and of the cluster's nodes: the controller reads these instead of listing per reconcile.
/// Objects are trimmed ([`trim_job`], [`trim_pod`], [`trim_node`]) before they are stored.
#[derive(Clone)]
pub struct Stores {
    pub jobs: Store<Job>,
    pub pods: Store<Pod>,
    pub nodes: Store<Node>,
    /// Jobs this process created that the Job store may not show yet (the watch event can
    /// come after the ImageBuild's): without it a quick second reconcile would create them
    /// again, get 409 and read them back.
    created: Arc<Mutex<CreatedJobs>>,
}

/// Jobs created by this process, with when.
type CreatedJobs = HashMap<ObjectRef<Job>, (Instant, Arc<Job>)>;

/// The writing side of [`Stores`] for callers that feed them by hand (tests, tools); the
/// operator feeds them from watches.
pub struct StoreWriters {
    jobs: Writer<Job>,
    pods: Writer<Pod>,
    nodes: Writer<Node>,
}

/// How long a created Job stands in for the store's copy: far longer than a watch event
/// takes, short enough that a Job deleted meanwhile is noticed.
const CREATED_TTL: Duration = Duration::from_secs(120);

impl Stores {
    /// Stores from readers fed elsewhere (by the reflectors of [`super::run`]).
    pub fn new(jobs: Store<Job>, pods: Store<Pod>, nodes: Store<Node>) -> Stores {
        Stores {
            jobs,
            pods,
            nodes,
            created: Arc::default(),
        }
    }

    /// Empty stores, not ready until their writers replace their contents.
    pub fn empty() -> (Stores, StoreWriters) {
        let writers = StoreWriters {
            jobs: Writer::default(),
            pods: Writer::default(),
            nodes: Writer::default(),
        };
        let stores = Stores::new(
            writers.jobs.as_reader(),
            writers.pods.as_reader(),
            writers.nodes.as_reader(),
        );
        (stores, writers)
    }

    /// Waits until every store has had its first list. Awaited once, by one task, before
    /// the controllers start: kube's readiness signal wakes only the last of several tasks
    /// waiting on it at once (a oneshot receiver behind a mutex), so reconciles must not be
    /// the ones to wait, or all but one of the first `--concurrency` hang.
    pub async fn wait_until_ready(&self) {
        let _ = self.jobs.wait_until_ready().await;
        let _ = self.pods.wait_until_ready().await;
        let _ = self.nodes.wait_until_ready().await;
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

    /// The Job named `name` in `namespace`: the store's, or the one this process created.
    fn job(&self, namespace: &str, name: &str) -> Option<Arc<Job>> {
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

    /// Replaces the builder pods (trimmed); the pod store is ready.
    pub fn set_pods(&mut self, pods: impl IntoIterator<Item = Pod>) {
        replace(&mut self.pods, pods.into_iter().map(trim_pod));
    }

    /// Replaces the nodes (trimmed); the node store is ready.
    pub fn set_nodes(&mut self, nodes: impl IntoIterator<Item = Node>) {
        replace(&mut self.nodes, nodes.into_iter().map(trim_node));
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
/// labels) and its containers' states. The spec, conditions and addresses go.
pub fn trim_pod(mut pod: Pod) -> Pod {
    pod.metadata.managed_fields = None;
    pod.spec = None;
    if let Some(status) = pod.status.as_mut() {
        status.conditions = None;
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
        }
    }
    pod
}

/// Keeps of a node its name, labels, whether it is cordoned, its taints (without the time
/// a NoExecute one was added) and its Ready condition (without heartbeat times): the
/// placement check's inputs ([`super::placement`]). A node's images, capacity, addresses and
/// annotations are most of it, and heartbeats change it every few seconds.
pub fn trim_node(node: Node) -> Node {
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus, Taint};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| NodeCondition {
            type_: c.type_.clone(),
            status: c.status.clone(),
            ..Default::default()
        });
    let spec = node.spec.unwrap_or_default();
    Node {
        metadata: ObjectMeta {
            name: node.metadata.name,
            labels: node.metadata.labels,
            resource_version: node.metadata.resource_version,
            uid: node.metadata.uid,
            ..Default::default()
        },
        spec: Some(NodeSpec {
            unschedulable: spec.unschedulable,
            taints: spec.taints.map(|taints| {
                taints
                    .into_iter()
                    .map(|t| Taint {
                        time_added: None,
                        ..t
                    })
                    .collect()
            }),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            conditions: ready.map(|c| vec![c]),
            ..Default::default()
        }),
    }
}

/// Waits until `store` has had its first list (at once after start-up).
async fn ready<K>(store: &Store<K>) -> Result<()>
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    // Ready at once in the operator (`Stores::wait_until_ready` comes first); a caller that
    // feeds the stores by hand may start a reconcile first. An error means the writer is
    // gone: the reflector stopped, which happens only at shutdown; what the store holds is
    // the last the watch said.
    let _ = store.wait_until_ready().await;
    Ok(())
}

/// The Jobs this ImageBuild controls, split into the current run's and earlier runs'. A Job
/// is the current run's by name; names do not depend on the commit. Read from the Job
/// store: no request.
pub async fn jobs(ctx: &Context, build: &ImageBuild) -> Result<(Vec<Job>, Vec<Job>)> {
    ready(&ctx.stores.jobs).await?;
    let namespace = build.namespace().unwrap_or_default();
    let label = crate::plan::dns_label(&build.name_any(), 63);
    let names = crate::plan::current_job_names(build);
    let current: Vec<Job> = names
        .iter()
        .filter_map(|name| ctx.stores.job(&namespace, name))
        .filter(|j| owned_by(j, build))
        .map(|j| (*j).clone())
        .collect();
    let stale = ctx
        .stores
        .jobs
        .state_filter(|j| {
            j.metadata.namespace.as_deref() == Some(namespace.as_str())
                && j.labels().get(LABEL_IMAGEBUILD) == Some(&label)
                && !names.iter().any(|n| j.metadata.name.as_deref() == Some(n))
                && owned_by(j, build)
        })
        .into_iter()
        .map(|j| (*j).clone())
        .collect::<Vec<Job>>();
    // The store has no order; earlier runs' Jobs are stopped in name order.
    let mut stale = stale;
    stale.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok((current, stale))
}

/// Whether `build` is `job`'s controller (by UID: labels and names can be copied).
pub fn owned_by(job: &Job, build: &ImageBuild) -> bool {
    job.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == build.metadata.uid.as_ref())
}

/// What the builder pods of `jobs` (this run's) reported, by Job name. Read from the pod
/// store: no request.
pub async fn pod_reports(
    ctx: &Context,
    build: &ImageBuild,
    generation: i64,
    jobs: &[Job],
) -> Result<Vec<(String, PodReport)>> {
    if jobs.is_empty() {
        // No Job of the run, so no pod can be one of its builders.
        return Ok(Vec::new());
    }
    ready(&ctx.stores.pods).await?;
    let namespace = build.namespace().unwrap_or_default();
    let label = crate::plan::dns_label(&build.name_any(), 63);
    let generation = generation.to_string();
    let mut pods = ctx.stores.pods.state_filter(|pod| {
        pod.metadata.namespace.as_deref() == Some(namespace.as_str())
            && pod.labels().get(LABEL_IMAGEBUILD) == Some(&label)
            && pod.labels().get(LABEL_GENERATION) == Some(&generation)
    });
    // The store has no order; a list had the API server's (by name).
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(pods
        .iter()
        .filter_map(|pod| Some((owning_job(pod, jobs)?, pod_report(pod))))
        .collect())
}

/// How the cluster's nodes stand for each platform of `plan`: which qualify for its builder
/// pods (with `build`'s node selector and tolerations), natively or to emulate it. Read
/// from the node store: no request.
pub async fn nodes(ctx: &Context, build: &ImageBuild, plan: &BuildPlan) -> Result<Nodes> {
    ready(&ctx.stores.nodes).await?;
    let constraints = PodConstraints::of(&build.spec);
    Ok(Nodes::survey(plan, constraints, &ctx.stores.nodes.state()))
}

/// Reads a Secret of the ImageBuild's own namespace: a spec can never borrow another
/// namespace's Secret.
pub async fn read_secret(ctx: &Context, build: &ImageBuild, name: &str) -> Result<Secret> {
    let namespace = build.namespace().unwrap_or_default();
    Api::<Secret>::namespaced(ctx.client.clone(), &namespace)
        .get(name)
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 404 => ReconcileError::SecretMissing {
                namespace,
                name: name.to_string(),
            },
            source => ReconcileError::ReadSecret {
                name: name.to_string(),
                source,
            },
        })
}

pub fn secret_value(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret.data.as_ref()?.get(key).map(|v| v.0.clone())
}

/// The run's commit: from status, from a Job of the run, or from the git server.
pub async fn pin_commit(
    ctx: &Context,
    build: &ImageBuild,
    status: &ImageBuildStatus,
    jobs: &[Job],
) -> Result<String> {
    if let Some(source) = &status.source {
        return Ok(source.commit.clone());
    }
    if let Some(revision) = jobs
        .iter()
        .find_map(|j| j.annotations().get(ANNOTATION_REVISION).cloned())
    {
        return Ok(revision);
    }
    let git = &build.spec.source.git;
    let credentials = match &git.credentials_secret {
        Some(name) if git.url.starts_with("http") => {
            let secret = read_secret(ctx, build, name).await?;
            let text =
                |key| secret_value(&secret, key).map(|v| String::from_utf8_lossy(&v).into_owned());
            match (text("username"), text("password")) {
                (Some(username), Some(password)) => Some(GitCredentials { username, password }),
                _ => {
                    return Err(ReconcileError::SecretKeys {
                        name: name.clone(),
                        keys: "username and password",
                    });
                }
            }
        }
        _ => None,
    };
    Ok(resolve_commit(&git.url, &git.r#ref, credentials.as_ref()).await?)
}
