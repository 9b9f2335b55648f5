//! Signing only what is trustworthy: in the ImageBuild's own namespace (no build namespace
//! set) the operator-wide key signs nothing unless the platform team opted in, checked
//! before any Job and again at assembly. And the index is pushed with the ImageBuild's own
//! push credentials only, never with the operator's.

use super::*;
use common::registry::PASSWORD;

/// The operator's settings of these tests: an operator-wide key, in-namespace builds, and
/// `allow` as `--allow-in-namespace-signing`.
fn operator_key_config(
    registry: RegistryOptions,
    key: SigningKey,
    allow: bool,
) -> archforge::controller::Config {
    let mut config = config(BuilderSettings::default(), registry, Some(key));
    config.allow_in_namespace_signing = allow;
    config
}

#[tokio::test]
async fn in_namespace_signing_with_the_operator_key_stalls_before_any_job_unless_allowed() {
    let build = signed_imagebuild(json!({}), "registry.example.com/team/app:v1", Value::Null);
    let key = SigningKey::generate();
    let secrets = [pem_body(&key.to_pkcs8_pem())];
    refused_before_any_job(
        &build,
        Some(key),
        None,
        "SigningNeedsIsolation",
        &[
            "builds.namespace",
            "--build-namespace",
            "--allow-in-namespace-signing",
            "signing.allowInNamespaceBuilds",
        ],
        &secrets,
    )
    .await;

    // The platform team's opt-in: the run starts.
    let config = operator_key_config(RegistryOptions::default(), SigningKey::generate(), true);
    let (ctx, mut server) = setup_config(&build, config);
    let verify = async move {
        server.store_nothing_started().await;
        let (_, status) = server.start_run().await;
        assert_eq!(status["phase"], "Building");
        server.done().await;
    };
    reconciled(&build, ctx, verify).await.unwrap();
}

// Multi-threaded: the check calls skopeo inside block_in_place.
#[tokio::test(flavor = "multi_thread")]
async fn an_opt_in_withdrawn_before_assembly_publishes_nothing() {
    let status = json!({"observedGeneration": 1, "phase": "Building", "source": {"commit": SHA}});
    let (reg, image, digests, _) = signed_run(status.clone()).await;
    let build = signed_imagebuild(json!({}), &image, status);
    let repository = repository_of(&image).to_string();
    // The Jobs started under --allow-in-namespace-signing; the operator restarted without.
    let config = operator_key_config(reg.options(), SigningKey::generate(), false);
    let (ctx, mut server) = setup_config(&build, config);
    let (jobs, pods) = finished(&build, [&digests[0], &digests[1]]);
    let verify = async move {
        server.store_jobs(jobs).await;
        server.store_pods(pods).await;
        server.event("PlatformSucceeded", "Normal").await;
        server.event("PlatformSucceeded", "Normal").await;
        server.event("SigningNeedsIsolation", "Warning").await;
        let status = server.patch_status().await;
        server.done().await;
        status
    };
    let (action, status) = tokio::join!(reconcile(Arc::new(build.clone()), ctx), verify);
    waits_for_change(action);
    assert_eq!(status["phase"], "Failed");
    assert_eq!(said(&status, "Stalled").1, "SigningNeedsIsolation");
    assert_eq!(status["digest"], Value::Null, "{status}");
    let tags = tokio::task::block_in_place(|| registry_tags(&reg, &repository));
    assert_eq!(tags, Vec::<String>::new(), "no index, no attachment");
}

/// Manifest PUTs the registry accepted so far (201 in its access log).
fn manifests_written(reg: &TestRegistry) -> usize {
    std::fs::read_to_string(&reg.log_file)
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"PUT /v2/") && l.contains("/manifests/") && l.contains("\" 201 "))
        .count()
}

/// The status of a run whose two platform images are built, and a registry with htpasswd
/// holding them (pushed with the registry's credentials, as the push containers would).
async fn built_in_a_private_registry() -> (TestRegistry, String, Vec<String>, Value) {
    let reg = TestRegistry::start(Mode::Htpasswd);
    let registry = Registry::new(reg.options());
    let image = reg.image("team/app:v1");
    let repository = repository_of(&image).to_string();
    let digests = pushed_digests(
        &registry,
        |_| format!("{repository}@@unknown-digest@@"),
        "credentials",
    )
    .await;
    let status = json!({"observedGeneration": 1, "phase": "Building", "source": {"commit": SHA}});
    (reg, image, digests, status)
}

// Multi-threaded: the check calls skopeo inside block_in_place.
#[tokio::test(flavor = "multi_thread")]
async fn the_index_is_pushed_only_with_the_imagebuild_s_own_credentials() {
    let (reg, image, digests, building) = built_in_a_private_registry().await;
    let repository = repository_of(&image).to_string();
    // The operator's own options hold credentials that could write here (--docker-config).
    assert!(format!("{:?}", reg.options().credentials).contains(&reg.addr));
    let build = imagebuild_with(json!({}), &image, building.clone());
    let (ctx, mut server) = setup(&build, reg.options());
    let (jobs, pods) = finished(&build, [&digests[0], &digests[1]]);
    let before = manifests_written(&reg);
    let verify = async move {
        server.store_jobs(jobs.clone()).await;
        server.store_pods(pods.clone()).await;
        server.event("PlatformSucceeded", "Normal").await;
        server.event("PlatformSucceeded", "Normal").await;
        let refused = server.event("RegistryCredentials", "Warning").await;
        let status = server.patch_status().await;
        server.done().await;
        (refused, status)
    };
    let (action, (refused, status)) = tokio::join!(reconcile(Arc::new(build.clone()), ctx), verify);
    waits_for_change(action);
    assert_eq!(status["phase"], "Failed", "{status}");
    assert_eq!(said(&status, "Stalled").1, "RegistryCredentials");
    assert!(!refused["note"].as_str().unwrap().contains(PASSWORD));
    let tags = tokio::task::block_in_place(|| registry_tags(&reg, &repository));
    assert_eq!(tags, Vec::<String>::new(), "no index tag");
    assert_eq!(
        manifests_written(&reg),
        before,
        "nothing written anonymously"
    );

    // With the ImageBuild's own push Secret, the same assembly succeeds.
    let push = json!({"image": image, "pushSecret": "push"});
    let build = imagebuild_with(json!({"output": push}), &image, building);
    let (ctx, mut server) = setup(&build, reg.options());
    let (jobs, pods) = finished(&build, [&digests[0], &digests[1]]);
    let config = reg.docker_config_json(PASSWORD);
    let push_secret = secret("push", &[(".dockerconfigjson", config.as_bytes())]);
    let verify = async move {
        server.store_jobs(jobs).await;
        server.store_pods(pods).await;
        server.get_secret("push", Some(push_secret)).await;
        server.event("PlatformSucceeded", "Normal").await;
        server.event("PlatformSucceeded", "Normal").await;
        server.event("IndexPushed", "Normal").await;
        let status = server.patch_status().await;
        server.done().await;
        status
    };
    let (action, status) = tokio::join!(reconcile(Arc::new(build.clone()), ctx), verify);
    waits_for_change(action);
    assert_eq!(status["phase"], "Succeeded", "{status}");
    let tags = tokio::task::block_in_place(|| registry_tags(&reg, &repository));
    assert_eq!(tags, vec!["v1".to_string()]);
}
