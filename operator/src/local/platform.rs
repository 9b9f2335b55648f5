//! One platform built and pushed by buildah, and all of them built side by side.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use tokio::process::Command;
use tokio::sync::{Semaphore, watch};

use super::emulation::is_foreign;
use super::process::{Ended, log_tail, run_logged};
use super::progress::Progress;
use super::workspace::Workspace;
use super::{LocalError, PlatformResult, TimedOut};
use crate::api::{ImageBuildSpec, Strategy};
use crate::plan::{PlatformPlan, UNKNOWN_DIGEST};

use crate::registry::Registry;

/// Inserts local-only options before the `--` that ends a buildah argv.
fn with_options(mut argv: Vec<String>, extra: &[String]) -> Vec<String> {
    let end = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
    argv.splice(end..end, extra.iter().cloned());
    argv
}

/// Builds and pushes one platform in its own storage, with buildah's output in
/// `logs/<platform>.log`, retrying a failed attempt up to the platform's `retries` times
/// (as its Job's `backoffLimit` would) within one `timeout` for all attempts (as its Job's
/// `activeDeadlineSeconds`). A timeout or Ctrl-C is not retried.
async fn build_platform(
    ws: &Workspace,
    registry: &Registry,
    platform: &PlatformPlan,
    timeout_from: &str,
    progress: &Progress,
    cancel: watch::Receiver<bool>,
) -> Result<PlatformResult, LocalError> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + platform.timeout;
    let attempts = u32::try_from(platform.retries).unwrap_or(0) + 1;
    let mut attempt = 1;
    loop {
        let run = Attempt {
            ws,
            registry,
            platform,
            timeout_from,
            progress,
            started,
            deadline,
        };
        match run.once(cancel.clone()).await {
            Ok(digest) => {
                let elapsed = started.elapsed();
                progress.say(
                    Some(&platform.platform),
                    &format!("pushed {digest} ({:.1}s)", elapsed.as_secs_f64()),
                );
                let reference = match platform.push_target.strip_suffix(UNKNOWN_DIGEST) {
                    Some(repo) => format!("{repo}@{digest}"),
                    None => platform.push_target.clone(),
                };
                return Ok(PlatformResult {
                    platform: platform.platform.clone(),
                    reference,
                    digest,
                    elapsed,
                    emulated: is_foreign(&platform.platform),
                    attempts: attempt,
                });
            }
            Err(LocalError::Platform { message, .. }) if attempt < attempts => {
                progress.say(
                    Some(&platform.platform),
                    &format!("attempt {attempt} of {attempts} failed ({message}); retrying"),
                );
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

/// One attempt at building and pushing a platform.
struct Attempt<'a> {
    ws: &'a Workspace,
    registry: &'a Registry,
    platform: &'a PlatformPlan,
    timeout_from: &'a str,
    progress: &'a Progress,
    started: Instant,
    deadline: tokio::time::Instant,
}

impl Attempt<'_> {
    /// Builds and pushes, and returns the pushed digest.
    async fn once(&self, cancel: watch::Receiver<bool>) -> Result<String, LocalError> {
        match self.platform.strategy {
            Strategy::Buildah => self.once_buildah(cancel).await,
            Strategy::Buildkit => self.once_buildkit(cancel).await,
        }
    }

    /// BuildKit: one `buildctl-daemonless.sh` call builds into an OCI layout, with its own
    /// buildkitd state per platform under the run's storage; this process uploads it, and
    /// checks it against the digest in buildctl's metadata.
    async fn once_buildkit(&self, mut cancel: watch::Receiver<bool>) -> Result<String, LocalError> {
        let (ws, platform) = (self.ws, self.platform);
        let slug = platform.platform.slug();
        let log = ws.logs.join(format!("{slug}.log"));
        let storage = ws.storage.join(&slug);
        let failed = |message: String| LocalError::Platform {
            platform: platform.platform.to_string(),
            message,
            log: log.display().to_string(),
            tail: log_tail(&log, 25),
        };
        std::fs::create_dir_all(&storage)
            .map_err(|e| LocalError::tool("creating the BuildKit storage", e))?;
        // buildkitd's flags are split on spaces by the wrapper: these are the run's own paths.
        let mut flags = format!("--root {}", storage.join("buildkit").display());
        if !ws.trust.is_empty() {
            let config = super::buildkit::write_buildkitd_config(
                &storage,
                &ws.trust,
                ws.cert_dir.as_deref(),
            )
            .map_err(|e| LocalError::tool("writing buildkitd.toml", e))?;
            flags.push_str(&format!(" --config {}", config.display()));
        }
        let metadata = storage.join("metadata.json");
        let handoff = storage.join("image");
        let _ = std::fs::remove_file(&metadata);
        let _ = std::fs::remove_dir_all(&handoff);
        let mut argv = platform.build_argv.clone();
        argv.extend(platform.handoff_argv(&handoff.display().to_string()));
        argv.extend(platform.metadata_argv(&metadata.display().to_string()));
        let mut cmd = Command::new("buildctl-daemonless.sh");
        cmd.args(argv)
            .current_dir(&ws.checkout)
            .env("BUILDKITD_FLAGS", flags);
        // buildctl reads credentials from $DOCKER_CONFIG/config.json: the pull ones only.
        super::workspace::credential_env(&mut cmd, ws);
        self.progress
            .say(Some(&platform.platform), "building with BuildKit");
        match run_logged(cmd, &log, &mut cancel, Some(self.deadline)).await? {
            Ended::Exited(status) if status.success() => {}
            Ended::Exited(status) => {
                return Err(failed(format!(
                    "buildctl-daemonless.sh build exited with {status}"
                )));
            }
            Ended::TimedOut => {
                return Err(LocalError::PlatformTimedOut(Box::new(TimedOut {
                    platform: platform.platform.to_string(),
                    timeout: humantime::format_duration(platform.timeout).to_string(),
                    from: self.timeout_from.to_string(),
                    step: "build".to_string(),
                    log: log.display().to_string(),
                    tail: log_tail(&log, 25),
                })));
            }
        }
        let digest = super::buildkit::digest_from_metadata(&metadata).map_err(failed)?;
        self.upload(&handoff, &digest, &log, cancel).await
    }

    /// Uploads the image the builder wrote to `dir` (checked against `digest`, the builder's
    /// word) to the platform's push target, within the platform's deadline.
    async fn upload(
        &self,
        dir: &std::path::Path,
        digest: &str,
        log: &std::path::Path,
        mut cancel: watch::Receiver<bool>,
    ) -> Result<String, LocalError> {
        let platform = self.platform;
        let (repository, tag) = crate::cli::split_target(&platform.push_target)
            .map_err(|e| LocalError::tool("reading the push target", e))?;
        let timed_out = || {
            LocalError::PlatformTimedOut(Box::new(TimedOut {
                platform: platform.platform.to_string(),
                timeout: humantime::format_duration(platform.timeout).to_string(),
                from: self.timeout_from.to_string(),
                step: "push (upload by digest)".to_string(),
                log: log.display().to_string(),
                tail: log_tail(log, 25),
            }))
        };
        let upload = self
            .registry
            .upload_image(repository, tag, dir, Some(digest));
        tokio::select! {
            uploaded = upload => uploaded.map_err(|e| LocalError::Platform {
                platform: platform.platform.to_string(),
                message: format!("uploading by digest: {e}"),
                log: log.display().to_string(),
                tail: log_tail(log, 25),
            }),
            _ = tokio::time::sleep_until(self.deadline) => Err(timed_out()),
            _ = async {
                // A dropped sender is no Ctrl-C: wait on.
                if cancel.wait_for(|stop| *stop).await.is_err() {
                    std::future::pending::<()>().await;
                }
            } => Err(LocalError::Interrupted),
        }
    }

    /// buildah: `buildah build`, then `buildah push` to `dir:` (no credentials), which this
    /// process uploads.
    async fn once_buildah(&self, mut cancel: watch::Receiver<bool>) -> Result<String, LocalError> {
        let (ws, platform) = (self.ws, self.platform);
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
            super::workspace::credential_env(&mut cmd, ws);
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
        let ran = |ended: Ended, step: &str| match ended {
            Ended::Exited(status) if status.success() => Ok(()),
            Ended::Exited(status) => Err(failed(format!("buildah {step} exited with {status}"))),
            Ended::TimedOut => Err(LocalError::PlatformTimedOut(Box::new(TimedOut {
                platform: platform.platform.to_string(),
                timeout: humantime::format_duration(platform.timeout).to_string(),
                from: self.timeout_from.to_string(),
                step: step.to_string(),
                log: log.display().to_string(),
                tail: log_tail(&log, 25),
            }))),
        };

        self.progress.say(Some(&platform.platform), "building");
        let build = buildah(with_options(platform.build_argv.clone(), &extra));
        ran(
            run_logged(build, &log, &mut cancel, Some(self.deadline)).await?,
            "build",
        )?;
        self.progress.say(
            Some(&platform.platform),
            &format!(
                "built in {:.1}s; pushing {}",
                self.started.elapsed().as_secs_f64(),
                crate::plan::shown_push_target(&platform.push_target)
            ),
        );
        let digest_file = storage.join("digest");
        let handoff = storage.join("image");
        let _ = std::fs::remove_dir_all(&handoff);
        let push = with_options(
            platform.handoff_argv(&handoff.display().to_string()),
            &[
                "--digestfile".to_string(),
                digest_file.display().to_string(),
            ],
        );
        ran(
            run_logged(
                buildah(with_options(push, &extra)),
                &log,
                &mut cancel,
                Some(self.deadline),
            )
            .await?,
            "push",
        )?;
        let digest = std::fs::read_to_string(&digest_file)
            .map(|d| d.trim().to_string())
            .map_err(|e| failed(format!("buildah wrote no digest: {e}")))?;
        self.upload(&handoff, &digest, &log, cancel).await
    }
}

/// Where a platform's timeout comes from, for the message when it is exceeded.
fn timeout_from(spec: &ImageBuildSpec, platform: &PlatformPlan) -> String {
    let own = spec
        .platform_settings
        .iter()
        .find(|s| s.platform == platform.platform.to_string() && s.timeout.is_some());
    match (own, &spec.timeout) {
        (Some(_), _) => format!("spec.platformSettings[{}].timeout", platform.platform),
        (None, Some(_)) => "spec.timeout".to_string(),
        (None, None) => {
            "the default timeout; set spec.timeout or spec.platformSettings[].timeout".to_string()
        }
    }
}

/// A platform that failed although the run may go on without it (`allowFailure`).
#[derive(Debug)]
pub(super) struct Failed {
    pub(super) platform: PlatformPlan,
    pub(super) error: LocalError,
}

/// Builds every platform, `jobs` at once (0: all of them). Every platform runs to its end
/// even when another fails. Returns the platforms built, in the plan's order, and the
/// failures of platforms that `allowFailure`; the first failure of a platform that may not
/// fail (or Ctrl-C) is returned as the error.
pub(super) async fn build_platforms(
    ws: &Workspace,
    registry: &Registry,
    spec: &ImageBuildSpec,
    platforms: &[PlatformPlan],
    jobs: usize,
    progress: &Progress,
    cancel: &watch::Receiver<bool>,
) -> Result<(Vec<PlatformResult>, Vec<Failed>), LocalError> {
    let jobs = if jobs == 0 { platforms.len() } else { jobs };
    let permits = Semaphore::new(jobs.max(1));
    let heartbeat = std::io::stderr().is_terminal();
    let runs = platforms.iter().map(|platform| {
        let (permits, cancel) = (&permits, cancel.clone());
        let from = timeout_from(spec, platform);
        async move {
            let _permit = permits.acquire().await.expect("the semaphore is never closed");
            let work = build_platform(ws, registry, platform, &from, progress, cancel);
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
    let mut allowed = Vec::new();
    let mut first_error = None;
    for (platform, result) in platforms.iter().zip(futures::future::join_all(runs).await) {
        match result {
            Ok(r) => results.push(r),
            Err(LocalError::Interrupted) => return Err(LocalError::Interrupted),
            Err(error) if platform.allow_failure => {
                progress.say(
                    Some(&platform.platform),
                    "failed; it may (allowFailure), so the index is assembled without it",
                );
                allowed.push(Failed {
                    platform: platform.clone(),
                    error,
                });
            }
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None if results.is_empty() => Err(LocalError::NothingBuilt),
        None => Ok((results, allowed)),
    }
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
}
