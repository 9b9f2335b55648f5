//! The edge of the queue: feeds [`crate::queue::decide`] from the stores, admits a run or
//! reports it Queued, and wakes the queued runs that may start.
//!
//! The queue is the cluster's: queued runs are the ImageBuilds whose status says Queued,
//! running ones are the Jobs. What this process keeps is only what the stores may not show
//! yet: the runs admitted by reconciles under way (their Jobs about to be created), so that
//! two reconciles at once do not both take the last slot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;

use super::decide::Step;
use super::report::{Note, report};
use super::{Context, Run, Stores, now};
use crate::api::{ImageBuild, Phase, PlatformStatus};
use crate::plan::{BuildPlan, Placement, Platform};
use crate::queue::seen::{job_finished, queued_runs, seen_job};
use crate::queue::{Decision, Queued, SeenJob, Waiting, decide};
use crate::status::{progress, set_phase_conditions};
use crate::telemetry::NamespaceLabels;

/// The reason of the Reconciling condition (and of the Event) of a queued run.
pub const QUEUED: &str = "Queued";

/// How often a queued run is looked at without being woken: a safety net for slots freed
/// by what wakes nothing (an ImageBuild deleted with its running Jobs).
const LOOK_AGAIN: Duration = Duration::from_secs(60);

type Key = (String, String);

/// What every controller of the process shares about the queue.
#[derive(Default)]
pub struct Queue {
    /// The stores of every watched scope.
    scopes: Mutex<Vec<Stores>>,
    /// Runs admitted by reconciles under way, with the Jobs they are about to create.
    admitted: Mutex<HashMap<Key, Vec<SeenJob>>>,
    /// Each controller's trigger: a queued run that may start is reconciled at once.
    wakers: Mutex<Vec<UnboundedSender<ObjectRef<ImageBuild>>>>,
    /// The isolated build namespace, where the Jobs that count are (see [`seen_job`]).
    build_namespace: Option<String>,
}

impl Queue {
    /// The queue of an operator whose builds run in `build_namespace` (`None`: in their
    /// ImageBuild's own namespace).
    pub fn new(build_namespace: Option<String>) -> Self {
        Queue {
            build_namespace,
            ..Default::default()
        }
    }

    /// Adds the stores of one watched scope.
    pub fn add_scope(&self, stores: Stores) {
        self.scopes.lock().expect("queue scopes lock").push(stores);
    }

    /// Adds a controller's trigger.
    pub fn add_waker(&self, waker: UnboundedSender<ObjectRef<ImageBuild>>) {
        self.wakers.lock().expect("queue wakers lock").push(waker);
    }

    /// Every builder Job the stores show (once, though scopes may share a store), with the
    /// runs admitted but not created yet.
    fn jobs(&self, admitted: &HashMap<Key, Vec<SeenJob>>) -> Vec<SeenJob> {
        let scopes = self.scopes.lock().expect("queue scopes lock");
        let mut jobs: HashMap<ObjectRef<Job>, Arc<Job>> = HashMap::new();
        for stores in scopes.iter() {
            for job in stores.all_jobs() {
                jobs.insert(ObjectRef::from_obj(&*job), job);
            }
        }
        let builds = self.build_namespace.as_deref();
        let mut seen: Vec<SeenJob> = jobs.values().filter_map(|j| seen_job(j, builds)).collect();
        seen.extend(admitted.values().flatten().cloned());
        seen
    }

    /// The queued runs of every scope, without `except`.
    fn waiting(&self, jobs: &[SeenJob], except: Option<&Key>) -> Vec<Waiting> {
        let scopes = self.scopes.lock().expect("queue scopes lock");
        let builds: Vec<Arc<ImageBuild>> = scopes.iter().flat_map(|s| s.builds.state()).collect();
        let mut waiting = queued_runs(builds.iter().map(|b| &**b), jobs);
        waiting.retain(|w| Some(&w.key()) != except);
        waiting
    }

    /// Reconciles the runs `decision` starts (in every controller: each skips what its
    /// store does not hold).
    fn wake(&self, decision: &Decision, except: Option<&Key>) {
        let wakers = self.wakers.lock().expect("queue wakers lock");
        for (ns, name) in decision.start.iter().filter(|k| Some(*k) != except) {
            for waker in wakers.iter() {
                let _ = waker.unbounded_send(ObjectRef::new(name).within(ns));
            }
        }
    }

    fn lock_admitted(&self) -> MutexGuard<'_, HashMap<Key, Vec<SeenJob>>> {
        self.admitted.lock().expect("queue admissions lock")
    }
}

/// A run admitted by this reconcile: stands in for its Jobs until they are created (the
/// store, or the created-Jobs record, then shows them).
pub struct Admitted<'a> {
    queue: &'a Queue,
    key: Key,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        self.queue.lock_admitted().remove(&self.key);
    }
}

/// The operator's limits, with the per-namespace limit of every namespace a BuildPolicy
/// gives one (`maxConcurrentBuilds`, the smallest of those selecting it). Read from stores.
fn limits(ctx: &Context) -> crate::queue::Limits {
    let mut limits = ctx.config.limits.clone();
    let policies = ctx.stores.policies.policies.state();
    if policies.is_empty() {
        return limits;
    }
    for ns in ctx.stores.policies.namespaces.state() {
        let labels = ns.metadata.labels.clone().unwrap_or_default();
        let selecting = crate::policy::selecting(policies.iter().map(|p| &**p), &labels);
        if let Some(n) = crate::policy::namespace_limit_of(&selecting) {
            limits.from_policies.insert(ns.name_any(), n);
        }
    }
    limits
}

/// Whether the queue decides if `run` may start: limits are set, and its run has no Job
/// yet and never had (a run whose Job went mid-run was admitted before).
fn applies(ctx: &Context, run: &Run, current: &[Job]) -> bool {
    let started = run.same
        && matches!(
            run.previous.phase,
            Some(Phase::Building | Phase::Assembling)
        );
    !limits(ctx).is_unlimited() && current.is_empty() && !started
}

/// What the queue says about a run's next step.
pub enum Gate<'a> {
    /// The step goes ahead; a run admitted now holds its admission until its Jobs exist.
    Open(Option<Admitted<'a>>),
    /// The run waits in the queue.
    Closed(Queued),
}

/// Whether `step` may be taken now: only the creation of a new run's Jobs is gated.
pub fn gate<'a>(
    ctx: &'a Context,
    build: &ImageBuild,
    run: &Run,
    current: &[Job],
    step: &Step,
) -> Gate<'a> {
    match step {
        Step::CreateJobs { platforms } if applies(ctx, run, current) => {
            match admit(ctx, build, run, platforms) {
                Ok(admitted) => Gate::Open(Some(admitted)),
                Err(place) => Gate::Closed(place),
            }
        }
        _ => Gate::Open(None),
    }
}

/// The node architecture of each Job `creating` makes.
fn arches(creating: &[(String, Placement)]) -> Vec<String> {
    creating
        .iter()
        .filter_map(|(platform, placement)| match placement {
            Placement::Emulated { host } => Some(host.clone()),
            Placement::Native => platform.parse::<Platform>().ok().map(|p| p.architecture),
        })
        .collect()
}

/// Decides whether `build`'s run, about to create the Jobs of `creating`, may start now;
/// if not, its place in the queue.
fn admit<'a>(
    ctx: &'a Context,
    build: &ImageBuild,
    run: &Run,
    creating: &[(String, Placement)],
) -> Result<Admitted<'a>, Queued> {
    let queue = &*ctx.queue;
    let me = Waiting {
        namespace: build.namespace().unwrap_or_default(),
        name: build.name_any(),
        generation: build.metadata.generation,
        since: run
            .status
            .start_time
            .as_deref()
            .and_then(|t| t.parse().ok()),
        arches: arches(creating),
    };
    let key = me.key();
    // Held while deciding: two reconciles at once see each other's admission.
    let mut admitted = queue.lock_admitted();
    let jobs = queue.jobs(&admitted);
    let mut waiting = queue.waiting(&jobs, Some(&key));
    waiting.push(me.clone());
    let decision = decide(&limits(ctx), &jobs, &waiting);
    ctx.metrics.set_queue_lengths(&decision.lengths());
    queue.wake(&decision, Some(&key));
    let Some(place) = decision.queued.get(&key) else {
        let jobs = me.arches.iter().map(|arch| SeenJob {
            namespace: me.namespace.clone(),
            build: me.name.clone(),
            generation: me.generation,
            arch: arch.clone(),
            running: true,
            created: Some(now()),
        });
        admitted.insert(key.clone(), jobs.collect());
        observe_wait(ctx, run, &me.namespace);
        return Ok(Admitted { queue, key });
    };
    Err(place.clone())
}

/// The queue wait of a run that leaves the queue.
fn observe_wait(ctx: &Context, run: &Run, namespace: &str) {
    let was_queued = run.same && run.previous.phase == Some(Phase::Queued);
    let start = run
        .status
        .start_time
        .as_deref()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let waited = match (was_queued, start) {
        (true, Some(start)) => now().duration_since(start).as_secs_f64().max(0.0),
        _ => 0.0,
    };
    let labels = NamespaceLabels {
        namespace: namespace.to_string(),
    };
    ctx.metrics
        .queue_wait
        .get_or_create(&labels)
        .observe(waited);
}

/// Wakes the queued runs that may start now, when one of `current` finished (freeing its
/// slot). Store reads only.
pub fn wake_next(ctx: &Context, current: &[Job]) {
    if limits(ctx).is_unlimited() || !current.iter().any(job_finished) {
        return;
    }
    let queue = &*ctx.queue;
    let admitted = queue.lock_admitted();
    let jobs = queue.jobs(&admitted);
    let waiting = queue.waiting(&jobs, None);
    drop(admitted);
    let decision = decide(&limits(ctx), &jobs, &waiting);
    ctx.metrics.set_queue_lengths(&decision.lengths());
    queue.wake(&decision, None);
}

/// Reports a run that waits in the queue: phase Queued, its place and what it waits for,
/// one Normal Event when it starts waiting.
pub async fn wait(
    ctx: &Context,
    build: &ImageBuild,
    mut run: Run,
    plan: &BuildPlan,
    platforms: Vec<PlatformStatus>,
    place: Queued,
) -> super::Result<Action> {
    let message = place.message();
    let was_queued = run.same && run.previous.phase == Some(Phase::Queued);
    run.status.progress = Some(progress(&platforms));
    run.status.platforms = platforms;
    let generation = plan.generation;
    set_phase_conditions(
        &mut run.status,
        Phase::Queued,
        QUEUED,
        &message,
        generation,
        now(),
    );
    let notes = match was_queued {
        true => vec![],
        false => vec![Note::normal(QUEUED, "Admit", message, None)],
    };
    report(ctx, build, &run.status, notes).await?;
    Ok(Action::requeue(ctx.config.resync.min(LOOK_AGAIN)))
}
