//! The Events that say why a builder pod does not start where its status says nothing: the
//! Job controller's `FailedCreate` on a Job that gets no pod (a quota, a LimitRange, Pod
//! Security or a webhook refused it) and the kubelet's `FailedMount` on a pod whose Secret
//! volume cannot be mounted. Each is one watch per watched scope, narrowed by the API
//! server with a field selector, into a store of trimmed Events: no request per build, and
//! a refusal wakes its ImageBuild at once.

use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::api::ImageBuild;
use crate::render::ANNOTATION_IMAGEBUILD;

/// The field selector of the Job controller's refusals to create a Job's pod.
pub const FAILED_CREATE: &str = "involvedObject.kind=Job,reason=FailedCreate";
/// The field selector of the kubelet's failures to mount a pod's volumes.
pub const FAILED_MOUNT: &str = "involvedObject.kind=Pod,reason=FailedMount";

/// A stored message (of an Event, or of a builder pod's status) keeps this many bytes, what
/// the status shows at most: an Event is anyone's who may create Events in the namespace
/// (the default `edit` role may), so what each one costs the shared operator stays small.
pub const MAX_STORED_MESSAGE: usize = crate::status::stuck::MAX_STUCK_MESSAGE;

/// The two Event stores ([`FAILED_CREATE`], [`FAILED_MOUNT`]).
#[derive(Clone)]
pub struct EventStores {
    pub failed_create: Store<Event>,
    pub failed_mount: Store<Event>,
}

/// Keeps of an Event what [`crate::status::stuck`] reads: what it is about (kind, name,
/// UID), its reason, message (bounded) and times. An Event about an object of another
/// namespace than its own (the API server allows that for Events with an eventTime) keeps
/// nothing it could be matched by: no Event of namespace A speaks for a build of B.
pub fn trim_event(event: Event) -> Event {
    let mut about = event.involved_object;
    if about.namespace.is_none() || about.namespace != event.metadata.namespace {
        return Event {
            metadata: ObjectMeta {
                name: event.metadata.name,
                namespace: event.metadata.namespace,
                resource_version: event.metadata.resource_version,
                ..Default::default()
            },
            ..Default::default()
        };
    }
    about.field_path = None;
    Event {
        metadata: ObjectMeta {
            name: event.metadata.name,
            namespace: event.metadata.namespace,
            resource_version: event.metadata.resource_version,
            uid: event.metadata.uid,
            ..Default::default()
        },
        involved_object: ObjectReference {
            kind: about.kind,
            name: about.name,
            namespace: about.namespace,
            uid: about.uid,
            ..Default::default()
        },
        reason: event.reason,
        message: event.message.map(|m| bounded(m, MAX_STORED_MESSAGE)),
        first_timestamp: event.first_timestamp,
        last_timestamp: event.last_timestamp,
        event_time: event.event_time,
        series: event.series,
        type_: event.type_,
        ..Default::default()
    }
}

/// `text` cut to at most `max` bytes on a character boundary, its memory given back: a
/// stored object keeps only what it holds (a megabyte message cut to 4 KiB must not keep
/// its megabyte allocation in the store).
pub fn bounded(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.shrink_to_fit();
    }
    text
}

/// The Events of `store` about the object with UID `uid` in `namespace`. Matched by UID:
/// a Job or pod of the same name from an earlier run is another object.
pub fn about(store: &Store<Event>, namespace: &str, uid: &str) -> Vec<Arc<Event>> {
    store.state_filter(|e| {
        e.involved_object.uid.as_deref() == Some(uid)
            && e.metadata.namespace.as_deref() == Some(namespace)
            && e.involved_object.namespace.as_deref() == Some(namespace)
    })
}

/// The ImageBuild a `FailedCreate` Event concerns: the controller of the Job it is about
/// (in an isolated build namespace, the ImageBuild its annotations name), when the Job
/// store holds that Job (archforge's Jobs only).
pub fn imagebuild_of_job_event(
    event: &Event,
    jobs: &Store<Job>,
    isolated: bool,
) -> Option<ObjectRef<ImageBuild>> {
    let namespace = own_namespace(event)?;
    let name = event.involved_object.name.as_deref()?;
    let job = jobs.get(&ObjectRef::new(name).within(&namespace))?;
    if isolated {
        return crate::plan::isolated::imagebuild_ref(&job.metadata);
    }
    let owner = job
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "ImageBuild")?;
    Some(ObjectRef::new(&owner.name).within(&namespace))
}

/// The ImageBuild a `FailedMount` Event concerns: the one named by the builder pod it is
/// about, when the pod store holds that pod (archforge's builder pods only).
pub fn imagebuild_of_pod_event(
    event: &Event,
    pods: &Store<Pod>,
    isolated: bool,
) -> Option<ObjectRef<ImageBuild>> {
    let namespace = own_namespace(event)?;
    let name = event.involved_object.name.as_deref()?;
    let pod = pods.get(&ObjectRef::new(name).within(&namespace))?;
    if isolated {
        return crate::plan::isolated::imagebuild_ref(&pod.metadata);
    }
    let build = pod.annotations().get(ANNOTATION_IMAGEBUILD)?;
    Some(ObjectRef::new(build).within(&namespace))
}

/// The namespace an Event is in, when the object it is about is in that namespace too.
fn own_namespace(event: &Event) -> Option<String> {
    let namespace = event.metadata.namespace.clone()?;
    (event.involved_object.namespace.as_deref() == Some(namespace.as_str())).then_some(namespace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_stored_event_keeps_what_the_status_reads_and_a_bounded_message() {
        let event: Event = serde_json::from_value(json!({
            "metadata": {"name": "app-1-linux-amd64.17a", "namespace": "team-a", "uid": "e1",
                         "resourceVersion": "7", "managedFields": [{"manager": "kube-controller-manager"}]},
            "involvedObject": {"kind": "Job", "namespace": "team-a", "name": "app-1-linux-amd64",
                               "uid": "job-uid", "apiVersion": "batch/v1", "resourceVersion": "1"},
            "reason": "FailedCreate", "message": format!("Error creating: {}", "é".repeat(10_000)),
            "source": {"component": "job-controller"}, "count": 3, "type": "Warning",
            "firstTimestamp": "2026-11-23T10:00:02Z", "lastTimestamp": "2026-11-23T10:00:40Z"
        }))
        .unwrap();
        let trimmed = trim_event(event);
        let message = trimmed.message.clone().unwrap();
        assert!(message.len() <= MAX_STORED_MESSAGE && message.starts_with("Error creating: "));
        assert!(trimmed.metadata.managed_fields.is_none() && trimmed.source.is_none());
        assert_eq!(trimmed.involved_object.uid.as_deref(), Some("job-uid"));
        assert!(trimmed.first_timestamp.is_some() && trimmed.last_timestamp.is_some());
        let stuck = crate::status::stuck::of_job_events(&[&trimmed]).unwrap();
        assert_eq!(stuck.since.unwrap().to_string(), "2026-11-23T10:00:02Z");
    }

    fn failed_create(namespace: &str, about_namespace: &str, message: String) -> Event {
        serde_json::from_value(json!({
            "metadata": {"name": "forged", "namespace": namespace, "uid": "e2"},
            "involvedObject": {"kind": "Job", "namespace": about_namespace,
                               "name": "app-1-linux-amd64", "uid": "job-uid"},
            "reason": "FailedCreate", "message": message, "type": "Warning",
            "eventTime": "2026-11-23T10:00:02.000000Z"
        }))
        .unwrap()
    }

    #[test]
    fn an_event_about_another_namespace_speaks_for_nothing() {
        // Created in team-a, about team-b's Job: the API server accepts it (with an
        // eventTime), archforge keeps nothing it could be matched by.
        let forged = trim_event(failed_create("team-a", "team-b", "fake".into()));
        assert_eq!(forged.involved_object.uid, None);
        assert_eq!(forged.message, None);
        assert_eq!(own_namespace(&forged), None);
        let (store, mut writer) = kube::runtime::reflector::store::<Event>();
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(failed_create(
            "team-a",
            "team-b",
            "untrimmed".into(),
        )));
        assert!(about(&store, "team-b", "job-uid").is_empty());
        // The same Event in the Job's own namespace is read.
        let own = trim_event(failed_create("team-b", "team-b", "quota".into()));
        assert_eq!(own.involved_object.uid.as_deref(), Some("job-uid"));
        assert_eq!(own_namespace(&own).as_deref(), Some("team-b"));
    }

    #[test]
    fn a_huge_message_keeps_only_its_bounded_bytes_in_memory() {
        let trimmed = trim_event(failed_create("team-a", "team-a", "m".repeat(1 << 20)));
        let message = trimmed.message.unwrap();
        assert_eq!(message.len(), MAX_STORED_MESSAGE);
        assert!(
            message.capacity() < 2 * MAX_STORED_MESSAGE,
            "{}",
            message.capacity()
        );
    }

    #[test]
    fn in_the_build_namespace_an_event_wakes_the_imagebuild_its_job_names() {
        let job: Job = serde_json::from_value(json!({
            "metadata": {"name": "app-1-linux-amd64", "namespace": "builds",
                         "annotations": {"archforge.dev/imagebuild": "app",
                                         "archforge.dev/imagebuild-namespace": "team-a"}}
        }))
        .unwrap();
        let (store, mut writer) = kube::runtime::reflector::store::<Job>();
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(job));
        let event = trim_event(failed_create("builds", "builds", "quota".into()));
        let woken = imagebuild_of_job_event(&event, &store, true).unwrap();
        assert_eq!(
            (woken.name.as_str(), woken.namespace.as_deref()),
            ("app", Some("team-a"))
        );
        // Without a build namespace, only an owner reference names the ImageBuild.
        assert_eq!(imagebuild_of_job_event(&event, &store, false), None);
    }
}
