//! `make demo`: a real two-platform build on this machine, end to end, into throwaway servers.
//!
//! Starts a registry and a git server on loopback, publishes a busybox base image for amd64
//! and arm64 (made from Debian's busybox-static; nothing is pulled from the internet), commits
//! a small app whose Dockerfile has a RUN step, runs `archforge build --local` on it (the
//! binary given as the first argument), shows the pushed index with skopeo, and stops
//! everything it started.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;

use common::fixtures::publish_busybox_base;
use common::git::GitServer;
use common::registry::{Mode, TestRegistry};

const DOCKERFILE: &str = r#"ARG BASE
FROM ${BASE}
ARG GREETING="hello from archforge"
RUN echo "$GREETING, built on $(uname -m)" > /greeting.txt
CMD ["cat", "/greeting.txt"]
"#;

#[tokio::main]
async fn main() {
    let archforge = std::env::args()
        .nth(1)
        .expect("usage: demo <path to the archforge binary>");
    let registry = TestRegistry::start(Mode::Plain);
    let git = GitServer::start();
    let work = tempfile::tempdir().unwrap();
    println!(
        "== registry at {}, git server at {}",
        registry.addr, git.base_url
    );

    let base = registry.image("demo/busybox:1");
    println!(
        "== publishing the base image {base} (linux/amd64 + linux/arm64, from busybox-static)"
    );
    publish_busybox_base(
        &base,
        &["linux/amd64", "linux/arm64"],
        registry.options(),
        work.path(),
    )
    .await;

    let (url, commit) = git.commit("hello", &[("Dockerfile", DOCKERFILE)], "hello");
    println!("== demo app committed at {url} ({commit})");
    let image = registry.image("demo/hello:v1");
    let manifest = format!(
        "apiVersion: archforge.dev/v1alpha1\nkind: ImageBuild\nmetadata:\n  name: hello\nspec:\n  source:\n    git:\n      url: {url}\n      ref: main\n  platforms: [linux/amd64, linux/arm64]\n  output:\n    image: {image}\n  buildArgs:\n    - name: BASE\n      value: {base}\n"
    );
    let file = work.path().join("imagebuild.yaml");
    std::fs::write(&file, &manifest).unwrap();
    println!("== {}:\n{manifest}", file.display());
    println!(
        "== archforge build --local {} --insecure-registry {}",
        file.display(),
        registry.addr
    );
    let status = Command::new(&archforge)
        .args(["build", "--local"])
        .arg(&file)
        .args(["--insecure-registry", &registry.addr])
        .status()
        .expect("the archforge binary runs");
    if !status.success() {
        eprintln!("== the build failed ({status})");
        std::process::exit(1);
    }
    println!("== skopeo inspect --raw docker://{image}");
    let raw = registry.skopeo_inspect(&image, &["--raw"]);
    let pretty: serde_json::Value = serde_json::from_str(&raw).unwrap();
    println!("{}", serde_json::to_string_pretty(&pretty).unwrap());
    println!("== stopping the registry and the git server");
}
