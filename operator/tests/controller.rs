//! Reconcile scenarios against kube's `tower-test` mock API server (the controller-rs
//! `ApiServerVerifier` pattern): every request the controller makes is asserted in order,
//! by method, path, query and body, and answered. Everything that can run here is real:
//! commit pinning talks to a real git server, assembly to a real registry.

mod common;

use std::sync::Arc;
use std::time::Duration;

use archforge::api::{ImageBuild, MediaType};
use archforge::controller::{
    Context, ReconcileError, StoreWriters, Stores, error_policy, reconcile,
};
use archforge::plan::Platform;
use archforge::registry::{Registry, RegistryOptions};
use archforge::settings::BuilderSettings;
use archforge::supply::SigningKey;
use archforge::telemetry::{Metrics, RequestLabels};
use common::controller::{Handle, config, mock_client, percent_decode, rendered_jobs};
use common::git::GitServer;
use common::keys::{assert_no_piece_of, openssl_key, pem_body, python_cosign_key, truncated};
use common::registry::{Mode, TestRegistry, push_platform_images};
use http::{Method, Response};
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

/// Builder pods that do not start: what the scheduler, kubelet and Job controller said.
#[path = "controller/stuck.rs"]
mod stuck;

/// An isolated build namespace: Jobs and Secret copies there, the finalizer.
#[path = "controller/isolated.rs"]
mod isolated;
/// BuildPolicies: refused specs, policy defaults, re-evaluation.
#[path = "controller/policy.rs"]
mod policy;
/// Concurrency limits and the queue.
#[path = "controller/queue.rs"]
mod queue;
/// Signing only what is trustworthy, and pushing only with the ImageBuild's own rights.
#[path = "controller/trust.rs"]
mod trust;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";
const UID: &str = "5f3c1a8e-2b7d-4e61-9a0c-7d2e8b4f6a10";

/// The mock API server's side: one expected request at a time.
struct ApiServer {
    handle: Handle,
    build: Value,
    stores: StoreWriters,
}

impl ApiServer {
    /// Expects `method path` whose query contains every item of `query`, answers `reply`,
    /// and returns the request body.
    async fn expect(&mut self, method: Method, path: &str, query: &[&str], reply: Value) -> Value {
        self.expect_with(method, path, query, move |_| reply).await
    }

    /// Like `expect`, with an answer made from the request body.
    async fn expect_with(
        &mut self,
        method: Method,
        path: &str,
        query: &[&str],
        reply: impl FnOnce(&Value) -> Value,
    ) -> Value {
        self.expect_answer(method, path, query, move |body| (200, reply(body)))
            .await
    }

    /// Like `expect_with`, with the HTTP status code of the answer chosen too.
    async fn expect_answer(
        &mut self,
        method: Method,
        path: &str,
        query: &[&str],
        reply: impl FnOnce(&Value) -> (u16, Value),
    ) -> Value {
        let (request, send) =
            tokio::time::timeout(common::controller::HANG_GUARD, self.handle.next_request())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {method} {path}"))
                .expect("the controller made no further request");
        let uri = request.uri().clone();
        if request.method() != method {
            let bytes = request.into_body().collect_bytes().await.unwrap();
            panic!(
                "expected {method} {path}, got {uri}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        assert_eq!(
            (request.method(), uri.path()),
            (&method, path),
            "unexpected request {uri}"
        );
        let decoded = percent_decode(uri.query().unwrap_or_default());
        for item in query {
            assert!(
                decoded.contains(item),
                "{method} {path}: query {decoded:?} lacks {item:?}"
            );
        }
        let (group, resource, verb) =
            archforge::rbac::required_permission(method.as_str(), uri.path(), &decoded)
                .unwrap_or_else(|| panic!("{method} {uri} is not a resource request"));
        assert!(
            archforge::rbac::is_granted(&group, &resource, &verb),
            "{method} {uri} needs {verb} on {resource} in group {group:?}, which rbac::PERMISSIONS lacks"
        );
        let is_apply = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|t| t == "application/apply-patch+yaml");
        if is_apply && !resource.contains('/') {
            // An apply that creates the object is also authorized as a create.
            assert!(
                archforge::rbac::is_granted(&group, &resource, "create"),
                "apply to {resource} needs create, which rbac::PERMISSIONS lacks"
            );
        }
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        let (code, answer) = reply(&body);
        send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap(),
        );
        body
    }

    /// The Job store (fed by the operator's watch) holds `items`: reading it is no request.
    async fn store_jobs(&mut self, items: Vec<Value>) {
        self.stores.set_jobs(
            items
                .into_iter()
                .map(|j| serde_json::from_value(j).unwrap()),
        );
    }

    async fn store_nodes(&mut self, arches: &[&str]) {
        let nodes: Vec<(&str, &[(&str, &str)])> = arches.iter().map(|a| (*a, &[][..])).collect();
        self.store_labelled_nodes(&nodes).await;
    }

    /// Ready nodes in the node store: (architecture, extra labels) each.
    async fn store_labelled_nodes(&mut self, nodes: &[(&str, &[(&str, &str)])]) {
        let items = nodes.iter().enumerate().map(|(i, (arch, extra))| {
            let mut labels = json!({"kubernetes.io/arch": arch, "kubernetes.io/os": "linux"});
            for (k, v) in extra.iter() {
                labels[*k] = json!(v);
            }
            serde_json::from_value(json!({
                "metadata": {"name": format!("node-{i}"), "labels": labels},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]}
            }))
            .unwrap()
        });
        self.stores.set_nodes(items);
    }

    /// The node store holds these Node objects, as the API server sends them.
    async fn store_node_objects(&mut self, items: Vec<Value>) {
        self.stores.set_nodes(
            items
                .into_iter()
                .map(|n| serde_json::from_value(n).unwrap()),
        );
    }

    /// The pod store holds `items` (the operator watches builder pods by label); the
    /// controller picks this run's by label and owner.
    async fn store_pods(&mut self, items: Vec<Value>) {
        self.stores.set_pods(
            items
                .into_iter()
                .map(|p| serde_json::from_value(p).unwrap()),
        );
    }

    /// The two Event stores (the operator watches `FailedCreate` on Jobs and `FailedMount`
    /// on pods) hold `items`.
    async fn store_events(&mut self, items: Vec<Value>) {
        self.stores.set_events(
            items
                .into_iter()
                .map(|e| serde_json::from_value(e).unwrap()),
        );
    }

    /// Expects the creation of Job `name`; the API server answers with the object as
    /// stored, with the UID it assigned.
    async fn create_job(&mut self, name: &str) -> Value {
        let body = self
            .expect_with(
                Method::POST,
                "/apis/batch/v1/namespaces/default/jobs",
                &["fieldManager=archforge"],
                |body| {
                    let mut stored = body.clone();
                    stored["metadata"]["uid"] = json!(job_uid(name));
                    stored
                },
            )
            .await;
        assert_eq!(body["metadata"]["name"], name);
        body
    }

    /// Expects the creation of Job `name` and refuses it with `code` and `message`.
    async fn refuse_job(&mut self, name: &str, code: u16, reason: &str, message: &str) {
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": message, "reason": reason, "code": code});
        let body = self
            .expect_answer(
                Method::POST,
                "/apis/batch/v1/namespaces/default/jobs",
                &["fieldManager=archforge"],
                |_| (code, status),
            )
            .await;
        assert_eq!(body["metadata"]["name"], name);
    }

    async fn get_job(&mut self, name: &str, stored: Value) {
        self.expect(
            Method::GET,
            &format!("/apis/batch/v1/namespaces/default/jobs/{name}"),
            &[],
            stored,
        )
        .await;
    }

    async fn event(&mut self, reason: &str, type_: &str) -> Value {
        let body = self
            .expect(
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/default/events",
                &[],
                json!({}),
            )
            .await;
        assert_eq!(
            (body["reason"].as_str(), body["type"].as_str()),
            (Some(reason), Some(type_)),
            "{body}"
        );
        assert_eq!(body["regarding"]["name"], "app");
        body
    }

    async fn delete_job(&mut self, name: &str) {
        let body = self
            .expect(
                Method::DELETE,
                &format!("/apis/batch/v1/namespaces/default/jobs/{name}"),
                &[],
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            )
            .await;
        assert_eq!(
            body["propagationPolicy"], "Background",
            "pods go with their Job"
        );
    }

    async fn patch_status(&mut self) -> Value {
        let stored = self.build.clone();
        let body = self
            .expect_with(
                Method::PATCH,
                "/apis/archforge.dev/v1alpha1/namespaces/default/imagebuilds/app/status",
                &["fieldManager=archforge", "force=true"],
                |body| {
                    let mut stored = stored;
                    stored["status"] = body["status"].clone();
                    stored
                },
            )
            .await;
        assert_eq!(body["apiVersion"], "archforge.dev/v1alpha1");
        assert_eq!(body["kind"], "ImageBuild");
        body["status"].clone()
    }

    /// Nothing is requested (for now: the server stays up for the next reconcile).
    async fn quiet(&mut self) {
        if let Ok(Some((request, _))) =
            tokio::time::timeout(Duration::from_millis(200), self.handle.next_request()).await
        {
            panic!(
                "unexpected extra request {} {}",
                request.method(),
                request.uri()
            );
        }
    }

    /// Nothing else may be requested.
    async fn done(mut self) {
        self.quiet().await;
    }

    /// A reconcile that says `events` (Normal), writes the status and asks nothing else
    /// for now; the status written.
    async fn writes_status(&mut self, events: &[&str]) -> Value {
        for reason in events {
            self.event(reason, "Normal").await;
        }
        let status = self.patch_status().await;
        self.quiet().await;
        status
    }

    /// The stores of a run not started yet: no Job, a node of each architecture.
    async fn store_nothing_started(&mut self) {
        self.store_jobs(vec![]).await;
        self.store_nodes(&["amd64", "arm64"]).await;
    }

    /// A run starting: both Jobs created, `RunStarted`, the status written; the amd64 Job
    /// as created and the status.
    async fn start_run(&mut self) -> (Value, Value) {
        let amd64 = self.create_job("app-1-linux-amd64").await;
        self.create_job("app-1-linux-arm64").await;
        self.event("RunStarted", "Normal").await;
        (amd64, self.patch_status().await)
    }
}

fn imagebuild(url: &str, git_ref: &str, image: &str, generation: i64, status: Value) -> ImageBuild {
    serde_json::from_value(json!({
        "apiVersion": "archforge.dev/v1alpha1",
        "kind": "ImageBuild",
        "metadata": {"name": "app", "namespace": "default", "uid": UID, "generation": generation},
        "spec": {
            "source": {"git": {"url": url, "ref": git_ref}},
            "platforms": ["linux/amd64", "linux/arm64"],
            "output": {"image": image}
        },
        "status": status
    }))
    .unwrap()
}

fn setup(build: &ImageBuild, registry: RegistryOptions) -> (Arc<Context>, ApiServer) {
    setup_with(build, registry, BuilderSettings::default())
}

fn setup_with(
    build: &ImageBuild,
    registry: RegistryOptions,
    builder: BuilderSettings,
) -> (Arc<Context>, ApiServer) {
    setup_signing_with(build, registry, builder, None)
}

/// A reconcile context whose operator-wide signing key is `signing_key`.
fn setup_signing_with(
    build: &ImageBuild,
    registry: RegistryOptions,
    builder: BuilderSettings,
    signing_key: Option<SigningKey>,
) -> (Arc<Context>, ApiServer) {
    setup_config(build, config(builder, registry, signing_key))
}

/// A reconcile context with the operator's settings `config`.
fn setup_config(
    build: &ImageBuild,
    config: archforge::controller::Config,
) -> (Arc<Context>, ApiServer) {
    let metrics = Arc::new(Metrics::default());
    let (client, handle) = mock_client(&metrics);
    let (stores, writers) = Stores::empty();
    let ctx = Arc::new(Context::new(client, config, metrics, stores));
    (
        ctx,
        ApiServer {
            handle,
            build: serde_json::to_value(build).unwrap(),
            stores: writers,
        },
    )
}

/// The Job the controller renders for `platform` at `commit`, with a Job status added.
fn job(build: &ImageBuild, platform: &str, commit: &str, status: Value) -> Value {
    let (p, mut job) = rendered_jobs(build, commit)
        .into_iter()
        .find(|(p, _)| p.platform.to_string() == platform)
        .unwrap();
    job["metadata"]["uid"] = json!(job_uid(&p.job_name));
    job["status"] = status;
    job
}

/// The digests of [`push_platform_images`].
async fn pushed_digests(
    registry: &Registry,
    reference: impl Fn(&Platform) -> String,
    marker: &str,
) -> Vec<String> {
    push_platform_images(registry, reference, marker)
        .await
        .into_iter()
        .map(|image| image.digest)
        .collect()
}

/// The status of a Job that completed (started 10:00, done 10:04).
fn complete() -> Value {
    json!({"succeeded": 1, "startTime": "2026-11-23T10:00:00Z", "completionTime": "2026-11-23T10:04:00Z",
           "conditions": [{"type": "Complete", "status": "True"}]})
}

/// Both platforms' Jobs complete, their builder pods having reported `messages` (the
/// digests they pushed).
fn finished(build: &ImageBuild, messages: [&str; 2]) -> (Vec<Value>, Vec<Value>) {
    let jobs = vec![
        job(build, "linux/amd64", SHA, complete()),
        job(build, "linux/arm64", SHA, complete()),
    ];
    let pods = vec![
        builder_pod("app-1-linux-amd64", 1, 0, messages[0]),
        builder_pod("app-1-linux-arm64", 1, 0, messages[1]),
    ];
    (jobs, pods)
}

/// The UID the mock API server gives Job `name`.
fn job_uid(name: &str) -> String {
    format!("uid-of-{name}")
}

fn builder_pod(job_name: &str, generation: i64, exit_code: i32, message: &str) -> Value {
    json!({
        "metadata": {"name": format!("{job_name}-x7k2p"), "namespace": "default",
                     "labels": {"job-name": job_name, "archforge.dev/imagebuild": "app", "archforge.dev/generation": generation.to_string()},
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job_name,
                                          "uid": job_uid(job_name), "controller": true, "blockOwnerDeletion": true}]},
        "status": pod_status(exit_code, message)
    })
}

/// A finished builder pod's status: a build that failed ends in the `builder` init
/// container; one that succeeded has the push container's digest.
fn pod_status(exit_code: i32, message: &str) -> Value {
    let terminated = |name: &str, code: i32, message: &str| {
        json!({"name": name, "image": "", "imageID": "", "ready": false, "restartCount": 0,
               "state": {"terminated": {"exitCode": code, "message": message}}})
    };
    if exit_code == 0 {
        json!({
            "initContainerStatuses": [terminated("git-sync", 0, ""), terminated("builder", 0, "")],
            "containerStatuses": [terminated("push", 0, message)]
        })
    } else {
        json!({
            "initContainerStatuses": [terminated("git-sync", 0, ""), terminated("builder", exit_code, message)],
            "containerStatuses": [{"name": "push", "image": "", "imageID": "", "ready": false, "restartCount": 0,
                                   "state": {"waiting": {"reason": "PodInitializing"}}}]
        })
    }
}

fn condition<'a>(status: &'a Value, kind: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} condition"))
}

#[tokio::test]
async fn a_new_imagebuild_pins_its_commit_and_creates_one_job_per_platform() {
    let git = GitServer::start();
    let (url, sha) = git.commit("app", &[("Dockerfile", "FROM scratch\n")], "first");
    let build = imagebuild(
        &url,
        "main",
        "registry.example.com/team/app:v1",
        1,
        Value::Null,
    );
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    let expected_jobs: Vec<Value> = ["linux/amd64", "linux/arm64"]
        .iter()
        .map(|p| {
            let mut j = job(&build, p, &sha, Value::Null);
            j.as_object_mut().unwrap().remove("status");
            j["metadata"].as_object_mut().unwrap().remove("uid");
            j
        })
        .collect();
    let verify = async move {
        server.store_nothing_started().await;
        let amd64 = server.create_job("app-1-linux-amd64").await;
        let arm64 = server.create_job("app-1-linux-arm64").await;
        assert_eq!(
            amd64, expected_jobs[0],
            "the created body is the rendered Job"
        );
        assert_eq!(arm64, expected_jobs[1]);
        assert!(
            amd64["spec"]["template"]["spec"]["initContainers"][0]["args"]
                .as_array()
                .unwrap()
                .contains(&json!(format!("--ref={sha}")))
        );
        server.event("RunStarted", "Normal").await;
        let status = server.patch_status().await;
        assert_eq!(status["phase"], "Building");
        assert_eq!(status["observedGeneration"], 1);
        assert_eq!(status["source"]["commit"], sha.as_str());
        assert_eq!(status["progress"], "0/2");
        assert_eq!(status["platforms"][1]["job"], "app-1-linux-arm64");
        // Recorded at creation: a Job of that name with another UID is not this run's.
        assert_eq!(
            status["platforms"][1]["jobUid"],
            job_uid("app-1-linux-arm64")
        );
        assert_eq!(condition(&status, "Reconciling")["status"], "True");
        assert_eq!(condition(&status, "Ready")["status"], "False");
        server.done().await;
    };
    let (action, ()) = tokio::join!(reconcile(Arc::new(build.clone()), ctx), verify);
    assert_eq!(
        format!("{:?}", action.unwrap()),
        format!("{:?}", Action::requeue(Duration::from_secs(300)))
    );
}

// Multi-threaded: the verifier calls skopeo inside block_in_place.
#[tokio::test(flavor = "multi_thread")]
async fn all_platforms_succeeded_assembles_and_pushes_the_index() {
    let reg = TestRegistry::start(Mode::Plain);
    let registry = Registry::new(reg.options());
    let image = reg.image("team/app:v1");
    let digests =
        pushed_digests(&registry, |p| format!("{image}-{}", p.slug()), "controller").await;
    let status = json!({"observedGeneration": 1, "phase": "Building", "source": {"commit": SHA}});
    let build = imagebuild("https://git.example.com/app.git", "main", &image, 1, status);
    let (ctx, mut server) = setup(&build, reg.options());
    let (jobs, pods) = finished(&build, [&digests[0], &format!("{}\n", digests[1])]);
    let reg_for_check = &reg;
    let image_for_check = image.clone();
    let verify = async move {
        server.store_jobs(jobs).await;
        server.store_pods(pods).await;
        server.event("PlatformSucceeded", "Normal").await;
        server.event("PlatformSucceeded", "Normal").await;
        server.event("IndexPushed", "Normal").await;
        let status = server.patch_status().await;
        assert_eq!(status["phase"], "Succeeded");
        assert_eq!(status["progress"], "2/2");
        let raw = tokio::task::block_in_place(|| {
            reg_for_check.skopeo_inspect(&image_for_check, &["--raw"])
        });
        assert_eq!(
            status["digest"],
            archforge::registry::sha256_digest(raw.as_bytes()),
            "status names the pushed index"
        );
        let index: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(
            index["annotations"]["org.opencontainers.image.revision"],
            SHA
        );
        assert_eq!(index["manifests"][1]["digest"], digests[1].as_str());
        assert_eq!(status["image"], image_for_check.as_str());
        assert_eq!(condition(&status, "Ready")["status"], "True");
        assert_eq!(condition(&status, "Stalled")["status"], "False");
        assert_eq!(status["history"][0]["result"], "Succeeded");
        assert_eq!(status["history"][0]["digest"], status["digest"]);
        server.done().await;
    };
    waits_for_change(reconciled(&build, ctx, verify).await);
}

#[tokio::test]
async fn one_failed_platform_fails_the_run_and_stops_the_other() {
    let status = json!({"observedGeneration": 1, "phase": "Building", "source": {"commit": SHA}});
    let build = imagebuild(
        "https://git.example.com/app.git",
        "main",
        "registry.example.com/team/app:v1",
        1,
        status,
    );
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    let tail = "STEP 3/5: RUN make\nmake: *** [all] Error 2\nError: building at STEP \"RUN make\": exit status 2";
    let jobs = vec![
        job(
            &build,
            "linux/amd64",
            SHA,
            json!({"active": 1, "startTime": "2026-11-23T10:00:00Z"}),
        ),
        job(
            &build,
            "linux/arm64",
            SHA,
            json!({"failed": 2, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}),
        ),
    ];
    let pods = vec![builder_pod("app-1-linux-arm64", 1, 1, tail)];
    let verify = async move {
        server.store_jobs(jobs).await;
        server.store_pods(pods).await;
        server.delete_job("app-1-linux-amd64").await;
        let event = server.event("PlatformFailed", "Warning").await;
        assert!(
            event["note"]
                .as_str()
                .unwrap()
                .starts_with("linux/arm64 failed"),
            "{event}"
        );
        let status = server.patch_status().await;
        assert_eq!(status["phase"], "Failed");
        let stalled = condition(&status, "Stalled");
        assert_eq!(
            (stalled["status"].as_str(), stalled["reason"].as_str()),
            (Some("True"), Some("PlatformFailed"))
        );
        assert!(
            stalled["message"]
                .as_str()
                .unwrap()
                .contains("linux/arm64 failed: building failed:")
        );
        let arm64 = &status["platforms"][1];
        assert_eq!(arm64["phase"], "Failed");
        assert!(
            arm64["message"]
                .as_str()
                .unwrap()
                .ends_with("exit status 2"),
            "the log tail is in status"
        );
        assert_eq!(status["history"][0]["result"], "Failed");
        server.done().await;
    };
    waits_for_change(reconciled(&build, ctx, verify).await);
}

#[tokio::test]
async fn an_invalid_spec_stalls_with_a_warning_and_creates_nothing() {
    let mut build = imagebuild(
        "https://git.example.com/app.git",
        "main",
        "registry.example.com/team/app:v1",
        1,
        Value::Null,
    );
    build.spec.node_selector =
        Some([("kubernetes.io/arch".to_string(), "arm64".to_string())].into());
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    let verify = async move {
        let event = server.event("InvalidSpec", "Warning").await;
        assert!(
            event["note"]
                .as_str()
                .unwrap()
                .contains("spec.nodeSelector")
        );
        let status = server.patch_status().await;
        let stalled = condition(&status, "Stalled");
        assert_eq!(
            (stalled["status"].as_str(), stalled["reason"].as_str()),
            (Some("True"), Some("InvalidSpec"))
        );
        assert!(
            stalled["message"]
                .as_str()
                .unwrap()
                .contains("kubernetes.io/arch and kubernetes.io/os are set by archforge")
        );
        assert_eq!(status["phase"], "Failed");
        server.done().await;
    };
    let (result, ()) = tokio::join!(reconcile(Arc::new(build.clone()), ctx.clone()), verify);
    let error = result.unwrap_err();
    assert!(matches!(error, ReconcileError::InvalidSpec(_)));
    let action = error_policy(Arc::new(build), &error, ctx);
    assert_eq!(
        format!("{action:?}"),
        format!("{:?}", Action::await_change()),
        "an invalid spec waits for a change"
    );
}

#[tokio::test]
async fn a_restart_mid_run_finds_its_jobs_and_creates_nothing() {
    let status = json!({"observedGeneration": 1, "phase": "Building", "source": {"commit": SHA}});
    let build = imagebuild(
        "https://git.example.com/app.git",
        "main",
        "registry.example.com/team/app:v1",
        1,
        status,
    );
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    let running = json!({"active": 1, "startTime": "2026-11-23T10:00:00Z"});
    let jobs = vec![
        job(&build, "linux/amd64", SHA, running.clone()),
        job(&build, "linux/arm64", SHA, running),
    ];
    let verify = async move {
        server.store_jobs(jobs).await;
        server.store_pods(vec![]).await;
        let status = server.patch_status().await;
        assert_eq!(status["phase"], "Building");
        assert_eq!(status["platforms"][0]["phase"], "Building");
        assert_eq!(status["platforms"][0]["startTime"], "2026-11-23T10:00:00Z");
        server.done().await;
    };
    reconciled(&build, ctx, verify).await.unwrap();
}

#[tokio::test]
async fn a_spec_change_mid_run_stops_the_old_jobs_and_starts_a_new_run() {
    let new_sha = "89abcdef0123456789abcdef0123456789abcdef";
    let old_status = json!({"observedGeneration": 1, "phase": "Building", "source": {"commit": SHA},
                            "platforms": [{"platform": "linux/amd64", "phase": "Building", "startTime": "2026-11-23T10:00:00Z"}]});
    let old_build = imagebuild(
        "https://git.example.com/app.git",
        SHA,
        "registry.example.com/team/app:v1",
        1,
        Value::Null,
    );
    let build = imagebuild(
        "https://git.example.com/app.git",
        new_sha,
        "registry.example.com/team/app:v1",
        2,
        old_status,
    );
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    let running = json!({"active": 1});
    let old_jobs = vec![
        job(&old_build, "linux/amd64", SHA, running.clone()),
        job(&old_build, "linux/arm64", SHA, running),
    ];
    let verify = async move {
        server.store_jobs(old_jobs).await;
        server.delete_job("app-1-linux-amd64").await;
        server.delete_job("app-1-linux-arm64").await;
        server.store_nodes(&["arm64", "amd64"]).await;
        let amd64 = server.create_job("app-2-linux-amd64").await;
        assert_eq!(
            amd64["metadata"]["annotations"]["archforge.dev/revision"],
            new_sha
        );
        assert_eq!(amd64["metadata"]["labels"]["archforge.dev/generation"], "2");
        server.create_job("app-2-linux-arm64").await;
        server.event("RunStarted", "Normal").await;
        let status = server.patch_status().await;
        assert_eq!(status["observedGeneration"], 2);
        assert_eq!(status["source"]["commit"], new_sha);
        assert_eq!(status["history"][0]["generation"], 1);
        assert_eq!(status["history"][0]["commit"], SHA);
        assert_eq!(
            status["history"][0]["message"],
            "superseded by generation 2"
        );
        server.done().await;
    };
    reconciled(&build, ctx, verify).await.unwrap();
}

#[tokio::test]
async fn no_node_for_an_architecture_waits_without_jobs() {
    let build = imagebuild(
        "https://git.example.com/app.git",
        SHA,
        "registry.example.com/team/app:v1",
        1,
        Value::Null,
    );
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    let verify = async move {
        server.store_jobs(vec![]).await;
        server.store_nodes(&["amd64"]).await;
        let event = server.event("NoNodeForPlatform", "Warning").await;
        assert!(event["note"].as_str().unwrap().contains("linux/arm64"));
        let status = server.patch_status().await;
        assert_eq!(status["phase"], "Pending");
        let reconciling = condition(&status, "Reconciling");
        assert_eq!(reconciling["reason"], "NoNodeForPlatform");
        assert!(
            reconciling["message"]
                .as_str()
                .unwrap()
                .contains("linux/arm64")
        );
        assert!(
            !reconciling["message"]
                .as_str()
                .unwrap()
                .contains("linux/amd64")
        );
        server.done().await;
    };
    let (action, ()) = tokio::join!(reconcile(Arc::new(build.clone()), ctx), verify);
    assert_eq!(
        format!("{:?}", action.unwrap()),
        format!("{:?}", Action::requeue(Duration::from_secs(30)))
    );
}

#[tokio::test]
async fn a_registry_outage_during_assembly_keeps_the_digests_and_rebuilds_nothing() {
    let digest = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    let status = json!({
        "observedGeneration": 1, "phase": "Assembling", "source": {"commit": SHA},
        "platforms": [
            {"platform": "linux/amd64", "job": "app-1-linux-amd64", "phase": "Succeeded", "digest": digest('a'), "completionTime": "2026-11-23T10:04:00Z"},
            {"platform": "linux/arm64", "job": "app-1-linux-arm64", "phase": "Succeeded", "digest": digest('b'), "completionTime": "2026-11-23T10:05:00Z"}
        ]
    });
    // A port nobody listens on stands for the registry that is down.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let build = imagebuild(
        "https://git.example.com/app.git",
        "main",
        &format!("{addr}/team/app:v1"),
        1,
        status,
    );
    let options = RegistryOptions {
        insecure: vec![addr],
        retry: archforge::registry::RetryPolicy {
            attempts: 2,
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(50),
        },
        ..Default::default()
    };
    let (ctx, mut server) = setup(&build, options);
    let verify = async move {
        // The Jobs are gone (their TTL passed): none is created again, and with no Job
        // there is no builder pod to look for.
        server.store_jobs(vec![]).await;
        server.event("RegistryUnreachable", "Warning").await;
        let status = server.patch_status().await;
        assert_eq!(status["phase"], "Assembling");
        assert_eq!(
            condition(&status, "Reconciling")["reason"],
            "RegistryUnreachable"
        );
        assert_eq!(status["platforms"][0]["digest"], digest('a').as_str());
        assert_eq!(status["platforms"][1]["digest"], digest('b').as_str());
        server.done().await;
    };
    let (result, ()) = tokio::join!(reconcile(Arc::new(build.clone()), ctx.clone()), verify);
    let error = result.unwrap_err();
    assert!(
        matches!(&error, ReconcileError::Assemble(e) if e.is_transient()),
        "{error:?}"
    );
    let action = error_policy(Arc::new(build), &error, ctx);
    assert_eq!(
        format!("{action:?}"),
        format!("{:?}", Action::requeue(Duration::from_secs(15))),
        "a transient error is retried"
    );
}

/// One reconcile of `build`, with `verify` playing the API server; its result.
async fn reconciled(
    build: &ImageBuild,
    ctx: Arc<Context>,
    verify: impl std::future::Future<Output = ()>,
) -> Result<Action, ReconcileError> {
    let (action, ()) = tokio::join!(reconcile(Arc::new(build.clone()), ctx), verify);
    action
}

/// The reconcile succeeded and waits for the ImageBuild to change.
fn waits_for_change(action: Result<Action, ReconcileError>) {
    assert_eq!(
        format!("{:?}", action.unwrap()),
        format!("{:?}", Action::await_change())
    );
}

/// A condition's status, reason and message.
fn said(status: &Value, kind: &str) -> (String, String, String) {
    let c = condition(status, kind);
    let text = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    (text("status"), text("reason"), text("message"))
}

#[tokio::test]
async fn a_job_the_api_server_refuses_stalls_the_run_and_leaves_no_job() {
    let build = imagebuild(
        "https://git.example.com/app.git",
        SHA,
        "registry.example.com/team/app:v1",
        1,
        Value::Null,
    );
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    let quota = "jobs.batch \"app-1-linux-arm64\" is forbidden: exceeded quota: no-jobs, requested: count/jobs.batch=1, used: count/jobs.batch=1, limited: count/jobs.batch=1";
    let verify = async move {
        server.store_nothing_started().await;
        server.create_job("app-1-linux-amd64").await;
        server
            .refuse_job("app-1-linux-arm64", 403, "Forbidden", quota)
            .await;
        // The half-started run is taken down: nothing of it builds.
        server.delete_job("app-1-linux-amd64").await;
        let event = server.event("JobRejected", "Warning").await;
        assert!(
            event["note"].as_str().unwrap().contains("exceeded quota"),
            "{event}"
        );
        let status = server.patch_status().await;
        assert_eq!(status["phase"], "Failed");
        let (stalled, reason, message) = said(&status, "Stalled");
        assert_eq!((stalled.as_str(), reason.as_str()), ("True", "JobRejected"));
        assert!(
            message.contains("linux/arm64") && message.contains("exceeded quota: no-jobs"),
            "{message}"
        );
        assert_eq!(said(&status, "Ready"), ("False".into(), reason, message));
        assert_eq!(status["history"][0]["result"], "Failed");
        server.done().await;
    };
    let (action, status) = tokio::join!(reconcile(Arc::new(build.clone()), ctx), verify);
    let () = status;
    assert_eq!(
        format!("{:?}", action.unwrap()),
        format!("{:?}", Action::await_change()),
        "no retry loop: only a change to the ImageBuild starts again"
    );
}

#[tokio::test]
async fn a_rejected_run_is_not_retried_until_the_imagebuild_changes() {
    let status = json!({"observedGeneration": 1, "phase": "Failed", "source": {"commit": SHA},
                        "conditions": [{"type": "Stalled", "status": "True", "reason": "JobRejected",
                                        "message": "m", "lastTransitionTime": "2026-11-23T10:00:00Z", "observedGeneration": 1}]});
    let build = imagebuild(
        "https://git.example.com/app.git",
        SHA,
        "registry.example.com/team/app:v1",
        1,
        status,
    );
    let (ctx, server) = setup(&build, RegistryOptions::default());
    let (action, ()) = tokio::join!(reconcile(Arc::new(build.clone()), ctx), server.done());
    assert_eq!(
        format!("{:?}", action.unwrap()),
        format!("{:?}", Action::await_change())
    );
}

#[tokio::test]
async fn a_job_name_taken_by_another_owner_is_a_conflict_not_an_adoption() {
    let build = imagebuild(
        "https://git.example.com/app.git",
        SHA,
        "registry.example.com/team/app:v1",
        1,
        Value::Null,
    );
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    // amd64's Job exists already and is ours (a create that the watch has not shown yet);
    // arm64's name is held by a Job that belongs to another ImageBuild.
    let ours = job(&build, "linux/amd64", SHA, json!({"active": 1}));
    let mut foreign = job(&build, "linux/arm64", SHA, json!({"active": 1}));
    foreign["metadata"]["ownerReferences"][0]["uid"] = json!("another-imagebuild");
    let exists = |name: &str| format!("jobs.batch \"{name}\" already exists");
    let verify = async move {
        server.store_nothing_started().await;
        server
            .refuse_job(
                "app-1-linux-amd64",
                409,
                "AlreadyExists",
                &exists("app-1-linux-amd64"),
            )
            .await;
        server.get_job("app-1-linux-amd64", ours).await;
        server
            .refuse_job(
                "app-1-linux-arm64",
                409,
                "AlreadyExists",
                &exists("app-1-linux-arm64"),
            )
            .await;
        server.get_job("app-1-linux-arm64", foreign).await;
        // Only our own Job goes; the other owner's is never touched.
        server.delete_job("app-1-linux-amd64").await;
        server.event("JobNameConflict", "Warning").await;
        let status = server.patch_status().await;
        let (stalled, reason, message) = said(&status, "Stalled");
        assert_eq!(
            (stalled.as_str(), reason.as_str()),
            ("True", "JobNameConflict")
        );
        assert!(message.contains("app-1-linux-arm64"), "{message}");
        server.done().await;
    };
    waits_for_change(reconciled(&build, ctx, verify).await);
}

#[tokio::test]
async fn a_builder_pod_pod_security_would_refuse_is_never_created() {
    let build = imagebuild(
        "https://git.example.com/app.git",
        SHA,
        "registry.example.com/team/app:v1",
        1,
        Value::Null,
    );
    let settings = BuilderSettings {
        seccomp_profile: "Unconfined".parse().unwrap(),
        ..BuilderSettings::default()
    };
    let (ctx, mut server) = setup_with(&build, RegistryOptions::default(), settings);
    let verify = async move {
        server.store_nothing_started().await;
        server.event("PodSecurity", "Warning").await;
        let status = server.patch_status().await;
        let (stalled, reason, message) = said(&status, "Stalled");
        assert_eq!((stalled.as_str(), reason.as_str()), ("True", "PodSecurity"));
        assert!(
            message.contains("seccompProfile_baseline") && message.contains("--seccomp-profile"),
            "{message}"
        );
        server.done().await;
    };
    waits_for_change(reconciled(&build, ctx, verify).await);
}

#[tokio::test]
async fn a_pod_that_only_looks_like_a_builder_is_ignored() {
    let status = json!({"observedGeneration": 1, "phase": "Building", "source": {"commit": SHA}});
    let build = imagebuild(
        "https://git.example.com/app.git",
        SHA,
        "registry.example.com/team/app:v1",
        1,
        status,
    );
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    let jobs = vec![
        job(&build, "linux/amd64", SHA, json!({"active": 1})),
        job(&build, "linux/arm64", SHA, complete()),
    ];
    let forged_digest = format!("sha256:{}", "e".repeat(64));
    let real_digest = format!("sha256:{}", "1".repeat(64));
    // Same labels and name as arm64's builder pod, but not controlled by this run's Job
    // (another owner UID), and one with the labels and no owner at all; both come first.
    let mut forged = builder_pod("app-1-linux-arm64", 1, 0, &forged_digest);
    forged["metadata"]["ownerReferences"][0]["uid"] = json!("someone-else");
    let mut unowned = builder_pod("app-1-linux-arm64", 1, 0, &forged_digest);
    unowned["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("ownerReferences");
    let real = builder_pod("app-1-linux-arm64", 1, 0, &real_digest);
    let verify = async move {
        server.store_jobs(jobs).await;
        server.store_pods(vec![forged, unowned, real]).await;
        server.event("PlatformSucceeded", "Normal").await;
        let status = server.patch_status().await;
        assert_eq!(status["phase"], "Building");
        assert_eq!(status["platforms"][1]["digest"], real_digest.as_str());
        server.done().await;
    };
    reconciled(&build, ctx, verify).await.unwrap();
}

/// An ImageBuild for linux/amd64 and linux/arm64 with `extra` fields in its spec.
fn imagebuild_with(extra: Value, image: &str, status: Value) -> ImageBuild {
    let mut object = serde_json::to_value(imagebuild(
        "https://git.example.com/app.git",
        SHA,
        image,
        1,
        status,
    ))
    .unwrap();
    for (k, v) in extra.as_object().unwrap() {
        object["spec"][k] = v.clone();
    }
    serde_json::from_value(object).unwrap()
}

fn minutes_ago(minutes: i64) -> String {
    let now = jiff::Timestamp::now();
    (now - jiff::SignedDuration::from_mins(minutes))
        .round(jiff::Unit::Second)
        .unwrap()
        .to_string()
}

const EMULATES_ARM64: &[(&str, &str)] = &[("emulation.archforge.dev/arm64", "true")];

#[tokio::test]
async fn fallback_waits_out_the_grace_period_then_emulates_on_a_labelled_node() {
    let fallback = json!({"emulation": "Fallback", "emulationAfter": "5m"});
    // Two minutes into the run: still waiting for a native arm64 node.
    let started = minutes_ago(2);
    // The message names a fixed time, so it is the same on every look (no status write).
    let emulation_from = (started.parse::<jiff::Timestamp>().unwrap()
        + jiff::SignedDuration::from_mins(5))
    .to_string();
    let early = json!({"observedGeneration": 1, "phase": "Pending", "source": {"commit": SHA},
                       "startTime": started});
    let build = imagebuild_with(fallback.clone(), "registry.example.com/team/app:v1", early);
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    let verify = async move {
        server.store_jobs(vec![]).await;
        server
            .store_labelled_nodes(&[("amd64", EMULATES_ARM64)])
            .await;
        let event = server.event("NoNodeForPlatform", "Warning").await;
        assert!(
            event["note"].as_str().unwrap().contains(&format!(
                "under emulation from {emulation_from} (emulationAfter 5m"
            )),
            "{event}"
        );
        let status = server.patch_status().await;
        assert_eq!(status["phase"], "Pending");
        server.done().await;
    };
    let (action, ()) = tokio::join!(reconcile(Arc::new(build.clone()), ctx), verify);
    assert_eq!(
        format!("{:?}", action.unwrap()),
        format!("{:?}", Action::requeue(Duration::from_secs(30)))
    );

    // Ten minutes in: arm64 builds under emulation on the amd64 node that can emulate it.
    let late = json!({"observedGeneration": 1, "phase": "Pending", "source": {"commit": SHA},
                      "startTime": minutes_ago(10)});
    let build = imagebuild_with(fallback, "registry.example.com/team/app:v1", late);
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    let verify = async move {
        server.store_jobs(vec![]).await;
        server
            .store_labelled_nodes(&[("amd64", EMULATES_ARM64)])
            .await;
        let amd64 = server.create_job("app-1-linux-amd64").await;
        let arm64 = server.create_job("app-1-linux-arm64").await;
        let selector = |job: &Value| job["spec"]["template"]["spec"]["nodeSelector"].clone();
        assert_eq!(
            selector(&amd64),
            json!({"kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux"})
        );
        assert_eq!(
            selector(&arm64),
            json!({"kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux",
                   "emulation.archforge.dev/arm64": "true"})
        );
        assert_eq!(
            arm64["metadata"]["annotations"]["archforge.dev/emulated-on"],
            "amd64"
        );
        let command = arm64["spec"]["template"]["spec"]["initContainers"][1]["command"]
            .as_array()
            .unwrap()
            .clone();
        assert!(
            command
                .windows(2)
                .any(|w| w[0] == "--platform" && w[1] == "linux/arm64"),
            "the builder still builds for its target"
        );
        server.event("RunStarted", "Normal").await;
        let event = server.event("Emulated", "Normal").await;
        assert!(
            event["note"]
                .as_str()
                .unwrap()
                .starts_with("linux/arm64 builds under QEMU")
        );
        let status = server.patch_status().await;
        assert_eq!(status["phase"], "Building");
        server.done().await;
    };
    reconciled(&build, ctx, verify).await.unwrap();
}

#[tokio::test]
async fn always_builds_every_platform_on_one_host_and_status_says_emulated() {
    let build = imagebuild_with(
        json!({"emulation": "Always"}),
        "registry.example.com/team/app:v1",
        json!({"observedGeneration": 1, "phase": "Pending", "source": {"commit": SHA}}),
    );
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    let verify = async move {
        server.store_jobs(vec![]).await;
        // Native arm64 nodes exist, but Always puts everything on amd64 (which can emulate).
        server
            .store_labelled_nodes(&[("amd64", EMULATES_ARM64), ("arm64", &[])])
            .await;
        server.create_job("app-1-linux-amd64").await;
        let arm64 = server.create_job("app-1-linux-arm64").await;
        assert_eq!(
            arm64["spec"]["template"]["spec"]["nodeSelector"]["kubernetes.io/arch"],
            "amd64"
        );
        server.event("RunStarted", "Normal").await;
        server.event("Emulated", "Normal").await;
        server.patch_status().await;
        server.done().await;
    };
    reconciled(&build, ctx, verify).await.unwrap();

    // Once the Jobs exist, status reads the placement from them.
    let building = json!({"observedGeneration": 1, "phase": "Building", "source": {"commit": SHA}});
    let build = imagebuild_with(
        json!({"emulation": "Always"}),
        "registry.example.com/team/app:v1",
        building,
    );
    let mut arm64 = job(&build, "linux/arm64", SHA, json!({"active": 1}));
    arm64["metadata"]["annotations"]["archforge.dev/emulated-on"] = json!("amd64");
    let jobs = vec![job(&build, "linux/amd64", SHA, json!({"active": 1})), arm64];
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    let verify = async move {
        server.store_jobs(jobs).await;
        server.store_pods(vec![]).await;
        let status = server.patch_status().await;
        assert!(status["platforms"][0].get("emulated").is_none(), "{status}");
        assert_eq!(status["platforms"][1]["emulated"], true);
        server.done().await;
    };
    reconciled(&build, ctx, verify).await.unwrap();
}

/// A Ready linux node `name` of `arch` with `labels` and `spec`, as the API server sends it.
fn node_object(name: &str, arch: &str, labels: Value, spec: Value) -> Value {
    let mut all = json!({"kubernetes.io/arch": arch, "kubernetes.io/os": "linux"});
    for (k, v) in labels.as_object().unwrap() {
        all[k] = v.clone();
    }
    json!({
        "metadata": {"name": name, "labels": all, "managedFields": [{"manager": "kubelet"}]},
        "spec": spec,
        "status": {"conditions": [{"type": "Ready", "status": "True",
                                   "lastHeartbeatTime": "2026-11-23T10:00:00Z"}]}
    })
}

#[tokio::test]
async fn a_node_selector_no_node_matches_waits_without_jobs_and_says_why() {
    let build = imagebuild_with(
        json!({"nodeSelector": {"disk": "ssd"}}),
        "registry.example.com/team/app:v1",
        Value::Null,
    );
    // Nodes of both architectures, none of them both selected and untainted for arm64.
    let nodes = vec![
        node_object("amd", "amd64", json!({"disk": "ssd"}), json!({})),
        node_object("arm-hdd", "arm64", json!({"disk": "hdd"}), json!({})),
        node_object(
            "arm-dedicated",
            "arm64",
            json!({"disk": "ssd"}),
            json!({"taints": [{"key": "dedicated", "value": "arm", "effect": "NoSchedule"}]}),
        ),
        node_object(
            "arm-cordoned",
            "arm64",
            json!({"disk": "ssd"}),
            json!({"unschedulable": true}),
        ),
    ];
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    let verify = async move {
        server.store_jobs(vec![]).await;
        server.store_node_objects(nodes).await;
        // No Job is created: the first request is the Event, then the status.
        let event = server.event("NoNodeForPlatform", "Warning").await;
        let expected = "no Ready, schedulable linux/arm64 node matching spec.nodeSelector {disk: ssd} whose taints spec.tolerations tolerate (3 arm64 nodes: 1 cordoned, 1 without disk=ssd, 1 with taint dedicated=arm:NoSchedule); the run starts when one qualifies";
        assert_eq!(event["note"], expected);
        let status = server.patch_status().await;
        assert_eq!(status["phase"], "Pending");
        assert_eq!(
            said(&status, "Reconciling"),
            ("True".into(), "NoNodeForPlatform".into(), expected.into())
        );
        server.done().await;
    };
    let action = reconciled(&build, ctx, verify).await;
    assert_eq!(
        format!("{:?}", action.unwrap()),
        format!("{:?}", Action::requeue(Duration::from_secs(30)))
    );

    // Tolerating the taint, the dedicated node qualifies: the run starts.
    let tolerating = imagebuild_with(
        json!({"nodeSelector": {"disk": "ssd"},
               "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "arm"}]}),
        "registry.example.com/team/app:v1",
        Value::Null,
    );
    let nodes = vec![
        node_object("amd", "amd64", json!({"disk": "ssd"}), json!({})),
        node_object(
            "arm-dedicated",
            "arm64",
            json!({"disk": "ssd"}),
            json!({"taints": [{"key": "dedicated", "value": "arm", "effect": "NoSchedule"}]}),
        ),
    ];
    let (ctx, mut server) = setup(&tolerating, RegistryOptions::default());
    let verify = async move {
        server.store_jobs(vec![]).await;
        server.store_node_objects(nodes).await;
        server.create_job("app-1-linux-amd64").await;
        let arm64 = server.create_job("app-1-linux-arm64").await;
        assert_eq!(
            arm64["spec"]["template"]["spec"]["tolerations"][0]["key"],
            "dedicated"
        );
        server.event("RunStarted", "Normal").await;
        server.patch_status().await;
        server.done().await;
    };
    reconciled(&tolerating, ctx, verify).await.unwrap();
}

#[tokio::test]
async fn fallback_and_always_emulate_on_a_host_the_selector_reaches_not_on_native_nodes_it_excludes()
 {
    // The only arm64 node is outside the spec's pool; the pool's amd64 node emulates arm64.
    let nodes = || {
        vec![
            node_object("arm", "arm64", json!({}), json!({})),
            node_object(
                "pool-amd",
                "amd64",
                json!({"pool": "builds", "emulation.archforge.dev/arm64": "true"}),
                json!({}),
            ),
        ]
    };
    let selector = |job: &Value| job["spec"]["template"]["spec"]["nodeSelector"].clone();
    let emulated_on_the_pool = json!({"kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux",
                                      "pool": "builds", "emulation.archforge.dev/arm64": "true"});
    let pending = json!({"observedGeneration": 1, "phase": "Pending", "source": {"commit": SHA}});

    let fallback = imagebuild_with(
        json!({"emulation": "Fallback", "emulationAfter": "0s", "nodeSelector": {"pool": "builds"}}),
        "registry.example.com/team/app:v1",
        pending.clone(),
    );
    let (ctx, mut server) = setup(&fallback, RegistryOptions::default());
    let expected = emulated_on_the_pool.clone();
    let verify = async move {
        server.store_jobs(vec![]).await;
        server.store_node_objects(nodes()).await;
        let amd64 = server.create_job("app-1-linux-amd64").await;
        assert_eq!(
            selector(&amd64),
            json!({"kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux", "pool": "builds"})
        );
        let arm64 = server.create_job("app-1-linux-arm64").await;
        assert_eq!(selector(&arm64), expected);
        server.event("RunStarted", "Normal").await;
        let event = server.event("Emulated", "Normal").await;
        assert!(
            event["note"]
                .as_str()
                .unwrap()
                .contains("no node of its own architecture qualifies")
        );
        server.patch_status().await;
        server.done().await;
    };
    reconciled(&fallback, ctx, verify).await.unwrap();

    // Always, a lone arm64 platform: not natively on the excluded arm64 node.
    let always = imagebuild_with(
        json!({"emulation": "Always", "platforms": ["linux/arm64"], "nodeSelector": {"pool": "builds"}}),
        "registry.example.com/team/app:v1",
        pending,
    );
    let (ctx, mut server) = setup(&always, RegistryOptions::default());
    let verify = async move {
        server.store_jobs(vec![]).await;
        server.store_node_objects(nodes()).await;
        let arm64 = server.create_job("app-1-linux-arm64").await;
        assert_eq!(selector(&arm64), emulated_on_the_pool);
        assert_eq!(
            arm64["metadata"]["annotations"]["archforge.dev/emulated-on"],
            "amd64"
        );
        server.event("RunStarted", "Normal").await;
        server.event("Emulated", "Normal").await;
        server.patch_status().await;
        server.done().await;
    };
    reconciled(&always, ctx, verify).await.unwrap();
}

// Multi-threaded: the verifier calls skopeo inside block_in_place.
#[tokio::test(flavor = "multi_thread")]
async fn a_platform_allowed_to_fail_is_left_out_and_the_rest_is_published() {
    let reg = TestRegistry::start(Mode::Plain);
    let registry = Registry::new(reg.options());
    let image = reg.image("team/app:v1");
    let amd64: Platform = "linux/amd64".parse().unwrap();
    let digest = registry
        .push_synthetic_image(
            &format!("{image}-{}", amd64.slug()),
            &amd64,
            MediaType::Oci,
            "controller",
        )
        .await
        .unwrap();
    let status = json!({"observedGeneration": 1, "phase": "Building", "source": {"commit": SHA}});
    let optional_arm64 =
        json!({"platformSettings": [{"platform": "linux/arm64", "allowFailure": true}]});
    let build = imagebuild_with(optional_arm64, &image, status);
    let (ctx, mut server) = setup(&build, reg.options());
    let failed = json!({"failed": 2, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]});
    let jobs = vec![
        job(&build, "linux/amd64", SHA, complete()),
        job(&build, "linux/arm64", SHA, failed),
    ];
    let pods = vec![
        builder_pod("app-1-linux-amd64", 1, 0, &digest),
        builder_pod("app-1-linux-arm64", 1, 1, "exec format error"),
    ];
    let (reg_for_check, image_for_check) = (&reg, image.clone());
    let verify = async move {
        server.store_jobs(jobs).await;
        server.store_pods(pods).await;
        server.event("PlatformSucceeded", "Normal").await;
        let failed = server.event("OptionalPlatformFailed", "Warning").await;
        assert!(
            failed["note"]
                .as_str()
                .unwrap()
                .contains("exec format error")
        );
        let missing = server.event("PlatformsMissing", "Warning").await;
        assert!(
            missing["note"]
                .as_str()
                .unwrap()
                .contains("without linux/arm64")
        );
        server.event("IndexPushed", "Normal").await;
        let status = server.patch_status().await;
        assert_eq!(status["phase"], "Succeeded");
        let ready = condition(&status, "Ready");
        assert_eq!(
            (ready["status"].as_str(), ready["reason"].as_str()),
            (Some("True"), Some("IndexPushedWithoutOptionalPlatforms"))
        );
        assert!(ready["message"].as_str().unwrap().contains("linux/arm64"));
        assert_eq!(status["platforms"][1]["phase"], "Failed");
        assert_eq!(status["history"][0]["result"], "Succeeded");
        assert!(
            status["history"][0]["message"]
                .as_str()
                .unwrap()
                .contains("linux/arm64")
        );
        let raw = tokio::task::block_in_place(|| {
            reg_for_check.skopeo_inspect(&image_for_check, &["--raw"])
        });
        let index: Value = serde_json::from_str(&raw).unwrap();
        let manifests = index["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 1, "{index}");
        assert_eq!(manifests[0]["platform"]["architecture"], "amd64");
        server.done().await;
    };
    waits_for_change(reconciled(&build, ctx, verify).await);
}

#[tokio::test]
async fn a_platform_that_may_not_fail_still_fails_the_run() {
    let status = json!({"observedGeneration": 1, "phase": "Building", "source": {"commit": SHA}});
    let optional_arm64 =
        json!({"platformSettings": [{"platform": "linux/arm64", "allowFailure": true}]});
    let build = imagebuild_with(optional_arm64, "registry.example.com/team/app:v1", status);
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    let failed = json!({"failed": 2, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]});
    let jobs = vec![
        job(&build, "linux/amd64", SHA, failed),
        job(&build, "linux/arm64", SHA, json!({"active": 1})),
    ];
    let pods = vec![builder_pod(
        "app-1-linux-amd64",
        1,
        1,
        "make: *** [all] Error 2",
    )];
    let verify = async move {
        server.store_jobs(jobs).await;
        server.store_pods(pods).await;
        server.delete_job("app-1-linux-arm64").await;
        server.event("PlatformFailed", "Warning").await;
        let status = server.patch_status().await;
        assert_eq!(status["phase"], "Failed");
        let (_, reason, message) = said(&status, "Ready");
        assert_eq!(reason, "PlatformFailed");
        assert!(message.starts_with("linux/amd64 failed"), "{message}");
        server.done().await;
    };
    waits_for_change(reconciled(&build, ctx, verify).await);
}

/// The ImageBuild as the API server stores it after a status write: `status`, and a newer
/// resourceVersion.
fn with_status(build: &ImageBuild, status: &Value, resource_version: &str) -> ImageBuild {
    let mut object = serde_json::to_value(build).unwrap();
    object["status"] = status.clone();
    object["metadata"]["resourceVersion"] = json!(resource_version);
    serde_json::from_value(object).unwrap()
}

fn building_jobs(build: &ImageBuild, amd64: Value, arm64: Value) -> Vec<Value> {
    vec![
        job(build, "linux/amd64", SHA, amd64),
        job(build, "linux/arm64", SHA, arm64),
    ]
}

const OLD: &str = "2026-11-23T09:00:00Z";

fn building_status() -> Value {
    let condition = |kind: &str, status: &str, reason: &str| {
        json!({"type": kind, "status": status, "reason": reason, "message": "",
               "observedGeneration": 1, "lastTransitionTime": OLD})
    };
    json!({"observedGeneration": 1, "phase": "Building", "source": {"commit": SHA},
           "startTime": OLD,
           "conditions": [condition("Ready", "False", "NotReady"),
                          condition("Reconciling", "True", "Building"),
                          condition("Stalled", "False", "Progressing")]})
}

/// An ImageBuild building since [`OLD`], as stored at resourceVersion 10.
fn building_since_old() -> ImageBuild {
    let mut build = imagebuild(
        "https://git.example.com/app.git",
        SHA,
        "registry.example.com/team/app:v1",
        1,
        building_status(),
    );
    build.metadata.resource_version = Some("10".into());
    build
}

/// A status that changes keeps each condition's lastTransitionTime while the condition's
/// status stays; written back, the same status is not written again (no request at all),
/// by a fresh process as by the one that wrote it.
#[tokio::test]
async fn a_status_that_changes_nothing_is_not_written() {
    let build = building_since_old();
    let running = json!({"active": 1, "startTime": "2026-11-23T10:00:00Z"});
    let jobs = building_jobs(&build, running.clone(), running.clone());
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    let verify = async move {
        server.store_jobs(jobs.clone()).await;
        server.store_pods(vec![]).await;
        let status = server.patch_status().await;
        assert_eq!(status["platforms"][0]["phase"], "Building");
        for c in status["conditions"].as_array().unwrap() {
            assert_eq!(c["lastTransitionTime"], OLD, "{c}");
        }
        server.done().await;
        status
    };
    let (action, status) = tokio::join!(reconcile(Arc::new(build.clone()), ctx), verify);
    action.unwrap();

    // The write came back through the watch: nothing to do.
    let written = with_status(&build, &status, "11");
    let (ctx, mut server) = setup(&written, RegistryOptions::default());
    let jobs = building_jobs(&written, running.clone(), running);
    let verify = async move {
        server.store_jobs(jobs).await;
        server.store_pods(vec![]).await;
        server.done().await;
    };
    reconciled(&written, ctx, verify).await.unwrap();
}

/// A second reconcile that starts (on a Job or pod event) before the watch has shown the
/// status the first one wrote reads that status, not the stale object's: no second status
/// write and no second Event.
#[tokio::test]
async fn a_reconcile_before_the_watch_shows_the_write_repeats_nothing() {
    let build = building_since_old();
    let digest = format!("sha256:{}", "1".repeat(64));
    let jobs = building_jobs(&build, complete(), json!({"active": 1}));
    let pods = vec![builder_pod("app-1-linux-amd64", 1, 0, &digest)];
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    let first = async {
        server.store_jobs(jobs).await;
        server.store_pods(pods).await;
        server.event("PlatformSucceeded", "Normal").await;
        let status = server.patch_status().await;
        assert_eq!(status["platforms"][0]["digest"], digest.as_str());
    };
    let (action, ()) = tokio::join!(reconcile(Arc::new(build.clone()), ctx.clone()), first);
    action.unwrap();
    // The same (stale) object again, as the controller's store still holds it.
    let (action, ()) = tokio::join!(reconcile(Arc::new(build.clone()), ctx), server.done());
    action.unwrap();
}

/// One two-platform ImageBuild's whole life, reconcile by reconcile, with the stores changing
/// between reconciles the way the watches would change them; every request is asserted by
/// method and path (and nothing else is allowed), then the request counter on the client is
/// checked against the same list.
///
/// How the count is made: the requests that belong to this ImageBuild are the ones its
/// reconciles make, here 11 = 2 Job creates + 4 Events (RunStarted, PlatformSucceeded twice,
/// IndexPushed) + 5 status writes (run started, each platform's Job running, each platform
/// done). Reads cost nothing: Jobs, builder pods and nodes come from the reflectors' stores,
/// and reconciles that find nothing new (a stale store right after a write, the ImageBuild's
/// own status update coming back, the Jobs' TTL deletion, a resync) make no request at
/// all. The reflectors' own requests are shared by every ImageBuild: at start, one paged
/// list (50 objects a page) and one watch each for ImageBuilds, Jobs, pods, nodes and the
/// two kinds of Events that explain stuck pods (`FailedCreate`, `FailedMount`: none in a
/// healthy run), then one re-watch per reflector whenever the server ends a watch (kube asks
/// for 290 s). For N ImageBuilds (2N Jobs and pods) over a run of T seconds that is
/// N/50 + 2 x 2N/50 + 3 lists + 6 x (1 + T/290) watches + 1 version probe: for N = 100 and
/// 10 minutes 13 + 18 + 1 = 32, 0.32 per ImageBuild; for N = 1000, 103 + 18 + 1 = 122, 0.12
/// each. So 11 + at most 0.35: under 12 per ImageBuild.
#[tokio::test(flavor = "multi_thread")]
async fn one_imagebuild_s_whole_life_costs_eleven_requests() {
    let git = GitServer::start();
    let (url, sha) = git.commit("app", &[("Dockerfile", "FROM scratch\n")], "first");
    let reg = TestRegistry::start(Mode::Plain);
    let registry = Registry::new(reg.options());
    let image = reg.image("team/app:v1");
    let digests = pushed_digests(&registry, |p| format!("{image}-{}", p.slug()), "life").await;
    let mut created = imagebuild(&url, "main", &image, 1, Value::Null);
    created.metadata.resource_version = Some("1".into());
    created.metadata.creation_timestamp = Some(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
    );
    let (ctx, mut server) = setup(&created, reg.options());
    server.store_nodes(&["amd64", "arm64"]).await;
    server.store_jobs(vec![]).await;
    server.store_pods(vec![]).await;
    let once = |build: &ImageBuild| Arc::new(build.clone());

    // Created: pin the commit (git, not the API server), create both Jobs, say so.
    let step = async {
        let (_, status) = server.start_run().await;
        server.quiet().await;
        status
    };
    let (action, started) = tokio::join!(reconcile(once(&created), ctx.clone()), step);
    action.unwrap();
    assert_eq!(started["phase"], "Building");

    // A Job event starts a reconcile before either watch has caught up: the store has
    // neither the Jobs nor the new status. Nothing is created or written again.
    let (action, ()) = tokio::join!(reconcile(once(&created), ctx.clone()), server.quiet());
    action.unwrap();

    // The watches catch up: the ImageBuild's status update and the Jobs, not yet running.
    let mut build = with_status(&created, &started, "2");
    let jobs = |amd64: Value, arm64: Value| {
        vec![
            job(&build_for_jobs(&url, &image), "linux/amd64", &sha, amd64),
            job(&build_for_jobs(&url, &image), "linux/arm64", &sha, arm64),
        ]
    };
    server.store_jobs(jobs(Value::Null, Value::Null)).await;
    let (action, ()) = tokio::join!(reconcile(once(&build), ctx.clone()), server.quiet());
    action.unwrap();

    // Each Job starts a pod: one status write each (the platform is Building, with its
    // start time).
    let running = json!({"active": 1, "startTime": "2026-11-23T10:00:00Z"});
    let mut rv = 2;
    // The status a reconcile wrote, as the watch brings it back.
    let mut written = |build: &ImageBuild, status: &Value| {
        rv += 1;
        with_status(build, status, &rv.to_string())
    };
    for (amd64, arm64) in [
        (running.clone(), Value::Null),
        (running.clone(), running.clone()),
    ] {
        server.store_jobs(jobs(amd64, arm64)).await;
        let step = server.writes_status(&[]);
        let (action, status) = tokio::join!(reconcile(once(&build), ctx.clone()), step);
        action.unwrap();
        build = written(&build, &status);
    }
    // The pods' own updates (scheduled, running, ready) change nothing in status.
    let (action, ()) = tokio::join!(reconcile(once(&build), ctx.clone()), server.quiet());
    action.unwrap();

    // amd64 finishes: its digest, one Event, one write.
    let done = |minute: u32| {
        json!({"succeeded": 1, "startTime": "2026-11-23T10:00:00Z",
               "completionTime": format!("2026-11-23T10:0{minute}:00Z"),
               "conditions": [{"type": "Complete", "status": "True"}]})
    };
    server.store_jobs(jobs(done(4), running.clone())).await;
    server
        .store_pods(vec![builder_pod("app-1-linux-amd64", 1, 0, &digests[0])])
        .await;
    let step = server.writes_status(&["PlatformSucceeded"]);
    let (action, status) = tokio::join!(reconcile(once(&build), ctx.clone()), step);
    action.unwrap();
    build = written(&build, &status);

    // arm64 finishes: its Event, the index is assembled (the registry's requests are the
    // registry's), its Event, one write.
    server.store_jobs(jobs(done(4), done(5))).await;
    server
        .store_pods(vec![
            builder_pod("app-1-linux-amd64", 1, 0, &digests[0]),
            builder_pod("app-1-linux-arm64", 1, 0, &digests[1]),
        ])
        .await;
    let step = server.writes_status(&["PlatformSucceeded", "IndexPushed"]);
    let (action, status) = tokio::join!(reconcile(once(&build), ctx.clone()), step);
    waits_for_change(action);
    assert_eq!(status["phase"], "Succeeded");
    build = written(&build, &status);

    // Succeeded, then the Jobs' TTL deletes them: nothing more.
    let (action, ()) = tokio::join!(reconcile(once(&build), ctx.clone()), server.quiet());
    waits_for_change(action);
    server.store_jobs(vec![]).await;
    server.store_pods(vec![]).await;
    let (action, ()) = tokio::join!(reconcile(once(&build), ctx.clone()), server.done());
    waits_for_change(action);

    let label = |verb: &str, resource: &str, path: &str| RequestLabels {
        verb: verb.into(),
        resource: resource.into(),
        path: path.into(),
    };
    pretty_assertions::assert_eq!(
        ctx.metrics.api_request_counts(),
        vec![
            (
                label(
                    "create",
                    "events",
                    "/apis/events.k8s.io/v1/namespaces/{namespace}/events"
                ),
                4
            ),
            (
                label(
                    "create",
                    "jobs",
                    "/apis/batch/v1/namespaces/{namespace}/jobs"
                ),
                2
            ),
            (
                label(
                    "patch",
                    "imagebuilds/status",
                    "/apis/archforge.dev/v1alpha1/namespaces/{namespace}/imagebuilds/{name}/status"
                ),
                5
            ),
        ]
    );
    assert_eq!(ctx.metrics.api_requests_total(), 11);
    let text = ctx.metrics.encode();
    for histogram in ["run_jobs_created_seconds", "run_index_pushed_seconds"] {
        assert!(
            text.contains(&format!("archforge_{histogram}_count 1\n")),
            "{histogram} observed once:\n{text}"
        );
    }
}

/// The ImageBuild the scenario's Jobs are rendered from (the owner UID is all that matters).
fn build_for_jobs(url: &str, image: &str) -> ImageBuild {
    imagebuild(url, "main", image, 1, Value::Null)
}

// ---------------------------------------------------------------------------------------
// Signing: the key is checked before any Job exists, and the assembly signs and attests
// every platform image and the index, with the digests in status.

const KEY_SECRET: &str = "signing-key";

/// A reconcile context whose operator-wide signing key is `key`.
fn setup_with_operator_key(
    build: &ImageBuild,
    registry: RegistryOptions,
    key: Option<SigningKey>,
) -> (Arc<Context>, ApiServer) {
    setup_signing_with(build, registry, BuilderSettings::default(), key)
}

/// A Secret as the API server returns it, with `data` base64-encoded.
fn secret(name: &str, data: &[(&str, &[u8])]) -> Value {
    use base64::Engine;
    let data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                json!(base64::engine::general_purpose::STANDARD.encode(v)),
            )
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
           "metadata": {"name": name, "namespace": "default"}, "data": data})
}

impl ApiServer {
    /// Expects the GET of Secret `name` in the ImageBuild's namespace, answered with
    /// `secret`, or a 404 when `None`.
    async fn get_secret(&mut self, name: &str, secret: Option<Value>) {
        let path = format!("/api/v1/namespaces/default/secrets/{name}");
        self.expect_answer(Method::GET, &path, &[], move |_| match secret {
            Some(secret) => (200, secret),
            None => (
                404,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": format!("secrets \"{name}\" not found"), "reason": "NotFound", "code": 404}),
            ),
        })
        .await;
    }
}

/// An ImageBuild that asks for signing (`signing` is spec.output.signing) at `image`.
fn signed_imagebuild(signing: Value, image: &str, status: Value) -> ImageBuild {
    let output = json!({"image": image, "signing": signing});
    imagebuild_with(json!({"output": output}), image, status)
}

/// `host/repo` of `host/repo:tag`.
fn repository_of(image: &str) -> &str {
    let slash = image.rfind('/').unwrap();
    match image[slash..].find(':') {
        Some(colon) => &image[..slash + colon],
        None => image,
    }
}

fn registry_tags(reg: &TestRegistry, repository: &str) -> Vec<String> {
    let out = std::process::Command::new("skopeo")
        .arg("list-tags")
        .args(reg.skopeo_tls_args())
        .arg(format!("docker://{repository}"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && stderr.contains("404") {
        // Distribution answers a repository without tags with 404.
        return vec![];
    }
    assert!(out.status.success(), "{stderr}");
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut tags: Vec<String> = listed["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect();
    tags.sort();
    tags
}

/// `sha256-<hex>.<suffix>`, cosign's attachment tag of `digest`.
fn attachment(digest: &str, suffix: &str) -> String {
    format!(
        "sha256-{}.{suffix}",
        digest.strip_prefix("sha256:").unwrap()
    )
}

/// A fresh registry holding two platform images pushed by digest only (as the builders push
/// them with platformTags false, the default), and an ImageBuild in `status` signing with
/// `keySecret`, whose run built them: the registry, the output image, the images' digests
/// and the ImageBuild.
async fn signed_run(status: Value) -> (TestRegistry, String, Vec<String>, ImageBuild) {
    let reg = TestRegistry::start(Mode::Plain);
    let registry = Registry::new(reg.options());
    let image = reg.image("team/app:v1");
    let repository = repository_of(&image).to_string();
    let digests = pushed_digests(
        &registry,
        |_| format!("{repository}@@unknown-digest@@"),
        "controller",
    )
    .await;
    let build = signed_imagebuild(json!({"keySecret": KEY_SECRET}), &image, status);
    (reg, image, digests, build)
}

// Multi-threaded: the verifier calls skopeo inside block_in_place.
#[tokio::test(flavor = "multi_thread")]
async fn a_signed_run_signs_and_attests_every_platform_and_the_index() {
    let status = json!({"observedGeneration": 1, "phase": "Building", "source": {"commit": SHA},
                        "startTime": "2026-11-23T09:59:00Z"});
    let (reg, image, digests, build) = signed_run(status).await;
    let registry = Registry::new(reg.options());
    let repository = repository_of(&image).to_string();
    assert_eq!(
        registry_tags(&reg, &repository),
        Vec::<String>::new(),
        "pushed by digest: no tag yet"
    );
    let key = SigningKey::generate();
    let (ctx, mut server) = setup(&build, reg.options());
    let (jobs, pods) = finished(&build, [&digests[0], &digests[1]]);
    let key_secret = secret(KEY_SECRET, &[("cosign.key", key.to_pkcs8_pem().as_bytes())]);
    let verify = async move {
        server.store_jobs(jobs).await;
        server.store_pods(pods).await;
        server.get_secret(KEY_SECRET, Some(key_secret)).await;
        server.event("PlatformSucceeded", "Normal").await;
        server.event("PlatformSucceeded", "Normal").await;
        let pushed = server.event("IndexPushed", "Normal").await;
        assert!(
            pushed["note"]
                .as_str()
                .unwrap()
                .contains("the index and its 2 platform images are signed"),
            "{pushed}"
        );
        let status = server.patch_status().await;
        server.done().await;
        status
    };
    let (action, status) = tokio::join!(reconcile(Arc::new(build.clone()), ctx), verify);
    waits_for_change(action);
    assert_eq!(status["phase"], "Succeeded", "{status}");
    let index = status["digest"].as_str().unwrap().to_string();

    // Every digest in status names what the registry holds under cosign's tags.
    let mut expected_tags = vec!["v1".to_string()];
    let mut subjects: Vec<(String, &Value)> = vec![(index.clone(), &status)];
    for (i, p) in status["platforms"].as_array().unwrap().iter().enumerate() {
        assert_eq!(p["digest"], digests[i].as_str());
        subjects.push((digests[i].clone(), p));
    }
    for (digest, holder) in subjects {
        for (field, suffix) in [("signature", "sig"), ("attestation", "att")] {
            let recorded = holder[field]
                .as_str()
                .unwrap_or_else(|| panic!("no {field} for {digest} in status: {status}"));
            let tag = attachment(&digest, suffix);
            let raw = tokio::task::block_in_place(|| {
                reg.skopeo_inspect(&format!("{repository}:{tag}"), &["--raw"])
            });
            assert_eq!(
                recorded,
                archforge::registry::sha256_digest(raw.as_bytes()),
                "{field} of {digest} in status is what {tag} holds"
            );
            expected_tags.push(tag);
        }
    }
    expected_tags.sort();
    assert_eq!(
        registry_tags(&reg, &repository),
        expected_tags,
        "the output tag and the attachments, no per-platform tag"
    );

    // The library's verifier follows the chain: every link signed, every provenance
    // naming the run's commit.
    let verified = archforge::supply::verify::verify_image(&registry, &image, &key.public_key())
        .await
        .unwrap();
    assert_eq!(verified.index.digest, index);
    assert_eq!(verified.index.commit, SHA);
    let platforms: Vec<(&str, &str, &str)> = verified
        .platforms
        .iter()
        .map(|p| (p.platform.as_str(), p.digest.as_str(), p.commit.as_str()))
        .collect();
    assert_eq!(
        platforms,
        [
            ("linux/amd64", digests[0].as_str(), SHA),
            ("linux/arm64", digests[1].as_str(), SHA)
        ]
    );
    // Another key does not verify it.
    assert!(
        archforge::supply::verify::verify_image(
            &registry,
            &image,
            &SigningKey::generate().public_key()
        )
        .await
        .is_err()
    );
}

/// A run whose key cannot be had: Stalled with `reason` before any Job (no POST), one
/// Warning Event; the message, the Event and the error hold none of `secrets`.
async fn refused_before_any_job(
    build: &ImageBuild,
    operator_key: Option<SigningKey>,
    key_secret: Option<Option<Value>>,
    reason: &str,
    says: &[&str],
    secrets: &[String],
) {
    let (ctx, mut server) =
        setup_with_operator_key(build, RegistryOptions::default(), operator_key);
    let says: Vec<String> = says.iter().map(|s| s.to_string()).collect();
    let reason_owned = reason.to_string();
    let verify = async move {
        server.store_nothing_started().await;
        if let Some(answer) = key_secret {
            server.get_secret(KEY_SECRET, answer).await;
        }
        let event = server.event(&reason_owned, "Warning").await;
        let status = server.patch_status().await;
        // No Job POST: `done` fails on any further request.
        server.done().await;
        (event, status, says)
    };
    let (action, (event, status, says)) =
        tokio::join!(reconcile(Arc::new(build.clone()), ctx), verify);
    waits_for_change(action);
    assert_eq!(status["phase"], "Failed");
    let (stalled, got, message) = said(&status, "Stalled");
    assert_eq!(
        (stalled.as_str(), got.as_str()),
        ("True", reason),
        "{message}"
    );
    assert_eq!(said(&status, "Ready").1, reason);
    for part in &says {
        assert!(
            message.contains(part.as_str()),
            "{message:?} should say {part:?}"
        );
    }
    let note = event["note"].as_str().unwrap().to_string();
    let everything = format!("{status}\n{note}");
    for secret in secrets {
        assert_no_piece_of(&everything, secret, "the status or Event");
    }
    assert!(
        status["platforms"].as_array().is_none_or(|p| p.is_empty()),
        "no platform started: {status}"
    );
}

/// A new key in cosign's encrypted format, and its password.
fn cosign_encrypted_key() -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let password = "the-right-password-for-this-key";
    let (key, _) = python_cosign_key(dir.path(), password);
    (std::fs::read_to_string(key).unwrap(), password.to_string())
}

#[tokio::test]
async fn a_missing_signing_secret_stalls_the_run_before_any_job() {
    let build = signed_imagebuild(
        json!({"keySecret": KEY_SECRET}),
        "registry.example.com/team/app:v1",
        Value::Null,
    );
    refused_before_any_job(
        &build,
        None,
        Some(None),
        "SigningKeyMissing",
        &["Secret default/signing-key does not exist", "cosign.key"],
        &[],
    )
    .await;
    // A Secret without cosign.key is just as missing.
    let other = secret(KEY_SECRET, &[("tls.key", b"not the signing key")]);
    refused_before_any_job(
        &build,
        None,
        Some(Some(other)),
        "SigningKeyMissing",
        &["default/signing-key has no cosign.key"],
        &[],
    )
    .await;
}

#[tokio::test]
async fn a_malformed_or_wrong_curve_signing_key_stalls_without_showing_the_key() {
    let build = signed_imagebuild(
        json!({"keySecret": KEY_SECRET}),
        "registry.example.com/team/app:v1",
        Value::Null,
    );
    let good = SigningKey::generate().to_pkcs8_pem();
    // A real P-256 key cut short.
    let body = pem_body(&good);
    let truncated = truncated(&good);
    let p384 = openssl_key(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-384",
    ]);
    let rsa = openssl_key(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:1024",
    ]);
    let password = "correct-horse-battery-staple".to_string();
    let (encrypted, right_password) = cosign_encrypted_key();
    for (what, pem, says) in [
        ("wrong password", encrypted.clone(), "wrong cosign.password"),
        ("truncated", truncated.clone(), "PKCS#8"),
        ("P-384", p384.clone(), "P-256"),
        ("RSA", rsa.clone(), "P-256"),
        ("not PEM", format!("{body}\n{password}\n"), "not PEM"),
    ] {
        eprintln!("case: {what}");
        let key_secret = secret(
            KEY_SECRET,
            &[
                ("cosign.key", pem.as_bytes()),
                ("cosign.password", password.as_bytes()),
            ],
        );
        refused_before_any_job(
            &build,
            None,
            Some(Some(key_secret)),
            "SigningKeyInvalid",
            &["default/signing-key", "cosign.key", says],
            &[pem_body(&pem), password.clone()],
        )
        .await;
    }
    // The same encrypted key with its own password starts the run.
    let key_secret = secret(
        KEY_SECRET,
        &[
            ("cosign.key", encrypted.as_bytes()),
            ("cosign.password", right_password.as_bytes()),
        ],
    );
    let (ctx, mut server) = setup(&build, RegistryOptions::default());
    let verify = async move {
        server.store_nothing_started().await;
        server.get_secret(KEY_SECRET, Some(key_secret)).await;
        assert_eq!(server.start_run().await.1["phase"], "Building");
        server.done().await;
    };
    reconciled(&build, ctx, verify).await.unwrap();
}

/// A cosign encrypted key whose scrypt parameters are `n`, `r`, `p` and whose ciphertext no
/// password opens: decrypting it costs the whole scrypt run, then fails.
fn costly_cosign_key(n: u64, r: u32, p: u32) -> String {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let doc = json!({
        "kdf": {"name": "scrypt", "params": {"N": n, "r": r, "p": p}, "salt": b64(&[7u8; 32])},
        "cipher": {"name": "nacl/secretbox", "nonce": b64(&[1u8; 24])},
        "ciphertext": b64(&[0u8; 64]),
    });
    format!(
        "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n{}\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n",
        b64(&serde_json::to_vec(&doc).unwrap())
    )
}

// A tenant's Secret picks the scrypt cost (up to the cap, a second of CPU and 64 MiB in a
// release build): decrypting it must not stall the runtime the lease, the probes and every
// other reconcile share. On a current-thread runtime a ticker only runs while the reconcile
// awaits, so its longest gap is the longest stretch the reconcile held the thread.
#[tokio::test]
async fn decrypting_a_costly_key_secret_does_not_stall_the_runtime() {
    let build = signed_imagebuild(
        json!({"keySecret": KEY_SECRET}),
        "registry.example.com/team/app:v1",
        Value::Null,
    );
    // The costliest parameters archforge accepts: scrypt is optimised even in test builds,
    // so a cheaper key would finish before the measurement means anything.
    let pem = costly_cosign_key(1 << 16, 8, 4);
    let key_secret = secret(
        KEY_SECRET,
        &[
            ("cosign.key", pem.as_bytes()),
            ("cosign.password", b"not-the-password"),
        ],
    );
    let ticking = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let ticker = tokio::spawn({
        let ticking = ticking.clone();
        async move {
            let mut longest = Duration::ZERO;
            let mut last = std::time::Instant::now();
            while ticking.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                longest = longest.max(last.elapsed());
                last = std::time::Instant::now();
            }
            longest
        }
    });
    tokio::task::yield_now().await;
    let started = std::time::Instant::now();
    refused_before_any_job(
        &build,
        None,
        Some(Some(key_secret)),
        "SigningKeyInvalid",
        &["wrong cosign.password"],
        &[],
    )
    .await;
    let took = started.elapsed();
    ticking.store(false, std::sync::atomic::Ordering::Relaxed);
    let longest = ticker.await.unwrap();
    eprintln!("reconcile took {took:?}; the runtime's longest stall {longest:?}");
    assert!(
        took > Duration::from_millis(100),
        "scrypt should take a while here ({took:?}): the test measures nothing otherwise"
    );
    assert!(
        longest < took / 4,
        "the reconcile held the runtime thread for {longest:?} of its {took:?}"
    );
}

// Multi-threaded: the check calls skopeo inside block_in_place.
#[tokio::test(flavor = "multi_thread")]
async fn a_key_secret_deleted_while_building_fails_the_run_and_publishes_nothing() {
    let status = json!({"observedGeneration": 1, "phase": "Building", "source": {"commit": SHA}});
    let (reg, image, digests, build) = signed_run(status).await;
    let repository = repository_of(&image).to_string();
    let (ctx, mut server) = setup(&build, reg.options());
    let (jobs, pods) = finished(&build, [&digests[0], &digests[1]]);
    let verify = async move {
        server.store_jobs(jobs).await;
        server.store_pods(pods).await;
        server.get_secret(KEY_SECRET, None).await;
        server.event("PlatformSucceeded", "Normal").await;
        server.event("PlatformSucceeded", "Normal").await;
        server.event("SigningKeyMissing", "Warning").await;
        let status = server.patch_status().await;
        server.done().await;
        status
    };
    let (action, status) = tokio::join!(reconcile(Arc::new(build.clone()), ctx), verify);
    waits_for_change(action);
    assert_eq!(status["phase"], "Failed");
    assert_eq!(said(&status, "Stalled").1, "SigningKeyMissing");
    assert_eq!(status["digest"], Value::Null, "{status}");
    assert_eq!(
        status["platforms"][1]["digest"],
        digests[1].as_str(),
        "the built digests stay in status"
    );
    let tags = tokio::task::block_in_place(|| registry_tags(&reg, &repository));
    assert_eq!(
        tags,
        Vec::<String>::new(),
        "no index tag and no attachment: an unsigned index is never published"
    );
}

#[tokio::test]
async fn signing_without_a_key_secret_takes_the_operator_key_or_stalls() {
    let build = signed_imagebuild(json!({}), "registry.example.com/team/app:v1", Value::Null);
    // No keySecret and no operator-wide key: no Secret is read, no Job created.
    refused_before_any_job(
        &build,
        None,
        None,
        "SigningKeyMissing",
        &["--signing-key-file", "signing.existingSecret", "keySecret"],
        &[],
    )
    .await;
    // With the operator's key (and, building in the ImageBuild's namespace, the platform
    // team's opt-in: see `trust.rs`) the run starts, reading no Secret.
    let mut config = config(
        BuilderSettings::default(),
        RegistryOptions::default(),
        Some(SigningKey::generate()),
    );
    config.allow_in_namespace_signing = true;
    let (ctx, mut server) = setup_config(&build, config);
    let verify = async move {
        server.store_nothing_started().await;
        let (_, status) = server.start_run().await;
        assert_eq!(status["phase"], "Building");
        server.done().await;
    };
    reconciled(&build, ctx, verify).await.unwrap();
}

#[tokio::test]
async fn without_platform_tags_the_builders_push_by_digest_only() {
    for (platform_tags, expected) in [
        (
            None,
            "registry.example.com/team/app@@unknown-digest@@".to_string(),
        ),
        (
            Some(false),
            "registry.example.com/team/app@@unknown-digest@@".to_string(),
        ),
        (
            Some(true),
            "registry.example.com/team/app:v1-linux-amd64".to_string(),
        ),
    ] {
        let mut object = serde_json::to_value(imagebuild(
            "https://git.example.com/app.git",
            SHA,
            "registry.example.com/team/app:v1",
            1,
            Value::Null,
        ))
        .unwrap();
        if let Some(tags) = platform_tags {
            object["spec"]["output"]["platformTags"] = json!(tags);
        }
        let build: ImageBuild = serde_json::from_value(object).unwrap();
        let (ctx, mut server) = setup(&build, RegistryOptions::default());
        let verify = async move {
            server.store_nothing_started().await;
            let (amd64, _) = server.start_run().await;
            server.done().await;
            amd64
        };
        let (action, amd64) = tokio::join!(reconcile(Arc::new(build.clone()), ctx), verify);
        action.unwrap();
        // The push container pushes to the target; the builder only hands the image off.
        let pusher = &amd64["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(pusher["name"], "push");
        let command: Vec<&str> = pusher["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let to = command.windows(2).find(|w| w[0] == "--to").map(|w| w[1]);
        assert_eq!(
            to,
            Some(expected.as_str()),
            "platformTags {platform_tags:?}: {command:?}"
        );
        let builder = &amd64["spec"]["template"]["spec"]["initContainers"][1];
        assert_eq!(builder["name"], "builder");
        let handoff = builder["command"].as_array().unwrap().last().unwrap();
        assert_eq!(handoff, "dir:/var/run/archforge/handoff/image");
    }
}
