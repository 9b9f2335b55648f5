//! What can stop one reconciliation: one variant per step, each with its cause.

use super::signing::SigningKeyError;
use crate::podsecurity::Violations;
use crate::registry::RegistryError;
use crate::source::SourceError;
use crate::validation::InvalidSpec;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("invalid spec: {0}")]
    InvalidSpec(#[from] InvalidSpec),

    #[error("refused by policy: {0}")]
    PolicyViolation(#[from] crate::policy::Violations),

    #[error(
        "namespace {namespace} is not in the namespace store yet: its BuildPolicies are not known"
    )]
    NamespaceNotSeen { namespace: String },

    #[error("reading secret {name}: {source}")]
    ReadSecret {
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("secret {namespace}/{name} does not exist")]
    SecretMissing { namespace: String, name: String },

    #[error("secret {name} lacks the {keys} key(s)")]
    SecretKeys { name: String, keys: &'static str },

    #[error("pinning the commit: {0}")]
    PinCommit(#[from] SourceError),

    #[error("creating the Job for {platform}: {source}")]
    CreateJob {
        platform: String,
        #[source]
        source: kube::Error,
    },

    #[error("reading Job {name}: {source}")]
    ReadJob {
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("deleting Job {name}: {source}")]
    DeleteJob {
        name: String,
        #[source]
        source: kube::Error,
    },

    /// The API server refused a Job (a 4xx other than a conflict or throttling): an
    /// admission rule, a quota, a field it would not take. Retrying changes nothing.
    #[error("the API server refused the Job for {platform}: {message}")]
    JobRejected { platform: String, message: String },

    /// A Job with the planned name exists and belongs to something else.
    #[error(
        "a Job named {name} already exists and does not belong to this ImageBuild; archforge leaves it alone: rename the ImageBuild or delete that Job"
    )]
    JobNameConflict { name: String },

    #[error(
        "{0}; set the operator's --seccomp-profile (Helm value builder.seccompProfile) or --pod-security-level (builder.podSecurityLevel) to match the build namespaces"
    )]
    PodSecurity(#[from] Violations),

    /// The run asks for signing and has no usable key: checked before its Jobs are created.
    #[error(transparent)]
    SigningKey(#[from] SigningKeyError),

    #[error("assembling the index: {0}")]
    Assemble(#[from] RegistryError),

    #[error("updating the finalizer: {source}")]
    Finalizer {
        #[source]
        source: kube::Error,
    },

    #[error("deleting the {kind}s of this ImageBuild in the build namespace: {source}")]
    CleanUp {
        kind: String,
        #[source]
        source: kube::Error,
    },

    #[error("copying secret {name} into the build namespace: {source}")]
    CopySecret {
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("updating the status: {0}")]
    PatchStatus(#[source] kube::Error),
}

impl ReconcileError {
    /// A stable name: the condition reason, the Event reason and the metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            ReconcileError::InvalidSpec(_) => "InvalidSpec",
            ReconcileError::PolicyViolation(_) => "PolicyViolation",
            ReconcileError::NamespaceNotSeen { .. } => "NamespaceNotSeen",
            ReconcileError::ReadSecret { .. } => "ReadSecret",
            ReconcileError::SecretMissing { .. } | ReconcileError::SecretKeys { .. } => "Secret",
            ReconcileError::PinCommit(e) => e.reason(),
            ReconcileError::CreateJob { .. } => "CreateJob",
            ReconcileError::ReadJob { .. } => "ReadJob",
            ReconcileError::DeleteJob { .. } => "DeleteJob",
            ReconcileError::JobRejected { .. } => "JobRejected",
            ReconcileError::JobNameConflict { .. } => "JobNameConflict",
            ReconcileError::PodSecurity(_) => "PodSecurity",
            ReconcileError::SigningKey(e) => e.reason(),
            ReconcileError::Assemble(e) => e.reason(),
            ReconcileError::Finalizer { .. } => "Finalizer",
            ReconcileError::CleanUp { .. } => "CleanUp",
            ReconcileError::CopySecret { .. } => "CopySecret",
            ReconcileError::PatchStatus(_) => "PatchStatus",
        }
    }

    /// Whether only a change to the ImageBuild can help, so the controller waits for one.
    pub fn waits_for_change(&self) -> bool {
        match self {
            // A BuildPolicy or namespace label change wakes the ImageBuild (`watch.rs`).
            ReconcileError::InvalidSpec(_) | ReconcileError::PolicyViolation(_) => true,
            ReconcileError::PinCommit(e) => !e.is_transient(),
            _ => false,
        }
    }

    /// Whether the run cannot start as specified: it fails, and nothing is retried.
    pub fn stops_the_run(&self) -> bool {
        matches!(
            self,
            ReconcileError::JobRejected { .. }
                | ReconcileError::JobNameConflict { .. }
                | ReconcileError::PodSecurity(_)
                | ReconcileError::SigningKey(_)
                | ReconcileError::SecretMissing { .. }
                | ReconcileError::SecretKeys { .. }
        )
    }
}

pub type Result<T, E = ReconcileError> = std::result::Result<T, E>;
