//! An independent verifier of what archforge signs: skopeo (containers/image) with a
//! `sigstoreSigned` policy for the public key, reading cosign's `sha256-<hex>.sig` tags
//! (`use-sigstore-attachments` in a registries.d directory); and `scripts/supply-check.py`,
//! which parses attestations with the in-toto project's own Python package.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::registry::TestRegistry;
use super::text;

/// A policy.json and a registries.d directory that trust only `public_pem` for `registry`.
pub struct SigstorePolicy {
    pub dir: tempfile::TempDir,
    pub policy: PathBuf,
    pub registries_d: PathBuf,
    pub public_key: PathBuf,
}

impl SigstorePolicy {
    pub fn new(registry: &TestRegistry, public_pem: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let public_key = dir.path().join("cosign.pub");
        std::fs::write(&public_key, public_pem).unwrap();
        let policy = dir.path().join("policy.json");
        // matchRepository: cosign's payload names the repository, not a tag (as `cosign sign`
        // writes it), so a tag reference must not be required to match exactly.
        let requirement = serde_json::json!([{
            "type": "sigstoreSigned",
            "keyPath": public_key,
            "signedIdentity": {"type": "matchRepository"},
        }]);
        std::fs::write(
            &policy,
            serde_json::to_vec_pretty(&serde_json::json!({
                "default": [{"type": "reject"}],
                "transports": {
                    "docker": {registry.addr.clone(): requirement},
                    "dir": {"": [{"type": "insecureAcceptAnything"}]},
                },
            }))
            .unwrap(),
        )
        .unwrap();
        let registries_d = dir.path().join("registries.d");
        std::fs::create_dir_all(&registries_d).unwrap();
        std::fs::write(
            registries_d.join("archforge-test.yaml"),
            format!(
                "docker:\n  {}:\n    use-sigstore-attachments: true\n",
                registry.addr
            ),
        )
        .unwrap();
        SigstorePolicy {
            dir,
            policy,
            registries_d,
            public_key,
        }
    }

    /// `skopeo copy` of `reference` to a fresh directory under this policy: whether it was
    /// accepted, and what skopeo (and the fallback check) said.
    ///
    /// Debian's skopeo 1.9 is built without sigstore verification ("Debian-local change:
    /// sigstore disabled"): it still reads cosign's attachments and copies the signatures it
    /// finds, but refuses every sigstoreSigned requirement. There, the same copy is made
    /// under an accept-anything policy and `supply-check.py signatures` applies the
    /// sigstoreSigned rules (key, digest, repository) to the signatures containers/image
    /// copied. A skopeo built with sigstore takes the policy path.
    pub fn copy(&self, registry: &TestRegistry, reference: &str, extra: &[&str]) -> (bool, String) {
        let out = self.skopeo_copy(registry, reference, extra, &self.policy);
        let said = text(&out);
        if !said.contains("sigstore disabled") {
            return (out.status.success(), said);
        }
        let accept = self.dir.path().join("accept-anything.json");
        std::fs::write(
            &accept,
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
        let (out, dir) = self.skopeo_copy_kept(registry, reference, extra, &accept);
        assert!(
            out.status.success(),
            "skopeo copy {reference}: {}",
            text(&out)
        );
        let repo = reference
            .split_once('@')
            .map(|(r, _)| r.to_string())
            .unwrap_or_else(|| reference.rsplit_once(':').unwrap().0.to_string());
        let check = supply_check(&[
            std::ffi::OsStr::new("signatures"),
            std::ffi::OsStr::new("--key"),
            self.public_key.as_os_str(),
            std::ffi::OsStr::new("--repo"),
            std::ffi::OsStr::new(&repo),
            dir.path().as_os_str(),
        ]);
        (
            check.status.success(),
            format!(
                "(skopeo without sigstore: checked by supply-check.py) {}",
                text(&check)
            ),
        )
    }

    fn skopeo_copy(
        &self,
        registry: &TestRegistry,
        reference: &str,
        extra: &[&str],
        policy: &Path,
    ) -> Output {
        self.skopeo_copy_kept(registry, reference, extra, policy).0
    }

    fn skopeo_copy_kept(
        &self,
        registry: &TestRegistry,
        reference: &str,
        extra: &[&str],
        policy: &Path,
    ) -> (Output, tempfile::TempDir) {
        let out = tempfile::tempdir_in(self.dir.path()).unwrap();
        let result = Command::new("skopeo")
            .arg("--policy")
            .arg(policy)
            .arg("--registries.d")
            .arg(&self.registries_d)
            .arg("copy")
            .args(extra)
            .args(source_tls_args(registry))
            .arg(format!("docker://{reference}"))
            .arg(format!("dir:{}", out.path().display()))
            .output()
            .expect("skopeo is installed");
        (result, out)
    }
}

/// `registry`'s TLS arguments for skopeo copy's source side (`--src-tls-verify`, ...).
fn source_tls_args(registry: &TestRegistry) -> Vec<String> {
    registry
        .skopeo_tls_args()
        .iter()
        .map(|a| a.replacen("--", "--src-", 1))
        .collect()
}

/// `skopeo copy` of an attachment tag (no policy: it is data, checked by the caller) into
/// `dir`, for `supply-check.py provenance`.
pub fn copy_attachment(registry: &TestRegistry, reference: &str, dir: &Path) {
    let policy = dir.with_extension("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    super::run(
        Command::new("skopeo")
            .arg("--policy")
            .arg(&policy)
            .arg("copy")
            .args(source_tls_args(registry))
            .arg(format!("docker://{reference}"))
            .arg(format!("dir:{}", dir.display())),
    );
}

/// Whether the Python side of the checks can run. In CI (`CI=true`) a missing package is a
/// failure, not a skip: setup-host.sh installs them.
pub fn python_checks_available() -> bool {
    let ok = Command::new("python3")
        .args([
            "-c",
            "import in_toto_attestation, nacl, cryptography, google.protobuf",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !ok && std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "python3 cannot import in_toto_attestation, nacl and cryptography: run scripts/setup-host.sh"
        );
    }
    if !ok {
        eprintln!("skipping the Python checks: run scripts/setup-host.sh to install them");
    }
    ok
}

/// `scripts/supply-check.py` with `args`.
pub fn supply_check(args: &[&std::ffi::OsStr]) -> Output {
    Command::new("python3")
        .arg(super::repo_root().join("scripts/supply-check.py"))
        .args(args)
        .output()
        .expect("python3 runs")
}
