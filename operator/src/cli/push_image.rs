//! `archforge push-image` (hidden): the builder pod's `push` container. It runs after the
//! `builder` init container has written the image to the handoff volume and exited, in the
//! operator's own image, where no user code runs: it alone holds the push credentials. It
//! uploads the image by digest (and to the platform tag, when there is one) and writes the
//! digest to the termination log, which is where the operator reads it from.

use std::path::PathBuf;

use crate::plan::trust::{MAX_CA_BYTES, RegistryHost};
use crate::plan::{UNKNOWN_DIGEST, output_repository};
use crate::registry::{DockerConfig, Registry, RegistryOptions};

#[derive(clap::Args, Debug)]
pub struct PushImageArgs {
    /// The handed-off image: buildah's `dir:` directory or an OCI image layout.
    #[arg(long)]
    pub dir: PathBuf,

    /// Where to push: `HOST/REPO@@unknown-digest@@` (by digest only) or `HOST/REPO:TAG`.
    #[arg(long)]
    pub to: String,

    /// Docker config JSON with the push credentials (the push Secret); anonymous without.
    #[arg(long)]
    pub authfile: Option<String>,

    /// Where the pushed digest is written.
    #[arg(long, default_value = "/dev/termination-log")]
    pub termination_log: PathBuf,

    /// Registry reached over plain HTTP (repeatable), as the operator is configured.
    #[arg(long = "insecure-registry", value_parser = parse_host)]
    pub insecure_registries: Vec<RegistryHost>,

    /// Name of an environment variable holding PEM CA certificates to trust (repeatable):
    /// the registry CAs the operator is configured with, handed over by the Job.
    #[arg(long = "ca-env")]
    pub ca_envs: Vec<String>,
}

fn parse_host(text: &str) -> Result<RegistryHost, String> {
    text.parse()
        .map_err(|e: crate::plan::trust::TrustError| e.to_string())
}

/// The repository and, for a tag target, the tag of `to`.
pub fn split_target(to: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(repository) = to.strip_suffix(UNKNOWN_DIGEST) {
        return Ok((repository, None));
    }
    let repository = output_repository(to);
    match to[repository.len()..].strip_prefix(':') {
        Some(tag) if !tag.is_empty() => Ok((repository, Some(tag))),
        _ => Err(format!(
            "--to {to:?} is neither HOST/REPO{UNKNOWN_DIGEST} nor HOST/REPO:TAG"
        )),
    }
}

/// The registry options: credentials from `--authfile`, trust from the flags.
fn options(args: &PushImageArgs) -> Result<RegistryOptions, String> {
    let mut options = RegistryOptions {
        insecure: args
            .insecure_registries
            .iter()
            .map(|h| h.as_str().to_string())
            .collect(),
        ..Default::default()
    };
    if let Some(path) = &args.authfile {
        options.credentials = DockerConfig::from_file(path).map_err(|e| e.to_string())?;
    }
    let mut total = 0;
    for name in &args.ca_envs {
        let pem = std::env::var(name).map_err(|_| format!("--ca-env {name}: no such variable"))?;
        total += pem.len();
        if total > MAX_CA_BYTES {
            return Err(format!(
                "--ca-env: over {MAX_CA_BYTES} bytes of certificates"
            ));
        }
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(format!("--ca-env {name}: no PEM certificate in it"));
        }
        options.ca_pems.push(pem.into_bytes());
    }
    Ok(options)
}

/// Uploads the handed-off image and writes its digest to the termination log.
pub async fn push_image(args: &PushImageArgs) -> Result<String, String> {
    let (repository, tag) = split_target(&args.to)?;
    let registry = Registry::new(options(args)?);
    let digest = registry
        .upload_image(repository, tag, &args.dir, None)
        .await
        .map_err(|e| format!("pushing to {}: {e}", args.to))?;
    std::fs::write(&args.termination_log, &digest).map_err(|e| {
        format!(
            "pushed {digest}, but cannot write {}: {e}",
            args.termination_log.display()
        )
    })?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_into_repository_and_tag() {
        assert_eq!(
            split_target("r.example.com:5000/team/app@@unknown-digest@@"),
            Ok(("r.example.com:5000/team/app", None))
        );
        assert_eq!(
            split_target("r.example.com:5000/team/app:v1-linux-arm64"),
            Ok(("r.example.com:5000/team/app", Some("v1-linux-arm64")))
        );
        for bad in ["r.example.com:5000/team/app", "r.example.com/app:"] {
            assert!(split_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ca_variables_must_exist_and_hold_certificates() {
        let args = |envs: &[&str]| PushImageArgs {
            dir: PathBuf::from("/nonexistent"),
            to: "r.example.com/a:b".to_string(),
            authfile: None,
            termination_log: PathBuf::from("/nonexistent"),
            insecure_registries: vec!["r.example.com:5000".parse().unwrap()],
            ca_envs: envs.iter().map(|s| s.to_string()).collect(),
        };
        let err = options(&args(&["ARCHFORGE_TEST_NO_SUCH_CA_VARIABLE"])).unwrap_err();
        assert!(err.contains("no such variable"), "{err}");
        // PATH is set in every test environment and holds no certificate.
        let err = options(&args(&["PATH"])).unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
        let options = options(&args(&[])).unwrap();
        assert_eq!(options.insecure, ["r.example.com:5000"]);
    }
}
