//! Which ImageBuilds a BuildPolicy or namespace change wakes: those a policy could now
//! refuse or let through, and no others. Pure mappings over the ImageBuild store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::api::{BuildPolicy, ImageBuild, Phase};
use crate::policy::selects;
use crate::status::STALLED;

/// The Stalled reason of a spec refused by a BuildPolicy.
pub const POLICY_VIOLATION: &str = "PolicyViolation";

/// Whether `build`'s current run was refused by a policy.
pub fn stalled_by_policy(build: &ImageBuild) -> bool {
    build.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == STALLED && c.status == "True" && c.reason == POLICY_VIOLATION)
    })
}

/// Whether `build` has not started building yet: no status, or Pending.
fn not_started(build: &ImageBuild) -> bool {
    build
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_none_or(|p| p == Phase::Pending)
}

/// The ImageBuilds a change to `policy` wakes: every one a policy refused (the change may
/// let it through, or change what refuses it), and those not started yet in a namespace the
/// policy selects (it may now refuse them, or give them other defaults).
pub fn woken_by_policy(
    policy: &BuildPolicy,
    builds: &[Arc<ImageBuild>],
    labels: impl Fn(&str) -> Option<BTreeMap<String, String>>,
) -> Vec<ObjectRef<ImageBuild>> {
    let selector = policy.spec.namespace_selector.as_ref();
    let selected = |b: &ImageBuild| {
        let ns = b.namespace().unwrap_or_default();
        labels(&ns).is_none_or(|l| selects(selector, &l))
    };
    builds
        .iter()
        .filter(|b| stalled_by_policy(b) || (not_started(b) && selected(b)))
        .map(|b| ObjectRef::from_obj(&**b))
        .collect()
}

/// Which ImageBuilds a namespace event wakes: when its labels changed, those of that
/// namespace a policy refused or that have not started.
#[derive(Default)]
pub struct NamespaceChanges {
    seen: Mutex<HashMap<String, BTreeMap<String, String>>>,
}

impl NamespaceChanges {
    pub fn wakes(&self, ns: &Namespace, builds: &[Arc<ImageBuild>]) -> Vec<ObjectRef<ImageBuild>> {
        let name = ns.name_any();
        let labels = ns.metadata.labels.clone().unwrap_or_default();
        let changed = self
            .seen
            .lock()
            .expect("seen namespaces lock")
            .insert(name.clone(), labels.clone())
            .is_none_or(|before| before != labels);
        if !changed {
            return Vec::new();
        }
        builds
            .iter()
            .filter(|b| b.namespace().as_deref() == Some(name.as_str()))
            .filter(|b| stalled_by_policy(b) || not_started(b))
            .map(|b| ObjectRef::from_obj(&**b))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn build(ns: &str, name: &str, status: serde_json::Value) -> Arc<ImageBuild> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "archforge.dev/v1alpha1", "kind": "ImageBuild",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"source": {"git": {"url": "https://g.example.com/a.git"}},
                         "platforms": ["linux/amd64"],
                         "output": {"image": "r.example.com/a:v1"}},
                "status": status
            }))
            .unwrap(),
        )
    }

    fn builds() -> Vec<Arc<ImageBuild>> {
        let refused = json!({"phase": "Failed", "conditions": [{"type": "Stalled", "status": "True",
            "reason": "PolicyViolation", "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
        vec![
            build("a", "refused", refused),
            build("a", "pending", json!({"phase": "Pending"})),
            build("a", "building", json!({"phase": "Building"})),
            build("b", "new", json!({})),
            build("b", "done", json!({"phase": "Succeeded"})),
        ]
    }

    fn names(refs: Vec<ObjectRef<ImageBuild>>) -> Vec<String> {
        refs.into_iter().map(|r| r.name).collect()
    }

    fn team(t: &str) -> Option<BTreeMap<String, String>> {
        Some(BTreeMap::from([("team".to_string(), t.to_string())]))
    }

    #[test]
    fn a_policy_wakes_refused_builds_and_unstarted_ones_it_selects() {
        let policy: BuildPolicy = serde_json::from_value(json!({
            "apiVersion": "archforge.dev/v1alpha1", "kind": "BuildPolicy",
            "metadata": {"name": "p"}, "spec": {"namespaceSelector": {"matchLabels": {"team": "b"}}}
        }))
        .unwrap();
        let woken = woken_by_policy(&policy, &builds(), team);
        assert_eq!(names(woken), ["refused", "new"]);
    }

    #[test]
    fn a_namespace_wakes_its_builds_only_when_its_labels_change() {
        let changes = NamespaceChanges::default();
        let ns = |labels: serde_json::Value| -> Namespace {
            serde_json::from_value(json!({"metadata": {"name": "a", "labels": labels}})).unwrap()
        };
        assert_eq!(
            names(changes.wakes(&ns(json!({"team": "a"})), &builds())),
            ["refused", "pending"]
        );
        assert!(
            changes
                .wakes(&ns(json!({"team": "a"})), &builds())
                .is_empty()
        );
        assert_eq!(changes.wakes(&ns(json!({"team": "x"})), &builds()).len(), 2);
    }
}
