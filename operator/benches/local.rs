//! Benchmark: `archforge build --local` (two platforms) against `buildah bud --platform
//! linux/amd64,linux/arm64 --manifest` followed by `buildah manifest push --all`, in one run,
//! on the same machine, the same Dockerfile and the same local registry. Both start from empty
//! storage every run (no layer cache). archforge also fetches the source from the git server;
//! buildah is handed a ready checkout. Run with `make bench-local`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::Instant;

use common::fixtures::publish_busybox_base;
use common::git::GitServer;
use common::registry::{Mode, TestRegistry};
use common::{median, run};

const RUNS: usize = 3;

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
}
