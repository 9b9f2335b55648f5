//! The operator-wide signing key (`archforge run --signing-key-file`): read and checked once,
//! at start, before the API server is contacted. A bad key stops the real binary there,
//! naming the file and the problem, never a byte of the key or its password.

mod common;

use archforge::supply::SigningKey;
use common::binary::run_operator;
use common::keys::{assert_no_piece_of, pem_body, truncated};

const ARCHFORGE: &str = env!("CARGO_BIN_EXE_archforge");

#[test]
fn a_bad_operator_key_stops_the_operator_at_start_without_showing_it() {
    let dir = tempfile::tempdir().unwrap();
    let cut = truncated(&SigningKey::generate().to_pkcs8_pem());
    let key = dir.path().join("cosign.key");
    std::fs::write(&key, &cut).unwrap();
    let password = dir.path().join("cosign.password");
    std::fs::write(&password, "correct-horse-battery-staple").unwrap();
    let out = run_operator(
        ARCHFORGE,
        dir.path(),
        &[
            &format!("--signing-key-file={}", key.display()),
            &format!("--signing-key-password-file={}", password.display()),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains(&key.display().to_string()) && stderr.contains("--signing-key-file"),
        "the error names the file and the flag: {stderr}"
    );
    assert!(stderr.contains("PKCS#8"), "the problem is named: {stderr}");
    assert!(
        !stderr.contains("127.0.0.1"),
        "it stopped before the API server: {stderr}"
    );
    let all = format!("{stdout}{stderr}");
    assert_no_piece_of(&all, &pem_body(&cut), "the output");
    assert_no_piece_of(&all, "correct-horse-battery-staple", "the output");

    // A key file that does not exist is named too.
    let out = run_operator(
        ARCHFORGE,
        dir.path(),
        &["--signing-key-file=/nonexistent/cosign.key"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/nonexistent/cosign.key"), "{stderr}");
}

#[test]
fn a_good_operator_key_gets_the_operator_to_the_api_server() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cosign.key");
    let pem = SigningKey::generate().to_pkcs8_pem();
    std::fs::write(&key, &pem).unwrap();
    // The chart always passes the password file; a Secret without cosign.password has none.
    let absent = dir.path().join("cosign.password");
    let out = run_operator(
        ARCHFORGE,
        dir.path(),
        &[
            &format!("--signing-key-file={}", key.display()),
            &format!("--signing-key-password-file={}", absent.display()),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("cannot reach the API server"),
        "past the key, the API server is what fails: {stderr}"
    );
    assert!(
        stderr.contains("operator-wide signing key loaded"),
        "the log says a key is in use (by its public fingerprint): {stderr}"
    );
    assert_no_piece_of(&format!("{stdout}{stderr}"), &pem_body(&pem), "the output");
}
