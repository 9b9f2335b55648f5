//! Reading what the cluster (and the git server) says about one ImageBuild's run.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};

use super::Context;
use super::error::{ReconcileError, Result};
use super::events;
use super::placement::{Nodes, PodConstraints};
use crate::api::{ImageBuild, ImageBuildStatus};
use crate::plan::{BuildPlan, isolated};
use crate::render::{ANNOTATION_REVISION, LABEL_GENERATION, LABEL_IMAGEBUILD};
use crate::source::{GitCredentials, resolve_commit};
use crate::status::stuck::{self, Stuck};
use crate::status::{PodReport, owning_job, pod_report};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

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
    let namespace = ctx.jobs_namespace(build);
    let names = ctx.current_job_names(build);
    let current: Vec<Job> = names
        .iter()
        .filter_map(|name| ctx.stores.job(&namespace, name))
        .filter(|j| owns(ctx, j, build))
        .map(|j| (*j).clone())
        .collect();
    let mut stale = ctx
        .stores
        .jobs
        .state_filter(|j| {
            j.metadata.namespace.as_deref() == Some(namespace.as_str())
                && is_labelled_for(ctx, &j.metadata, build)
                && !names.iter().any(|n| j.metadata.name.as_deref() == Some(n))
                && owns(ctx, j, build)
        })
        .into_iter()
        .map(|j| (*j).clone())
        .collect::<Vec<Job>>();
    // The store has no order; earlier runs' Jobs are stopped in name order.
    stale.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok((current, stale))
}

/// Whether an object of the Jobs' namespace is labelled as `build`'s: by name in the
/// ImageBuild's own namespace, by namespace and UID in the build namespace.
fn is_labelled_for(ctx: &Context, meta: &ObjectMeta, build: &ImageBuild) -> bool {
    match ctx.isolated() {
        true => isolated::belongs_to(meta, build),
        false => {
            let label = crate::plan::dns_label(&build.name_any(), 63);
            meta.labels.as_ref().and_then(|l| l.get(LABEL_IMAGEBUILD)) == Some(&label)
        }
    }
}

/// Whether `job` is `build`'s. In the ImageBuild's own namespace, by its controller
/// reference's UID (labels and names can be copied there); in the build namespace, where
/// only the operator creates Jobs and owner references cannot reach the ImageBuild, by the
/// namespace and UID labels.
pub fn owns(ctx: &Context, job: &Job, build: &ImageBuild) -> bool {
    match ctx.isolated() {
        true => isolated::belongs_to(&job.metadata, build),
        false => owned_by(job, build),
    }
}

/// Whether `build` is `job`'s controller (by UID: labels and names can be copied).
pub fn owned_by(job: &Job, build: &ImageBuild) -> bool {
    job.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == build.metadata.uid.as_ref())
}

/// What the builder pods of `jobs` (this run's) reported, by Job name: only pods whose
/// controller is one of `jobs` (by UID). Read from the pod store: no request.
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
    let namespace = ctx.jobs_namespace(build);
    let generation = generation.to_string();
    let mut pods = ctx.stores.pods.state_filter(|pod| {
        pod.metadata.namespace.as_deref() == Some(namespace.as_str())
            && is_labelled_for(ctx, &pod.metadata, build)
            && pod.labels().get(LABEL_GENERATION) == Some(&generation)
    });
    // The store has no order; a list had the API server's (by name).
    pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mount_events = |pod: &Pod| {
        let uid = pod.metadata.uid.as_deref().unwrap_or_default();
        events::about(&ctx.stores.events.failed_mount, &namespace, uid)
    };
    Ok(pods
        .iter()
        .filter_map(|pod| {
            let mut report = pod_report(pod);
            // A pod whose status says only that it is on its way may say why in its Events.
            if stuck::waits_silently(pod) {
                let said = mount_events(pod);
                let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
                report.stuck = stuck::of_pod_events(&said.iter().map(|e| &**e).collect::<Vec<_>>())
                    .map(|s| s.not_before(created));
            }
            Some((owning_job(pod, jobs)?, report))
        })
        .collect())
}

/// Why Jobs of this run that have no pod have none: the Job controller's refusals, by Job
/// name. Read from the Event store: no request.
pub fn blocked(
    ctx: &Context,
    jobs: &[Job],
    reports: &[(String, PodReport)],
) -> Vec<(String, Stuck)> {
    jobs.iter()
        .filter(|j| {
            !reports
                .iter()
                .any(|(name, _)| Some(name) == j.metadata.name.as_ref())
        })
        .filter_map(|j| {
            let namespace = j.metadata.namespace.as_deref().unwrap_or_default();
            let uid = j.metadata.uid.as_deref()?;
            let said = events::about(&ctx.stores.events.failed_create, namespace, uid);
            let stuck = stuck::of_job_events(&said.iter().map(|e| &**e).collect::<Vec<_>>())?;
            let created = j.metadata.creation_timestamp.as_ref().map(|t| t.0);
            Some((j.metadata.name.clone()?, stuck.not_before(created)))
        })
        .collect()
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
