//! The isolated build namespace against a tenant with the ordinary `edit` role in its own
//! namespace (an impersonated user): a forged builder pod is ignored, the build namespace's
//! Jobs, pods, pods/exec and Secrets are out of reach, the published digests are the real
//! builds', and deleting the ImageBuild deletes what it had in the build namespace.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use archforge::plan::isolated::{LABEL_IMAGEBUILD_UID, selector};
use archforge_e2e::cluster::wait_for;
use archforge_e2e::filter::JobFilter;
use archforge_e2e::kubelet::Outcome;
use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::rbac::v1::{ClusterRole, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::case::{AMD64, ARM64, Case};
use crate::scenarios::checks::{ensure_pushed, wait_succeeded};

/// A client acting as user `tenant`, bound to the built-in `edit` ClusterRole in the
/// Case's namespace only (what application teams get).
async fn tenant(case: &Case) -> anyhow::Result<Client> {
    let user = format!("tenant-{}", case.namespace);
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "tenant-edit", "namespace": case.namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
    }))?;
    Api::<RoleBinding>::namespaced(case.suite.client.clone(), &case.namespace)
        .create(&PostParams::default(), &binding)
        .await?;
    let mut config = kube::Config::infer().await?;
    config.auth_info.impersonate = Some(user);
    let client = Client::try_from(config)?;
    aggregate_imagebuilds_into_edit(case).await?;
    wait_for(
        "edit to include ImageBuilds",
        Duration::from_secs(30),
        || async {
            let may = may(&client, &case.namespace, "create", "imagebuilds", "").await?;
            Ok(may.then_some(()))
        },
    )
    .await?;
    Ok(client)
}

/// The chart's ClusterRole that gives the built-in `edit` role ImageBuilds (and not their
/// status), as `rbac.aggregateToDefaultRoles` installs it.
async fn aggregate_imagebuilds_into_edit(case: &Case) -> anyhow::Result<()> {
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": "archforge-e2e-imagebuilds-edit",
                     "labels": {"rbac.authorization.k8s.io/aggregate-to-edit": "true"}},
        "rules": [{"apiGroups": ["archforge.dev"], "resources": ["imagebuilds"],
                   "verbs": ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]}]
    }))?;
    let api: Api<ClusterRole> = Api::all(case.suite.client.clone());
    match api.create(&PostParams::default(), &role).await {
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        other => other.map(|_| ()).map_err(Into::into),
    }
}

/// Whether the API server refused `result` as forbidden (403).
fn forbidden<T>(result: Result<T, kube::Error>) -> bool {
    matches!(result, Err(kube::Error::Api(s)) if s.code == 403)
}

/// Whether `client` may `verb` `resource` (with `subresource`) in `namespace`.
async fn may(
    client: &Client,
    namespace: &str,
    verb: &str,
    resource: &str,
    subresource: &str,
) -> anyhow::Result<bool> {
    let review: SelfSubjectAccessReview = serde_json::from_value(json!({
        "spec": {"resourceAttributes": {"namespace": namespace, "verb": verb,
                 "group": group_of(resource), "resource": resource, "subresource": subresource}}
    }))?;
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let answer = api.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// The API group of the resources these scenarios ask about.
fn group_of(resource: &str) -> &'static str {
    match resource {
        "imagebuilds" => "archforge.dev",
        _ => "",
    }
}

/// A pod named and labelled like `job`'s builder, controlled (as its owner reference says)
/// by `job`: what a tenant can copy from a Job it has seen.
fn forged_pod(job: &Job, namespace: &str) -> anyhow::Result<Pod> {
    let template = job
        .spec
        .as_ref()
        .context("the Job's spec")?
        .template
        .clone();
    let meta = template.metadata.unwrap_or_default();
    Ok(serde_json::from_value(json!({
        "metadata": {"name": format!("{}-forged", job.name_any()), "namespace": namespace,
                     "labels": meta.labels, "annotations": meta.annotations,
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job.name_any(),
                                          "uid": job.uid(), "controller": true}]},
        "spec": {"containers": [{"name": "builder", "image": "registry.example.com/forged:1",
                                 "securityContext": {"allowPrivilegeEscalation": false}}],
                 "nodeSelector": {"archforge.dev/no-such-node": "true"}}
    }))?)
}

/// The forged pod's container "exits" with `digest` (what a kubelet would report of a
/// container the tenant controls: the tenant's pod runs the tenant's image).
async fn reports(case: &Case, pod: &str, digest: &str) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(case.suite.client.clone(), &case.namespace);
    let status = json!({"status": {"phase": "Succeeded", "containerStatuses": [
        {"name": "builder", "image": "registry.example.com/forged:1", "imageID": "", "ready": false,
         "restartCount": 0, "state": {"terminated": {"exitCode": 0, "message": digest, "reason": "Completed"}}}]}});
    pods.patch_status(pod, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// (a) a forged builder pod in the tenant's namespace is ignored; (b) the tenant can neither
/// delete nor create Jobs in the build namespace; (c) nor create pods, exec into them or
/// read Secrets there; the published digests are the real builds'.
pub async fn a_tenant_cannot_forge_or_touch_an_isolated_build(case: &Case) -> anyhow::Result<()> {
    let tenant = tenant(case).await?;
    case.start_held_run("app").await?;
    // The status (with the Job UIDs it records) is the operator's alone.
    let forged_status = json!({"status": {"platforms": [{"platform": AMD64, "phase": "Building", "jobUid": "forged"}]}});
    let builds: Api<archforge::api::ImageBuild> = Api::namespaced(tenant.clone(), &case.namespace);
    let patch = Patch::Merge(&forged_status);
    let write = builds
        .patch_status("app", &PatchParams::default(), &patch)
        .await;
    ensure!(forbidden(write), "the tenant wrote the ImageBuild's status");
    ensure!(
        builds.get("app").await.is_ok(),
        "the tenant cannot read its own ImageBuild"
    );
    let jobs = case.jobs_of(&JobFilter::of("app")).await?;
    let forged_digest = format!("sha256:{}", "e".repeat(64));
    for job in &jobs {
        // (a) With everything of the Job copied (more than a tenant can read).
        let pods: Api<Pod> = Api::namespaced(tenant.clone(), &case.namespace);
        let pod = pods
            .create(&PostParams::default(), &forged_pod(job, &case.namespace)?)
            .await?;
        reports(case, &pod.name_any(), &forged_digest).await?;
        // (b) The Job itself, in the build namespace.
        let tenant_jobs: Api<Job> = Api::namespaced(tenant.clone(), &case.build_namespace);
        let params = DeleteParams::background();
        let delete = tenant_jobs.delete(&job.name_any(), &params).await;
        ensure!(
            forbidden(delete),
            "the tenant deleted Job {}",
            job.name_any()
        );
        let mut again = job.clone();
        again.metadata = kube::api::ObjectMeta {
            name: Some(format!("{}-again", job.name_any())),
            labels: job.metadata.labels.clone(),
            annotations: job.metadata.annotations.clone(),
            ..Default::default()
        };
        again.status = None;
        let create = tenant_jobs.create(&PostParams::default(), &again).await;
        ensure!(
            forbidden(create),
            "the tenant created a Job in the build namespace"
        );
    }
    // (c) No pod, exec or Secret in the build namespace.
    let builds = &case.build_namespace;
    let tenant_pods: Api<Pod> = Api::namespaced(tenant.clone(), builds);
    let pod = forged_pod(&jobs[0], builds)?;
    ensure!(
        forbidden(tenant_pods.create(&PostParams::default(), &pod).await),
        "pod created"
    );
    ensure!(
        !may(&tenant, builds, "create", "pods", "exec").await?,
        "pods/exec allowed"
    );
    ensure!(
        may(&tenant, &case.namespace, "create", "pods", "exec").await?,
        "edit lacks exec"
    );
    let secrets: Api<Secret> = Api::namespaced(tenant.clone(), builds);
    ensure!(
        forbidden(secrets.list(&ListParams::default()).await),
        "Secrets listed"
    );
    case.policy(vec![(JobFilter::any(), Outcome::Succeed)]);
    let (status, digests) = wait_succeeded(case, "app", &[AMD64, ARM64]).await?;
    ensure!(
        !digests.values().any(|d| *d == forged_digest),
        "a forged digest was recorded: {digests:?}"
    );
    ensure_pushed(case, "app", &status, &digests).await
}

/// The ImageBuild's objects in the build namespace, by its UID label.
async fn left_in_build_namespace(case: &Case, uid_selector: &str) -> anyhow::Result<usize> {
    let list = ListParams::default().labels(uid_selector);
    let jobs = case.jobs.list(&list).await?.items.len();
    let secrets: Api<Secret> = Api::namespaced(case.suite.client.clone(), &case.build_namespace);
    Ok(jobs + secrets.list(&list).await?.items.len())
}

/// Deleting an ImageBuild deletes its Jobs and Secret copies in the build namespace (its
/// finalizer), and then the ImageBuild goes.
pub async fn deleting_an_imagebuild_cleans_the_build_namespace(case: &Case) -> anyhow::Result<()> {
    let push: Secret = serde_json::from_value(json!({
        "metadata": {"name": "push", "namespace": case.namespace},
        "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": "{\"auths\":{}}"}
    }))?;
    Api::<Secret>::namespaced(case.suite.client.clone(), &case.namespace)
        .create(&PostParams::default(), &push)
        .await?;
    case.policy(vec![(JobFilter::any(), Outcome::Hold)]);
    let mut manifest = case.manifest("app", &[AMD64, ARM64]);
    manifest["spec"]["output"]["pushSecret"] = json!("push");
    let build = case.apply(&manifest).await?;
    let uid = selector(&build);
    wait_for(
        "two Jobs and two Secret copies",
        Duration::from_secs(60),
        || async { Ok((left_in_build_namespace(case, &uid).await? == 4).then_some(())) },
    )
    .await?;
    let copies: Api<Secret> = Api::namespaced(case.suite.client.clone(), &case.build_namespace);
    for copy in copies
        .list(&ListParams::default().labels(&uid))
        .await?
        .items
    {
        let keys: Vec<&String> = copy.data.iter().flatten().map(|(k, _)| k).collect();
        ensure!(
            keys == [".dockerconfigjson"],
            "copy {} holds {keys:?}",
            copy.name_any()
        );
        ensure!(
            copy.labels().contains_key(LABEL_IMAGEBUILD_UID),
            "unlabelled copy"
        );
    }
    case.builds.delete("app", &DeleteParams::default()).await?;
    wait_for(
        "the build namespace to be cleaned",
        Duration::from_secs(60),
        || async { Ok((left_in_build_namespace(case, &uid).await? == 0).then_some(())) },
    )
    .await?;
    wait_for("the ImageBuild to go", Duration::from_secs(60), || async {
        Ok(case.builds.get_opt("app").await?.is_none().then_some(()))
    })
    .await
}
