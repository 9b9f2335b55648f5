//! Concurrency limits: a run beyond them waits Queued and creates nothing, says so once,
//! and starts when a running build finishes.

use super::*;
use archforge::queue::Limits;
use archforge::telemetry::NamespaceLabels;

/// The Job of another ImageBuild's run in the same namespace, running or `done`.
fn other_job(done: bool) -> Value {
    let status = match done {
        true => complete(),
        false => json!({"active": 1}),
    };
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "other-1-linux-amd64", "namespace": "default", "uid": "uid-other",
                     "creationTimestamp": "2026-11-23T09:30:00Z",
                     "labels": {"app.kubernetes.io/managed-by": "archforge", "archforge.dev/imagebuild": "other",
                                "archforge.dev/generation": "1"},
                     "annotations": {"archforge.dev/imagebuild": "other", "archforge.dev/platform": "linux/amd64"},
                     "ownerReferences": [{"apiVersion": "archforge.dev/v1alpha1", "kind": "ImageBuild",
                                          "name": "other", "uid": "uid-of-other", "controller": true}]},
        "status": status
    })
}

fn one_at_a_time() -> archforge::controller::Config {
    let mut config = config(BuilderSettings::default(), RegistryOptions::default(), None);
    config.limits = Limits {
        total: 1,
        ..Limits::default()
    };
    config
}

fn queue_length(ctx: &Context) -> i64 {
    let labels = NamespaceLabels {
        namespace: "default".into(),
    };
    ctx.metrics.queue_length.get_or_create(&labels).get()
}

#[tokio::test]
async fn a_run_over_the_limit_is_queued_creates_nothing_and_starts_when_one_finishes() {
    let build = imagebuild(
        "https://git.example.com/app.git",
        SHA,
        "registry.example.com/team/app:v1",
        1,
        Value::Null,
    );
    let (ctx, mut server) = setup_config(&build, one_at_a_time());
    // Another team's build holds the only slot.
    let verify = async {
        server.stores.set_builds([build.clone()]);
        server.store_jobs(vec![other_job(false)]).await;
        server.store_nodes(&["amd64", "arm64"]).await;
        let event = server.event("Queued", "Normal").await;
        let message = "1st of 1 queued; waiting for a running build to finish (limit 1 at once)";
        assert_eq!(event["note"], message);
        let status = server.patch_status().await;
        server.quiet().await;
        status
    };
    let (action, status) = tokio::join!(reconcile(Arc::new(build.clone()), ctx.clone()), verify);
    assert_eq!(
        format!("{:?}", action.unwrap()),
        format!("{:?}", Action::requeue(Duration::from_secs(60)))
    );
    assert_eq!(status["phase"], "Queued");
    let (_, reason, message) = said(&status, "Reconciling");
    assert_eq!(reason, "Queued");
    assert!(message.starts_with("1st of 1 queued"), "{message}");
    assert_eq!(queue_length(&ctx), 1);

    // Looked at again with nothing changed: the same status, no Event, no request.
    let queued = with_status(&build, &status, "2");
    server.stores.set_builds([queued.clone()]);
    let verify = async { server.quiet().await };
    let (action, ()) = tokio::join!(reconcile(Arc::new(queued.clone()), ctx.clone()), verify);
    assert!(action.is_ok());

    // The other build finishes: this one starts. (The stores are filled before the
    // reconcile: they are ready, so it reads them without waiting.)
    server.store_jobs(vec![other_job(true)]).await;
    let verify = async {
        let (_, status) = server.start_run().await;
        server.quiet().await;
        status
    };
    let (action, status) = tokio::join!(reconcile(Arc::new(queued), ctx.clone()), verify);
    assert!(action.is_ok());
    assert_eq!(status["phase"], "Building");
    assert_eq!(queue_length(&ctx), 0);
}

#[tokio::test]
async fn without_limits_nothing_is_queued() {
    let build = imagebuild(
        "https://git.example.com/app.git",
        SHA,
        "registry.example.com/team/app:v1",
        1,
        Value::Null,
    );
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    let verify = async {
        server.store_jobs(vec![other_job(false)]).await;
        server.store_nodes(&["amd64", "arm64"]).await;
        let (_, status) = server.start_run().await;
        server.quiet().await;
        status
    };
    let (action, status) = tokio::join!(reconcile(Arc::new(build.clone()), ctx), verify);
    assert!(action.is_ok());
    assert_eq!(status["phase"], "Building");
}

#[tokio::test]
async fn after_a_restart_a_run_whose_jobs_exist_is_not_started_again() {
    // The operator admitted this run and created its Jobs, then stopped before the status
    // said so: a new process (a fresh context) finds it Queued, with its Jobs.
    let queued = json!({"observedGeneration": 1, "phase": "Queued", "source": {"commit": SHA},
                        "startTime": "2026-11-23T09:00:00Z"});
    let build = imagebuild(
        "https://git.example.com/app.git",
        SHA,
        "registry.example.com/team/app:v1",
        1,
        queued,
    );
    let (ctx, mut server) = setup_config(&build, one_at_a_time());
    let running = json!({"active": 1});
    let jobs = building_jobs(&build, running.clone(), running);
    let verify = async {
        server.stores.set_builds([build.clone()]);
        server.store_jobs(jobs).await;
        server.store_pods(vec![]).await;
        server.store_nodes(&["amd64", "arm64"]).await;
        // No Job created, no RunStarted: only the status catches up.
        server.writes_status(&[]).await
    };
    let (action, status) = tokio::join!(reconcile(Arc::new(build.clone()), ctx.clone()), verify);
    assert!(action.is_ok());
    assert_eq!(status["phase"], "Building");
    assert_eq!(queue_length(&ctx), 0);
}

/// An ImageBuild of `namespace` that waits Queued since `start`.
fn queued_build(namespace: &str, name: &str, start: &str) -> ImageBuild {
    let mut build = serde_json::to_value(imagebuild(
        "https://git.example.com/app.git",
        SHA,
        "registry.example.com/team/app:v1",
        1,
        json!({"observedGeneration": 1, "phase": "Queued", "startTime": start}),
    ))
    .unwrap();
    build["metadata"]["name"] = json!(name);
    build["metadata"]["namespace"] = json!(namespace);
    serde_json::from_value(build).unwrap()
}

#[tokio::test]
async fn a_job_that_finishes_wakes_the_queued_run_that_goes_next_and_no_other() {
    use archforge::controller::queued::wake_next;
    let build = imagebuild(
        "https://git.example.com/app.git",
        SHA,
        "registry.example.com/team/app:v1",
        1,
        Value::Null,
    );
    let (ctx, mut server) = setup_config(&build, one_at_a_time());
    let (waker, mut woken) = futures::channel::mpsc::unbounded();
    ctx.queue().add_waker(waker);
    // Namespace "default" just ran a build; "team-b" has not had a turn.
    server.stores.set_builds([
        queued_build("default", "a1", "2026-11-23T09:00:00Z"),
        queued_build("team-b", "b1", "2026-11-23T09:10:00Z"),
    ]);
    let running: k8s_openapi::api::batch::v1::Job =
        serde_json::from_value(other_job(false)).unwrap();
    server.store_jobs(vec![other_job(false)]).await;
    // A reconcile whose Jobs are all running frees no slot: nothing is woken.
    wake_next(&ctx, std::slice::from_ref(&running));
    assert!(woken.try_recv().is_err(), "nothing to wake");
    let done: k8s_openapi::api::batch::v1::Job = serde_json::from_value(other_job(true)).unwrap();
    server.store_jobs(vec![other_job(true)]).await;
    wake_next(&ctx, &[done]);
    let next = woken.try_recv().unwrap();
    assert_eq!(
        (next.namespace.as_deref(), next.name.as_str()),
        (Some("team-b"), "b1")
    );
    assert!(woken.try_recv().is_err(), "one slot, one run woken");
    assert_eq!(queue_length(&ctx), 1, "a1 still waits");
}
