//! The controller: takes each ImageBuild through one run and reports it.
//!
//! [`reconcile`] reads like the run: validate → observe the Jobs → pin the commit → plan →
//! observe pods or nodes → [`decide::decide`] (pure) → [`act::take`], which carries the step
//! out and reports it through [`act::report`], the only place that writes status or Events.
//!
//! All state lives in the cluster: the run is identified by the ImageBuild's generation and
//! rebuild annotation ([`RunId`]), the commit by the status (or the Jobs' revision
//! annotation), each platform by its deterministically named Job. A restart at any point
//! resumes the run.

mod act;
pub mod client;
pub mod decide;
mod error;
mod events;
mod jobs;
mod notes;
mod observe;
pub mod placement;
mod report;
pub mod signing;
mod stores;
mod written;

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

pub use error::{ReconcileError, Result};
pub use events::{EventStores, trim_event};
pub use observe::trim_node;
pub use stores::{StoreWriters, Stores, trim_job, trim_pod};
pub use written::WrittenStatuses;

use crate::api::{ImageBuild, ImageBuildStatus, SourceStatus};
use crate::plan::{RunId, plan};
use crate::registry::RegistryOptions;
use crate::render::{ANNOTATION_IMAGEBUILD, MANAGER, auth_file};
use crate::settings::{BuilderSettings, KubeVersion};
use crate::status::{Patience, platform_statuses, start_run, stuck};
use crate::telemetry::{Metrics, ReasonLabels};
use crate::validation::ValidSpec;
use decide::{decide, needs_nodes};

/// Controller-wide settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub builder: BuilderSettings,
    pub version: KubeVersion,
    pub history_limit: usize,
    pub registry: RegistryOptions,
    /// How often an unfinished run is looked at even without a watch event.
    pub resync: Duration,
    /// The operator-wide signing key, for ImageBuilds whose `spec.output.signing` names no
    /// keySecret (read and checked once, at start).
    pub signing_key: Option<Arc<crate::supply::SigningKey>>,
    /// How many ImageBuilds are reconciled at once (at least 1).
    pub concurrency: u16,
    /// How long a builder pod may be stuck on something that will not clear by itself (a
    /// kubelet refusal, a missing image or Secret) before its platform fails.
    pub stuck_grace: Duration,
    /// The isolated build namespace: where every ImageBuild's Jobs, pods and per-run Secret
    /// copies live, out of tenants' reach. `None`: each ImageBuild builds in its own
    /// namespace (single-tenant clusters).
    pub build_namespace: Option<String>,
    /// Sign with the operator-wide key builds that run in their ImageBuild's own namespace
    /// (where a tenant can reach them). Off by default: such a run is Stalled.
    pub allow_in_namespace_signing: bool,
}

/// What every reconcile shares: the client, the Event recorder, settings, metrics and the
/// reflectors' stores.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub stores: Stores,
    /// The status this process last wrote to each ImageBuild: see [`WrittenStatuses`].
    written: WrittenStatuses,
}

impl Context {
    pub fn new(client: Client, config: Config, metrics: Arc<Metrics>, stores: Stores) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            metrics,
            stores,
            written: Default::default(),
        }
    }

    /// The ImageBuild's status as it stands ([`WrittenStatuses::observed`]). A reconcile
    /// started by a Job event just after a status write then neither writes the same status
    /// again nor repeats its Events (nor, when the watch lags two writes behind, repeats a
    /// step the earlier status already records).
    pub fn observed_status(&self, build: &ImageBuild) -> ImageBuildStatus {
        self.written.observed(build)
    }

    /// Remembers that `status` was written over `build` (as reconciled), making version
    /// `made`.
    fn wrote(&self, build: &ImageBuild, made: Option<String>, status: ImageBuildStatus) {
        self.written.wrote(build, made, status);
    }
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .expect("whole seconds")
}

/// The run an ImageBuild asks for, with the status it had and the status being written.
pub struct Run {
    id: RunId,
    /// Whether `previous` already describes this run.
    same: bool,
    previous: ImageBuildStatus,
    status: ImageBuildStatus,
    /// When to look again at the latest, though no watch event comes: when the grace
    /// period of a stuck pod ends.
    look_again: Option<Duration>,
}

impl Run {
    /// The run `build` asks for; `previous` is its status as it stands
    /// ([`Context::observed_status`]).
    fn begin(build: &ImageBuild, previous: ImageBuildStatus, history_limit: usize) -> Run {
        let id = RunId::of(build);
        let same = id.is_described_by(&previous);
        let status = match same {
            true => previous.clone(),
            false => start_run(
                &previous,
                id.generation,
                id.rebuild.clone(),
                history_limit,
                now(),
            ),
        };
        let mut status = status;
        // A run that started under an older operator (or whose start time does not parse)
        // gets its start time now, so an emulation grace period always ends.
        if status
            .start_time
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .is_none()
        {
            status.start_time = Some(now().to_string());
        }
        Run {
            id,
            same,
            previous,
            status,
            look_again: None,
        }
    }

    /// How long the run has been going (from `status.startTime`). A start in the future
    /// (clock skew between replicas, an edited status) has not waited at all.
    fn waited(&self) -> Duration {
        self.status
            .start_time
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .and_then(|start| Duration::try_from(now().duration_since(start)).ok())
            .unwrap_or_default()
    }

    /// Whether this run has ended; only a change to the ImageBuild starts another.
    fn is_over(&self) -> bool {
        use crate::api::Phase;
        self.same && matches!(self.previous.phase, Some(Phase::Succeeded | Phase::Failed))
    }
}

/// Reconciles one ImageBuild: one step of its current run.
pub async fn reconcile(build: Arc<ImageBuild>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics.reconciles.inc();
    let mut run = Run::begin(
        &build,
        ctx.observed_status(&build),
        ctx.config.history_limit,
    );
    // The schema and CEL may not have run (Kubernetes 1.24 ignores CEL).
    let valid = match ValidSpec::check(&build) {
        Ok(valid) => valid,
        Err(invalid) => return act::refuse_invalid(&ctx, &build, run, invalid).await,
    };
    if run.is_over() {
        return Ok(Action::await_change());
    }
    let (current, stale) = observe::jobs(&ctx, &build).await?;
    let commit = match observe::pin_commit(&ctx, &build, &run.status, &current).await {
        Ok(commit) => commit,
        Err(e) => return act::pin_failed(&ctx, &build, run, e).await,
    };
    run.status.source = Some(SourceStatus {
        commit: commit.clone(),
    });
    let plan = plan(&valid, &ctx.config.builder, &commit, auth_file(&build));
    jobs::stop_earlier_runs(&ctx, &build, &stale).await?;
    let reports = observe::pod_reports(&ctx, &build, plan.generation, &current).await?;
    let blocked = observe::blocked(&ctx, &current, &reports);
    let patience = Patience {
        now: now(),
        grace: ctx.config.stuck_grace,
    };
    let held_up = reports.iter().filter_map(|(_, r)| r.stuck.as_ref());
    run.look_again = stuck::next_grace_end(held_up.chain(blocked.iter().map(|(_, s)| s)), patience);
    let previous = &run.status.platforms;
    let platforms = platform_statuses(&plan, &current, &reports, &blocked, previous, patience);
    let nodes = match needs_nodes(&plan, &current, &platforms) {
        true => Some(observe::nodes(&ctx, &build, &plan).await?),
        false => None,
    };
    let step = decide(&plan, &current, &platforms, nodes.as_ref(), run.waited());
    let platforms = match &step {
        decide::Step::CreateJobs {
            platforms: creating,
        } => about_to_exist(platforms, creating),
        _ => platforms,
    };
    act::take(&ctx, &build, &plan, run, &current, platforms, step).await
}

/// The platforms whose Jobs this step creates are reported as Pending with no "waiting for
/// its Job" message, which is what they look like once the Job store shows the Jobs: the
/// status written now is then the one that reconcile computes, and is not written again.
/// (A create that fails fails the run or the reconcile, and this status is not written.)
fn about_to_exist(
    mut platforms: Vec<crate::api::PlatformStatus>,
    creating: &[(String, crate::plan::Placement)],
) -> Vec<crate::api::PlatformStatus> {
    for p in platforms.iter_mut() {
        let Some((_, placement)) = creating.iter().find(|(name, _)| *name == p.platform) else {
            continue;
        };
        if p.phase == crate::api::Phase::Pending {
            p.message = None;
            // What the Job's emulated-on annotation will say.
            if let crate::plan::Placement::Emulated { .. } = placement {
                p.emulated = Some(true);
            }
        }
    }
    platforms
}

/// Invalid specs and permanent source errors wait for the user to change the ImageBuild;
/// everything else is retried.
pub fn error_policy(build: Arc<ImageBuild>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ReasonLabels {
            reason: error.reason().into(),
        })
        .inc();
    if error.waits_for_change() {
        return Action::await_change();
    }
    tracing::warn!(imagebuild = %build.name_any(), error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(15))
}

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

/// Runs the controller until SIGTERM/SIGINT, over all namespaces or the given ones. Jobs,
/// builder pods and nodes come from reflectors (one watch each per scope, nodes one for
/// all), so a reconcile reads stores and makes requests only to change something.
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
    let managed = watcher::Config::default()
        .page_size(LIST_PAGE)
        .labels(&format!("{}={MANAGER}", crate::render::LABEL_MANAGED_BY));
    let mut all_stores = Vec::new();
    let controller_config = kube::runtime::controller::Config::default()
        .concurrency(config.concurrency.max(1))
        .debounce(DEBOUNCE);
    let controllers = scopes
        .into_iter()
        .zip(node_events)
        .map(|(namespace, node_events)| {
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
            let (builds, mut build_events) = shared_reflector(
                api::<ImageBuild>(&client, &namespace),
                watcher::Config::default().page_size(LIST_PAGE),
                trim_imagebuild,
                1,
            );
            let (jobs, mut job_events) = shared_reflector(
                api::<Job>(&client, &namespace),
                managed.clone(),
                |j| *j = trim_job(std::mem::take(j)),
                1,
            );
            let (pods, mut pod_events) = shared_reflector(
                api::<Pod>(&client, &namespace),
                managed.clone(),
                |p| *p = trim_pod(std::mem::take(p)),
                1,
            );
            // Why a builder pod does not start, where its status cannot say (`events.rs`).
            let event_watch = |fields| {
                let config = watcher::Config::default()
                    .page_size(LIST_PAGE)
                    .fields(fields);
                let trim = |e: &mut Event| *e = trim_event(std::mem::take(e));
                shared_reflector(api::<Event>(&client, &namespace), config, trim, 1)
            };
            let ((failed_create, mut create_events), (failed_mount, mut mount_events)) = (
                event_watch(events::FAILED_CREATE),
                event_watch(events::FAILED_MOUNT),
            );
            let events = EventStores {
                failed_create,
                failed_mount,
            };
            let stores = Stores::new(jobs.clone(), pods.clone(), nodes.clone(), events);
            all_stores.push(stores.clone());
            let ctx = Arc::new(Context::new(
                client.clone(),
                config.clone(),
                metrics.clone(),
                stores,
            ));
            let waiting = builds.clone();
            let node_changes = NodeChanges::default();
            Controller::for_shared_stream(build_events.remove(0), builds)
                .with_config(controller_config.clone())
                .owns_shared_stream(job_events.remove(0))
                // A builder pod's termination message arrives with a pod update.
                .watches_shared_stream(pod_events.remove(0), |pod: Arc<Pod>| {
                    let name = pod.annotations().get(ANNOTATION_IMAGEBUILD)?.clone();
                    Some(ObjectRef::<ImageBuild>::new(&name).within(&pod.namespace()?))
                })
                .watches_shared_stream(create_events.remove(0), move |e: Arc<Event>| {
                    events::imagebuild_of_job_event(&e, &jobs)
                })
                .watches_shared_stream(mount_events.remove(0), move |e: Arc<Event>| {
                    events::imagebuild_of_pod_event(&e, &pods)
                })
                // A node that changes in what placement reads wakes the builds waiting for one.
                .watches_shared_stream(node_events, move |node: Arc<Node>| {
                    node_changes.wakes(&node, &waiting.state())
                })
                .shutdown_on_signal()
                .run(reconcile, error_policy, ctx)
                .for_each(|result| async move {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "reconcile result");
                    }
                })
        });
    let controllers: Vec<_> = controllers.collect();
    // Before any reconcile: see `Stores::wait_until_ready`.
    tokio::select! {
        () = async {
            for stores in &all_stores {
                stores.wait_until_ready().await;
            }
        } => {}
        () = shutdown_signal() => return,
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

    fn started_at(start: &str) -> Run {
        let build: ImageBuild = serde_json::from_value(serde_json::json!({
            "apiVersion": "archforge.dev/v1alpha1", "kind": "ImageBuild",
            "metadata": {"name": "app", "generation": 1},
            "spec": {"source": {"git": {"url": "https://g.example.com/a.git"}},
                     "platforms": ["linux/amd64"],
                     "output": {"image": "r.example.com/a:v1"}},
            "status": {"observedGeneration": 1, "startTime": start}
        }))
        .unwrap();
        let previous = build.status.clone().unwrap_or_default();
        Run::begin(&build, previous, 10)
    }

    #[test]
    fn a_start_in_the_future_has_not_waited() {
        let future = (now() + jiff::SignedDuration::from_hours(1)).to_string();
        assert_eq!(started_at(&future).waited(), Duration::ZERO);
        let past = (now() - jiff::SignedDuration::from_mins(10)).to_string();
        let waited = started_at(&past).waited();
        assert!(waited >= Duration::from_secs(599), "{waited:?}");
    }

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

    #[test]
    fn an_unreadable_start_time_is_reset_so_the_grace_period_ends() {
        let run = started_at("not a time");
        let start = run.status.start_time.as_deref().unwrap();
        assert!(start.parse::<jiff::Timestamp>().is_ok(), "{start}");
    }
}
