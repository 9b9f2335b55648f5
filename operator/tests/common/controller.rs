//! What the controller's tests against kube's `tower-test` mock API server share: the
//! operator's config, a client whose requests the mock answers, and the Jobs it renders.

use std::sync::Arc;
use std::time::Duration;

use archforge::api::ImageBuild;
use archforge::controller::Config;
use archforge::plan::{AuthFile, Placement, PlatformPlan, plan};
use archforge::registry::RegistryOptions;
use archforge::render::render_job;
use archforge::settings::{BuilderSettings, KubeVersion};
use archforge::supply::SigningKey;
use archforge::telemetry::{CountRequests, Metrics};
use archforge::validation::ValidSpec;
use http::{Request, Response};
use kube::client::Body;
use serde_json::Value;

/// The test's side of the mock API server.
pub type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// A client whose every request `Handle` receives, counted into `metrics` as the operator's
/// own client counts them.
pub fn mock_client(metrics: &Arc<Metrics>) -> (kube::Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(
        CountRequests::new(metrics.clone()).service(service),
        "default",
    );
    (client, handle)
}

/// The operator's config in these tests: the oldest supported server, a history of 10, a
/// resync far beyond any test, 4 concurrent reconciles, the default 2m grace for stuck pods.
pub fn config(
    builder: BuilderSettings,
    registry: RegistryOptions,
    signing_key: Option<SigningKey>,
) -> Config {
    Config {
        builder,
        version: KubeVersion::OLDEST,
        history_limit: 10,
        registry,
        resync: Duration::from_secs(300),
        concurrency: 4,
        signing_key: signing_key.map(Arc::new),
        // Long enough that no test outside the stuck-pod ones meets its end.
        stuck_grace: Duration::from_secs(120),
        build_namespace: None,
        allow_in_namespace_signing: false,
        limits: Default::default(),
    }
}

/// The Jobs the controller renders for `build` at `commit` with the default settings, each
/// with its platform's plan, as JSON without the uid and status the API server adds.
pub fn rendered_jobs(build: &ImageBuild, commit: &str) -> Vec<(PlatformPlan, Value)> {
    let settings = BuilderSettings::default();
    let plan = plan(
        &ValidSpec::check(build).unwrap(),
        &settings,
        commit,
        AuthFile::None,
    );
    plan.platforms
        .iter()
        .map(|p| {
            let job = render_job(
                build,
                &plan,
                p,
                &Placement::Native,
                &settings,
                KubeVersion::OLDEST,
            );
            (p.clone(), serde_json::to_value(job).unwrap())
        })
        .collect()
}

/// `text` with its `%XX` escapes decoded (a malformed one is kept as it is), to read a
/// request's query.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(
                std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                16,
            )
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

/// How long a mock-server test waits for the controller's next request before it calls the
/// controller hung. A guard against a hang, not a measure of speed: a loaded 2-core CI machine
/// decrypting a cosign key in a debug build took over 10 s for one step, so it is minutes.
pub const HANG_GUARD: std::time::Duration = std::time::Duration::from_secs(300);
