//! Finding a pod's cgroup from the kubelet's layout.
//!
//! The kubelet names a pod's cgroup after its UID: with the cgroupfs driver
//! `.../kubepods/<qos>/pod<uid>`, with the systemd driver
//! `.../kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid with _>.slice`
//! (guaranteed pods sit directly under kubepods). Both are searched for,
//! a few levels below the cgroup v2 root, so that nested roots (kind nodes,
//! the test harness) are found too.
//!
//! [`CgroupBlocks`] keeps the metadata block on the cgroups of the local
//! hostNetwork pods that need it.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use tracing::{error, info, warn};

use crate::{
    dataplane::Datapath,
    error_chain::chain,
    policy::{DesiredState, state::HostNetworkBlock},
};

/// How deep below the root a pod cgroup may sit.
const MAX_DEPTH: usize = 5;

/// Where cgroup v2 is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts).
pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    })
}

/// Whether a directory name is the cgroup of the pod with this UID.
pub fn is_pod_cgroup(name: &str, uid: &str) -> bool {
    if uid.is_empty() {
        return false;
    }
    name == format!("pod{uid}") || name.ends_with(&format!("-pod{}.slice", uid.replace('-', "_")))
}

/// The cgroup directory of the pod with `uid`, searched breadth-first under `root`.
pub fn find_pod_cgroup(root: &Path, uid: &str) -> Option<PathBuf> {
    let mut level = vec![root.to_path_buf()];
    for _ in 0..MAX_DEPTH {
        let mut next = Vec::new();
        for dir in level {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let name = entry.file_name();
                if is_pod_cgroup(&name.to_string_lossy(), uid) {
                    return Some(entry.path());
                }
                next.push(entry.path());
            }
        }
        level = next;
    }
    None
}

/// The pods whose cgroup carries the metadata block.
pub struct CgroupBlocks {
    /// Where pod cgroups are looked for; `None`: no cgroup v2 mount.
    root: Option<PathBuf>,
    /// Pod -> its cgroup and the cgroup's inode.
    attached: BTreeMap<HostNetworkBlock, (PathBuf, u64)>,
}

impl CgroupBlocks {
    pub fn new(root: Option<PathBuf>) -> Self {
        Self {
            root,
            attached: BTreeMap::new(),
        }
    }

    /// The pods whose cgroup carries the block.
    pub fn attached(&self) -> impl Iterator<Item = &HostNetworkBlock> {
        self.attached.keys()
    }

    /// The pods `state` wants blocked whose cgroup does not carry it (yet).
    pub fn pending<'a>(
        &'a self,
        state: &'a DesiredState,
    ) -> impl Iterator<Item = &'a HostNetworkBlock> {
        state
            .host_network_blocks
            .iter()
            .filter(|b| !self.attached.contains_key(b))
    }

    /// Puts the metadata block on the cgroups of local hostNetwork pods that
    /// need it and takes it off those that no longer do. A pod whose cgroup
    /// does not exist yet is looked for again on the next pass.
    pub fn reconcile(&mut self, dp: &mut Datapath, state: &DesiredState) {
        let gone: Vec<HostNetworkBlock> = self
            .attached
            .keys()
            .filter(|b| !state.host_network_blocks.contains(b))
            .cloned()
            .collect();
        for b in gone {
            if let Some((path, ino)) = self.attached.remove(&b) {
                dp.detach_cgroup(ino);
                info!(pod = %b.pod, cgroup = %path.display(), "metadata block removed");
            }
        }
        let Some(root) = &self.root else {
            if !state.host_network_blocks.is_empty() {
                warn!("no cgroup v2 mount: hostNetwork pods are not covered by the metadata block");
            }
            return;
        };
        for b in &state.host_network_blocks {
            if self.attached.contains_key(b) {
                continue;
            }
            let Some(path) = find_pod_cgroup(root, &b.uid) else {
                continue;
            };
            match dp.attach_cgroup(&path) {
                Ok(ino) => {
                    info!(pod = %b.pod, cgroup = %path.display(), "metadata block attached");
                    self.attached.insert(b.clone(), (path, ino));
                }
                Err(e) => error!(pod = %b.pod, error = %chain(&e), "attaching the metadata block"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_both_kubelet_drivers() {
        let uid = "1c2d3e4f-0000-4000-8000-00000000000a";
        assert!(is_pod_cgroup(&format!("pod{uid}"), uid));
        assert!(is_pod_cgroup(
            "kubepods-besteffort-pod1c2d3e4f_0000_4000_8000_00000000000a.slice",
            uid
        ));
        assert!(!is_pod_cgroup("pod-other", uid));
        assert!(!is_pod_cgroup("anything", ""));
    }

    #[test]
    fn finds_a_nested_pod_cgroup() {
        let root =
            std::env::temp_dir().join(format!("palisade-cgroup-test-{}", std::process::id()));
        let pod = root.join("kubepods/burstable/podabc-1");
        std::fs::create_dir_all(&pod).expect("mkdir");
        assert_eq!(find_pod_cgroup(&root, "abc-1"), Some(pod));
        assert_eq!(find_pod_cgroup(&root, "abc-2"), None);
        let _ = std::fs::remove_dir_all(&root);
    }
}
