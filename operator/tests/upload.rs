//! `build --local`'s upload of a `dir:` image by digest, against a real registry: what the
//! build wrote is the build's (a Dockerfile can make a layer of any size), so the upload holds
//! no layer in memory whole. Its own test binary: the measure is this process's peak memory.

mod common;

use std::io::Write;

use archforge::registry::{Registry, sha256_digest};
use common::registry::{Mode, TestRegistry};
use sha2::{Digest, Sha256};

/// The process's peak resident memory (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn a_big_layer_is_uploaded_without_being_held_in_memory() {
    const LAYER: u64 = 256 << 20;
    let reg = TestRegistry::start(Mode::Plain);
    let registry = Registry::new(reg.options());
    let dir = tempfile::tempdir().unwrap();

    // An incompressible layer, written and hashed a chunk at a time.
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 1 << 20];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let tmp = dir.path().join("layer.tmp");
    let mut file = std::fs::File::create(&tmp).unwrap();
    for _ in 0..(LAYER >> 20) {
        for b in chunk.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
        hasher.update(&chunk);
        file.write_all(&chunk).unwrap();
    }
    drop(file);
    let layer_hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::rename(&tmp, dir.path().join(&layer_hex)).unwrap();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = sha256_digest(config);
    std::fs::write(
        dir.path().join(config_digest.trim_start_matches("sha256:")),
        config,
    )
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": format!("sha256:{layer_hex}"), "size": LAYER}],
    }))
    .unwrap();
    std::fs::write(dir.path().join("manifest.json"), &manifest).unwrap();

    let before = peak_rss();
    let repository = reg.image("team/app");
    let digest = registry
        .upload_dir_image(&repository, dir.path(), Some(&sha256_digest(&manifest)))
        .await
        .unwrap();
    let grew = peak_rss().saturating_sub(before);
    eprintln!("uploaded {digest}; peak memory grew by {} MiB", grew >> 20);
    assert_eq!(digest, sha256_digest(&manifest));
    assert!(
        grew < LAYER / 4,
        "uploading a {} MiB layer raised peak memory by {} MiB",
        LAYER >> 20,
        grew >> 20
    );

    // The registry has the layer, byte for byte: skopeo reads it back by digest.
    let out = common::run(
        std::process::Command::new("skopeo")
            .arg("inspect")
            .arg("--raw")
            .args(reg.skopeo_tls_args())
            .arg(format!("docker://{repository}@{digest}")),
    );
    assert!(out.contains(&layer_hex), "{out}");
    let copy = dir.path().join("copy");
    common::run(
        std::process::Command::new("skopeo")
            .arg("copy")
            .args(reg.skopeo_tls_args())
            .arg(format!("docker://{repository}@{digest}"))
            .arg(format!("dir:{}", copy.display())),
    );
    assert_eq!(
        std::fs::metadata(copy.join(&layer_hex)).unwrap().len(),
        LAYER
    );
}
