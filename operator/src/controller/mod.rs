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
mod cleanup;
pub mod client;
mod copies;
pub mod decide;
mod error;
mod events;
mod jobs;
mod notes;
mod observe;
pub mod placement;
pub mod policy_watch;
mod publish;
pub mod queued;
mod report;
pub mod signing;
mod stores;
mod sweep;
mod watch;
mod written;

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, ResourceExt};

pub use error::{ReconcileError, Result};
pub use events::{EventStores, trim_event};
pub use observe::trim_node;
pub use stores::{PolicyStores, StoreWriters, Stores, trim_job, trim_namespace, trim_pod};
pub use watch::{NodeChanges, run, shutdown_signal, waits_for_nodes};
pub use written::WrittenStatuses;

use crate::api::{ImageBuild, ImageBuildStatus, Phase, SourceStatus};
use crate::plan::{BuildPlan, RunId, plan};
use crate::registry::RegistryOptions;
use crate::render::{MANAGER, auth_file};
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
    /// How many builder Jobs may run at once; a run beyond them waits, Queued.
    pub limits: crate::queue::Limits,
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
    /// The queue every controller of the process shares ([`queued::Queue`]).
    queue: Arc<queued::Queue>,
}

impl Context {
    pub fn new(client: Client, config: Config, metrics: Arc<Metrics>, stores: Stores) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let builds = config.build_namespace.clone();
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            metrics,
            stores: stores.clone(),
            written: Default::default(),
            queue: {
                let queue = queued::Queue::new(builds);
                queue.add_scope(stores);
                Arc::new(queue)
            },
        }
    }

    /// This context with `queue`, shared with the controllers of other watched scopes
    /// (its stores join it).
    pub fn sharing(mut self, queue: Arc<queued::Queue>) -> Self {
        queue.add_scope(self.stores.clone());
        self.queue = queue;
        self
    }

    /// The queue this context decides with.
    pub fn queue(&self) -> &Arc<queued::Queue> {
        &self.queue
    }

    /// The ImageBuild's status as it stands ([`WrittenStatuses::observed`]). A reconcile
    /// started by a Job event just after a status write then neither writes the same status
    /// again nor repeats its Events (nor, when the watch lags two writes behind, repeats a
    /// step the earlier status already records).
    pub fn observed_status(&self, build: &ImageBuild) -> ImageBuildStatus {
        self.written.observed(build)
    }

    /// Whether runs build in the isolated build namespace.
    pub fn isolated(&self) -> bool {
        self.config.build_namespace.is_some()
    }

    /// The namespace `build`'s Jobs, pods and Secret copies live in: the build namespace,
    /// or the ImageBuild's own.
    pub fn jobs_namespace(&self, build: &ImageBuild) -> String {
        match &self.config.build_namespace {
            Some(ns) => ns.clone(),
            None => build.namespace().unwrap_or_default(),
        }
    }

    /// The Job names of `build`'s current run.
    fn current_job_names(&self, build: &ImageBuild) -> Vec<String> {
        match self.isolated() {
            true => crate::plan::isolated::current_job_names(build),
            false => crate::plan::current_job_names(build),
        }
    }

    /// `plan` as it runs here: in the build namespace, with Jobs named for it.
    fn placed(&self, plan: BuildPlan, build: &ImageBuild) -> BuildPlan {
        match self.isolated() {
            true => crate::plan::isolated::isolate(plan, build),
            false => plan,
        }
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

/// Whether the unfinished run `previous` describes was started where the operator no
/// longer builds (`build_namespace`): its digests came from Jobs whose trust differs from
/// what this run's provenance would claim, so the run starts again. A finished run stays
/// as it is: it is not signed again.
fn moved(previous: &ImageBuildStatus, build_namespace: Option<&str>) -> bool {
    previous.observed_generation.is_some()
        && !previous.phase.is_some_and(Phase::is_final)
        && previous.build_namespace.as_deref() != build_namespace
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
    fn begin(
        build: &ImageBuild,
        previous: ImageBuildStatus,
        history_limit: usize,
        build_namespace: Option<&str>,
    ) -> Run {
        let id = RunId::of(build);
        let moved = moved(&previous, build_namespace);
        let same = id.is_described_by(&previous) && !moved;
        let mut status = match same {
            true => previous.clone(),
            false => start_run(
                &previous,
                id.generation,
                id.rebuild.clone(),
                history_limit,
                now(),
            ),
        };
        if moved && let Some(record) = status.history.first_mut() {
            record.message = Some(format!(
                "started again in {}: the operator's build namespace changed mid-run",
                build_namespace.unwrap_or("the ImageBuild's own namespace")
            ));
        }
        if !(same && previous.phase.is_some_and(Phase::is_final)) {
            status.build_namespace = build_namespace.map(str::to_string);
        }
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

    /// Whether this run's Jobs were created (it is building or assembling).
    fn is_under_way(&self) -> bool {
        self.same
            && matches!(
                self.previous.phase,
                Some(Phase::Building | Phase::Assembling)
            )
    }

    /// Whether this run has ended; only a change to the ImageBuild starts another. A run a
    /// BuildPolicy refused has not: a policy or namespace change may let it start.
    fn is_over(&self) -> bool {
        let refused_by_policy = self.previous.conditions.iter().any(|c| {
            c.type_ == crate::status::STALLED
                && c.status == "True"
                && c.reason == policy_watch::POLICY_VIOLATION
        });
        self.same && self.previous.phase.is_some_and(Phase::is_final) && !refused_by_policy
    }
}

/// Reconciles one ImageBuild: one step of its current run.
pub async fn reconcile(build: Arc<ImageBuild>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics.reconciles.inc();
    if cleanup::is_deleted(&build) {
        return cleanup::clean_up(&ctx, &build).await;
    }
    let mut run = Run::begin(
        &build,
        ctx.observed_status(&build),
        ctx.config.history_limit,
        ctx.config.build_namespace.as_deref(),
    );
    // Before anything exists in the build namespace: what is there goes with the ImageBuild.
    let build = match ctx.isolated() && !run.is_over() {
        true => cleanup::hold(&ctx, build).await?,
        false => build,
    };
    // The schema and CEL may not have run (Kubernetes 1.24 ignores CEL).
    let valid = match ValidSpec::check(&build) {
        Ok(valid) => valid,
        Err(invalid) => return act::refuse_invalid(&ctx, &build, run, invalid).await,
    };
    if run.is_over() {
        return Ok(Action::await_change());
    }
    let settings = match admitted_settings(&ctx, &build, run.is_under_way()) {
        Ok(settings) => settings,
        Err(ReconcileError::PolicyViolation(v)) => {
            return act::refuse_by_policy(&ctx, &build, run, v).await;
        }
        Err(e) => return Err(e),
    };
    let (current, stale) = observe::jobs(&ctx, &build).await?;
    queued::wake_next(&ctx, &current);
    let commit = match observe::pin_commit(&ctx, &build, &run.status, &current).await {
        Ok(commit) => commit,
        Err(e) => return act::pin_failed(&ctx, &build, run, e).await,
    };
    run.status.source = Some(SourceStatus {
        commit: commit.clone(),
    });
    let plan = ctx.placed(plan(&valid, &settings, &commit, auth_file(&build)), &build);
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
    // Held until the Jobs are created: the queue counts them meanwhile.
    let _admitted = match queued::gate(&ctx, &build, &run, &current, &step) {
        queued::Gate::Open(admitted) => admitted,
        queued::Gate::Closed(place) => {
            return queued::wait(&ctx, &build, run, &plan, platforms, place).await;
        }
    };
    let platforms = match &step {
        decide::Step::CreateJobs {
            platforms: creating,
        } => about_to_exist(platforms, creating),
        _ => platforms,
    };
    act::take(&ctx, &build, &plan, run, &current, platforms, step).await
}

/// The operator's settings with the defaults of the BuildPolicies selecting `build`'s
/// namespace ([`crate::policy::evaluate`]), or every violation. A run `under_way` (its Jobs
/// were created) was admitted: a policy changed since applies from its next run, so it is
/// not refused half-built with its Jobs still running. Reads the stores only.
fn admitted_settings(
    ctx: &Context,
    build: &ImageBuild,
    under_way: bool,
) -> Result<BuilderSettings> {
    let policies = ctx.stores.policies.policies.state();
    if policies.is_empty() {
        return Ok(ctx.config.builder.clone());
    }
    let namespace = build.namespace().unwrap_or_default();
    let Some(labels) = ctx.stores.policies.labels(&namespace) else {
        return Err(ReconcileError::NamespaceNotSeen { namespace });
    };
    let policies: Vec<&crate::api::BuildPolicy> = policies.iter().map(|p| &**p).collect();
    let operator = &ctx.config.builder;
    let defaults = match crate::policy::evaluate(&build.spec, &labels, &policies, operator) {
        Ok(defaults) => defaults,
        Err(_) if under_way => {
            let applying = crate::policy::selecting(policies.iter().copied(), &labels);
            crate::policy::defaults(&applying, operator)
        }
        Err(violations) => return Err(violations.into()),
    };
    Ok(defaults.settings(operator))
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
        Run::begin(&build, previous, 10, None)
    }

    #[test]
    fn a_start_in_the_future_has_not_waited() {
        let future = (now() + jiff::SignedDuration::from_hours(1)).to_string();
        assert_eq!(started_at(&future).waited(), Duration::ZERO);
        let past = (now() - jiff::SignedDuration::from_mins(10)).to_string();
        let waited = started_at(&past).waited();
        assert!(waited >= Duration::from_secs(599), "{waited:?}");
    }

    fn begun_in(phase: &str, recorded: Option<&str>, now_in: Option<&str>) -> Run {
        let build: ImageBuild = serde_json::from_value(serde_json::json!({
            "apiVersion": "archforge.dev/v1alpha1", "kind": "ImageBuild",
            "metadata": {"name": "app", "generation": 1},
            "spec": {"source": {"git": {"url": "https://g.example.com/a.git"}},
                     "platforms": ["linux/amd64"],
                     "output": {"image": "r.example.com/a:v1"}},
            "status": {"observedGeneration": 1, "phase": phase, "buildNamespace": recorded,
                       "startTime": "2026-11-23T10:00:00Z", "source": {"commit": "c"},
                       "platforms": [{"platform": "linux/amd64", "phase": "Succeeded",
                                      "digest": format!("sha256:{}", "a".repeat(64))}]}
        }))
        .unwrap();
        let previous = build.status.clone().unwrap_or_default();
        Run::begin(&build, previous, 10, now_in)
    }

    #[test]
    fn an_unfinished_run_starts_again_where_the_operator_now_builds() {
        let run = begun_in("Building", None, Some("builds"));
        assert!(!run.same);
        assert!(run.status.platforms.is_empty(), "{:?}", run.status);
        assert_eq!(run.status.build_namespace.as_deref(), Some("builds"));
        let why = run.status.history[0].message.as_deref().unwrap_or_default();
        assert!(why.contains("started again in builds"), "{why}");
        // And back: isolated to in-namespace.
        let run = begun_in("Assembling", Some("builds"), None);
        assert!(!run.same);
        assert_eq!(run.status.build_namespace, None);
    }

    #[test]
    fn a_run_in_the_same_place_or_already_over_stays_as_it_is() {
        let run = begun_in("Building", Some("builds"), Some("builds"));
        assert!(run.same && run.status.platforms.len() == 1);
        let run = begun_in("Building", None, None);
        assert!(run.same && run.status.platforms.len() == 1);
        // A finished run is not built (nor signed) again, and keeps where it was built.
        let run = begun_in("Succeeded", None, Some("builds"));
        assert!(run.is_over());
        assert_eq!(run.status.build_namespace, None);
    }

    #[test]
    fn an_unreadable_start_time_is_reset_so_the_grace_period_ends() {
        let run = started_at("not a time");
        let start = run.status.start_time.as_deref().unwrap();
        assert!(start.parse::<jiff::Timestamp>().is_ok(), "{start}");
    }
}
