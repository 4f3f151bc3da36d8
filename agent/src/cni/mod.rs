//! `palisade-cni`: a chained CNI plugin (the `palisade` binary under that
//! name) that closes the window between a pod's network appearing and the
//! agent attaching to it. On ADD it attaches the programs the agent pinned
//! (`PinPaths::program`) to the pod's host-side veth and pins the links
//! where the agent adopts them, so the pod is judged from its first packet:
//! denied as an unknown endpoint until the agent has programmed it, then by
//! its policy. It works while the agent is down; it fails closed (code 11)
//! when the agent never ran on the node, unless `failOpen: true`.

pub mod peer;
pub mod protocol;

use std::{io::Read as _, path::Path};

use crate::dataplane::{PinPaths, pinned};
use protocol::{CniError, Env, Node};

/// The file name the binary answers to as a plugin.
pub const PLUGIN_NAME: &str = "palisade-cni";

/// Whether this process was started as the plugin (argv[0]).
pub fn invoked_as_plugin() -> bool {
    std::env::args_os()
        .next()
        .as_deref()
        .map(Path::new)
        .and_then(Path::file_name)
        .is_some_and(|n| n == PLUGIN_NAME)
}

/// The node as the plugin changes it: the kernel.
struct Kernel;

impl Node for Kernel {
    fn programs_pinned(&self, pins: &PinPaths) -> bool {
        pinned::programs_pinned(pins)
    }

    fn attach(&mut self, pins: &PinPaths, netns: &Path, ifname: &str) -> Result<(), CniError> {
        let veth = peer::host_peer(netns, ifname).map_err(|source| CniError::HostPeer {
            ifname: ifname.to_string(),
            netns: netns.to_path_buf(),
            source,
        })?;
        pinned::attach_pinned(pins, &veth.name, veth.index).map_err(|source| CniError::Attach {
            ifname: veth.name.clone(),
            source: Box::new(source),
        })?;
        Ok(())
    }
}

/// Runs the plugin; the process exit code.
pub fn main() -> i32 {
    let env = Env::from_vars(|k| std::env::var(k).ok());
    let mut stdin = String::new();
    let result = std::io::stdin()
        .read_to_string(&mut stdin)
        .map_err(CniError::Stdin)
        .and_then(|_| protocol::run(&env, &stdin, &mut Kernel));
    match result {
        Ok(out) => {
            for w in &out.warnings {
                eprintln!("{PLUGIN_NAME}: {w}");
            }
            if let Some(s) = out.stdout {
                println!("{s}");
            }
            0
        }
        Err(e) => {
            println!("{}", e.to_json(&protocol::answer_version(&stdin)));
            1
        }
    }
}
