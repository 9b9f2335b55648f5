//! An isolated build namespace: the ImageBuild stays in its tenant's namespace ("default"
//! here), its Jobs and Secret copies are created in the build namespace, found there by
//! label, and deleted by the finalizer when the ImageBuild goes, whatever is already gone.

use super::*;
use archforge::plan::isolated::{FINALIZER, current_job_names};

const BUILDS: &str = "archforge-builds";
const IB: &str = "/apis/archforge.dev/v1alpha1/namespaces/default/imagebuilds/app";

/// A reconcile context whose runs build in [`BUILDS`].
fn setup_isolated(build: &ImageBuild) -> (Arc<Context>, ApiServer) {
    let metrics = Arc::new(Metrics::default());
    let (client, handle) = mock_client(&metrics);
    let (stores, writers) = Stores::empty();
    let mut config = config(BuilderSettings::default(), RegistryOptions::default(), None);
    config.build_namespace = Some(BUILDS.into());
    let ctx = Arc::new(Context::new(client, config, metrics, stores));
    let build = serde_json::to_value(build).unwrap();
    (
        ctx,
        ApiServer {
            handle,
            build,
            stores: writers,
        },
    )
}

/// The ImageBuild of these tests: pushing with Secret `push`, its commit pinned, holding
/// `finalizers`, with `metadata` merged in.
fn isolated_build(finalizers: Value, metadata: Value) -> ImageBuild {
    let status = json!({"observedGeneration": 1, "buildNamespace": BUILDS, "phase": "Pending", "source": {"commit": SHA}});
    let mut build = serde_json::to_value(imagebuild(
        "https://git.example.com/app.git",
        "main",
        "registry.example.com/team/app:v1",
        1,
        status,
    ))
    .unwrap();
    build["spec"]["output"]["pushSecret"] = json!("push");
    build["metadata"]["finalizers"] = finalizers;
    for (k, v) in metadata.as_object().unwrap() {
        build["metadata"][k] = v.clone();
    }
    serde_json::from_value(build).unwrap()
}

fn push_secret() -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": "push", "namespace": "default"},
           "type": "kubernetes.io/dockerconfigjson",
           "data": {".dockerconfigjson": "eyJhdXRocyI6e319", "note": "bm90IGZvciB0aGUgcG9k"}})
}

fn not_found() -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
    )
}

impl ApiServer {
    /// Expects the finalizer to be added; the ImageBuild as the server then has it
    /// (resourceVersion 2).
    async fn adds_finalizer(&mut self) -> Value {
        let mut held = self.build.clone();
        held["metadata"]["finalizers"] = json!([FINALIZER]);
        held["metadata"]["resourceVersion"] = json!("2");
        let reply = held.clone();
        let patch = self.expect(Method::PATCH, IB, &[], reply).await;
        assert_eq!(patch[1]["value"], json!([FINALIZER]), "{patch}");
        held
    }

    /// Expects the deletion of every `resource` (`jobs` or `secrets`) of the ImageBuild in
    /// the build namespace, answered `reply`.
    async fn deletes_all(&mut self, path: &str, reply: (u16, Value)) {
        let body = self
            .expect_answer(
                Method::DELETE,
                &format!("{path}/namespaces/{BUILDS}/{}", path_resource(path)),
                &[&format!("labelSelector=archforge.dev/imagebuild-uid={UID}")],
                move |_| reply,
            )
            .await;
        assert_eq!(body["propagationPolicy"], "Background");
    }

    /// Expects the finalizer's removal.
    async fn removes_finalizer(&mut self, reply: (u16, Value)) {
        let patch = self
            .expect_answer(Method::PATCH, IB, &[], move |_| reply)
            .await;
        assert_eq!(patch[1]["op"], "remove", "{patch}");
        assert_eq!(patch[0]["value"], FINALIZER);
    }
}

fn path_resource(path: &str) -> &'static str {
    match path {
        "/apis/batch/v1" => "jobs",
        _ => "secrets",
    }
}

#[tokio::test]
async fn isolated_jobs_and_secret_copies_are_created_in_the_build_namespace() {
    let build = isolated_build(Value::Null, json!({}));
    let names = current_job_names(&build);
    let (ctx, mut server) = setup_isolated(&build);
    let verify = async {
        server.store_nothing_started().await;
        let held = server.adds_finalizer().await;
        server
            .expect(
                Method::GET,
                "/api/v1/namespaces/default/secrets/push",
                &[],
                push_secret(),
            )
            .await;
        for name in &names {
            let path = format!("/apis/batch/v1/namespaces/{BUILDS}/jobs");
            let uid = job_uid(name);
            let job = server
                .expect_with(Method::POST, &path, &["fieldManager=archforge"], |body| {
                    let mut stored = body.clone();
                    stored["metadata"]["uid"] = json!(uid);
                    stored
                })
                .await;
            assert_eq!(job["metadata"]["name"], name.as_str());
            assert_eq!(job["metadata"]["namespace"], BUILDS);
            assert_eq!(job["metadata"]["ownerReferences"], Value::Null);
            let labels = &job["spec"]["template"]["metadata"]["labels"];
            assert_eq!(labels["archforge.dev/imagebuild-uid"], UID);
            assert_eq!(labels["archforge.dev/imagebuild-namespace"], "default");
            assert_eq!(
                job["metadata"]["annotations"]["archforge.dev/imagebuild-namespace"],
                "default"
            );
            let volumes = job["spec"]["template"]["spec"]["volumes"].to_string();
            assert!(volumes.contains(&format!("\"{name}-push\"")), "{volumes}");
            assert!(
                !volumes.contains("\"push\""),
                "the tenant's own Secret: {volumes}"
            );
            let path = format!("/api/v1/namespaces/{BUILDS}/secrets");
            let copy = server
                .expect(Method::POST, &path, &["fieldManager=archforge"], json!({}))
                .await;
            assert_eq!(copy["metadata"]["name"], format!("{name}-push"));
            assert_eq!(copy["metadata"]["ownerReferences"][0]["uid"], job_uid(name));
            assert_eq!(
                copy["metadata"]["labels"]["archforge.dev/imagebuild-uid"],
                UID
            );
            assert_eq!(
                copy["data"],
                json!({".dockerconfigjson": "eyJhdXRocyI6e319"}),
                "only what the pod uses"
            );
        }
        server.event("RunStarted", "Normal").await;
        let status = server.patch_status().await;
        assert_eq!(status["platforms"][0]["jobUid"], job_uid(&names[0]));
        assert_eq!(status["platforms"][1]["jobUid"], job_uid(&names[1]));
        held
    };
    let (action, held) = tokio::join!(reconcile(Arc::new(build.clone()), ctx.clone()), verify);
    action.unwrap();
    // The watch shows the finalizer's version before the status write's: the status this
    // process wrote over that version stands, and nothing is repeated.
    let held: ImageBuild = serde_json::from_value(held).unwrap();
    let (action, ()) = tokio::join!(reconcile(Arc::new(held), ctx), server.done());
    action.unwrap();
}

#[tokio::test]
async fn a_missing_tenant_secret_fails_the_run_at_once_with_no_job() {
    let build = isolated_build(json!([FINALIZER]), json!({}));
    let (ctx, mut server) = setup_isolated(&build);
    let verify = async move {
        server.store_nothing_started().await;
        let path = "/api/v1/namespaces/default/secrets/push";
        server
            .expect_answer(Method::GET, path, &[], |_| not_found())
            .await;
        let event = server.event("Secret", "Warning").await;
        assert!(
            event["note"]
                .as_str()
                .unwrap()
                .contains("secret default/push does not exist"),
            "{event}"
        );
        let status = server.patch_status().await;
        assert_eq!(status["phase"], "Failed");
        assert_eq!(said(&status, "Stalled").1, "Secret");
        server.done().await;
    };
    waits_for_change(reconciled(&build, ctx, verify).await);
}

fn deleted(finalizers: Value) -> ImageBuild {
    isolated_build(
        finalizers,
        json!({"deletionTimestamp": "2026-11-23T11:00:00Z"}),
    )
}

#[tokio::test]
async fn deleting_an_imagebuild_whose_build_namespace_is_gone_still_lets_it_go() {
    let build = deleted(json!(["other.example.com/keep", FINALIZER]));
    let (ctx, mut server) = setup_isolated(&build);
    let verify = async move {
        server.deletes_all("/apis/batch/v1", not_found()).await;
        server.deletes_all("/api/v1", not_found()).await;
        let patch_ok = (200, server.build.clone());
        server.removes_finalizer(patch_ok).await;
        server.done().await;
    };
    waits_for_change(reconciled(&build, ctx, verify).await);
}

#[tokio::test]
async fn deleting_an_imagebuild_whose_jobs_are_gone_already_deletes_its_secrets_and_lets_it_go() {
    let build = deleted(json!([FINALIZER]));
    let (ctx, mut server) = setup_isolated(&build);
    let empty = json!({"kind": "JobList", "apiVersion": "batch/v1", "metadata": {}, "items": []});
    let copies = json!({"kind": "SecretList", "apiVersion": "v1", "metadata": {}, "items": [
        {"metadata": {"name": "app-x-1-linux-amd64-push", "namespace": BUILDS}}]});
    let verify = async move {
        server.deletes_all("/apis/batch/v1", (200, empty)).await;
        server.deletes_all("/api/v1", (200, copies)).await;
        let patch_ok = (200, server.build.clone());
        server.removes_finalizer(patch_ok).await;
        server.done().await;
    };
    waits_for_change(reconciled(&build, ctx, verify).await);
}

#[tokio::test]
async fn an_operator_restarted_mid_deletion_finishes_it_and_a_gone_imagebuild_is_no_error() {
    // The previous process deleted the Jobs and the Secrets, and the ImageBuild went with
    // the finalizer's removal before this process saw it: every request is answered as
    // for objects already gone.
    let build = deleted(json!([FINALIZER]));
    let (ctx, mut server) = setup_isolated(&build);
    let verify = async move {
        let empty =
            |kind: &str| json!({"kind": kind, "apiVersion": "v1", "metadata": {}, "items": []});
        server
            .deletes_all("/apis/batch/v1", (200, empty("JobList")))
            .await;
        server
            .deletes_all("/api/v1", (200, empty("SecretList")))
            .await;
        server.removes_finalizer(not_found()).await;
        server.done().await;
    };
    waits_for_change(reconciled(&build, ctx, verify).await);

    // Being deleted without this operator's finalizer (it was removed): nothing to do.
    let build = deleted(json!(["other.example.com/keep"]));
    let (ctx, server) = setup_isolated(&build);
    waits_for_change(reconciled(&build, ctx, server.done()).await);
}

/// A Job of the run in the build namespace, labelled as the operator labels it, with `uid`.
fn isolated_job(build: &ImageBuild, name: &str, uid: &str, status: Value) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": BUILDS, "uid": uid,
                     "labels": {"app.kubernetes.io/managed-by": "archforge",
                                "archforge.dev/imagebuild-namespace": "default",
                                "archforge.dev/imagebuild-uid": build.metadata.uid.clone().unwrap(),
                                "archforge.dev/generation": "1"},
                     "annotations": {"archforge.dev/imagebuild": "app",
                                     "archforge.dev/imagebuild-namespace": "default",
                                     "archforge.dev/revision": SHA}},
        "status": status
    })
}

/// A builder pod in `namespace` labelled as `job`'s, controlled by the Job with `owner_uid`,
/// reporting `digest`.
fn isolated_pod(job: &str, namespace: &str, owner_uid: &str, digest: &str) -> Value {
    let mut pod = builder_pod(job, 1, 0, digest);
    pod["metadata"]["namespace"] = json!(namespace);
    pod["metadata"]["labels"]["archforge.dev/imagebuild-uid"] = json!(UID);
    pod["metadata"]["labels"]["archforge.dev/imagebuild-namespace"] = json!("default");
    pod["metadata"]["ownerReferences"][0]["uid"] = json!(owner_uid);
    pod
}

#[tokio::test]
async fn a_replaced_job_fails_its_platform_and_a_forged_pod_is_ignored() {
    let names = current_job_names(&isolated_build(Value::Null, json!({})));
    let recorded = json!({"observedGeneration": 1, "buildNamespace": BUILDS, "phase": "Building", "source": {"commit": SHA},
        "platforms": [
            {"platform": "linux/amd64", "job": names[0], "jobUid": "recorded-amd64", "phase": "Building"},
            {"platform": "linux/arm64", "job": names[1], "jobUid": "recorded-arm64", "phase": "Building"}]});
    let mut build = serde_json::to_value(isolated_build(json!([FINALIZER]), json!({}))).unwrap();
    build["status"] = recorded;
    let build: ImageBuild = serde_json::from_value(build).unwrap();
    let (ctx, mut server) = setup_isolated(&build);
    let forged = format!("sha256:{}", "e".repeat(64));
    let jobs = vec![
        // amd64's Job is the one the operator created; arm64's was deleted and created again.
        isolated_job(&build, &names[0], "recorded-amd64", json!({"active": 1})),
        isolated_job(&build, &names[1], "someone-elses", complete()),
    ];
    let pods = vec![
        // In the tenant's namespace, with every label and the right owner: not looked at.
        isolated_pod(&names[0], "default", "recorded-amd64", &forged),
        // In the build namespace, controlled by the replacing Job.
        isolated_pod(&names[1], BUILDS, "someone-elses", &forged),
    ];
    let arm64 = names[1].clone();
    let verify = async move {
        server.store_jobs(jobs).await;
        server.store_pods(pods).await;
        let path = format!("/apis/batch/v1/namespaces/{BUILDS}/jobs/{}", names[0]);
        let ok = json!({"kind": "Status", "apiVersion": "v1", "status": "Success"});
        server.expect(Method::DELETE, &path, &[], ok).await;
        let event = server.event("PlatformFailed", "Warning").await;
        assert!(
            event["note"]
                .as_str()
                .unwrap()
                .contains(&format!("its Job {arm64} was replaced")),
            "{event}"
        );
        let status = server.patch_status().await;
        assert_eq!(status["phase"], "Failed");
        let arm = &status["platforms"][1];
        assert_eq!(
            (arm["phase"].as_str(), arm["reason"].as_str()),
            (Some("Failed"), Some("JobReplaced"))
        );
        assert_eq!(
            arm["digest"],
            Value::Null,
            "no digest from the replaced Job's pod"
        );
        assert_eq!(arm["jobUid"], "recorded-arm64");
        assert_eq!(
            status["platforms"][0]["digest"],
            Value::Null,
            "the forged pod is ignored"
        );
        server.done().await;
    };
    waits_for_change(reconciled(&build, ctx, verify).await);
}

#[tokio::test]
async fn a_pod_missing_its_secret_copy_gets_it_written_again() {
    // The operator stopped between creating amd64's Job and writing its copy: the pod says
    // the copy is missing, and the next look writes the copies again (an existing one is
    // left as it is).
    let names = current_job_names(&isolated_build(Value::Null, json!({})));
    let recorded = json!({"observedGeneration": 1, "buildNamespace": BUILDS, "phase": "Building", "source": {"commit": SHA},
        "platforms": [
            {"platform": "linux/amd64", "job": names[0], "jobUid": "uid-amd64", "phase": "Building"},
            {"platform": "linux/arm64", "job": names[1], "jobUid": "uid-arm64", "phase": "Building"}]});
    let mut build = serde_json::to_value(isolated_build(json!([FINALIZER]), json!({}))).unwrap();
    build["status"] = recorded;
    let build: ImageBuild = serde_json::from_value(build).unwrap();
    let (ctx, mut server) = setup_isolated(&build);
    let jobs = vec![
        isolated_job(&build, &names[0], "uid-amd64", json!({"active": 1})),
        isolated_job(&build, &names[1], "uid-arm64", json!({"active": 1})),
    ];
    let mut waiting = isolated_pod(&names[0], BUILDS, "uid-amd64", "");
    let missing = format!("secret \"{}-push\" not found", names[0]);
    waiting["status"] = json!({"phase": "Pending", "containerStatuses": [
        {"name": "builder", "image": "", "imageID": "", "ready": false, "restartCount": 0,
         "state": {"waiting": {"reason": "CreateContainerConfigError", "message": missing}}}]});
    let names2 = names.clone();
    let verify = async move {
        server.store_jobs(jobs).await;
        server.store_pods(vec![waiting]).await;
        let secret = "/api/v1/namespaces/default/secrets/push";
        server.expect(Method::GET, secret, &[], push_secret()).await;
        let path = format!("/api/v1/namespaces/{BUILDS}/secrets");
        let exists = (
            409,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409}),
        );
        for (name, answer) in names2.iter().zip([(201, json!({})), exists]) {
            let copy = server
                .expect_answer(Method::POST, &path, &[], move |_| answer)
                .await;
            assert_eq!(copy["metadata"]["name"], format!("{name}-push"));
        }
        server.event("CreateContainerConfigError", "Warning").await;
        let status = server.patch_status().await;
        assert_eq!(
            status["platforms"][0]["reason"],
            "CreateContainerConfigError"
        );
        server.done().await;
    };
    reconciled(&build, ctx, verify).await.unwrap();
}

#[tokio::test]
async fn a_job_gone_mid_run_is_created_again_and_its_new_uid_recorded() {
    let names = current_job_names(&isolated_build(Value::Null, json!({})));
    let recorded = json!({"observedGeneration": 1, "buildNamespace": BUILDS, "phase": "Building", "source": {"commit": SHA},
        "platforms": [
            {"platform": "linux/amd64", "job": names[0], "jobUid": "uid-amd64", "phase": "Building"},
            {"platform": "linux/arm64", "job": names[1], "jobUid": "gone", "phase": "Building"}]});
    let mut build = serde_json::to_value(isolated_build(json!([FINALIZER]), json!({}))).unwrap();
    build["status"] = recorded;
    let build: ImageBuild = serde_json::from_value(build).unwrap();
    let (ctx, mut server) = setup_isolated(&build);
    let jobs = vec![isolated_job(
        &build,
        &names[0],
        "uid-amd64",
        json!({"active": 1}),
    )];
    let arm64 = names[1].clone();
    let verify = async move {
        server.store_jobs(jobs).await;
        server.store_pods(vec![]).await;
        server.store_nodes(&["amd64", "arm64"]).await;
        let secret = "/api/v1/namespaces/default/secrets/push";
        server.expect(Method::GET, secret, &[], push_secret()).await;
        let path = format!("/apis/batch/v1/namespaces/{BUILDS}/jobs");
        let job = server
            .expect_with(Method::POST, &path, &[], |body| {
                let mut stored = body.clone();
                stored["metadata"]["uid"] = json!("uid-arm64-again");
                stored
            })
            .await;
        assert_eq!(job["metadata"]["name"], arm64.as_str());
        let path = format!("/api/v1/namespaces/{BUILDS}/secrets");
        server.expect(Method::POST, &path, &[], json!({})).await;
        let status = server.patch_status().await;
        let arm = &status["platforms"][1];
        assert_eq!(
            arm["jobUid"], "uid-arm64-again",
            "the Job created now is the run's"
        );
        assert_eq!(arm["phase"], "Pending");
        server.done().await;
    };
    reconciled(&build, ctx, verify).await.unwrap();
}

/// A run that an in-namespace operator started (its digests read from pods a tenant with
/// `edit` could forge) is not finished by an operator that now builds in a build
/// namespace: it starts again there, so no digest of it is ever attested as isolated. Its
/// recorded digests are dropped with nothing pushed or signed (the mock answers nothing
/// else), and the status records where the new run builds.
#[tokio::test]
async fn a_run_started_in_namespace_starts_again_when_the_operator_isolates_builds() {
    let digest = |n: u8| format!("sha256:{}", format!("{n:x}").repeat(64));
    let platform = |p: &str, job: &str, d: String| {
        json!({"platform": p, "job": job, "phase": "Succeeded", "digest": d,
               "startTime": "2026-11-23T10:00:00Z", "completionTime": "2026-11-23T10:04:00Z"})
    };
    let status = json!({"observedGeneration": 1, "phase": "Building", "source": {"commit": SHA},
        "startTime": "2026-11-23T09:59:00Z",
        "platforms": [platform("linux/amd64", "app-1-linux-amd64", digest(1)),
                      platform("linux/arm64", "app-1-linux-arm64", digest(2))]});
    let mut build = serde_json::to_value(imagebuild(
        "https://git.example.com/app.git",
        SHA,
        "registry.example.com/team/app:v1",
        1,
        status,
    ))
    .unwrap();
    build["metadata"]["finalizers"] = json!([FINALIZER]);
    let build: ImageBuild = serde_json::from_value(build).unwrap();
    let names = current_job_names(&build);
    let (ctx, mut server) = setup_isolated(&build);
    let verify = async {
        server.store_nothing_started().await;
        for name in &names {
            let path = format!("/apis/batch/v1/namespaces/{BUILDS}/jobs");
            let uid = job_uid(name);
            let job = server
                .expect_with(Method::POST, &path, &["fieldManager=archforge"], |body| {
                    let mut stored = body.clone();
                    stored["metadata"]["uid"] = json!(uid);
                    stored
                })
                .await;
            assert_eq!(job["metadata"]["namespace"], BUILDS);
        }
        server.event("RunStarted", "Normal").await;
        server.patch_status().await
    };
    let (action, status) = tokio::join!(reconcile(Arc::new(build), ctx), verify);
    action.unwrap();
    assert_eq!(status["buildNamespace"], BUILDS, "{status}");
    assert_eq!(status["phase"], "Building", "{status}");
    for p in status["platforms"].as_array().unwrap() {
        assert_eq!(p["phase"], "Pending", "{status}");
        assert_eq!(
            p["digest"],
            Value::Null,
            "no digest of the earlier run: {status}"
        );
    }
    let message = status["history"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("build namespace changed"), "{status}");
    server.done().await;
}
