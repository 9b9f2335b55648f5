//! The BuildKit strategy on this machine: `buildctl-daemonless.sh` (which starts a buildkitd
//! for the one build and stops it after, as in the builder pod) with the plan's argv, writing
//! an OCI layout that this process uploads; buildctl's metadata file says which digest to
//! expect (its top-level `containerimage.digest`, parsed as JSON, nothing else).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use super::LocalError;
use crate::plan::trust::RegistryTrust;

/// What the BuildKit strategy runs: the one-shot wrapper and the two programs it starts.
pub(super) const TOOLS: [&str; 3] = ["buildctl-daemonless.sh", "buildctl", "buildkitd"];

/// Where `program` is on `path` (a `PATH` value), if it is there and executable.
fn find_on(path: &OsStr, program: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::split_paths(path)
        .map(|dir| dir.join(program))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Refuses a BuildKit run before any work when one of [`TOOLS`] is not on `path`, naming
/// each missing one and the two ways on.
pub(super) fn check_tools(path: Option<&OsStr>) -> Result<(), LocalError> {
    let path = path.unwrap_or_default();
    let missing: Vec<&str> = TOOLS
        .iter()
        .copied()
        .filter(|tool| find_on(path, tool).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(LocalError::MissingTool(format!(
        "spec.strategy is buildkit, but {} {} not on PATH; install BuildKit (the moby/buildkit release archive has buildctl and buildkitd, and examples/buildctl-daemonless/buildctl-daemonless.sh is the one-shot wrapper), or build this ImageBuild with spec.strategy: buildah",
        missing.join(", "),
        if missing.len() == 1 { "is" } else { "are" },
    )))
}

/// The image's digest from buildctl's `--metadata-file`: the top-level
/// `containerimage.digest` key of the JSON object (never a key of the same name, or ending
/// so, inside `containerimage.descriptor`'s annotations, which the build controls), only
/// when it is `sha256:` and 64 lowercase hex digits.
pub(super) fn digest_from_metadata(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("buildctl wrote no metadata file ({}): {e}", path.display()))?;
    let metadata: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("buildctl's metadata file is not JSON: {e}"))?;
    let digest = metadata["containerimage.digest"]
        .as_str()
        .unwrap_or_default();
    let valid = digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if valid {
        Ok(digest.to_string())
    } else {
        Err("buildctl's metadata file holds no valid containerimage.digest (sha256: and 64 lowercase hex digits)".to_string())
    }
}

/// buildkitd's configuration for this run: the registry trust settings rendered as the
/// cluster's BuildKit builders get them, each host's CA from the run's certificate directory.
pub(super) fn write_buildkitd_config(
    dir: &Path,
    trust: &RegistryTrust,
    cert_dir: Option<&Path>,
) -> std::io::Result<PathBuf> {
    let conf = trust.buildkitd_toml(|host| {
        let dir = cert_dir.expect("a certificate directory exists when a host has certificates");
        super::workspace::host_ca_file(dir, host)
            .display()
            .to_string()
    });
    let path = dir.join("buildkitd.toml");
    std::fs::write(&path, conf)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_is_named_with_the_way_on() {
        let empty = tempfile::tempdir().unwrap();
        let err = check_tools(Some(empty.path().as_os_str()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("buildctl-daemonless.sh, buildctl, buildkitd are not on PATH")
                && err.contains("spec.strategy: buildah"),
            "{err}"
        );
        // Only what is missing is named; a non-executable file does not count.
        use std::os::unix::fs::PermissionsExt;
        for (tool, mode) in [
            ("buildctl", 0o755),
            ("buildkitd", 0o755),
            ("buildctl-daemonless.sh", 0o644),
        ] {
            let file = empty.path().join(tool);
            std::fs::write(&file, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let err = check_tools(Some(empty.path().as_os_str()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("but buildctl-daemonless.sh is not on PATH"),
            "{err}"
        );
        let wrapper = empty.path().join("buildctl-daemonless.sh");
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(check_tools(Some(empty.path().as_os_str())).is_ok());
    }

    #[test]
    fn only_a_well_formed_digest_is_taken_from_the_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("metadata.json");
        let good = format!("sha256:{}", "0a".repeat(32));
        std::fs::write(&file, format!(r#"{{"containerimage.digest": "{good}"}}"#)).unwrap();
        assert_eq!(digest_from_metadata(&file), Ok(good.clone()));
        for bad in [
            format!("{good}0"),
            good[..good.len() - 1].to_string(),
            good.to_uppercase(),
            good.replace("sha256", "sha512"),
            String::new(),
        ] {
            std::fs::write(
                &file,
                serde_json::json!({"containerimage.digest": bad}).to_string(),
            )
            .unwrap();
            assert!(digest_from_metadata(&file).is_err(), "{bad}");
        }
        std::fs::write(&file, "not json").unwrap();
        assert!(digest_from_metadata(&file).is_err());
        assert!(digest_from_metadata(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn a_forged_digest_in_the_descriptor_annotations_never_wins() {
        // The annotations are the build's (LABEL, --opt annotation...): a key ending in
        // containerimage.digest there, first in the file, must not be read as the digest.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("metadata.json");
        let real = format!("sha256:{}", "1".repeat(64));
        let forged = format!("sha256:{}", "f".repeat(64));
        let text = format!(
            r#"{{
  "containerimage.descriptor": {{
    "annotations": {{"evil.containerimage.digest": "{forged}", "containerimage.digest": "{forged}"}},
    "digest": "{forged}",
    "mediaType": "application/vnd.oci.image.manifest.v1+json"
  }},
  "x-containerimage.digest": "{forged}",
  "containerimage.digest": "{real}"
}}"#
        );
        assert!(text.find(&forged) < text.find(&real));
        std::fs::write(&file, text).unwrap();
        assert_eq!(digest_from_metadata(&file), Ok(real));
        // Only there: a file with the forged keys alone holds no digest.
        std::fs::write(
            &file,
            format!(r#"{{"containerimage.descriptor": {{"annotations": {{"containerimage.digest": "{forged}"}}}}}}"#),
        )
        .unwrap();
        assert!(digest_from_metadata(&file).is_err());
    }

    #[test]
    fn insecure_registries_become_buildkitd_registry_entries() {
        let dir = tempfile::tempdir().unwrap();
        let trust = RegistryTrust::new(["127.0.0.1:5000".parse().unwrap()], []).unwrap();
        let path = write_buildkitd_config(dir.path(), &trust, None).unwrap();
        assert_eq!(
            std::fs::read_to_string(path).unwrap(),
            trust.buildkitd_toml(|_| unreachable!())
        );
        assert!(
            trust
                .buildkitd_toml(|_| unreachable!())
                .contains("[registry.\"127.0.0.1:5000\"]\n  http = true\n  insecure = true\n")
        );
    }
}
