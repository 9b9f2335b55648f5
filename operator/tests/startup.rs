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

// The operator pushes an ImageBuild's index only with that ImageBuild's own push Secret:
// a docker config given to `run` is not read at all (not even a malformed one stops it),
// and the log says it is unused.
#[test]
fn run_does_not_read_a_docker_config_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        r#"{"auths": {"registry.example.com": {"auth": "b3BlcmF0b3I6czNjcmV0"}}} broken"#,
    )
    .unwrap();
    let flag = format!("--docker-config={}", config.display());
    let output = run_operator(env!("CARGO_BIN_EXE_archforge"), dir.path(), &[&flag]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--docker-config is not used by the operator")
            && stderr.contains("pushSecret"),
        "{stderr}"
    );
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("cannot reach the API server"),
        "past the settings, the API server is what fails: {stderr}"
    );
    assert!(!stderr.contains("b3BlcmF0b3I6czNjcmV0"), "{stderr}");
}

/// `archforge run --print-config` with `args` and `env` added.
fn print_config(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_archforge"));
    command.arg("run").args(args).arg("--print-config");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

// The queue's limits: bad values stop the operator before anything starts, naming them.
#[test]
fn bad_concurrency_limits_are_refused_at_start() {
    for bad in ["arm64=-1", "=3", "arm64=x", "arm64=0", "arm64=1,arm64=2"] {
        let flag = format!("--max-running-per-arch={bad}");
        let output = print_config(&[&flag], &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("--max-running-per-arch"), "{stderr}");
        let output = print_config(&[], &[("ARCHFORGE_MAX_RUNNING_PER_ARCH", bad)]);
        assert_eq!(output.status.code(), Some(2), "{bad} from the environment");
    }
    for bad in ["-1", "x", "4294967296"] {
        for flag in ["--max-running-builds", "--max-running-per-namespace"] {
            let output = print_config(&[&format!("{flag}={bad}")], &[]);
            assert_eq!(output.status.code(), Some(2), "{flag}={bad}");
        }
    }
    let output = print_config(
        &[
            "--max-running-per-arch=arm64=4,amd64=8",
            "--max-running-builds=10",
        ],
        &[("ARCHFORGE_MAX_RUNNING_PER_NAMESPACE", "2")],
    );
    assert!(output.status.success(), "{output:?}");
    let config: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        config["maxRunningPerArch"],
        serde_json::json!({"amd64": 8, "arm64": 4})
    );
    assert_eq!(config["maxRunningBuilds"], 10);
    assert_eq!(config["maxRunningPerNamespace"], 2);
}
