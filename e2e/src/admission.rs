//! Probes of the API server's admission, by server-side dry runs (admission runs, nothing is
//! stored, no quota is charged): whether a namespace's Pod Security level is enforced, and
//! whether a ResourceQuota refuses Jobs yet or still.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use crate::cluster::FIELD_MANAGER;

/// A server-side dry run: admission decides, nothing is stored and no quota is charged.
fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        field_manager: Some(FIELD_MANAGER.into()),
    }
}

/// The pod spec of a probe: `container` (named `probe`, of [`PROBE_IMAGE`]), never restarted.
fn probe_spec(mut container: Value) -> Value {
    container["name"] = json!("probe");
    container["image"] = json!(PROBE_IMAGE);
    json!({"restartPolicy": "Never", "containers": [container]})
}

/// A pod that every Pod Security level but `privileged` refuses, for a dry-run create that
/// shows a namespace's level is enforced.
pub fn privileged_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": probe_spec(json!({"securityContext": {"privileged": true}})),
    }))
    .expect("a valid Pod")
}

/// Asks admission, with a dry run, whether a privileged pod may be created in `pods`'
/// namespace now: `Ok(false)` when Pod Security at `level` refuses it, `Ok(true)` when it is
/// admitted (the namespace's level is not enforced).
pub async fn privileged_pod_admitted(pods: &Api<Pod>, level: &str) -> anyhow::Result<bool> {
    match pods
        .create(
            &dry_run(),
            &privileged_pod("archforge-e2e-privileged-probe"),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if is_pod_security_refusal(&e, level) => Ok(false),
        Err(e) => Err(anyhow::Error::new(e).context("a dry-run create of a privileged pod")),
    }
}

/// Whether `error` is Pod Security admission refusing a pod at `level`: 403 with
/// `violates PodSecurity "<level>:<version>"`.
pub fn is_pod_security_refusal(error: &kube::Error, level: &str) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 403
        && status.message.contains(&format!("violates PodSecurity \"{level}:")))
}

/// Never pulled: the probes that use it are dry runs or never scheduled.
const PROBE_IMAGE: &str = "registry.k8s.io/pause:3.9";

/// The quota resource that counts Jobs (`count/<resource>.<group>`).
pub const JOB_COUNT: &str = "count/jobs.batch";

/// A ResourceQuota allowing at most `jobs` Jobs in its namespace. Every API server has the
/// ResourceQuota admission plugin, so this refuses Job creation (403 "exceeded quota") on
/// any version without webhooks or admission policies.
pub fn job_quota(name: &str, jobs: u32) -> ResourceQuota {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": name},
        "spec": {"hard": {JOB_COUNT: jobs.to_string()}},
    }))
    .expect("a valid ResourceQuota")
}

/// Whether quota admission enforces `resource` of `quota`: it ignores a quota until the
/// quota controller has written the resource into `status.hard`, and refuses everything
/// ("status unknown for quota") until `status.used` has it too.
pub fn quota_enforces(quota: &ResourceQuota, resource: &str) -> bool {
    quota.status.as_ref().is_some_and(|s| {
        let has = |list: &Option<BTreeMap<String, Quantity>>| {
            list.as_ref().is_some_and(|l| l.contains_key(resource))
        };
        has(&s.hard) && has(&s.used)
    })
}

/// A minimal valid Job, for a dry-run create that asks the API server's admission whether a
/// Job may be created in a namespace now. Suspended, should a server ever persist it.
pub fn probe_job(name: &str) -> Job {
    serde_json::from_value(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"suspend": true, "template": {"spec": probe_spec(json!({}))}},
    }))
    .expect("a valid Job")
}

/// Whether `error` is quota admission refusing an object because `quota` is used up.
pub fn is_quota_refusal(error: &kube::Error, quota: &str) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 403
        && status.message.contains(&format!("exceeded quota: {quota}")))
}

/// Asks admission, with a dry run, whether a Job may be created in `jobs`' namespace now:
/// `Ok(true)` when it is admitted, `Ok(false)` when `quota` refuses it.
pub async fn job_admitted(jobs: &Api<Job>, quota: &str) -> anyhow::Result<bool> {
    match jobs
        .create(&dry_run(), &probe_job("archforge-e2e-probe"))
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if is_quota_refusal(&e, quota) => Ok(false),
        Err(e) => Err(anyhow::Error::new(e).context("a dry-run create of a probe Job")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, "Forbidden")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn recognises_pod_security_refusals_by_level() {
        let refused = api_error(
            403,
            r#"pods "p" is forbidden: violates PodSecurity "baseline:latest": privileged (container "probe" must not set securityContext.privileged=true)"#,
        );
        assert!(is_pod_security_refusal(&refused, "baseline"));
        assert!(!is_pod_security_refusal(&refused, "restricted"));
        assert!(!is_pod_security_refusal(
            &api_error(403, r#"jobs "j" is forbidden: exceeded quota: q"#),
            "baseline"
        ));
        let pod = privileged_pod("p");
        let container = &pod.spec.unwrap().containers[0];
        assert_eq!(
            container.security_context.as_ref().unwrap().privileged,
            Some(true)
        );
    }

    #[test]
    fn job_quota_counts_jobs() {
        let quota = job_quota("no-jobs", 0);
        assert_eq!(quota.metadata.name.as_deref(), Some("no-jobs"));
        let hard = quota.spec.unwrap().hard.unwrap();
        assert_eq!(hard.len(), 1);
        assert_eq!(hard[JOB_COUNT].0, "0");
    }

    #[test]
    fn a_quota_is_enforced_once_its_status_has_hard_and_used() {
        let with_status = |status: Value| -> ResourceQuota {
            let mut quota = serde_json::to_value(job_quota("q", 0)).unwrap();
            quota["status"] = status;
            serde_json::from_value(quota).unwrap()
        };
        assert!(!quota_enforces(&job_quota("q", 0), JOB_COUNT));
        assert!(!quota_enforces(&with_status(json!({})), JOB_COUNT));
        assert!(!quota_enforces(
            &with_status(json!({"hard": {JOB_COUNT: "0"}})),
            JOB_COUNT
        ));
        assert!(!quota_enforces(
            &with_status(json!({"hard": {"pods": "0"}, "used": {"pods": "0"}})),
            JOB_COUNT
        ));
        assert!(quota_enforces(
            &with_status(json!({"hard": {JOB_COUNT: "0"}, "used": {JOB_COUNT: "0"}})),
            JOB_COUNT
        ));
    }

    #[test]
    fn recognises_quota_refusals_by_quota_name() {
        let refused = api_error(
            403,
            r#"jobs.batch "app-1-linux-amd64" is forbidden: exceeded quota: no-jobs, requested: count/jobs.batch=1, used: count/jobs.batch=0, limited: count/jobs.batch=0"#,
        );
        assert!(is_quota_refusal(&refused, "no-jobs"));
        assert!(!is_quota_refusal(&refused, "other"));
        assert!(!is_quota_refusal(
            &api_error(422, "exceeded quota: no-jobs"),
            "no-jobs"
        ));
    }

    #[test]
    fn the_probe_job_is_a_valid_suspended_job() {
        let job = probe_job("probe");
        let spec = job.spec.unwrap();
        assert_eq!(spec.suspend, Some(true));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert!(pod.containers[0].image.is_some());
    }
}
