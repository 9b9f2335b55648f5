//! archforge's end-to-end suite, run by `make e2e` against the cluster named by KUBECONFIG
//! (Kubernetes 1.24 or newer, with its own scheduler, Job controller and garbage collector).
//! Each scenario gets a fresh namespace and its own operator process watching it.
//!
//!   archforge-e2e [FILTER] [--test-threads N] [--list] ...   the scenarios (libtest flags)
//!   archforge-e2e scale [--builds 100,1000]                   the scale benchmark
//!
//! With ARCHFORGE_E2E_SIMULATE_NODES=1 the suite registers simulated amd64 and arm64 nodes
//! and acts as their kubelet for builder pods (see `kubelet.rs`).
//!
//! The program's modules: `suite.rs` (what all scenarios share), `case.rs` (one scenario's
//! namespace and operator, and the helpers scenarios act through), `scenarios/` (one module
//! per group) and `scale.rs`. Helpers that need no cluster to be tested are the library's
//! (`lib.rs`).

use std::process::ExitCode;
use std::sync::Arc;

use archforge_e2e::config::Settings;
use futures::future::LocalBoxFuture;
use libtest_mimic::{Arguments, Failed, Trial};

use crate::case::{Case, with_case};
use crate::scenarios::{
    buildkit, failures, happy, invalid, isolation, lifecycle, placement, policy, queue, registry,
    signing, stuck,
};
use crate::suite::{Suite, workspace_root};

mod case;
mod scale;
mod scenarios;
mod suite;

/// A scenario as libtest-mimic lists it: named after its function.
struct Scenario {
    name: &'static str,
    /// Ignored unless the suite simulates nodes (it drives the simulated builders).
    simulated_only: bool,
    body: Body,
}

/// What a scenario is marked with in [`scenarios`].
#[derive(Clone, Copy, PartialEq)]
enum Mark {
    SimulatedOnly,
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

impl Scenario {
    async fn run(&self, suite: Arc<Suite>) -> anyhow::Result<()> {
        self.body.run(suite, self.name).await
    }
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

/// The [`Mark`] a scenario's mark stands for (another word does not compile).
macro_rules! mark {
    (simulated_only) => {
        Mark::SimulatedOnly
    };
}

/// The scenarios, each `<how it runs> <module>::<function>[, simulated_only]`,
/// named after their functions.
macro_rules! scenarios {
    ($($kind:ident $module:ident :: $scenario:ident $(, $mark:ident)*;)*) => {
        vec![$({
            let marks: &[Mark] = &[$(mark!($mark)),*];
            Scenario {
                name: stringify!($scenario),
                simulated_only: marks.contains(&Mark::SimulatedOnly),
                body: body!($kind, $module::$scenario),
            }
        }),*]
    };
}

fn scenarios() -> Vec<Scenario> {
    scenarios! {
        in_case happy::happy_path_two_platforms;
        in_case invalid::invalid_imagebuilds_are_refused;
        in_case invalid::invalid_job_fields_stall_with_a_reason;
        in_case failures::one_failed_platform_fails_the_run, simulated_only;
        in_case lifecycle::operator_restart_mid_run_completes_once;
        in_case lifecycle::spec_change_mid_run_starts_a_new_run;
        in_case lifecycle::deleting_an_imagebuild_collects_its_jobs;
        own registry::registry_outage_during_assembly, simulated_only;
        own placement::no_node_for_a_platform_waits_for_one;
        own placement::node_selector_matching_no_node_waits_for_one;
        own placement::emulated_platform_when_no_native_node, simulated_only;
        in_case failures::allowed_failure_publishes_the_rest, simulated_only;
        in_case buildkit::happy_path_buildkit;
        in_case signing::signed_provenance_for_every_platform;
        in_case stuck::unschedulable_pod_says_why;
        own stuck::missing_builder_image_says_why;
        own stuck::missing_push_secret_says_why;
        own stuck::kubelet_refusal_says_why;
        in_case isolation::a_tenant_cannot_forge_or_touch_an_isolated_build;
        in_case isolation::deleting_an_imagebuild_cleans_the_build_namespace;
        in_case policy::emulation_refused_by_policy_in_one_namespace_allowed_in_another;
        own queue::fair_order_across_two_namespaces;
    }
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
        let args = <scale::ScaleArgs as clap::Parser>::parse_from(argv);
        return match runtime.block_on(scale::scale(suite, args)) {
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
            let name = scenario.name;
            Trial::test(name, move || {
                suite
                    .runtime
                    .block_on(scenario.run(suite.clone()))
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
                ("node_selector_matching_no_node_waits_for_one", false),
                ("emulated_platform_when_no_native_node", true),
                ("allowed_failure_publishes_the_rest", true),
                ("happy_path_buildkit", false),
                ("signed_provenance_for_every_platform", false),
                ("unschedulable_pod_says_why", false),
                ("missing_builder_image_says_why", false),
                ("missing_push_secret_says_why", false),
                ("kubelet_refusal_says_why", false),
                ("a_tenant_cannot_forge_or_touch_an_isolated_build", false),
                ("deleting_an_imagebuild_cleans_the_build_namespace", false),
                (
                    "emulation_refused_by_policy_in_one_namespace_allowed_in_another",
                    false,
                ),
                ("fair_order_across_two_namespaces", false),
            ]
        );
    }
}
