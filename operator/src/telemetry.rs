//! Metrics (Prometheus, via prometheus-client), health endpoints and logging.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub resource: String,
}

/// Everything archforge measures about itself.
pub struct Metrics {
    pub registry: Registry,
    pub runs_started: Counter,
    pub runs_finished: Family<ResultLabels, Counter>,
    pub build_duration: Family<PlatformLabels, Histogram>,
    pub assembly_duration: Histogram,
    pub reconciles: Counter,
    pub reconcile_errors: Family<ReasonLabels, Counter>,
    pub api_requests: Family<RequestLabels, Counter>,
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
        let reconciles = Counter::default();
        let reconcile_errors = Family::<ReasonLabels, Counter>::default();
        let api_requests = Family::<RequestLabels, Counter>::default();
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
            "Requests archforge made to the Kubernetes API, by verb and resource",
            api_requests.clone(),
        );
        Metrics {
            registry,
            runs_started,
            runs_finished,
            build_duration,
            assembly_duration,
            reconciles,
            reconcile_errors,
            api_requests,
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    pub fn api_request(&self, verb: &str, resource: &str) {
        self.api_requests
            .get_or_create(&RequestLabels {
                verb: verb.into(),
                resource: resource.into(),
            })
            .inc();
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
