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
pub mod decide;
mod error;
mod jobs;
mod observe;
mod report;
pub mod signing;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, ResourceExt};

pub use error::{ReconcileError, Result};

use crate::api::{ImageBuild, ImageBuildStatus, SourceStatus};
use crate::plan::{RunId, plan};
use crate::registry::RegistryOptions;
use crate::render::{ANNOTATION_IMAGEBUILD, MANAGER, auth_file};
use crate::settings::{BuilderSettings, KubeVersion};
use crate::status::{platform_statuses, start_run};
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
}

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub config: Config,
    pub metrics: Arc<Metrics>,
}

impl Context {
    pub fn new(client: Client, config: Config, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            metrics,
        }
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
}

impl Run {
    fn begin(build: &ImageBuild, history_limit: usize) -> Run {
        let id = RunId::of(build);
        let previous = build.status.clone().unwrap_or_default();
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
    let mut run = Run::begin(&build, ctx.config.history_limit);
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
    let platforms = platform_statuses(&plan, &current, &reports, &run.status.platforms);
    let nodes = match needs_nodes(&plan, &current, &platforms) {
        true => Some(observe::nodes(&ctx).await?),
        false => None,
    };
    let step = decide(&plan, &current, &platforms, nodes.as_ref(), run.waited());
    act::take(&ctx, &build, &plan, run, &current, platforms, step).await
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

/// Runs the controller until SIGTERM/SIGINT, over all namespaces or the given ones.
pub async fn run(client: Client, namespaces: Vec<String>, config: Config, metrics: Arc<Metrics>) {
    let ctx = Arc::new(Context::new(client.clone(), config, metrics.clone()));
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    let controllers = scopes.into_iter().map(|namespace| {
        let (builds, jobs, pods): (Api<ImageBuild>, Api<Job>, Api<Pod>) = match &namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        };
        let managed = watcher::Config::default()
            .labels(&format!("{}={MANAGER}", crate::render::LABEL_MANAGED_BY));
        Controller::new(builds, watcher::Config::default())
            .owns(jobs, managed.clone())
            // A builder pod's termination message arrives with a pod update.
            .watches(pods, managed, |pod: Pod| {
                let name = pod.annotations().get(ANNOTATION_IMAGEBUILD)?.clone();
                Some(ObjectRef::<ImageBuild>::new(&name).within(&pod.namespace()?))
            })
            .shutdown_on_signal()
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|result| async move {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "reconcile result");
                }
            })
    });
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
        Run::begin(&build, 10)
    }

    #[test]
    fn a_start_in_the_future_has_not_waited() {
        let future = (now() + jiff::SignedDuration::from_hours(1)).to_string();
        assert_eq!(started_at(&future).waited(), Duration::ZERO);
        let past = (now() - jiff::SignedDuration::from_mins(10)).to_string();
        let waited = started_at(&past).waited();
        assert!(waited >= Duration::from_secs(599), "{waited:?}");
    }

    #[test]
    fn an_unreadable_start_time_is_reset_so_the_grace_period_ends() {
        let run = started_at("not a time");
        let start = run.status.start_time.as_deref().unwrap();
        assert!(start.parse::<jiff::Timestamp>().is_ok(), "{start}");
    }
}
