//! The run's work directory: checkout, buildah storage, logs, and the registry configuration
//! buildah is given.

use std::path::{Path, PathBuf};

use super::{LocalError, LocalOptions};
use crate::plan::trust::{RegistryHost, RegistryTrust};

/// Where one run keeps its files; the temporary directory goes when this is dropped.
pub(super) struct Workspace {
    pub(super) checkout: PathBuf,
    pub(super) storage: PathBuf,
    pub(super) logs: PathBuf,
    pub(super) registries_conf: Option<PathBuf>,
    pub(super) cert_dir: Option<PathBuf>,
    /// The only registry credentials the build processes get: `spec.pullSecret`'s docker
    /// config, or one with no credentials (so that buildah and buildctl read no login of
    /// this machine's either). `config.json` in its own directory, for buildctl's
    /// DOCKER_CONFIG.
    pub(super) pull_auth: PathBuf,
    /// Whether [`Workspace::pull_auth`] holds credentials (`spec.pullSecret`).
    pub(super) has_pull_auth: bool,
    /// The registry trust settings, for BuildKit's buildkitd.toml.
    pub(super) trust: RegistryTrust,
    _root: tempfile::TempDir,
}

impl Workspace {
    /// A fresh work directory laid out for `options`: logs, and the registries.conf and
    /// certificate directory buildah is pointed at when `options` asks for them.
    pub(super) fn new(options: &LocalOptions, pull: Option<&[u8]>) -> Result<Self, LocalError> {
        let root = tempfile::Builder::new()
            .prefix("archforge-local-")
            .tempdir()
            .map_err(|e| LocalError::tool("creating a work directory", e))?;
        let logs = root.path().join("logs");
        std::fs::create_dir_all(&logs)
            .map_err(|e| LocalError::tool("creating the log directory", e))?;
        let registries_conf = if options.trust.insecure().is_empty() {
            None
        } else {
            Some(write_registries_conf(root.path(), &options.trust)?)
        };
        let cert_dir = if options.ca_files.is_empty() && options.trust.certificates().count() == 0 {
            None
        } else {
            Some(write_certificates(root.path(), options)?)
        };
        let pull_auth = write_pull_auth(root.path(), pull)?;
        Ok(Workspace {
            has_pull_auth: pull.is_some(),
            pull_auth,
            checkout: root.path().join("src"),
            storage: options
                .storage
                .clone()
                .unwrap_or_else(|| root.path().join("storage")),
            logs,
            registries_conf,
            cert_dir,
            trust: options.trust.clone(),
            _root: root,
        })
    }
}

/// `pull-auth/config.json`, mode 0600: `pull`, or a docker config with no credentials.
fn write_pull_auth(root: &Path, pull: Option<&[u8]>) -> Result<PathBuf, LocalError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = root.join("pull-auth");
    std::fs::create_dir_all(&dir).map_err(|e| LocalError::tool("creating pull-auth", e))?;
    let path = dir.join("config.json");
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(pull.unwrap_or(br#"{"auths":{}}"#)))
        .map_err(|e| LocalError::tool("writing the pull credentials", e))?;
    Ok(path)
}

/// The environment every build process of this run gets for registry credentials: only the
/// pull credentials file, and none of this process's own (`--docker-config` in
/// ARCHFORGE_DOCKER_CONFIG holds the push credentials).
pub(super) fn credential_env(cmd: &mut tokio::process::Command, ws: &Workspace) {
    cmd.env_remove("ARCHFORGE_DOCKER_CONFIG")
        .env("REGISTRY_AUTH_FILE", &ws.pull_auth)
        .env(
            "DOCKER_CONFIG",
            ws.pull_auth
                .parent()
                .expect("pull-auth/config.json has a parent"),
        );
}

/// containers-registries.conf(5) for buildah, given with CONTAINERS_REGISTRIES_CONF, which
/// replaces the machine's own: the plain-HTTP registries as the cluster's builders get them
/// (one renderer for both), and no search registries, so a short name is never resolved to
/// a registry nobody named.
fn write_registries_conf(root: &Path, trust: &RegistryTrust) -> Result<PathBuf, LocalError> {
    let conf = format!(
        "unqualified-search-registries = []\n{}",
        trust.registries_conf()
    );
    let path = root.join("registries.conf");
    std::fs::write(&path, conf).map_err(|e| LocalError::tool("writing registries.conf", e))?;
    Ok(path)
}

/// Where `build --local` keeps `host`'s CA bundle, in the certificate directory.
pub(super) fn host_ca_file(cert_dir: &Path, host: &RegistryHost) -> PathBuf {
    // The ConfigMap key form: a file name without ':' (IPv6 hosts keep their brackets).
    let name = host
        .config_map_key()
        .unwrap_or_else(|| host.as_str().replace(':', "_"));
    cert_dir.join(format!("registry-{name}.crt"))
}

/// One directory for buildah's `--cert-dir`: the `--ca-file` files and each registry host's
/// CA bundle. buildah trusts every certificate of a `--cert-dir` for every registry, as the
/// operator's own client does; builder pods scope each bundle to its host (certs.d).
fn write_certificates(root: &Path, options: &LocalOptions) -> Result<PathBuf, LocalError> {
    let dir = root.join("certs");
    std::fs::create_dir_all(&dir)
        .map_err(|e| LocalError::tool("creating the certificate directory", e))?;
    for (i, file) in options.ca_files.iter().enumerate() {
        std::fs::copy(file, dir.join(format!("ca-{i}.crt")))
            .map_err(|e| LocalError::tool(format!("copying {file}"), e))?;
    }
    for (host, pem) in options.trust.certificates() {
        std::fs::write(host_ca_file(&dir, host), pem)
            .map_err(|e| LocalError::tool(format!("writing the CA of registry {host}"), e))?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    /// `build --local` gets the registry trust as the builder pods do: the same rendered
    /// registries.conf entries, and each host's CA (in buildah's one --cert-dir).
    #[test]
    fn the_trust_settings_become_the_local_files() {
        let ca_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(ca_file.path(), PEM).unwrap();
        let trust = RegistryTrust::new(
            ["plain.internal:5000".parse().unwrap()],
            [("registry.internal:5000".parse().unwrap(), PEM.to_string())],
        )
        .unwrap();
        let options = LocalOptions {
            ca_files: vec![ca_file.path().display().to_string()],
            trust: trust.clone(),
            ..Default::default()
        };
        let ws = Workspace::new(&options, None).unwrap();
        let conf = std::fs::read_to_string(ws.registries_conf.as_ref().unwrap()).unwrap();
        assert_eq!(
            conf,
            format!(
                "unqualified-search-registries = []\n{}",
                trust.registries_conf()
            )
        );
        let certs = ws.cert_dir.as_ref().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(certs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["ca-0.crt", "registry-registry.internal_5000.crt"]);
        assert_eq!(ws.trust, trust);

        let none = Workspace::new(&LocalOptions::default(), None).unwrap();
        assert!(none.registries_conf.is_none() && none.cert_dir.is_none());
    }

    #[test]
    fn build_processes_get_the_pull_credentials_and_nothing_else() {
        let push = "/home/me/.docker/push-config.json";
        let options = LocalOptions {
            docker_config: Some(push.to_string()),
            ..Default::default()
        };
        let envs = |ws: &Workspace| -> Vec<(String, Option<String>)> {
            let mut cmd = tokio::process::Command::new("buildah");
            credential_env(&mut cmd, ws);
            cmd.as_std()
                .get_envs()
                .map(|(k, v)| {
                    let v = v.map(|v| v.to_string_lossy().into_owned());
                    (k.to_string_lossy().into_owned(), v)
                })
                .collect()
        };
        let pull = br#"{"auths":{"base.example.com":{"auth":"cHVsbDp0b2tlbg=="}}}"#;
        let ws = Workspace::new(&options, Some(pull)).unwrap();
        let set = envs(&ws);
        let file = ws.pull_auth.display().to_string();
        let dir = ws.pull_auth.parent().unwrap().display().to_string();
        assert!(set.contains(&("REGISTRY_AUTH_FILE".into(), Some(file))));
        assert!(set.contains(&("DOCKER_CONFIG".into(), Some(dir))));
        // The variable that may hold the push credentials' path is removed, not inherited.
        assert!(set.contains(&("ARCHFORGE_DOCKER_CONFIG".into(), None)));
        assert!(!set.iter().any(|(_, v)| v.as_deref() == Some(push)));
        assert_eq!(std::fs::read(&ws.pull_auth).unwrap(), pull);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&ws.pull_auth)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // Without spec.pullSecret: a file with no credentials, so no login of this machine's
        // (~/.docker/config.json, $XDG_RUNTIME_DIR/containers/auth.json) is read either.
        let ws = Workspace::new(&options, None).unwrap();
        assert!(!ws.has_pull_auth);
        assert_eq!(
            std::fs::read_to_string(&ws.pull_auth).unwrap(),
            r#"{"auths":{}}"#
        );
    }
}
