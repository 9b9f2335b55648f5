//! `archforge build --local` with `spec.strategy: buildkit`: on a machine without BuildKit
//! (these machines: no package ships it) it says so, by name, before any other work; with a
//! recording fake BuildKit, the image is handed to archforge, which pushes it.

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

/// An OCI layout of one linux/amd64 image, as `buildctl --output type=oci,tar=false` writes
/// it; returns the manifest's digest.
fn oci_layout(dir: &std::path::Path) -> String {
    use archforge::registry::sha256_digest;
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{}}"#;
    let layer = b"a layer";
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256_digest(layer), "size": layer.len()}],
    })
    .to_string();
    for blob in [&config[..], &layer[..], manifest.as_bytes()] {
        let digest = sha256_digest(blob);
        std::fs::write(blobs.join(digest.trim_start_matches("sha256:")), blob).unwrap();
    }
    let digest = sha256_digest(manifest.as_bytes());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": manifest.len()}]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    digest
}

/// `build --local` with BuildKit: buildctl writes an OCI layout (no push output) with only
/// the pull credentials in its environment, archforge uploads it with the push credentials,
/// and the digest buildctl's metadata names at its top level wins over a forged one in the
/// descriptor's annotations (which the build controls). buildctl is a recording fake that
/// writes a prepared layout; the registry and git server are real.
#[tokio::test(flavor = "multi_thread")]
async fn a_local_buildkit_build_hands_its_image_to_archforge_which_pushes_it() {
    use common::registry::{Mode, PASSWORD, TestRegistry};
    let registry = TestRegistry::start(Mode::Htpasswd);
    let git = common::git::GitServer::start();
    let work = tempfile::tempdir().unwrap();
    let fixture = work.path().join("fixture");
    let real = oci_layout(&fixture);
    let forged = format!("sha256:{}", "f".repeat(64));
    let metadata = format!(
        r#"{{"containerimage.descriptor": {{"annotations": {{"x.containerimage.digest": "{forged}"}}, "digest": "{forged}"}}, "containerimage.digest": "{real}"}}"#
    );
    std::fs::write(work.path().join("metadata.json"), metadata).unwrap();
    let bin = work.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let record = work.path().join("record");
    let script = format!(
        r#"#!/bin/sh
printf '%s\n' "$@" > '{record}.argv'
export -p > '{record}.env'
cat "$DOCKER_CONFIG/config.json" > '{record}.pull' 2>/dev/null
prev=
for a in "$@"; do
  case "$prev" in
    --output) dest=$(printf '%s' "$a" | sed -n 's/.*dest=\([^,]*\).*/\1/p') ;;
    --metadata-file) meta=$a ;;
  esac
  prev=$a
done
cp -r '{fixture}' "$dest"
cp '{metadata}' "$meta"
"#,
        record = record.display(),
        fixture = fixture.display(),
        metadata = work.path().join("metadata.json").display(),
    );
    use std::os::unix::fs::PermissionsExt;
    for (tool, text) in [
        ("buildctl-daemonless.sh", script.as_str()),
        ("buildctl", "#!/bin/sh\n"),
        ("buildkitd", "#!/bin/sh\n"),
    ] {
        let path = bin.join(tool);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (url, _) = git.commit("bk", &[("Dockerfile", "FROM scratch\n")], "bk");
    let pull = r#"{"auths":{"base.example.com":{"auth":"cHVsbDpwdWxsLXRva2Vu"}}}"#;
    let file = work.path().join("ib.yaml");
    let image = registry.image("team/bk:v1");
    std::fs::write(
        &file,
        format!(
            "apiVersion: archforge.dev/v1alpha1\nkind: ImageBuild\nmetadata:\n  name: bk\nspec:\n  source:\n    git:\n      url: {url}\n      ref: main\n  platforms: [linux/amd64]\n  strategy: buildkit\n  pullSecret: pull\n  output:\n    image: {image}\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: pull\nstringData:\n  .dockerconfigjson: '{pull}'\n"
        ),
    )
    .unwrap();
    let push = work.path().join("push.json");
    std::fs::write(&push, registry.docker_config_json(PASSWORD)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_archforge"))
        .args(["build", "--local"])
        .arg(&file)
        .args(["--insecure-registry", &registry.addr])
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        // The push credentials reach archforge through its environment: never its builder's.
        .env("ARCHFORGE_DOCKER_CONFIG", &push)
        .current_dir(work.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&real), "the real digest: {stdout}");
    assert!(!stdout.contains(&forged), "{stdout}");

    let argv = std::fs::read_to_string(record.with_extension("argv")).unwrap();
    let output = argv
        .lines()
        .skip_while(|l| *l != "--output")
        .nth(1)
        .unwrap();
    assert!(
        output.starts_with("type=oci,tar=false,dest=") && output.ends_with(",oci-mediatypes=true"),
        "{output}"
    );
    assert!(!argv.contains("push"), "{argv}");
    let env = std::fs::read_to_string(record.with_extension("env")).unwrap();
    assert!(!env.contains("ARCHFORGE_DOCKER_CONFIG"), "{env}");
    assert!(!env.contains(&push.display().to_string()), "{env}");
    assert!(!env.contains(PASSWORD), "{env}");
    assert_eq!(
        std::fs::read_to_string(record.with_extension("pull")).unwrap(),
        pull
    );

    let repository = image.rsplit_once(':').unwrap().0;
    let pushed = registry.skopeo_inspect(&format!("{repository}@{real}"), &["--raw"]);
    assert!(pushed.contains("layers"), "{pushed}");
}
