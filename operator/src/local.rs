//! `archforge build --local`: one ImageBuild run on this machine, without a cluster.
//!
//! The same plan as the controller's Jobs: the commit is pinned with the same code, buildah
//! gets the same `build` and `push` argv (plus only local storage flags in front and, when
//! asked, a certificate directory), and the index is assembled by the same registry module.
//! git replaces git-sync, and foreign architectures run under qemu-user-static.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::Command;
use tokio::sync::{Semaphore, watch};

use crate::api::ImageBuild;
use crate::plan::{AuthFile, BuildPlan, BuilderSettings, Platform, PlatformPlan, plan, push_argv};
use crate::registry::{
    PlatformImage, PushedIndex, Registry, RegistryError, RegistryOptions, run_annotations,
};
use crate::source::{SourceError, is_full_sha, redact_url, resolve_commit};

/// How the local run is set up.
#[derive(Clone, Debug, Default)]
pub struct LocalOptions {
    /// Platforms built at once; 0 means all of them.
    pub jobs: usize,
    /// Where buildah keeps images and layers; a fresh temporary directory when `None`
    /// (a kept directory makes later builds reuse cached layers).
    pub storage: Option<PathBuf>,
    /// Docker config with registry credentials (passed to buildah with `--authfile`).
    pub docker_config: Option<String>,
    /// CA certificates (PEM files) to trust for the registries.
    pub ca_files: Vec<String>,
    /// `host:port` of registries spoken to over plain HTTP.
    pub insecure_registries: Vec<String>,
    pub registry: RegistryOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(transparent)]
    Spec(#[from] crate::Error),

    #[error("cannot pin the source: {0}")]
    Source(#[from] SourceError),

    #[error("{step} failed: {message}")]
    Tool { step: String, message: String },

    #[error("{platform} failed: {message}\n--- last lines of its build log ({log}) ---\n{tail}")]
    Platform {
        platform: String,
        message: String,
        log: String,
        tail: String,
    },

    #[error("{0}")]
    Emulation(String),

    #[error("assembling the image index failed: {0}")]
    Registry(#[from] RegistryError),

    #[error("interrupted: every builder process was stopped")]
    Interrupted,
}

/// What one platform produced.
#[derive(Clone, Debug, PartialEq)]
pub struct PlatformResult {
    pub platform: Platform,
    pub reference: String,
    pub digest: String,
    pub elapsed: Duration,
}

/// What the whole run produced.
#[derive(Clone, Debug)]
pub struct LocalOutcome {
    pub commit: String,
    pub platforms: Vec<PlatformResult>,
    pub index: PushedIndex,
}

/// The `kubernetes.io/arch`-style name of the machine's architecture.
pub fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "x86" => "386",
        other => other,
    }
}

/// The binfmt_misc entry qemu-user-static registers for an architecture.
fn qemu_binfmt(architecture: &str) -> &str {
    match architecture {
        "arm64" => "qemu-aarch64",
        "amd64" => "qemu-x86_64",
        "386" => "qemu-i386",
        "ppc64le" => "qemu-ppc64le",
        "s390x" => "qemu-s390x",
        "riscv64" => "qemu-riscv64",
        _ => "qemu-arm",
    }
}

/// Refuses early, with the fix, when a foreign platform cannot run here.
fn check_emulation(platforms: &[PlatformPlan]) -> Result<Vec<String>, LocalError> {
    let mut warnings = Vec::new();
    for p in platforms {
        let arch = p.platform.architecture.as_str();
        if arch == host_architecture() {
            continue;
        }
        let entry = Path::new("/proc/sys/fs/binfmt_misc").join(qemu_binfmt(arch));
        let enabled = std::fs::read_to_string(&entry)
            .map(|s| s.starts_with("enabled"))
            .unwrap_or(false);
        if !enabled {
            return Err(LocalError::Emulation(format!(
                "{} cannot run on this {} machine: {} is not registered with binfmt_misc. \
                 Install qemu-user-static and binfmt-support, mount binfmt_misc \
                 (mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc) and run \
                 update-binfmts --enable {}",
                p.platform,
                host_architecture(),
                entry.display(),
                qemu_binfmt(arch)
            )));
        }
        warnings.push(format!(
            "{} is emulated with qemu-user-static on this {} machine: expect it to be several times slower than a native build",
            p.platform,
            host_architecture()
        ));
    }
    Ok(warnings)
}

/// Prints a person-readable account of the run on stderr.
#[derive(Clone)]
struct Progress {
    started: Instant,
}

impl Progress {
    fn say(&self, platform: Option<&Platform>, message: &str) {
        let elapsed = self.started.elapsed().as_secs_f64();
        match platform {
            Some(p) => eprintln!("[{elapsed:>6.1}s] {:<14} {message}", p.to_string()),
            None => eprintln!("[{elapsed:>6.1}s] {message}"),
        }
    }
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `cmd` in its own process group with output to `log`. When `cancel` fires, the
/// whole group gets SIGTERM, then SIGKILL, so no builder process outlives the run.
async fn run_logged(
    mut cmd: Command,
    log: &Path,
    cancel: &mut watch::Receiver<bool>,
) -> Result<ExitStatus, LocalError> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| LocalError::Tool {
            step: format!("opening {}", log.display()),
            message: e.to_string(),
        })?;
    let err = out.try_clone().expect("log file handle clones");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0)
        .kill_on_drop(true);
    let program = format!("{:?}", cmd.as_std().get_program());
    let mut child = cmd.spawn().map_err(|e| LocalError::Tool {
        step: format!("starting {program}"),
        message: e.to_string(),
    })?;
    let pgid = child.id().map(|id| id as i32);
    tokio::select! {
        status = child.wait() => status.map_err(|e| LocalError::Tool { step: format!("waiting for {program}"), message: e.to_string() }),
        _ = cancel.wait_for(|stop| *stop) => {
            if let Some(pgid) = pgid {
                // SAFETY: kill(2) with a negative pid signals the process group we created.
                unsafe { libc::kill(-pgid, libc::SIGTERM) };
                if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_err() {
                    unsafe { libc::kill(-pgid, libc::SIGKILL) };
                    let _ = child.wait().await;
                }
            }
            Err(LocalError::Interrupted)
        }
    }
}

async fn git(
    args: &[&str],
    cwd: &Path,
    log: &Path,
    cancel: &mut watch::Receiver<bool>,
) -> Result<(), LocalError> {
    let mut cmd = Command::new("git");
    cmd.args(args)
        .current_dir(cwd)
        .env("GIT_TERMINAL_PROMPT", "0");
    let status = run_logged(cmd, log, cancel).await?;
    if status.success() {
        Ok(())
    } else {
        Err(LocalError::Tool {
            step: format!("git {}", args.first().copied().unwrap_or_default()),
            message: format!("{status}; {}", log_tail(log, 5)),
        })
    }
}

/// `git ls-remote` for URLs the smart-HTTP resolver does not speak (ssh, git://, file).
async fn ls_remote(url: &str, reference: &str) -> Result<String, LocalError> {
    let out = Command::new("git")
        .args(["ls-remote", "--", url, reference])
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .await
        .map_err(|e| LocalError::Tool {
            step: "git ls-remote".into(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(LocalError::Tool {
            step: "git ls-remote".into(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let refs: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(sha, name)| (sha.to_string(), name.to_string()))
        .collect();
    crate::source::pick_commit(&refs, reference).ok_or_else(|| {
        LocalError::Source(SourceError::RefNotFound {
            url: redact_url(url),
            reference: reference.into(),
        })
    })
}

/// Resolves the commit the way the controller does (smart HTTP), falling back to git.
async fn pin_commit(build: &ImageBuild) -> Result<String, LocalError> {
    let git = &build.spec.source.git;
    if is_full_sha(&git.r#ref) {
        return Ok(git.r#ref.clone());
    }
    match resolve_commit(&git.url, &git.r#ref, None).await {
        Err(SourceError::UnsupportedScheme { .. }) => ls_remote(&git.url, &git.r#ref).await,
        other => Ok(other?),
    }
}

/// Fetches exactly `commit` into `dir`, like git-sync does in a Job.
async fn checkout(
    build: &ImageBuild,
    commit: &str,
    dir: &Path,
    log: &Path,
    cancel: &mut watch::Receiver<bool>,
) -> Result<(), LocalError> {
    let git_spec = &build.spec.source.git;
    std::fs::create_dir_all(dir).map_err(|e| LocalError::Tool {
        step: "creating the checkout".into(),
        message: e.to_string(),
    })?;
    git(&["init", "-q"], dir, log, cancel).await?;
    let depth = format!("--depth={}", git_spec.depth.unwrap_or(1));
    let mut fetch = vec!["fetch", "-q"];
    if git_spec.depth != Some(0) {
        fetch.push(&depth);
    }
    fetch.extend(["--", &git_spec.url, commit]);
    if git(&fetch, dir, log, cancel).await.is_err() {
        // Servers that refuse to serve a commit by SHA still serve the ref it came from.
        let mut by_ref = fetch.clone();
        *by_ref.last_mut().expect("fetch has a refspec") = &git_spec.r#ref;
        git(&by_ref, dir, log, cancel).await?;
    }
    git(
        &["-c", "advice.detachedHead=false", "checkout", "-q", commit],
        dir,
        log,
        cancel,
    )
    .await
}

/// Inserts local-only options before the `--` that ends a buildah argv.
fn with_options(mut argv: Vec<String>, extra: &[String]) -> Vec<String> {
    let end = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
    argv.splice(end..end, extra.iter().cloned());
    argv
}

struct Workspace {
    checkout: PathBuf,
    storage: PathBuf,
    logs: PathBuf,
    registries_conf: Option<PathBuf>,
    cert_dir: Option<PathBuf>,
}

async fn build_platform(
    ws: &Workspace,
    plan: &BuildPlan,
    platform: &PlatformPlan,
    options: &LocalOptions,
    progress: &Progress,
    mut cancel: watch::Receiver<bool>,
) -> Result<PlatformResult, LocalError> {
    let started = Instant::now();
    let slug = platform.platform.slug();
    let log = ws.logs.join(format!("{slug}.log"));
    let storage = ws.storage.join(&slug);
    let buildah = |argv: Vec<String>| {
        let mut cmd = Command::new("buildah");
        cmd.arg("--root")
            .arg(storage.join("root"))
            .arg("--runroot")
            .arg(storage.join("runroot"))
            .args(["--storage-driver", "vfs"])
            .args(argv)
            .current_dir(&ws.checkout)
            .env("BUILDAH_ISOLATION", "chroot");
        if let Some(conf) = &ws.registries_conf {
            cmd.env("CONTAINERS_REGISTRIES_CONF", conf);
        }
        cmd
    };
    let extra: Vec<String> = ws
        .cert_dir
        .iter()
        .flat_map(|d| ["--cert-dir".to_string(), d.display().to_string()])
        .collect();
    let failed = |message: String| LocalError::Platform {
        platform: platform.platform.to_string(),
        message,
        log: log.display().to_string(),
        tail: log_tail(&log, 25),
    };

    progress.say(Some(&platform.platform), "building");
    let status = run_logged(
        buildah(with_options(platform.build_argv.clone(), &extra)),
        &log,
        &mut cancel,
    )
    .await?;
    if !status.success() {
        return Err(failed(format!("buildah build exited with {status}")));
    }
    progress.say(
        Some(&platform.platform),
        &format!(
            "built in {:.1}s; pushing {}",
            started.elapsed().as_secs_f64(),
            platform.push_target
        ),
    );
    let digest_file = storage.join("digest");
    let auth = match &options.docker_config {
        Some(path) => AuthFile::Path(path),
        None => AuthFile::None,
    };
    let push = push_argv(
        plan.media_type,
        &platform.push_target,
        &digest_file.display().to_string(),
        auth,
    );
    let status = run_logged(buildah(with_options(push, &extra)), &log, &mut cancel).await?;
    if !status.success() {
        return Err(failed(format!("buildah push exited with {status}")));
    }
    let digest = std::fs::read_to_string(&digest_file)
        .map(|d| d.trim().to_string())
        .map_err(|e| failed(format!("buildah wrote no digest: {e}")))?;
    let elapsed = started.elapsed();
    progress.say(
        Some(&platform.platform),
        &format!("pushed {digest} ({:.1}s)", elapsed.as_secs_f64()),
    );
    Ok(PlatformResult {
        platform: platform.platform.clone(),
        reference: platform.push_target.clone(),
        digest,
        elapsed,
    })
}

fn prepare(root: &Path, options: &LocalOptions) -> Result<Workspace, LocalError> {
    let io = |step: &str, e: std::io::Error| LocalError::Tool {
        step: step.to_string(),
        message: e.to_string(),
    };
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| io("creating the log directory", e))?;
    let registries_conf = if options.insecure_registries.is_empty() {
        None
    } else {
        // containers-registries.conf(5): plain HTTP for the listed registries only. Written
        // as TOML strings by serde_json, which escapes exactly as TOML basic strings need.
        let mut conf = String::from("unqualified-search-registries = []\n");
        for registry in &options.insecure_registries {
            let location = serde_json::to_string(registry).expect("a string serializes");
            conf.push_str(&format!(
                "\n[[registry]]\nlocation = {location}\ninsecure = true\n"
            ));
        }
        let path = root.join("registries.conf");
        std::fs::write(&path, conf).map_err(|e| io("writing registries.conf", e))?;
        Some(path)
    };
    let cert_dir = if options.ca_files.is_empty() {
        None
    } else {
        let dir = root.join("certs");
        std::fs::create_dir_all(&dir).map_err(|e| io("creating the certificate directory", e))?;
        for (i, file) in options.ca_files.iter().enumerate() {
            std::fs::copy(file, dir.join(format!("ca-{i}.crt")))
                .map_err(|e| io(&format!("copying {file}"), e))?;
        }
        Some(dir)
    };
    Ok(Workspace {
        checkout: root.join("src"),
        storage: options
            .storage
            .clone()
            .unwrap_or_else(|| root.join("storage")),
        logs,
        registries_conf,
        cert_dir,
    })
}

/// Runs `build` locally: pin, check out, build and push every platform, assemble the index.
/// `cancel` becoming true (Ctrl-C) stops every child process.
pub async fn build_local(
    build: &ImageBuild,
    options: &LocalOptions,
    cancel: watch::Receiver<bool>,
) -> Result<LocalOutcome, LocalError> {
    let progress = Progress {
        started: Instant::now(),
    };
    build.spec.validate().map_err(crate::Error::from)?;
    let auth = match &options.docker_config {
        Some(path) => AuthFile::Path(path),
        None => AuthFile::None,
    };
    let commit = pin_commit(build).await?;
    let plan =
        plan(build, &BuilderSettings::default(), &commit, auth).map_err(crate::Error::from)?;
    for warning in check_emulation(&plan.platforms)? {
        progress.say(None, &format!("warning: {warning}"));
    }
    progress.say(
        None,
        &format!("{} at {commit}", redact_url(&build.spec.source.git.url)),
    );

    let root = tempfile::Builder::new()
        .prefix("archforge-local-")
        .tempdir()
        .map_err(|e| LocalError::Tool {
            step: "creating a work directory".into(),
            message: e.to_string(),
        })?;
    let ws = Arc::new(prepare(root.path(), options)?);
    let mut checkout_cancel = cancel.clone();
    checkout(
        build,
        &commit,
        &ws.checkout,
        &ws.logs.join("git.log"),
        &mut checkout_cancel,
    )
    .await?;

    let jobs = if options.jobs == 0 {
        plan.platforms.len()
    } else {
        options.jobs
    };
    let permits = Arc::new(Semaphore::new(jobs.max(1)));
    let heartbeat = std::io::stderr().is_terminal();
    let runs = plan.platforms.iter().map(|platform| {
        let permits = permits.clone();
        let (ws, plan, progress, cancel) = (ws.clone(), &plan, progress.clone(), cancel.clone());
        async move {
            let _permit = permits.acquire().await.expect("the semaphore is never closed");
            let work = build_platform(&ws, plan, platform, options, &progress, cancel);
            tokio::pin!(work);
            let mut ticker = tokio::time::interval(Duration::from_secs(15));
            ticker.tick().await;
            loop {
                tokio::select! {
                    result = &mut work => return result,
                    _ = ticker.tick(), if heartbeat => progress.say(Some(&platform.platform), "still working…"),
                }
            }
        }
    });
    let mut results = Vec::new();
    let mut first_error = None;
    for result in futures::future::join_all(runs).await {
        match result {
            Ok(r) => results.push(r),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(error) = first_error {
        return Err(error);
    }

    progress.say(
        None,
        &format!("assembling the image index {}", build.spec.output.image),
    );
    let images: Vec<PlatformImage> = results
        .iter()
        .map(|r| PlatformImage {
            platform: r.platform.clone(),
            digest: r.digest.clone(),
        })
        .collect();
    let created = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .expect("whole seconds")
        .to_string();
    let annotations = run_annotations(&redact_url(&build.spec.source.git.url), &commit, &created);
    let registry = Registry::new(options.registry.clone());
    let index = registry
        .assemble_index(
            &build.spec.output.image,
            &images,
            plan.media_type,
            &annotations,
        )
        .await?;
    Ok(LocalOutcome {
        commit,
        platforms: results,
        index,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_options_go_before_the_end_of_options() {
        let argv: Vec<String> = ["build", "--tag", "x", "--", "ctx"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let extra = vec!["--cert-dir".to_string(), "/c".to_string()];
        assert_eq!(
            with_options(argv, &extra),
            ["build", "--tag", "x", "--cert-dir", "/c", "--", "ctx"]
        );
    }

    #[test]
    fn log_tail_keeps_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(
            &path,
            (1..=30).map(|i| format!("line {i}\n")).collect::<String>(),
        )
        .unwrap();
        let tail = log_tail(&path, 3);
        assert_eq!(tail, "line 28\nline 29\nline 30");
    }
}
