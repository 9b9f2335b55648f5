//! The one error type of archforge.

use crate::validation::InvalidSpec;

/// Everything that can go wrong, named by the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid ImageBuild: {0}")]
    InvalidSpec(#[from] InvalidSpec),

    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} is not an ImageBuild: {message}")]
    ParseManifest { path: String, message: String },

    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),

    #[error(transparent)]
    RegistryTrust(#[from] crate::plan::trust::TrustError),

    #[error(transparent)]
    Local(#[from] Box<crate::local::LocalError>),

    #[error("Kubernetes API: {0}")]
    Kube(String),

    #[error(transparent)]
    PodSecurity(#[from] crate::podsecurity::Violations),

    #[error("operator settings: {0}")]
    Settings(String),

    #[error("cannot serialize {what}: {message}")]
    Serialize { what: &'static str, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<crate::local::LocalError> for Error {
    fn from(e: crate::local::LocalError) -> Self {
        Error::Local(Box::new(e))
    }
}
