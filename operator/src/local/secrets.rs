//! The Secrets that come with the ImageBuild file, and the git credentials taken from them.

use std::collections::BTreeMap;

use super::LocalError;
use crate::api::ImageBuild;
use crate::source::GitCredentials;

/// The Secrets that came with the ImageBuild, as further YAML documents of its file: each
/// one's keys with their values, `data` (base64) and `stringData` merged as the API server
/// merges them. Its `Debug` shows names only.
#[derive(Clone, Default)]
pub struct LocalSecrets(BTreeMap<String, BTreeMap<String, Vec<u8>>>);

impl std::fmt::Debug for LocalSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl LocalSecrets {
    /// The Secrets of the file that holds the ImageBuild.
    pub fn from_file(path: &str) -> Result<Self, LocalError> {
        let text = std::fs::read_to_string(path).map_err(|source| LocalError::ReadFile {
            path: path.to_string(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// The `kind: Secret` documents of `text`. Errors never quote the file: it holds secrets.
    pub fn parse(path: &str, text: &str) -> Result<Self, LocalError> {
        let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(text)
            .map_err(|_| LocalError::Credentials(format!("{path} is not valid YAML")))?;
        let mut secrets = BTreeMap::new();
        for document in documents {
            if document.get("kind").and_then(|k| k.as_str()) != Some("Secret") {
                continue;
            }
            let name = document
                .pointer("/metadata/name")
                .and_then(|n| n.as_str())
                .unwrap_or_default()
                .to_string();
            if name.is_empty() {
                return Err(LocalError::Credentials(format!(
                    "a Secret in {path} has no metadata.name"
                )));
            }
            // Only the field's path: serde's own message may quote the (secret) value.
            let secret: k8s_openapi::api::core::v1::Secret =
                serde_path_to_error::deserialize(document).map_err(|e| {
                    LocalError::Credentials(format!(
                        "Secret {name:?} in {path}: {} is not valid (data values are base64, stringData values plain strings)",
                        e.path()
                    ))
                })?;
            let mut values: BTreeMap<String, Vec<u8>> = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            for (k, v) in secret.string_data.unwrap_or_default() {
                values.insert(k, v.into_bytes());
            }
            secrets.insert(name, values);
        }
        Ok(LocalSecrets(secrets))
    }

    /// Whether no Secret came with the ImageBuild.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The signing key (`cosign.key`) and its password (`cosign.password`, optional) of the
/// Secret `name`, the layout `cosign generate-key-pair k8s://<ns>/<name>` writes.
pub(super) fn signing_secret(
    secrets: &LocalSecrets,
    name: &str,
) -> Result<(Vec<u8>, Option<Vec<u8>>), LocalError> {
    let values = secrets.0.get(name).ok_or_else(|| {
        LocalError::Signing(format!(
            "spec.output.signing.keySecret names Secret {name:?}, which is not in the ImageBuild's file; add it there as another YAML document (---), or give --signing-key FILE"
        ))
    })?;
    let key = values
        .get(crate::supply::COSIGN_KEY)
        .filter(|v| !v.is_empty())
        .cloned()
        .ok_or_else(|| {
            LocalError::Signing(format!(
                "Secret {name:?} (spec.output.signing.keySecret) has no \"cosign.key\" key (a PEM private key, as cosign generate-key-pair writes it)"
            ))
        })?;
    Ok((key, values.get(crate::supply::COSIGN_PASSWORD).cloned()))
}

/// The docker config of `spec.pullSecret` (`.dockerconfigjson`), when the spec names one:
/// the only credentials the local build process gets (the push credentials stay in
/// archforge's own process, which uploads the image).
pub(super) fn pull_auth(
    build: &ImageBuild,
    secrets: &LocalSecrets,
) -> Result<Option<Vec<u8>>, LocalError> {
    let Some(name) = &build.spec.pull_secret else {
        return Ok(None);
    };
    let values = secrets.0.get(name).ok_or_else(|| {
        LocalError::Credentials(format!(
            "spec.pullSecret names Secret {name:?}, which is not in the ImageBuild's file; add it there as another YAML document (---)"
        ))
    })?;
    values
        .get(".dockerconfigjson")
        .filter(|v| !v.is_empty())
        .cloned()
        .map(Some)
        .ok_or_else(|| {
            LocalError::Credentials(format!(
                "Secret {name:?} (spec.pullSecret) has no \".dockerconfigjson\" key (a kubernetes.io/dockerconfigjson Secret)"
            ))
        })
}

/// How the git server of `spec.source.git` is authenticated to.
pub(super) enum GitAuth {
    Anonymous,
    Basic {
        secret: String,
        credentials: GitCredentials,
    },
    Ssh {
        secret: String,
        key: Vec<u8>,
        known_hosts: Vec<u8>,
    },
}

fn is_http_url(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("http://")
}

/// The credentials `spec.source.git.credentialsSecret` names, checked for what the URL needs.
pub(super) fn git_auth(build: &ImageBuild, secrets: &LocalSecrets) -> Result<GitAuth, LocalError> {
    let git = &build.spec.source.git;
    let Some(name) = &git.credentials_secret else {
        return Ok(GitAuth::Anonymous);
    };
    let values = secrets.0.get(name).ok_or_else(|| {
        LocalError::Credentials(format!(
            "spec.source.git.credentialsSecret names Secret {name:?}, which is not in the ImageBuild's file; add it there as another YAML document (---)"
        ))
    })?;
    let value = |key: &str, why: &str| {
        values
            .get(key)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| {
                LocalError::Credentials(format!(
                    "Secret {name:?} (spec.source.git.credentialsSecret) has no {key:?} key, which {why}"
                ))
            })
    };
    if is_http_url(&git.url) {
        let text = |key: &str| -> Result<String, LocalError> {
            let bytes = value(key, "an HTTP(S) git URL needs")?;
            let text = String::from_utf8(bytes).map_err(|_| {
                LocalError::Credentials(format!("the {key} of Secret {name:?} is not UTF-8"))
            })?;
            // git's credential protocol is line-based: a line break would add attributes.
            if text.contains(['\n', '\r', '\0']) {
                return Err(LocalError::Credentials(format!(
                    "the {key} of Secret {name:?} contains a line break or NUL"
                )));
            }
            Ok(text)
        };
        return Ok(GitAuth::Basic {
            secret: name.clone(),
            credentials: GitCredentials {
                username: text("username")?,
                password: text("password")?,
            },
        });
    }
    let mut key = value("ssh-privatekey", "an SSH git URL needs")?;
    // OpenSSH refuses a key file whose last line has no line break.
    if !key.ends_with(b"\n") {
        key.push(b'\n');
    }
    let known_hosts = value(
        "known_hosts",
        "SSH needs: the server's host key is checked strictly against it",
    )?;
    Ok(GitAuth::Ssh {
        secret: name.clone(),
        key,
        known_hosts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "apiVersion: archforge.dev/v1alpha1\nkind: ImageBuild\nmetadata:\n  name: app\nspec:\n  source:\n    git:\n      url: git@example.com:team/app.git\n      credentialsSecret: git\n  platforms: [linux/amd64]\n  output:\n    image: registry.example.com/team/app:v1\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: git\ndata:\n  ssh-privatekey: a2V5LWJ5dGVz\nstringData:\n  known_hosts: example.com ssh-ed25519 AAAA\n";

    #[test]
    fn secrets_of_the_file_merge_data_and_string_data() {
        let secrets = LocalSecrets::parse("ib.yaml", FILE).unwrap();
        assert_eq!(
            format!("{secrets:?}"),
            r#"{"git"}"#,
            "Debug shows names only"
        );
        let build = crate::manifest::parse_imagebuild("ib.yaml", FILE).unwrap();
        match git_auth(&build, &secrets).unwrap() {
            GitAuth::Ssh {
                key, known_hosts, ..
            } => {
                assert_eq!(
                    key, b"key-bytes\n",
                    "a final line break is added for OpenSSH"
                );
                assert_eq!(known_hosts, b"example.com ssh-ed25519 AAAA");
            }
            _ => panic!("an scp-like URL takes the SSH keys"),
        }
    }

    #[test]
    fn the_pull_secret_is_read_from_the_file_and_its_absence_named() {
        let with_pull = FILE.replace(
            "  platforms: [linux/amd64]\n",
            "  platforms: [linux/amd64]\n  pullSecret: pull\n",
        );
        let build = crate::manifest::parse_imagebuild("ib.yaml", &with_pull).unwrap();
        let err = pull_auth(&build, &LocalSecrets::default()).err().unwrap();
        assert!(
            err.to_string()
                .contains("spec.pullSecret names Secret \"pull\""),
            "{err}"
        );
        let without_key = format!(
            "{with_pull}---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: pull\nstringData:\n  other: x\n"
        );
        let secrets = LocalSecrets::parse("ib.yaml", &without_key).unwrap();
        let err = pull_auth(&build, &secrets).err().unwrap();
        assert!(err.to_string().contains(".dockerconfigjson"), "{err}");
        let good = format!(
            "{with_pull}---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: pull\nstringData:\n  .dockerconfigjson: '{{\"auths\":{{}}}}'\n"
        );
        let secrets = LocalSecrets::parse("ib.yaml", &good).unwrap();
        assert_eq!(
            pull_auth(&build, &secrets).unwrap().unwrap(),
            br#"{"auths":{}}"#
        );
        // No pullSecret: no credentials for the build, whatever Secrets the file holds.
        let plain = crate::manifest::parse_imagebuild("ib.yaml", FILE).unwrap();
        assert_eq!(pull_auth(&plain, &secrets).unwrap(), None);
    }

    #[test]
    fn missing_secrets_and_keys_are_named() {
        let build = crate::manifest::parse_imagebuild("ib.yaml", FILE).unwrap();
        let err = git_auth(&build, &LocalSecrets::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(
                "credentialsSecret names Secret \"git\", which is not in the ImageBuild's file"
            ),
            "{err}"
        );
        let without_known_hosts = FILE.replace("  known_hosts: example.com ssh-ed25519 AAAA\n", "");
        let secrets = LocalSecrets::parse("ib.yaml", &without_known_hosts).unwrap();
        let err = git_auth(&build, &secrets).err().unwrap().to_string();
        assert!(err.contains("has no \"known_hosts\" key"), "{err}");
    }

    #[test]
    fn unreadable_secret_values_are_not_quoted() {
        // serde's own message would quote it: "invalid type: integer `31337424242`".
        let broken = FILE.replace("a2V5LWJ5dGVz", "31337424242");
        let err = LocalSecrets::parse("ib.yaml", &broken)
            .unwrap_err()
            .to_string();
        assert!(err.contains("data.ssh-privatekey"), "{err}");
        assert!(!err.contains("31337424242"), "{err}");
    }
}
