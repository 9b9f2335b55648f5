//! Running buildah and git with their output in a log file, and stopping them all on Ctrl-C.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::Command;
use tokio::sync::watch;

use super::LocalError;

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// How a logged process ended.
#[derive(Debug)]
pub(super) enum Ended {
    Exited(ExitStatus),
    /// The deadline passed first; the process group was stopped.
    TimedOut,
}

/// Runs `cmd` in its own process group with output to `log`. When `cancel` fires or the
/// `deadline` passes, the whole group gets SIGTERM, then SIGKILL, so no builder process
/// outlives the run or its time.
pub(super) async fn run_logged(
    mut cmd: Command,
    log: &Path,
    cancel: &mut watch::Receiver<bool>,
    deadline: Option<tokio::time::Instant>,
) -> Result<Ended, LocalError> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| LocalError::tool(format!("opening {}", log.display()), e))?;
    let err = out.try_clone().expect("log file handle clones");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .process_group(0)
        .kill_on_drop(true);
    let program = format!("{:?}", cmd.as_std().get_program());
    let mut child = cmd
        .spawn()
        .map_err(|e| LocalError::tool(format!("starting {program}"), e))?;
    let pgid = child.id().map(|id| id as i32);
    let expired = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    let interrupted = tokio::select! {
        status = child.wait() => {
            return status
                .map(Ended::Exited)
                .map_err(|e| LocalError::tool(format!("waiting for {program}"), e));
        }
        _ = cancel.wait_for(|stop| *stop) => true,
        () = expired => false,
    };
    if let Some(pgid) = pgid {
        // SAFETY: kill(2) with a negative pid signals the process group we created.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_err()
        {
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait().await;
        }
    }
    if interrupted {
        Err(LocalError::Interrupted)
    } else {
        Ok(Ended::TimedOut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
