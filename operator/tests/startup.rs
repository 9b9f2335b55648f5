//! The real binary's start-up, against a kubeconfig that names an HTTPS API server (the
//! reconcile tests' mock has no TLS, so only this catches a client that cannot even be
//! built): `archforge run` must fail with an error message, not a panic.

use std::process::Command;

#[test]
fn run_against_an_unreachable_https_server_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{{name: c, cluster: {{server: \"https://127.0.0.1:{port}\", insecure-skip-tls-verify: true}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\n\
             contexts: [{{name: c, context: {{cluster: c, user: u}}}}]\n"
        ),
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_archforge"))
        .args(["run", "--metrics-address", "127.0.0.1:0"])
        .env_clear()
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("127.0.0.1"),
        "the error should name the server: {stderr}"
    );
}
