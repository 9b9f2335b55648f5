//! The scenarios, one module per group; `main.rs` lists them in the order they run.

pub mod failures;
pub mod happy;
pub mod invalid;
pub mod lifecycle;
pub mod placement;
pub mod registry;
