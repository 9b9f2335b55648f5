//! Why a builder pod (or its Job, when it has no pod) is not getting on, from what the
//! scheduler, the kubelet and the Job controller wrote: the pod's `PodScheduled` condition,
//! its `status.reason` (a kubelet refusal), its containers' waiting and terminated states,
//! and the Events they leave where the pod's status says nothing (`FailedCreate` on the Job,
//! `FailedMount` on the pod). Pure: objects in, no client and no clock.
//!
//! Some of these never clear by themselves ([`Stuck::permanent`]): the platform fails with
//! that reason once they have lasted the operator's grace period (`--stuck-grace`), counted
//! from the time the cluster recorded ([`Stuck::since`]), so a restarted operator counts on.
//! The others are reported and fail only by the Job's own rules (its deadline, its retries).

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::fatal::known_failure;
use crate::render::{BUILDER_CONTAINER, GIT_SYNC_CONTAINER, PUSH_CONTAINER};

/// A status message about a stuck pod keeps this many bytes of what the cluster said.
pub const MAX_STUCK_MESSAGE: usize = 1024;

/// What holds a builder pod (or its Job) up.
#[derive(Clone, Debug, PartialEq)]
pub struct Stuck {
    /// One word, as the cluster names it (`Unschedulable`, `AppArmor`, `ErrImagePull`,
    /// `FailedCreate`, ...) or as archforge names a known builder failure.
    pub reason: String,
    /// What the cluster said, cleaned and bounded, with the fix where archforge knows it.
    pub message: String,
    /// Since when, as the cluster recorded it; `None` when it recorded no time.
    pub since: Option<jiff::Timestamp>,
}

/// Waiting reasons of containers that are on their way: nothing to report.
const ON_THE_WAY: &[&str] = &["ContainerCreating", "PodInitializing", "Blocked"];

/// Kubelet refusals of a pod it will look at again (soft admission: the pod stays
/// `Pending`) that depend on the node's configuration, not on time.
const NODE_REFUSALS: &[&str] = &["AppArmor", "SeccompProfile", "NoNewPrivs", "ProcMount"];

impl Stuck {
    /// The same, counted from no earlier than `created` (the Job's or pod's creation): an
    /// Event's times are whatever its writer said, and a backdated one must not skip the
    /// grace period.
    pub fn not_before(mut self, created: Option<jiff::Timestamp>) -> Stuck {
        if let (Some(since), Some(created)) = (self.since, created) {
            self.since = Some(since.max(created));
        }
        self
    }

    fn new(reason: &str, message: String, since: Option<jiff::Timestamp>) -> Stuck {
        Stuck {
            reason: clean(reason, 64),
            message: clean(&message, MAX_STUCK_MESSAGE),
            since,
        }
    }

    /// Whether this will not clear by itself, so that waiting out the build's timeout only
    /// delays the failure: a node that cannot enforce the pod's confinement, an image that
    /// does not exist or cannot be named, a missing Secret or key, a pod the namespace's
    /// policies forbid. Pull errors of other kinds, `Unschedulable` (a node may be added),
    /// quota (other pods finish) and kubelet resource refusals (the Job retries) are not.
    pub fn permanent(&self) -> bool {
        let m = self.message.to_ascii_lowercase();
        match self.reason.as_str() {
            r if NODE_REFUSALS.contains(&r) => true,
            "InvalidImageName" | "ErrImageNeverPull" | "CreateContainerConfigError" => true,
            "ErrImagePull" => image_missing(&m),
            "CreateContainerError" => m.contains("seccomp") || m.contains("apparmor"),
            "FailedMount" => {
                (m.contains("secret \"") && m.contains("not found"))
                    || m.contains("non-existent secret key")
                    || (m.contains("configmap \"") && m.contains("not found"))
            }
            "FailedCreate" => {
                !m.contains("exceeded quota")
                    && (m.contains("forbidden")
                        || m.contains("denied the request")
                        || m.contains("invalid value"))
            }
            _ => false,
        }
    }

    /// How long until the grace period after [`Stuck::since`] ends; `Some(ZERO)` once it
    /// has. A stuck condition with no time starts its grace period now, which a restart
    /// starts again: the kubelet and the scheduler always record one.
    pub fn grace_left(&self, now: jiff::Timestamp, grace: Duration) -> Duration {
        let waited = self
            .since
            .and_then(|since| Duration::try_from(now.duration_since(since)).ok())
            .unwrap_or_default();
        grace.saturating_sub(waited)
    }
}

/// Whether a pull error says the image is not there (containerd, CRI-O and registries
/// say it in these words), rather than that the registry could not be reached.
fn image_missing(message: &str) -> bool {
    [
        "not found",
        "manifest unknown",
        "name unknown",
        "repository does not exist",
    ]
    .iter()
    .any(|w| message.contains(w))
}

/// `text` on one line without control characters (a pod's status is anyone's who can write
/// it: a message may carry escape sequences or be megabytes long), at most `max` bytes,
/// keeping the start where the cause is said.
pub fn clean(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.trim().chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > max.saturating_sub(3) {
            out.push_str("...");
            return out;
        }
        out.push(c);
    }
    out
}

fn time(t: Option<&Time>) -> Option<jiff::Timestamp> {
    t.map(|t| t.0)
}

/// When the kubelet took the pod: from then on its containers wait for what they wait for
/// (a waiting state records no time of its own).
fn started(pod: &Pod) -> Option<jiff::Timestamp> {
    let status = pod.status.as_ref()?;
    time(status.start_time.as_ref())
        .or_else(|| time(scheduled(pod).and_then(|c| c.last_transition_time.as_ref())))
        .or_else(|| time(pod.metadata.creation_timestamp.as_ref()))
}

fn scheduled(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled")
}

/// Why `pod` is not getting on, from its status alone; `None` while it is on its way, runs,
/// succeeded, is being deleted, or failed in an ordinary way (its log tail says why: see
/// [`super::pod_report`]).
pub fn of_pod(pod: &Pod) -> Option<Stuck> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    let phase = status.phase.as_deref().unwrap_or("Pending");
    if let Some(reason) = status.reason.as_deref().filter(|r| !r.is_empty())
        && matches!(phase, "Pending" | "Failed")
    {
        let said = status.message.as_deref().unwrap_or(reason);
        let message = format!(
            "the kubelet refused the builder pod: {said}{}",
            refusal_fix(reason)
        );
        return Some(Stuck::new(reason, message, started(pod)));
    }
    if let Some(c) = scheduled(pod).filter(|c| c.status == "False")
        && c.reason.as_deref() == Some("Unschedulable")
    {
        let said = c.message.as_deref().unwrap_or("no node fits");
        let message = format!(
            "the builder pod cannot be scheduled: {said}; it starts when a node fits (check spec.resources, nodeSelector and tolerations)"
        );
        return Some(Stuck::new(
            "Unschedulable",
            message,
            time(c.last_transition_time.as_ref()),
        ));
    }
    if phase == "Succeeded" {
        return None;
    }
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    containers.into_iter().find_map(|c| of_container(pod, c))
}

/// A container that cannot start, or a builder that died of a known cause.
fn of_container(pod: &Pod, c: &ContainerStatus) -> Option<Stuck> {
    let state = c.state.as_ref()?;
    if let Some(waiting) = &state.waiting {
        let reason = waiting
            .reason
            .as_deref()
            .filter(|r| !ON_THE_WAY.contains(r))?;
        let said = waiting.message.as_deref().unwrap_or(reason);
        let message = format!(
            "the {} container cannot start: {said}{}",
            c.name,
            waiting_fix(&c.name, reason, said)
        );
        return Some(Stuck::new(reason, message, started(pod)));
    }
    let terminated = state.terminated.as_ref()?;
    if terminated.exit_code == 0 {
        return None;
    }
    let finished = time(terminated.finished_at.as_ref()).or_else(|| started(pod));
    let said = terminated.message.as_deref().unwrap_or_default();
    if let Some(known) = (c.name == BUILDER_CONTAINER)
        .then(|| known_failure(said))
        .flatten()
    {
        return Some(Stuck::new(known.reason, known.fix.to_string(), finished));
    }
    // The runtime could not start the process at all (exit code 128): not the build's fault.
    (terminated.reason.as_deref() == Some("StartError")).then(|| {
        let message = format!("the {} container could not be started: {said}", c.name);
        Stuck::new("StartError", message, finished)
    })
}

/// What to do about a kubelet refusal, where archforge knows.
fn refusal_fix(reason: &str) -> &'static str {
    match reason {
        "AppArmor" => {
            " — the node cannot apply the builder's AppArmor profile: load it on every build node (config/apparmor), or use the AppArmor setting for nodes without AppArmor (README, Node requirements)"
        }
        "SeccompProfile" => {
            " — the node cannot apply the builder's seccomp profile: install it on the node (the chart's nodeProfiles.enabled=true, or config/node-profiles)"
        }
        _ => "",
    }
}

/// What to do about a container that cannot start, where archforge knows.
fn waiting_fix(container: &str, reason: &str, said: &str) -> &'static str {
    let image = match container {
        GIT_SYNC_CONTAINER => {
            " — check the git-sync image (--git-sync-image, chart builder.gitSyncImage) and that the node can pull it"
        }
        PUSH_CONTAINER => {
            " — check the pusher image (--pusher-image, chart builder.pusherImage; the operator's own image by default) and that the node can pull it"
        }
        _ => {
            " — check the builder image (--builder-image or --buildkit-image, chart builder.image or builder.buildkitImage) and that the node can pull it"
        }
    };
    match reason {
        "InvalidImageName" | "ErrImageNeverPull" => image,
        "ErrImagePull" | "ImagePullBackOff" if image_missing(&said.to_ascii_lowercase()) => image,
        "CreateContainerConfigError" if said.contains("ecret") => {
            " — create the Secret (and key) that spec.source.git.credentialsSecret names in the ImageBuild's namespace"
        }
        _ => "",
    }
}

/// When an Event was last and first seen: the legacy fields the Job controller and kubelet
/// write, or the newer eventTime/series.
fn last_seen(e: &Event) -> Option<jiff::Timestamp> {
    time(e.last_timestamp.as_ref())
        .or_else(|| e.series.as_ref()?.last_observed_time.as_ref().map(|t| t.0))
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| time(e.first_timestamp.as_ref()))
}

fn first_seen(e: &Event) -> Option<jiff::Timestamp> {
    time(e.first_timestamp.as_ref())
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| last_seen(e))
}

/// The latest of `events` with `reason`, and when the first of them was seen.
fn latest<'a>(events: &[&'a Event], reason: &str) -> Option<(&'a Event, Option<jiff::Timestamp>)> {
    let matching: Vec<&Event> = events
        .iter()
        .copied()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect();
    let newest = matching.iter().copied().max_by_key(|e| last_seen(e))?;
    let first = matching.iter().filter_map(|e| first_seen(e)).min();
    Some((newest, first))
}

/// Why a Job has no pod: the Job controller's `FailedCreate` Events about it (a quota, a
/// LimitRange, Pod Security or a webhook refused the pod). The pod's generated name, which
/// changes at every attempt, is left out so that the message stays the same.
pub fn of_job_events(events: &[&Event]) -> Option<Stuck> {
    let (event, since) = latest(events, "FailedCreate")?;
    let said = event.message.as_deref().unwrap_or_default();
    let said = said.strip_prefix("Error creating: ").unwrap_or(said);
    let said = match said.split_once(" is forbidden: ") {
        Some((_, why)) => format!("forbidden: {why}"),
        None => said.to_string(),
    };
    let message = format!(
        "the Job controller cannot create the builder pod: {said} — check the namespace's ResourceQuota, LimitRange and Pod Security level against spec.resources"
    );
    Some(Stuck::new("FailedCreate", message, since))
}

/// Why a pod's containers wait without a word in its status: the kubelet's `FailedMount`
/// Events about it (a Secret volume whose Secret or key is missing).
pub fn of_pod_events(events: &[&Event]) -> Option<Stuck> {
    let (event, since) = latest(events, "FailedMount")?;
    let said = event.message.as_deref().unwrap_or_default();
    let fix = match said.contains("ecret") {
        true => {
            " — create the Secret (with its key) that spec.output.pushSecret or spec.source.git.credentialsSecret names in the ImageBuild's namespace"
        }
        false => "",
    };
    let message = format!("the kubelet cannot mount the builder pod's volumes: {said}{fix}");
    Some(Stuck::new("FailedMount", message, since))
}

/// A pod bound to a node whose containers all still wait, with nothing in its status but
/// "on the way" reasons (or none): what its Events may explain. Once a container ran, its
/// volumes were mounted, and an earlier `FailedMount` is history.
pub fn waits_silently(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    let all_waiting = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .all(|c| c.state.as_ref().is_none_or(|s| s.waiting.is_some()));
    status.phase.as_deref() == Some("Pending")
        && all_waiting
        && pod.metadata.deletion_timestamp.is_none()
        && of_pod(pod).is_none()
        && scheduled(pod).is_some_and(|c| c.status == "True")
}

/// While a pull is retried the kubelet alternates `ErrImagePull` (which says why) and
/// `ImagePullBackOff` (which only says it waits): the status keeps the former, so it does
/// not change (nor an Event repeat) at every retry, and a missing image stays permanent.
pub fn keep_informative(now: Stuck, before: Option<(&str, &str)>) -> Stuck {
    match before {
        Some(("ErrImagePull", message)) if now.reason == "ImagePullBackOff" => Stuck {
            reason: "ErrImagePull".into(),
            message: message.to_string(),
            since: now.since,
        },
        _ => now,
    }
}

/// How long until the first of the grace periods of `stuck` that will end ends (a second
/// late, so the look that follows finds it over): when the reconcile should look again.
pub fn next_grace_end<'a>(
    stuck: impl IntoIterator<Item = &'a Stuck>,
    patience: super::Patience,
) -> Option<Duration> {
    stuck
        .into_iter()
        .filter(|s| s.permanent())
        .map(|s| s.grace_left(patience.now, patience.grace))
        .filter(|left| !left.is_zero())
        .min()
        .map(|left| left + Duration::from_secs(1))
}

#[cfg(test)]
#[path = "stuck_tests.rs"]
mod tests;
