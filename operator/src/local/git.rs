//! git in place of git-sync: the credentials wired into git's environment, the commit pinned,
//! exactly that commit fetched.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use tokio::process::Command;
use tokio::sync::watch;

use super::LocalError;
use super::process::{Captured, Ended, log_tail, run_captured, run_logged};
use super::secrets::GitAuth;
use crate::api::ImageBuild;
use crate::source::{GitCredentials, SourceError, is_full_sha, redact_url, resolve_commit};

/// The environment every git command of a run gets, and the private directory holding the
/// SSH key and known_hosts, removed when this is dropped (right after the checkout, so no
/// build ever runs while the key is on disk).
pub(super) struct GitAccess {
    env: Vec<(&'static str, OsString)>,
    /// The Secret in use, for messages.
    secret: Option<String>,
    http: Option<GitCredentials>,
    /// The scheme://host[:port] the HTTP credentials are given to.
    origin: Option<String>,
    /// When every git command of the source's fetch must have ended: a server that stalls
    /// (or trickles) would otherwise hold `build --local` forever.
    limit: SourceLimit,
    _dir: Option<tempfile::TempDir>,
}

/// The time the source's lookup and fetch may take, all commands together (a Job's
/// git-sync has its Job's activeDeadlineSeconds, the platform timeout; locally the spec's
/// timeout plays that part).
#[derive(Clone, Debug)]
pub(super) struct SourceLimit {
    pub(super) deadline: tokio::time::Instant,
    /// The timeout as written, and where it comes from, for the message.
    pub(super) timeout: String,
    pub(super) from: &'static str,
}

/// Most bytes of `git ls-remote` output read: the smart-HTTP lookup's cap, so a server that
/// advertises refs without end stops at the same size whatever the protocol.
pub(super) const LS_REMOTE_CAP: usize = crate::source::MAX_ADVERTISEMENT_BYTES;

/// git's own low-speed limit for HTTP: a transfer slower than this many bytes a second for
/// [`LOW_SPEED_SECONDS`] is abandoned long before the deadline.
const LOW_SPEED_BYTES: &str = "1000";
const LOW_SPEED_SECONDS: &str = "60";

/// Characters a path may hold to be passed inside GIT_SSH_COMMAND (a shell string) and as an
/// ssh option value (split on white space by ssh) without any quoting.
fn plain_path(path: &Path) -> Option<&str> {
    path.to_str().filter(|p| {
        p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
    })
}

fn write_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(content)
}

/// Writes the key and known_hosts to a private directory and returns it with the
/// GIT_SSH_COMMAND that uses them.
fn ssh_files(key: &[u8], known_hosts: &[u8]) -> Result<(tempfile::TempDir, String), LocalError> {
    // tempfile creates the directory 0700: only we can read the key.
    let dir = tempfile::Builder::new()
        .prefix("archforge-ssh-")
        .tempdir()
        .map_err(|e| LocalError::tool("creating a directory for the SSH key", e))?;
    let key_path = dir.path().join("id");
    let known_hosts_path = dir.path().join("known_hosts");
    let (Some(key_arg), Some(known_hosts_arg)) =
        (plain_path(&key_path), plain_path(&known_hosts_path))
    else {
        return Err(LocalError::Tool {
            step: "preparing SSH".into(),
            message: format!(
                "the temporary directory {} holds characters an ssh command line cannot carry safely; set TMPDIR to a path of letters, digits and /._-",
                dir.path().display()
            ),
        });
    };
    write_private(&key_path, key).map_err(|e| LocalError::tool("writing the SSH key", e))?;
    write_private(&known_hosts_path, known_hosts)
        .map_err(|e| LocalError::tool("writing known_hosts", e))?;
    // Only our own paths and fixed options: -F /dev/null keeps ~/.ssh/config
    // (ProxyCommand, other identities) out; the agent's keys are not offered;
    // an unknown or changed host key ends the connection.
    let command = format!(
        "ssh -F /dev/null -i {key_arg} -o IdentitiesOnly=yes -o IdentityAgent=none \
         -o StrictHostKeyChecking=yes -o UserKnownHostsFile={known_hosts_arg} \
         -o GlobalKnownHostsFile=/dev/null -o UpdateHostKeys=no -o BatchMode=yes \
         -o PasswordAuthentication=no -o KbdInteractiveAuthentication=no \
         -o ControlMaster=no -o ControlPath=none"
    );
    Ok((dir, command))
}

/// `url`'s scheme://host[:port], the only place git's credential helper answers for (as
/// `credential.<origin>.helper`): git asks its helpers about whatever host a redirect leads
/// to, and an unscoped helper would hand the Secret's password to that host.
fn origin(url: &str) -> Result<String, LocalError> {
    reqwest::Url::parse(url)
        .ok()
        .map(|u| u.origin())
        .filter(|o| o.is_tuple())
        .map(|o| o.ascii_serialization())
        .ok_or_else(|| {
            LocalError::Credentials(format!(
                "spec.source.git.url {:?} has no scheme://host to scope its credentials to",
                redact_url(url)
            ))
        })
}

impl GitAccess {
    /// The environment for fetching `url` with `auth`.
    pub(super) fn new(url: &str, auth: &GitAuth, limit: SourceLimit) -> Result<Self, LocalError> {
        let mut access = GitAccess {
            // Only the protocols the spec allows: git would also run `ext::` URLs as commands.
            env: vec![
                ("GIT_TERMINAL_PROMPT", "0".into()),
                ("GIT_ALLOW_PROTOCOL", "http:https:ssh:git".into()),
                ("GIT_HTTP_LOW_SPEED_LIMIT", LOW_SPEED_BYTES.into()),
                ("GIT_HTTP_LOW_SPEED_TIME", LOW_SPEED_SECONDS.into()),
            ],
            secret: None,
            http: None,
            origin: None,
            limit,
            _dir: None,
        };
        let secret = match auth {
            GitAuth::Anonymous => return Ok(access),
            GitAuth::Basic { secret, .. } | GitAuth::Ssh { secret, .. } => secret,
        };
        access.secret = Some(secret.clone());
        // The machine's and the user's git config could hand the credentials to a
        // credential store or rewrite the URL (insteadOf) to another server.
        access.env.extend([
            ("GIT_CONFIG_NOSYSTEM", "1".into()),
            ("GIT_CONFIG_GLOBAL", "/dev/null".into()),
        ]);
        match auth {
            GitAuth::Anonymous => {}
            GitAuth::Basic { credentials, .. } => {
                // A fixed helper of ours; the values reach it through the environment, never argv.
                let origin = origin(url)?;
                access.env.extend([
                    ("GIT_CONFIG_COUNT", "1".into()),
                    ("GIT_CONFIG_KEY_0", format!("credential.{origin}.helper").into()),
                    (
                        "GIT_CONFIG_VALUE_0",
                        "!f() { test \"$1\" = get && printf 'username=%s\\npassword=%s\\n' \"$ARCHFORGE_GIT_USERNAME\" \"$ARCHFORGE_GIT_PASSWORD\"; }; f".into(),
                    ),
                    ("ARCHFORGE_GIT_USERNAME", credentials.username.clone().into()),
                    ("ARCHFORGE_GIT_PASSWORD", credentials.password.clone().into()),
                ]);
                access.http = Some(credentials.clone());
                access.origin = Some(origin);
            }
            GitAuth::Ssh {
                key, known_hosts, ..
            } => {
                let (dir, command) = ssh_files(key, known_hosts)?;
                access.env.extend([
                    ("GIT_SSH_COMMAND", command.into()),
                    ("GIT_SSH_VARIANT", "ssh".into()),
                ]);
                access._dir = Some(dir);
            }
        }
        Ok(access)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("git");
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// What a failed git command's output means, when it is about the credentials.
    fn explain(&self, output: &str) -> Option<String> {
        let secret = self.secret.as_deref().unwrap_or("(none)");
        if output.contains("Host key verification failed") {
            return Some(format!(
                "host key verification failed: the SSH server's host key is not in the known_hosts of Secret {secret:?} (spec.source.git.credentialsSecret), and host keys are checked strictly. Add the server's key there after checking it (ssh-keyscan prints it; \"[host]:port\" when the port is not 22)"
            ));
        }
        if output.contains("Permission denied (publickey") {
            return Some(format!(
                "the SSH server refused the key in ssh-privatekey of Secret {secret:?} (spec.source.git.credentialsSecret)"
            ));
        }
        // git names the server it wanted credentials for; not ours means a redirect.
        if let Some(origin) = &self.origin
            && let Some(asked) = output
                .split("could not read Username for '")
                .nth(1)
                .and_then(|rest| rest.split('\'').next())
            && asked.trim_end_matches('/') != origin
        {
            return Some(format!(
                "the git server redirected to {asked}, which asked for credentials; those of Secret {secret:?} (spec.source.git.credentialsSecret) are only given to {origin}, the host of spec.source.git.url. Use the URL the server redirects to, if it is trusted"
            ));
        }
        if output.contains("Authentication failed") || output.contains("could not read Username") {
            return Some(format!(
                "the git server refused the credentials of Secret {secret:?} (spec.source.git.credentialsSecret)"
            ));
        }
        None
    }

    /// The error of a git command stopped at the deadline.
    fn timed_out(&self, step: &str, url: &str) -> LocalError {
        LocalError::SourceTimedOut {
            step: step.to_string(),
            url: redact_url(url),
            timeout: self.limit.timeout.clone(),
            from: self.limit.from,
        }
    }

    fn failure(&self, step: &str, output: String) -> LocalError {
        let message = match self.explain(&output) {
            Some(why) => format!("{why}\n{output}"),
            None => output,
        };
        LocalError::Tool {
            step: step.to_string(),
            message,
        }
    }
}

async fn git(
    access: &GitAccess,
    args: &[&str],
    cwd: &Path,
    log: &Path,
    cancel: &mut watch::Receiver<bool>,
) -> Result<(), LocalError> {
    let mut cmd = access.command();
    cmd.args(args).current_dir(cwd);
    let step = format!("git {}", args.first().copied().unwrap_or_default());
    let ended = run_logged(cmd, log, cancel, Some(access.limit.deadline)).await?;
    let Ended::Exited(status) = ended else {
        let url = args.iter().skip_while(|a| **a != "--").nth(1);
        return Err(access.timed_out(&step, url.copied().unwrap_or_default()));
    };
    if status.success() {
        Ok(())
    } else {
        Err(access.failure(&step, format!("{status}; {}", log_tail(log, 5))))
    }
}

/// `git ls-remote` for URLs the smart-HTTP resolver does not speak (ssh, git://, file):
/// cancellable, within the source's deadline, and read up to [`LS_REMOTE_CAP`] only.
async fn ls_remote(
    access: &GitAccess,
    url: &str,
    reference: &str,
    log: &Path,
    cancel: &mut watch::Receiver<bool>,
) -> Result<String, LocalError> {
    let mut cmd = access.command();
    cmd.args(["ls-remote", "--", url, reference]);
    let out = match run_captured(cmd, log, LS_REMOTE_CAP, cancel, Some(access.limit.deadline))
        .await?
    {
        Captured::Exited(status, out) if status.success() => out,
        Captured::Exited(status, _) => {
            return Err(access.failure("git ls-remote", format!("{status}; {}", log_tail(log, 5))));
        }
        Captured::TimedOut => return Err(access.timed_out("git ls-remote", url)),
        Captured::TooLarge => {
            return Err(LocalError::Source(SourceError::AdvertisementTooLarge {
                url: redact_url(url),
                limit: LS_REMOTE_CAP,
            }));
        }
    };
    let text = String::from_utf8_lossy(&out);
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
pub(super) async fn pin_commit(
    build: &ImageBuild,
    access: &GitAccess,
    log: &Path,
    cancel: &mut watch::Receiver<bool>,
) -> Result<String, LocalError> {
    let git = &build.spec.source.git;
    if is_full_sha(&git.r#ref) {
        return Ok(git.r#ref.clone());
    }
    let lookup = resolve_commit(&git.url, &git.r#ref, access.http.as_ref());
    let resolved = tokio::select! {
        resolved = lookup => resolved,
        _ = cancel.wait_for(|stop| *stop) => return Err(LocalError::Interrupted),
        () = tokio::time::sleep_until(access.limit.deadline) => {
            return Err(access.timed_out("looking up the ref", &git.url));
        }
    };
    match resolved {
        Err(SourceError::UnsupportedScheme { .. }) => {
            ls_remote(access, &git.url, &git.r#ref, log, cancel).await
        }
        other => Ok(other?),
    }
}

/// Fetches exactly `commit` into `dir`, like git-sync does in a Job.
pub(super) async fn checkout(
    access: &GitAccess,
    build: &ImageBuild,
    commit: &str,
    dir: &Path,
    log: &Path,
    cancel: &mut watch::Receiver<bool>,
) -> Result<(), LocalError> {
    let git_spec = &build.spec.source.git;
    std::fs::create_dir_all(dir).map_err(|e| LocalError::tool("creating the checkout", e))?;
    git(access, &["init", "-q"], dir, log, cancel).await?;
    let depth = format!("--depth={}", git_spec.depth.unwrap_or(1));
    let mut fetch = vec!["fetch", "-q"];
    if git_spec.depth != Some(0) {
        fetch.push(&depth);
    }
    fetch.extend(["--", &git_spec.url, commit]);
    if git(access, &fetch, dir, log, cancel).await.is_err() {
        // Servers that refuse to serve a commit by SHA still serve the ref it came from.
        let mut by_ref = fetch.clone();
        *by_ref.last_mut().expect("fetch has a refspec") = &git_spec.r#ref;
        git(access, &by_ref, dir, log, cancel).await?;
    }
    git(
        access,
        &["-c", "advice.detachedHead=false", "checkout", "-q", commit],
        dir,
        log,
        cancel,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credential_helper_is_scoped_to_the_repositorys_origin() {
        let key = |url: &str| {
            let auth = GitAuth::Basic {
                secret: "git".into(),
                credentials: GitCredentials {
                    username: "bot".into(),
                    password: "pw".into(),
                },
            };
            let limit = SourceLimit {
                deadline: tokio::time::Instant::now(),
                timeout: "1s".into(),
                from: "spec.timeout",
            };
            let access = GitAccess::new(url, &auth, limit).unwrap();
            let value = |name: &str| {
                let found = access.env.iter().find(|(k, _)| *k == name);
                found.map(|(_, v)| v.to_string_lossy().into_owned())
            };
            assert_eq!(value("GIT_CONFIG_COUNT").as_deref(), Some("1"));
            value("GIT_CONFIG_KEY_0").unwrap()
        };
        assert_eq!(
            key("https://git.example.com/team/app.git"),
            "credential.https://git.example.com.helper"
        );
        assert_eq!(
            key("http://bot@127.0.0.1:8080/cgi-bin/git/app.git"),
            "credential.http://127.0.0.1:8080.helper"
        );
        // The default port is git's default too.
        assert_eq!(
            key("https://git.example.com:443/app.git"),
            "credential.https://git.example.com.helper"
        );
    }
}
