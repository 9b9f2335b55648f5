//! Helpers of the signing scenarios: the key Secret as an ImageBuild names it, the
//! `archforge verify` command line, and what a registry's tags say about leftovers.

use std::path::Path;

use archforge::registry::{Registry, parse_reference};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;

use crate::config::Settings;

/// The key of the PEM private key in a signing Secret.
pub const KEY: &str = "cosign.key";
/// The key of an encrypted key's password in a signing Secret.
pub const PASSWORD: &str = "cosign.password";

/// A signing Secret named `name`: `pem` under `cosign.key`, and `password` under
/// `cosign.password` when given (the layout `cosign generate-key-pair k8s://...` writes).
pub fn key_secret(name: &str, pem: &[u8], password: Option<&[u8]>) -> Secret {
    let mut data = std::collections::BTreeMap::from([(KEY.to_string(), ByteString(pem.to_vec()))]);
    if let Some(password) = password {
        data.insert(PASSWORD.to_string(), ByteString(password.to_vec()));
    }
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// The `archforge verify` arguments for `image` and the public key in `key_file`, reaching
/// the suite's registry as the operator does.
pub fn verify_args(settings: &Settings, image: &str, key_file: &Path) -> Vec<String> {
    let mut args = vec![
        "verify".to_string(),
        image.to_string(),
        format!("--key={}", key_file.display()),
    ];
    if settings.insecure_registry {
        args.push(format!("--insecure-registry={}", settings.registry));
    }
    args
}

/// The tags among `tags` that a per-platform push of the output tag `tag` leaves behind
/// (`v1-linux-arm64` for `v1`); cosign's `sha256-<hex>.sig`/`.att` tags are not among them.
pub fn platform_tags_left<'a>(tags: &'a [String], tag: &str) -> Vec<&'a str> {
    let prefix = format!("{tag}-");
    tags.iter()
        .map(String::as_str)
        .filter(|t| {
            t.strip_prefix(&prefix)
                .is_some_and(|platform| platform.split('-').count() >= 2)
        })
        .collect()
}

/// Every tag of `image`'s repository (the registry's tag list, page by page).
pub async fn repository_tags(registry: &Registry, image: &str) -> anyhow::Result<Vec<String>> {
    let reference = parse_reference(image)?;
    let auth = registry.auth_for(&reference)?;
    let mut tags: Vec<String> = Vec::new();
    loop {
        let page = registry
            .client()
            .list_tags(
                &reference,
                &auth,
                Some(100),
                tags.last().map(String::as_str),
            )
            .await?;
        let done = page.tags.len() < 100;
        tags.extend(page.tags);
        if done {
            break;
        }
    }
    Ok(tags)
}

/// Whether `text` holds 12 characters in a row of `secret` (a leak of it).
pub fn leaks(text: &str, secret: &str) -> Option<String> {
    let chars: Vec<char> = secret.chars().collect();
    chars
        .windows(12)
        .map(|w| w.iter().collect::<String>())
        .find(|piece| text.contains(piece.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftover_platform_tags_are_told_from_attachments_and_other_tags() {
        let tags: Vec<String> = [
            "v1",
            "v1-linux-amd64",
            "v1-linux-arm-v7",
            "v10",
            "v1-rc",
            "sha256-0123.sig",
            "sha256-0123.att",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            platform_tags_left(&tags, "v1"),
            ["v1-linux-amd64", "v1-linux-arm-v7"]
        );
        assert!(platform_tags_left(&tags, "v2").is_empty());
    }

    #[test]
    fn a_key_secret_has_the_cosign_layout() {
        let s = key_secret("k", b"PEM", None);
        let keys: Vec<&String> = s.data.as_ref().unwrap().keys().collect();
        assert_eq!(keys, [KEY]);
        let s = key_secret("k", b"PEM", Some(b"pw"));
        assert_eq!(s.data.unwrap()[PASSWORD].0, b"pw");
    }

    #[test]
    fn verify_reaches_an_insecure_registry_like_the_operator() {
        let mut settings = Settings {
            kubeconfig: "/k".into(),
            registry: "10.0.0.5:5000".into(),
            insecure_registry: true,
            simulate_nodes: true,
            operator: "/bin/archforge".into(),
            git_url: String::new(),
            git_ref: String::new(),
            keep_namespaces: false,
        };
        let args = verify_args(&settings, "10.0.0.5:5000/e2e/app:v1", Path::new("/k.pub"));
        assert_eq!(
            args,
            [
                "verify",
                "10.0.0.5:5000/e2e/app:v1",
                "--key=/k.pub",
                "--insecure-registry=10.0.0.5:5000"
            ]
        );
        settings.insecure_registry = false;
        assert_eq!(
            verify_args(&settings, "r/a:v1", Path::new("/k.pub")).len(),
            3
        );
    }

    #[test]
    fn a_leak_is_any_twelve_characters_of_the_secret() {
        let secret = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49";
        assert_eq!(leaks("the key is malformed", secret), None);
        assert!(leaks("body: xxMBMGByqGSM49Ag", secret).is_some());
        assert_eq!(leaks("anything", "short"), None);
    }
}
