//! The real `archforge` binary, run the way a cluster would start it.

use std::path::Path;
use std::process::{Command, Output};

/// `<binary> run` with `args` and no environment but `KUBECONFIG`, against a kubeconfig
/// (written into `dir`) whose HTTPS API server refuses connections: a run that gets past its
/// start-up checks fails there, naming 127.0.0.1. Tests pass `CARGO_BIN_EXE_archforge`
/// (which Cargo does not set for the examples that share this module).
pub fn run_operator(binary: &str, dir: &Path, args: &[&str]) -> Output {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kubeconfig = dir.join("kubeconfig");
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
    Command::new(binary)
        .args(["run", "--metrics-address", "127.0.0.1:0"])
        .args(args)
        .env_clear()
        .env("KUBECONFIG", &kubeconfig)
        .output()
        .unwrap()
}
