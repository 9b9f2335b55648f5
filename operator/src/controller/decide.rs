//! What a run does next, from what the cluster shows. Pure: no client, no clock.

use std::collections::BTreeSet;

use k8s_openapi::api::batch::v1::Job;

use crate::api::{Phase, PlatformStatus};
use crate::plan::BuildPlan;

/// The next step of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// No schedulable node for these platforms (nothing of the run exists yet): wait.
    WaitForNodes { platforms: Vec<String> },
    /// These platforms have no Job yet: create them; the run is building.
    CreateJobs { platforms: Vec<String> },
    /// Every Job exists and some are still running.
    Building,
    /// Every platform succeeded: assemble and push the index.
    Assemble,
    /// A platform failed: the run fails, the other Jobs are stopped.
    Fail {
        platform: String,
        job: Option<String>,
        message: String,
    },
}

/// Whether the placement check applies: before the run's first Job exists, and when none of
/// its platforms has finished (a finished platform's Job may be gone after its TTL).
pub fn needs_placement(jobs: &[Job], platforms: &[PlatformStatus]) -> bool {
    jobs.is_empty()
        && !platforms
            .iter()
            .any(|p| matches!(p.phase, Phase::Succeeded | Phase::Failed))
}

/// Decides the run's next step. `platforms` is each platform's status as read from `jobs`
/// and their pods; `architectures` are those with a schedulable node, when they were looked
/// at (see [`needs_placement`]).
pub fn decide(
    plan: &BuildPlan,
    jobs: &[Job],
    platforms: &[PlatformStatus],
    architectures: Option<&BTreeSet<String>>,
) -> Step {
    if let Some(failed) = platforms.iter().find(|p| p.phase == Phase::Failed) {
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
    if !platforms.is_empty() && platforms.iter().all(|p| p.phase == Phase::Succeeded) {
        return Step::Assemble;
    }
    let without_job: Vec<String> = plan
        .platforms
        .iter()
        .zip(platforms)
        .filter(|(p, status)| {
            status.phase != Phase::Succeeded
                && !jobs
                    .iter()
                    .any(|j| j.metadata.name.as_deref() == Some(p.job_name.as_str()))
        })
        .map(|(p, _)| p.platform.to_string())
        .collect();
    if without_job.is_empty() {
        return Step::Building;
    }
    if let Some(architectures) = architectures {
        let no_node: Vec<String> = plan
            .platforms
            .iter()
            .filter(|p| !architectures.contains(&p.platform.architecture))
            .map(|p| p.platform.to_string())
            .collect();
        if !no_node.is_empty() {
            return Step::WaitForNodes { platforms: no_node };
        }
    }
    Step::CreateJobs {
        platforms: without_job,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ImageBuild;
    use crate::plan::{AuthFile, plan};
    use crate::settings::BuilderSettings;
    use crate::validation::ValidSpec;

    fn two_platforms() -> BuildPlan {
        let build: ImageBuild = serde_json::from_value(serde_json::json!({
            "apiVersion": "archforge.dev/v1alpha1", "kind": "ImageBuild",
            "metadata": {"name": "app", "generation": 1},
            "spec": {"source": {"git": {"url": "https://g.example.com/a.git"}},
                     "platforms": ["linux/amd64", "linux/arm64"],
                     "output": {"image": "r.example.com/a:v1"}}
        }))
        .unwrap();
        plan(
            &ValidSpec::check(&build).unwrap(),
            &BuilderSettings::default(),
            "main",
            AuthFile::None,
        )
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
            start_time: None,
            completion_time: None,
            message: Some("exit status 2".into()),
        }
    }

    fn arches(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_new_run_waits_for_a_node_of_every_architecture() {
        let plan = two_platforms();
        let pending = [
            status("linux/amd64", Phase::Pending),
            status("linux/arm64", Phase::Pending),
        ];
        assert!(needs_placement(&[], &pending));
        assert_eq!(
            decide(&plan, &[], &pending, Some(&arches(&["amd64"]))),
            Step::WaitForNodes {
                platforms: vec!["linux/arm64".into()]
            }
        );
        assert_eq!(
            decide(&plan, &[], &pending, Some(&arches(&["amd64", "arm64"]))),
            Step::CreateJobs {
                platforms: vec!["linux/amd64".into(), "linux/arm64".into()]
            }
        );
    }

    #[test]
    fn only_missing_jobs_are_created_and_finished_platforms_never_again() {
        let plan = two_platforms();
        // amd64 succeeded and its Job is gone (TTL); arm64's Job was never created.
        let platforms = [
            status("linux/amd64", Phase::Succeeded),
            status("linux/arm64", Phase::Pending),
        ];
        assert!(!needs_placement(&[], &platforms));
        assert_eq!(
            decide(&plan, &[], &platforms, None),
            Step::CreateJobs {
                platforms: vec!["linux/arm64".into()]
            }
        );
        let jobs = [job("app-1-linux-amd64"), job("app-1-linux-arm64")];
        let building = [
            status("linux/amd64", Phase::Building),
            status("linux/arm64", Phase::Pending),
        ];
        assert!(!needs_placement(&jobs, &building));
        assert_eq!(decide(&plan, &jobs, &building, None), Step::Building);
    }

    #[test]
    fn a_failure_wins_over_creating_the_rest() {
        let plan = two_platforms();
        let platforms = [
            status("linux/amd64", Phase::Failed),
            status("linux/arm64", Phase::Pending),
        ];
        let step = decide(&plan, &[job("app-1-linux-amd64")], &platforms, None);
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
    fn every_platform_succeeded_means_assemble() {
        let plan = two_platforms();
        let done = [
            status("linux/amd64", Phase::Succeeded),
            status("linux/arm64", Phase::Succeeded),
        ];
        assert_eq!(decide(&plan, &[], &done, None), Step::Assemble);
    }
}
