use std::path::Path;

use super::*;

const CONFIG: &[u8] =
    br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
const LAYER: &[u8] = b"not really a tar, but blobs are bytes";

fn hex(digest: &str) -> &str {
    digest.trim_start_matches("sha256:")
}

fn manifest(config: &str, layer: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 1}],
    }))
    .unwrap()
}

/// buildah's `dir:` format: manifest.json and each blob by its hex digest.
fn dir_image(dir: &Path) -> String {
    for blob in [CONFIG, LAYER] {
        std::fs::write(dir.join(hex(&sha256_digest(blob))), blob).unwrap();
    }
    let manifest = manifest(&sha256_digest(CONFIG), &sha256_digest(LAYER));
    std::fs::write(dir.join("manifest.json"), &manifest).unwrap();
    sha256_digest(&manifest)
}

/// An OCI layout (as BuildKit's `type=oci,tar=false` writes it) whose index names `entries`.
fn oci_image(dir: &Path, entries: usize) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let manifest = manifest(&sha256_digest(CONFIG), &sha256_digest(LAYER));
    for blob in [CONFIG, LAYER, &manifest] {
        std::fs::write(blobs.join(hex(&sha256_digest(blob))), blob).unwrap();
    }
    let digest = sha256_digest(&manifest);
    let entry =
        serde_json::json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": manifest.len()});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": vec![entry; entries]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    digest
}

fn refusal(dir: &Path) -> String {
    read_handoff(dir).unwrap_err().to_string()
}

#[test]
fn both_formats_are_read_with_their_own_digest() {
    let dir = tempfile::tempdir().unwrap();
    let digest = dir_image(dir.path());
    let image = read_handoff(dir.path()).unwrap();
    assert_eq!(image.digest, digest);
    assert_eq!(image.media_type, OCI_MANIFEST);
    assert_eq!(image.blobs.len(), 2);
    assert_eq!(image.blobs[1].2, LAYER.len() as u64);

    let oci = tempfile::tempdir().unwrap();
    let digest = oci_image(oci.path(), 1);
    let image = read_handoff(oci.path()).unwrap();
    assert_eq!(image.digest, digest);
    assert_eq!(image.blobs[0].0, sha256_digest(CONFIG));
}

#[test]
fn a_blob_named_outside_the_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    dir_image(dir.path());
    for digest in [
        "sha256:../../../etc/passwd".to_string(),
        format!("sha256:{}/../x", "a".repeat(60)),
        "/etc/passwd".to_string(),
        format!("sha512:{}", "a".repeat(64)),
    ] {
        let bad = manifest(&sha256_digest(CONFIG), &digest);
        std::fs::write(dir.path().join("manifest.json"), bad).unwrap();
        let err = refusal(dir.path());
        assert!(err.contains("is not sha256:"), "{digest}: {err}");
    }
}

#[test]
fn symlinks_are_never_followed() {
    // A link to a file the pusher can read (its credentials, in the pod) is refused, as a
    // blob, as the manifest, and as the directory itself.
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), CONFIG).unwrap();
    let dir = tempfile::tempdir().unwrap();
    dir_image(dir.path());
    let blob = dir.path().join(hex(&sha256_digest(CONFIG)));
    std::fs::remove_file(&blob).unwrap();
    std::os::unix::fs::symlink(secret.path(), &blob).unwrap();
    let err = refusal(dir.path());
    assert!(err.contains("is a symlink"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(secret.path(), dir.path().join("manifest.json")).unwrap();
    assert!(refusal(dir.path()).contains("manifest.json is a symlink"));

    let real = tempfile::tempdir().unwrap();
    dir_image(real.path());
    let parent = tempfile::tempdir().unwrap();
    let link = parent.path().join("image");
    std::os::unix::fs::symlink(real.path(), &link).unwrap();
    assert!(
        refusal(&link).contains("is a symlink"),
        "{}",
        refusal(&link)
    );

    let oci = tempfile::tempdir().unwrap();
    oci_image(oci.path(), 1);
    std::fs::rename(oci.path().join("blobs"), oci.path().join("real")).unwrap();
    std::os::unix::fs::symlink(oci.path().join("real"), oci.path().join("blobs")).unwrap();
    assert!(refusal(oci.path()).contains("blobs is a symlink"));
}

#[test]
fn an_oversize_manifest_or_index_is_not_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::File::create(dir.path().join("manifest.json")).unwrap();
    file.set_len(MAX_MANIFEST_BYTES + 1).unwrap();
    let err = refusal(dir.path());
    assert!(
        err.contains(&format!("over {MAX_MANIFEST_BYTES} bytes")),
        "{err}"
    );

    let oci = tempfile::tempdir().unwrap();
    oci_image(oci.path(), 1);
    let file = std::fs::File::create(oci.path().join("index.json")).unwrap();
    file.set_len(MAX_MANIFEST_BYTES + 1).unwrap();
    assert!(refusal(oci.path()).contains("index.json is over"));
}

#[test]
fn content_that_does_not_match_its_digest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    dir_image(dir.path());
    std::fs::write(dir.path().join(hex(&sha256_digest(LAYER))), b"swapped").unwrap();
    let err = refusal(dir.path());
    assert!(err.contains("does not have that digest"), "{err}");

    let oci = tempfile::tempdir().unwrap();
    let digest = oci_image(oci.path(), 1);
    std::fs::write(oci.path().join("blobs/sha256").join(hex(&digest)), b"{}").unwrap();
    let err = refusal(oci.path());
    assert!(
        err.contains("manifest blob") && err.contains("does not have that digest"),
        "{err}"
    );
}

#[test]
fn a_layout_must_name_exactly_one_image_manifest() {
    let oci = tempfile::tempdir().unwrap();
    oci_image(oci.path(), 2);
    assert!(refusal(oci.path()).contains("names 2 manifests"));
    oci_image(oci.path(), 0);
    assert!(refusal(oci.path()).contains("names 0 manifests"));

    let digest = oci_image(oci.path(), 1);
    let index = serde_json::json!({"manifests": [{"mediaType": OCI_INDEX, "digest": digest}]});
    std::fs::write(oci.path().join("index.json"), index.to_string()).unwrap();
    assert!(refusal(oci.path()).contains("an image index, not one image manifest"));
}

#[test]
fn an_empty_or_missing_handoff_says_so() {
    let dir = tempfile::tempdir().unwrap();
    assert!(refusal(dir.path()).contains("cannot read manifest.json"));
    assert!(refusal(&dir.path().join("absent")).contains("cannot read"));
}
