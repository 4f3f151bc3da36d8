//! Palisade: Kubernetes NetworkPolicy enforced by eBPF on each node.
//!
//! Data flows one way: `source` -> `index` -> `policy` (compile, diff) ->
//! `dataplane` (kernel); deny events flow back through `flows`.

pub mod advise;
pub mod api;
pub mod cni;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod error_chain;
pub mod explain;
pub mod flows;
pub mod index;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod source;
pub mod status;
pub mod sync;
