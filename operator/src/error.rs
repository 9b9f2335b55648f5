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
    Local(Box<crate::local::LocalError>),

    #[error("Kubernetes API: {0}")]
    Kube(String),

    #[error(transparent)]
    PodSecurity(#[from] crate::podsecurity::Violations),

    #[error("cannot serialize {what}: {message}")]
    Serialize { what: &'static str, message: String },
}

impl Error {
    /// A stable, low-cardinality name for metrics and condition reasons.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "invalid_spec",
            Error::ReadFile { .. } => "read_file",
            Error::ParseManifest { .. } => "parse_manifest",
            Error::Serialize { .. } => "serialize",
            Error::Registry(_) => "registry",
            Error::Local(_) => "local_build",
            Error::Kube(_) => "kubernetes",
            Error::PodSecurity(_) => "pod_security",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<crate::local::LocalError> for Error {
    fn from(e: crate::local::LocalError) -> Self {
        match e {
            crate::local::LocalError::Spec(inner) => inner,
            other => Error::Local(Box::new(other)),
        }
    }
}
