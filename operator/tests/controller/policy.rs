//! BuildPolicies a tenant cannot override: a spec over its namespace's policy is Stalled
//! with the policy named and no Job; a policy default fills what the spec leaves out; a
//! refused run starts once its policy allows it.

use super::*;

/// The policy store holds `policies` and the namespace store "default" labelled `team=a`:
/// set before the reconcile, which reads them first.
fn store_policies(server: &mut ApiServer, policies: Vec<Value>) {
    server.stores.set_policies(
        policies
            .into_iter()
            .map(|p| serde_json::from_value(p).unwrap()),
    );
    let ns = json!({"metadata": {"name": "default", "labels": {"team": "a"}}});
    server
        .stores
        .set_namespaces([serde_json::from_value(ns).unwrap()]);
}

fn policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "archforge.dev/v1alpha1", "kind": "BuildPolicy",
           "metadata": {"name": name}, "spec": spec})
}

/// Never emulate in team a's namespaces; team b's policy allows anything.
fn team_policies() -> Vec<Value> {
    vec![
        policy(
            "team-limits",
            json!({"namespaceSelector": {"matchLabels": {"team": "a"}}, "allowedEmulation": ["Never"]}),
        ),
        policy(
            "team-b",
            json!({"namespaceSelector": {"matchLabels": {"team": "b"}}}),
        ),
    ]
}

#[tokio::test]
async fn a_spec_over_its_policy_stalls_naming_the_policy_and_creates_nothing() {
    let mut build = imagebuild(
        "https://git.example.com/app.git",
        "main",
        "registry.example.com/team/app:v1",
        1,
        Value::Null,
    );
    build.spec.emulation = Some(archforge::api::Emulation::Always);
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    store_policies(&mut server, team_policies());
    let expected =
        r#"BuildPolicy "team-limits": spec.emulation Always is not allowed here (allowed: Never)"#;
    let verify = async move {
        let event = server.event("PolicyViolation", "Warning").await;
        assert_eq!(event["note"], expected);
        let status = server.patch_status().await;
        let stalled = condition(&status, "Stalled");
        assert_eq!(
            (stalled["status"].as_str(), stalled["reason"].as_str()),
            (Some("True"), Some("PolicyViolation"))
        );
        assert_eq!(stalled["message"], expected);
        assert_eq!(status["phase"], "Failed");
        // No commit pinned, no Job created: nothing else is asked.
        server.done().await;
    };
    let (result, ()) = tokio::join!(reconcile(Arc::new(build.clone()), ctx.clone()), verify);
    let error = result.unwrap_err();
    assert!(matches!(error, ReconcileError::PolicyViolation(_)));
    assert_eq!(error.reason(), "PolicyViolation");
    let action = error_policy(Arc::new(build), &error, ctx);
    assert_eq!(
        format!("{action:?}"),
        format!("{:?}", Action::await_change()),
        "a policy or namespace change wakes it (watch.rs), not a timer"
    );
}

#[tokio::test]
async fn a_policy_default_fills_what_the_spec_leaves_out() {
    let git = GitServer::start();
    let (url, _) = git.commit("app", &[("Dockerfile", "FROM scratch\n")], "first");
    let build = imagebuild(
        &url,
        "main",
        "registry.example.com/team/app:v1",
        1,
        Value::Null,
    );
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    let defaults = policy(
        "team-defaults",
        json!({"maxRetries": 5, "defaults": {"retries": 4, "timeout": "45m"}}),
    );
    store_policies(&mut server, vec![defaults]);
    let verify = async move {
        server.store_nothing_started().await;
        let (amd64, status) = server.start_run().await;
        // The operator's defaults would be 1 retry and 30 minutes.
        assert_eq!(amd64["spec"]["backoffLimit"], 4);
        assert_eq!(amd64["spec"]["activeDeadlineSeconds"], 45 * 60);
        assert_eq!(status["phase"], "Building");
        server.done().await;
    };
    reconciled(&build, ctx, verify).await.unwrap();
}

#[tokio::test]
async fn a_run_refused_by_policy_starts_once_the_policy_allows_it() {
    let git = GitServer::start();
    let (url, _) = git.commit("app", &[("Dockerfile", "FROM scratch\n")], "first");
    let refused = json!({"observedGeneration": 1, "phase": "Failed", "startTime": "2026-11-23T10:00:00Z",
        "conditions": [{"type": "Stalled", "status": "True", "reason": "PolicyViolation",
                        "message": "BuildPolicy \"team-limits\": spec.retries 3 is over the maximum 2",
                        "observedGeneration": 1, "lastTransitionTime": "2026-11-23T10:00:00Z"}]});
    let mut build = imagebuild(&url, "main", "registry.example.com/team/app:v1", 1, refused);
    build.spec.retries = Some(3);
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    // The platform team raised the limit from 2 to 5: same ImageBuild, same generation.
    let raised = policy("team-limits", json!({"maxRetries": 5}));
    store_policies(&mut server, vec![raised]);
    let verify = async move {
        server.store_nothing_started().await;
        let (amd64, status) = server.start_run().await;
        assert_eq!(amd64["spec"]["backoffLimit"], 3);
        assert_eq!(status["phase"], "Building");
        assert_eq!(condition(&status, "Stalled")["status"], "False");
        server.done().await;
    };
    reconciled(&build, ctx, verify).await.unwrap();
}

#[tokio::test]
async fn a_namespace_not_seen_yet_is_retried_not_built_unchecked() {
    let build = imagebuild(
        "https://git.example.com/app.git",
        "main",
        "registry.example.com/team/app:v1",
        1,
        Value::Null,
    );
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    server
        .stores
        .set_policies([serde_json::from_value(team_policies().remove(0)).unwrap()]);
    let verify = async move { server.done().await };
    let error = reconciled(&build, ctx.clone(), verify).await.unwrap_err();
    assert!(matches!(error, ReconcileError::NamespaceNotSeen { .. }));
    let action = error_policy(Arc::new(build), &error, ctx);
    assert_ne!(
        format!("{action:?}"),
        format!("{:?}", Action::await_change())
    );
}

/// A policy tightened while a run builds applies from the next run: the run it admitted is
/// neither refused half-built nor left Failed with its Jobs still running; it goes on, and
/// no PolicyViolation is reported (hostile review: it was marked Failed, Jobs running).
#[tokio::test]
async fn a_policy_tightened_mid_run_applies_from_the_next_run() {
    let mut build = building_since_old();
    build.spec.retries = Some(3);
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    store_policies(
        &mut server,
        vec![policy("team-limits", json!({"maxRetries": 2}))],
    );
    let running = json!({"active": 1, "startTime": OLD});
    server
        .store_jobs(building_jobs(&build, running.clone(), running))
        .await;
    let verify = async move {
        server.store_pods(vec![]).await;
        let status = server.patch_status().await;
        server.done().await;
        status
    };
    let (result, status) = tokio::join!(reconcile(Arc::new(build.clone()), ctx.clone()), verify);
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(status["phase"], "Building", "{status}");
    assert!(!status.to_string().contains("PolicyViolation"), "{status}");
}
