//! The signing key of a run, and the facts its provenance is written from.
//!
//! The key is looked up before a run's Jobs are created, so a run that could never be
//! signed builds nothing, and again at assembly, where it signs. Neither the key nor its
//! password ever reaches an error message: [`KeyError`] names the format and the problem,
//! never a byte of either.

use std::path::Path;
use std::sync::Arc;

use kube::ResourceExt;

use super::Context;
use super::error::{ReconcileError, Result};
use super::observe::{read_secret, secret_value};
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
        }
    }
}

/// The key that signs `build`'s run: `None` when it asks for no signing. A missing or
/// unusable key is a [`ReconcileError::SigningKey`]; a Secret that cannot be read for
/// another reason (the API server, RBAC) is [`ReconcileError::ReadSecret`], retried.
pub async fn signing_key(ctx: &Context, build: &ImageBuild) -> Result<Option<Arc<SigningKey>>> {
    let Some(signing) = &build.spec.output.signing else {
        return Ok(None);
    };
    let Some(name) = &signing.key_secret else {
        return match &ctx.config.signing_key {
            Some(key) => Ok(Some(key.clone())),
            None => Err(SigningKeyError::NoOperatorKey.into()),
        };
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
            name: name.clone(),
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
                name: name.clone(),
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
/// settings and the run's status, never from a builder pod. The times are the run's own,
/// so a retried assembly writes the same statements.
pub fn build_facts(
    ctx: &Context,
    build: &ImageBuild,
    plan: &BuildPlan,
    status: &ImageBuildStatus,
    finished_on: &str,
) -> BuildFacts {
    let builder_image = match plan.platforms.first().map(|p| p.strategy) {
        Some(Strategy::Buildkit) => &ctx.config.builder.buildkit_image,
        _ => &ctx.config.builder.builder_image,
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
        ..BuildFacts::from_spec(build, &plan.revision)
    }
}
