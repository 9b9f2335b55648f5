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
        let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        // Whatever the leader did: a member of the group may ignore SIGTERM (a daemon a RUN
        // step started). Signalling a group with no process left is harmless (ESRCH).
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = child.wait().await;
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

    /// Whether `pid` is a live process (a zombie, waiting for a reaper, is not).
    fn running(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| stat.rsplit(')').next().map(|rest| rest.trim().to_string()))
            .is_some_and(|rest| !rest.starts_with('Z'))
    }

    #[tokio::test]
    async fn a_group_member_that_ignores_sigterm_does_not_outlive_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let log = dir.path().join("log");
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!(
            "(trap '' TERM; sleep 300 & echo $! > {}; wait) & sleep 1; exec sleep 300",
            pidfile.display()
        ));
        let (_tx, mut rx) = watch::channel(false);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let ended = run_logged(cmd, &log, &mut rx, Some(deadline))
            .await
            .unwrap();
        assert!(matches!(ended, Ended::TimedOut));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let alive = running(pid);
        if alive {
            // SAFETY: cleaning up the test's own process.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        assert!(!alive, "pid {pid} of the timed-out group is still running");
    }
}
