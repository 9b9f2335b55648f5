//! The controller: takes each ImageBuild through one run (pin the commit, check placement,
//! create one Job per platform, collect digests, assemble the index) and reports it.
//!
//! All state lives in the cluster: the run is identified by the ImageBuild's generation and
//! rebuild annotation, the commit by the status (or the Jobs' revision annotation), each
//! platform by its deterministically named Job. A restart at any point resumes the run.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, PropagationPolicy};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::api::{ImageBuild, ImageBuildStatus, Phase, SourceStatus};
use crate::plan::{AuthFile, BuildPlan, BuilderSettings, KubeVersion, plan};
use crate::registry::{
    DockerConfig, PlatformImage, Registry, RegistryError, RegistryOptions, run_annotations,
};
use crate::render::{
    ANNOTATION_IMAGEBUILD, ANNOTATION_REVISION as JOB_REVISION, LABEL_GENERATION, LABEL_IMAGEBUILD,
    MANAGER, PUSH_AUTH_FILE, render_job,
};
use crate::source::{GitCredentials, SourceError, redact_url, resolve_commit};
use crate::status::{
    self, platform_statuses, pod_report, progress, record_run, run_phase, set_phase_conditions,
    start_run,
};
use crate::telemetry::{Metrics, PlatformLabels, ReasonLabels, ResultLabels};
use crate::validation::InvalidSpec;

/// What can stop one reconciliation.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] InvalidSpec),

    #[error("{step}: {source}")]
    Kube {
        step: String,
        #[source]
        source: kube::Error,
    },

    #[error("pinning the commit: {0}")]
    Source(#[from] SourceError),

    #[error("assembling the index: {0}")]
    Registry(#[from] RegistryError),

    #[error("{0}")]
    Secret(String),

    /// The API server refused a Job (a 4xx other than a conflict or throttling): an
    /// admission rule, a quota, a field it would not take. Retrying changes nothing.
    #[error("the API server refused the Job for {platform}: {message}")]
    JobRejected { platform: String, message: String },

    /// A Job with the planned name exists and belongs to something else.
    #[error(
        "a Job named {name} already exists and does not belong to this ImageBuild; archforge leaves it alone: rename the ImageBuild or delete that Job"
    )]
    JobNameConflict { name: String },

    #[error(
        "{0}; set the operator's --seccomp-profile (Helm value builder.seccompProfile) or --pod-security-level (builder.podSecurityLevel) to match the build namespaces"
    )]
    PodSecurity(#[from] crate::podsecurity::Violations),
}

impl ReconcileError {
    pub fn metric_label(&self) -> String {
        match self {
            ReconcileError::InvalidSpec(_) => "InvalidSpec".into(),
            ReconcileError::Kube { .. } => "KubernetesAPI".into(),
            ReconcileError::Source(e) => e.reason().into(),
            ReconcileError::Registry(e) => e.reason().into(),
            ReconcileError::Secret(_) => "Secret".into(),
            ReconcileError::JobRejected { .. } => "JobRejected".into(),
            ReconcileError::JobNameConflict { .. } => "JobNameConflict".into(),
            ReconcileError::PodSecurity(_) => "PodSecurity".into(),
        }
    }
}

type Result<T, E = ReconcileError> = std::result::Result<T, E>;

fn kube_err(step: impl Into<String>) -> impl FnOnce(kube::Error) -> ReconcileError {
    let step = step.into();
    move |source| ReconcileError::Kube { step, source }
}

/// Controller-wide settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub builder: BuilderSettings,
    pub version: KubeVersion,
    pub history_limit: usize,
    pub registry: RegistryOptions,
    /// How often an unfinished run is looked at even without a watch event.
    pub resync: Duration,
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

    async fn event(
        &self,
        build: &ImageBuild,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        self.event_about(build, None, type_, reason, action, note)
            .await;
    }

    /// An event that also names a related Job, so each platform's event stands on its own
    /// (the recorder would otherwise fold them into one series).
    async fn event_about(
        &self,
        build: &ImageBuild,
        job: Option<&str>,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        self.metrics.api_request("create", "events");
        let secondary = job.map(|name| k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("batch/v1".into()),
            kind: Some("Job".into()),
            name: Some(name.into()),
            namespace: build.namespace(),
            ..Default::default()
        });
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(status::keep_tail(&note, 1000)),
            action: action.into(),
            secondary,
        };
        if let Err(e) = self.recorder.publish(&event, &build.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish an event");
        }
    }
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .expect("whole seconds")
}

async fn patch_status(ctx: &Context, build: &ImageBuild, status: &ImageBuildStatus) -> Result<()> {
    let api: Api<ImageBuild> =
        Api::namespaced(ctx.client.clone(), &build.namespace().unwrap_or_default());
    ctx.metrics.api_request("patch", "imagebuilds/status");
    let body =
        json!({"apiVersion": "archforge.dev/v1alpha1", "kind": "ImageBuild", "status": status});
    api.patch_status(
        &build.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map_err(kube_err("updating the status"))?;
    Ok(())
}

async fn read_secret(ctx: &Context, namespace: &str, name: &str) -> Result<Secret> {
    ctx.metrics.api_request("get", "secrets");
    Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .get(name)
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 404 => {
                ReconcileError::Secret(format!("secret {namespace}/{name} does not exist"))
            }
            other => ReconcileError::Kube {
                step: format!("reading secret {name}"),
                source: other,
            },
        })
}

fn secret_value(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret.data.as_ref()?.get(key).map(|v| v.0.clone())
}

/// Pins the run's commit: from status, from an existing Job of the run, or from the git server.
async fn pin_commit(
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
        .find_map(|j| j.annotations().get(JOB_REVISION).cloned())
    {
        return Ok(revision);
    }
    let git = &build.spec.source.git;
    let credentials = match &git.credentials_secret {
        Some(name) if git.url.starts_with("http") => {
            let secret = read_secret(ctx, &build.namespace().unwrap_or_default(), name).await?;
            let text =
                |key| secret_value(&secret, key).map(|v| String::from_utf8_lossy(&v).into_owned());
            match (text("username"), text("password")) {
                (Some(username), Some(password)) => Some(GitCredentials { username, password }),
                _ => {
                    return Err(ReconcileError::Secret(format!(
                        "secret {name} lacks the username and password keys"
                    )));
                }
            }
        }
        _ => None,
    };
    Ok(resolve_commit(&git.url, &git.r#ref, credentials.as_ref()).await?)
}

/// The architectures of nodes that can take a builder pod now.
async fn schedulable_architectures(ctx: &Context) -> Result<BTreeSet<String>> {
    ctx.metrics.api_request("list", "nodes");
    let nodes = Api::<Node>::all(ctx.client.clone())
        .list(&ListParams::default())
        .await
        .map_err(kube_err("listing nodes"))?;
    Ok(nodes
        .items
        .iter()
        .filter(|n| {
            !n.spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false)
        })
        .filter(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|n| n.labels().get("kubernetes.io/arch").cloned())
        .collect())
}

async fn delete_jobs(ctx: &Context, namespace: &str, names: &[String]) -> Result<()> {
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    for name in names {
        ctx.metrics.api_request("delete", "jobs");
        match api.delete(name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(kube_err(format!("deleting Job {name}"))(e)),
        }
    }
    Ok(())
}

/// Whether the API server's refusal of a Job is final for this spec: a 4xx other than
/// conflict (409, handled by the caller), throttling (429) or a timeout (408).
fn is_rejection(code: u16) -> bool {
    (400..500).contains(&code) && !matches!(code, 404 | 408 | 409 | 429)
}

fn owned_by(job: &Job, build: &ImageBuild) -> bool {
    job.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == build.metadata.uid.as_ref())
}

/// Creates one Job of the run. It never changes an existing object: a taken name is either
/// this ImageBuild's own Job (created by an earlier reconcile the watch has not shown yet)
/// or someone else's, which is a conflict, not something to adopt.
async fn create_job(
    ctx: &Context,
    api: &Api<Job>,
    build: &ImageBuild,
    job: &Job,
    platform: &str,
) -> Result<bool> {
    let name = job.name_any();
    ctx.metrics.api_request("create", "jobs");
    let params = PostParams {
        field_manager: Some(MANAGER.into()),
        ..Default::default()
    };
    match api.create(&params, job).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            ctx.metrics.api_request("get", "jobs");
            let existing = api
                .get(&name)
                .await
                .map_err(kube_err(format!("reading Job {name}")))?;
            if owned_by(&existing, build) {
                Ok(false)
            } else {
                Err(ReconcileError::JobNameConflict { name })
            }
        }
        Err(kube::Error::Api(s)) if is_rejection(s.code) => Err(ReconcileError::JobRejected {
            platform: platform.to_string(),
            message: s.message,
        }),
        Err(e) => Err(kube_err(format!("creating the Job for {platform}"))(e)),
    }
}

fn is_finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

/// Assembles and pushes the index for a run whose platforms all succeeded.
async fn assemble(
    ctx: &Context,
    build: &ImageBuild,
    status: &ImageBuildStatus,
    plan: &BuildPlan,
) -> Result<String> {
    let mut options = ctx.config.registry.clone();
    if let Some(name) = &build.spec.output.push_secret {
        // Only the ImageBuild's own namespace: a spec can never borrow another team's secret.
        let secret = read_secret(ctx, &build.namespace().unwrap_or_default(), name).await?;
        let config = secret_value(&secret, ".dockerconfigjson").ok_or_else(|| {
            ReconcileError::Secret(format!("secret {name} has no .dockerconfigjson key"))
        })?;
        options.credentials = DockerConfig::from_json(name, &config)?;
    }
    let images: Vec<PlatformImage> = plan
        .platforms
        .iter()
        .zip(&status.platforms)
        .map(|(p, s)| PlatformImage {
            platform: p.platform.clone(),
            digest: s.digest.clone().unwrap_or_default(),
        })
        .collect();
    // Taken from the run, not the clock, so a retried assembly pushes identical bytes.
    let created = status
        .platforms
        .iter()
        .filter_map(|p| p.completion_time.clone())
        .max()
        .unwrap_or_default();
    let annotations = run_annotations(
        &redact_url(&build.spec.source.git.url),
        &plan.revision,
        &created,
    );
    let started = Instant::now();
    let pushed = Registry::new(options)
        .assemble_index(
            &build.spec.output.image,
            &images,
            plan.media_type,
            &annotations,
        )
        .await?;
    ctx.metrics
        .assembly_duration
        .observe(started.elapsed().as_secs_f64());
    Ok(pushed.digest)
}

/// Ends the current run: conditions, history and metrics agree on the result.
fn finish_run(
    ctx: &Context,
    status: &mut ImageBuildStatus,
    result: Phase,
    reason: &str,
    message: &str,
    generation: i64,
) {
    set_phase_conditions(status, result, reason, message, generation, now());
    let failure = (result == Phase::Failed).then(|| message.to_string());
    record_run(status, result, failure, ctx.config.history_limit, now());
    let label = if result == Phase::Succeeded {
        "succeeded"
    } else {
        "failed"
    };
    ctx.metrics
        .runs_finished
        .get_or_create(&ResultLabels {
            result: label.into(),
        })
        .inc();
}

/// Reconciles one ImageBuild. Each step is named; the decisions are in `status` and `plan`.
pub async fn reconcile(build: Arc<ImageBuild>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics.reconciles.inc();
    let namespace = build.namespace().unwrap_or_default();
    let name = build.name_any();
    let generation = build.metadata.generation.unwrap_or(1);
    let rebuild = crate::plan::rebuild_token(&build);
    let previous = build.status.clone().unwrap_or_default();
    let same_run = previous.observed_generation == Some(generation) && previous.rebuild == rebuild;
    let mut status = if same_run {
        previous.clone()
    } else {
        start_run(
            &previous,
            generation,
            rebuild.clone(),
            ctx.config.history_limit,
            now(),
        )
    };

    // 1. Validate: the schema and CEL may not have run (Kubernetes 1.24 ignores CEL).
    if let Err(invalid) = build.spec.validate() {
        let already = previous.conditions.iter().any(|c| {
            c.type_ == status::STALLED
                && c.status == "True"
                && c.reason == "InvalidSpec"
                && c.observed_generation == Some(generation)
        });
        status.platforms.clear();
        status.progress = None;
        set_phase_conditions(
            &mut status,
            Phase::Failed,
            "InvalidSpec",
            &invalid.to_string(),
            generation,
            now(),
        );
        if !already {
            ctx.event(
                &build,
                EventType::Warning,
                "InvalidSpec",
                "Validate",
                invalid.to_string(),
            )
            .await;
        }
        patch_status(&ctx, &build, &status).await?;
        return Err(invalid.into());
    }
    if same_run && matches!(previous.phase, Some(Phase::Succeeded | Phase::Failed)) {
        return Ok(Action::await_change());
    }

    // 2. Observe this ImageBuild's Jobs (of every run).
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    let selector = format!("{LABEL_IMAGEBUILD}={}", crate::plan::dns_label(&name, 63));
    ctx.metrics.api_request("list", "jobs");
    let owned: Vec<Job> = jobs_api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(kube_err("listing Jobs"))?
        .items
        .into_iter()
        .filter(|j| owned_by(j, &build))
        .collect();

    // 3. Split the Jobs into this run's and earlier runs'. Names do not depend on the commit.
    let names = crate::plan::current_job_names(&build);
    let (current, stale): (Vec<Job>, Vec<Job>) = owned.into_iter().partition(|j| {
        names
            .iter()
            .any(|n| j.metadata.name.as_deref() == Some(n.as_str()))
    });

    // Pin the commit (from status, this run's Jobs, or the git server) and plan the run.
    let commit = match pin_commit(&ctx, &build, &status, &current).await {
        Ok(commit) => commit,
        Err(e) => {
            let transient = matches!(&e, ReconcileError::Source(s) if s.is_transient());
            let reason = e.metric_label();
            if transient {
                set_phase_conditions(
                    &mut status,
                    Phase::Pending,
                    &reason,
                    &e.to_string(),
                    generation,
                    now(),
                );
            } else {
                set_phase_conditions(
                    &mut status,
                    Phase::Failed,
                    &reason,
                    &e.to_string(),
                    generation,
                    now(),
                );
                ctx.event(
                    &build,
                    EventType::Warning,
                    &reason,
                    "PinCommit",
                    e.to_string(),
                )
                .await;
            }
            patch_status(&ctx, &build, &status).await?;
            return Err(e);
        }
    };
    status.source = Some(SourceStatus {
        commit: commit.clone(),
    });
    let auth = if build.spec.output.push_secret.is_some() {
        AuthFile::Path(PUSH_AUTH_FILE)
    } else {
        AuthFile::None
    };
    let plan = plan(&build, &ctx.config.builder, &commit, auth)?;

    // 4. Jobs of an earlier run that are still running are stopped.
    let stale_running: Vec<String> = stale
        .iter()
        .filter(|j| !is_finished(j))
        .map(|j| j.name_any())
        .collect();
    if !stale_running.is_empty() {
        delete_jobs(&ctx, &namespace, &stale_running).await?;
    }

    // A platform this run already finished keeps its result, even after the Job's TTL
    // removed the Job: it is never built again.
    let finished: Vec<&str> = status
        .platforms
        .iter()
        .filter(|p| matches!(p.phase, Phase::Succeeded | Phase::Failed))
        .map(|p| p.platform.as_str())
        .collect();

    // 5. Placement: every architecture needs a node before the run starts.
    if current.is_empty() && finished.is_empty() {
        let arches = schedulable_architectures(&ctx).await?;
        let missing: Vec<String> = plan
            .platforms
            .iter()
            .filter(|p| !arches.contains(&p.platform.architecture))
            .map(|p| p.platform.to_string())
            .collect();
        if !missing.is_empty() {
            let message = format!(
                "no schedulable node with kubernetes.io/arch for {}; the run starts when one is Ready",
                missing.join(", ")
            );
            let already = previous
                .conditions
                .iter()
                .any(|c| c.reason == "NoNodeForPlatform" && c.message == message);
            set_phase_conditions(
                &mut status,
                Phase::Pending,
                "NoNodeForPlatform",
                &message,
                generation,
                now(),
            );
            status.progress = Some(progress(&[]));
            if !already {
                ctx.event(
                    &build,
                    EventType::Warning,
                    "NoNodeForPlatform",
                    "CheckPlacement",
                    message,
                )
                .await;
            }
            patch_status(&ctx, &build, &status).await?;
            return Ok(Action::requeue(Duration::from_secs(30)));
        }
    }

    // 6. Create the Jobs that do not exist yet. Each is checked against the Pod Security
    //    level first: Pod Security admission would refuse the pods, not the Job, and a Job
    //    without pods only says so in the Job controller's Events.
    let missing: Vec<(&crate::plan::PlatformPlan, Job)> = plan
        .platforms
        .iter()
        .filter(|p| {
            !current
                .iter()
                .any(|j| j.metadata.name.as_deref() == Some(p.job_name.as_str()))
                && !finished.contains(&p.platform.to_string().as_str())
        })
        .map(|p| {
            let job = render_job(&build, &plan, p, &ctx.config.builder, ctx.config.version);
            (p, job)
        })
        .collect();
    // Jobs this pass made, and Jobs of this run it found by name (not yet in the list).
    let mut created: Vec<String> = Vec::new();
    let mut found: Vec<String> = Vec::new();
    let mut outcome = missing.iter().try_for_each(|(_, job)| {
        crate::podsecurity::check_job(job, ctx.config.builder.pod_security_level)
            .map_err(ReconcileError::from)
    });
    if outcome.is_ok() {
        for (p, job) in &missing {
            match create_job(&ctx, &jobs_api, &build, job, &p.platform.to_string()).await {
                Ok(true) => created.push(p.job_name.clone()),
                Ok(false) => found.push(p.job_name.clone()),
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
    }
    if let Err(e) = outcome {
        if !matches!(
            e,
            ReconcileError::JobRejected { .. }
                | ReconcileError::JobNameConflict { .. }
                | ReconcileError::PodSecurity(_)
        ) {
            return Err(e);
        }
        // Nothing of a run that cannot start is left running: the Jobs of this run go too.
        let own: Vec<String> = current
            .iter()
            .map(|j| j.name_any())
            .chain(created)
            .chain(found)
            .collect();
        delete_jobs(&ctx, &namespace, &own).await?;
        let reason = e.metric_label();
        let message = e.to_string();
        status.platforms.clear();
        status.progress = Some(progress(&[]));
        finish_run(
            &ctx,
            &mut status,
            Phase::Failed,
            &reason,
            &message,
            generation,
        );
        ctx.event(&build, EventType::Warning, &reason, "CreateJobs", message)
            .await;
        patch_status(&ctx, &build, &status).await?;
        return Ok(Action::await_change());
    }
    if created.len() == plan.platforms.len() {
        ctx.metrics.runs_started.inc();
        let platforms: Vec<String> = plan
            .platforms
            .iter()
            .map(|p| p.platform.to_string())
            .collect();
        ctx.event(
            &build,
            EventType::Normal,
            "RunStarted",
            "CreateJobs",
            format!("building {} at {commit}", platforms.join(", ")),
        )
        .await;
    }

    // 7. Read each platform's result from its Job and its pods' termination messages.
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    ctx.metrics.api_request("list", "pods");
    let pods = pods_api
        .list(&ListParams::default().labels(&format!("{selector},{LABEL_GENERATION}={generation}")))
        .await
        .map_err(kube_err("listing builder pods"))?;
    let reports: Vec<(String, status::PodReport)> = pods
        .items
        .iter()
        .filter_map(|pod| Some((status::owning_job(pod, &current)?, pod_report(pod))))
        .collect();
    let platforms = platform_statuses(&plan, &current, &reports, &status.platforms);
    for p in &platforms {
        let was = previous
            .platforms
            .iter()
            .find(|b| b.platform == p.platform && same_run)
            .map(|b| b.phase);
        if p.phase == Phase::Succeeded && was != Some(Phase::Succeeded) {
            if let (Some(start), Some(end)) = (&p.start_time, &p.completion_time)
                && let (Ok(start), Ok(end)) = (
                    start.parse::<jiff::Timestamp>(),
                    end.parse::<jiff::Timestamp>(),
                )
            {
                let seconds = end.duration_since(start).as_secs_f64();
                ctx.metrics
                    .build_duration
                    .get_or_create(&PlatformLabels {
                        platform: p.platform.clone(),
                    })
                    .observe(seconds);
            }
            ctx.event_about(
                &build,
                p.job.as_deref(),
                EventType::Normal,
                "PlatformSucceeded",
                "Build",
                format!(
                    "{} pushed {}",
                    p.platform,
                    p.digest.clone().unwrap_or_default()
                ),
            )
            .await;
        }
    }
    status.progress = Some(progress(&platforms));
    status.platforms = platforms;
    // Every Job of the run exists by now, so the run is building even before a pod starts.
    let phase = match run_phase(&status.platforms) {
        Phase::Pending => Phase::Building,
        phase => phase,
    };

    // 8. Act on the run's phase.
    let action = match phase {
        Phase::Failed => {
            let failed = status
                .platforms
                .iter()
                .find(|p| p.phase == Phase::Failed)
                .expect("a failed platform");
            let failed_job = failed.job.clone();
            let message = format!(
                "{} failed: {}",
                failed.platform,
                failed.message.clone().unwrap_or_default()
            );
            let unfinished: Vec<String> = current
                .iter()
                .filter(|j| !is_finished(j))
                .map(|j| j.name_any())
                .collect();
            delete_jobs(&ctx, &namespace, &unfinished).await?;
            finish_run(
                &ctx,
                &mut status,
                Phase::Failed,
                "PlatformFailed",
                &message,
                generation,
            );
            ctx.event_about(
                &build,
                failed_job.as_deref(),
                EventType::Warning,
                "PlatformFailed",
                "Build",
                message,
            )
            .await;
            Action::await_change()
        }
        Phase::Assembling => match assemble(&ctx, &build, &status, &plan).await {
            Ok(digest) => {
                let message = format!("pushed {} ({digest})", build.spec.output.image);
                status.image = Some(build.spec.output.image.clone());
                status.digest = Some(digest);
                finish_run(
                    &ctx,
                    &mut status,
                    Phase::Succeeded,
                    "IndexPushed",
                    &message,
                    generation,
                );
                ctx.event(
                    &build,
                    EventType::Normal,
                    "IndexPushed",
                    "Assemble",
                    message,
                )
                .await;
                Action::await_change()
            }
            Err(ReconcileError::Registry(e)) if e.is_transient() => {
                // The digests are in status: the retry only repeats the assembly.
                set_phase_conditions(
                    &mut status,
                    Phase::Assembling,
                    e.reason(),
                    &e.to_string(),
                    generation,
                    now(),
                );
                ctx.event(
                    &build,
                    EventType::Warning,
                    e.reason(),
                    "Assemble",
                    e.to_string(),
                )
                .await;
                patch_status(&ctx, &build, &status).await?;
                return Err(ReconcileError::Registry(e));
            }
            Err(e) => {
                let message = e.to_string();
                let reason = e.metric_label();
                finish_run(
                    &ctx,
                    &mut status,
                    Phase::Failed,
                    &reason,
                    &message,
                    generation,
                );
                ctx.event(&build, EventType::Warning, &reason, "Assemble", message)
                    .await;
                Action::await_change()
            }
        },
        phase => {
            let message = format!(
                "{} of {} platforms built",
                status.progress.clone().unwrap_or_default(),
                plan.platforms.len()
            );
            set_phase_conditions(&mut status, phase, "Building", &message, generation, now());
            Action::requeue(ctx.config.resync)
        }
    };
    patch_status(&ctx, &build, &status).await?;
    Ok(action)
}

/// Invalid specs wait for the user to change them; everything else is retried.
pub fn error_policy(build: Arc<ImageBuild>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ReasonLabels {
            reason: error.metric_label(),
        })
        .inc();
    match error {
        ReconcileError::InvalidSpec(_) => Action::await_change(),
        ReconcileError::Source(e) if !e.is_transient() => Action::await_change(),
        _ => {
            tracing::warn!(imagebuild = %build.name_any(), error = %error, "reconcile failed; retrying");
            Action::requeue(Duration::from_secs(15))
        }
    }
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
