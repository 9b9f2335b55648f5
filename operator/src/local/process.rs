//! Running buildah and git with their output in a log file, and stopping them all on Ctrl-C.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
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
    cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err));
    let (mut child, program) = spawn_in_group(cmd)?;
    let interrupted = tokio::select! {
        status = child.wait() => {
            return status
                .map(Ended::Exited)
                .map_err(|e| LocalError::tool(format!("waiting for {program}"), e));
        }
        _ = cancel.wait_for(|stop| *stop) => true,
        () = expires(deadline) => false,
    };
    stop_group(&mut child).await;
    if interrupted {
        Err(LocalError::Interrupted)
    } else {
        Ok(Ended::TimedOut)
    }
}

/// How a process whose output was kept ended.
#[derive(Debug)]
pub(super) enum Captured {
    /// It exited; its standard output, whole.
    Exited(ExitStatus, Vec<u8>),
    /// The deadline passed first; the process group was stopped.
    TimedOut,
    /// It printed more than the cap allows; the process group was stopped.
    TooLarge,
}

/// Runs `cmd` like [`run_logged`], keeping its standard output in memory, at most `cap`
/// bytes: a process whose output comes from a server (git ls-remote of a user-chosen
/// repository) is stopped once it passes the cap, instead of growing without bound.
/// Standard error goes to `log`.
pub(super) async fn run_captured(
    mut cmd: Command,
    log: &Path,
    cap: usize,
    cancel: &mut watch::Receiver<bool>,
    deadline: Option<tokio::time::Instant>,
) -> Result<Captured, LocalError> {
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| LocalError::tool(format!("opening {}", log.display()), e))?;
    cmd.stdout(Stdio::piped()).stderr(Stdio::from(err));
    let (mut child, program) = spawn_in_group(cmd)?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    // Reading and the wait for the exit both race the cancel and the deadline: a process
    // may close its output and go on running.
    let finish = async {
        let mut kept = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match stdout.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) if kept.len() + n > cap => return Ok(None),
                Ok(n) => kept.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("reading what {program} printed: {e}")),
            }
        }
        match child.wait().await {
            Ok(status) => Ok(Some((status, kept))),
            Err(e) => Err(format!("waiting for {program}: {e}")),
        }
    };
    let outcome = tokio::select! {
        finished = finish => match finished {
            Ok(Some((status, kept))) => return Ok(Captured::Exited(status, kept)),
            Ok(None) => Ok(Captured::TooLarge),
            Err(message) => Err(LocalError::Tool { step: program.clone(), message }),
        },
        _ = cancel.wait_for(|stop| *stop) => Err(LocalError::Interrupted),
        () = expires(deadline) => Ok(Captured::TimedOut),
    };
    stop_group(&mut child).await;
    outcome
}

/// Starts `cmd` with no standard input as the leader of a new process group, killed when
/// dropped; returns it with its program's name, for messages.
fn spawn_in_group(mut cmd: Command) -> Result<(Child, String), LocalError> {
    cmd.stdin(Stdio::null()).process_group(0).kill_on_drop(true);
    let program = format!("{:?}", cmd.as_std().get_program());
    let child = cmd
        .spawn()
        .map_err(|e| LocalError::tool(format!("starting {program}"), e))?;
    Ok((child, program))
}

async fn expires(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Stops the whole process group `child` leads: SIGTERM, a few seconds, then SIGKILL.
async fn stop_group(child: &mut Child) {
    let Some(pgid) = child.id().map(|id| id as i32) else {
        return;
    };
    // SAFETY: kill(2) with a negative pid signals the process group we created.
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    // Whatever the leader did: a member of the group may ignore SIGTERM (a daemon a RUN
    // step started). Signalling a group with no process left is harmless (ESRCH).
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    let _ = child.wait().await;
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

    #[tokio::test]
    async fn a_captured_process_that_closes_its_output_still_ends_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        // Prints, closes its standard output, and goes on for a minute.
        cmd.arg("-c").arg("echo ref; exec >&-; exec sleep 60");
        let (_tx, mut rx) = watch::channel(false);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        let ended = run_captured(cmd, &dir.path().join("log"), 1024, &mut rx, Some(deadline))
            .await
            .unwrap();
        assert!(matches!(ended, Captured::TimedOut), "{ended:?}");
    }

    #[tokio::test]
    async fn captured_output_past_the_cap_stops_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("exec yes archforge");
        let (_tx, mut rx) = watch::channel(false);
        let ended = run_captured(cmd, &dir.path().join("log"), 1 << 20, &mut rx, None)
            .await
            .unwrap();
        assert!(matches!(ended, Captured::TooLarge), "{ended:?}");
    }
}
