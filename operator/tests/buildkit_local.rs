//! `archforge build --local` with `spec.strategy: buildkit` on a machine without BuildKit
//! (these machines: no package ships it) says so, by name, before any other work.

mod common;

use std::process::Command;

#[test]
fn a_local_buildkit_build_without_buildkit_names_what_is_missing_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ib.yaml");
    let text = std::fs::read_to_string(
        common::repo_root().join("config/samples/imagebuild-buildkit.yaml"),
    )
    .unwrap()
    // Nothing is fetched: a git URL that could not be reached shows it.
    .replace(
        "https://github.com/kubernetes/examples.git",
        "https://git.invalid/unreachable.git",
    )
    .replace("    pushSecret: regcred\n", "");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_archforge"))
        .args(["build", "--local"])
        .arg(&file)
        .env("PATH", "/usr/bin:/bin")
        .env_remove("ARCHFORGE_DEFAULT_STRATEGY")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "spec.strategy is buildkit, but buildctl-daemonless.sh, buildctl, buildkitd are not on PATH"
        ) && stderr.contains("spec.strategy: buildah"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("git.invalid"),
        "it went on to git: {stderr}"
    );
}
