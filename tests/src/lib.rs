//! Palisade's end-to-end harness. Privileged: it makes network namespaces,
//! veths and cgroups, runs the real agent and sends real traffic. Run it
//! through `cargo xtask scenario` / `cargo xtask test`.

pub mod agent;
pub mod cluster;
pub mod cni;
pub mod cni_calls;
pub mod exec;
pub mod explain_check;
pub mod fixtures;
pub mod kubeproxy;
pub mod matrix;
pub mod netns;
pub mod nodes;
pub mod packets;
pub mod probe;
pub mod raw;
pub mod runner;
pub mod scenario;
pub mod sctp;
pub mod services;
pub mod topology;
