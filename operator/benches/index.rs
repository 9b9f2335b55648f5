//! Benchmark: `archforge index create` against buildah's `manifest create`, two
//! `manifest add` and `manifest push --all`, in one run, against the same local registry and
//! the same two images. Prints wall time and the HTTP requests the registry served (from its access log)
//! for each, and the ratios. Then the peak RSS of `archforge index create` (the child's
//! ru_maxrss, from wait4) against that registry and against a hostile one serving a 600 MiB
//! config or manifest, which must be refused within 64 MiB. Run with `make bench-index`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use archforge::api::MediaType;
use archforge::plan::Platform;
use archforge::registry::{MAX_CONFIG_BYTES, Registry, sha256_digest};
use common::registry::hostile::{Body, HostileRegistry, Script, config_prefix, manifest_json};
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
    println!();
    signing();
    println!();
    rss();
}

const MIB: u64 = 1 << 20;
/// The peak RSS `archforge index create` may reach against any registry.
const RSS_TARGET_MIB: f64 = 64.0;

/// Runs `cmd` to its end and returns (succeeded, peak RSS in MiB, last stderr line).
// The child is reaped by wait4, which std's wait cannot do: it drops the rusage.
#[allow(clippy::zombie_processes)]
fn peak_rss(cmd: &mut Command) -> (bool, f64, String) {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = String::new();
    // Read before reaping: the child must not block on a full pipe.
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter; the pid is our own unreaped child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t, "wait4");
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    let last = stderr.lines().last().unwrap_or_default().to_string();
    // ru_maxrss is in KiB on Linux.
    (ok, usage.ru_maxrss as f64 / 1024.0, last)
}

fn index_create(addr: &str, image: &str, sources: &[String]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_archforge"));
    cmd.args(["index", "create", "--image", image])
        .args(["--insecure-registry", addr]);
    for source in sources {
        cmd.args(["--source", source]);
    }
    cmd
}

fn rss() {
    println!("peak RSS of archforge index create (wait4 ru_maxrss), target < {RSS_TARGET_MIB} MiB");
    println!("{:<52} {:>10} {:>10}", "", "RSS (MiB)", "outcome");
    let row = |name: &str, (ok, mib, last): (bool, f64, String), want_ok: bool| {
        println!(
            "{:<52} {:>10.1} {:>10}",
            name,
            mib,
            if ok { "pushed" } else { "refused" }
        );
        if !ok {
            println!("    {last}");
        }
        assert_eq!(ok, want_ok, "{name}: {last}");
        assert!(mib < RSS_TARGET_MIB, "{name}: peak RSS {mib:.1} MiB");
    };

    let reg = TestRegistry::start(Mode::Plain);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let registry = Registry::new(reg.options());
    let mut sources = Vec::new();
    for p in ["linux/amd64", "linux/arm64"] {
        let platform: Platform = p.parse().unwrap();
        let tag = reg.image(&format!("bench/app:rss-{}", platform.slug()));
        let digest = runtime
            .block_on(registry.push_synthetic_image(&tag, &platform, MediaType::Oci, "bench"))
            .unwrap();
        sources.push(format!("{p}={digest}"));
    }
    row(
        "[docker-registry] 2 platforms",
        peak_rss(&mut index_create(
            &reg.addr,
            &reg.image("bench/app:rss"),
            &sources,
        )),
        true,
    );

    let config_digest = sha256_digest(b"the config the manifest promises");
    let honest_manifest = |declared: u64| {
        let manifest = manifest_json(&config_digest, declared);
        (sha256_digest(&manifest), Body::Exact(manifest))
    };
    let huge = 600 * MIB;
    let cases = [
        (
            "[hostile] 600 MiB config, chunked, declared 4 MiB",
            honest_manifest(MAX_CONFIG_BYTES),
            Body::Chunked {
                prefix: config_prefix(),
                total: huge,
            },
        ),
        (
            "[hostile] 600 MiB config, chunked, declared 1500 B",
            honest_manifest(1500),
            Body::Chunked {
                prefix: config_prefix(),
                total: huge,
            },
        ),
        (
            "[hostile] 600 MiB config, Content-Length 600 MiB",
            honest_manifest(MAX_CONFIG_BYTES),
            Body::Announced {
                prefix: config_prefix(),
                total: huge,
            },
        ),
        (
            "[hostile] 600 MiB manifest, chunked",
            (
                sha256_digest(b"no such manifest"),
                Body::Chunked {
                    prefix: br#"{"schemaVersion":2,"padding":""#.to_vec(),
                    total: huge,
                },
            ),
            Body::Status(500),
        ),
    ];
    for (name, (manifest_digest, manifest), config) in cases {
        let hostile = HostileRegistry::start(Script {
            manifest,
            manifest_type: "application/vnd.oci.image.manifest.v1+json".into(),
            config,
            push_digest: None,
        });
        row(
            name,
            peak_rss(&mut index_create(
                &hostile.addr,
                &hostile.image("bench/app:v1"),
                &[format!("linux/amd64={manifest_digest}")],
            )),
            false,
        );
    }
}

/// What signing and attesting add to publishing a 2-platform index: `Registry::publish`
/// without and with a signer, each run on two freshly pushed images (new digests, so every
/// signature and attestation is new, as in a real run).
fn signing() {
    use archforge::registry::PlatformImage;
    use archforge::supply::{BuildFacts, Signer, SigningKey};

    println!(
        "signing and attesting a 2-platform index (Registry::publish, {RUNS} runs each, medians)"
    );
    println!("{:<52} {:>10} {:>10}", "", "wall (s)", "requests");
    let key = SigningKey::generate();
    let facts = BuildFacts {
        source_url: "https://git.example.com/app.git".into(),
        commit: "0123456789abcdef0123456789abcdef01234567".into(),
        platforms: vec!["linux/amd64".into(), "linux/arm64".into()],
        builder_id: "https://archforge.dev/bench".into(),
        started_on: "2026-11-23T10:00:00Z".into(),
        finished_on: "2026-11-23T10:05:00Z".into(),
        ..BuildFacts::default()
    };
    for mode in [Mode::Plain, Mode::Htpasswd] {
        let reg = TestRegistry::start(mode);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let repo = reg.image("bench/signed");
        let mut run = 0;
        let mut one = |signed: bool| {
            run += 1;
            let registry = Registry::new(reg.options());
            let images: Vec<PlatformImage> = ["linux/amd64", "linux/arm64"]
                .iter()
                .map(|p| {
                    let platform: Platform = p.parse().unwrap();
                    let digest = runtime
                        .block_on(registry.push_synthetic_image(
                            &format!("{repo}@@unknown-digest@@"),
                            &platform,
                            MediaType::Oci,
                            &format!("run-{run}"),
                        ))
                        .unwrap();
                    PlatformImage { platform, digest }
                })
                .collect();
            let registry = Registry::new(reg.options());
            let signer = Signer {
                key: &key,
                facts: &facts,
            };
            measure(&reg, || {
                runtime
                    .block_on(registry.publish(
                        &format!("{repo}:v1"),
                        &images,
                        MediaType::Oci,
                        &Default::default(),
                        signed.then_some(&signer),
                    ))
                    .unwrap();
            })
        };
        let mut rows = Vec::new();
        for signed in [false, true] {
            one(signed);
            let runs: Vec<(Duration, usize)> = (0..RUNS).map(|_| one(signed)).collect();
            let wall = median(runs.iter().map(|r| r.0.as_secs_f64()).collect());
            let requests = median(runs.iter().map(|r| r.1 as f64).collect());
            rows.push((wall, requests));
            println!(
                "{:<52} {:>10.3} {:>10.0}",
                format!(
                    "[{mode:?}] publish, {}",
                    if signed {
                        "signed + attested"
                    } else {
                        "unsigned"
                    }
                ),
                wall,
                requests
            );
        }
        println!(
            "{:<52} {:>10.3} {:>10.0}",
            format!("[{mode:?}] added by signing + attesting"),
            rows[1].0 - rows[0].0,
            rows[1].1 - rows[0].1
        );
    }
    println!(
        "per image signed: a .sig and an .att, each 2 blob uploads (POST + PUT) and 1 manifest PUT (5 requests); and the index PUT twice (by digest, then its tag): 6 x 5 + 1 = 31 for 2 platforms"
    );
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
