//! The signing key of a run, and the facts its provenance is written from.
//!
//! The key is looked up before a run's Jobs are created, so a run that could never be
//! signed builds nothing, and again at assembly, where it signs. Neither the key nor its
//! password ever reaches an error message: [`KeyError`] names the format and the problem,
//! never a byte of either.

use std::path::Path;
use std::sync::Arc;

use kube::ResourceExt;

use super::error::{ReconcileError, Result};
use super::observe::{read_secret, secret_value};
use super::{Config, Context};
use crate::api::{ImageBuild, ImageBuildStatus, Strategy};
use crate::plan::{BuildPlan, RunId};
use crate::supply::{
    BuildFacts, COSIGN_KEY as KEY_FILE, COSIGN_PASSWORD as PASSWORD_FILE, KeyError, SigningKey,
};

/// Who builds, in the provenance's `runDetails.builder.id`: the operator, never a pod.
pub const BUILDER_ID: &str = "https://archforge.dev/operator";

/// Why a run that asks for signing has no usable key. Messages name the Secret, the key
/// and what fixes it, never key material.
#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    #[error(
        "spec.output.signing.keySecret: Secret {namespace}/{name} does not exist; create it with {KEY_FILE} (an ECDSA P-256 private key, PEM) and, for an encrypted key, {PASSWORD_FILE}, then change the ImageBuild (or set the archforge.dev/rebuild annotation) to run again"
    )]
    SecretMissing { namespace: String, name: String },

    #[error(
        "spec.output.signing.keySecret: Secret {namespace}/{name} has no {KEY_FILE} key; it needs {KEY_FILE} (an ECDSA P-256 private key, PEM) and, for an encrypted key, {PASSWORD_FILE}"
    )]
    KeyMissing { namespace: String, name: String },

    #[error(
        "spec.output.signing names no keySecret, so the run would be signed with the operator-wide key, but the operator builds in the ImageBuild's own namespace, where anyone who may edit there can reach the build and change what gets signed; set the operator's build namespace (--build-namespace, chart value builds.namespace) so builds run out of tenants' reach, name a Secret of this namespace's own in spec.output.signing.keySecret, or accept the weaker guarantee with --allow-in-namespace-signing (chart value signing.allowInNamespaceBuilds)"
    )]
    NeedsIsolation,

    #[error(
        "spec.output.signing names no keySecret and the operator has no signing key: set spec.output.signing.keySecret to a Secret with {KEY_FILE}, or start the operator with --signing-key-file (Helm value signing.existingSecret)"
    )]
    NoOperatorKey,

    #[error(
        "spec.output.signing.keySecret: {KEY_FILE} of Secret {namespace}/{name} cannot sign: {source}"
    )]
    Invalid {
        namespace: String,
        name: String,
        #[source]
        source: KeyError,
    },
}

impl SigningKeyError {
    /// The condition and Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            SigningKeyError::SecretMissing { .. }
            | SigningKeyError::KeyMissing { .. }
            | SigningKeyError::NoOperatorKey => "SigningKeyMissing",
            SigningKeyError::Invalid { .. } => "SigningKeyInvalid",
            SigningKeyError::NeedsIsolation => "SigningNeedsIsolation",
        }
    }
}

/// What the signing decision reads from the operator's settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SigningPolicy {
    /// Whether the operator has an operator-wide key (`--signing-key-file`).
    pub operator_key: bool,
    /// Whether builds run in the isolated build namespace (`--build-namespace`).
    pub isolated: bool,
    /// `--allow-in-namespace-signing`: the platform team accepts the weaker guarantee.
    pub allow_in_namespace: bool,
}

impl SigningPolicy {
    pub fn of(config: &Config) -> SigningPolicy {
        SigningPolicy {
            operator_key: config.signing_key.is_some(),
            isolated: config.build_namespace.is_some(),
            allow_in_namespace: config.allow_in_namespace_signing,
        }
    }
}

/// Which key signs a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySource<'a> {
    /// The run asks for no signing.
    Unsigned,
    /// The ImageBuild's own keySecret (in its namespace): allowed in both modes, since it
    /// vouches only for that namespace's builds.
    OwnSecret(&'a str),
    /// The operator-wide key: only for isolated builds, unless the platform team opted in.
    Operator,
}

/// Decides which key signs `build`'s run, from its spec and the operator's settings alone.
/// The operator-wide key vouches for every tenant's builds alike; in-namespace builds can
/// be reached by anyone who may edit the namespace, so it signs them only when the platform
/// team opted in ([`SigningKeyError::NeedsIsolation`] otherwise).
pub fn key_source(
    build: &ImageBuild,
    policy: SigningPolicy,
) -> std::result::Result<KeySource<'_>, SigningKeyError> {
    let Some(signing) = &build.spec.output.signing else {
        return Ok(KeySource::Unsigned);
    };
    if let Some(name) = &signing.key_secret {
        return Ok(KeySource::OwnSecret(name));
    }
    if !policy.operator_key {
        return Err(SigningKeyError::NoOperatorKey);
    }
    match policy.isolated || policy.allow_in_namespace {
        true => Ok(KeySource::Operator),
        false => Err(SigningKeyError::NeedsIsolation),
    }
}

/// The key that signs `build`'s run: `None` when it asks for no signing. A missing or
/// unusable key is a [`ReconcileError::SigningKey`]; a Secret that cannot be read for
/// another reason (the API server, RBAC) is [`ReconcileError::ReadSecret`], retried.
pub async fn signing_key(ctx: &Context, build: &ImageBuild) -> Result<Option<Arc<SigningKey>>> {
    let name = match key_source(build, SigningPolicy::of(&ctx.config))? {
        KeySource::Unsigned => return Ok(None),
        KeySource::Operator => return Ok(ctx.config.signing_key.clone()),
        KeySource::OwnSecret(name) => name,
    };
    let namespace = build.namespace().unwrap_or_default();
    let secret = match read_secret(ctx, build, name).await {
        Ok(secret) => secret,
        Err(ReconcileError::SecretMissing { namespace, name }) => {
            return Err(SigningKeyError::SecretMissing { namespace, name }.into());
        }
        Err(e) => return Err(e),
    };
    let Some(pem) = secret_value(&secret, KEY_FILE) else {
        return Err(SigningKeyError::KeyMissing {
            namespace,
            name: name.to_string(),
        }
        .into());
    };
    let password = secret_value(&secret, PASSWORD_FILE);
    SigningKey::from_pem_off_runtime(pem, password)
        .await
        .map(|key| Some(Arc::new(key)))
        .map_err(|source| {
            SigningKeyError::Invalid {
                namespace,
                name: name.to_string(),
                source,
            }
            .into()
        })
}

/// Reads and checks the operator-wide key once, at start. A password file that does not
/// exist means the key has none: the chart mounts a Secret whose `cosign.password` is
/// optional, as it is in an ImageBuild's keySecret. The error names the file and the
/// problem, never the key or the password.
pub fn load_operator_key(
    key_file: &Path,
    password_file: Option<&Path>,
) -> crate::Result<SigningKey> {
    let read_error = |path: &Path, source| crate::Error::ReadFile {
        path: format!("{} (--signing-key-file)", path.display()),
        source,
    };
    let pem = std::fs::read(key_file).map_err(|e| read_error(key_file, e))?;
    let password = match password_file {
        Some(file) => match std::fs::read(file) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(crate::Error::ReadFile {
                    path: format!("{} (--signing-key-password-file)", file.display()),
                    source: e,
                });
            }
        },
        None => None,
    };
    SigningKey::from_pem(&pem, password.as_deref()).map_err(|e| {
        read_error(
            key_file,
            std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        )
    })
}

/// What the provenance of `build`'s run says: all from the spec, the plan, the operator's
/// settings and the run's status, never from a builder pod. Whether the run was isolated,
/// and where, comes from the operator's settings alone. The times are the run's own,
/// so a retried assembly writes the same statements.
pub fn build_facts(
    config: &Config,
    build: &ImageBuild,
    plan: &BuildPlan,
    status: &ImageBuildStatus,
    finished_on: &str,
) -> BuildFacts {
    let builder_image = match plan.platforms.first().map(|p| p.strategy) {
        Some(Strategy::Buildkit) => &config.builder.buildkit_image,
        _ => &config.builder.builder_image,
    };
    let namespace = build.namespace().unwrap_or_default();
    BuildFacts {
        platforms: plan
            .platforms
            .iter()
            .map(|p| p.platform.to_string())
            .collect(),
        builder_image: builder_image.clone(),
        builder_id: BUILDER_ID.into(),
        invocation_id: format!(
            "{namespace}/{}/{}",
            build.name_any(),
            RunId::of(build).name(build)
        ),
        started_on: status.start_time.clone().unwrap_or_default(),
        finished_on: finished_on.to_string(),
        build_namespace: config.build_namespace.clone(),
        ..BuildFacts::from_spec(build, &plan.revision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(signing: serde_json::Value) -> ImageBuild {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "archforge.dev/v1alpha1", "kind": "ImageBuild",
            "metadata": {"name": "app", "namespace": "team", "generation": 1},
            "spec": {"source": {"git": {"url": "https://g.example.com/a.git"}},
                     "platforms": ["linux/amd64"],
                     "output": {"image": "r.example.com/a:v1", "signing": signing}}
        }))
        .unwrap()
    }

    const IN_NAMESPACE: SigningPolicy = SigningPolicy {
        operator_key: true,
        isolated: false,
        allow_in_namespace: false,
    };

    #[test]
    fn isolated_builds_sign_with_the_operator_key() {
        let policy = SigningPolicy {
            isolated: true,
            ..IN_NAMESPACE
        };
        assert_eq!(
            key_source(&build(serde_json::json!({})), policy).unwrap(),
            KeySource::Operator
        );
        let mut unsigned = build(serde_json::json!({}));
        unsigned.spec.output.signing = None;
        assert_eq!(key_source(&unsigned, policy).unwrap(), KeySource::Unsigned);
    }

    #[test]
    fn in_namespace_builds_are_refused_the_operator_key() {
        let err = key_source(&build(serde_json::json!({})), IN_NAMESPACE).unwrap_err();
        assert!(matches!(err, SigningKeyError::NeedsIsolation), "{err}");
        assert_eq!(err.reason(), "SigningNeedsIsolation");
        let message = err.to_string();
        for says in [
            "builds.namespace",
            "--build-namespace",
            "--allow-in-namespace-signing",
            "signing.allowInNamespaceBuilds",
            "keySecret",
        ] {
            assert!(message.contains(says), "{message:?} should say {says:?}");
        }
    }

    #[test]
    fn a_platform_team_may_opt_in_to_in_namespace_signing() {
        let policy = SigningPolicy {
            allow_in_namespace: true,
            ..IN_NAMESPACE
        };
        assert_eq!(
            key_source(&build(serde_json::json!({})), policy).unwrap(),
            KeySource::Operator
        );
        // The opt-in gives no key to an operator that has none.
        let no_key = SigningPolicy {
            operator_key: false,
            ..policy
        };
        let err = key_source(&build(serde_json::json!({})), no_key).unwrap_err();
        assert!(matches!(err, SigningKeyError::NoOperatorKey), "{err}");
    }

    fn config(build_namespace: Option<&str>) -> Config {
        Config {
            builder: crate::settings::BuilderSettings::default(),
            version: crate::settings::KubeVersion::OLDEST,
            history_limit: 10,
            registry: Default::default(),
            resync: std::time::Duration::from_secs(300),
            signing_key: None,
            concurrency: 1,
            stuck_grace: std::time::Duration::from_secs(120),
            build_namespace: build_namespace.map(str::to_string),
            allow_in_namespace_signing: true,
            limits: Default::default(),
        }
    }

    /// The provenance facts of `build`'s run under `config`.
    fn facts(config: &Config, build: &ImageBuild) -> BuildFacts {
        let valid = crate::validation::ValidSpec::check(build).unwrap();
        let plan = crate::plan::plan(
            &valid,
            &config.builder,
            "0123456789abcdef0123456789abcdef01234567",
            crate::plan::AuthFile::None,
        );
        build_facts(config, build, &plan, &Default::default(), "t")
    }

    #[test]
    fn isolation_in_the_provenance_comes_from_the_operator_alone() {
        // A tenant's ImageBuild that claims isolation everywhere it can write.
        let mut claims = build(serde_json::json!({}));
        claims.spec.build_args = serde_json::from_value(serde_json::json!([
            {"name": "isolated", "value": "true"},
            {"name": "buildNamespace", "value": "archforge-builds"}
        ]))
        .unwrap();
        claims.metadata.annotations =
            Some([("archforge.dev/build-namespace".to_string(), "x".to_string())].into());
        assert_eq!(facts(&config(None), &claims).build_namespace, None);
        let digest = format!("sha256:{}", "a".repeat(64));
        let statement = crate::supply::provenance_statement(
            &facts(&config(None), &claims),
            "r.example.com/a",
            &digest,
            None,
        );
        let internal = &statement["predicate"]["buildDefinition"]["internalParameters"];
        assert_eq!(internal["isolated"], false, "{internal}");
        assert!(internal.get("buildNamespace").is_none(), "{internal}");

        let isolated = facts(
            &config(Some("archforge-builds")),
            &build(serde_json::json!({})),
        );
        assert_eq!(
            isolated.build_namespace.as_deref(),
            Some("archforge-builds")
        );
    }

    #[test]
    fn a_key_secret_of_its_own_signs_in_either_mode() {
        let own = build(serde_json::json!({"keySecret": "team-key"}));
        for isolated in [false, true] {
            let policy = SigningPolicy {
                isolated,
                ..IN_NAMESPACE
            };
            assert_eq!(
                key_source(&own, policy).unwrap(),
                KeySource::OwnSecret("team-key")
            );
        }
    }
}
