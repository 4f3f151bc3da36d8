//! The kernel side: load the programs, pin them and their maps, attach to
//! interfaces and cgroups, and write map operations. Everything here is an
//! effect; the logic it serves lives in `policy`.

pub mod attach;
pub mod bpffs;
pub mod cgroups;
pub mod conntrack;
pub mod counters;
pub mod interfaces;
pub mod kernel;
pub mod link_events;
pub mod paths;
pub mod pinned;
pub mod support;
pub mod wire;

pub use kernel::{Budgets, Datapath, DatapathError, KernelMaps, MapSizes, UnknownEndpoint};
pub use paths::PinPaths;

/// The eBPF object built by build.rs (aya-build).
pub static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/palisade"));
