//! Registry trust, set once, reaches every builder pod: the rendered Jobs carry it, the real
//! builder scripts write it where buildah and buildkitd read it, and a real buildah given
//! those files pulls from a registry with a private CA and from a plain-HTTP one. Hostile
//! settings are refused when the operator starts.

mod common;

use std::path::Path;
use std::process::Command;

use archforge::api::ImageBuild;
use archforge::plan::trust::{RegistryHost, RegistryTrust};
use archforge::plan::{AuthFile, plan};
use archforge::podsecurity::{self, Level};
use archforge::render::render_jobs;
use archforge::settings::BuilderSettings;
use archforge::validation::ValidSpec;
use common::builder::{FakeImage, builder, recorder, run_container_in};
use common::registry::{Mode, TestRegistry};
use k8s_openapi::api::batch::v1::Job;
use serde_json::json;

const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUQ2FzZSBvZiBhIHRlc3Q=\n-----END CERTIFICATE-----\n";

fn host(s: &str) -> RegistryHost {
    s.parse().unwrap()
}

fn trust() -> RegistryTrust {
    RegistryTrust::new(
        [host("plain.internal:5000")],
        [
            (host("tls.internal"), PEM.to_string()),
            (host("both.internal:443"), PEM.to_string()),
        ],
    )
    .unwrap()
}

fn jobs(build: &ImageBuild, trust: &RegistryTrust) -> Vec<Job> {
    let settings = BuilderSettings {
        registry_trust: trust.clone(),
        ..BuilderSettings::default()
    };
    let plan = plan(
        &ValidSpec::check(build).unwrap(),
        &settings,
        "main",
        AuthFile::None,
    );
    render_jobs(build, &plan, &settings, "1.30".parse().unwrap())
}

fn with_strategy(strategy: &str) -> ImageBuild {
    let mut object = serde_json::to_value(common::sample()).unwrap();
    object["spec"]["strategy"] = json!(strategy);
    serde_json::from_value(object).unwrap()
}

fn env(job: &Job, name: &str) -> Option<String> {
    builder(job)
        .env
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .and_then(|v| v.value.clone())
}

fn mounts(job: &Job) -> Vec<(String, String)> {
    builder(job)
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.clone(), m.mount_path.clone()))
        .collect()
}

#[test]
fn nothing_configured_adds_nothing_to_the_jobs() {
    for strategy in ["buildah", "buildkit"] {
        let job = &jobs(&with_strategy(strategy), &RegistryTrust::default())[0];
        let names: Vec<String> = builder(job)
            .env
            .iter()
            .flatten()
            .map(|v| v.name.clone())
            .collect();
        assert!(
            !names
                .iter()
                .any(|n| n.contains("REGISTR") || n.contains("BUILDKITD_TOML")),
            "{names:?}"
        );
        assert!(!mounts(job).iter().any(|(n, _)| n.contains("regist")));
    }
}

#[test]
fn buildah_jobs_carry_the_drop_in_and_each_hosts_ca() {
    let trust = trust();
    for job in jobs(&with_strategy("buildah"), &trust) {
        assert_eq!(
            env(&job, "ARCHFORGE_REGISTRIES_CONF"),
            Some(trust.registries_conf())
        );
        assert_eq!(
            env(&job, "ARCHFORGE_REGISTRY_CA_COUNT").as_deref(),
            Some("2")
        );
        // Sorted by host, so the same settings always render the same Job.
        assert_eq!(
            env(&job, "ARCHFORGE_REGISTRY_CA_HOST_0").as_deref(),
            Some("both.internal:443")
        );
        assert_eq!(
            env(&job, "ARCHFORGE_REGISTRY_CA_HOST_1").as_deref(),
            Some("tls.internal")
        );
        assert_eq!(env(&job, "ARCHFORGE_REGISTRY_CA_1").as_deref(), Some(PEM));
        let mounts = mounts(&job);
        for (name, path) in [
            (
                "registries-conf",
                "/home/build/.config/containers/registries.conf.d",
            ),
            ("registry-certs", "/home/build/.config/containers/certs.d"),
        ] {
            assert!(mounts.contains(&(name.into(), path.into())), "{mounts:?}");
            let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
            let volume = pod
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == name)
                .unwrap();
            assert!(volume.empty_dir.is_some(), "{name} is an emptyDir");
        }
        assert_eq!(podsecurity::check_job(&job, Level::Baseline), Ok(()));
    }
}

#[test]
fn buildkit_jobs_carry_buildkitd_toml_and_name_it_in_the_flags() {
    let trust = trust();
    for job in jobs(&with_strategy("buildkit"), &trust) {
        assert_eq!(
            env(&job, "BUILDKITD_FLAGS").as_deref(),
            Some(
                "--oci-worker-no-process-sandbox --config /var/run/archforge/trust/buildkitd.toml"
            )
        );
        let toml = env(&job, "ARCHFORGE_BUILDKITD_TOML").unwrap();
        assert!(
            toml.contains("[registry.\"plain.internal:5000\"]\n  http = true\n  insecure = true\n")
                && toml.contains(
                    "[registry.\"tls.internal\"]\n  ca = [\"/var/run/archforge/trust/certs.d/tls.internal/ca.crt\"]\n"
                ),
            "{toml}"
        );
        assert!(
            mounts(&job).contains(&("registry-trust".into(), "/var/run/archforge/trust".into()))
        );
        assert_eq!(podsecurity::check_job(&job, Level::Baseline), Ok(()));
    }
}

fn checkout(checkout: &Path) {
    std::fs::create_dir_all(checkout.join("guestbook-go")).unwrap();
    std::fs::write(checkout.join("guestbook-go/Dockerfile"), "FROM scratch\n").unwrap();
}

/// The real scripts write what the Job carries, byte for byte, where the builders read it;
/// a certificate holding shell syntax is written, never run.
#[test]
fn the_builder_scripts_write_the_files_the_builders_read() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let hostile_pem = format!("{PEM}$(touch {m})\n`touch {m}`\n", m = marker.display());
    let trust = RegistryTrust::new(
        [host("plain.internal:5000")],
        [
            (host("tls.internal"), hostile_pem.clone()),
            (host("both.internal:443"), PEM.to_string()),
        ],
    )
    .unwrap();

    let job = &jobs(&with_strategy("buildah"), &trust)[0];
    let ran = run_container_in(
        &FakeImage::default(),
        job,
        dir.path(),
        checkout,
        "buildah",
        recorder,
        |_, v| v.to_string(),
    );
    assert!(ran.output.status.success(), "{}", ran.stderr());
    let containers = ran.home.join(".config/containers");
    assert_eq!(
        std::fs::read_to_string(containers.join("registries.conf.d/50-archforge.conf")).unwrap(),
        trust.registries_conf()
    );
    assert_eq!(
        std::fs::read_to_string(containers.join("certs.d/tls.internal/ca.crt")).unwrap(),
        hostile_pem
    );
    assert_eq!(
        std::fs::read_to_string(containers.join("certs.d/both.internal:443/ca.crt")).unwrap(),
        PEM
    );

    let dir = tempfile::tempdir().unwrap();
    let job = &jobs(&with_strategy("buildkit"), &trust)[0];
    let ran = run_container_in(
        &FakeImage::default(),
        job,
        dir.path(),
        checkout,
        "buildctl-daemonless.sh",
        recorder,
        |_, v| v.to_string(),
    );
    // buildctl is a recorder here, so the run stops at its missing metadata, after the files.
    assert_eq!(ran.calls.len(), 1, "{}", ran.stderr());
    let written = std::fs::read_to_string(ran.trust_dir.join("buildkitd.toml")).unwrap();
    let trust_dir = ran.trust_dir.display().to_string();
    assert_eq!(
        written,
        trust.buildkitd_toml(|h| format!("{trust_dir}/certs.d/{h}/ca.crt"))
    );
    assert_eq!(
        std::fs::read_to_string(ran.trust_dir.join("certs.d/tls.internal/ca.crt")).unwrap(),
        hostile_pem
    );
    assert!(!marker.exists(), "a certificate was run by a shell");
}

/// The operator refuses, at start, a host that could break out of the TOML or the path it
/// is written into, a CA directory holding one, and more certificates than a pod carries.
#[test]
fn hostile_or_oversized_trust_settings_stop_the_operator_at_start() {
    let render = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_archforge"))
            .arg("render")
            .arg(common::sample_path())
            .args(args)
            .output()
            .unwrap()
    };
    for bad in [
        "reg\"istry:5000",
        "registry\n[registry.\"x\"]",
        "../etc",
        "a/b",
    ] {
        let out = render(&["--insecure-registry", bad]);
        assert!(!out.status.success(), "{bad:?} was accepted");
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--insecure-registry") && err.contains("is not a registry host"),
            "{bad:?}: {err}"
        );
    }
    let refused = |files: &[(&str, String)], words: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        let out = render(&["--registry-ca-dir", dir.path().to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{files:?} was accepted");
        assert!(out.stdout.is_empty());
        for word in words {
            assert!(err.contains(word), "{word}: {err}");
        }
    };
    refused(
        &[("reg\"istry_5000", PEM.into())],
        &["is not a registry host"],
    );
    refused(
        &[("ca.crt", PEM.into())],
        &["names a file", "registry.internal_5000"],
    );
    refused(
        &[("registry.internal", "hello".into())],
        &["registry.internal", "PEM"],
    );
    let half = format!("{PEM}{}", "A".repeat(33 * 1024));
    refused(
        &[("a.internal", half.clone()), ("b.internal", half)],
        &["bytes, more than the 65536"],
    );

    // A good directory renders, and the Jobs carry it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("registry.internal_5000"), PEM).unwrap();
    let out = render(&[
        "--registry-ca-dir",
        dir.path().to_str().unwrap(),
        "--insecure-registry",
        "plain.internal",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(yaml.contains("value: registry.internal:5000"), "{yaml}");
    assert!(yaml.contains("plain.internal"), "{yaml}");
}

/// `archforge run` reads the trust settings before it looks for a cluster: a bad one stops
/// it there, naming the setting.
#[test]
fn the_controller_refuses_a_bad_ca_directory_before_it_connects() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.crt"), PEM).unwrap();
    for (ca_dir, words) in [
        (
            "/nonexistent/registry-ca".to_string(),
            "cannot read the registry CA directory /nonexistent/registry-ca",
        ),
        (
            dir.path().display().to_string(),
            "\"ca.crt\" is not a registry host: it names a file",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_archforge"))
            .arg("run")
            .env_clear()
            .env("ARCHFORGE_REGISTRY_CA_DIR", &ca_dir)
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(words), "{err}");
        assert!(
            !err.contains("kubeconfig"),
            "it looked for a cluster first: {err}"
        );
    }
}

/// The script writes a certificate only under its certificate directory, whatever host
/// name reaches it (the operator never renders such a host; this is the script's own guard).
#[test]
fn the_script_refuses_a_host_that_would_leave_the_certificate_directory() {
    for strategy in ["buildah", "buildkit"] {
        for bad in ["../escape", "a/b", ".hidden", ""] {
            let dir = tempfile::tempdir().unwrap();
            let job = &jobs(&with_strategy(strategy), &trust())[0];
            let tool = if strategy == "buildah" {
                "buildah"
            } else {
                "buildctl-daemonless.sh"
            };
            let ran = run_container_in(
                &FakeImage::default(),
                job,
                dir.path(),
                checkout,
                tool,
                recorder,
                |name, v| match name {
                    Some("ARCHFORGE_REGISTRY_CA_HOST_0") => bad.to_string(),
                    _ => v.to_string(),
                },
            );
            assert!(!ran.output.status.success(), "{strategy} {bad:?}");
            assert!(ran.calls.is_empty());
            assert_eq!(
                ran.stderr(),
                format!(
                    "archforge: registry trust: refusing to write the CA of registry host {bad}\n"
                )
            );
            assert!(!dir.path().join("escape").exists());
        }
    }
}

// --- a real buildah through the builder script ------------------------------------------

/// A busybox image, committed with the machine's buildah and pushed to `registry` as
/// `base:1` (`tls` holds the CA directory the push trusts).
fn push_base(work: &Path, registry: &TestRegistry) {
    let buildah = |args: &[&str]| {
        let mut cmd = Command::new("buildah");
        cmd.arg("--root")
            .arg(work.join("base-storage"))
            .arg("--runroot")
            .arg(work.join("base-run"))
            .args(["--storage-driver", "vfs"])
            .args(args);
        common::run(&mut cmd)
    };
    let rootfs = work.join("rootfs");
    if !rootfs.exists() {
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
        let container = buildah(&["from", "scratch"]);
        buildah(&["copy", &container, &format!("{}/", rootfs.display()), "/"]);
        buildah(&["commit", "-q", &container, "archforge-trust-base"]);
    }
    let trust_flag = match registry.mode {
        Mode::Tls => {
            let certs = work.join(format!("push-certs-{}", registry.addr));
            std::fs::create_dir_all(&certs).unwrap();
            std::fs::copy(registry.ca_file.as_ref().unwrap(), certs.join("ca.crt")).unwrap();
            format!("--cert-dir={}", certs.display())
        }
        _ => "--tls-verify=false".to_string(),
    };
    buildah(&[
        "push",
        &trust_flag,
        "archforge-trust-base",
        &format!("docker://{}/base:1", registry.addr),
    ]);
}

/// The machine's buildah behind the builder image's name: the contract's questions are the
/// fake image's (this machine's buildah is 1.28 and runs as root), everything else runs for
/// real in `work`'s storage. The builder writes the image to the handoff directory (`dir:`);
/// the push container's `archforge push-image` uploads it.
fn real_buildah(work: &Path) -> impl FnOnce(&Path) -> String {
    let storage = work.join("build-storage");
    let runroot = work.join("build-run");
    move |_log: &Path| {
        format!(
            r#"#!/bin/sh
PATH=/usr/sbin:/usr/bin:/sbin:/bin
exec buildah --root '{storage}' --runroot '{runroot}' --storage-driver vfs "$@"
"#,
            storage = storage.display(),
            runroot = runroot.display(),
        )
    }
}

/// A rendered Job's builder, with `trust`, run by its real script and the machine's buildah:
/// a Dockerfile whose stages come from `plain` (plain HTTP) and `tls` (a private CA), then
/// its push container, which pushes to `tls` by digest with the CA the Job hands it.
fn build_through_the_script(
    work: &Path,
    plain: &TestRegistry,
    tls: &TestRegistry,
    trust: &RegistryTrust,
) -> (std::process::Output, std::path::PathBuf) {
    let mut object = serde_json::to_value(common::sample()).unwrap();
    let arch = archforge::local::host_architecture();
    object["spec"]["platforms"] = json!([format!("linux/{arch}")]);
    object["spec"]["output"]["image"] = json!(format!("{}/app:v1", tls.addr));
    let build: ImageBuild = serde_json::from_value(object).unwrap();
    let job = &jobs(&build, trust)[0];
    let dir = tempfile::tempdir_in(work).unwrap();
    let dockerfile = format!(
        "FROM {plain}/base:1 AS plain\nFROM {tls}/base:1\nCOPY --from=plain /bin/busybox /from-plain\n",
        plain = plain.addr,
        tls = tls.addr
    );
    let termination = dir.path().join("termination-log");
    let handoff = dir.path().join("handoff");
    std::fs::create_dir_all(&handoff).unwrap();
    let moved = handoff.display().to_string();
    let ran = run_container_in(
        &FakeImage::default(),
        job,
        dir.path(),
        |checkout| {
            std::fs::create_dir_all(checkout.join("guestbook-go")).unwrap();
            std::fs::write(checkout.join("guestbook-go/Dockerfile"), &dockerfile).unwrap();
        },
        "buildah",
        real_buildah(work),
        |_, v| v.replace(archforge::render::HANDOFF_DIR, &moved),
    );
    let output = match ran.output.status.success() {
        true => run_push_container(job, &handoff, &termination),
        false => ran.output,
    };
    // The temporary directory goes; what the test reads is returned.
    let kept = work.join(format!("termination-{}", rand_suffix()));
    let _ = std::fs::copy(&termination, &kept);
    (output, kept)
}

/// Runs the Job's push container as the kubelet would, with this build's `archforge`, its
/// handoff and termination log moved to `handoff` and `termination`.
fn run_push_container(job: &Job, handoff: &Path, termination: &Path) -> std::process::Output {
    let pod = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let push = pod
        .containers
        .iter()
        .find(|c| c.name == archforge::render::PUSH_CONTAINER)
        .unwrap();
    let command = push.command.as_ref().unwrap();
    assert_eq!(command[0], archforge::render::PUSHER_BINARY);
    let moved = handoff.display().to_string();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_archforge"));
    for arg in &command[1..] {
        match arg.as_str() {
            "/dev/termination-log" => cmd.arg(termination),
            _ => cmd.arg(arg.replace(archforge::render::HANDOFF_DIR, &moved)),
        };
    }
    cmd.env_clear();
    for var in push.env.iter().flatten() {
        cmd.env(&var.name, var.value.as_deref().unwrap());
    }
    cmd.output().unwrap()
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn a_real_buildah_pulls_through_a_private_ca_and_plain_http_with_the_files_the_script_wrote() {
    let plain = TestRegistry::start(Mode::Plain);
    let tls = TestRegistry::start(Mode::Tls);
    let work = tempfile::tempdir().unwrap();
    push_base(work.path(), &plain);
    push_base(work.path(), &tls);
    let ca = std::fs::read_to_string(tls.ca_file.as_ref().unwrap()).unwrap();
    let full = RegistryTrust::new([host(&plain.addr)], [(host(&tls.addr), ca.clone())]).unwrap();

    // Without the CA, the private CA's registry is refused; without the plain-HTTP entry,
    // the plain registry is: each half of the setting is needed.
    let ca_only = RegistryTrust::new([], [(host(&tls.addr), ca)]).unwrap();
    let plain_only = RegistryTrust::new([host(&plain.addr)], []).unwrap();
    for (trust, expected) in [
        (ca_only, "server gave HTTP response to HTTPS client"),
        (plain_only, "certificate signed by unknown authority"),
    ] {
        let (out, _) = build_through_the_script(work.path(), &plain, &tls, &trust);
        let text = common::text(&out);
        assert!(
            !out.status.success(),
            "built without the whole trust: {text}"
        );
        assert!(text.contains(expected), "{expected}: {text}");
    }

    let (out, termination) = build_through_the_script(work.path(), &plain, &tls, &full);
    assert!(out.status.success(), "{}", common::text(&out));
    let digest = std::fs::read_to_string(termination).unwrap();
    assert!(digest.starts_with("sha256:"), "{digest}");
    let pushed = tls.skopeo_inspect(&format!("{}/app@{digest}", tls.addr), &["--raw"]);
    assert!(pushed.contains("layers"), "{pushed}");
}
