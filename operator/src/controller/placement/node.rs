//! Whether one node can take a builder pod, as the scheduler decides it, plus archforge's own
//! bar: Ready and not cordoned. Pure: a node and what the pod asks, nothing else.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Taint, Toleration};

use crate::plan::{Placement, PlatformPlan, emulation_label};

/// Why a node cannot take a builder pod: the first of these that applies, in this order
/// (which is also the order a message lists them in).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Refusal {
    /// Its Ready condition is not True (or it has none).
    NotReady,
    /// `spec.unschedulable`: cordoned, or being drained.
    Cordoned,
    /// It lacks this `key=value` label of the pod's node selector.
    Unselected(String),
    /// It has this NoSchedule or NoExecute taint (`key=value:Effect`) and the pod does not
    /// tolerate it.
    Taint(String),
}

/// The node selector of a builder pod placed at `placement`: the spec's, then the emulation
/// label, the architecture and the OS over it. The same merge as the rendered Job's
/// (`render::render_job`), so that a node placement counts is one the scheduler accepts.
pub fn pod_selector(
    spec: &BTreeMap<String, String>,
    platform: &PlatformPlan,
    placement: &Placement,
) -> BTreeMap<String, String> {
    let mut selector = spec.clone();
    let architecture = match placement {
        Placement::Native => platform.platform.architecture.clone(),
        Placement::Emulated { host } => {
            selector.insert(
                emulation_label(&platform.platform.architecture),
                "true".to_string(),
            );
            host.clone()
        }
    };
    selector.insert("kubernetes.io/arch".to_string(), architecture);
    selector.insert("kubernetes.io/os".to_string(), platform.platform.os.clone());
    selector
}

/// Why `node` cannot take a pod with `selector` and `tolerations`, or `None` when it can.
/// The OS is checked first: a node of another OS is not one to count as a near miss.
pub fn refusal(
    node: &Node,
    selector: &BTreeMap<String, String>,
    tolerations: &[Toleration],
) -> Option<Refusal> {
    let labels = node.metadata.labels.as_ref();
    let lacks = |(key, value): (&String, &String)| labels.and_then(|l| l.get(key)) != Some(value);
    let missing = |os_first: bool| {
        selector
            .iter()
            .filter(|(key, _)| (key.as_str() == "kubernetes.io/os") == os_first)
            .find(|entry| lacks(*entry))
            .map(|(key, value)| Refusal::Unselected(format!("{key}={value}")))
    };
    if let Some(other_os) = missing(true) {
        return Some(other_os);
    }
    if !is_ready(node) {
        return Some(Refusal::NotReady);
    }
    if is_cordoned(node) {
        return Some(Refusal::Cordoned);
    }
    if let Some(unselected) = missing(false) {
        return Some(unselected);
    }
    untolerated(node, tolerations).map(|t| Refusal::Taint(taint_text(t)))
}

/// Whether the node's Ready condition is True.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Whether the node is cordoned. A pod that tolerates `node.kubernetes.io/unschedulable`
/// could still be scheduled there, but a cordon is the platform team saying "not here": a
/// build waits rather than land on a node being drained.
fn is_cordoned(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

/// The first taint of `node` that keeps a pod with `tolerations` off it: as the scheduler's
/// TaintToleration filter, only NoSchedule and NoExecute taints count (PreferNoSchedule is a
/// preference), and one matching toleration is enough.
pub fn untolerated<'a>(node: &'a Node, tolerations: &[Toleration]) -> Option<&'a Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|taint| !tolerations.iter().any(|t| tolerates(t, taint)))
}

/// Kubernetes' `Toleration.ToleratesTaint` (k8s.io/api/core/v1), to the letter: an empty
/// effect matches every effect, an empty key every key (the API server allows that only
/// with Exists), Exists any value, Equal (or no operator) exactly the taint's value, where
/// a taint without a value has the empty one. Any other operator tolerates nothing.
/// `tolerationSeconds` plays no part: a NoExecute taint tolerated for a while is tolerated
/// for scheduling (the pod is evicted when the time is up).
pub fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let field = |f: &Option<String>| f.clone().unwrap_or_default();
    let (effect, key) = (field(&toleration.effect), field(&toleration.key));
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    if !key.is_empty() && key != taint.key {
        return false;
    }
    match toleration.operator.as_deref().unwrap_or_default() {
        "" | "Equal" => field(&toleration.value) == field(&taint.value),
        "Exists" => true,
        _ => false,
    }
}

/// `key=value:Effect`, or `key:Effect` for a taint without a value, as kubectl writes it.
fn taint_text(taint: &Taint) -> String {
    match taint.value.as_deref().unwrap_or_default() {
        "" => format!("{}:{}", taint.key, taint.effect),
        value => format!("{}={value}:{}", taint.key, taint.effect),
    }
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
