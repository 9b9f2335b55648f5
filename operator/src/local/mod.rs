//! `archforge build --local`: one ImageBuild run on this machine, without a cluster.
//!
//! The same plan as the controller's Jobs: the commit is pinned with the same code, buildah
//! gets the same `build` and `push` argv (plus only local storage flags in front and, when
//! asked, a certificate directory), and the index is assembled by the same registry module.
//! git replaces git-sync, and foreign architectures run under qemu-user-static unless
//! emulation is `Never`. Each platform keeps its plan's failure policy: `retries` re-runs,
//! one `timeout` for all of its attempts, and `allowFailure` leaves it out of the index.

mod buildkit;
mod emulation;
mod git;
mod paths;
mod platform;
mod process;
mod progress;
mod secrets;
mod workspace;

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

use crate::api::{Emulation, ImageBuild, MediaType, Strategy};
use crate::plan::{AuthFile, Platform, plan};
use crate::registry::{
    Attached, PlatformImage, Published, PushedIndex, Registry, RegistryError, RegistryOptions,
    run_annotations,
};
use crate::settings::BuilderSettings;
use crate::source::{SourceError, redact_url};
use crate::supply::{BuildFacts, Signer, SigningKey};

pub use emulation::host_architecture;
pub use process::log_tail;
pub use secrets::LocalSecrets;

/// How the local run is set up.
#[derive(Clone, Debug, Default)]
pub struct LocalOptions {
    /// Platforms built at once; 0 means all of them.
    pub jobs: usize,
    /// Where buildah keeps images and layers; a fresh temporary directory when `None`
    /// (a kept directory makes later builds reuse cached layers).
    pub storage: Option<PathBuf>,
    /// Docker config with registry credentials for the push, used by this process only
    /// (buildah and buildctl get `spec.pullSecret`'s, never these).
    pub docker_config: Option<String>,
    /// CA certificates (PEM files) to trust for every registry.
    pub ca_files: Vec<String>,
    /// Plain-HTTP registries and CA certificates per registry host: the same settings, and
    /// the same rendered files, as the cluster's builders get.
    pub trust: crate::plan::trust::RegistryTrust,
    pub registry: RegistryOptions,
    /// `--emulation`: overrides `spec.emulation`; with neither, Fallback.
    pub emulation: Option<Emulation>,
    /// `--signing-key`: sign with this key (overrides spec.output.signing.keySecret).
    pub signing_key: Option<SigningKeyFile>,
}

/// A PEM private key file and its password (cosign's encrypted format), read from where
/// the caller found them: never from argv. Its `Debug` shows the path only.
#[derive(Clone, Default)]
pub struct SigningKeyFile {
    pub path: PathBuf,
    pub password: Option<Vec<u8>>,
}

impl std::fmt::Debug for SigningKeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyFile")
            .field("path", &self.path)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("invalid ImageBuild: {0}")]
    InvalidSpec(#[from] crate::validation::InvalidSpec),

    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot pin the source: {0}")]
    Source(#[from] SourceError),

    #[error("{step} failed: {message}")]
    Tool { step: String, message: String },

    /// A Secret of the ImageBuild file is missing, incomplete or unreadable.
    #[error("{0}")]
    Credentials(String),

    /// `contextDir` or `dockerfile` is missing from the checkout or leads out of it, or a
    /// symlink of the checkout does.
    #[error("{0}")]
    SourcePath(String),

    #[error("{platform} failed: {message}\n--- last lines of its build log ({log}) ---\n{tail}")]
    Platform {
        platform: String,
        message: String,
        log: String,
        tail: String,
    },

    /// A platform's build or push outlived its timeout and was stopped.
    #[error("{0}")]
    PlatformTimedOut(Box<TimedOut>),

    #[error("{0}")]
    Emulation(String),

    /// Every platform failed, and each of them was allowed to.
    #[error("no platform was built, so there is no image index to assemble")]
    NothingBuilt,

    #[error("assembling the image index failed: {0}")]
    Registry(#[from] RegistryError),

    #[error("interrupted: every builder process was stopped")]
    Interrupted,

    /// Fetching the source outlived the timeout and git was stopped.
    #[error(
        "{step} of {url} timed out after {timeout} ({from}): the git server stopped answering or is too slow; git was stopped"
    )]
    SourceTimedOut {
        step: String,
        url: String,
        timeout: String,
        from: &'static str,
    },

    /// A program the ImageBuild's strategy needs is not installed.
    #[error("{0}")]
    MissingTool(String),

    /// The signing key is missing or unusable; never quotes the key.
    #[error("{0}")]
    Signing(String),
}

/// A platform whose build or push outlived its timeout (boxed: a rare error, kept off the
/// size of every `Result`).
#[derive(Debug, thiserror::Error)]
#[error(
    "{platform} failed: timed out after {timeout} ({from}) during buildah {step}; its buildah processes were stopped\n--- last lines of its build log ({log}) ---\n{tail}"
)]
pub struct TimedOut {
    pub platform: String,
    pub timeout: String,
    /// The field the timeout comes from.
    pub from: String,
    pub step: String,
    pub log: String,
    pub tail: String,
}

/// What one platform produced.
#[derive(Clone, Debug, PartialEq)]
pub struct PlatformResult {
    pub platform: Platform,
    pub reference: String,
    pub digest: String,
    pub elapsed: Duration,
    /// Built under qemu-user-static (its architecture is not this machine's).
    pub emulated: bool,
    /// Attempts it took, 1 without a retry.
    pub attempts: u32,
}

/// A platform that failed, was allowed to (`allowFailure`), and is not in the index.
#[derive(Clone, Debug, PartialEq)]
pub struct MissingPlatform {
    pub platform: Platform,
    pub emulated: bool,
    /// Why it failed: the error's first line (the log file is named there).
    pub reason: String,
}

/// What the whole run produced.
#[derive(Clone, Debug)]
pub struct LocalOutcome {
    pub commit: String,
    pub platforms: Vec<PlatformResult>,
    /// Platforms left out of the index because they failed with `allowFailure`.
    pub missing: Vec<MissingPlatform>,
    pub index: PushedIndex,
    /// The index's and each platform's signature and attestation, when signed.
    pub index_attachments: Option<Attached>,
    pub attachments: Vec<(Platform, Attached)>,
}

impl LocalError {
    /// A step of the run that failed before or around a tool (a file, a directory, a
    /// process that would not start), with the error's own message.
    fn tool(step: impl Into<String>, error: impl std::fmt::Display) -> Self {
        LocalError::Tool {
            step: step.into(),
            message: error.to_string(),
        }
    }
}

/// Runs `build` locally: pin, check out, build and push every platform, assemble the index.
/// `cancel` becoming true (Ctrl-C) stops every child process. No Secrets: a
/// `credentialsSecret` is refused; see [`build_local_with_secrets`].
pub async fn build_local(
    build: &ImageBuild,
    options: &LocalOptions,
    cancel: watch::Receiver<bool>,
) -> Result<LocalOutcome, LocalError> {
    build_local_with_secrets(build, &LocalSecrets::default(), options, cancel).await
}

/// [`build_local`] with the Secrets that came with the ImageBuild (see
/// [`LocalSecrets::from_file`]); `spec.source.git.credentialsSecret` is looked up there.
pub async fn build_local_with_secrets(
    build: &ImageBuild,
    secrets: &LocalSecrets,
    options: &LocalOptions,
    cancel: watch::Receiver<bool>,
) -> Result<LocalOutcome, LocalError> {
    let progress = progress::Progress::start();
    let started_on = now();
    let valid = crate::validation::ValidSpec::check(build)?;
    // Before anything is built: a run that is to be signed and cannot be is refused.
    let signing_key = signing_key(build, secrets, options)?;
    // Before any network or disk work: a platform that may not or cannot run here.
    let requested: Vec<Platform> = build
        .spec
        .platforms
        .iter()
        .map(|p| p.parse().expect("validated platforms parse"))
        .collect();
    let mode = emulation::Mode::resolve(options.emulation, build.spec.emulation);
    let warnings = emulation::check_emulation(&requested, mode)?;
    let settings = BuilderSettings::default();
    if build.spec.strategy.unwrap_or(settings.default_strategy) == Strategy::Buildkit {
        buildkit::check_tools(std::env::var_os("PATH").as_deref())?;
    }
    let access = git::GitAccess::new(
        &build.spec.source.git.url,
        &secrets::git_auth(build, secrets)?,
        source_limit(build, &settings),
    )?;
    let pull = secrets::pull_auth(build, secrets)?;
    let ws = workspace::Workspace::new(options, pull.as_deref())?;
    let git_log = ws.logs.join("git.log");
    let commit = git::pin_commit(build, &access, &git_log, &mut cancel.clone()).await?;
    // The build reads pull credentials only; the push happens in this process.
    let pull_auth = ws.pull_auth.display().to_string();
    let auth = match ws.has_pull_auth {
        true => AuthFile::Path(&pull_auth),
        false => AuthFile::None,
    };
    let plan = plan(&valid, &settings, &commit, auth);
    for warning in warnings {
        progress.say(None, &format!("warning: {warning}"));
    }
    progress.say(
        None,
        &format!("{} at {commit}", redact_url(&build.spec.source.git.url)),
    );

    git::checkout(
        &access,
        build,
        &commit,
        &ws.checkout,
        &git_log,
        &mut cancel.clone(),
    )
    .await?;
    // The SSH key leaves the disk before any build runs.
    drop(access);
    paths::check_source_paths(build, &commit, &ws.checkout, options)?;

    let registry = Registry::new(options.registry.clone());
    let (platforms, failed) = platform::build_platforms(
        &ws,
        &registry,
        &build.spec,
        &plan.platforms,
        options.jobs,
        &progress,
        &cancel,
    )
    .await?;
    let missing = failed
        .into_iter()
        .map(|f| MissingPlatform {
            emulated: emulation::is_foreign(&f.platform.platform),
            platform: f.platform.platform,
            reason: f
                .error
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .to_string(),
        })
        .collect();
    let facts = signing_key.as_ref().map(|_| BuildFacts {
        // This machine's buildah, not an image: no builder image to name.
        builder_image: String::new(),
        builder_id: LOCAL_BUILDER_ID.to_string(),
        invocation_id: format!("local/{}/{}", plan.run_name, started_on),
        started_on: started_on.clone(),
        finished_on: now(),
        ..BuildFacts::from_spec(build, &commit)
    });
    let signer = signing_key
        .as_ref()
        .zip(facts.as_ref())
        .map(|(key, facts)| Signer { key, facts });
    let published = assemble(
        build,
        &registry,
        &commit,
        &platforms,
        plan.media_type,
        signer.as_ref(),
        &progress,
    )
    .await?;
    Ok(LocalOutcome {
        commit,
        platforms,
        missing,
        index: published.index,
        index_attachments: published.index_attachments,
        attachments: published.platforms,
    })
}

/// The SLSA builder id of `archforge build --local`: whoever ran it on their machine.
pub const LOCAL_BUILDER_ID: &str = "https://archforge.dev/build-local";

fn now() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .expect("whole seconds")
        .to_string()
}

/// The key the run signs with: `--signing-key`, else the Secret spec.output.signing.keySecret
/// names (in the ImageBuild's file, key `cosign.key`, password `cosign.password`), else none.
fn signing_key(
    build: &ImageBuild,
    secrets: &LocalSecrets,
    options: &LocalOptions,
) -> Result<Option<SigningKey>, LocalError> {
    if let Some(file) = &options.signing_key {
        let pem = std::fs::read(&file.path).map_err(|e| {
            LocalError::Signing(format!(
                "cannot read the signing key {}: {e}",
                file.path.display()
            ))
        })?;
        let key = SigningKey::from_pem(&pem, file.password.as_deref()).map_err(|e| {
            LocalError::Signing(format!("--signing-key {}: {e}", file.path.display()))
        })?;
        return Ok(Some(key));
    }
    let Some(signing) = &build.spec.output.signing else {
        return Ok(None);
    };
    let Some(name) = &signing.key_secret else {
        return Err(LocalError::Signing(
            "spec.output.signing names no keySecret, and the operator-wide key is the operator's: give --signing-key FILE (password in COSIGN_PASSWORD) or a keySecret whose Secret is in the ImageBuild's file".to_string(),
        ));
    };
    let (pem, password) = secrets::signing_secret(secrets, name)?;
    SigningKey::from_pem(&pem, password.as_deref())
        .map(Some)
        .map_err(|e| {
            LocalError::Signing(format!(
                "Secret {name:?} (spec.output.signing.keySecret), key cosign.key: {e}"
            ))
        })
}

/// Pushes the image index of the built platforms, annotated with the run's source, and
/// signs and attests every platform and the index when there is a signer.
async fn assemble(
    build: &ImageBuild,
    registry: &Registry,
    commit: &str,
    platforms: &[PlatformResult],
    media_type: MediaType,
    signer: Option<&Signer<'_>>,
    progress: &progress::Progress,
) -> Result<Published, LocalError> {
    progress.say(
        None,
        &format!(
            "assembling the image index {}{}",
            build.spec.output.image,
            if signer.is_some() {
                ", signing and attesting every image"
            } else {
                ""
            }
        ),
    );
    let images: Vec<PlatformImage> = platforms
        .iter()
        .map(|r| PlatformImage {
            platform: r.platform.clone(),
            digest: r.digest.clone(),
        })
        .collect();
    let annotations = run_annotations(&redact_url(&build.spec.source.git.url), commit, &now());
    Ok(registry
        .publish(
            &build.spec.output.image,
            &images,
            media_type,
            &annotations,
            signer,
        )
        .await?)
}

/// The time the source's lookup and fetch may take: the spec's timeout, as a Job's git-sync
/// has its Job's deadline, or the default timeout.
fn source_limit(build: &ImageBuild, settings: &BuilderSettings) -> git::SourceLimit {
    let spec = build.spec.timeout.as_deref();
    let (timeout, from) = match spec.and_then(crate::validation::parse_timeout) {
        Some(timeout) => (timeout, "spec.timeout"),
        None => (settings.default_timeout, "the default timeout"),
    };
    git::SourceLimit {
        deadline: tokio::time::Instant::now() + timeout,
        timeout: humantime::format_duration(timeout).to_string(),
        from,
    }
}
