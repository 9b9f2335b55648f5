//! One scenario's world (a `Case`): its namespace, operator and simulated kubelet, and the
//! helpers scenarios act and wait through.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use archforge::api::{ImageBuild, ImageBuildStatus, Phase};
use archforge::render::{LABEL_IMAGEBUILD, LABEL_PLATFORM};
use archforge_e2e::admission::privileged_pod_admitted;
use archforge_e2e::cluster::{
    FIELD_MANAGER, POD_SECURITY_LEVEL, create_namespace, delete_namespace, imagebuild,
    is_current_run, namespace_name, occurrences, wait_for,
};
use archforge_e2e::filter::JobFilter;
use archforge_e2e::kubelet::{Kubelet, Outcome};
use archforge_e2e::operator::{Operator, metrics_text, sum_samples_where};
use archforge_e2e::proxy::Proxy;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;

use crate::suite::Suite;

/// The two platforms of most scenarios' ImageBuilds.
pub const AMD64: &str = "linux/amd64";
/// See [`AMD64`].
pub const ARM64: &str = "linux/arm64";

/// One scenario's world: a fresh tenant namespace, its own isolated build namespace, an
/// operator watching the one and building in the other, the simulated kubelet (with
/// simulated nodes), and a record of every Job that ever existed.
pub struct Case {
    /// What all scenarios share.
    pub suite: Arc<Suite>,
    /// The scenario's name.
    pub test: String,
    /// The scenario's fresh namespace, where its ImageBuilds and Secrets are (a tenant's).
    pub namespace: String,
    /// The isolated build namespace of this Case's operator: its Jobs, pods and Secret
    /// copies.
    pub build_namespace: String,
    /// The operator watching `namespace`; scenarios kill and restart it.
    pub operator: Mutex<Operator>,
    kubelet: Option<Kubelet>,
    /// The ImageBuilds of `namespace`.
    pub builds: Api<ImageBuild>,
    /// The Jobs of `build_namespace`.
    pub jobs: Api<Job>,
    pods: Api<Pod>,
    /// (ImageBuild, platform label, uid) of every Job seen in the namespace.
    seen_jobs: SeenJobs,
    job_watch: tokio::task::JoinHandle<()>,
}

impl Case {
    /// A Case whose operator runs with `operator_args` added to the suite's.
    async fn start(
        suite: &Arc<Suite>,
        test: &str,
        proxy: Option<&Proxy>,
        operator_args: &[String],
    ) -> anyhow::Result<Case> {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos()
            ^ std::process::id();
        let namespace = namespace_name(test, nonce & 0xfffff);
        let build_namespace = format!("{namespace}-b");
        create_namespace(&suite.client, &namespace).await?;
        create_namespace(&suite.client, &build_namespace).await?;
        let log = suite.logs.join(format!("{namespace}.log"));
        let extra_insecure: Vec<String> = proxy.map(|p| vec![p.host()]).unwrap_or_default();
        let mut args = vec![format!("--build-namespace={build_namespace}")];
        args.extend(operator_args.iter().cloned());
        let operator =
            Operator::start_with(&suite.settings, &namespace, &log, &extra_insecure, &args)?;
        let kubelet = suite.settings.simulate_nodes.then(|| {
            Kubelet::start(
                suite.client.clone(),
                &build_namespace,
                suite.registry.clone(),
                proxy.map(|p| (p.host(), suite.settings.registry.clone())),
                suite.settings.registry.clone(),
            )
        });
        let jobs: Api<Job> = Api::namespaced(suite.client.clone(), &build_namespace);
        let (seen_jobs, job_watch) = record_jobs(jobs.clone());
        Ok(Case {
            suite: suite.clone(),
            builds: Api::namespaced(suite.client.clone(), &namespace),
            pods: Api::namespaced(suite.client.clone(), &build_namespace),
            jobs,
            test: test.to_string(),
            namespace,
            build_namespace,
            operator: Mutex::new(operator),
            kubelet,
            seen_jobs,
            job_watch,
        })
    }

    /// Ends the scenario: the namespace goes (unless ARCHFORGE_E2E_KEEP), and a failure
    /// says where the operator's log is.
    async fn finish(self, outcome: anyhow::Result<()>) -> anyhow::Result<()> {
        self.job_watch.abort();
        let refused = if outcome.is_err() {
            self.refused_pods().await
        } else {
            vec![]
        };
        let log = self.operator.lock().unwrap().log().display().to_string();
        let keep = outcome.is_err() && self.suite.settings.keep_namespaces;
        if !keep {
            // While the operator runs: it removes the finalizers of the ImageBuilds.
            release_imagebuilds(&self.builds).await?;
        }
        drop(self.operator);
        drop(self.kubelet);
        if !keep {
            delete_namespace(&self.suite.client, &self.namespace).await?;
            delete_namespace(&self.suite.client, &self.build_namespace).await?;
        }
        outcome.with_context(|| {
            let mut context = format!("namespace {}, operator log {log}", self.namespace);
            if !refused.is_empty() {
                context.push_str(&format!(
                    "; the Job controller could not create pods: {}",
                    refused.join(" | ")
                ));
            }
            context
        })
    }

    /// Why the Job controller could not create pods here (FailedCreate Events), e.g. a
    /// builder pod that violates the namespace's Pod Security level: a scenario that then
    /// times out waiting for pods says so.
    async fn refused_pods(&self) -> Vec<String> {
        let events: Api<Event> = Api::namespaced(self.suite.client.clone(), &self.build_namespace);
        let Ok(list) = events.list(&ListParams::default()).await else {
            return vec![];
        };
        let notes: BTreeSet<String> = list
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("FailedCreate"))
            .filter_map(|e| e.note)
            .collect();
        notes.into_iter().take(3).collect()
    }

    /// What the simulated kubelet does to the builder pods each rule matches (the first
    /// match wins; unmatched pods succeed). Without simulated nodes, real builders build.
    pub fn policy(&self, rules: Vec<(JobFilter, Outcome)>) {
        if let Some(kubelet) = &self.kubelet {
            kubelet.policy.set(rules);
        }
    }

    /// `kubectl apply --server-side` of an ImageBuild manifest.
    pub async fn apply(&self, manifest: &Value) -> Result<ImageBuild, kube::Error> {
        let name = manifest["metadata"]["name"].as_str().expect("a name");
        self.builds
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(manifest),
            )
            .await
    }

    /// The suite's ImageBuild `name` for `platforms` in this namespace (see
    /// `cluster::imagebuild`).
    pub fn manifest(&self, name: &str, platforms: &[&str]) -> Value {
        imagebuild(&self.suite.settings, &self.namespace, name, platforms, None)
    }

    /// The generation and status of ImageBuild `name` now.
    pub async fn status(&self, name: &str) -> anyhow::Result<(i64, ImageBuildStatus)> {
        let build = self.builds.get(name).await?;
        Ok((
            build.metadata.generation.unwrap_or_default(),
            build.status.unwrap_or_default(),
        ))
    }

    /// Waits until the current run (generation and rebuild annotation) reaches `phase`;
    /// fails at once when it ends in the other terminal phase.
    pub async fn wait_phase(
        &self,
        name: &str,
        phase: Phase,
        timeout: Duration,
    ) -> anyhow::Result<ImageBuildStatus> {
        wait_for(
            &format!("ImageBuild {name} to be {phase:?}"),
            timeout,
            || async {
                self.operator.lock().unwrap().check_alive()?;
                let build = self.builds.get(name).await?;
                if !is_current_run(&build) {
                    return Ok(None);
                }
                let status = build.status.unwrap_or_default();
                match status.phase {
                    Some(p) if p == phase => Ok(Some(status)),
                    Some(p @ (Phase::Succeeded | Phase::Failed)) => bail!(
                        "ImageBuild {name} ended {p:?} instead of {phase:?}: {}",
                        describe(&status)
                    ),
                    _ => Ok(None),
                }
            },
        )
        .await
    }

    /// The Jobs `filter` selects now.
    pub async fn jobs_of(&self, filter: &JobFilter) -> anyhow::Result<Vec<Job>> {
        Ok(self.jobs.list(&filter.list_params()).await?.items)
    }

    /// The builder pods `filter` selects now.
    pub async fn pods_of(&self, filter: &JobFilter) -> anyhow::Result<Vec<Pod>> {
        Ok(self.pods.list(&filter.list_params()).await?.items)
    }

    /// Waits until `filter` selects exactly `count` Jobs, and returns them.
    pub async fn wait_jobs(
        &self,
        filter: &JobFilter,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<Job>> {
        wait_for(&format!("{count} Jobs of {filter}"), timeout, || async {
            let jobs = self.jobs_of(filter).await?;
            Ok((jobs.len() == count).then_some(jobs))
        })
        .await
    }

    /// The Events (events.k8s.io/v1) about ImageBuild `name`.
    async fn events_about(&self, name: &str) -> anyhow::Result<Vec<Event>> {
        let events: Api<Event> = Api::namespaced(self.suite.client.clone(), &self.namespace);
        Ok(events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect())
    }

    /// Reasons of the Events about ImageBuild `name`, with their types.
    async fn events(&self, name: &str) -> anyhow::Result<Vec<(String, String)>> {
        Ok(self
            .events_about(name)
            .await?
            .into_iter()
            .map(|e| (e.reason.unwrap_or_default(), e.type_.unwrap_or_default()))
            .collect())
    }

    /// The notes of the Events with `reason` about ImageBuild `name`.
    pub async fn event_notes(&self, name: &str, reason: &str) -> anyhow::Result<Vec<String>> {
        Ok(self
            .events_about(name)
            .await?
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter_map(|e| e.note)
            .collect())
    }

    /// How many times an Event with `reason` was reported about `name`, repeats folded
    /// into a series included.
    pub async fn occurrences(&self, name: &str, reason: &str) -> anyhow::Result<i32> {
        Ok(self
            .events_about(name)
            .await?
            .iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .map(occurrences)
            .sum())
    }

    /// The Job creations the operator has sent so far (its own request counter: a refused
    /// create leaves nothing in the cluster to count).
    pub async fn job_creates(&self) -> anyhow::Result<f64> {
        let address = self.operator.lock().unwrap().metrics_address.clone();
        let text = metrics_text(&address).await?;
        Ok(sum_samples_where(
            &text,
            "archforge_kubernetes_requests_total",
            &[("verb", "create"), ("resource", "jobs")],
        ))
    }

    /// Fails unless the namespace's Pod Security level is enforced: a privileged pod is
    /// refused (a dry run, so nothing is created). Without this, pods admitted here would
    /// prove nothing about the level.
    pub async fn ensure_pod_security_enforced(&self) -> anyhow::Result<()> {
        ensure!(
            !privileged_pod_admitted(&self.pods, POD_SECURITY_LEVEL).await?,
            "namespace {} is labelled pod-security.kubernetes.io/enforce={POD_SECURITY_LEVEL}, but a privileged pod was admitted (dry run): the API server's PodSecurity admission is off, so this cluster cannot show that builder pods are {POD_SECURITY_LEVEL}-admissible",
            self.namespace
        );
        Ok(())
    }

    /// Waits (up to 30 s) for an Event of `type_` with `reason` about ImageBuild `name`.
    pub async fn expect_event(&self, name: &str, reason: &str, type_: &str) -> anyhow::Result<()> {
        wait_for(
            &format!("a {type_} Event {reason} on {name}"),
            Duration::from_secs(30),
            || async {
                let events = self.events(name).await?;
                Ok(events
                    .iter()
                    .any(|(r, t)| r == reason && t == type_)
                    .then_some(()))
            },
        )
        .await
    }

    /// Starts a two-platform run of `name` whose builders the simulated kubelet holds (with
    /// real builders, they simply build), and waits for its two Jobs.
    pub async fn start_held_run(&self, name: &str) -> anyhow::Result<()> {
        self.policy(vec![(JobFilter::any(), Outcome::Hold)]);
        self.apply(&self.manifest(name, &[AMD64, ARM64])).await?;
        self.wait_jobs(&JobFilter::of(name), 2, Duration::from_secs(60))
            .await?;
        Ok(())
    }

    /// Waits until `filter` selects no builder pod.
    pub async fn wait_no_pods(&self, filter: &JobFilter, timeout: Duration) -> anyhow::Result<()> {
        wait_for(
            &format!("the builder pods of {filter} to be gone"),
            timeout,
            || async { Ok(self.pods_of(filter).await?.is_empty().then_some(())) },
        )
        .await
    }

    /// Fails unless exactly one Job per platform of `name` ever existed (nothing rebuilt).
    pub fn ensure_one_job_per_platform(&self, name: &str, platforms: usize) -> anyhow::Result<()> {
        let jobs = self.jobs_ever(name);
        ensure!(
            jobs.len() == platforms && jobs.values().all(|uids| uids.len() == 1),
            "exactly one Job per platform should ever exist: {jobs:?}"
        );
        Ok(())
    }

    /// UIDs of the Jobs of `name` that ever existed, per platform label.
    pub fn jobs_ever(&self, name: &str) -> BTreeMap<String, BTreeSet<String>> {
        let mut by_platform: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (build, platform, uid) in self.seen_jobs.lock().unwrap().iter() {
            if build == name {
                by_platform
                    .entry(platform.clone())
                    .or_default()
                    .insert(uid.clone());
            }
        }
        by_platform
    }
}

/// (ImageBuild, platform label, uid) of every Job `jobs` ever shows, kept by a watch.
type SeenJobs = Arc<Mutex<BTreeSet<(String, String, String)>>>;

/// Records every Job of `jobs` from now on, until the returned task is aborted.
fn record_jobs(jobs: Api<Job>) -> (SeenJobs, tokio::task::JoinHandle<()>) {
    let seen_jobs: SeenJobs = Arc::default();
    let seen = seen_jobs.clone();
    let job_watch = tokio::spawn(
        watcher(jobs, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .for_each(move |job| {
                if let Ok(job) = job {
                    let label = |key: &str| job.labels().get(key).cloned().unwrap_or_default();
                    seen.lock().unwrap().insert((
                        label(LABEL_IMAGEBUILD),
                        label(LABEL_PLATFORM),
                        job.uid().unwrap_or_default(),
                    ));
                }
                async {}
            }),
    );
    (seen_jobs, job_watch)
}

/// Deletes every ImageBuild of `builds` and waits (30 s) for them to go, which they do once
/// the operator has cleaned their build namespace up; then takes off the finalizers of any
/// left (an operator a scenario stopped), so that their namespace can go.
pub async fn release_imagebuilds(builds: &Api<ImageBuild>) -> anyhow::Result<()> {
    builds
        .delete_collection(&Default::default(), &ListParams::default())
        .await?;
    let gone = wait_for(
        "the ImageBuilds to be deleted",
        Duration::from_secs(30),
        || async {
            Ok(builds
                .list(&ListParams::default())
                .await?
                .items
                .is_empty()
                .then_some(()))
        },
    )
    .await;
    if gone.is_err() {
        let unheld = serde_json::json!({"metadata": {"finalizers": null}});
        for build in builds.list(&ListParams::default()).await?.items {
            let patch = Patch::Merge(&unheld);
            let _ = builds
                .patch(&build.name_any(), &PatchParams::default(), &patch)
                .await;
        }
    }
    Ok(())
}

/// The conditions of `status` on one line, for failure messages.
pub fn describe(status: &ImageBuildStatus) -> String {
    let conditions: Vec<String> = status
        .conditions
        .iter()
        .map(|c| format!("{}={} {}: {}", c.type_, c.status, c.reason, c.message))
        .collect();
    conditions.join("; ")
}

/// The condition `type_` of `status`; an error naming all conditions when it has none.
pub fn condition<'a>(
    status: &'a ImageBuildStatus,
    type_: &str,
) -> anyhow::Result<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .with_context(|| format!("no {type_} condition: {}", describe(status)))
}

/// Runs `body` in a fresh Case and cleans up after it.
pub async fn with_case(
    suite: &Arc<Suite>,
    test: &str,
    proxy: Option<&Proxy>,
    body: impl AsyncFnOnce(&Case) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let case = Case::start(suite, test, proxy, &[]).await?;
    let outcome = body(&case).await;
    case.finish(outcome).await
}

/// Runs `body` in a fresh Case whose operator runs with `operator_args` added (a setting a
/// scenario needs: a builder image that does not exist, a shorter grace period).
pub async fn with_operator_args(
    suite: &Arc<Suite>,
    test: &str,
    operator_args: &[String],
    body: impl AsyncFnOnce(&Case) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let case = Case::start(suite, test, None, operator_args).await?;
    let outcome = body(&case).await;
    case.finish(outcome).await
}
