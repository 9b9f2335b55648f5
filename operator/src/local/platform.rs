//! One platform built and pushed by buildah, and all of them built side by side.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use tokio::process::Command;
use tokio::sync::{Semaphore, watch};

use super::process::{log_tail, run_logged};
use super::progress::Progress;
use super::workspace::Workspace;
use super::{LocalError, PlatformResult};
use crate::plan::PlatformPlan;

/// Inserts local-only options before the `--` that ends a buildah argv.
fn with_options(mut argv: Vec<String>, extra: &[String]) -> Vec<String> {
    let end = argv.iter().position(|a| a == "--").unwrap_or(argv.len());
    argv.splice(end..end, extra.iter().cloned());
    argv
}

/// Builds and pushes one platform in its own storage, with buildah's output in
/// `logs/<platform>.log`.
async fn build_platform(
    ws: &Workspace,
    platform: &PlatformPlan,
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
    let push = platform.push_argv(&digest_file.display().to_string());
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

/// Builds every platform, `jobs` at once (0: all of them), and returns their results in
/// the plan's order. Every platform runs to its end even when another fails; the first
/// failure is the one returned.
pub(super) async fn build_platforms(
    ws: &Workspace,
    platforms: &[PlatformPlan],
    jobs: usize,
    progress: &Progress,
    cancel: &watch::Receiver<bool>,
) -> Result<Vec<PlatformResult>, LocalError> {
    let jobs = if jobs == 0 { platforms.len() } else { jobs };
    let permits = Semaphore::new(jobs.max(1));
    let heartbeat = std::io::stderr().is_terminal();
    let runs = platforms.iter().map(|platform| {
        let (permits, cancel) = (&permits, cancel.clone());
        async move {
            let _permit = permits.acquire().await.expect("the semaphore is never closed");
            let work = build_platform(ws, platform, progress, cancel);
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
    match first_error {
        Some(error) => Err(error),
        None => Ok(results),
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
