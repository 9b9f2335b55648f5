//! The command line's registry settings: credentials and trust. The trust settings (plain-HTTP
//! registries, CA certificates per registry host) are read and checked here, once, at start;
//! the operator's own client, every builder Job and `build --local` take what this returns.

use std::path::{Path, PathBuf};

use crate::plan::trust::{MAX_CA_BYTES, RegistryHost, RegistryTrust, TrustError};
use crate::registry::{DockerConfig, RegistryError, RegistryOptions};

/// How to reach registries; shared by every command that talks to one.
#[derive(clap::Args, Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryArgs {
    /// Docker config JSON with registry credentials (the format of ~/.docker/config.json
    /// and of kubernetes.io/dockerconfigjson Secrets), for this command's own pushes and
    /// reads (`index create`, `build --local`, `verify`). Anonymous when omitted. Not used
    /// by `run`: the operator pushes an ImageBuild's index, signatures and attestations
    /// only with that ImageBuild's spec.output.pushSecret (anonymously without one), never
    /// with more rights than the ImageBuild grants.
    #[arg(long, env = "ARCHFORGE_DOCKER_CONFIG")]
    pub docker_config: Option<String>,

    /// PEM file of CA certificates this process trusts for every registry, in addition to
    /// the system's (repeatable). Builder pods never see it: for the operator, give CAs with
    /// --registry-ca-dir, which reaches the builders too.
    #[arg(long = "ca-file")]
    pub ca_files: Vec<String>,

    #[command(flatten)]
    #[serde(flatten)]
    pub trust: RegistryTrustArgs,
}

/// Registry trust, configured once: the operator's own client, every builder pod (buildah's
/// registries.conf and certs.d, BuildKit's buildkitd.toml) and `build --local` all follow it.
#[derive(clap::Args, Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegistryTrustArgs {
    /// Registry (HOST or HOST:PORT) reached over plain HTTP instead of HTTPS, by the operator
    /// and by every builder (repeatable, or comma-separated in the environment).
    #[arg(
        long = "insecure-registry",
        env = "ARCHFORGE_INSECURE_REGISTRIES",
        value_delimiter = ',',
        value_parser = parse_host
    )]
    pub insecure_registries: Vec<RegistryHost>,

    /// Directory of CA certificates per registry host, as a ConfigMap mounts it: each file is
    /// named after a registry host, with '_' for the ':' before a port (ConfigMap keys allow
    /// no ':'; registry.internal_5000 is registry.internal:5000), and holds the PEM
    /// certificates of the CA that signs that registry's certificate. Names starting with
    /// '.' are skipped (a mounted ConfigMap's own entries). At most 64 KiB in all.
    #[arg(long, env = "ARCHFORGE_REGISTRY_CA_DIR")]
    pub registry_ca_dir: Option<PathBuf>,
}

fn parse_host(text: &str) -> Result<RegistryHost, String> {
    text.parse().map_err(|e: TrustError| e.to_string())
}

impl RegistryTrustArgs {
    /// Reads and checks the trust settings; any error stops the command before it starts.
    pub fn load(&self) -> Result<RegistryTrust, TrustError> {
        let certificates = match &self.registry_ca_dir {
            Some(dir) => read_ca_dir(dir)?,
            None => Vec::new(),
        };
        RegistryTrust::new(self.insecure_registries.clone(), certificates)
    }
}

/// The certificates of a `--registry-ca-dir`, in file name order. A file larger than all
/// certificates may be is refused before it is read.
fn read_ca_dir(dir: &Path) -> Result<Vec<(RegistryHost, String)>, TrustError> {
    let read_dir = |source| TrustError::ReadDir {
        dir: dir.display().to_string(),
        source,
    };
    let mut names: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_dir)? {
        let name = entry.map_err(read_dir)?.file_name();
        let name = name.to_string_lossy().into_owned();
        // A mounted ConfigMap keeps its data in `..data` and a dated `..2024_...` directory,
        // and links each key to them.
        if !name.starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    let mut certificates = Vec::new();
    for name in names {
        let path = dir.join(&name);
        let unreadable = |message: String| TrustError::ReadFile {
            path: path.display().to_string(),
            message,
        };
        let host = RegistryHost::from_config_map_key(&name)?;
        let size = std::fs::metadata(&path)
            .map_err(|e| unreadable(e.to_string()))?
            .len();
        if size > MAX_CA_BYTES as u64 {
            return Err(TrustError::TooLarge {
                total: usize::try_from(size).unwrap_or(usize::MAX),
                limit: MAX_CA_BYTES,
            });
        }
        let pem = std::fs::read_to_string(&path).map_err(|e| unreadable(e.to_string()))?;
        certificates.push((host, pem));
    }
    Ok(certificates)
}

impl RegistryArgs {
    /// The trust settings, read and checked (see [`RegistryTrustArgs::load`]).
    pub fn trust(&self) -> Result<RegistryTrust, TrustError> {
        self.trust.load()
    }

    /// This process's own registry client: credentials, `--ca-file`, and `trust`. A
    /// registry's CA is trusted for every registry here: the client takes extra roots for
    /// all hosts alike. The builders trust each CA for its own host only.
    pub fn options(&self, trust: &RegistryTrust) -> Result<RegistryOptions, RegistryError> {
        let mut options = RegistryOptions {
            insecure: trust
                .insecure()
                .iter()
                .map(|host| host.as_str().to_string())
                .collect(),
            ..Default::default()
        };
        if let Some(path) = &self.docker_config {
            options.credentials = DockerConfig::from_file(path)?;
        }
        for path in &self.ca_files {
            options.add_ca_file(path)?;
        }
        for (_, pem) in trust.certificates() {
            options.ca_pems.push(pem.as_bytes().to_vec());
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    /// A directory laid out as the kubelet mounts a ConfigMap: each key a link into a dated
    /// directory, `..data` pointing at it.
    fn config_map_dir(keys: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("..2025_01_01_00_00_00.000000001");
        std::fs::create_dir(&data).unwrap();
        for (key, value) in keys {
            std::fs::write(data.join(key), value).unwrap();
            std::os::unix::fs::symlink(format!("..data/{key}"), dir.path().join(key)).unwrap();
        }
        std::os::unix::fs::symlink(data.file_name().unwrap(), dir.path().join("..data")).unwrap();
        dir
    }

    fn load(dir: &Path, insecure: &[&str]) -> Result<RegistryTrust, TrustError> {
        RegistryTrustArgs {
            insecure_registries: insecure.iter().map(|h| h.parse().unwrap()).collect(),
            registry_ca_dir: Some(dir.to_path_buf()),
        }
        .load()
    }

    #[test]
    fn a_mounted_config_map_gives_each_host_its_certificates() {
        let dir = config_map_dir(&[("registry.internal_5000", PEM), ("other.internal", PEM)]);
        let trust = load(dir.path(), &["plain.internal:80"]).unwrap();
        let hosts: Vec<&str> = trust.certificates().map(|(h, _)| h.as_str()).collect();
        assert_eq!(hosts, ["other.internal", "registry.internal:5000"]);
        assert_eq!(trust.insecure()[0].as_str(), "plain.internal:80");

        let args = RegistryArgs {
            trust: RegistryTrustArgs::default(),
            ..Default::default()
        };
        let options = args.options(&trust).unwrap();
        assert_eq!(options.ca_pems.len(), 2);
        assert_eq!(options.insecure, ["plain.internal:80"]);
    }

    #[test]
    fn a_bad_directory_stops_the_start_with_what_is_wrong() {
        let missing = load(Path::new("/nonexistent/registry-ca"), &[]).unwrap_err();
        assert!(matches!(missing, TrustError::ReadDir { .. }), "{missing}");

        let dir = config_map_dir(&[("ca.crt", PEM)]);
        let err = load(dir.path(), &[]).unwrap_err().to_string();
        assert!(
            err.contains("\"ca.crt\"") && err.contains("registry.internal_5000"),
            "{err}"
        );

        let dir = config_map_dir(&[("registry.internal", "not a certificate")]);
        let err = load(dir.path(), &[]).unwrap_err().to_string();
        assert!(
            err.contains("registry.internal") && err.contains("PEM"),
            "{err}"
        );

        let huge = format!("{PEM}{}", "A".repeat(MAX_CA_BYTES));
        let dir = config_map_dir(&[("registry.internal", &huge)]);
        let err = load(dir.path(), &[]).unwrap_err().to_string();
        assert!(err.contains("65536"), "{err}");
    }
}
