//! Base images made on this machine from Debian's busybox-static, so no test pulls anything
//! from the internet: a rootfs with the static busybox binary is an image that can RUN.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use archforge::api::MediaType;
use archforge::plan::Platform;
use archforge::registry::{PlatformImage, Registry, RegistryOptions};

use super::run;

/// Where `scripts/setup-host.sh` puts the foreign busybox binaries:
/// `<dir>/<arch>/busybox`. Overridable with ARCHFORGE_FIXTURES.
pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("ARCHFORGE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::repo_root().join("target/fixtures"))
}

fn busybox_for(arch: &str) -> PathBuf {
    if arch == archforge::local::host_architecture() {
        return PathBuf::from("/bin/busybox");
    }
    let path = fixtures_dir().join(arch).join("busybox");
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup-host.sh (it downloads busybox-static:{arch})",
        path.display()
    );
    path
}

/// Builds a busybox image per platform with buildah, pushes each to `<reference>-<slug>`
/// (plain HTTP to `insecure`), and assembles them under `reference` (`host/repo:tag`).
/// Returns the index digest.
pub async fn publish_busybox_base(
    reference: &str,
    platforms: &[&str],
    options: RegistryOptions,
    work: &Path,
) -> String {
    let registries_conf = work.join("fixture-registries.conf");
    let mut conf = String::from("unqualified-search-registries = []\n");
    for registry in &options.insecure {
        conf.push_str(&format!(
            "[[registry]]\nlocation = \"{registry}\"\ninsecure = true\n"
        ));
    }
    std::fs::write(&registries_conf, conf).unwrap();
    let buildah = |args: &[&str]| {
        let mut cmd = Command::new("buildah");
        cmd.arg("--root")
            .arg(work.join("fixture-storage"))
            .arg("--runroot")
            .arg(work.join("fixture-run"));
        cmd.args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_REGISTRIES_CONF", &registries_conf);
        cmd
    };
    let mut images = Vec::new();
    for p in platforms {
        let platform: Platform = p.parse().unwrap();
        let arch = platform.architecture.as_str();
        let rootfs = work.join(format!("rootfs-{}", platform.slug()));
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::create_dir_all(rootfs.join("tmp")).unwrap();
        std::fs::copy(busybox_for(arch), rootfs.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "uname", "cat", "echo", "ls", "mkdir", "printf", "test", "false", "true",
        ] {
            let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
        }
        let container = run(&mut buildah(&[
            "from", "--arch", arch, "--os", "linux", "scratch",
        ]));
        run(&mut buildah(&[
            "copy",
            &container,
            &format!("{}/", rootfs.display()),
            "/",
        ]));
        run(&mut buildah(&[
            "config", "--arch", arch, "--os", "linux", "--cmd", "/bin/sh", &container,
        ]));
        let tag = format!("{reference}-{}", platform.slug());
        run(&mut buildah(&["commit", "-q", &container, &tag]));
        let digest_file = work.join(format!("digest-{}", platform.slug()));
        run(&mut buildah(&[
            "push",
            "--digestfile",
            digest_file.to_str().unwrap(),
            &tag,
            &format!("docker://{tag}"),
        ]));
        run(&mut buildah(&["rm", &container]));
        images.push(PlatformImage {
            platform,
            digest: std::fs::read_to_string(digest_file)
                .unwrap()
                .trim()
                .to_string(),
        });
    }
    let registry = Registry::new(options);
    registry
        .assemble_index(reference, &images, MediaType::Oci, &Default::default())
        .await
        .expect("the base index assembles")
        .digest
}
