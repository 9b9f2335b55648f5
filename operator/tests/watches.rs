//! The controller's start against kube's `tower-test` mock API server: what its reflectors
//! ask for (one list and one watch each for ImageBuilds, archforge's Jobs and builder pods by
//! label, nodes, BuildPolicies, namespaces, and the two kinds of Events that explain stuck
//! pods by field selector) and
//! that nothing else is asked while nothing changes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

mod common;

use archforge::controller::run;
use archforge::registry::RegistryOptions;
use archforge::settings::BuilderSettings;
use archforge::telemetry::Metrics;
use common::controller::{Handle, config, mock_client, percent_decode, rendered_jobs};
use http::Response;
use kube::client::Body;

fn list(kind: &str, items: &[serde_json::Value]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "100"}, "items": items
    }))
    .unwrap()
}

/// The controller of namespace team-a, started against the mock API server.
fn start(metrics: &Arc<Metrics>) -> (tokio::task::JoinHandle<()>, Handle) {
    let (client, handle) = mock_client(metrics);
    let config = config(BuilderSettings::default(), RegistryOptions::default(), None);
    let controller = tokio::spawn(run(client, vec!["team-a".into()], config, metrics.clone()));
    (controller, handle)
}

/// (watch?, path, selectors) of a request the reflectors make at start.
type Asked = BTreeSet<(bool, String, String)>;

/// Answers the first `count` requests of a starting controller: its lists (empty) and its
/// watches (left pending, as a quiet server's are, in the second value).
async fn serve_start(
    handle: &mut Handle,
    count: usize,
) -> (Asked, Vec<tower_test::mock::SendResponse<Response<Body>>>) {
    let mut seen = BTreeSet::new();
    let mut open_watches = Vec::new();
    for _ in 0..count {
        let (request, send) =
            tokio::time::timeout(common::controller::HANG_GUARD, handle.next_request())
                .await
                .expect("the reflectors' lists and watches")
                .expect("a request");
        let path = request.uri().path().to_string();
        let query = percent_decode(request.uri().query().unwrap_or_default());
        let watch = query.contains("watch=true");
        let selector = |name: &str| {
            query
                .split('&')
                .find_map(|p| p.strip_prefix(name))
                .unwrap_or_default()
                .to_string()
        };
        let selectors = format!(
            "{}{}",
            selector("labelSelector="),
            selector("fieldSelector=")
        );
        seen.insert((watch, path.clone(), selectors));
        match watch {
            true => open_watches.push(send),
            false if path == GROUP_VERSION => {
                send.send_response(Response::new(Body::from(discovery(true))));
            }
            false => {
                let kind = match path.rsplit('/').next().unwrap() {
                    "nodes" => "NodeList",
                    "jobs" => "JobList",
                    "pods" => "PodList",
                    "events" => "EventList",
                    "buildpolicies" => "BuildPolicyList",
                    "namespaces" => "NamespaceList",
                    _ => "ImageBuildList",
                };
                send.send_response(Response::new(Body::from(list(kind, &[]))));
            }
        }
    }
    (seen, open_watches)
}

/// The API group's discovery document, which checks whether BuildPolicies are served.
const GROUP_VERSION: &str = "/apis/archforge.dev/v1alpha1";

/// The discovery answer of a server with the ImageBuild CRD, and the BuildPolicy CRD when
/// `policies`.
fn discovery(policies: bool) -> Vec<u8> {
    let mut resources = vec![
        serde_json::json!({"name": "imagebuilds", "singularName": "imagebuild",
        "namespaced": true, "kind": "ImageBuild", "verbs": ["get", "list", "watch"]}),
    ];
    if policies {
        resources.push(
            serde_json::json!({"name": "buildpolicies", "singularName": "buildpolicy",
            "namespaced": false, "kind": "BuildPolicy", "verbs": ["get", "list", "watch"]}),
        );
    }
    serde_json::to_vec(
        &serde_json::json!({"kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": "archforge.dev/v1alpha1", "resources": resources}),
    )
    .unwrap()
}

/// What a controller asks at start: nodes, the ImageBuilds of `watched`, and the run
/// objects (Jobs, pods, two kinds of Events) of `builds`, each a list and a watch.
fn expected_at_start(watched: &[&str], builds: &str) -> Asked {
    let managed = "app.kubernetes.io/managed-by=archforge".to_string();
    let mut objects = vec![
        ("/api/v1/nodes".to_string(), String::new()),
        // What BuildPolicies select namespaces by: every policy and namespace, once.
        (
            "/apis/archforge.dev/v1alpha1/buildpolicies".to_string(),
            String::new(),
        ),
        ("/api/v1/namespaces".to_string(), String::new()),
    ];
    for ns in watched {
        let path = format!("/apis/archforge.dev/v1alpha1/namespaces/{ns}/imagebuilds");
        objects.push((path, String::new()));
    }
    objects.extend([
        (
            format!("/apis/batch/v1/namespaces/{builds}/jobs"),
            managed.clone(),
        ),
        (format!("/api/v1/namespaces/{builds}/pods"), managed),
        (
            format!("/api/v1/namespaces/{builds}/events"),
            "involvedObject.kind=Job,reason=FailedCreate".to_string(),
        ),
        (
            format!("/api/v1/namespaces/{builds}/events"),
            "involvedObject.kind=Pod,reason=FailedMount".to_string(),
        ),
    ]);
    let mut asked: Asked = [false, true]
        .into_iter()
        .flat_map(|watch| {
            objects
                .iter()
                .map(move |(p, s)| (watch, p.clone(), s.clone()))
        })
        .collect();
    // Once, before the watches: whether BuildPolicies are served at all.
    asked.insert((false, GROUP_VERSION.to_string(), String::new()));
    asked
}

/// Fails on any request within half a second: nothing is asked while nothing changes.
async fn quiet(handle: &mut Handle) {
    if let Ok(Some((request, _))) =
        tokio::time::timeout(Duration::from_millis(500), handle.next_request()).await
    {
        panic!("unexpected request {} {}", request.method(), request.uri());
    }
}

#[tokio::test]
async fn at_start_each_reflector_lists_once_and_watches_once() {
    let metrics = Arc::new(Metrics::default());
    let (controller, mut handle) = start(&metrics);
    let (seen, open_watches) = serve_start(&mut handle, 17).await;
    pretty_assertions::assert_eq!(seen, expected_at_start(&["team-a"], "team-a"));
    quiet(&mut handle).await;
    assert_eq!(metrics.api_requests_total(), 17);
    assert!(metrics.is_ready());
    controller.abort();
    drop(open_watches);
}

#[tokio::test]
async fn with_a_build_namespace_its_run_objects_are_watched_once_for_all_watched_namespaces() {
    let metrics = Arc::new(Metrics::default());
    let (client, mut handle) = mock_client(&metrics);
    let mut config = config(BuilderSettings::default(), RegistryOptions::default(), None);
    config.build_namespace = Some("builds".into());
    let namespaces = vec!["team-a".into(), "team-b".into()];
    let controller = tokio::spawn(run(client, namespaces, config, metrics.clone()));
    // Nodes, two namespaces' ImageBuilds, and the build namespace's four kinds: once each.
    let (seen, open_watches) = serve_start(&mut handle, 19).await;
    pretty_assertions::assert_eq!(seen, expected_at_start(&["team-a", "team-b"], "builds"));
    quiet(&mut handle).await;
    assert_eq!(metrics.api_requests_total(), 19);
    assert!(metrics.is_ready());
    controller.abort();
    drop(open_watches);
}

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

fn building(name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "archforge.dev/v1alpha1", "kind": "ImageBuild",
        "metadata": {"name": name, "namespace": "team-a", "uid": format!("uid-{name}"),
                     "generation": 1, "resourceVersion": "5"},
        "spec": {"source": {"git": {"url": "https://git.example.com/app.git", "ref": SHA}},
                 "platforms": ["linux/amd64", "linux/arm64"],
                 "output": {"image": "registry.example.com/team/app:v1"}},
        "status": {"observedGeneration": 1, "phase": "Building", "source": {"commit": SHA},
                   "startTime": "2026-11-23T10:00:00Z"}
    })
}

fn running_jobs(build: &serde_json::Value) -> Vec<serde_json::Value> {
    let build: archforge::api::ImageBuild = serde_json::from_value(build.clone()).unwrap();
    rendered_jobs(&build, SHA)
        .into_iter()
        .map(|(p, mut job)| {
            job["metadata"]["uid"] = serde_json::json!(format!("uid-{}", p.job_name));
            job["status"] = serde_json::json!({"active": 1, "startTime": "2026-11-23T10:00:00Z"});
            job
        })
        .collect()
}

/// More ImageBuilds than one at start, with the Job store listed last: every one is
/// reconciled (its status written). kube's store readiness wakes only the last of several
/// waiters, so reconciles that waited on it themselves would hang but one.
#[tokio::test]
async fn every_imagebuild_is_reconciled_when_the_job_list_comes_last() {
    let metrics = Arc::new(Metrics::default());
    let (controller, mut handle) = start(&metrics);
    let builds: Vec<serde_json::Value> = ["a", "b", "c"].iter().map(|n| building(n)).collect();
    let jobs: Vec<serde_json::Value> = builds.iter().flat_map(running_jobs).collect();
    let mut open = Vec::new();
    let mut job_list = None;
    let mut patched = BTreeSet::new();
    while patched.len() < 3 {
        let (request, send) =
            tokio::time::timeout(common::controller::HANG_GUARD, handle.next_request())
                .await
                .unwrap_or_else(|_| panic!("only {patched:?} were reconciled"))
                .expect("a request");
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or_default().to_string();
        let watch = query.contains("watch=true");
        match (request.method().as_str(), path.rsplit('/').next().unwrap()) {
            _ if watch => open.push(send),
            _ if path == GROUP_VERSION => {
                send.send_response(Response::new(Body::from(discovery(true))))
            }
            ("GET", "jobs") => job_list = Some(send),
            ("GET", "imagebuilds") => {
                send.send_response(Response::new(Body::from(list("ImageBuildList", &builds))));
            }
            ("GET", "pods") => send.send_response(Response::new(Body::from(list("PodList", &[])))),
            ("GET", "events") => {
                send.send_response(Response::new(Body::from(list("EventList", &[]))))
            }
            ("GET", "nodes") => {
                send.send_response(Response::new(Body::from(list("NodeList", &[]))))
            }
            ("GET", "buildpolicies") => {
                send.send_response(Response::new(Body::from(list("BuildPolicyList", &[]))))
            }
            ("GET", "namespaces") => {
                send.send_response(Response::new(Body::from(list("NamespaceList", &[]))))
            }
            ("PATCH", "status") => {
                let name = path.rsplit('/').nth(1).unwrap().to_string();
                let mut stored = building(&name);
                let body = request.into_body().collect_bytes().await.unwrap();
                stored["status"] =
                    serde_json::from_slice::<serde_json::Value>(&body).unwrap()["status"].clone();
                send.send_response(Response::new(Body::from(
                    serde_json::to_vec(&stored).unwrap(),
                )));
                patched.insert(name);
            }
            other => panic!("unexpected {other:?} {path}"),
        }
        // The Job list is answered once everything else has been asked for.
        if open.len() == 7 && job_list.is_some() {
            // Longer than the controller's debounce, so the reconciles have started.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            job_list
                .take()
                .unwrap()
                .send_response(Response::new(Body::from(list("JobList", &jobs))));
        }
    }
    assert_eq!(patched, ["a", "b", "c"].map(String::from).into());
    controller.abort();
    drop(open);
}

/// A cluster upgraded with Helm has no BuildPolicy CRD (Helm installs CRDs on install
/// only): the operator neither lists nor watches BuildPolicies, runs without policies
/// (none can exist) and becomes ready, instead of waiting for a list that cannot succeed.
#[tokio::test]
async fn without_the_buildpolicy_crd_the_operator_runs_without_policies() {
    let metrics = Arc::new(Metrics::default());
    let (controller, mut handle) = start(&metrics);
    let mut seen = BTreeSet::new();
    let mut open = Vec::new();
    for _ in 0..15 {
        let (request, send) =
            tokio::time::timeout(common::controller::HANG_GUARD, handle.next_request())
                .await
                .expect("the reflectors' lists and watches")
                .expect("a request");
        let path = request.uri().path().to_string();
        let watch = request
            .uri()
            .query()
            .unwrap_or_default()
            .contains("watch=true");
        seen.insert(path.clone());
        match (watch, path.rsplit('/').next().unwrap()) {
            (true, _) => open.push(send),
            _ if path == GROUP_VERSION => {
                send.send_response(Response::new(Body::from(discovery(false))))
            }
            (false, "buildpolicies") => panic!("BuildPolicies listed though not served"),
            (false, resource) => {
                let kind = match resource {
                    "nodes" => "NodeList",
                    "jobs" => "JobList",
                    "pods" => "PodList",
                    "events" => "EventList",
                    "namespaces" => "NamespaceList",
                    _ => "ImageBuildList",
                };
                send.send_response(Response::new(Body::from(list(kind, &[]))));
            }
        }
    }
    quiet(&mut handle).await;
    assert!(
        !seen.iter().any(|p| p.ends_with("buildpolicies")),
        "{seen:?}"
    );
    assert!(metrics.is_ready());
    controller.abort();
    drop(open);
}
