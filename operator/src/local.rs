//! `archforge build --local`: one ImageBuild run on this machine, without a cluster.
//!
//! The same plan as the controller's Jobs: the commit is pinned with the same code, buildah
//! gets the same `build` and `push` argv (plus only local storage flags in front and, when
//! asked, a certificate directory), and the index is assembled by the same registry module.
//! git replaces git-sync, and foreign architectures run under qemu-user-static.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::process::Command;
use tokio::sync::{Semaphore, watch};

use crate::api::ImageBuild;
use crate::plan::{AuthFile, Platform, PlatformPlan, plan};
use crate::registry::{
    PlatformImage, PushedIndex, Registry, RegistryError, RegistryOptions, run_annotations,
};
use crate::settings::BuilderSettings;
use crate::source::{GitCredentials, SourceError, is_full_sha, redact_url, resolve_commit};

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

    /// `contextDir` or `dockerfile` is missing from the checkout or leads out of it.
    #[error("{0}")]
    SourcePath(String),

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

/// The Secrets that came with the ImageBuild, as further YAML documents of its file: each
/// one's keys with their values, `data` (base64) and `stringData` merged as the API server
/// merges them. Its `Debug` shows names only.
#[derive(Clone, Default)]
pub struct LocalSecrets(BTreeMap<String, BTreeMap<String, Vec<u8>>>);

impl std::fmt::Debug for LocalSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl LocalSecrets {
    /// The Secrets of the file that holds the ImageBuild.
    pub fn from_file(path: &str) -> Result<Self, LocalError> {
        let text = std::fs::read_to_string(path).map_err(|source| LocalError::ReadFile {
            path: path.to_string(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// The `kind: Secret` documents of `text`. Errors never quote the file: it holds secrets.
    pub fn parse(path: &str, text: &str) -> Result<Self, LocalError> {
        let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(text)
            .map_err(|_| LocalError::Credentials(format!("{path} is not valid YAML")))?;
        let mut secrets = BTreeMap::new();
        for document in documents {
            if document.get("kind").and_then(|k| k.as_str()) != Some("Secret") {
                continue;
            }
            let name = document
                .pointer("/metadata/name")
                .and_then(|n| n.as_str())
                .unwrap_or_default()
                .to_string();
            if name.is_empty() {
                return Err(LocalError::Credentials(format!(
                    "a Secret in {path} has no metadata.name"
                )));
            }
            // Only the field's path: serde's own message may quote the (secret) value.
            let secret: k8s_openapi::api::core::v1::Secret =
                serde_path_to_error::deserialize(document).map_err(|e| {
                    LocalError::Credentials(format!(
                        "Secret {name:?} in {path}: {} is not valid (data values are base64, stringData values plain strings)",
                        e.path()
                    ))
                })?;
            let mut values: BTreeMap<String, Vec<u8>> = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            for (k, v) in secret.string_data.unwrap_or_default() {
                values.insert(k, v.into_bytes());
            }
            secrets.insert(name, values);
        }
        Ok(LocalSecrets(secrets))
    }

    /// Whether no Secret came with the ImageBuild.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// How the git server of `spec.source.git` is authenticated to.
enum GitAuth {
    Anonymous,
    Basic {
        secret: String,
        credentials: GitCredentials,
    },
    Ssh {
        secret: String,
        key: Vec<u8>,
        known_hosts: Vec<u8>,
    },
}

fn is_http_url(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("http://")
}

/// The credentials `spec.source.git.credentialsSecret` names, checked for what the URL needs.
fn git_auth(build: &ImageBuild, secrets: &LocalSecrets) -> Result<GitAuth, LocalError> {
    let git = &build.spec.source.git;
    let Some(name) = &git.credentials_secret else {
        return Ok(GitAuth::Anonymous);
    };
    let values = secrets.0.get(name).ok_or_else(|| {
        LocalError::Credentials(format!(
            "spec.source.git.credentialsSecret names Secret {name:?}, which is not in the ImageBuild's file; add it there as another YAML document (---)"
        ))
    })?;
    let value = |key: &str, why: &str| {
        values
            .get(key)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| {
                LocalError::Credentials(format!(
                    "Secret {name:?} (spec.source.git.credentialsSecret) has no {key:?} key, which {why}"
                ))
            })
    };
    if is_http_url(&git.url) {
        let text = |key: &str| -> Result<String, LocalError> {
            let bytes = value(key, "an HTTP(S) git URL needs")?;
            let text = String::from_utf8(bytes).map_err(|_| {
                LocalError::Credentials(format!("the {key} of Secret {name:?} is not UTF-8"))
            })?;
            // git's credential protocol is line-based: a line break would add attributes.
            if text.contains(['\n', '\r', '\0']) {
                return Err(LocalError::Credentials(format!(
                    "the {key} of Secret {name:?} contains a line break or NUL"
                )));
            }
            Ok(text)
        };
        return Ok(GitAuth::Basic {
            secret: name.clone(),
            credentials: GitCredentials {
                username: text("username")?,
                password: text("password")?,
            },
        });
    }
    let mut key = value("ssh-privatekey", "an SSH git URL needs")?;
    // OpenSSH refuses a key file whose last line has no line break.
    if !key.ends_with(b"\n") {
        key.push(b'\n');
    }
    let known_hosts = value(
        "known_hosts",
        "SSH needs: the server's host key is checked strictly against it",
    )?;
    Ok(GitAuth::Ssh {
        secret: name.clone(),
        key,
        known_hosts,
    })
}

/// The environment every git command of a run gets, and the private directory holding the
/// SSH key and known_hosts, removed when this is dropped (right after the checkout, so no
/// build ever runs while the key is on disk).
struct GitAccess {
    env: Vec<(&'static str, OsString)>,
    /// The Secret in use, for messages.
    secret: Option<String>,
    http: Option<GitCredentials>,
    _dir: Option<tempfile::TempDir>,
}

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

impl GitAccess {
    fn new(auth: &GitAuth) -> Result<Self, LocalError> {
        // Only the protocols the spec allows: git would also run `ext::` URLs as commands.
        let mut env: Vec<(&'static str, OsString)> = vec![
            ("GIT_TERMINAL_PROMPT", "0".into()),
            ("GIT_ALLOW_PROTOCOL", "http:https:ssh:git".into()),
        ];
        let isolate = |env: &mut Vec<(&'static str, OsString)>| {
            // The machine's and the user's git config could hand the credentials to a
            // credential store or rewrite the URL (insteadOf) to another server.
            env.push(("GIT_CONFIG_NOSYSTEM", "1".into()));
            env.push(("GIT_CONFIG_GLOBAL", "/dev/null".into()));
        };
        match auth {
            GitAuth::Anonymous => Ok(GitAccess {
                env,
                secret: None,
                http: None,
                _dir: None,
            }),
            GitAuth::Basic {
                secret,
                credentials,
            } => {
                isolate(&mut env);
                // A fixed helper of ours; the values reach it through the environment, never argv.
                env.extend([
                    ("GIT_CONFIG_COUNT", "1".into()),
                    ("GIT_CONFIG_KEY_0", "credential.helper".into()),
                    (
                        "GIT_CONFIG_VALUE_0",
                        "!f() { test \"$1\" = get && printf 'username=%s\\npassword=%s\\n' \"$ARCHFORGE_GIT_USERNAME\" \"$ARCHFORGE_GIT_PASSWORD\"; }; f".into(),
                    ),
                    ("ARCHFORGE_GIT_USERNAME", credentials.username.clone().into()),
                    ("ARCHFORGE_GIT_PASSWORD", credentials.password.clone().into()),
                ]);
                Ok(GitAccess {
                    env,
                    secret: Some(secret.clone()),
                    http: Some(credentials.clone()),
                    _dir: None,
                })
            }
            GitAuth::Ssh {
                secret,
                key,
                known_hosts,
            } => {
                isolate(&mut env);
                let io = |step: &str, e: std::io::Error| LocalError::Tool {
                    step: step.to_string(),
                    message: e.to_string(),
                };
                // tempfile creates the directory 0700: only we can read the key.
                let dir = tempfile::Builder::new()
                    .prefix("archforge-ssh-")
                    .tempdir()
                    .map_err(|e| io("creating a directory for the SSH key", e))?;
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
                write_private(&key_path, key).map_err(|e| io("writing the SSH key", e))?;
                write_private(&known_hosts_path, known_hosts)
                    .map_err(|e| io("writing known_hosts", e))?;
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
                env.extend([
                    ("GIT_SSH_COMMAND", command.into()),
                    ("GIT_SSH_VARIANT", "ssh".into()),
                ]);
                Ok(GitAccess {
                    env,
                    secret: Some(secret.clone()),
                    http: None,
                    _dir: Some(dir),
                })
            }
        }
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
        if output.contains("Authentication failed") || output.contains("could not read Username") {
            return Some(format!(
                "the git server refused the credentials of Secret {secret:?} (spec.source.git.credentialsSecret)"
            ));
        }
        None
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
    let status = run_logged(cmd, log, cancel).await?;
    if status.success() {
        Ok(())
    } else {
        Err(access.failure(
            &format!("git {}", args.first().copied().unwrap_or_default()),
            format!("{status}; {}", log_tail(log, 5)),
        ))
    }
}

/// `git ls-remote` for URLs the smart-HTTP resolver does not speak (ssh, git://, file).
async fn ls_remote(access: &GitAccess, url: &str, reference: &str) -> Result<String, LocalError> {
    let out = access
        .command()
        .args(["ls-remote", "--", url, reference])
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| LocalError::Tool {
            step: "git ls-remote".into(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(access.failure(
            "git ls-remote",
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
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
async fn pin_commit(build: &ImageBuild, access: &GitAccess) -> Result<String, LocalError> {
    let git = &build.spec.source.git;
    if is_full_sha(&git.r#ref) {
        return Ok(git.r#ref.clone());
    }
    match resolve_commit(&git.url, &git.r#ref, access.http.as_ref()).await {
        Err(SourceError::UnsupportedScheme { .. }) => ls_remote(access, &git.url, &git.r#ref).await,
        other => Ok(other?),
    }
}

/// Fetches exactly `commit` into `dir`, like git-sync does in a Job.
async fn checkout(
    access: &GitAccess,
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

/// Resolves `spec.source.contextDir` and `spec.source.dockerfile` in the checkout, following
/// every symlink, and refuses what is missing or lies outside the checkout: a committed
/// `rootlink -> /` as contextDir would make the machine's root filesystem, push credentials
/// included, the build context. Also refuses credentials files inside the checkout.
fn check_source_paths(
    build: &ImageBuild,
    commit: &str,
    checkout: &Path,
    options: &LocalOptions,
) -> Result<(), LocalError> {
    let source = &build.spec.source;
    let root = checkout.canonicalize().map_err(|e| LocalError::Tool {
        step: "reading the checkout".into(),
        message: e.to_string(),
    })?;
    let resolve = |field: &str, shown: &str, relative: &Path| -> Result<PathBuf, LocalError> {
        let path = root.join(relative);
        let resolved = match path.canonicalize() {
            Ok(p) => p,
            // A link pointing out of the checkout at nothing is still a link out of it.
            Err(_) if escapes(&root, &path) => {
                return Err(LocalError::SourcePath(format!(
                    "spec.source.{field} {shown:?} resolves outside the repository (through a symlink)"
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LocalError::SourcePath(format!(
                    "spec.source.{field} {shown:?} does not exist in the repository at commit {commit}"
                )));
            }
            Err(e) => {
                return Err(LocalError::SourcePath(format!(
                    "spec.source.{field} {shown:?} cannot be read in the checkout: {e}"
                )));
            }
        };
        if !resolved.starts_with(&root) {
            return Err(LocalError::SourcePath(format!(
                "spec.source.{field} {shown:?} resolves outside the repository (through a symlink)"
            )));
        }
        Ok(resolved)
    };
    let context_dir = source.context_dir.trim_end_matches('/');
    let context_dir = if context_dir.is_empty() {
        "."
    } else {
        context_dir
    };
    let context = resolve("contextDir", &source.context_dir, Path::new(context_dir))?;
    if !context.is_dir() {
        return Err(LocalError::SourcePath(format!(
            "spec.source.contextDir {:?} is not a directory in the repository at commit {commit}",
            source.context_dir
        )));
    }
    // Resolved from the unresolved contextDir, exactly as buildah's --file is.
    let dockerfile = resolve(
        "dockerfile",
        &source.dockerfile,
        &Path::new(context_dir).join(&source.dockerfile),
    )?;
    if !dockerfile.is_file() {
        return Err(LocalError::SourcePath(format!(
            "spec.source.dockerfile {:?} (in contextDir {:?}) is not a file in the repository at commit {commit}",
            source.dockerfile, source.context_dir
        )));
    }
    for file in options.docker_config.iter().chain(&options.ca_files) {
        if Path::new(file)
            .canonicalize()
            .is_ok_and(|f| f.starts_with(&root))
        {
            return Err(LocalError::SourcePath(format!(
                "{file} lies inside the checkout, where a build could copy it into the image; keep credentials and certificates elsewhere"
            )));
        }
    }
    Ok(())
}

/// Whether `path`'s deepest existing ancestor (links followed) lies outside `root`.
fn escapes(root: &Path, path: &Path) -> bool {
    path.ancestors()
        .skip(1)
        .find_map(|a| a.canonicalize().ok())
        .is_some_and(|a| !a.starts_with(root))
        || std::fs::read_link(path).is_ok_and(|target| {
            let parent = path.parent().and_then(|p| p.canonicalize().ok());
            let target = parent.unwrap_or_else(|| root.to_path_buf()).join(target);
            !normalize(&target).starts_with(root)
        })
}

/// `path` with `.` and `..` removed lexically, for a link target that does not exist.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
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
    let progress = Progress {
        started: Instant::now(),
    };
    let valid = crate::validation::ValidSpec::check(build)?;
    let auth = match &options.docker_config {
        Some(path) => AuthFile::Path(path),
        None => AuthFile::None,
    };
    let access = GitAccess::new(&git_auth(build, secrets)?)?;
    let commit = pin_commit(build, &access).await?;
    let plan = plan(&valid, &BuilderSettings::default(), &commit, auth);
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
        &access,
        build,
        &commit,
        &ws.checkout,
        &ws.logs.join("git.log"),
        &mut checkout_cancel,
    )
    .await?;
    // The SSH key leaves the disk before any build runs.
    drop(access);
    check_source_paths(build, &commit, &ws.checkout, options)?;

    let jobs = if options.jobs == 0 {
        plan.platforms.len()
    } else {
        options.jobs
    };
    let permits = Arc::new(Semaphore::new(jobs.max(1)));
    let heartbeat = std::io::stderr().is_terminal();
    let runs = plan.platforms.iter().map(|platform| {
        let permits = permits.clone();
        let (ws, progress, cancel) = (ws.clone(), progress.clone(), cancel.clone());
        async move {
            let _permit = permits.acquire().await.expect("the semaphore is never closed");
            let work = build_platform(&ws, platform, &progress, cancel);
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

    const FILE: &str = "apiVersion: archforge.dev/v1alpha1\nkind: ImageBuild\nmetadata:\n  name: app\nspec:\n  source:\n    git:\n      url: git@example.com:team/app.git\n      credentialsSecret: git\n  platforms: [linux/amd64]\n  output:\n    image: registry.example.com/team/app:v1\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: git\ndata:\n  ssh-privatekey: a2V5LWJ5dGVz\nstringData:\n  known_hosts: example.com ssh-ed25519 AAAA\n";

    #[test]
    fn secrets_of_the_file_merge_data_and_string_data() {
        let secrets = LocalSecrets::parse("ib.yaml", FILE).unwrap();
        assert_eq!(
            format!("{secrets:?}"),
            r#"{"git"}"#,
            "Debug shows names only"
        );
        let build = crate::manifest::parse_imagebuild("ib.yaml", FILE).unwrap();
        match git_auth(&build, &secrets).unwrap() {
            GitAuth::Ssh {
                key, known_hosts, ..
            } => {
                assert_eq!(
                    key, b"key-bytes\n",
                    "a final line break is added for OpenSSH"
                );
                assert_eq!(known_hosts, b"example.com ssh-ed25519 AAAA");
            }
            _ => panic!("an scp-like URL takes the SSH keys"),
        }
    }

    #[test]
    fn missing_secrets_and_keys_are_named() {
        let build = crate::manifest::parse_imagebuild("ib.yaml", FILE).unwrap();
        let err = git_auth(&build, &LocalSecrets::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(
                "credentialsSecret names Secret \"git\", which is not in the ImageBuild's file"
            ),
            "{err}"
        );
        let without_known_hosts = FILE.replace("  known_hosts: example.com ssh-ed25519 AAAA\n", "");
        let secrets = LocalSecrets::parse("ib.yaml", &without_known_hosts).unwrap();
        let err = git_auth(&build, &secrets).err().unwrap().to_string();
        assert!(err.contains("has no \"known_hosts\" key"), "{err}");
    }

    #[test]
    fn unreadable_secret_values_are_not_quoted() {
        // serde's own message would quote it: "invalid type: integer `31337424242`".
        let broken = FILE.replace("a2V5LWJ5dGVz", "31337424242");
        let err = LocalSecrets::parse("ib.yaml", &broken)
            .unwrap_err()
            .to_string();
        assert!(err.contains("data.ssh-privatekey"), "{err}");
        assert!(!err.contains("31337424242"), "{err}");
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
