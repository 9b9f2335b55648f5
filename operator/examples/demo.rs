//! `make demo`: a real two-platform build on this machine, end to end, into throwaway servers.
//!
//! Starts a registry and a git server on loopback, publishes a busybox base image for amd64
//! and arm64 (made from Debian's busybox-static; nothing is pulled from the internet), commits
//! a small app whose Dockerfile has a RUN step, generates a P-256 signing key with openssl,
//! runs `archforge build --local --signing-key` on it (the binary given as the first
//! argument), shows the pushed index with skopeo, verifies every signature with skopeo's
//! sigstoreSigned policy and with `archforge verify`, prints each provenance subject as the
//! in-toto parser reads it, and stops everything it started.

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
    let key = work.path().join("cosign.key");
    let public = work.path().join("cosign.pub");
    println!("== generating a signing key: openssl genpkey -algorithm EC (P-256)");
    common::run(
        Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
            ])
            .arg(&key),
    );
    common::run(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&public),
    );
    println!(
        "== archforge build --local {} --insecure-registry {} --signing-key {}",
        file.display(),
        registry.addr,
        key.display()
    );
    let status = Command::new(&archforge)
        .args(["build", "--local"])
        .arg(&file)
        .args(["--insecure-registry", &registry.addr, "--signing-key"])
        .arg(&key)
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

    let public_pem = std::fs::read_to_string(&public).unwrap();
    let policy = common::sigstore::SigstorePolicy::new(&registry, &public_pem);
    println!(
        "== skopeo copy --all under a sigstoreSigned policy for {} (use-sigstore-attachments)",
        public.display()
    );
    let mut references = vec![(image.clone(), vec!["--all"])];
    let repo = registry.image("demo/hello");
    for entry in pretty["manifests"].as_array().unwrap() {
        references.push((
            format!("{repo}@{}", entry["digest"].as_str().unwrap()),
            vec![],
        ));
    }
    for (reference, extra) in &references {
        let (accepted, said) = policy.copy(&registry, reference, extra);
        if !accepted {
            eprintln!("== {reference} was rejected: {said}");
            std::process::exit(1);
        }
        // Debian's skopeo is built with sigstore disabled; say who checked it then.
        let by = if said.starts_with("(skopeo without sigstore") {
            " (this skopeo has sigstore disabled: it copied the signatures and supply-check.py applied sigstoreSigned's rules)"
        } else {
            ""
        };
        println!("   {reference}: accepted{by}");
    }
    println!("== signatures verified by skopeo's policy (index and every platform image)");

    println!("== archforge verify {image} --key {}", public.display());
    let status = Command::new(&archforge)
        .args(["verify", &image, "--key"])
        .arg(&public)
        .args(["--insecure-registry", &registry.addr])
        .status()
        .expect("the archforge binary runs");
    if !status.success() {
        std::process::exit(1);
    }

    println!("== provenance subjects, as the in-toto parser (scripts/supply-check.py) reads them");
    let mut dirs = Vec::new();
    let mut digests: Vec<String> = pretty["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["digest"].as_str().unwrap().to_string())
        .collect();
    digests.push(archforge::registry::sha256_digest(raw.as_bytes()));
    for (i, digest) in digests.iter().enumerate() {
        let dir = work.path().join(format!("att-{i}"));
        let tag = format!("sha256-{}.att", digest.trim_start_matches("sha256:"));
        common::sigstore::copy_attachment(&registry, &format!("{repo}:{tag}"), &dir);
        dirs.push(dir);
    }
    let mut args: Vec<&std::ffi::OsStr> = vec!["provenance".as_ref(), "--key".as_ref()];
    args.push(public.as_os_str());
    args.extend(dirs.iter().map(|d| d.as_os_str()));
    let out = common::sigstore::supply_check(&args);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        std::process::exit(1);
    }
    println!("== stopping the registry and the git server");
}
