//! archforge: builds multi-architecture container images natively and rootless, one
//! Kubernetes Job per platform, and assembles them into one image index.

pub mod api;
pub mod cli;
pub mod controller;
pub mod error;
pub mod leader;
pub mod local;
pub mod manifest;
pub mod plan;
pub mod podsecurity;
pub mod policy;
pub mod queue;
pub mod rbac;
pub mod registry;
pub mod render;
pub mod settings;
pub mod source;
pub mod status;
pub mod supply;
pub mod telemetry;
pub mod validation;

pub use error::{Error, Result};

/// Chooses rustls's crypto provider for the process. Several are compiled in (kube's ring,
/// reqwest's aws-lc-rs), and rustls panics at the first TLS client rather than guess, so
/// every binary calls this before making a client.
pub fn install_crypto_provider() {
    // An error means a provider is already installed, which is all we need.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
