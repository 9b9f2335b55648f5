//! Benchmark: `archforge build --local` (two platforms) against `buildah bud --platform
//! linux/amd64,linux/arm64 --manifest` followed by `buildah manifest push --all`, in one run,
//! on the same machine, the same Dockerfile and the same local registry. Both start from empty
//! storage every run (no layer cache). archforge also fetches the source from the git server;
//! buildah is handed a ready checkout.
//!
//! Then the emulation penalty: one CPU-bound RUN step (a busybox shell loop) built by
//! `archforge build --local --jobs 1` for linux/amd64 natively and for linux/arm64 under
//! qemu-user-static, one platform after the other so they do not share the cores, timed by
//! the executor's own "built in" line; the same with `RUN true` gives the fixed cost of a
//! build (buildah start, base image pull, commit) to take out. Run with `make bench-local`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::fixtures::publish_busybox_base;
use common::git::GitServer;
use common::registry::{Mode, TestRegistry};
use common::{median, run};

const RUNS: usize = 3;

/// Iterations of the CPU-bound loop: about two seconds natively on the reference machine.
const LOOP: u32 = 1_000_000;

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let registry = TestRegistry::start(Mode::Plain);
    let git = GitServer::start();
    let work = tempfile::tempdir().unwrap();
    let base = registry.image("bench/busybox:1");
    runtime.block_on(publish_busybox_base(
        &base,
        &["linux/amd64", "linux/arm64"],
        registry.options(),
        work.path(),
    ));
    // Some real CPU work in RUN, so emulation and parallelism show.
    let dockerfile = format!(
        "FROM {base}\nRUN i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; uname -m > /arch.txt\n"
    );
    let (url, _) = git.commit("bench", &[("Dockerfile", &dockerfile)], "bench");
    let checkout = work.path().join("checkout");
    run(Command::new("git")
        .arg("clone")
        .arg("-q")
        .arg(&url)
        .arg(&checkout));
    let registries_conf = work.path().join("registries.conf");
    std::fs::write(&registries_conf, format!("unqualified-search-registries = []\n[[registry]]\nlocation = \"{}\"\ninsecure = true\n", registry.addr)).unwrap();

    let (mut archforge, mut buildah) = (Vec::new(), Vec::new());
    for i in 0..=RUNS {
        let file = work.path().join(format!("ib-{i}.yaml"));
        std::fs::write(&file, format!(
            "apiVersion: archforge.dev/v1alpha1\nkind: ImageBuild\nmetadata:\n  name: bench\nspec:\n  source:\n    git:\n      url: {url}\n      ref: main\n  platforms: [linux/amd64, linux/arm64]\n  output:\n    image: {}\n",
            registry.image(&format!("bench/app:archforge-{i}"))
        )).unwrap();
        let started = Instant::now();
        run(Command::new(env!("CARGO_BIN_EXE_archforge"))
            .args(["build", "--local"])
            .arg(&file)
            .args(["--insecure-registry", &registry.addr]));
        let a = started.elapsed().as_secs_f64();

        let storage = work.path().join(format!("buildah-{i}"));
        let buildah_cmd = |args: &[&str]| {
            let mut cmd = Command::new("buildah");
            cmd.arg("--root")
                .arg(storage.join("root"))
                .arg("--runroot")
                .arg(storage.join("run"));
            cmd.args(["--storage-driver", "vfs"])
                .args(args)
                .current_dir(&checkout);
            cmd.env("CONTAINERS_REGISTRIES_CONF", &registries_conf)
                .env("BUILDAH_ISOLATION", "chroot");
            cmd
        };
        let list = format!("localhost/bench-list-{i}");
        let started = Instant::now();
        run(&mut buildah_cmd(&[
            "bud",
            "--platform",
            "linux/amd64,linux/arm64",
            "--isolation",
            "chroot",
            "--layers",
            "--manifest",
            &list,
            ".",
        ]));
        run(&mut buildah_cmd(&[
            "manifest",
            "push",
            "--all",
            // buildah 1.28's manifest push does not read registries.conf's insecure flag.
            "--tls-verify=false",
            &list,
            &format!(
                "docker://{}",
                registry.image(&format!("bench/app:buildah-{i}"))
            ),
        ]));
        let b = started.elapsed().as_secs_f64();
        if i > 0 {
            archforge.push(a);
            buildah.push(b);
        }
        let _ = std::fs::remove_dir_all(&storage);
    }
    let (a, b) = (median(archforge.clone()), median(buildah.clone()));
    println!(
        "two-platform build (linux/amd64 native + linux/arm64 under qemu), {RUNS} runs after a warm-up"
    );
    println!("{:<58} {:>10}", "", "median s");
    println!(
        "{:<58} {:>10.2}   runs {archforge:.2?}",
        "archforge build --local", a
    );
    println!(
        "{:<58} {:>10.2}   runs {buildah:.2?}",
        "buildah bud --platform a,b --manifest + manifest push --all", b
    );
    println!("{:<58} {:>10.2}", "ratio archforge / buildah", a / b);
    emulation_penalty(&registry, &git, work.path());
}

/// The seconds after "built in" on `platform`'s progress line.
fn built_in(stderr: &str, platform: &str) -> f64 {
    let line = stderr
        .lines()
        .find(|l| l.contains(platform) && l.contains("built in "))
        .unwrap_or_else(|| panic!("no build time for {platform}:\n{stderr}"));
    let after = &line[line.find("built in ").unwrap() + "built in ".len()..];
    after[..after.find('s').unwrap()].parse().unwrap()
}

/// Build times (native amd64, emulated arm64) of `run_step`, RUNS times after a warm-up.
fn build_times(
    registry: &TestRegistry,
    git: &GitServer,
    work: &Path,
    name: &str,
    run_step: &str,
) -> (Vec<f64>, Vec<f64>) {
    let base = registry.image("bench/busybox:1");
    let (url, _) = git.commit(
        name,
        &[("Dockerfile", &format!("FROM {base}\nRUN {run_step}\n"))],
        name,
    );
    let (mut native, mut emulated) = (Vec::new(), Vec::new());
    for i in 0..=RUNS {
        let file = work.join(format!("{name}-{i}.yaml"));
        std::fs::write(&file, format!(
            "apiVersion: archforge.dev/v1alpha1\nkind: ImageBuild\nmetadata:\n  name: {name}\nspec:\n  source:\n    git:\n      url: {url}\n      ref: main\n  platforms: [linux/amd64, linux/arm64]\n  output:\n    image: {}\n",
            registry.image(&format!("bench/{name}:{i}"))
        )).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_archforge"))
            .args(["build", "--local", "--jobs", "1", "--emulation", "Fallback"])
            .arg(&file)
            .args(["--insecure-registry", &registry.addr])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        if i > 0 {
            native.push(built_in(&stderr, "linux/amd64"));
            emulated.push(built_in(&stderr, "linux/arm64"));
        }
    }
    (native, emulated)
}

fn emulation_penalty(registry: &TestRegistry, git: &GitServer, work: &Path) {
    let cpu = format!("i=0; while [ $i -lt {LOOP} ]; do i=$((i+1)); done");
    let (native, emulated) = build_times(registry, git, work, "penalty-cpu", &cpu);
    let (native0, emulated0) = build_times(registry, git, work, "penalty-none", "true");
    let (n, e) = (median(native.clone()), median(emulated.clone()));
    let (n0, e0) = (median(native0.clone()), median(emulated0.clone()));
    println!();
    println!(
        "emulation penalty: RUN a busybox shell loop of {LOOP} iterations, one platform at a time (--jobs 1), {RUNS} runs after a warm-up"
    );
    println!("{:<58} {:>10}", "", "median s");
    println!(
        "{:<58} {n:>10.2}   runs {native:.2?}",
        "linux/amd64 native, build"
    );
    println!(
        "{:<58} {e:>10.2}   runs {emulated:.2?}",
        "linux/arm64 under qemu, build"
    );
    println!(
        "{:<58} {:>10.2}",
        "ratio emulated / native (whole build)",
        e / n
    );
    println!(
        "{:<58} {n0:>10.2}   runs {native0:.2?}",
        "linux/amd64 native, RUN true (fixed cost)"
    );
    println!(
        "{:<58} {e0:>10.2}   runs {emulated0:.2?}",
        "linux/arm64 under qemu, RUN true (fixed cost)"
    );
    println!(
        "{:<58} {:>10.2}",
        "ratio emulated / native (the loop, fixed cost taken out)",
        (e - e0) / (n - n0)
    );
}
