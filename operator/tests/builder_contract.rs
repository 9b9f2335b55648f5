//! The builder image contract, checked by the builder scripts before anything else: the real
//! scripts of rendered Jobs run under `/bin/sh` against fake images (tests/common/builder.rs)
//! that each lack one piece, and must stop with exactly one line naming it and what to do.

mod common;

use archforge::api::ImageBuild;
use archforge::plan::{AuthFile, plan};
use archforge::render::render_jobs;
use archforge::settings::BuilderSettings;
use archforge::validation::ValidSpec;
use common::builder::{FakeImage, Helper, Ran, recorder, run_container_in};
use k8s_openapi::api::batch::v1::Job;
use serde_json::json;

fn job(strategy: &str) -> Job {
    let mut object = serde_json::to_value(common::sample()).unwrap();
    object["spec"]["strategy"] = json!(strategy);
    let build: ImageBuild = serde_json::from_value(object).unwrap();
    let settings = BuilderSettings::default();
    let plan = plan(
        &ValidSpec::check(&build).unwrap(),
        &settings,
        "main",
        AuthFile::None,
    );
    render_jobs(&build, &plan, &settings, "1.24".parse().unwrap()).remove(0)
}

fn checkout(checkout: &std::path::Path) {
    std::fs::create_dir_all(checkout.join("guestbook-go")).unwrap();
    std::fs::write(checkout.join("guestbook-go/Dockerfile"), "FROM scratch\n").unwrap();
}

fn run(image: &FakeImage, strategy: &str, dir: &std::path::Path) -> Ran {
    let tool = match strategy {
        "buildah" => "buildah",
        _ => "buildctl-daemonless.sh",
    };
    run_container_in(
        image,
        &job(strategy),
        dir,
        checkout,
        tool,
        recorder,
        |_, v| v.to_string(),
    )
}

/// Runs the script against `image` and returns its one line of refusal, after checking it
/// is exactly one line, that the run failed, and that no build ran.
fn refusal(image: &FakeImage, strategy: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let ran = run(image, strategy, dir.path());
    let stderr = ran.stderr();
    assert!(!ran.output.status.success(), "{strategy} built: {stderr}");
    assert!(ran.calls.is_empty(), "the builder ran: {:?}", ran.calls);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    stderr.trim_end().to_string()
}

const SETUID: &str = "archforge: the builder image's newuidmap is setuid-root, which cannot map IDs with the capabilities a baseline pod has; use an image whose newuidmap/newgidmap carry file capabilities (setcap cap_setuid=ep), such as quay.io/buildah/stable";

#[test]
fn an_image_that_meets_the_contract_builds() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run(&FakeImage::default(), "buildah", dir.path());
    assert!(ran.output.status.success(), "{}", ran.stderr());
    assert_eq!(ran.calls.len(), 2, "build and push: {:?}", ran.calls);
    assert_eq!(ran.stderr(), "");
    // BuildKit gets past its checks to buildctl (whose metadata tests/render.rs fakes).
    let dir = tempfile::tempdir().unwrap();
    let ran = run(&FakeImage::default(), "buildkit", dir.path());
    assert_eq!(ran.calls.len(), 1, "{}", ran.stderr());
}

#[test]
fn buildah_without_what_it_needs_is_named_in_one_line() {
    let uid = common::run(std::process::Command::new("id").arg("-u"));
    let image = FakeImage::default;
    let single_mapping = || FakeImage {
        map_lines: 1,
        ..image()
    };
    let cases: Vec<(&str, FakeImage, String)> = vec![
        (
            "no buildah",
            FakeImage { buildah_version: None, ..image() },
            "archforge: the builder image has no buildah on PATH; use a buildah image (operator setting --builder-image, Helm value builder.image) such as quay.io/buildah/stable:v1.43.0".into(),
        ),
        (
            "buildah 1.28",
            FakeImage { buildah_version: Some("buildah version 1.28.2 (image-spec 1.1.0-rc2, runtime-spec 1.0.2-dev)".into()), ..image() },
            "archforge: the builder image's buildah is 1.28; archforge pushes by digest alone (@@unknown-digest@@), which needs buildah 1.33 or newer; use a newer image (operator setting --builder-image, Helm value builder.image) such as quay.io/buildah/stable:v1.43.0".into(),
        ),
        (
            "buildah 1.32, just below",
            FakeImage { buildah_version: Some("buildah version 1.32.9 (image-spec 1.1.0)".into()), ..image() },
            "archforge: the builder image's buildah is 1.32; archforge pushes by digest alone (@@unknown-digest@@), which needs buildah 1.33 or newer; use a newer image (operator setting --builder-image, Helm value builder.image) such as quay.io/buildah/stable:v1.43.0".into(),
        ),
        (
            // Two version lines made the old parse a two-line number that `[ -lt ]` could not
            // compare, which let the check pass: only the first counts.
            "a buildah that prints two versions",
            FakeImage { buildah_version: Some("buildah version 1.28.2\nbuildah version 1.40.0".into()), ..image() },
            "archforge: the builder image's buildah is 1.28; archforge pushes by digest alone (@@unknown-digest@@), which needs buildah 1.33 or newer; use a newer image (operator setting --builder-image, Helm value builder.image) such as quay.io/buildah/stable:v1.43.0".into(),
        ),
        (
            "a buildah that says no version",
            FakeImage { buildah_version: Some("$(touch pwned) not a version".into()), ..image() },
            "archforge: the builder image's buildah is of an unknown version; archforge pushes by digest alone (@@unknown-digest@@), which needs buildah 1.33 or newer; use a newer image (operator setting --builder-image, Helm value builder.image) such as quay.io/buildah/stable:v1.43.0".into(),
        ),
        (
            "BusyBox realpath",
            FakeImage { busybox_realpath: true, ..image() },
            "archforge: the builder image's realpath does not take -m (GNU coreutils), which the check of the repository's symlinks needs; use an image with GNU coreutils, such as quay.io/buildah/stable".into(),
        ),
        (
            "no fuse-overlayfs",
            FakeImage { fuse_overlayfs: false, ..image() },
            "archforge: the builder image has no fuse-overlayfs, which rootless buildah's overlay storage needs; use an image that has it, such as quay.io/buildah/stable".into(),
        ),
        (
            "no fuse device",
            FakeImage { fuse_device: "/nonexistent/fuse".into(), ..image() },
            "archforge: /nonexistent/fuse is not in the builder container; the node's fuse device plugin gives it for the extended resource the Job asks for (operator setting --fuse-resource, Helm value builder.fuseResource): install a fuse device plugin (config/fuse-device-plugin) or name the resource yours advertises".into(),
        ),
        (
            "a fuse device that is a file",
            FakeImage { fuse_device: "/etc/passwd".into(), ..image() },
            "archforge: /etc/passwd is not in the builder container; the node's fuse device plugin gives it for the extended resource the Job asks for (operator setting --fuse-resource, Helm value builder.fuseResource): install a fuse device plugin (config/fuse-device-plugin) or name the resource yours advertises".into(),
        ),
        (
            "seccomp refuses the user namespace",
            FakeImage { unshare_fails: Some("Error during unshare(CLONE_NEWUSER): Operation not permitted".into()), ..image() },
            "archforge: buildah cannot create a user namespace (Error during unshare(CLONE_NEWUSER): Operation not permitted); when unshare(CLONE_NEWUSER) is not permitted, the node's seccomp profile refuses it: use the shipped profile (operator setting --seccomp-profile localhost/archforge/archforge-builder.json, Helm value builder.seccompProfile)".into(),
        ),
        (
            "no newuidmap",
            FakeImage { newuidmap: Helper::Missing, ..single_mapping() },
            "archforge: the builder image has no newuidmap, so buildah cannot map the subordinate IDs a RUN step needs; use an image whose newuidmap/newgidmap carry file capabilities (setcap cap_setuid=ep / cap_setgid=ep), such as quay.io/buildah/stable".into(),
        ),
        (
            "setuid-root newuidmap (Debian's uidmap)",
            FakeImage { newuidmap: Helper::SetuidRoot, newgidmap: Helper::SetuidRoot, ..single_mapping() },
            SETUID.into(),
        ),
        (
            "no subordinate UIDs for the builder",
            FakeImage { subuid: Some("someone:100000:65536\n".into()), ..single_mapping() },
            format!("archforge: the builder image's SUBUID gives UID {uid} no subordinate range; run the builder as the image's build user (operator setting --builder-uid, Helm value builder.uid; 1000 in quay.io/buildah/stable) or add a line {uid}:100000:65536 to SUBUID in the image"),
        ),
        (
            "everything in place, yet one mapping",
            single_mapping(),
            format!("archforge: buildah mapped a single uid instead of UID {uid}'s subordinate range (a RUN step would fail); check that newuidmap carries file capabilities (cap_setuid=ep) and that SUBUID gives UID {uid} a range"),
        ),
    ];
    for (what, image, expected) in cases {
        let line = refusal(&image, "buildah");
        let line = normalize(&line);
        assert_eq!(line, expected, "{what}");
    }
}

/// The subordinate ID files are the test's own, in a temporary directory: named SUBUID and
/// SUBGID in the expected lines.
fn normalize(line: &str) -> String {
    let re = regex::Regex::new(r"/[^ ]*/sub([ug])id\b").unwrap();
    re.replace_all(line, |c: &regex::Captures| {
        format!("SUB{}ID", c[1].to_uppercase())
    })
    .into_owned()
}

#[test]
fn a_setuid_newgidmap_alone_is_named() {
    let image = FakeImage {
        map_lines: 1,
        newgidmap: Helper::SetuidRoot,
        ..FakeImage::default()
    };
    // newuidmap maps (it has file capabilities), so it is newgidmap that is named.
    let image = FakeImage {
        map_lines_uid: Some(3),
        ..image
    };
    assert_eq!(
        refusal(&image, "buildah"),
        SETUID.replace("newuidmap is", "newgidmap is")
    );
}

#[test]
fn buildkit_without_what_rootlesskit_needs_is_named_in_one_line() {
    let uid = common::run(std::process::Command::new("id").arg("-u"));
    let image = FakeImage::default;
    let cases: Vec<(&str, FakeImage, String)> = vec![
        (
            "no rootlesskit",
            FakeImage { buildkit_tools: vec!["buildctl", "buildkitd"], ..image() },
            "archforge: the BuildKit image has no rootlesskit on PATH; use a rootless BuildKit image (operator setting --buildkit-image, Helm value builder.buildkitImage) that has buildctl-daemonless.sh, buildctl, buildkitd and rootlesskit".into(),
        ),
        (
            "no newgidmap",
            FakeImage { newgidmap: Helper::Missing, ..image() },
            "archforge: the BuildKit image has no newgidmap, which rootlesskit needs to map subordinate IDs; use an image whose newuidmap/newgidmap carry file capabilities (setcap cap_setuid=ep / cap_setgid=ep)".into(),
        ),
        (
            "setuid-root newuidmap",
            FakeImage { newuidmap: Helper::SetuidRoot, ..image() },
            "archforge: the BuildKit image's newuidmap is setuid-root, which cannot map IDs with the capabilities a baseline pod has; use an image whose newuidmap/newgidmap carry file capabilities (setcap cap_setuid=ep), e.g. one built FROM the rootless BuildKit image that removes the setuid bit and runs setcap (README, Builder images)".into(),
        ),
        (
            "no subordinate GIDs",
            FakeImage { subgid: Some(String::new()), ..image() },
            format!("archforge: the BuildKit image's SUBGID gives UID {uid} no subordinate range; use a rootless BuildKit image whose user {uid} has one (user:100000:65536 in moby/buildkit's rootless images)"),
        ),
    ];
    for (what, image, expected) in cases {
        assert_eq!(normalize(&refusal(&image, "buildkit")), expected, "{what}");
    }
}

/// As root every device is writable, so the script runs as another user against a device
/// node only root may open (as a node whose udev rules leave /dev/fuse 0600 gives it).
#[test]
fn a_fuse_device_the_builder_cannot_open_is_named() {
    let devices = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        devices.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let device = devices.path().join("fuse");
    // The character device of /dev/null, mode 0600, owned by root.
    common::run(
        std::process::Command::new("mknod")
            .args(["-m", "600"])
            .arg(&device)
            .args(["c", "1", "3"]),
    );
    let image = FakeImage {
        fuse_device: device.clone(),
        run_as: Some(65534),
        ..FakeImage::default()
    };
    assert_eq!(
        refusal(&image, "buildah"),
        format!(
            "archforge: {} is not readable and writable by UID 65534 (the device keeps the node's mode); make it mode 0666 on the nodes, as udev does",
            device.display()
        )
    );
}

/// What the image says (buildah's output, the subordinate ID files) is printed or compared,
/// never run: shell syntax in it does nothing.
#[test]
fn what_the_image_says_is_never_run() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let hostile = format!("$(touch {m}) `touch {m}`", m = marker.display());
    for image in [
        FakeImage {
            unshare_fails: Some(hostile.clone()),
            ..FakeImage::default()
        },
        FakeImage {
            map_lines: 1,
            subuid: Some(format!("{hostile}:1:2\n")),
            ..FakeImage::default()
        },
        FakeImage {
            buildah_version: Some(format!("buildah version {hostile}")),
            ..FakeImage::default()
        },
    ] {
        let line = refusal(&image, "buildah");
        assert!(line.starts_with("archforge: "), "{line}");
    }
    assert!(!marker.exists(), "the image's output was run by a shell");
}
