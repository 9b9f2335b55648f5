//! The watches behind the controller: one shared reflector per kind and scope, and what
//! wakes which ImageBuild.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

use super::policy_watch::{NamespaceChanges, woken_by_policy};
use super::stores::{PolicyStores, trim_namespace};
use super::*;
use crate::api::BuildPolicy;
use crate::render::ANNOTATION_IMAGEBUILD;
use crate::telemetry::Metrics;

/// How many watch events a reflector holds for a slow controller before it waits.
const SUBSCRIBER_BUFFER: usize = 1024;

/// Objects per page of a reflector's list. Each page is held whole, untrimmed, until its
/// objects are stored, and four reflectors list at once at start: kube's default of 500
/// full pods or Jobs (managed fields, pod templates) is most of the operator's peak memory.
const LIST_PAGE: u32 = 50;

/// Events that arrive within this window of each other start one reconcile: a Job's and
/// its pod's updates, two platforms finishing together.
const DEBOUNCE: Duration = Duration::from_millis(500);

/// Watches `api` into a shared store (objects trimmed by `trim`), on a task of its own so
/// the store fills whatever the controllers are doing. Returns the store and one event
/// stream per `subscribers`.
fn shared_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    trim: fn(&mut K),
    subscribers: usize,
) -> (Store<K>, Vec<impl Stream<Item = Arc<K>> + Send + 'static>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store_shared::<K>(SUBSCRIBER_BUFFER);
    let events = (0..subscribers)
        .map(|_| writer.subscribe().expect("a shared store has subscribers"))
        .collect();
    let kind = K::kind(&()).to_string();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(trim)
        .reflect_shared(writer)
        .for_each(move |event| {
            if let Err(e) = event {
                tracing::warn!(kind, error = %e, "watch failed; retrying with backoff");
            }
            futures::future::ready(())
        });
    tokio::spawn(stream);
    (store, events)
}

/// Drops what no step reads from a stored ImageBuild: its managed fields.
fn trim_imagebuild(build: &mut ImageBuild) {
    build.metadata.managed_fields = None;
}

/// Whether an ImageBuild waits for a node (of an architecture, or one that can emulate it):
/// only these are looked at again when a node changes.
pub fn waits_for_nodes(build: &ImageBuild) -> bool {
    build.status.as_ref().is_some_and(|s| {
        s.phase == Some(crate::api::Phase::Pending)
            && s.conditions
                .iter()
                .any(|c| c.type_ == crate::status::RECONCILING && c.reason == "NoNodeForPlatform")
    })
}

/// Which ImageBuilds a node event wakes: those waiting for a node, and only when the node
/// changed in what placement reads (labels, cordon, taints, Ready). A trimmed node has no heartbeat
/// times, but the watch still delivers every heartbeat update.
#[derive(Default)]
pub struct NodeChanges {
    seen: std::sync::Mutex<std::collections::HashMap<String, serde_json::Value>>,
}

impl NodeChanges {
    pub fn wakes(&self, node: &Node, builds: &[Arc<ImageBuild>]) -> Vec<ObjectRef<ImageBuild>> {
        let what = serde_json::to_value((&node.metadata.labels, &node.spec, &node.status))
            .unwrap_or_default();
        let changed = self
            .seen
            .lock()
            .expect("seen nodes lock")
            .insert(node.name_any(), what.clone())
            .is_none_or(|before| before != what);
        if !changed {
            return Vec::new();
        }
        builds
            .iter()
            .filter(|b| waits_for_nodes(b))
            .map(|b| ObjectRef::from_obj(&**b))
            .collect()
    }
}

/// A namespaced API over `namespace`, or over all namespaces.
fn api<K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>>(
    client: &Client,
    namespace: &Option<String>,
) -> Api<K>
where
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A stream of one reflector's events, for one controller.
type Events<K> = std::pin::Pin<Box<dyn Stream<Item = Arc<K>> + Send>>;

/// The watches of the objects a run makes (Jobs, builder pods, the Events about them) for
/// one controller: the stores it reads and the events that wake it.
struct Children {
    jobs: Store<Job>,
    pods: Store<Pod>,
    events: EventStores,
    job_events: Events<Job>,
    pod_events: Events<Pod>,
    create_events: Events<Event>,
    mount_events: Events<Event>,
}

fn boxed<K: 'static>(streams: Vec<impl Stream<Item = Arc<K>> + Send + 'static>) -> Vec<Events<K>> {
    streams
        .into_iter()
        .map(|s| Box::pin(s) as Events<K>)
        .collect()
}

/// Watches the run objects of `namespace` (all when `None`) for `controllers` controllers,
/// which share the stores.
fn watch_children(
    client: &Client,
    namespace: &Option<String>,
    controllers: usize,
) -> Vec<Children> {
    let managed = watcher::Config::default()
        .page_size(LIST_PAGE)
        .labels(&format!("{}={MANAGER}", crate::render::LABEL_MANAGED_BY));
    let (jobs, job_events) = shared_reflector(
        api::<Job>(client, namespace),
        managed.clone(),
        |j| *j = trim_job(std::mem::take(j)),
        controllers,
    );
    let (pods, pod_events) = shared_reflector(
        api::<Pod>(client, namespace),
        managed,
        |p| *p = trim_pod(std::mem::take(p)),
        controllers,
    );
    // Why a builder pod does not start, where its status cannot say (`events.rs`).
    let event_watch = |fields| {
        let config = watcher::Config::default()
            .page_size(LIST_PAGE)
            .fields(fields);
        let trim = |e: &mut Event| *e = trim_event(std::mem::take(e));
        shared_reflector(api::<Event>(client, namespace), config, trim, controllers)
    };
    let (failed_create, create_events) = event_watch(events::FAILED_CREATE);
    let (failed_mount, mount_events) = event_watch(events::FAILED_MOUNT);
    let events = EventStores {
        failed_create,
        failed_mount,
    };
    let mut streams = boxed(job_events)
        .into_iter()
        .zip(boxed(pod_events))
        .zip(boxed(create_events).into_iter().zip(boxed(mount_events)));
    (0..controllers)
        .filter_map(|_| streams.next())
        .map(
            |((job_events, pod_events), (create_events, mount_events))| Children {
                jobs: jobs.clone(),
                pods: pods.clone(),
                events: events.clone(),
                job_events,
                pod_events,
                create_events,
                mount_events,
            },
        )
        .collect()
}

/// The ImageBuild a builder pod of its own namespace names.
fn imagebuild_of_pod(pod: &Pod) -> Option<ObjectRef<ImageBuild>> {
    let name = pod.annotations().get(ANNOTATION_IMAGEBUILD)?.clone();
    Some(ObjectRef::<ImageBuild>::new(&name).within(&pod.namespace()?))
}

/// `controller` woken by Job and builder pod updates. Owner references cannot cross
/// namespaces: in the build namespace, Jobs and pods name their ImageBuild in annotations
/// (which only the operator may write there).
fn watch_jobs_and_pods(
    controller: Controller<ImageBuild>,
    jobs: Events<Job>,
    pods: Events<Pod>,
    isolated: bool,
) -> Controller<ImageBuild> {
    use crate::plan::isolated::imagebuild_ref;
    match isolated {
        true => controller
            .watches_shared_stream(jobs, |j: Arc<Job>| imagebuild_ref(&j.metadata))
            .watches_shared_stream(pods, |p: Arc<Pod>| imagebuild_ref(&p.metadata)),
        // A builder pod's termination message arrives with a pod update.
        false => controller
            .owns_shared_stream(jobs)
            .watches_shared_stream(pods, |p: Arc<Pod>| imagebuild_of_pod(&p)),
    }
}

/// The watches of BuildPolicies and namespaces, for one controller.
struct PolicyWatch {
    stores: PolicyStores,
    policy_events: Events<BuildPolicy>,
    namespace_events: Events<Namespace>,
}

/// Watches the cluster's BuildPolicies and namespaces (trimmed to name and labels) for
/// `controllers` controllers, which share the stores.
fn watch_policies(client: &Client, controllers: usize, served: bool) -> Vec<PolicyWatch> {
    let config = watcher::Config::default().page_size(LIST_PAGE);
    let (policies, policy_events) = match served {
        true => {
            let (store, events) = shared_reflector(
                Api::<BuildPolicy>::all(client.clone()),
                config.clone(),
                |p| p.metadata.managed_fields = None,
                controllers,
            );
            (store, boxed(events))
        }
        false => no_policies(controllers),
    };
    let (namespaces, namespace_events) = shared_reflector(
        Api::<Namespace>::all(client.clone()),
        config,
        |n| *n = trim_namespace(std::mem::take(n)),
        controllers,
    );
    let stores = PolicyStores {
        policies,
        namespaces,
    };
    policy_events
        .into_iter()
        .zip(boxed(namespace_events))
        .map(|(policy_events, namespace_events)| PolicyWatch {
            stores: stores.clone(),
            policy_events,
            namespace_events,
        })
        .collect()
}

/// An empty, ready BuildPolicy store and event streams that never yield: for a cluster
/// that does not serve the BuildPolicy CRD, where no policy can exist.
fn no_policies(controllers: usize) -> (Store<BuildPolicy>, Vec<Events<BuildPolicy>>) {
    let mut writer = reflector::store::Writer::<BuildPolicy>::default();
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let never = || Box::pin(futures::stream::pending()) as Events<BuildPolicy>;
    (
        writer.as_reader(),
        (0..controllers).map(|_| never()).collect(),
    )
}

/// Whether the API server serves BuildPolicies. Helm installs a chart's CRDs on install,
/// not on upgrade, so an upgraded install may lack the CRD: the operator then runs without
/// policies (none can exist) instead of waiting forever for a list that cannot succeed.
/// When discovery itself fails the answer is yes: the watch retries, and nothing starts
/// before it has listed, so no policy is ever skipped.
async fn serves_build_policies(client: &Client) -> bool {
    match crd_served(client).await {
        Some(false) => {
            tracing::warn!(
                "the API server does not serve BuildPolicies (apply crds/buildpolicies.archforge.dev.yaml: Helm upgrades do not install new CRDs); running without policies until it does, then restarting"
            );
            false
        }
        _ => true,
    }
}

/// While the BuildPolicy CRD is not served, looks again every `every`; once it is, stops
/// the operator gracefully (SIGTERM to itself), so that its Deployment starts it again with
/// the policies watched: a policy created after the CRD is applied is then enforced.
async fn restart_when_policies_are_served(client: Client, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        if crd_served(&client).await == Some(true) {
            tracing::warn!("the API server serves BuildPolicies now; restarting to enforce them");
            // SAFETY: kill(2) on this process with a signal it handles (graceful shutdown).
            unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
            return;
        }
    }
}

/// Whether the API server serves BuildPolicies; `None` when discovery failed.
async fn crd_served(client: &Client) -> Option<bool> {
    use kube::Resource;
    let version = BuildPolicy::api_version(&()).to_string();
    let list = client.list_api_group_resources(&version).await.ok()?;
    Some(list.resources.iter().any(|r| r.name == "buildpolicies"))
}

/// `controller` woken by BuildPolicy changes and namespace label changes (`policy_watch.rs`).
fn watch_policy_changes(
    controller: Controller<ImageBuild>,
    watch: PolicyWatch,
    builds: &Store<ImageBuild>,
) -> Controller<ImageBuild> {
    let (by_policy, by_namespace) = (builds.clone(), builds.clone());
    let stores = watch.stores;
    let namespace_changes = NamespaceChanges::default();
    controller
        .watches_shared_stream(watch.policy_events, move |p: Arc<BuildPolicy>| {
            woken_by_policy(&p, &by_policy.state(), |ns| stores.labels(ns))
        })
        .watches_shared_stream(watch.namespace_events, move |ns: Arc<Namespace>| {
            namespace_changes.wakes(&ns, &by_namespace.state())
        })
}

/// One controller over the ImageBuilds of `namespace` (all when `None`).
fn controller(
    client: &Client,
    namespace: Option<String>,
    (children, policy): (Children, PolicyWatch),
    nodes: (Store<Node>, Events<Node>),
    config: &Config,
    metrics: &Arc<Metrics>,
    queue: &Arc<queued::Queue>,
) -> (
    (Stores, Store<ImageBuild>),
    impl std::future::Future<Output = ()>,
) {
    let (builds, mut build_events) = shared_reflector(
        api::<ImageBuild>(client, &namespace),
        watcher::Config::default().page_size(LIST_PAGE),
        trim_imagebuild,
        1,
    );
    let isolated = config.build_namespace.is_some();
    let (jobs, pods) = (children.jobs.clone(), children.pods.clone());
    let stores = Stores::new(
        children.jobs,
        children.pods,
        nodes.0,
        children.events,
        policy.stores.clone(),
        builds.clone(),
    );
    let ctx = Context::new(
        client.clone(),
        config.clone(),
        metrics.clone(),
        stores.clone(),
    );
    let ctx = Arc::new(ctx.sharing(queue.clone()));
    // A queued run that may start, because another finished, is reconciled at once.
    let (waker, woken) = futures::channel::mpsc::unbounded();
    queue.add_waker(waker);
    let waiting = builds.clone();
    let all_builds = builds.clone();
    let node_changes = NodeChanges::default();
    let controller_config = kube::runtime::controller::Config::default()
        .concurrency(config.concurrency.max(1))
        .debounce(DEBOUNCE);
    let controller = Controller::for_shared_stream(build_events.remove(0), builds)
        .with_config(controller_config);
    let controller = watch_jobs_and_pods(
        controller,
        children.job_events,
        children.pod_events,
        isolated,
    );
    let controller = watch_policy_changes(controller, policy, &waiting);
    let run = controller
        .watches_shared_stream(children.create_events, move |e: Arc<Event>| {
            events::imagebuild_of_job_event(&e, &jobs, isolated)
        })
        .watches_shared_stream(children.mount_events, move |e: Arc<Event>| {
            events::imagebuild_of_pod_event(&e, &pods, isolated)
        })
        // A node that changes in what placement reads wakes the builds waiting for one.
        .watches_shared_stream(nodes.1, move |node: Arc<Node>| {
            node_changes.wakes(&node, &waiting.state())
        })
        .reconcile_on(woken)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile result");
            }
        });
    ((stores, all_builds), run)
}

/// Runs the controller until SIGTERM/SIGINT, over all namespaces or the given ones. Jobs,
/// builder pods and nodes come from reflectors (one watch each per scope, nodes one for
/// all; in an isolated build namespace, one each for that namespace), so a reconcile reads
/// stores and makes requests only to change something.
pub async fn run(client: Client, namespaces: Vec<String>, config: Config, metrics: Arc<Metrics>) {
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    let (nodes, node_events) = shared_reflector(
        Api::<Node>::all(client.clone()),
        watcher::Config::default().page_size(LIST_PAGE),
        |n| *n = trim_node(std::mem::take(n)),
        scopes.len(),
    );
    let children: Vec<Children> = match &config.build_namespace {
        Some(ns) => watch_children(&client, &Some(ns.clone()), scopes.len()),
        None => scopes
            .iter()
            .flat_map(|scope| watch_children(&client, scope, 1))
            .collect(),
    };
    let served = serves_build_policies(&client).await;
    if !served {
        tokio::spawn(restart_when_policies_are_served(
            client.clone(),
            config.resync.min(Duration::from_secs(300)),
        ));
    }
    let policies = watch_policies(&client, scopes.len(), served);
    // One queue for the whole process: the limits are the cluster's, not a scope's.
    let queue = Arc::new(queued::Queue::new(config.build_namespace.clone()));
    let (all_stores, controllers): (Vec<_>, Vec<_>) = scopes
        .clone()
        .into_iter()
        .zip(children.into_iter().zip(policies))
        .zip(node_events)
        .map(|((namespace, children), node_events)| {
            let node_events = Box::pin(node_events) as Events<Node>;
            let nodes = (nodes.clone(), node_events);
            controller(
                &client, namespace, children, nodes, &config, &metrics, &queue,
            )
        })
        .unzip();
    let (all_stores, builds): (Vec<Stores>, Vec<Store<ImageBuild>>) =
        all_stores.into_iter().unzip();
    // Before any reconcile: see `Stores::wait_until_ready`.
    tokio::select! {
        () = async {
            for stores in &all_stores {
                stores.wait_until_ready().await;
            }
            for builds in &builds {
                let _ = builds.wait_until_ready().await;
            }
        } => {}
        () = shutdown_signal() => return,
    }
    if let (Some(namespace), Some(stores)) = (&config.build_namespace, all_stores.first()) {
        let jobs = stores.jobs.clone();
        let every = config.resync.min(Duration::from_secs(300));
        let sweep = sweep::sweep(
            client.clone(),
            namespace.clone(),
            jobs,
            builds,
            scopes,
            every,
        );
        tokio::spawn(sweep);
    }
    metrics.set_ready(true);
    futures::future::join_all(controllers).await;
}

/// Resolves on SIGTERM or SIGINT: what `Controller::shutdown_on_signal` listens for, for the
/// waits before the controller starts.
pub async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build_in(name: &str, status: serde_json::Value) -> Arc<ImageBuild> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "archforge.dev/v1alpha1", "kind": "ImageBuild",
                "metadata": {"name": name, "namespace": "ns", "generation": 1},
                "spec": {"source": {"git": {"url": "https://g.example.com/a.git"}},
                         "platforms": ["linux/arm64"],
                         "output": {"image": "r.example.com/a:v1"}},
                "status": status
            }))
            .unwrap(),
        )
    }

    fn node(arch: &str, ready: &str, heartbeat: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "labels": {"kubernetes.io/arch": arch},
                         "managedFields": [{"manager": "kubelet"}]},
            "spec": {"podCIDR": "10.0.0.0/24", "providerID": "cloud://n1",
                     "taints": [{"key": "dedicated", "value": "arm", "effect": "NoSchedule"},
                                {"key": "spot", "effect": "NoExecute", "timeAdded": format!("2026-11-23T{heartbeat}:00Z")}]},
            "status": {"conditions": [
                {"type": "Ready", "status": ready, "lastHeartbeatTime": format!("2026-11-23T{heartbeat}:00Z")},
                {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": format!("2026-11-23T{heartbeat}:00Z")}],
                "images": [{"names": ["registry.example.com/big:1"], "sizeBytes": 1}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_node_change_wakes_only_the_builds_waiting_for_a_node() {
        let waiting = build_in(
            "waiting",
            serde_json::json!({"phase": "Pending", "conditions": [
                {"type": "Reconciling", "status": "True", "reason": "NoNodeForPlatform", "message": "m",
                 "lastTransitionTime": "2026-11-23T10:00:00Z"}]}),
        );
        let building = build_in(
            "building",
            serde_json::json!({"phase": "Building", "conditions": [
                {"type": "Reconciling", "status": "True", "reason": "Building", "message": "m",
                 "lastTransitionTime": "2026-11-23T10:00:00Z"}]}),
        );
        let fresh = build_in("fresh", serde_json::Value::Null);
        let builds = vec![waiting, building, fresh];
        let changes = NodeChanges::default();
        let woken = |n: Node| {
            changes
                .wakes(&trim_node(n), &builds)
                .into_iter()
                .map(|r| r.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(woken(node("arm64", "False", "10:00")), vec!["waiting"]);
        // Only the heartbeat moved: nothing placement reads changed.
        assert_eq!(woken(node("arm64", "False", "10:01")), Vec::<String>::new());
        assert_eq!(woken(node("arm64", "True", "10:02")), vec!["waiting"]);
        assert_eq!(woken(node("amd64", "True", "10:03")), vec!["waiting"]);
        // A taint removed: a build waiting for a node that tolerates it may start now.
        let mut untainted = node("amd64", "True", "10:04");
        untainted.spec.as_mut().unwrap().taints = None;
        assert_eq!(woken(untainted), vec!["waiting"]);
    }

    #[test]
    fn stored_nodes_keep_only_what_placement_reads() {
        let trimmed = serde_json::to_value(trim_node(node("arm64", "True", "10:00"))).unwrap();
        assert_eq!(
            trimmed,
            serde_json::json!({"apiVersion": "v1", "kind": "Node",
                               "metadata": {"name": "n1", "labels": {"kubernetes.io/arch": "arm64"}},
                               "spec": {"taints": [{"key": "dedicated", "value": "arm", "effect": "NoSchedule"},
                                                   {"key": "spot", "effect": "NoExecute"}]},
                               "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
        );
    }
}
