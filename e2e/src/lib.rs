//! The end-to-end suite's helpers: settings, simulated nodes and kubelet, the operator
//! process, a registry proxy for outage drills, admission probes, typed filters for builder
//! Jobs and pods, and cluster-side utilities; `cargo test` unit-tests them without a
//! cluster. The harness (`suite.rs`, `case.rs`), the scenarios (`scenarios/`) and the scale
//! benchmark (`scale.rs`) belong to the program, `main.rs`; `make e2e` runs them against
//! `KUBECONFIG`.

pub mod admission;
pub mod cluster;
pub mod config;
pub mod filter;
pub mod kubelet;
pub mod nodes;
pub mod operator;
pub mod proxy;
pub mod signing;
