//! The `archforge` command line. Each subcommand is a thin shell around library functions.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::manifest;
use crate::plan::plan;
use crate::render::{auth_file, render_jobs};
use crate::settings::{BuilderSettings, KubeVersion};
use crate::validation::ValidSpec;

mod index;
mod push_image;
mod registry_args;
mod verify;

use index::index_create;
pub use index::{IndexCommand, IndexCreateArgs};
pub use push_image::{PushImageArgs, split_target};
pub use registry_args::{RegistryArgs, RegistryTrustArgs};
pub use verify::VerifyArgs;
use verify::verify;

#[derive(Parser, Debug)]
#[command(
    name = "archforge",
    version,
    about = "Native, rootless multi-architecture image builds on Kubernetes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Which CRD `archforge crd` prints.
#[derive(clap::Args, Debug)]
pub struct CrdArgs {
    /// ImageBuild or BuildPolicy.
    #[arg(long, default_value = "ImageBuild")]
    pub kind: CrdKind,
}

/// The custom resources archforge defines.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrdKind {
    #[value(name = "ImageBuild")]
    ImageBuild,
    #[value(name = "BuildPolicy")]
    BuildPolicy,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print a CustomResourceDefinition as YAML: ImageBuild's, or with --kind BuildPolicy
    /// the cluster-scoped policy's.
    Crd(CrdArgs),
    /// Print the RBAC objects the operator needs (from its own list of permissions) as YAML.
    Rbac(RbacArgs),
    /// Print the Jobs an ImageBuild would create, without a cluster (a dry run).
    Render(Box<RenderArgs>),
    /// Work with multi-architecture image indexes.
    #[command(subcommand)]
    Index(IndexCommand),
    /// Run the controller: watch ImageBuilds and build them in the cluster.
    Run(Box<RunArgs>),
    /// Run an ImageBuild on this machine with git, buildah and qemu-user-static: the same
    /// plan and builder command line as the cluster's Jobs, no cluster needed.
    Build(Box<BuildArgs>),
    /// Verify a signed image index: the index's signature and provenance, and each
    /// platform image's signature and provenance (same commit, the platform the index
    /// claims). Exits non-zero naming the first broken link.
    Verify(VerifyArgs),
    /// The builder pod's push container: upload a handed-off image and report its digest.
    #[command(hide = true)]
    PushImage(PushImageArgs),
}

#[derive(clap::Args, Debug)]
pub struct RbacArgs {
    /// Name of the ClusterRole, or of the Role in each watched namespace; the nodes'
    /// ClusterRole and the Lease's Role get `-nodes` and `-leader-election` added.
    #[arg(long, default_value = "archforge")]
    pub name: String,

    /// Watched namespace (repeatable), each getting a Role; one ClusterRole for all
    /// namespaces when omitted. The same list as `archforge run --namespace`.
    #[arg(long = "namespace", value_delimiter = ',')]
    pub namespaces: Vec<String>,

    /// Namespace of the leader election Lease: adds the Role for it (for `run --leader-elect`).
    #[arg(long)]
    pub leader_election_namespace: Option<String>,

    /// The operator's ServiceAccount, the subject of every binding.
    #[arg(long, default_value = "archforge")]
    pub service_account: String,

    /// Namespace of the operator's ServiceAccount.
    #[arg(long, default_value = "archforge-system")]
    pub service_account_namespace: String,

    /// The isolated build namespace: the Jobs, pods and Secret copies get a Role there
    /// only, instead of joining the watched namespaces' rules.
    #[arg(long, value_parser = crate::validation::build_namespace)]
    pub build_namespace: Option<String>,

    /// Print the Helm chart's generated rules template (templates/_rbac-rules.tpl) instead.
    #[arg(long, conflicts_with_all = ["name", "namespaces", "leader_election_namespace", "service_account", "service_account_namespace", "build_namespace"])]
    pub chart_rules: bool,
}

fn rbac(args: &RbacArgs) -> crate::Result<String> {
    if args.chart_rules {
        return manifest::chart_rules();
    }
    manifest::rbac_yaml(&crate::rbac::Install {
        name: args.name.clone(),
        service_account: args.service_account.clone(),
        service_account_namespace: args.service_account_namespace.clone(),
        watched_namespaces: args.namespaces.clone(),
        leader_election_namespace: args.leader_election_namespace.clone(),
        build_namespace: args.build_namespace.clone(),
    })
}

/// `archforge run`. It serializes to the effective configuration `--print-config` prints,
/// so a new setting is in that output as soon as it is a field.
#[derive(clap::Args, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunArgs {
    /// Namespace to watch (repeatable); all namespaces when omitted.
    #[arg(
        long = "namespace",
        env = "ARCHFORGE_WATCH_NAMESPACES",
        value_delimiter = ','
    )]
    #[serde(rename = "watchNamespaces")]
    pub namespaces: Vec<String>,

    /// Address of the /healthz, /readyz and /metrics endpoints.
    #[arg(
        long,
        env = "ARCHFORGE_METRICS_ADDRESS",
        default_value = "0.0.0.0:8080"
    )]
    pub metrics_address: std::net::SocketAddr,

    /// Log format: text or json.
    #[arg(long, env = "ARCHFORGE_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,

    /// How many finished runs status.history keeps.
    #[arg(long, env = "ARCHFORGE_HISTORY_LIMIT", default_value_t = 10)]
    pub history_limit: usize,

    /// How often an unfinished run is re-examined without a watch event (a safety net:
    /// Jobs, pods and nodes are watched). A look that finds nothing new makes no request.
    #[arg(long, env = "ARCHFORGE_RESYNC", default_value = "5m", value_parser = parse_resync)]
    #[serde(serialize_with = "crate::settings::as_humantime")]
    pub resync: std::time::Duration,

    /// How long a builder pod may be held up by something that will not clear by itself (a
    /// kubelet refusal such as AppArmor, an image that does not exist, a missing Secret or
    /// key, a pod the namespace forbids) before its platform fails with that reason, counted
    /// from when the cluster recorded it. What may clear (Unschedulable, pull errors other
    /// than a missing image, quota) is reported at once and fails at the build's timeout.
    #[arg(long, env = "ARCHFORGE_STUCK_GRACE", default_value = "2m", value_parser = parse_stuck_grace)]
    #[serde(serialize_with = "crate::settings::as_humantime")]
    pub stuck_grace: std::time::Duration,

    /// How many ImageBuilds are reconciled at once (per watched namespace; all namespaces
    /// are one).
    #[arg(long, env = "ARCHFORGE_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Kubernetes API requests per second on average (client-side rate limit, as client-go's
    /// --kube-api-qps); 0 turns the limit off.
    #[arg(long, env = "ARCHFORGE_KUBE_API_QPS", default_value_t = 50.0, value_parser = parse_qps)]
    pub kube_api_qps: f32,

    /// Kubernetes API requests allowed at once above the average rate.
    #[arg(long, env = "ARCHFORGE_KUBE_API_BURST", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub kube_api_burst: u32,

    /// Hold a Lease before reconciling, so that only one of several replicas acts.
    #[arg(long, env = "ARCHFORGE_LEADER_ELECT")]
    pub leader_elect: bool,

    /// Namespace of the leader election Lease (defaults to POD_NAMESPACE, then "default").
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub leader_election_namespace: String,

    /// Name of the leader election Lease.
    #[arg(
        long,
        env = "ARCHFORGE_LEADER_ELECTION_LEASE",
        default_value = "archforge-leader"
    )]
    pub leader_election_lease: String,

    /// PEM file of the operator-wide signing key (ECDSA P-256: PKCS#8, SEC1 or cosign's
    /// encrypted format), for ImageBuilds whose spec.output.signing names no keySecret.
    /// Read and checked once, at start: a bad key stops the operator there.
    #[arg(long, env = "ARCHFORGE_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<std::path::PathBuf>,

    /// File holding the password of an encrypted signing key. A file that does not exist
    /// means no password (the chart mounts a Secret whose cosign.password is optional).
    #[arg(
        long,
        env = "ARCHFORGE_SIGNING_KEY_PASSWORD_FILE",
        requires = "signing_key_file"
    )]
    pub signing_key_password_file: Option<std::path::PathBuf>,

    /// The isolated build namespace: every ImageBuild's Jobs, builder pods and per-run
    /// Secret copies are made there, where tenants have no rights, and mapped back to their
    /// ImageBuild by labels. Empty or unset: each ImageBuild builds in its own namespace.
    #[arg(long, env = "ARCHFORGE_BUILD_NAMESPACE", value_parser = crate::validation::build_namespace)]
    pub build_namespace: Option<String>,

    /// Sign with the operator-wide key also the builds that run in their ImageBuild's own
    /// namespace, where a tenant with `edit` can influence them (README, Security model).
    #[arg(long, env = "ARCHFORGE_ALLOW_IN_NAMESPACE_SIGNING")]
    pub allow_in_namespace_signing: bool,

    /// Builder Jobs running at once in the whole cluster; a run that would pass the limit
    /// waits, Queued, and queued runs start in turn across namespaces. 0: no limit.
    #[arg(long, env = "ARCHFORGE_MAX_RUNNING_BUILDS", default_value_t = 0)]
    pub max_running_builds: u32,

    /// Builder Jobs running at once per node architecture, as `arch=N` pairs
    /// (`arm64=4,amd64=8`); an emulated build counts against the architecture of the node
    /// that emulates it. An architecture left out has no limit.
    #[arg(long, env = "ARCHFORGE_MAX_RUNNING_PER_ARCH", default_value = "", value_parser = crate::queue::parse_per_arch)]
    pub max_running_per_arch: std::collections::BTreeMap<String, u32>,

    /// Builder Jobs running at once per ImageBuild namespace. 0: no limit.
    #[arg(long, env = "ARCHFORGE_MAX_RUNNING_PER_NAMESPACE", default_value_t = 0)]
    pub max_running_per_namespace: u32,

    /// Print the effective configuration (flags, environment, defaults) as JSON and exit.
    #[arg(long)]
    #[serde(skip)]
    pub print_config: bool,

    #[command(flatten)]
    #[serde(flatten)]
    pub settings: BuilderSettings,

    #[command(flatten)]
    #[serde(flatten)]
    pub registry: RegistryArgs,
}

/// `--resync`: a duration of at least a second (a zero resync would reconcile in a loop).
fn parse_resync(text: &str) -> Result<std::time::Duration, String> {
    let resync = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if resync < std::time::Duration::from_secs(1) {
        return Err(format!(
            "{text:?} is shorter than a second; a resync is a safety net, 5m is the default"
        ));
    }
    Ok(resync)
}

/// `--stuck-grace`: a duration of at most a day (the build's timeout ends a run anyway).
fn parse_stuck_grace(text: &str) -> Result<std::time::Duration, String> {
    let grace = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if grace > std::time::Duration::from_secs(24 * 3600) {
        return Err(format!(
            "{text:?} is longer than a day; the build's timeout (spec.timeout) already ends a stuck run"
        ));
    }
    Ok(grace)
}

/// `--kube-api-qps`: a finite number, 0 or more.
fn parse_qps(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(qps) if qps.is_finite() && qps >= 0.0 => Ok(qps),
        _ => Err(format!(
            "{text:?} is not a number of requests per second (0 or more; 0 turns the limit off)"
        )),
    }
}

async fn run_controller(args: &RunArgs) -> crate::Result<()> {
    if args.print_config {
        println!(
            "{:#}",
            serde_json::to_value(args).expect("settings serialize")
        );
        return Ok(());
    }
    crate::telemetry::init_logging(args.log_format == "json");
    // Read once, before anything starts: a bad setting stops the operator here.
    let trust = args.registry.trust()?;
    if args.registry.docker_config.is_some() {
        tracing::warn!(
            "--docker-config is not used by the operator: an ImageBuild's index, signatures and attestations are pushed with its own spec.output.pushSecret, anonymously when it names none"
        );
    }
    // The operator's own client takes trust only, never credentials of its own.
    let registry = RegistryArgs {
        docker_config: None,
        ..args.registry.clone()
    }
    .options(&trust)?;
    let builder = BuilderSettings {
        registry_trust: trust,
        ..args.settings.clone()
    };
    let signing_key = match &args.signing_key_file {
        Some(file) => {
            let key = crate::controller::signing::load_operator_key(
                file,
                args.signing_key_password_file.as_deref(),
            )?;
            tracing::info!(key = ?key, "operator-wide signing key loaded");
            Some(std::sync::Arc::new(key))
        }
        None => None,
    };
    let kube_config = kube::Config::infer().await.map_err(|e| {
        crate::Error::Kube(format!("no usable kubeconfig or in-cluster config: {e}"))
    })?;
    let server = kube_config.cluster_url.to_string();
    let metrics = std::sync::Arc::new(crate::telemetry::Metrics::default());
    // Every request goes through the counter, the version probe and the watches included.
    let limit = crate::controller::client::RateLimit {
        qps: args.kube_api_qps,
        burst: args.kube_api_burst,
    };
    let client = crate::controller::client::client(kube_config, metrics.clone(), limit)
        .map_err(|e| crate::Error::Kube(e.to_string()))?;
    let info = client
        .apiserver_version()
        .await
        .map_err(|e| crate::Error::Kube(format!("cannot reach the API server at {server}: {e}")))?;
    let version = KubeVersion::from_info(&info.major, &info.minor).unwrap_or(KubeVersion::OLDEST);
    tracing::info!(%version, "connected to the API server");
    crate::settings::check_confinement(&args.settings, version).map_err(crate::Error::Settings)?;
    let server = tokio::spawn(crate::telemetry::serve(
        args.metrics_address,
        metrics.clone(),
    ));
    if args.leader_elect {
        let lease = crate::leader::LeaseConfig {
            namespace: args.leader_election_namespace.clone(),
            name: args.leader_election_lease.clone(),
            identity: crate::leader::identity(),
            lease_duration: std::time::Duration::from_secs(15),
            renew_every: std::time::Duration::from_secs(5),
        };
        tracing::info!(lease = %lease.name, namespace = %lease.namespace, identity = %lease.identity, "waiting for leadership");
        tokio::select! {
            () = crate::leader::acquire(client.clone(), lease) => {}
            () = crate::controller::shutdown_signal() => {
                server.abort();
                tracing::info!("stopped before leading");
                return Ok(());
            }
        }
    }
    let config = crate::controller::Config {
        builder,
        version,
        history_limit: args.history_limit,
        registry,
        resync: args.resync,
        signing_key,
        concurrency: args.concurrency,
        stuck_grace: args.stuck_grace,
        build_namespace: args.build_namespace.clone().filter(|ns| !ns.is_empty()),
        allow_in_namespace_signing: args.allow_in_namespace_signing,
        limits: crate::queue::Limits {
            total: args.max_running_builds,
            per_arch: args.max_running_per_arch.clone(),
            per_namespace: args.max_running_per_namespace,
            from_policies: Default::default(),
        },
    };
    crate::controller::run(client, args.namespaces.clone(), config, metrics).await;
    server.abort();
    tracing::info!("stopped");
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// Build on this machine (the only mode so far; in a cluster, apply the ImageBuild).
    #[arg(long, required = true)]
    pub local: bool,

    /// ImageBuild manifest (YAML).
    pub file: String,

    /// Platforms built at once (default: all of them).
    #[arg(long, default_value_t = 0)]
    pub jobs: usize,

    /// Directory for buildah's images and layers; kept between runs so layers are reused.
    /// A temporary directory, removed afterwards, when omitted.
    #[arg(long)]
    pub storage: Option<std::path::PathBuf>,

    /// Whether platforms of another architecture than this machine's are built under
    /// qemu-user-static: Never refuses them before anything starts; Fallback and Always
    /// emulate them (one machine: the same thing). Overrides spec.emulation; Fallback when
    /// neither is set.
    #[arg(long, value_parser = emulation_parser())]
    pub emulation: Option<crate::api::Emulation>,

    /// Sign every platform image and the index with this PEM private key (PKCS#8, SEC1 or
    /// cosign's encrypted format, its password in the COSIGN_PASSWORD environment
    /// variable) and attach SLSA provenance; overrides spec.output.signing.keySecret.
    #[arg(long)]
    pub signing_key: Option<std::path::PathBuf>,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Parses `--emulation` with the values listed in `--help` and in clap's refusal.
fn emulation_parser() -> impl clap::builder::TypedValueParser<Value = crate::api::Emulation> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["Never", "Fallback", "Always"])
        .map(|s| s.parse().expect("only the listed values get here"))
}

async fn build(args: &BuildArgs) -> crate::Result<()> {
    let build = manifest::read_imagebuild(&args.file)?;
    // The file may carry the Secrets the ImageBuild names, as a namespace would.
    let secrets = crate::local::LocalSecrets::from_file(&args.file)?;
    let trust = args.registry.trust()?;
    let options = crate::local::LocalOptions {
        jobs: args.jobs,
        storage: args.storage.clone(),
        docker_config: args.registry.docker_config.clone(),
        ca_files: args.registry.ca_files.clone(),
        registry: args.registry.options(&trust)?,
        trust,
        emulation: args.emulation,
        // The password as cosign takes it, from the environment: never from argv.
        signing_key: args
            .signing_key
            .clone()
            .map(|path| crate::local::SigningKeyFile {
                path,
                password: std::env::var_os("COSIGN_PASSWORD").map(|p| p.into_encoded_bytes()),
            }),
    };
    let (stop, cancel) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: stopping every builder process");
            let _ = stop.send(true);
        }
    });
    let outcome =
        crate::local::build_local_with_secrets(&build, &secrets, &options, cancel).await?;
    println!("image   {}", outcome.index.reference);
    println!("digest  {}", outcome.index.digest);
    println!("commit  {}", outcome.commit);
    for p in &outcome.platforms {
        let mut notes = format!("{:.1}s", p.elapsed.as_secs_f64());
        if p.attempts > 1 {
            notes.push_str(&format!(", {} attempts", p.attempts));
        }
        println!(
            "  {:<14} {}  ({notes})  {}{}",
            p.platform.to_string(),
            p.digest,
            p.reference,
            if p.emulated { "  (emulated)" } else { "" }
        );
    }
    if let Some(index) = &outcome.index_attachments {
        println!(
            "signed  index signature {} attestation {}",
            index.signature, index.attestation
        );
        for (platform, attached) in &outcome.attachments {
            println!(
                "  {:<14} signature {} attestation {}",
                platform.to_string(),
                attached.signature,
                attached.attestation
            );
        }
    }
    for m in &outcome.missing {
        println!(
            "  {:<14} missing (allowFailure{}): {}",
            m.platform.to_string(),
            if m.emulated { ", emulated" } else { "" },
            m.reason
        );
    }
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct RenderArgs {
    /// ImageBuild manifest (YAML).
    pub file: String,

    /// Kubernetes version of the target API server; 1.30 and newer also get
    /// securityContext.appArmorProfile.
    #[arg(long, default_value = "1.24")]
    pub kube_version: KubeVersion,

    /// Commit to check out instead of spec.source.git.ref (the controller pins the
    /// resolved commit here).
    #[arg(long)]
    pub revision: Option<String>,

    #[command(flatten)]
    pub settings: BuilderSettings,

    #[command(flatten)]
    pub trust: RegistryTrustArgs,
}

/// Stands in for the UID the API server would assign, so a dry run shows the owner reference.
const PLACEHOLDER_UID: &str = "00000000-0000-0000-0000-000000000000";

fn render(args: &RenderArgs) -> crate::Result<String> {
    let mut build = manifest::read_imagebuild(&args.file)?;
    build
        .metadata
        .uid
        .get_or_insert_with(|| PLACEHOLDER_UID.to_string());
    build
        .metadata
        .namespace
        .get_or_insert_with(|| "default".to_string());
    let revision = args
        .revision
        .clone()
        .unwrap_or_else(|| build.spec.source.git.r#ref.clone());
    let settings = BuilderSettings {
        registry_trust: args.trust.load()?,
        ..args.settings.clone()
    };
    let plan = plan(
        &ValidSpec::check(&build)?,
        &settings,
        &revision,
        auth_file(&build),
    );
    crate::settings::check_confinement(&args.settings, args.kube_version)
        .map_err(crate::Error::Settings)?;
    let mut out = String::new();
    for job in render_jobs(&build, &plan, &settings, args.kube_version) {
        crate::podsecurity::check_job_at(&job, settings.pod_security_level, args.kube_version)?;
        out.push_str("---\n");
        out.push_str(&manifest::to_yaml("Job", &job)?);
    }
    Ok(out)
}

pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        // Its own error type: a broken link is not an archforge failure.
        Command::Verify(args) => match verify(&args).await {
            Ok(lines) => {
                for line in lines {
                    println!("{line}");
                }
                Ok(())
            }
            Err(e) => {
                eprintln!("archforge: {e}");
                return ExitCode::FAILURE;
            }
        },
        Command::PushImage(args) => match push_image::push_image(&args).await {
            Ok(digest) => {
                println!("{digest}");
                Ok(())
            }
            Err(e) => {
                eprintln!("archforge: push-image: {e}");
                return ExitCode::FAILURE;
            }
        },
        Command::Crd(args) => {
            match args.kind {
                CrdKind::ImageBuild => print!("{}", manifest::crd_yaml()),
                CrdKind::BuildPolicy => print!("{}", manifest::policy_crd_yaml()),
            }
            Ok(())
        }
        Command::Rbac(args) => rbac(&args).map(|yaml| print!("{yaml}")),
        Command::Render(args) => render(&args).map(|yaml| print!("{yaml}")),
        Command::Build(args) => build(&args).await,
        Command::Run(args) => run_controller(&args).await,
        Command::Index(IndexCommand::Create(args)) => {
            index_create(&args).await.map(|digest| println!("{digest}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("archforge: {e}");
            ExitCode::FAILURE
        }
    }
}
