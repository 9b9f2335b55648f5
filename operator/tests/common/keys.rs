//! Signing keys the tests hand the operator, good and bad, and the check that none of a key
//! shows where it must not.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The base64 body of a PEM block: the key material itself.
pub fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

/// `pem`'s key cut short: PKCS#8 PEM armour around a body that does not parse.
pub fn truncated(pem: &str) -> String {
    let body = pem_body(pem);
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        &body[..body.len() - 20]
    )
}

/// Fails if `text` holds any 12 characters in a row of `secret` (`what` names the text).
pub fn assert_no_piece_of(text: &str, secret: &str, what: &str) {
    let chars: Vec<char> = secret.chars().collect();
    for window in chars.windows(12) {
        let piece: String = window.iter().collect();
        assert!(
            !text.contains(&piece),
            "secret material {piece:?} in {what}: {text}"
        );
    }
}

/// A key made by `openssl` with `args` (`genpkey ...`), as PEM.
pub fn openssl_key(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key.pem");
    super::run(Command::new("openssl").args(args).arg("-out").arg(&path));
    std::fs::read_to_string(path).unwrap()
}

/// A new key pair in cosign's format, the private key encrypted with `password`, written
/// into `dir` by the repository's independent Python implementation
/// (`scripts/supply-check.py cosign-key`): the paths of the private and the public key.
pub fn python_cosign_key(dir: &Path, password: &str) -> (PathBuf, PathBuf) {
    let (key, public) = (dir.join("cosign.key"), dir.join("cosign.pub"));
    let out = Command::new("python3")
        .arg(super::repo_root().join("scripts/supply-check.py"))
        .arg("cosign-key")
        .arg("--key")
        .arg(&key)
        .arg("--pub")
        .arg(&public)
        .env("COSIGN_PASSWORD", password)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "supply-check.py cosign-key (needs PyNaCl and cryptography: scripts/setup-host.sh): {}",
        super::text(&out)
    );
    (key, public)
}
