//! The controller's start against kube's `tower-test` mock API server: what its reflectors
//! ask for (one list and one watch each for ImageBuilds, archforge's Jobs and builder pods by
//! label, and nodes) and that nothing else is asked while nothing changes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use archforge::controller::{Config, run};
use archforge::registry::RegistryOptions;
use archforge::settings::{BuilderSettings, KubeVersion};
use archforge::telemetry::{CountRequests, Metrics};
use http::{Request, Response};
use kube::client::Body;

fn percent_decode(text: &str) -> String {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) =
                u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap(), 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn empty_list(kind: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "100"}, "items": []
    }))
    .unwrap()
}

#[tokio::test]
async fn at_start_each_reflector_lists_once_and_watches_once() {
    let metrics = Arc::new(Metrics::default());
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(CountRequests::new(metrics.clone()).service(mock), "default");
    let config = Config {
        builder: BuilderSettings::default(),
        version: KubeVersion::OLDEST,
        history_limit: 10,
        registry: RegistryOptions::default(),
        resync: Duration::from_secs(300),
        concurrency: 4,
    };
    let controller = tokio::spawn(run(client, vec!["team-a".into()], config, metrics.clone()));
    let mut seen = BTreeSet::new();
    // Watches are left pending, as a quiet server's would be.
    let mut open_watches = Vec::new();
    for _ in 0..8 {
        let (request, send) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
            .await
            .expect("the reflectors' lists and watches")
            .expect("a request");
        let path = request.uri().path().to_string();
        let query = percent_decode(request.uri().query().unwrap_or_default());
        let watch = query.contains("watch=true");
        let selector = query
            .split('&')
            .find_map(|p| p.strip_prefix("labelSelector="))
            .unwrap_or_default()
            .to_string();
        seen.insert((watch, path.clone(), selector));
        match watch {
            true => open_watches.push(send),
            false => {
                let kind = match path.rsplit('/').next().unwrap() {
                    "nodes" => "NodeList",
                    "jobs" => "JobList",
                    "pods" => "PodList",
                    _ => "ImageBuildList",
                };
                send.send_response(Response::new(Body::from(empty_list(kind))));
            }
        }
    }
    let managed = "app.kubernetes.io/managed-by=archforge".to_string();
    let expected: BTreeSet<(bool, String, String)> = [false, true]
        .into_iter()
        .flat_map(|watch| {
            [
                (watch, "/api/v1/nodes".to_string(), String::new()),
                (
                    watch,
                    "/apis/archforge.dev/v1alpha1/namespaces/team-a/imagebuilds".to_string(),
                    String::new(),
                ),
                (
                    watch,
                    "/apis/batch/v1/namespaces/team-a/jobs".to_string(),
                    managed.clone(),
                ),
                (
                    watch,
                    "/api/v1/namespaces/team-a/pods".to_string(),
                    managed.clone(),
                ),
            ]
        })
        .collect();
    pretty_assertions::assert_eq!(seen, expected);
    // Nothing else while nothing changes.
    if let Ok(Some((request, _))) =
        tokio::time::timeout(Duration::from_millis(500), handle.next_request()).await
    {
        panic!("unexpected request {} {}", request.method(), request.uri());
    }
    assert_eq!(metrics.api_requests_total(), 8);
    assert!(metrics.is_ready());
    controller.abort();
    drop(open_watches);
}
