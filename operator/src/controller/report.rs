//! The only place that tells the user anything: Events and the status.

use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::Context;
use super::error::{ReconcileError, Result};
use crate::api::{ImageBuild, ImageBuildStatus, Phase};
use crate::render::MANAGER;
use crate::status;

/// One Event to publish about the ImageBuild.
pub struct Note {
    type_: EventType,
    reason: String,
    action: &'static str,
    text: String,
    /// The Job it concerns: each platform's Event then stands on its own (the recorder
    /// would otherwise fold them into one series).
    job: Option<String>,
}

impl Note {
    pub fn normal(reason: &str, action: &'static str, text: String, job: Option<String>) -> Self {
        Note {
            type_: EventType::Normal,
            reason: reason.into(),
            action,
            text,
            job,
        }
    }

    pub fn warning(reason: &str, action: &'static str, text: String, job: Option<String>) -> Self {
        Note {
            type_: EventType::Warning,
            ..Note::normal(reason, action, text, job)
        }
    }
}

/// Whether writing `status` over `observed` would change nothing. Compared as JSON, every
/// field: a condition keeps its lastTransitionTime while its status stays
/// (`status::set_condition`), so an unchanged run compares equal.
pub fn unchanged(status: &ImageBuildStatus, observed: &ImageBuildStatus) -> bool {
    serde_json::to_value(status).ok() == serde_json::to_value(observed).ok()
}

/// Publishes `notes` and writes `status` (server-side apply, one field manager) unless it
/// is the status the ImageBuild has already: a reconcile that finds nothing new makes no
/// request. Notes are only made for what changed, so they are not repeated either.
pub async fn report(
    ctx: &Context,
    build: &ImageBuild,
    status: &ImageBuildStatus,
    notes: Vec<Note>,
) -> Result<()> {
    for note in notes {
        let secondary = note
            .job
            .map(|name| k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("batch/v1".into()),
                kind: Some("Job".into()),
                name: Some(name),
                namespace: build.namespace(),
                ..Default::default()
            });
        let event = Event {
            type_: note.type_,
            reason: note.reason.clone(),
            note: Some(status::keep_tail(&note.text, 1000)),
            action: note.action.into(),
            secondary,
        };
        if let Err(e) = ctx.recorder.publish(&event, &build.object_ref(&())).await {
            tracing::warn!(error = %e, reason = note.reason, "could not publish an event");
        }
    }
    let observed = ctx.observed_status(build);
    if unchanged(status, &observed) {
        return Ok(());
    }
    let api: Api<ImageBuild> =
        Api::namespaced(ctx.client.clone(), &build.namespace().unwrap_or_default());
    let body =
        json!({"apiVersion": "archforge.dev/v1alpha1", "kind": "ImageBuild", "status": status});
    let stored = api
        .patch_status(
            &build.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(body),
        )
        .await
        .map_err(ReconcileError::PatchStatus)?;
    ctx.wrote(
        build,
        stored.metadata.resource_version.clone(),
        stored.status.unwrap_or_else(|| status.clone()),
    );
    observe_latencies(ctx, build, &observed, status, jiff::Timestamp::now());
    Ok(())
}

/// Whether `observed` is already about the run `status` describes.
fn same_run(observed: &ImageBuildStatus, status: &ImageBuildStatus) -> bool {
    observed.observed_generation == status.observed_generation
        && observed.rebuild == status.rebuild
        && observed.start_time == status.start_time
}

fn parse(time: Option<&str>) -> Option<jiff::Timestamp> {
    time?.parse().ok()
}

fn seconds_since(start: jiff::Timestamp, now: jiff::Timestamp) -> f64 {
    now.duration_since(start).as_secs_f64().max(0.0)
}

/// The run latencies, observed once per run when a written status first says so: all Jobs
/// exist (phase Building), the index is pushed (phase Succeeded).
pub fn observe_latencies(
    ctx: &Context,
    build: &ImageBuild,
    observed: &ImageBuildStatus,
    status: &ImageBuildStatus,
    now: jiff::Timestamp,
) {
    let was = same_run(observed, status)
        .then_some(observed.phase)
        .flatten();
    match (was, status.phase) {
        (None | Some(Phase::Pending | Phase::Queued), Some(Phase::Building)) => {
            // A first run started when the ImageBuild was created (the first reconcile may
            // come later under load); a later one when its reconcile began it.
            let first = build.metadata.generation == Some(1) && status.history.is_empty();
            let start = match first {
                true => build.metadata.creation_timestamp.as_ref().map(|t| t.0),
                false => None,
            }
            .or_else(|| parse(status.start_time.as_deref()));
            if let Some(start) = start {
                ctx.metrics
                    .jobs_created_latency
                    .observe(seconds_since(start, now));
            }
        }
        (was, Some(Phase::Succeeded)) if was != Some(Phase::Succeeded) => {
            let last = status
                .platforms
                .iter()
                .filter_map(|p| parse(p.completion_time.as_deref()))
                .max();
            if let Some(last) = last {
                ctx.metrics
                    .index_pushed_latency
                    .observe(seconds_since(last, now));
            }
        }
        _ => {}
    }
}
