//! Where each platform of a run builds: which nodes qualify for it (natively, or as a host
//! that emulates it), so whether the run can start, natively or under emulation, and on
//! which host architecture; and, when it cannot, why. Pure: no client, no clock.
//!
//! A node qualifies for a builder pod when the scheduler would bind the pod there (its labels
//! match the pod's node selector, it has no NoSchedule/NoExecute taint the pod does not
//! tolerate) and it is Ready and not cordoned ([`node::refusal`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Toleration};

use crate::api::{Emulation, ImageBuildSpec};
use crate::plan::{BuildPlan, EMULATION_LABEL_PREFIX, Placement, PlatformPlan};

#[cfg(test)]
pub(crate) mod fixtures;
mod node;
mod why;

pub use node::{Refusal, pod_selector, refusal, tolerates};
use why::Tally;

/// What the spec asks of the nodes its builder pods run on, beyond the platform.
#[derive(Clone, Copy, Debug)]
pub struct PodConstraints<'a> {
    /// `spec.nodeSelector` (empty when there is none).
    pub node_selector: &'a BTreeMap<String, String>,
    /// `spec.tolerations`.
    pub tolerations: &'a [Toleration],
}

static NO_SELECTOR: BTreeMap<String, String> = BTreeMap::new();

impl<'a> PodConstraints<'a> {
    pub fn of(spec: &'a ImageBuildSpec) -> Self {
        PodConstraints {
            node_selector: spec.node_selector.as_ref().unwrap_or(&NO_SELECTOR),
            tolerations: spec.tolerations.as_deref().unwrap_or_default(),
        }
    }
}

/// The nodes as one run's placement sees them, platform by platform.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Nodes {
    /// By platform (`os/arch[/variant]`); a platform not here has no node at all.
    platforms: BTreeMap<String, PlatformNodes>,
    /// `spec.nodeSelector`, as the messages name it.
    selector: BTreeMap<String, String>,
}

/// How the nodes stand for one platform.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlatformNodes {
    /// Architectures with a node that qualifies for it: its own when one qualifies
    /// natively, others where a node labelled `emulation.archforge.dev/<arch>=true`
    /// qualifies to emulate it.
    hosts: BTreeSet<String>,
    /// The nodes of its architecture, and why each one that does not qualify does not.
    native: Tally,
    /// The nodes of other architectures labelled to emulate it, likewise.
    emulating: Tally,
}

impl Nodes {
    /// How `nodes` stand for each platform of `plan`, whose pods also carry `pods`'
    /// selector and tolerations.
    pub fn survey(plan: &BuildPlan, pods: PodConstraints, nodes: &[Arc<Node>]) -> Nodes {
        let platforms = plan
            .platforms
            .iter()
            .map(|p| (p.platform.to_string(), platform_nodes(p, pods, nodes)))
            .collect();
        Nodes {
            platforms,
            selector: pods.node_selector.clone(),
        }
    }

    fn of(&self, platform: &PlatformPlan) -> PlatformNodes {
        self.platforms
            .get(&platform.platform.to_string())
            .cloned()
            .unwrap_or_default()
    }
}

fn platform_nodes(
    platform: &PlatformPlan,
    pods: PodConstraints,
    nodes: &[Arc<Node>],
) -> PlatformNodes {
    let target = &platform.platform.architecture;
    let mut seen = PlatformNodes::default();
    for node in nodes {
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let Some(arch) = labels.get("kubernetes.io/arch") else {
            continue;
        };
        let emulates = labels.get(&format!("{EMULATION_LABEL_PREFIX}{target}"));
        let (placement, tally) = if arch == target {
            (Placement::Native, &mut seen.native)
        } else if emulates.map(String::as_str) == Some("true") {
            let host = Placement::Emulated { host: arch.clone() };
            (host, &mut seen.emulating)
        } else {
            continue;
        };
        let selector = pod_selector(pods.node_selector, platform, &placement);
        match refusal(node, &selector, pods.tolerations) {
            Some(why) => tally.refused(why),
            None => {
                tally.qualified();
                seen.hosts.insert(arch.clone());
            }
        }
    }
    seen
}

/// The platforms that cannot be placed yet: which, when to look again at the latest (when
/// an emulation grace period ends), and why no node qualifies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unplaced {
    pub platforms: Vec<String>,
    pub retry_in: Option<Duration>,
    pub why: String,
}

/// Preference among host architectures: amd64, then arm64, then the others in order, for a
/// stable choice across reconciles.
fn host_preference<'a>(hosts: impl Iterator<Item = &'a String>) -> impl Iterator<Item = String> {
    let mut hosts: Vec<&String> = hosts.collect();
    hosts.sort_by_key(|h| (h.as_str() != "amd64", h.as_str() != "arm64", h.to_string()));
    hosts.into_iter().cloned()
}

/// Where each of `platforms` builds, or which cannot be placed yet and why. `waited` is how
/// long the run has been waiting, for the Fallback grace period.
pub fn place(
    plan: &BuildPlan,
    platforms: &[&PlatformPlan],
    nodes: &Nodes,
    waited: Duration,
) -> Result<Vec<(String, Placement)>, Unplaced> {
    match plan.emulation {
        Emulation::Never | Emulation::Fallback => place_each(plan, platforms, nodes, waited),
        Emulation::Always => place_on_one_host(plan, platforms, nodes),
    }
}

/// Never and Fallback: natively where a node qualifies; under Fallback, once the grace
/// period is over, on a qualifying host labelled to emulate the platform.
fn place_each(
    plan: &BuildPlan,
    platforms: &[&PlatformPlan],
    nodes: &Nodes,
    waited: Duration,
) -> Result<Vec<(String, Placement)>, Unplaced> {
    let fallback = plan.emulation == Emulation::Fallback;
    let grace = fallback && waited < plan.emulation_after;
    let mut placed = Vec::new();
    let mut waiting = Vec::new();
    for p in platforms {
        let seen = nodes.of(p);
        let arch = &p.platform.architecture;
        let emulator = host_preference(seen.hosts.iter().filter(|h| *h != arch)).next();
        if seen.hosts.contains(arch) {
            placed.push((p.platform.to_string(), Placement::Native));
        } else if let (Some(host), true, false) = (emulator, fallback, grace) {
            placed.push((p.platform.to_string(), Placement::Emulated { host }));
        } else {
            let emulation = fallback && !grace;
            waiting.push((
                p.platform.to_string(),
                why::platform(p, &seen, nodes, emulation),
            ));
        }
    }
    if waiting.is_empty() {
        return Ok(placed);
    }
    Err(Unplaced {
        platforms: waiting.iter().map(|(p, _)| p.clone()).collect(),
        retry_in: grace.then(|| plan.emulation_after - waited),
        why: why::joined(waiting.into_iter().map(|(_, why)| why)),
    })
}

/// Always: one host architecture for the whole run, the first that can take every
/// platform; among those, the one most platforms build natively on, then the preference
/// order: Always emulates only what it must.
fn place_on_one_host(
    plan: &BuildPlan,
    platforms: &[&PlatformPlan],
    nodes: &Nodes,
) -> Result<Vec<(String, Placement)>, Unplaced> {
    let all: Vec<(&PlatformPlan, PlatformNodes)> =
        plan.platforms.iter().map(|p| (p, nodes.of(p))).collect();
    let candidates: BTreeSet<&String> = all.iter().flat_map(|(_, seen)| &seen.hosts).collect();
    let can_take = |host: &String| all.iter().all(|(_, seen)| seen.hosts.contains(host));
    let native_on = |host: &String| {
        all.iter()
            .filter(|(p, _)| &p.platform.architecture == host)
            .count()
    };
    let mut hosts: Vec<String> = host_preference(candidates.into_iter())
        .filter(|h| can_take(h))
        .collect();
    hosts.sort_by_key(|h| std::cmp::Reverse(native_on(h)));
    let Some(host) = hosts.into_iter().next() else {
        return Err(Unplaced {
            platforms: platforms.iter().map(|p| p.platform.to_string()).collect(),
            retry_in: None,
            why: why::no_one_host(&all, nodes),
        });
    };
    Ok(platforms
        .iter()
        .map(|p| {
            let placement = if p.platform.architecture == host {
                Placement::Native
            } else {
                Placement::Emulated { host: host.clone() }
            };
            (p.platform.to_string(), placement)
        })
        .collect())
}

#[cfg(test)]
mod tests;
