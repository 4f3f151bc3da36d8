//! Attaching the agent's pinned tc programs without loading the eBPF object:
//! what the chained CNI plugin does to a new pod's veth before the pod runs.
//! The links are pinned where the agent looks for them (`PinPaths::link`),
//! so the agent adopts them and swaps its own programs in.

use aya::programs::{SchedClassifier, links::PinnedLink};
use palisade_common::{PROG_FROM_POD, PROG_TO_POD};
use tracing::debug;

use super::{
    DatapathError,
    kernel::{TC_HOOKS, attach_new},
    paths::PinPaths,
};

/// What [`attach_pinned`] did to one hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Attached,
    /// Our link was there already (a repeated ADD, or the agent was quicker).
    Present,
}

/// Whether the agent's programs are pinned under `pins` (it ran on this node).
pub fn programs_pinned(pins: &PinPaths) -> bool {
    [PROG_FROM_POD, PROG_TO_POD]
        .iter()
        .all(|n| pins.program(n).exists())
}

/// Attaches the pinned programs to `ifname` (TCX: ingress `from-pod`, egress
/// `to-pod`) and pins the links.
pub fn attach_pinned(
    pins: &PinPaths,
    ifname: &str,
    ifindex: u32,
) -> Result<[Outcome; 2], DatapathError> {
    let mut out = [Outcome::Present; 2];
    for (i, (hook, prog_name, tc)) in TC_HOOKS.into_iter().enumerate() {
        let link_path = pins.link(ifname, ifindex, hook);
        if PinnedLink::from_pin(&link_path).is_ok() {
            continue;
        }
        let prog_path = pins.program(prog_name);
        if !prog_path.exists() {
            return Err(DatapathError::NotPinned { path: prog_path });
        }
        let mut prog =
            SchedClassifier::from_pin(&prog_path).map_err(|source| DatapathError::Program {
                name: prog_name,
                source,
            })?;
        match attach_new(&mut prog, ifname, hook, tc, &link_path) {
            Ok(()) => out[i] = Outcome::Attached,
            // The agent pinned its own link in the meantime: ours is dropped
            // (and detached) with the error, theirs judges.
            Err(_) if link_path.exists() => {}
            Err(e) => return Err(e),
        }
        debug!(ifname, hook = hook.name(), outcome = ?out[i], "pinned programs attached");
    }
    Ok(out)
}
