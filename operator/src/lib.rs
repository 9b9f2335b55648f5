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
pub mod rbac;
pub mod registry;
pub mod render;
pub mod source;
pub mod status;
pub mod telemetry;
pub mod validation;

pub use error::{Error, Result};
