//! The Events about platforms that changed since the last report: succeeded, failed while
//! allowed to, or held up by something the cluster reports.

use super::report::Note;
use super::{Context, Run};
use crate::api::{Phase, PlatformStatus};
use crate::plan::BuildPlan;
use crate::telemetry::PlatformLabels;

/// Events (and build-time metrics) for the platforms that succeeded since the last report.
pub fn newly_succeeded(ctx: &Context, run: &Run, platforms: &[PlatformStatus]) -> Vec<Note> {
    let mut notes = Vec::new();
    for p in platforms.iter().filter(|p| p.phase == Phase::Succeeded) {
        let was = run
            .previous
            .platforms
            .iter()
            .find(|b| b.platform == p.platform && run.same)
            .map(|b| b.phase);
        if was == Some(Phase::Succeeded) {
            continue;
        }
        if let (Some(start), Some(end)) = (&p.start_time, &p.completion_time)
            && let (Ok(start), Ok(end)) = (
                start.parse::<jiff::Timestamp>(),
                end.parse::<jiff::Timestamp>(),
            )
        {
            ctx.metrics
                .build_duration
                .get_or_create(&PlatformLabels {
                    platform: p.platform.clone(),
                })
                .observe(end.duration_since(start).as_secs_f64());
        }
        let digest = p.digest.clone().unwrap_or_default();
        notes.push(Note::normal(
            "PlatformSucceeded",
            "Build",
            format!("{} pushed {digest}", p.platform),
            p.job.clone(),
        ));
    }
    notes
}

/// Warnings for the platforms allowed to fail that failed since the last report: the run
/// goes on without them.
pub fn newly_failed_optional(
    run: &Run,
    plan: &BuildPlan,
    platforms: &[PlatformStatus],
) -> Vec<Note> {
    plan.platforms
        .iter()
        .zip(platforms)
        .filter(|(p, s)| p.allow_failure && s.phase == Phase::Failed)
        .filter(|(_, s)| {
            !run.same
                || !run
                    .previous
                    .platforms
                    .iter()
                    .any(|b| b.platform == s.platform && b.phase == Phase::Failed)
        })
        .map(|(_, s)| {
            let text = format!(
                "{} failed and may fail; the run goes on without it: {}",
                s.platform,
                s.message.clone().unwrap_or_default()
            );
            Note::warning("OptionalPlatformFailed", "Build", text, s.job.clone())
        })
        .collect()
}

/// Warnings for the platforms held up by something new since the last report (its reason or
/// what the cluster says changed): once per change, not at every look. A platform that
/// failed of it is told by the run's failure instead.
pub fn newly_stuck(run: &Run, platforms: &[PlatformStatus]) -> Vec<Note> {
    platforms
        .iter()
        .filter(|p| !matches!(p.phase, Phase::Succeeded | Phase::Failed))
        .filter_map(|p| Some((p, p.reason.as_deref()?)))
        .filter(|(p, reason)| {
            let before = run
                .previous
                .platforms
                .iter()
                .find(|b| b.platform == p.platform);
            !run.same
                || !before
                    .is_some_and(|b| b.reason.as_deref() == Some(reason) && b.message == p.message)
        })
        .map(|(p, reason)| {
            let text = format!("{}: {}", p.platform, p.message.clone().unwrap_or_default());
            Note::warning(reason, "Build", text, p.job.clone())
        })
        .collect()
}
