//! Metrics (Prometheus, via prometheus-client), health endpoints and logging.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlatformLabels {
    pub platform: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    pub namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

/// One kind of Kubernetes API request: the RBAC verb (`watch` and `list` apart), the
/// resource (with subresource, as `imagebuilds/status`) and the path with the namespace and
/// name replaced by `{namespace}` and `{name}`, so the label set stays bounded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub resource: String,
    pub path: String,
}

impl RequestLabels {
    /// The labels of a request to `path` with `query` (the query only tells a watch from a
    /// list). A path that names no resource (`/version`) keeps its method as the verb and
    /// its path, with an empty resource.
    pub fn of(method: &http::Method, path: &str, query: &str) -> RequestLabels {
        match crate::rbac::required_permission(method.as_str(), path, query) {
            Some((_, resource, verb)) => RequestLabels {
                verb,
                resource,
                path: path_template(path),
            },
            None => RequestLabels {
                verb: method.as_str().to_ascii_lowercase(),
                resource: String::new(),
                path: path.to_string(),
            },
        }
    }
}

/// `/apis/batch/v1/namespaces/ns/jobs/app-1` → `/apis/batch/v1/namespaces/{namespace}/jobs/{name}`.
fn path_template(path: &str) -> String {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // The resource segments start after `api/v1` or `apis/group/version`.
    let start = match segments.first() {
        Some(&"api") => 2,
        _ => 3,
    };
    let mut out: Vec<&str> = segments[..start.min(segments.len())].to_vec();
    let mut rest = &segments[start.min(segments.len())..];
    if let ["namespaces", _, tail @ ..] = rest
        && !tail.is_empty()
    {
        out.extend(["namespaces", "{namespace}"]);
        rest = tail;
    }
    match rest {
        [resource, _name, sub @ ..] => {
            out.extend([*resource, "{name}"]);
            out.extend(sub.iter().copied());
        }
        other => out.extend(other.iter().copied()),
    }
    format!("/{}", out.join("/"))
}

/// Everything archforge measures about itself.
pub struct Metrics {
    pub registry: Registry,
    pub runs_started: Counter,
    pub runs_finished: Family<ResultLabels, Counter>,
    pub build_duration: Family<PlatformLabels, Histogram>,
    pub assembly_duration: Histogram,
    /// Per run: from its start (the ImageBuild's creation, for its first run) to all its
    /// Jobs existing.
    pub jobs_created_latency: Histogram,
    /// Per run: from its last Job finishing to the index pushed.
    pub index_pushed_latency: Histogram,
    pub reconciles: Counter,
    pub reconcile_errors: Family<ReasonLabels, Counter>,
    /// Runs waiting in the queue, per ImageBuild namespace (as of the last queue decision).
    pub queue_length: Family<NamespaceLabels, Gauge>,
    /// Per run that went through the queue: from its start to its admission.
    pub queue_wait: Family<NamespaceLabels, Histogram>,
    /// Kubernetes API requests, counted by [`CountRequests`] on the client.
    pub api_requests: Family<RequestLabels, Counter>,
    /// The label sets `api_requests` has seen (a Family cannot be iterated).
    api_request_kinds: Mutex<BTreeSet<RequestLabels>>,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("archforge");
        let runs_started = Counter::default();
        let runs_finished = Family::<ResultLabels, Counter>::default();
        let build_duration = Family::<PlatformLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(15.0, 2.0, 10))
        });
        let assembly_duration = Histogram::new(exponential_buckets(0.05, 2.0, 10));
        // 0.25 s to about 34 min: a quiet cluster takes a second, a swamped one minutes.
        let jobs_created_latency = Histogram::new(exponential_buckets(0.25, 2.0, 14));
        let index_pushed_latency = Histogram::new(exponential_buckets(0.25, 2.0, 14));
        let reconciles = Counter::default();
        let reconcile_errors = Family::<ReasonLabels, Counter>::default();
        let api_requests = Family::<RequestLabels, Counter>::default();
        let queue_length = Family::<NamespaceLabels, Gauge>::default();
        // 1 s to about 9 h: a run starts at once on an idle cluster, after hours in a backlog.
        let queue_wait = Family::<NamespaceLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(1.0, 2.0, 16))
        });
        registry.register(
            "queue_length",
            "Runs waiting for their turn under the concurrency limits, by ImageBuild namespace",
            queue_length.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Per run, time from its start until the concurrency limits let it start its Jobs, by ImageBuild namespace",
            queue_wait.clone(),
        );
        registry.register("runs_started", "Build runs started", runs_started.clone());
        registry.register(
            "runs_finished",
            "Build runs finished, by result",
            runs_finished.clone(),
        );
        registry.register(
            "platform_build_duration_seconds",
            "Time from a builder Job's start to its completion",
            build_duration.clone(),
        );
        registry.register(
            "assembly_duration_seconds",
            "Time to check the platform images and push the index",
            assembly_duration.clone(),
        );
        registry.register(
            "run_jobs_created_seconds",
            "Per run, time from its start (the ImageBuild's creation, for its first run) until all its Jobs exist",
            jobs_created_latency.clone(),
        );
        registry.register(
            "run_index_pushed_seconds",
            "Per run, time from its last Job's completion until its index is pushed",
            index_pushed_latency.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciliations of ImageBuilds",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciliations, by reason",
            reconcile_errors.clone(),
        );
        registry.register(
            "kubernetes_requests",
            "Requests archforge made to the Kubernetes API (watches and lists included), by verb, resource and path",
            api_requests.clone(),
        );
        Metrics {
            registry,
            runs_started,
            runs_finished,
            build_duration,
            assembly_duration,
            jobs_created_latency,
            index_pushed_latency,
            reconciles,
            reconcile_errors,
            queue_length,
            queue_wait,
            api_requests,
            api_request_kinds: Mutex::default(),
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    /// Every Kubernetes API request counted so far, by kind, in label order.
    pub fn api_request_counts(&self) -> Vec<(RequestLabels, u64)> {
        let mut counts: Vec<(RequestLabels, u64)> = self
            .api_request_kinds
            .lock()
            .expect("request kinds lock")
            .iter()
            .map(|labels| {
                (
                    labels.clone(),
                    self.api_requests.get_or_create(labels).get(),
                )
            })
            .collect();
        counts.sort();
        counts
    }

    /// How many Kubernetes API requests were made, of every kind.
    pub fn api_requests_total(&self) -> u64 {
        self.api_request_counts().iter().map(|(_, n)| n).sum()
    }

    fn count_request(&self, labels: RequestLabels) {
        self.api_requests.get_or_create(&labels).inc();
        self.api_request_kinds
            .lock()
            .expect("request kinds lock")
            .insert(labels);
    }

    /// Sets the queue length of every namespace to `lengths` (namespaces left out: 0).
    pub fn set_queue_lengths(&self, lengths: &std::collections::BTreeMap<String, usize>) {
        self.queue_length.clear();
        for (namespace, n) in lengths {
            let labels = NamespaceLabels {
                namespace: namespace.clone(),
            };
            self.queue_length
                .get_or_create(&labels)
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("metrics encode");
        text
    }
}

/// A `tower` layer for the Kubernetes client that counts every request it sends (watches,
/// lists, the reflectors' re-lists and the version probe included) into
/// [`Metrics::api_requests`]: one place, so no request goes uncounted.
#[derive(Clone)]
pub struct CountRequests {
    metrics: Arc<Metrics>,
}

impl CountRequests {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        CountRequests { metrics }
    }

    /// `inner` with its requests counted (what [`tower::Layer::layer`] does, without the
    /// trait in scope).
    pub fn service<S>(&self, inner: S) -> CountedService<S> {
        tower::Layer::layer(self, inner)
    }
}

impl<S> tower::Layer<S> for CountRequests {
    type Service = CountedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountedService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service [`CountRequests`] wraps around the client's.
#[derive(Clone)]
pub struct CountedService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B> tower::Service<http::Request<B>> for CountedService<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let uri = request.uri();
        self.metrics.count_request(RequestLabels::of(
            request.method(),
            uri.path(),
            uri.query().unwrap_or_default(),
        ));
        self.inner.call(request)
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` until the process ends.
pub async fn serve(address: std::net::SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let ready = metrics.clone();
    let exported = metrics.clone();
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready.is_ready() {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "starting")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let metrics = exported.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(address).await?;
    axum::serve(listener, app).await
}

/// Logging to stderr, as text or JSON, filtered by RUST_LOG (default: info).
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use http::{Method, Request, Response};
    use k8s_openapi::api::batch::v1::Job;
    use kube::api::{Api, ListParams, Patch, PatchParams, WatchParams};
    use kube::client::Body;

    fn labels(verb: &str, resource: &str, path: &str) -> RequestLabels {
        RequestLabels {
            verb: verb.into(),
            resource: resource.into(),
            path: path.into(),
        }
    }

    #[test]
    fn paths_become_templates() {
        let of = |m: Method, p: &str, q: &str| RequestLabels::of(&m, p, q);
        assert_eq!(
            of(
                Method::GET,
                "/apis/batch/v1/namespaces/team-a/jobs",
                "labelSelector=x"
            ),
            labels("list", "jobs", "/apis/batch/v1/namespaces/{namespace}/jobs")
        );
        assert_eq!(
            of(
                Method::GET,
                "/apis/batch/v1/jobs",
                "watch=true&resourceVersion=5"
            ),
            labels("watch", "jobs", "/apis/batch/v1/jobs")
        );
        assert_eq!(
            of(
                Method::PATCH,
                "/apis/archforge.dev/v1alpha1/namespaces/ns/imagebuilds/app/status",
                "fieldManager=archforge"
            ),
            labels(
                "patch",
                "imagebuilds/status",
                "/apis/archforge.dev/v1alpha1/namespaces/{namespace}/imagebuilds/{name}/status"
            )
        );
        assert_eq!(
            of(Method::GET, "/api/v1/nodes/node-1", ""),
            labels("get", "nodes", "/api/v1/nodes/{name}")
        );
        assert_eq!(
            of(Method::GET, "/api/v1/namespaces/ns", ""),
            labels("get", "namespaces", "/api/v1/namespaces/{name}")
        );
        assert_eq!(
            of(Method::GET, "/version", ""),
            labels("get", "", "/version")
        );
    }

    /// Every request through a client with the layer is counted once, by kind, including a
    /// watch (told from a list by its query) and one the server refuses.
    #[tokio::test]
    async fn the_layer_counts_every_request_by_kind() {
        let metrics = Arc::new(Metrics::default());
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(CountRequests::new(metrics.clone()).service(mock), "ns");
        let server = async move {
            for code in [200, 200, 200, 404] {
                let (request, send) = handle.next_request().await.expect("a request");
                let body = match request.uri().query().unwrap_or_default().contains("watch=true") {
                    true => String::new(),
                    false if code == 404 => {
                        r#"{"kind":"Status","apiVersion":"v1","status":"Failure","code":404,"reason":"NotFound","message":"nope"}"#.into()
                    }
                    false => r#"{"apiVersion":"batch/v1","kind":"JobList","metadata":{"resourceVersion":"7"},"items":[]}"#.into(),
                };
                let _ = request;
                send.send_response(
                    Response::builder()
                        .status(code)
                        .body(Body::from(body.into_bytes()))
                        .unwrap(),
                );
            }
        };
        let client_side = async move {
            let jobs: Api<Job> = Api::namespaced(client.clone(), "ns");
            jobs.list(&ListParams::default()).await.unwrap();
            jobs.list(&ListParams::default().labels("a=b"))
                .await
                .unwrap();
            let watch = jobs.watch(&WatchParams::default(), "7").await.unwrap();
            let _ = watch.boxed().next().await;
            let patch = jobs
                .patch_status(
                    "app",
                    &PatchParams::apply("archforge"),
                    &Patch::Apply(serde_json::json!({})),
                )
                .await;
            assert!(patch.is_err(), "the refusal reaches the caller");
        };
        tokio::join!(server, client_side);
        assert_eq!(
            metrics.api_request_counts(),
            vec![
                (
                    labels("list", "jobs", "/apis/batch/v1/namespaces/{namespace}/jobs"),
                    2
                ),
                (
                    labels(
                        "patch",
                        "jobs/status",
                        "/apis/batch/v1/namespaces/{namespace}/jobs/{name}/status"
                    ),
                    1
                ),
                (
                    labels(
                        "watch",
                        "jobs",
                        "/apis/batch/v1/namespaces/{namespace}/jobs"
                    ),
                    1
                ),
            ]
        );
        assert_eq!(metrics.api_requests_total(), 4);
        let text = metrics.encode();
        assert!(
            text.contains(r#"archforge_kubernetes_requests_total{verb="watch",resource="jobs",path="/apis/batch/v1/namespaces/{namespace}/jobs"} 1"#),
            "{text}"
        );
    }
}
