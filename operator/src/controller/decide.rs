//! What a run does next, from what the cluster shows. Pure: no client, no clock.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;

use crate::api::{Emulation, Phase, PlatformStatus};
use crate::plan::{BuildPlan, Placement, PlatformPlan};

/// The next step of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// No node can take these platforms yet: wait, and look again in `retry_in` at the
    /// latest (when an emulation grace period ends).
    WaitForNodes {
        platforms: Vec<String>,
        retry_in: Option<Duration>,
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

/// The schedulable, Ready nodes, as placement sees them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Nodes {
    /// Architectures with at least one node.
    pub native: BTreeSet<String>,
    /// For each architecture, the architectures of nodes labelled as able to emulate it
    /// (`emulation.archforge.dev/<arch>=true`).
    pub emulating: BTreeMap<String, BTreeSet<String>>,
}

impl Nodes {
    /// The host architecture to emulate `architecture` on: amd64 first, then arm64, then
    /// the others in order, for a stable choice across reconciles.
    fn emulator_of(&self, architecture: &str) -> Option<String> {
        let hosts = self.emulating.get(architecture)?;
        host_preference(hosts.iter().filter(|h| self.native.contains(*h))).next()
    }
}

fn host_preference<'a>(hosts: impl Iterator<Item = &'a String>) -> impl Iterator<Item = String> {
    let mut hosts: Vec<&String> = hosts.collect();
    hosts.sort_by_key(|h| (h.as_str() != "amd64", h.as_str() != "arm64", h.to_string()));
    hosts.into_iter().cloned()
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

/// The platforms that cannot be placed yet, and when to look again at the latest.
pub type Unplaced = (Vec<String>, Option<Duration>);

/// Where each of `platforms` builds, or which cannot be placed yet. `waited` is how long
/// the run has been waiting, for the Fallback grace period.
pub fn place(
    plan: &BuildPlan,
    platforms: &[&PlatformPlan],
    nodes: &Nodes,
    waited: Duration,
) -> Result<Vec<(String, Placement)>, Unplaced> {
    let arch = |p: &PlatformPlan| p.platform.architecture.clone();
    let mut placed = Vec::new();
    let mut waiting = Vec::new();
    let mut retry_in = None;
    match plan.emulation {
        Emulation::Never | Emulation::Fallback => {
            for p in platforms {
                if nodes.native.contains(&arch(p)) {
                    placed.push((p.platform.to_string(), Placement::Native));
                } else if plan.emulation == Emulation::Fallback && waited < plan.emulation_after {
                    waiting.push(p.platform.to_string());
                    retry_in = Some(plan.emulation_after - waited);
                } else if let Some(host) = (plan.emulation == Emulation::Fallback)
                    .then(|| nodes.emulator_of(&arch(p)))
                    .flatten()
                {
                    placed.push((p.platform.to_string(), Placement::Emulated { host }));
                } else {
                    waiting.push(p.platform.to_string());
                }
            }
        }
        Emulation::Always => {
            // One host architecture for the whole run: the first that can take every platform.
            let can_take = |host: &String| {
                plan.platforms.iter().all(|p| {
                    &arch(p) == host
                        || nodes
                            .emulating
                            .get(&arch(p))
                            .is_some_and(|hosts| hosts.contains(host))
                })
            };
            // Among the hosts that can, the one most platforms build natively on; then the
            // preference order: Always emulates only what it must.
            let native_on =
                |host: &String| plan.platforms.iter().filter(|p| &arch(p) == host).count();
            let mut hosts: Vec<String> = host_preference(nodes.native.iter())
                .filter(|h| can_take(h))
                .collect();
            hosts.sort_by_key(|h| std::cmp::Reverse(native_on(h)));
            match hosts.into_iter().next() {
                Some(host) => {
                    for p in platforms {
                        let placement = if arch(p) == host {
                            Placement::Native
                        } else {
                            Placement::Emulated { host: host.clone() }
                        };
                        placed.push((p.platform.to_string(), placement));
                    }
                }
                None => waiting.extend(platforms.iter().map(|p| p.platform.to_string())),
            }
        }
    }
    match waiting.is_empty() {
        true => Ok(placed),
        false => Err((waiting, retry_in)),
    }
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
        Err((platforms, retry_in)) => Step::WaitForNodes {
            platforms,
            retry_in,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ImageBuild;
    use crate::plan::{AuthFile, plan};
    use crate::settings::BuilderSettings;
    use crate::validation::ValidSpec;

    const MIN: Duration = Duration::from_secs(60);

    fn plan_of(extra: serde_json::Value) -> BuildPlan {
        let mut object = serde_json::json!({
            "apiVersion": "archforge.dev/v1alpha1", "kind": "ImageBuild",
            "metadata": {"name": "app", "generation": 1},
            "spec": {"source": {"git": {"url": "https://g.example.com/a.git"}},
                     "platforms": ["linux/amd64", "linux/arm64"],
                     "output": {"image": "r.example.com/a:v1"}}
        });
        for (k, v) in extra.as_object().unwrap() {
            object["spec"][k] = v.clone();
        }
        let build: ImageBuild = serde_json::from_value(object).unwrap();
        plan(
            &ValidSpec::check(&build).unwrap(),
            &BuilderSettings::default(),
            "main",
            AuthFile::None,
        )
    }

    fn two_platforms() -> BuildPlan {
        plan_of(serde_json::json!({}))
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
        }
    }

    fn pending() -> [PlatformStatus; 2] {
        [
            status("linux/amd64", Phase::Pending),
            status("linux/arm64", Phase::Pending),
        ]
    }

    /// Nodes of `native` architectures; `emulating` lists (target, host) labels.
    fn nodes(native: &[&str], emulating: &[(&str, &str)]) -> Nodes {
        let mut n = Nodes {
            native: native.iter().map(|s| s.to_string()).collect(),
            ..Nodes::default()
        };
        for (target, host) in emulating {
            n.emulating
                .entry(target.to_string())
                .or_default()
                .insert(host.to_string());
        }
        n
    }

    fn emulated(host: &str) -> Placement {
        Placement::Emulated { host: host.into() }
    }

    #[test]
    fn a_new_run_waits_for_a_node_of_every_architecture() {
        let plan = two_platforms();
        assert!(needs_nodes(&plan, &[], &pending()));
        let amd64_only = nodes(&["amd64"], &[("arm64", "amd64")]);
        // Never (the default) does not emulate, even where a node could.
        assert_eq!(
            decide(&plan, &[], &pending(), Some(&amd64_only), 10 * MIN),
            Step::WaitForNodes {
                platforms: vec!["linux/arm64".into()],
                retry_in: None
            }
        );
        assert_eq!(
            decide(
                &plan,
                &[],
                &pending(),
                Some(&nodes(&["amd64", "arm64"], &[])),
                MIN
            ),
            Step::CreateJobs {
                platforms: vec![
                    ("linux/amd64".into(), Placement::Native),
                    ("linux/arm64".into(), Placement::Native)
                ]
            }
        );
    }

    #[test]
    fn fallback_emulates_after_the_grace_period_on_a_labelled_node() {
        let plan = plan_of(serde_json::json!({"emulation": "Fallback", "emulationAfter": "5m"}));
        let amd64_only = nodes(&["amd64"], &[("arm64", "amd64")]);
        assert_eq!(
            decide(&plan, &[], &pending(), Some(&amd64_only), 2 * MIN),
            Step::WaitForNodes {
                platforms: vec!["linux/arm64".into()],
                retry_in: Some(3 * MIN)
            },
            "within the grace period a native node may still come"
        );
        assert_eq!(
            decide(&plan, &[], &pending(), Some(&amd64_only), 5 * MIN),
            Step::CreateJobs {
                platforms: vec![
                    ("linux/amd64".into(), Placement::Native),
                    ("linux/arm64".into(), emulated("amd64"))
                ]
            }
        );
        // Without a node labelled as able to emulate arm64, it keeps waiting.
        let unlabelled = nodes(&["amd64"], &[]);
        assert_eq!(
            decide(&plan, &[], &pending(), Some(&unlabelled), 10 * MIN),
            Step::WaitForNodes {
                platforms: vec!["linux/arm64".into()],
                retry_in: None
            }
        );
        // A native node wins over emulation.
        let both = nodes(&["amd64", "arm64"], &[("arm64", "amd64")]);
        assert!(matches!(
            decide(&plan, &[], &pending(), Some(&both), 10 * MIN),
            Step::CreateJobs { platforms } if platforms.iter().all(|(_, p)| *p == Placement::Native)
        ));
    }

    #[test]
    fn always_builds_everything_on_one_host_architecture() {
        let plan = plan_of(serde_json::json!({"emulation": "Always"}));
        let both = nodes(
            &["amd64", "arm64"],
            &[("arm64", "amd64"), ("amd64", "arm64")],
        );
        assert_eq!(
            decide(&plan, &[], &pending(), Some(&both), Duration::ZERO),
            Step::CreateJobs {
                platforms: vec![
                    ("linux/amd64".into(), Placement::Native),
                    ("linux/arm64".into(), emulated("amd64"))
                ]
            }
        );
        // Only arm64 nodes can emulate the other: arm64 hosts everything.
        let arm_hosts = nodes(&["amd64", "arm64"], &[("amd64", "arm64")]);
        assert_eq!(
            decide(&plan, &[], &pending(), Some(&arm_hosts), Duration::ZERO),
            Step::CreateJobs {
                platforms: vec![
                    ("linux/amd64".into(), emulated("arm64")),
                    ("linux/arm64".into(), Placement::Native)
                ]
            }
        );
        assert!(matches!(
            decide(
                &plan,
                &[],
                &pending(),
                Some(&nodes(&["amd64"], &[])),
                Duration::ZERO
            ),
            Step::WaitForNodes { .. }
        ));
    }

    #[test]
    fn always_prefers_the_host_most_platforms_build_natively_on() {
        let plan = plan_of(serde_json::json!({
            "emulation": "Always", "platforms": ["linux/arm64", "linux/arm/v7"]
        }));
        let pending = [
            status("linux/arm64", Phase::Pending),
            status("linux/arm/v7", Phase::Pending),
        ];
        // amd64 could take both, but arm64 builds one of them natively.
        let n = nodes(
            &["amd64", "arm64"],
            &[("arm64", "amd64"), ("arm", "amd64"), ("arm", "arm64")],
        );
        assert_eq!(
            decide(&plan, &[], &pending, Some(&n), Duration::ZERO),
            Step::CreateJobs {
                platforms: vec![
                    ("linux/arm64".into(), Placement::Native),
                    ("linux/arm/v7".into(), emulated("arm64"))
                ]
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
        assert!(needs_nodes(&plan, &[], &platforms));
        let arm64 = nodes(&["arm64"], &[]);
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
        let plan = plan_of(serde_json::json!({
            "platformSettings": [{"platform": "linux/arm64", "allowFailure": true}]
        }));
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
