//! Benchmark: `archforge index create` against buildah's `manifest create`, two
//! `manifest add` and `manifest push --all`, in one run, against the same local registry and
//! the same two images. Prints wall time and the HTTP requests the registry served (from its access log)
//! for each, and the ratios. Run with `make bench-index`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use archforge::api::MediaType;
use archforge::plan::Platform;
use archforge::registry::Registry;
use common::registry::{self, Mode, TestRegistry};
use common::{median, run};

const RUNS: usize = 7;

/// Runs `f` and returns (wall time, requests the registry served meanwhile).
fn measure(reg: &TestRegistry, f: impl FnOnce()) -> (Duration, usize) {
    // The access log is written asynchronously; let the previous step's lines land.
    std::thread::sleep(Duration::from_millis(200));
    let before = reg.requests_served();
    let started = Instant::now();
    f();
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    (elapsed, reg.requests_served() - before)
}

fn main() {
    println!("index assembly, 2 platforms, {RUNS} runs each after a warm-up (medians)");
    println!("{:<52} {:>10} {:>10}", "", "wall (s)", "requests");
    for mode in [Mode::Plain, Mode::Htpasswd] {
        bench(mode);
    }
    println!("floor: 5 requests (2 manifest GETs, 2 config GETs, 1 index PUT)");
}

fn bench(mode: Mode) {
    let reg = TestRegistry::start(mode);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let registry = Registry::new(reg.options());
    let repo = reg.image("bench/app");
    let mut sources = Vec::new();
    for p in ["linux/amd64", "linux/arm64"] {
        let platform: Platform = p.parse().unwrap();
        let tag = format!("{repo}:v1-{}", platform.slug());
        let digest = runtime
            .block_on(registry.push_synthetic_image(&tag, &platform, MediaType::Oci, "bench"))
            .unwrap();
        sources.push(format!("{p}={digest}"));
    }
    let storage = tempfile::tempdir().unwrap();
    let docker_config = reg.dir.path().join("docker-config.json");
    std::fs::write(&docker_config, reg.docker_config_json(registry::PASSWORD)).unwrap();
    let creds = format!("{}:{}", registry::USER, registry::PASSWORD);
    let buildah = |args: &[&str]| {
        let mut cmd = Command::new("buildah");
        cmd.arg("--root")
            .arg(storage.path().join("root"))
            .arg("--runroot")
            .arg(storage.path().join("runroot"))
            .arg("--storage-driver")
            .arg("vfs")
            .args(args);
        cmd
    };

    let (mut af_wall, mut af_requests, mut bh_wall, mut bh_requests) =
        (vec![], vec![], vec![], vec![]);
    for i in 0..=RUNS {
        let (wall, requests) = measure(&reg, || {
            run(Command::new(env!("CARGO_BIN_EXE_archforge"))
                .args(["index", "create", "--image", &format!("{repo}:archforge")])
                .args(["--source", &sources[0], "--source", &sources[1]])
                .args(["--insecure-registry", &reg.addr])
                .arg("--docker-config")
                .arg(&docker_config));
        });
        let list = format!("localhost/bench-list-{i}");
        let (b_wall, b_requests) = measure(&reg, || {
            run(&mut buildah(&["manifest", "create", &list]));
            for source in &sources {
                let digest = source.split_once('=').unwrap().1;
                run(&mut buildah(&[
                    "manifest",
                    "add",
                    "--tls-verify=false",
                    "--creds",
                    &creds,
                    &list,
                    &format!("docker://{repo}@{digest}"),
                ]));
            }
            run(&mut buildah(&[
                "manifest",
                "push",
                "--all",
                "--tls-verify=false",
                "--creds",
                &creds,
                &list,
                &format!("docker://{repo}:buildah"),
            ]));
        });
        if i == 0 {
            continue; // warm-up: page cache, first registry writes
        }
        af_wall.push(wall.as_secs_f64());
        af_requests.push(requests as f64);
        bh_wall.push(b_wall.as_secs_f64());
        bh_requests.push(b_requests as f64);
    }
    let (aw, ar, bw, br) = (
        median(af_wall),
        median(af_requests),
        median(bh_wall),
        median(bh_requests),
    );
    let name = match mode {
        Mode::Plain => "anonymous",
        Mode::Htpasswd => "basic auth",
        Mode::Tls => "tls",
    };
    println!(
        "{:<52} {:>10.3} {:>10}",
        format!("[{name}] archforge index create"),
        aw,
        ar
    );
    println!(
        "{:<52} {:>10.3} {:>10}",
        format!("[{name}] buildah manifest create+add+add+push --all"),
        bw,
        br
    );
    println!(
        "{:<52} {:>10.3} {:>10.2}",
        format!("[{name}] ratio archforge / buildah"),
        aw / bw,
        ar / br
    );
}
