//! Plans and nodes for the placement and decision tests.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};

use super::{Nodes, PodConstraints};
use crate::api::ImageBuild;
use crate::plan::{AuthFile, BuildPlan, plan};
use crate::settings::BuilderSettings;
use crate::validation::ValidSpec;

/// An ImageBuild for linux/amd64 and linux/arm64 with `extra` spec fields.
pub fn build_of(extra: Value) -> ImageBuild {
    let mut object = json!({
        "apiVersion": "archforge.dev/v1alpha1", "kind": "ImageBuild",
        "metadata": {"name": "app", "generation": 1},
        "spec": {"source": {"git": {"url": "https://g.example.com/a.git"}},
                 "platforms": ["linux/amd64", "linux/arm64"],
                 "output": {"image": "r.example.com/a:v1"}}
    });
    for (k, v) in extra.as_object().unwrap() {
        object["spec"][k] = v.clone();
    }
    serde_json::from_value(object).unwrap()
}

pub fn plan_of(build: &ImageBuild) -> BuildPlan {
    plan(
        &ValidSpec::check(build).unwrap(),
        &BuilderSettings::default(),
        "main",
        AuthFile::None,
    )
}

/// A Ready, schedulable linux node `name` of `arch` with `labels` added and `spec`.
pub fn node(name: &str, arch: &str, labels: &[(&str, &str)], spec: Value) -> Arc<Node> {
    let mut all = json!({"kubernetes.io/arch": arch, "kubernetes.io/os": "linux"});
    for (k, v) in labels {
        all[*k] = json!(v);
    }
    Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": all},
            "spec": spec,
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap(),
    )
}

/// Ready, plain nodes of `native` architectures, and for each (target, host) of
/// `emulating` a host node labelled to emulate the target.
pub fn nodes(native: &[&str], emulating: &[(&str, &str)]) -> Vec<Arc<Node>> {
    let plain = native
        .iter()
        .map(|arch| node(&format!("{arch}-plain"), arch, &[], json!({})));
    let hosts = emulating.iter().map(|(target, host)| {
        let label = crate::plan::emulation_label(target);
        node(
            &format!("{host}-emulating-{target}"),
            host,
            &[(&label, "true")],
            json!({}),
        )
    });
    plain.chain(hosts).collect()
}

/// How `nodes` stand for `build`'s run.
pub fn survey(build: &ImageBuild, nodes: &[Arc<Node>]) -> Nodes {
    Nodes::survey(&plan_of(build), PodConstraints::of(&build.spec), nodes)
}
