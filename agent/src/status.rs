//! What the agent has programmed, for people (`palisade status`) and for
//! tests, which wait for a revision instead of sleeping.

use std::{io, path::Path};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// True once the first full sync is programmed.
    pub ready: bool,
    pub revision: u64,
    /// Map writes of the last sync (0 after a restart with nothing changed).
    pub last_sync_ops: usize,
    /// Digest of the source directory the programmed state came from (hex).
    pub source_digest: String,
    /// Interfaces carrying the tc programs.
    pub attached: Vec<String>,
    /// hostNetwork pods whose cgroup carries the metadata block.
    pub cgroups: Vec<String>,
    /// hostNetwork pods that need the block but whose cgroup is not found (yet).
    pub cgroups_pending: Vec<String>,
    pub endpoints: usize,
    pub map_entries: usize,
    /// Objects rejected by validation, with why.
    pub rejected: Vec<String>,
    /// NetworkPolicies over a budget: which limit, and what is in force instead.
    #[serde(default)]
    pub over_budget: Vec<String>,
    /// Why the agent cannot enforce on this node (it then stays not ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsupported: Option<String>,
}

impl Status {
    /// Atomically replaces the file (write + rename), so readers never see half of it.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).map_err(io::Error::other)?,
        )?;
        std::fs::rename(tmp, path)
    }

    pub fn read(path: &Path) -> io::Result<Self> {
        let bytes = std::fs::read(path)?;
        serde_json::from_slice(&bytes).map_err(io::Error::other)
    }
}
