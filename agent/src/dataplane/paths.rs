//! The one pin tree. Everything Palisade leaves in the kernel while it is
//! not running is named here.
//!
//! ```text
//! /sys/fs/bpf/palisade/v<LAYOUT_VERSION>/maps/<MAP NAME>
//! /sys/fs/bpf/palisade/v<LAYOUT_VERSION>/progs/<program name>
//! /sys/fs/bpf/palisade/v<LAYOUT_VERSION>/links/<ifindex>-<from-pod|to-pod>-<ifname>
//! /sys/fs/bpf/palisade/v<LAYOUT_VERSION>/cgroups/<cgroup inode>-<hook>
//! ```
//! (bpffs refuses names with a dot, so dots in interface names become `_`.)
//! The pinned tc programs are the newest the agent loaded; the chained CNI
//! plugin (`palisade-cni`) attaches them to a new pod's veth before the pod
//! runs, at the link paths below, so the agent adopts those links.
//! A new layout version gets a tree of its own; the old one is removed once
//! the new programs are attached (see `Datapath::open`).

use std::path::{Path, PathBuf};

use palisade_common::LAYOUT_VERSION;

pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/palisade";

#[derive(Clone, Debug)]
pub struct PinPaths {
    root: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    /// tc ingress of the host-side veth: packets the pod sends.
    FromPod,
    /// tc egress of the host-side veth: packets the pod receives.
    ToPod,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::FromPod => "from-pod",
            Hook::ToPod => "to-pod",
        }
    }
}

impl PinPaths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn version_dir(&self) -> PathBuf {
        self.root.join(format!("v{LAYOUT_VERSION}"))
    }

    pub fn maps(&self) -> PathBuf {
        self.version_dir().join("maps")
    }

    pub fn links(&self) -> PathBuf {
        self.version_dir().join("links")
    }

    pub fn cgroups(&self) -> PathBuf {
        self.version_dir().join("cgroups")
    }

    pub fn programs(&self) -> PathBuf {
        self.version_dir().join("progs")
    }

    /// The pin of a loaded program (`palisade_from_pod`, `palisade_to_pod`).
    pub fn program(&self, name: &str) -> PathBuf {
        self.programs().join(name)
    }

    pub fn link(&self, ifname: &str, ifindex: u32, hook: Hook) -> PathBuf {
        self.links().join(format!(
            "{ifindex}-{}-{}",
            hook.name(),
            ifname.replace('.', "_")
        ))
    }

    pub fn cgroup_link(&self, cgroup_ino: u64, hook: &str) -> PathBuf {
        self.cgroups().join(format!("{cgroup_ino}-{hook}"))
    }

    /// The interface index a link pin belongs to.
    pub fn link_ifindex(file_name: &str) -> Option<u32> {
        file_name.split('-').next()?.parse().ok()
    }

    /// Trees of other layout versions under the root.
    pub fn stale_versions(&self) -> Vec<PathBuf> {
        let current = format!("v{LAYOUT_VERSION}");
        std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with('v') && n != current)
            })
            .map(|e| e.path())
            .collect()
    }
}
