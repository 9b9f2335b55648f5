//! An isolated build namespace: ImageBuilds stay in their tenants' namespaces, their Jobs,
//! pods and per-run Secret copies live in one namespace no tenant may write to. Pure: the
//! names, labels and objects that mode needs, from the ImageBuild and the plan.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::ResourceExt;

use super::{BuildPlan, RunId, SecretNames, dns_label_hashing, job_name, short_hash};
use crate::api::ImageBuild;
use crate::render::{ANNOTATION_IMAGEBUILD, LABEL_MANAGED_BY, MANAGER};

/// On every Job, pod and Secret of the build namespace: the ImageBuild's namespace.
pub const LABEL_IMAGEBUILD_NAMESPACE: &str = "archforge.dev/imagebuild-namespace";
/// On every Job, pod and Secret of the build namespace: the ImageBuild's UID.
pub const LABEL_IMAGEBUILD_UID: &str = "archforge.dev/imagebuild-uid";
/// The ImageBuild's namespace, in full (beside [`ANNOTATION_IMAGEBUILD`], its name).
pub const ANNOTATION_IMAGEBUILD_NAMESPACE: &str = "archforge.dev/imagebuild-namespace";
/// Holds an ImageBuild whose Jobs and Secret copies live in the build namespace until they
/// are deleted: owner references cannot cross namespaces.
pub const FINALIZER: &str = "archforge.dev/build-cleanup";

/// The kinds of Secret a run copies, as they end the copies' names.
pub const GIT: &str = "git";
pub const PUSH: &str = "push";
pub const PULL: &str = "pull";

/// The name of the per-run copy of a Secret of `kind` for Job `job`: `<job>-<kind>`.
pub fn secret_copy_name(job: &str, kind: &str) -> String {
    format!("{job}-{kind}")
}

/// The room a run name leaves for the platform slug ("-linux-ppc64le", 14 characters).
const SLUG_ROOM: usize = 14;

/// The prefix of the Job names of `build`'s current run in the build namespace:
/// `<name>-<hash of namespace/name/uid>-<generation>[-r<hash>]`. Two tenants' ImageBuilds
/// of the same name never share it, nor does an ImageBuild deleted and created again.
pub fn run_name(build: &ImageBuild) -> String {
    let run = RunId::of(build);
    let name = build.metadata.name.as_deref().unwrap_or("imagebuild");
    let namespace = build.metadata.namespace.as_deref().unwrap_or_default();
    let uid = build.metadata.uid.as_deref().unwrap_or_default();
    let owner = short_hash(&format!("{namespace}/{name}/{uid}"));
    let suffix = match &run.rebuild {
        Some(token) => format!("-{owner}-{}-r{}", run.generation, &short_hash(token)[..6]),
        None => format!("-{owner}-{}", run.generation),
    };
    let budget = 63 - suffix.len() - SLUG_ROOM;
    let prefix = dns_label_hashing(name, budget, &format!("uid:{uid}"));
    format!("{prefix}{suffix}")
}

/// The Job names of `build`'s current run in the build namespace, one per valid platform.
pub fn current_job_names(build: &ImageBuild) -> Vec<String> {
    super::job_names(build, &run_name(build))
}

/// `plan` as it runs in the build namespace: its Jobs named by [`run_name`].
pub fn isolate(mut plan: BuildPlan, build: &ImageBuild) -> BuildPlan {
    plan.run_name = run_name(build);
    for p in plan.platforms.iter_mut() {
        p.job_name = job_name(&plan.run_name, &p.platform);
    }
    plan
}

/// The Secrets Job `job` mounts: the copies of the ImageBuild's own `secrets`.
pub fn copies_for(secrets: &SecretNames, job: &str) -> SecretNames {
    let copy = |name: &Option<String>, kind| name.as_ref().map(|_| secret_copy_name(job, kind));
    SecretNames {
        git: copy(&secrets.git, GIT),
        push: copy(&secrets.push, PUSH),
        pull: copy(&secrets.pull, PULL),
    }
}

/// The labels that tie an object of the build namespace to its ImageBuild.
pub fn labels(build: &ImageBuild) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGER.to_string()),
        (
            LABEL_IMAGEBUILD_NAMESPACE.to_string(),
            build.namespace().unwrap_or_default(),
        ),
        (
            LABEL_IMAGEBUILD_UID.to_string(),
            build.metadata.uid.clone().unwrap_or_default(),
        ),
    ])
}

/// The annotations that name an object's ImageBuild in full.
pub fn annotations(build: &ImageBuild) -> BTreeMap<String, String> {
    BTreeMap::from([
        (ANNOTATION_IMAGEBUILD.to_string(), build.name_any()),
        (
            ANNOTATION_IMAGEBUILD_NAMESPACE.to_string(),
            build.namespace().unwrap_or_default(),
        ),
    ])
}

/// The label selector of everything `build` has in the build namespace.
pub fn selector(build: &ImageBuild) -> String {
    let uid = build.metadata.uid.as_deref().unwrap_or_default();
    format!("{LABEL_IMAGEBUILD_UID}={uid}")
}

fn add(meta: &mut ObjectMeta, build: &ImageBuild) {
    meta.labels.get_or_insert_default().extend(labels(build));
    meta.annotations
        .get_or_insert_default()
        .extend(annotations(build));
}

/// A rendered Job moved into the build namespace: no owner reference (none can cross
/// namespaces), the ImageBuild named by labels and annotations on the Job and its pods.
pub fn isolate_job(mut job: Job, build: &ImageBuild, namespace: &str) -> Job {
    job.metadata.namespace = Some(namespace.to_string());
    job.metadata.owner_references = None;
    add(&mut job.metadata, build);
    if let Some(template) = job.spec.as_mut().map(|s| &mut s.template) {
        add(template.metadata.get_or_insert_default(), build);
    }
    job
}

/// The ImageBuild (namespace, name) an object of the build namespace belongs to, from its
/// annotations.
pub fn imagebuild_of(meta: &ObjectMeta) -> Option<(String, String)> {
    let annotations = meta.annotations.as_ref()?;
    Some((
        annotations.get(ANNOTATION_IMAGEBUILD_NAMESPACE)?.clone(),
        annotations.get(ANNOTATION_IMAGEBUILD)?.clone(),
    ))
}

/// [`imagebuild_of`] as a reference, for the controller's watches.
pub fn imagebuild_ref(
    meta: &ObjectMeta,
) -> Option<kube::runtime::reflector::ObjectRef<ImageBuild>> {
    let (namespace, name) = imagebuild_of(meta)?;
    Some(kube::runtime::reflector::ObjectRef::new(&name).within(&namespace))
}

/// Whether an object of the build namespace carries `build`'s namespace and UID labels.
pub fn belongs_to(meta: &ObjectMeta, build: &ImageBuild) -> bool {
    let Some(labels) = meta.labels.as_ref() else {
        return false;
    };
    let uid = build.metadata.uid.as_deref();
    uid.is_some()
        && labels.get(LABEL_IMAGEBUILD_UID).map(String::as_str) == uid
        && labels.get(LABEL_IMAGEBUILD_NAMESPACE) == build.metadata.namespace.as_ref()
}

/// The data keys the builder pod reads from a Secret of `kind`: git-sync's (over SSH or
/// HTTP), or a docker config.
pub fn keys_used(kind: &str, ssh: bool) -> &'static [&'static str] {
    match (kind, ssh) {
        (GIT, true) => &["ssh-privatekey", "known_hosts"],
        (GIT, false) => &["username", "password"],
        _ => &[".dockerconfigjson"],
    }
}

/// The per-run copy of `source` (a Secret of kind `kind`) for `job`: only the keys the pod
/// uses, owned by the Job (so it goes with it), labelled like the Job.
pub fn secret_copy(
    source: &Secret,
    kind: &str,
    ssh: bool,
    job: &Job,
    build: &ImageBuild,
) -> Secret {
    let data: BTreeMap<String, ByteString> = source
        .data
        .iter()
        .flatten()
        .filter(|(key, _)| keys_used(kind, ssh).contains(&key.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let owner = OwnerReference {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        name: job.name_any(),
        uid: job.metadata.uid.clone().unwrap_or_default(),
        ..Default::default()
    };
    let mut metadata = ObjectMeta {
        name: Some(secret_copy_name(&job.name_any(), kind)),
        namespace: job.metadata.namespace.clone(),
        owner_references: Some(vec![owner]),
        ..Default::default()
    };
    add(&mut metadata, build);
    Secret {
        metadata,
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
