//! archforge's end-to-end suite, run by `make e2e` against the cluster named by KUBECONFIG
//! (Kubernetes 1.24 or newer, with its own scheduler, Job controller and garbage collector).
//! Each scenario gets a fresh namespace and its own operator process watching it.
//!
//!   archforge-e2e [FILTER] [--test-threads N] [--list] ...   the scenarios (libtest flags)
//!   archforge-e2e scale [--builds 100,1000]                   the scale benchmark
//!
//! With ARCHFORGE_E2E_SIMULATE_NODES=1 the suite registers simulated amd64 and arm64 nodes
//! and acts as their kubelet for builder pods (see `kubelet.rs`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use archforge::api::Phase;
use archforge_e2e::cluster::wait_for;
use archforge_e2e::config::Settings;
use archforge_e2e::operator::sum_samples;
use futures::future::LocalBoxFuture;
use futures::{StreamExt, TryStreamExt};
use kube::ResourceExt;
use kube::api::ListParams;
use libtest_mimic::{Arguments, Failed, Trial};

use crate::case::{AMD64, ARM64, Case, describe, with_case};
use crate::scenarios::{failures, happy, invalid, lifecycle, placement, registry};
use crate::suite::{Suite, workspace_root};

mod case;
mod scenarios;
mod suite;

// ---------------------------------------------------------------------------------------
// Scenarios

// ---------------------------------------------------------------------------------------
// Scale benchmark

#[derive(clap::Parser, Debug)]
struct ScaleArgs {
    /// Numbers of ImageBuilds (two platforms each) to run, one round each.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    builds: Vec<usize>,
    /// ImageBuilds created at once.
    #[arg(long, default_value_t = 32)]
    parallel: usize,
}

struct ScaleRow {
    builds: usize,
    seconds: f64,
    peak_rss_mib: f64,
    requests_per_build: f64,
}

async fn scale(suite: Arc<Suite>, args: ScaleArgs) -> anyhow::Result<()> {
    ensure!(
        suite.settings.simulate_nodes,
        "the scale benchmark needs ARCHFORGE_E2E_SIMULATE_NODES=1 (thousands of real builds are a different benchmark)"
    );
    let mut rows = Vec::new();
    for &count in &args.builds {
        let row = with_scale_case(&suite, count, args.parallel).await?;
        eprintln!("{count} ImageBuilds: {:.1} s", row.seconds);
        rows.push(row);
    }
    println!(
        "| ImageBuilds | platforms each | time to all Succeeded | ImageBuilds/s | operator peak RSS | Kubernetes API requests per ImageBuild |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in rows {
        println!(
            "| {} | 2 | {:.1} s | {:.1} | {:.1} MiB | {:.1} |",
            r.builds,
            r.seconds,
            r.builds as f64 / r.seconds,
            r.peak_rss_mib,
            r.requests_per_build
        );
    }
    Ok(())
}

async fn with_scale_case(
    suite: &Arc<Suite>,
    count: usize,
    parallel: usize,
) -> anyhow::Result<ScaleRow> {
    let mut row = None;
    with_case(suite, &format!("scale-{count}"), None, async |case| {
        let started = Instant::now();
        futures::stream::iter(0..count)
            .map(|i| async move {
                case.apply(&case.manifest(&format!("app-{i:04}"), &[AMD64, ARM64]))
                    .await
            })
            .buffer_unordered(parallel)
            .try_collect::<Vec<_>>()
            .await?;
        wait_for(
            &format!("{count} ImageBuilds to succeed"),
            Duration::from_secs(3600),
            || async {
                case.operator.lock().unwrap().check_alive()?;
                let builds = case.builds.list(&ListParams::default()).await?.items;
                let failed: Vec<String> = builds
                    .iter()
                    .filter(|b| b.status.as_ref().and_then(|s| s.phase) == Some(Phase::Failed))
                    .map(|b| format!("{}: {}", b.name_any(), describe(b.status.as_ref().unwrap())))
                    .collect();
                ensure!(failed.is_empty(), "failed: {failed:?}");
                let done = builds
                    .iter()
                    .filter(|b| b.status.as_ref().and_then(|s| s.phase) == Some(Phase::Succeeded))
                    .count();
                Ok((done == count).then_some(()))
            },
        )
        .await?;
        let seconds = started.elapsed().as_secs_f64();
        let (metrics_address, peak) = {
            let operator = case.operator.lock().unwrap();
            (operator.metrics_address.clone(), operator.peak_rss_kib())
        };
        let text = reqwest::get(format!("http://{metrics_address}/metrics"))
            .await?
            .text()
            .await?;
        let requests = sum_samples(&text, "archforge_kubernetes_requests_total");
        ensure!(
            requests > 0.0,
            "no Kubernetes requests counted; metrics:\n{text}"
        );
        row = Some(ScaleRow {
            builds: count,
            seconds,
            peak_rss_mib: peak.context("operator peak RSS")? as f64 / 1024.0,
            requests_per_build: requests / count as f64,
        });
        Ok(())
    })
    .await?;
    row.context("no figures")
}

// ---------------------------------------------------------------------------------------

/// A scenario as libtest-mimic lists it: named after its function.
struct Scenario {
    name: &'static str,
    /// Ignored unless the suite simulates nodes (it drives the simulated builders).
    simulated_only: bool,
    body: Body,
}

/// How a scenario runs.
#[derive(Clone, Copy)]
enum Body {
    /// In a fresh Case the harness starts and finishes (see `with_case`).
    InCase(for<'a> fn(&'a Case) -> LocalBoxFuture<'a, anyhow::Result<()>>),
    /// On its own, for a scenario that prepares or cleans up around its Case (a registry
    /// proxy, a node).
    Own(fn(Arc<Suite>, &'static str) -> LocalBoxFuture<'static, anyhow::Result<()>>),
}

impl Body {
    async fn run(self, suite: Arc<Suite>, test: &'static str) -> anyhow::Result<()> {
        match self {
            Body::InCase(body) => {
                with_case(&suite, test, None, async |case| body(case).await).await
            }
            Body::Own(body) => body(suite, test).await,
        }
    }
}

/// The [`Body`] of scenario function `$f`: `in_case` ones take the `&Case`, `own` ones the
/// suite and their name.
macro_rules! body {
    (in_case, $f:path) => {{
        fn body(case: &Case) -> LocalBoxFuture<'_, anyhow::Result<()>> {
            Box::pin($f(case))
        }
        Body::InCase(body)
    }};
    (own, $f:path) => {{
        fn body(
            suite: Arc<Suite>,
            test: &'static str,
        ) -> LocalBoxFuture<'static, anyhow::Result<()>> {
            Box::pin($f(suite, test))
        }
        Body::Own(body)
    }};
}

/// (how it runs, module::function, needs simulated nodes) of each scenario.
macro_rules! scenarios {
    ($(($kind:ident, $module:ident :: $scenario:ident, $simulated_only:expr)),* $(,)?) => {
        vec![$(Scenario {
            name: stringify!($scenario),
            simulated_only: $simulated_only,
            body: body!($kind, $module::$scenario),
        }),*]
    };
}

fn scenarios() -> Vec<Scenario> {
    scenarios![
        (in_case, happy::happy_path_two_platforms, false),
        (in_case, invalid::invalid_imagebuilds_are_refused, false),
        (
            in_case,
            invalid::invalid_job_fields_stall_with_a_reason,
            false
        ),
        (in_case, failures::one_failed_platform_fails_the_run, true),
        (
            in_case,
            lifecycle::operator_restart_mid_run_completes_once,
            false
        ),
        (
            in_case,
            lifecycle::spec_change_mid_run_starts_a_new_run,
            false
        ),
        (
            in_case,
            lifecycle::deleting_an_imagebuild_collects_its_jobs,
            false
        ),
        (own, registry::registry_outage_during_assembly, true),
        (own, placement::no_node_for_a_platform_waits_for_one, false),
    ]
}

fn main() -> ExitCode {
    archforge::install_crypto_provider();
    let default_operator = workspace_root().join("target/debug/archforge");
    let settings = match Settings::from_lookup(|k| std::env::var(k).ok(), default_operator) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("archforge-e2e: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let handle = runtime.handle().clone();
    let suite = match runtime.block_on(Suite::connect(settings, handle)) {
        Ok(suite) => Arc::new(suite),
        Err(e) => {
            eprintln!("archforge-e2e: {e:#}");
            return ExitCode::FAILURE;
        }
    };

    let mut argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("scale") {
        argv.remove(1);
        let args = <ScaleArgs as clap::Parser>::parse_from(argv);
        return match runtime.block_on(scale(suite, args)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("archforge-e2e scale: {e:#}");
                ExitCode::FAILURE
            }
        };
    }

    let trials = scenarios()
        .into_iter()
        .map(|scenario| {
            let suite = suite.clone();
            let ignored = scenario.simulated_only && !suite.settings.simulate_nodes;
            Trial::test(scenario.name, move || {
                suite
                    .runtime
                    .block_on(scenario.body.run(suite.clone(), scenario.name))
                    .map_err(|e| Failed::from(format!("{e:#}")))
            })
            .with_ignored_flag(ignored)
        })
        .collect();
    libtest_mimic::run(&Arguments::from_args(), trials).exit_code()
}

#[cfg(test)]
mod tests {
    /// `make e2e`'s filters (E2E_ARGS) and CI name scenarios: they keep their names, order
    /// and simulated-only marks wherever their code lives.
    #[test]
    fn scenarios_keep_their_names() {
        let listed: Vec<(&str, bool)> = super::scenarios()
            .into_iter()
            .map(|s| (s.name, s.simulated_only))
            .collect();
        assert_eq!(
            listed,
            [
                ("happy_path_two_platforms", false),
                ("invalid_imagebuilds_are_refused", false),
                ("invalid_job_fields_stall_with_a_reason", false),
                ("one_failed_platform_fails_the_run", true),
                ("operator_restart_mid_run_completes_once", false),
                ("spec_change_mid_run_starts_a_new_run", false),
                ("deleting_an_imagebuild_collects_its_jobs", false),
                ("registry_outage_during_assembly", true),
                ("no_node_for_a_platform_waits_for_one", false),
            ]
        );
    }
}
