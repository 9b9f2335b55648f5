//! `build --local` against git servers that stall or flood: the lookup and the fetch end at
//! the spec's timeout with a message that says so, and a ref advertisement without end stops
//! at the same 16 MiB cap as the smart-HTTP lookup. Real servers on loopback, the real binary.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::hostile_git::{RefFlood, StallingServer};

/// Runs `build --local` on an ImageBuild of `url` at `git_ref` with a 3 s timeout. A guard
/// of minutes stops a hung run, so that a regression fails instead of hanging the suite.
fn build(url: &str, git_ref: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ib.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: archforge.dev/v1alpha1\nkind: ImageBuild\nmetadata:\n  name: app\nspec:\n  source:\n    git:\n      url: {url}\n      ref: {git_ref}\n  platforms: [linux/amd64]\n  timeout: 3s\n  output:\n    image: 127.0.0.1:1/team/app:v1\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_archforge"))
        .args(["build", "--local"])
        .arg(&file)
        .env("TMPDIR", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let guard = Instant::now() + Duration::from_secs(300);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > guard {
            let _ = child.kill();
            panic!("build --local against {url} still ran after minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_stalling_git_server_ends_at_the_timeout_with_a_message_saying_so() {
    let server = StallingServer::start();
    let sha = "0123456789abcdef0123456789abcdef01234567";
    for (url, git_ref, step) in [
        // The lookup of a branch: git ls-remote for git://, the smart-HTTP request for http.
        (
            format!("git://127.0.0.1:{}/app.git", server.port),
            "main",
            "git ls-remote",
        ),
        (
            format!("http://127.0.0.1:{}/app.git", server.port),
            "main",
            "looking up the ref",
        ),
        // A full SHA skips the lookup: the fetch itself stalls.
        (
            format!("git://127.0.0.1:{}/app.git", server.port),
            sha,
            "git fetch",
        ),
        (
            format!("http://127.0.0.1:{}/app.git", server.port),
            sha,
            "git fetch",
        ),
    ] {
        let out = build(&url, git_ref);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url} {git_ref}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "{step} of {url} timed out after 3s (spec.timeout)"
            )),
            "{url} {git_ref}: {stderr}"
        );
        assert!(!stderr.contains("error decoding"), "{stderr}");
    }
}

#[test]
fn a_flood_of_refs_over_git_protocol_stops_at_the_cap() {
    // 40 MiB of refs, then the end: git ls-remote prints them all; archforge reads 16 MiB.
    let flood = RefFlood::start(40 * 1024 * 1024);
    let url = format!("git://127.0.0.1:{}/app.git", flood.port);
    let out = build(&url, "main");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("sent a ref advertisement larger than 16777216 bytes (16 MiB)"),
        "{stderr}"
    );
}

#[test]
fn a_small_advertisement_over_git_protocol_is_still_read() {
    // The same server with a few refs: the cap stops nothing, and the lookup's answer is
    // read (none of the refs is exactly refs/heads/main or refs/tags/main).
    let flood = RefFlood::start(1);
    let url = format!("git://127.0.0.1:{}/app.git", flood.port);
    let out = build(&url, "main");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("has no branch or tag \"main\""), "{stderr}");
}
