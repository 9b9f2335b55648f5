//! The `archforge` command line. Each subcommand is a thin shell around library functions.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::manifest;
use crate::plan::{AuthFile, BuilderSettings, KubeVersion, plan};
use crate::render::{PUSH_AUTH_FILE, render_jobs};

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

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the ImageBuild CustomResourceDefinition as YAML.
    Crd,
    /// Print the Jobs an ImageBuild would create, without a cluster (a dry run).
    Render(Box<RenderArgs>),
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
    let auth = if build.spec.output.push_secret.is_some() {
        AuthFile::Path(PUSH_AUTH_FILE)
    } else {
        AuthFile::None
    };
    let plan = plan(&build, &args.settings, &revision, auth)?;
    let mut out = String::new();
    for job in render_jobs(&build, &plan, &args.settings, args.kube_version) {
        out.push_str("---\n");
        out.push_str(&manifest::to_yaml("Job", &job)?);
    }
    Ok(out)
}

pub async fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Crd => {
            print!("{}", manifest::crd_yaml());
            Ok(())
        }
        Command::Render(args) => render(&args).map(|yaml| print!("{yaml}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("archforge: {e}");
            ExitCode::FAILURE
        }
    }
}
