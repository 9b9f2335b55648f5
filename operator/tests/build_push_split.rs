//! The build/push split with real parts: real buildah (root, `--isolation chroot`, storage in
//! a temp dir) runs the plan's build and handoff argv, the argv the builder script runs, on a
//! Dockerfile whose RUN step looks for the push credentials and the handoff everywhere it
//! can reach (its filesystem, its environment, every `/proc/*/environ` and `/proc/*/root`).
//! Then `archforge push-image`, as the push container runs it, uploads the handed-off image
//! to a real registry with htpasswd auth, and skopeo reads it back by digest.
//!
//! In the pod, the push Secret is mounted in the push container only, which starts after the
//! builder has exited; here, the push credentials are written only after the build, which is
//! what the pod guarantees. A canary file holding the secret is the control: the probe must
//! find it (and read environments, and see the machine's processes), so a probe that finds
//! nothing else has looked.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use archforge::api::ImageBuild;
use archforge::plan::{AuthFile, BuildPlan, plan};
use archforge::settings::BuilderSettings;
use archforge::validation::ValidSpec;
use common::fixtures::publish_busybox_base;
use common::registry::{Mode, PASSWORD, TestRegistry};
use serde_json::json;

/// The RUN step's probe. The secret is never spelled whole in the Dockerfile (the probe would
/// find its own text): it is joined from two halves at run time. It writes what it finds to
/// /probe/found (one line per finding) and /probe/control (the pull credentials it reached).
const PROBE: &str = r#"
set -u
bb=/bin/busybox
mkdir -p /probe
found=/probe/found
control=/probe/control
: > "$found"
: > "$control"
secret="$A$B"
# The canary: a file holding the secret, which the scan must find (the control).
printf '%s' "$secret" > /probe/canary
for f in $($bb find / -xdev -type f 2>/dev/null); do
  if $bb grep -qF "$secret" "$f" 2>/dev/null; then
    case "$f" in
      /probe/canary) echo "canary $f" >> "$control" ;;
      *) echo "file $f" >> "$found" ;;
    esac
  fi
done
rm -f /probe/canary
if $bb env | $bb grep -qF "$secret"; then echo "own environment" >> "$found"; fi
if $bb tr '\0' '\n' < /proc/$$/environ | $bb grep -qF "A=$A"; then
  echo "environ readable" >> "$control"
else
  echo "environ: $($bb wc -c < /proc/$$/environ 2>&1)" >> "$control"
fi
for e in /proc/[0-9]*/environ; do
  if $bb grep -qF "$secret" "$e" 2>/dev/null; then echo "environ $e" >> "$found"; fi
  if $bb grep -qF "$PUSH_FILE" "$e" 2>/dev/null; then echo "environ names the push file: $e" >> "$found"; fi
done
for r in /proc/[0-9]*/root; do
  for p in "$PUSH_FILE" "$HANDOFF"; do
    if [ -e "$r$p" ]; then echo "reachable $r$p" >> "$found"; fi
  done
  if [ -e "$r$PULL_FILE" ]; then echo "pull credentials reachable at $r$PULL_FILE" >> "$control"; fi
done
echo "processes $($bb ls -d /proc/[0-9]* | $bb wc -l)" >> "$control"
"#;

struct Setup {
    base_registry: TestRegistry,
    target: TestRegistry,
    work: tempfile::TempDir,
    base: String,
}

async fn setup() -> Setup {
    let base_registry = TestRegistry::start(Mode::Plain);
    let target = TestRegistry::start(Mode::Htpasswd);
    let work = tempfile::tempdir().unwrap();
    let base = base_registry.image("base/busybox:1");
    let options = base_registry.options();
    publish_busybox_base(&base, &["linux/amd64"], options, work.path()).await;
    Setup {
        base_registry,
        target,
        work,
        base,
    }
}

fn imagebuild(image: &str) -> ImageBuild {
    serde_json::from_value(json!({
        "apiVersion": "archforge.dev/v1alpha1",
        "kind": "ImageBuild",
        "metadata": {"name": "split", "namespace": "default", "uid": "u1", "generation": 1},
        "spec": {
            "source": {"git": {"url": "https://git.example.com/app.git", "ref": "main"}},
            "platforms": ["linux/amd64"],
            "output": {"image": image, "pushSecret": "push-creds"},
            "pullSecret": "pull-creds",
        }
    }))
    .unwrap()
}

/// The plan of the ImageBuild, its builder reading pull credentials from `pull_file`.
fn plan_for(build: &ImageBuild, pull_file: &str) -> BuildPlan {
    let valid = ValidSpec::check(build).unwrap();
    plan(
        &valid,
        &BuilderSettings::default(),
        "main",
        AuthFile::Path(pull_file),
    )
}

/// Runs `buildah` with the test's own storage and registries.conf, as root.
fn buildah(work: &Path, argv: &[String], checkout: &Path, registry: &str) -> Output {
    let conf = work.join("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "unqualified-search-registries = []\n[[registry]]\nlocation = \"{registry}\"\ninsecure = true\n"
        ),
    )
    .unwrap();
    Command::new("buildah")
        .arg("--root")
        .arg(work.join("storage"))
        .arg("--runroot")
        .arg(work.join("run"))
        .args(["--storage-driver", "vfs"])
        .args(argv)
        .current_dir(checkout)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("BUILDAH_ISOLATION", "chroot")
        .env("CONTAINERS_REGISTRIES_CONF", &conf)
        .output()
        .unwrap()
}

fn succeeded(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `archforge push-image` as the push container runs it.
fn push_image(dir: &Path, to: &str, authfile: Option<&Path>, insecure: &str, log: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_archforge"));
    cmd.arg("push-image")
        .arg("--dir")
        .arg(dir)
        .args(["--to", to, "--insecure-registry", insecure])
        .arg("--termination-log")
        .arg(log);
    if let Some(authfile) = authfile {
        cmd.arg("--authfile").arg(authfile);
    }
    cmd.output().unwrap()
}

/// The content of `name` in the top layer of the image the `dir:` copy at `dir` holds.
fn file_in_top_layer(dir: &Path, name: &str) -> String {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let top = manifest["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let tar = Command::new("tar")
        .arg("-xzOf")
        .arg(dir.join(top))
        .arg(name)
        .output()
        .unwrap();
    succeeded(&format!("reading {name}"), &tar);
    String::from_utf8(tar.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_step_finds_no_push_credentials_and_the_image_still_pushes() {
    let s = setup().await;
    let work = s.work.path();
    let handoff = work.join("handoff");
    std::fs::create_dir_all(&handoff).unwrap();
    let handoff_image = handoff.join("image");
    let push_file = work.join("push/config.json");
    let pull_file = work.join("pull/config.json");
    std::fs::create_dir_all(pull_file.parent().unwrap()).unwrap();
    let pull_json =
        json!({"auths": {s.base_registry.addr.clone(): {"auth": "cHVsbDpwdWxsLXRva2Vu"}}});
    std::fs::write(&pull_file, pull_json.to_string()).unwrap();

    let checkout = work.join("checkout");
    std::fs::create_dir_all(&checkout).unwrap();
    let (a, b) = PASSWORD.split_at(PASSWORD.len() / 2);
    let dockerfile = format!(
        "FROM {}\nENV A={a} B={b} PUSH_FILE={} HANDOFF={} PULL_FILE={}\nCOPY probe.sh /probe.sh\nRUN /bin/busybox sh /probe.sh\n",
        s.base,
        push_file.display(),
        handoff_image.display(),
        pull_file.display(),
    );
    std::fs::write(checkout.join("Dockerfile"), dockerfile).unwrap();
    std::fs::write(checkout.join("probe.sh"), PROBE).unwrap();

    let image = s.target.image("team/split:v1");
    let build = imagebuild(&image);
    let plan = plan_for(&build, &pull_file.display().to_string());
    let platform = &plan.platforms[0];
    assert!(
        platform
            .build_argv
            .windows(2)
            .any(|w| w[0] == "--authfile" && Path::new(&w[1]) == pull_file),
        "the build reads the pull credentials: {:?}",
        platform.build_argv
    );
    let built = buildah(work, &platform.build_argv, &checkout, &s.base_registry.addr);
    succeeded("buildah build", &built);
    let handed = platform.handoff_argv(&handoff_image.display().to_string());
    succeeded(
        "buildah push to the handoff",
        &buildah(work, &handed, &checkout, &s.base_registry.addr),
    );

    // Only now, as the push container starts after the builder has exited.
    std::fs::create_dir_all(push_file.parent().unwrap()).unwrap();
    std::fs::write(&push_file, s.target.docker_config_json(PASSWORD)).unwrap();
    let log = work.join("termination-log");
    let pushed = push_image(
        &handoff_image,
        &platform.push_target,
        Some(&push_file),
        &s.target.addr,
        &log,
    );
    succeeded("archforge push-image", &pushed);
    let digest = std::fs::read_to_string(&log).unwrap();
    assert!(archforge::status::is_digest(&digest), "{digest:?}");

    let repository = image.rsplit_once(':').unwrap().0;
    let copy = s
        .target
        .skopeo_copy_to_dir(&format!("{repository}@{digest}"), &[]);
    let found = file_in_top_layer(copy.path(), "probe/found");
    assert_eq!(found, "", "the RUN step reached what it must not:\n{found}");
    let control = file_in_top_layer(copy.path(), "probe/control");
    // The probe works: it finds the secret in a file and reads environments, and it sees
    // the machine's processes (buildah's chroot isolation shares the PID namespace).
    for line in ["canary /probe/canary", "environ readable"] {
        assert!(control.lines().any(|l| l == line), "{line}: {control}");
    }
    let processes: usize = control
        .lines()
        .find_map(|l| l.strip_prefix("processes "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(processes > 3, "{control}");
    // No tag was left behind: the platform is pushed by digest only.
    let tags = Command::new("skopeo")
        .arg("list-tags")
        .args(s.target.skopeo_tls_args())
        .arg(format!("docker://{repository}"))
        .output()
        .unwrap();
    let tags = String::from_utf8_lossy(&tags.stdout);
    assert!(!tags.contains("\"v1"), "{tags}");
}

/// A `dir:` image of one config blob and one layer, as buildah writes it.
fn small_image(dir: &Path) -> (String, String) {
    std::fs::create_dir_all(dir).unwrap();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let layer = b"layer bytes";
    let digest = archforge::registry::sha256_digest;
    for blob in [&config[..], &layer[..]] {
        let hex = digest(blob).trim_start_matches("sha256:").to_string();
        std::fs::write(dir.join(hex), blob).unwrap();
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest(layer), "size": layer.len()}],
    })
    .to_string();
    std::fs::write(dir.join("manifest.json"), &manifest).unwrap();
    (digest(manifest.as_bytes()), digest(layer))
}

/// What the builder writes is the build's: a handoff whose blob is a link to the push
/// credentials, or whose blob does not hash to its name, pushes nothing and reports no
/// digest, with one line saying why; a good one pushes to its platform tag too.
#[test]
fn push_image_refuses_a_hostile_handoff_and_pushes_a_good_one() {
    let target = TestRegistry::start(Mode::Htpasswd);
    let work = tempfile::tempdir().unwrap();
    let push_file = work.path().join("push.json");
    std::fs::write(&push_file, target.docker_config_json(PASSWORD)).unwrap();
    let to = format!("{}@@unknown-digest@@", target.image("team/hostile"));
    let log = work.path().join("termination-log");

    let linked = work.path().join("linked");
    let (_, layer) = small_image(&linked);
    let blob = linked.join(layer.trim_start_matches("sha256:"));
    std::fs::remove_file(&blob).unwrap();
    std::os::unix::fs::symlink(&push_file, &blob).unwrap();
    let swapped = work.path().join("swapped");
    let (_, layer) = small_image(&swapped);
    std::fs::write(swapped.join(layer.trim_start_matches("sha256:")), b"other").unwrap();
    for (dir, why) in [
        (&linked, "is a symlink"),
        (&swapped, "does not have that digest"),
    ] {
        let out = push_image(dir, &to, Some(&push_file), &target.addr, &log);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(why), "{stderr}");
        assert!(stderr.starts_with("archforge: push-image: "), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(!stderr.contains(PASSWORD), "{stderr}");
        assert!(!log.exists(), "a digest was reported");
    }

    // Wrong credentials: refused by the registry, said in one line.
    let good = work.path().join("good");
    let (digest, _) = small_image(&good);
    let wrong = work.path().join("wrong.json");
    std::fs::write(&wrong, target.docker_config_json("wrong-password")).unwrap();
    let out = push_image(&good, &to, Some(&wrong), &target.addr, &log);
    assert!(!out.status.success());
    assert!(!log.exists());

    let tagged = target.image("team/hostile:v1-linux-amd64");
    let out = push_image(&good, &tagged, Some(&push_file), &target.addr, &log);
    succeeded("archforge push-image", &out);
    assert_eq!(std::fs::read_to_string(&log).unwrap(), digest);
    let inspected = target.skopeo_inspect(&tagged, &["--raw"]);
    assert_eq!(
        archforge::registry::sha256_digest(inspected.as_bytes()),
        digest
    );
}
