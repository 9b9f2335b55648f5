//! The real binary's start-up, against a kubeconfig that names an HTTPS API server (the
//! reconcile tests' mock has no TLS, so only this catches a client that cannot even be
//! built): `archforge run` must fail with an error message, not a panic.

mod common;

use common::binary::run_operator;

#[test]
fn run_against_an_unreachable_https_server_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_operator(env!("CARGO_BIN_EXE_archforge"), dir.path(), &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("127.0.0.1"),
        "the error should name the server: {stderr}"
    );
}
