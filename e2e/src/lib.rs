//! The end-to-end suite's helpers: settings, simulated nodes and kubelet, the operator
//! process, a registry proxy for outage drills, and cluster-side utilities. The scenarios
//! and the scale benchmark are in `main.rs`; `make e2e` runs them against `KUBECONFIG`.

pub mod admission;
pub mod cluster;
pub mod config;
pub mod filter;
pub mod kubelet;
pub mod nodes;
pub mod operator;
pub mod proxy;
