//! Agent settings: a YAML file (the ConfigMap in a cluster), then flags.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::policy::Profile;

/// The config file. Every field has a default; unknown fields are errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct FileConfig {
    #[serde(flatten)]
    pub profile: Profile,
    /// Attach to every veth whose name starts with one of these (bridge
    /// CNIs). Empty: only the veths a directly connected host route points
    /// at (pods', also before the API names them), so the node's uplink and
    /// other software's veths are never touched.
    pub interface_prefixes: Vec<String>,
    /// Traffic of addresses on attached veths that are not known pods:
    /// `deny` (default: a new pod is enforced before it can send) or `allow`.
    pub unknown_pod_traffic: crate::dataplane::UnknownEndpoint,
    /// A policy change that denies an established flow cuts it (within a
    /// second, with a deny record `revoked`); `false` lets established
    /// flows run until they end.
    pub revoke_on_policy_change: bool,
    /// What one policy and one namespace may cost (README, "Budgets").
    pub budgets: crate::policy::Budgets,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            profile: Profile::default(),
            interface_prefixes: Vec::new(),
            unknown_pod_traffic: crate::dataplane::UnknownEndpoint::default(),
            revoke_on_policy_change: true,
            budgets: crate::policy::Budgets::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{path}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: crate::policy::profile::ProfileError,
    },
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let cfg: FileConfig = serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.into(),
            source,
        })?;
        cfg.profile
            .validate()
            .map_err(|source| ConfigError::Invalid {
                path: path.into(),
                source,
            })?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_fields() {
        let cfg: FileConfig =
            serde_yaml::from_str("defaultDeny: true\nallowDNS: false\n").expect("valid");
        assert!(cfg.profile.default_deny);
        assert!(!cfg.profile.allow_dns);
        assert!(
            cfg.profile.block_metadata,
            "metadata block is on by default"
        );
        assert!(cfg.profile.default_deny_exempt.contains("kube-system"));
        assert!(cfg.revoke_on_policy_change, "revocation is on by default");
        assert!(serde_yaml::from_str::<FileConfig>("defaultDenny: true\n").is_err());
        let cfg: FileConfig =
            serde_yaml::from_str("budgets: {policyEntries: 10}\n").expect("valid");
        assert_eq!(cfg.budgets.policy_entries, 10);
        assert_eq!(
            cfg.budgets.namespace_entries,
            crate::policy::Budgets::default().namespace_entries,
            "unset budgets keep their defaults"
        );
        assert!(serde_yaml::from_str::<FileConfig>("budgets: {policyEntrie: 1}\n").is_err());
    }
}
