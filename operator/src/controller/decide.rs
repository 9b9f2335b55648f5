//! What a run does next, from what the cluster shows. Pure: no client, no clock.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;

use super::placement::{Nodes, Unplaced, place};
use crate::api::{Phase, PlatformStatus};
use crate::plan::{BuildPlan, Placement, PlatformPlan};

/// The next step of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// No node qualifies for these platforms yet: wait, and look again in `retry_in` at the
    /// latest (when an emulation grace period ends). `why` says why no node qualifies.
    WaitForNodes {
        platforms: Vec<String>,
        retry_in: Option<Duration>,
        why: String,
    },
    /// These platforms have no Job yet: create them where they are placed.
    CreateJobs { platforms: Vec<(String, Placement)> },
    /// Every Job exists and some are still running.
    Building,
    /// Every platform finished and every one that may not fail succeeded: push the index of
    /// those that succeeded.
    Assemble,
    /// A platform that may not fail failed: the run fails, the other Jobs are stopped.
    Fail {
        platform: String,
        job: Option<String>,
        message: String,
    },
}

fn is_finished(status: &PlatformStatus) -> bool {
    matches!(status.phase, Phase::Succeeded | Phase::Failed)
}

fn has_job(jobs: &[Job], platform: &PlatformPlan) -> bool {
    jobs.iter()
        .any(|j| j.metadata.name.as_deref() == Some(platform.job_name.as_str()))
}

/// The platforms that still need a Job: unfinished, and without one.
fn without_job<'a>(
    plan: &'a BuildPlan,
    jobs: &[Job],
    platforms: &[PlatformStatus],
) -> Vec<&'a PlatformPlan> {
    plan.platforms
        .iter()
        .zip(platforms)
        .filter(|(p, status)| !is_finished(status) && !has_job(jobs, p))
        .map(|(p, _)| p)
        .collect()
}

/// Whether placement has to look at the nodes: some platform still needs a Job.
pub fn needs_nodes(plan: &BuildPlan, jobs: &[Job], platforms: &[PlatformStatus]) -> bool {
    !without_job(plan, jobs, platforms).is_empty()
}

/// Decides the run's next step. `platforms` is each platform's status as read from `jobs`
/// and their pods; `nodes` are looked at when some platform still needs a Job (see
/// [`needs_nodes`]); `waited` is how long the run has been going.
pub fn decide(
    plan: &BuildPlan,
    jobs: &[Job],
    platforms: &[PlatformStatus],
    nodes: Option<&Nodes>,
    waited: Duration,
) -> Step {
    let required_failure = plan
        .platforms
        .iter()
        .zip(platforms)
        .find(|(p, s)| s.phase == Phase::Failed && !p.allow_failure);
    if let Some((_, failed)) = required_failure {
        return Step::Fail {
            platform: failed.platform.clone(),
            job: failed.job.clone(),
            message: format!(
                "{} failed: {}",
                failed.platform,
                failed.message.clone().unwrap_or_default()
            ),
        };
    }
    if !platforms.is_empty() && platforms.iter().all(is_finished) {
        return Step::Assemble;
    }
    let missing = without_job(plan, jobs, platforms);
    if missing.is_empty() {
        return Step::Building;
    }
    // All that is missing is placed, or none of it: a new run starts whole.
    let nodes = nodes.cloned().unwrap_or_default();
    match place(plan, &missing, &nodes, waited) {
        Ok(placed) => Step::CreateJobs { platforms: placed },
        Err(Unplaced {
            platforms,
            retry_in,
            why,
        }) => Step::WaitForNodes {
            platforms,
            retry_in,
            why,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::placement::fixtures::{build_of, nodes, plan_of, survey};

    const MIN: Duration = Duration::from_secs(60);

    fn two_platforms() -> BuildPlan {
        plan_of(&build_of(serde_json::json!({})))
    }

    fn job(name: &str) -> Job {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap()
    }

    fn status(platform: &str, phase: Phase) -> PlatformStatus {
        PlatformStatus {
            platform: platform.into(),
            job: None,
            phase,
            digest: None,
            signature: None,
            attestation: None,
            start_time: None,
            completion_time: None,
            message: Some("exit status 2".into()),
            reason: None,
            emulated: None,
            job_uid: None,
        }
    }

    fn pending() -> [PlatformStatus; 2] {
        [
            status("linux/amd64", Phase::Pending),
            status("linux/arm64", Phase::Pending),
        ]
    }

    #[test]
    fn a_new_run_waits_for_a_node_of_every_architecture() {
        let build = build_of(serde_json::json!({}));
        let plan = plan_of(&build);
        assert!(needs_nodes(&plan, &[], &pending()));
        let amd64_only = survey(&build, &nodes(&["amd64"], &[("arm64", "amd64")]));
        // Never (the default) does not emulate, even where a node could.
        assert!(matches!(
            decide(&plan, &[], &pending(), Some(&amd64_only), 10 * MIN),
            Step::WaitForNodes { platforms, retry_in: None, why }
                if platforms == ["linux/arm64"] && why.contains("no node has kubernetes.io/arch=arm64")
        ));
        let both = survey(&build, &nodes(&["amd64", "arm64"], &[]));
        assert_eq!(
            decide(&plan, &[], &pending(), Some(&both), MIN),
            Step::CreateJobs {
                platforms: vec![
                    ("linux/amd64".into(), Placement::Native),
                    ("linux/arm64".into(), Placement::Native)
                ]
            }
        );
        // Without a look at the nodes (none needed), nothing is placed.
        assert!(matches!(
            decide(&plan, &[], &pending(), None, MIN),
            Step::WaitForNodes { platforms, .. } if platforms.len() == 2
        ));
    }

    #[test]
    fn only_missing_jobs_are_created_and_finished_platforms_never_again() {
        let plan = two_platforms();
        // amd64 succeeded and its Job is gone (TTL); arm64's Job was never created.
        let platforms = [
            status("linux/amd64", Phase::Succeeded),
            status("linux/arm64", Phase::Pending),
        ];
        assert!(needs_nodes(&plan, &[], &platforms));
        let arm64 = survey(&build_of(serde_json::json!({})), &nodes(&["arm64"], &[]));
        assert_eq!(
            decide(&plan, &[], &platforms, Some(&arm64), MIN),
            Step::CreateJobs {
                platforms: vec![("linux/arm64".into(), Placement::Native)]
            }
        );
        let jobs = [job("app-1-linux-amd64"), job("app-1-linux-arm64")];
        let building = [
            status("linux/amd64", Phase::Building),
            status("linux/arm64", Phase::Pending),
        ];
        assert!(!needs_nodes(&plan, &jobs, &building));
        assert_eq!(decide(&plan, &jobs, &building, None, MIN), Step::Building);
    }

    #[test]
    fn a_failure_wins_over_creating_the_rest() {
        let plan = two_platforms();
        let platforms = [
            status("linux/amd64", Phase::Failed),
            status("linux/arm64", Phase::Pending),
        ];
        let step = decide(&plan, &[job("app-1-linux-amd64")], &platforms, None, MIN);
        assert_eq!(
            step,
            Step::Fail {
                platform: "linux/amd64".into(),
                job: None,
                message: "linux/amd64 failed: exit status 2".into()
            }
        );
    }

    #[test]
    fn a_platform_allowed_to_fail_does_not_fail_the_run() {
        let plan = plan_of(&build_of(serde_json::json!({
            "platformSettings": [{"platform": "linux/arm64", "allowFailure": true}]
        })));
        let jobs = [job("app-1-linux-amd64"), job("app-1-linux-arm64")];
        let arm64_failed = [
            status("linux/amd64", Phase::Building),
            status("linux/arm64", Phase::Failed),
        ];
        assert_eq!(
            decide(&plan, &jobs, &arm64_failed, None, MIN),
            Step::Building
        );
        let done = [
            status("linux/amd64", Phase::Succeeded),
            status("linux/arm64", Phase::Failed),
        ];
        assert_eq!(decide(&plan, &jobs, &done, None, MIN), Step::Assemble);
        // The one that may not fail still fails the run.
        let amd64_failed = [
            status("linux/amd64", Phase::Failed),
            status("linux/arm64", Phase::Succeeded),
        ];
        assert!(matches!(
            decide(&plan, &jobs, &amd64_failed, None, MIN),
            Step::Fail { platform, .. } if platform == "linux/amd64"
        ));
    }

    #[test]
    fn every_platform_succeeded_means_assemble() {
        let plan = two_platforms();
        let done = [
            status("linux/amd64", Phase::Succeeded),
            status("linux/arm64", Phase::Succeeded),
        ];
        assert_eq!(decide(&plan, &[], &done, None, MIN), Step::Assemble);
    }
}
