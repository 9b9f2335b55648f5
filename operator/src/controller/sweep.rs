//! The orphan sweep of an isolated build namespace. The finalizer deletes an ImageBuild's
//! Jobs and Secret copies when it goes; but a tenant with `edit` may remove the finalizer
//! before deleting its ImageBuild, and a run it left behind would keep its pods (and the
//! copies of its credentials) until the Job's deadline. The sweep deletes, now and then,
//! what in the build namespace belongs to no ImageBuild the operator still sees.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, PropagationPolicy};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};

use super::ImageBuild;
use crate::plan::isolated::{LABEL_IMAGEBUILD_NAMESPACE, LABEL_IMAGEBUILD_UID};

/// How old a Job must be before it can be an orphan: its ImageBuild was in the store
/// before it was created, so this only keeps a store that lags a little from mattering.
const YOUNGEST_ORPHAN: Duration = Duration::from_secs(60);

/// The ImageBuild UIDs that Jobs of the build namespace (`jobs`) name but no ImageBuild in
/// `builds` has, among the Jobs whose ImageBuild namespace one of `scopes` watches (`None`:
/// all). Jobs younger than [`YOUNGEST_ORPHAN`] at `now` are left alone. Pure.
pub fn orphans(
    jobs: &[Arc<Job>],
    builds: &[Arc<ImageBuild>],
    scopes: &[Option<String>],
    now: jiff::Timestamp,
) -> BTreeSet<String> {
    let live: BTreeSet<&str> = builds
        .iter()
        .filter_map(|b| b.metadata.uid.as_deref())
        .collect();
    let watched = |ns: &str| scopes.iter().any(|s| s.as_deref().is_none_or(|s| s == ns));
    let old_enough = |job: &Job| {
        job.metadata.creation_timestamp.as_ref().is_some_and(|t| {
            Duration::try_from(now.duration_since(t.0)).is_ok_and(|age| age >= YOUNGEST_ORPHAN)
        })
    };
    jobs.iter()
        .filter(|job| old_enough(job))
        .filter_map(|job| {
            let labels = job.labels();
            let uid = labels.get(LABEL_IMAGEBUILD_UID)?;
            let namespace = labels.get(LABEL_IMAGEBUILD_NAMESPACE)?;
            (!uid.is_empty() && watched(namespace) && !live.contains(uid.as_str()))
                .then(|| uid.clone())
        })
        .collect()
}

/// Deletes the Jobs (with their pods) and Secret copies of the ImageBuild `uid` in
/// `namespace`; what is gone already is fine.
async fn delete_orphan(client: &Client, namespace: &str, uid: &str) {
    let selector = ListParams::default().labels(&format!("{LABEL_IMAGEBUILD_UID}={uid}"));
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let deleted = match jobs.delete_collection(&params, &selector).await {
        Ok(_) => secrets
            .delete_collection(&params, &selector)
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    match deleted {
        Ok(()) => tracing::info!(
            namespace,
            imagebuild_uid = uid,
            "deleted the Jobs and Secret copies of a deleted ImageBuild"
        ),
        Err(e) => {
            tracing::warn!(namespace, imagebuild_uid = uid, error = %e, "could not delete an orphaned run; trying again at the next sweep")
        }
    }
}

/// Sweeps `namespace` every `every`, for as long as the operator runs; `builds` are the
/// ImageBuild stores of every watched scope, `jobs` the build namespace's Job store (all
/// ready before this starts).
pub async fn sweep(
    client: Client,
    namespace: String,
    jobs: Store<Job>,
    builds: Vec<Store<ImageBuild>>,
    scopes: Vec<Option<String>>,
    every: Duration,
) {
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        let all: Vec<Arc<ImageBuild>> = builds.iter().flat_map(|s| s.state()).collect();
        for uid in orphans(&jobs.state(), &all, &scopes, jiff::Timestamp::now()) {
            delete_orphan(&client, &namespace, &uid).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(uid: &str, namespace: &str, created: &str) -> Arc<Job> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("j-{uid}"), "namespace": "builds",
                             "creationTimestamp": created,
                             "labels": {LABEL_IMAGEBUILD_UID: uid, LABEL_IMAGEBUILD_NAMESPACE: namespace}}
            }))
            .unwrap(),
        )
    }

    fn build(uid: &str) -> Arc<ImageBuild> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "apiVersion": "archforge.dev/v1alpha1", "kind": "ImageBuild",
                "metadata": {"name": "app", "namespace": "team-a", "uid": uid},
                "spec": {"source": {"git": {"url": "https://g.example.com/a.git"}},
                         "platforms": ["linux/amd64"], "output": {"image": "r.example.com/a:v1"}}
            }))
            .unwrap(),
        )
    }

    const NOW: &str = "2026-11-23T10:10:00Z";

    #[test]
    fn only_old_jobs_of_gone_imagebuilds_in_watched_namespaces_are_orphans() {
        let now: jiff::Timestamp = NOW.parse().unwrap();
        let jobs = [
            job("live", "team-a", "2026-11-23T10:00:00Z"),
            job("gone", "team-a", "2026-11-23T10:00:00Z"),
            job("young", "team-a", "2026-11-23T10:09:30Z"),
            job("elsewhere", "team-z", "2026-11-23T10:00:00Z"),
        ];
        let builds = [build("live")];
        let scoped = [Some("team-a".to_string())];
        let found = orphans(&jobs, &builds, &scoped, now);
        assert_eq!(found, BTreeSet::from(["gone".to_string()]));
        // Watching every namespace, the other install's namespace is this one's too.
        let found = orphans(&jobs, &builds, &[None], now);
        assert_eq!(
            found,
            BTreeSet::from(["elsewhere".to_string(), "gone".to_string()])
        );
    }

    #[test]
    fn a_job_without_the_labels_or_a_creation_time_is_never_an_orphan() {
        let now: jiff::Timestamp = NOW.parse().unwrap();
        let mut unlabelled = (*job("x", "team-a", "2026-11-23T10:00:00Z")).clone();
        unlabelled.metadata.labels = None;
        let mut undated = (*job("y", "team-a", "2026-11-23T10:00:00Z")).clone();
        undated.metadata.creation_timestamp = None;
        let empty_uid = job("", "team-a", "2026-11-23T10:00:00Z");
        let jobs = [Arc::new(unlabelled), Arc::new(undated), empty_uid];
        assert!(orphans(&jobs, &[], &[None], now).is_empty());
    }
}
