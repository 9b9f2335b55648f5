//! The run's work directory: checkout, buildah storage, logs, and the registry configuration
//! buildah is given.

use std::path::{Path, PathBuf};

use super::{LocalError, LocalOptions};

/// Where one run keeps its files; the temporary directory goes when this is dropped.
pub(super) struct Workspace {
    pub(super) checkout: PathBuf,
    pub(super) storage: PathBuf,
    pub(super) logs: PathBuf,
    pub(super) registries_conf: Option<PathBuf>,
    pub(super) cert_dir: Option<PathBuf>,
    /// `host:port` of registries spoken to over plain HTTP (BuildKit's buildkitd.toml).
    pub(super) insecure_registries: Vec<String>,
    _root: tempfile::TempDir,
}

impl Workspace {
    /// A fresh work directory laid out for `options`: logs, and the registries.conf and
    /// certificate directory buildah is pointed at when `options` asks for them.
    pub(super) fn new(options: &LocalOptions) -> Result<Self, LocalError> {
        let root = tempfile::Builder::new()
            .prefix("archforge-local-")
            .tempdir()
            .map_err(|e| LocalError::tool("creating a work directory", e))?;
        let logs = root.path().join("logs");
        std::fs::create_dir_all(&logs)
            .map_err(|e| LocalError::tool("creating the log directory", e))?;
        let registries_conf = if options.insecure_registries.is_empty() {
            None
        } else {
            Some(write_registries_conf(
                root.path(),
                &options.insecure_registries,
            )?)
        };
        let cert_dir = if options.ca_files.is_empty() {
            None
        } else {
            Some(copy_certificates(root.path(), &options.ca_files)?)
        };
        Ok(Workspace {
            checkout: root.path().join("src"),
            storage: options
                .storage
                .clone()
                .unwrap_or_else(|| root.path().join("storage")),
            logs,
            registries_conf,
            cert_dir,
            insecure_registries: options.insecure_registries.clone(),
            _root: root,
        })
    }
}

/// containers-registries.conf(5): plain HTTP for the listed registries only.
fn write_registries_conf(root: &Path, insecure: &[String]) -> Result<PathBuf, LocalError> {
    // Written as TOML strings by serde_json, which escapes exactly as TOML basic strings need.
    let mut conf = String::from("unqualified-search-registries = []\n");
    for registry in insecure {
        let location = serde_json::to_string(registry).expect("a string serializes");
        conf.push_str(&format!(
            "\n[[registry]]\nlocation = {location}\ninsecure = true\n"
        ));
    }
    let path = root.join("registries.conf");
    std::fs::write(&path, conf).map_err(|e| LocalError::tool("writing registries.conf", e))?;
    Ok(path)
}

/// The CA files copied into one directory, for buildah's `--cert-dir`.
fn copy_certificates(root: &Path, ca_files: &[String]) -> Result<PathBuf, LocalError> {
    let dir = root.join("certs");
    std::fs::create_dir_all(&dir)
        .map_err(|e| LocalError::tool("creating the certificate directory", e))?;
    for (i, file) in ca_files.iter().enumerate() {
        std::fs::copy(file, dir.join(format!("ca-{i}.crt")))
            .map_err(|e| LocalError::tool(format!("copying {file}"), e))?;
    }
    Ok(dir)
}
