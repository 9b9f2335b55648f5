//! The run's history: a new run's status, and the record of a finished run. Pure.

use crate::api::{ImageBuildStatus, Phase, RunRecord};

/// A status for a new run: the previous run, if it had started and not finished, goes into
/// history as superseded; results of the previous run are cleared.
pub fn start_run(
    previous: &ImageBuildStatus,
    generation: i64,
    rebuild: Option<String>,
    history_limit: usize,
    now: jiff::Timestamp,
) -> ImageBuildStatus {
    let mut history = previous.history.clone();
    if let (Some(old_generation), Some(phase)) = (previous.observed_generation, previous.phase)
        && !matches!(phase, Phase::Succeeded | Phase::Failed)
        && previous.source.is_some()
    {
        history.insert(
            0,
            RunRecord {
                generation: old_generation,
                rebuild: previous.rebuild.clone(),
                commit: previous.source.as_ref().map(|s| s.commit.clone()),
                digest: None,
                result: Phase::Failed,
                start_time: previous
                    .platforms
                    .iter()
                    .filter_map(|p| p.start_time.clone())
                    .min(),
                completion_time: Some(now.to_string()),
                message: Some(format!("superseded by generation {generation}")),
            },
        );
    }
    history.truncate(history_limit);
    ImageBuildStatus {
        observed_generation: Some(generation),
        rebuild,
        conditions: previous.conditions.clone(),
        history,
        ..Default::default()
    }
}

/// Records the finished current run at the head of the history.
pub fn record_run(
    status: &mut ImageBuildStatus,
    result: Phase,
    message: Option<String>,
    history_limit: usize,
    now: jiff::Timestamp,
) {
    let record = RunRecord {
        generation: status.observed_generation.unwrap_or_default(),
        rebuild: status.rebuild.clone(),
        commit: status.source.as_ref().map(|s| s.commit.clone()),
        digest: status.digest.clone(),
        result,
        start_time: status
            .platforms
            .iter()
            .filter_map(|p| p.start_time.clone())
            .min(),
        completion_time: Some(now.to_string()),
        message,
    };
    status.history.insert(0, record);
    status.history.truncate(history_limit);
}
