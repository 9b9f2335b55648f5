//! BuildPolicies, which tenants cannot override: emulation a namespace's policy forbids is
//! refused (Stalled, PolicyViolation, no Job), and the same ImageBuild builds once its
//! namespace is moved into a group whose policy allows emulation.
//!
//! A Case's operator watches one namespace, so "another namespace" is the same namespace
//! relabelled into the other policy group: this also shows a namespace label change
//! re-evaluating a refused build. The policies select by a label value unique to the Case,
//! so they touch no other scenario's namespaces, and are deleted however the scenario ends.

use std::time::Duration;

use anyhow::ensure;
use archforge::api::{BuildPolicy, Phase};
use archforge_e2e::cluster::{FIELD_MANAGER, wait_for};
use archforge_e2e::filter::JobFilter;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::case::{AMD64, ARM64, Case, condition, describe};

/// The namespace label both policies select by.
const GROUP_LABEL: &str = "e2e.archforge.dev/policy-group";

/// A label value for `group` unique to this Case (label values are at most 63 characters).
fn group_value(case: &Case, group: &str) -> String {
    let tail: String = case.namespace.chars().rev().take(40).collect();
    let tail: String = tail.chars().rev().collect();
    format!("{}-{group}", tail.trim_start_matches('-'))
}

/// `{GROUP_LABEL: <group's value>}`.
fn group_labels(case: &Case, group: &str) -> serde_json::Value {
    let mut labels = serde_json::Map::new();
    labels.insert(GROUP_LABEL.into(), group_value(case, group).into());
    labels.into()
}

/// The policy of `group`: which emulation modes its namespaces may use.
fn group_policy(case: &Case, group: &str, allowed: &[&str]) -> anyhow::Result<BuildPolicy> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "archforge.dev/v1alpha1", "kind": "BuildPolicy",
        "metadata": {"name": format!("{}-{group}", case.namespace)},
        "spec": {
            "namespaceSelector": {"matchLabels": group_labels(case, group)},
            "allowedEmulation": allowed,
        }
    }))?)
}

/// Puts the Case's namespace into policy group `group`.
async fn move_to_group(case: &Case, group: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(case.suite.client.clone());
    let namespace = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": case.namespace, "labels": group_labels(case, group)},
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    namespaces
        .patch(&case.namespace, &params, &Patch::Apply(namespace))
        .await?;
    Ok(())
}

/// Emulation refused by policy in one namespace group and allowed in another.
pub async fn emulation_refused_by_policy_in_one_namespace_allowed_in_another(
    case: &Case,
) -> anyhow::Result<()> {
    let policies: Api<BuildPolicy> = Api::all(case.suite.client.clone());
    let restricted = group_policy(case, "restricted", &["Never"])?;
    let emulating = group_policy(case, "emulating", &["Never", "Fallback", "Always"])?;
    let names = [
        restricted.metadata.name.clone(),
        emulating.metadata.name.clone(),
    ];
    policies.create(&PostParams::default(), &restricted).await?;
    policies.create(&PostParams::default(), &emulating).await?;
    let outcome = refused_then_allowed(case, restricted.metadata.name.as_deref()).await;
    for name in names.into_iter().flatten() {
        if let Err(e) = policies.delete(&name, &DeleteParams::default()).await {
            eprintln!("{}: could not delete BuildPolicy {name}: {e}", case.test);
        }
    }
    outcome
}

async fn refused_then_allowed(case: &Case, restricted: Option<&str>) -> anyhow::Result<()> {
    let restricted = restricted.unwrap_or_default();
    move_to_group(case, "restricted").await?;
    let mut manifest = case.manifest("app", &[AMD64, ARM64]);
    // Fallback after an hour: native nodes build it once it is allowed at all.
    manifest["spec"]["emulation"] = json!("Fallback");
    manifest["spec"]["emulationAfter"] = json!("1h");
    case.apply(&manifest).await?;
    let status = case
        .wait_phase("app", Phase::Failed, Duration::from_secs(60))
        .await?;
    let stalled = condition(&status, "Stalled")?;
    ensure!(
        stalled.status == "True" && stalled.reason == "PolicyViolation",
        "{}",
        describe(&status)
    );
    let expected = format!("BuildPolicy {restricted:?}: spec.emulation Fallback is not allowed");
    ensure!(stalled.message.contains(&expected), "{}", stalled.message);
    case.expect_event("app", "PolicyViolation", "Warning")
        .await?;
    // Give a wrongly started run time to show its Jobs.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let filter = JobFilter::of("app");
    ensure!(
        case.jobs_of(&filter).await?.is_empty(),
        "a refused ImageBuild got Jobs"
    );

    // The same ImageBuild, its namespace now in the group that may emulate.
    move_to_group(case, "emulating").await?;
    wait_for(
        "the namespace label change to re-evaluate ImageBuild app",
        Duration::from_secs(60),
        || async {
            let (_, status) = case.status("app").await?;
            Ok((status.phase != Some(Phase::Failed)).then_some(()))
        },
    )
    .await?;
    case.wait_phase("app", Phase::Succeeded, case.suite.run_timeout())
        .await?;
    case.ensure_one_job_per_platform("app", 2)
}
