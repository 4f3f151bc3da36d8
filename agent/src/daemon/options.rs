//! What the daemon is told to do.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use crate::{
    dataplane::PinPaths, flows::log::LogSettings, flows::sink::LogFormat, policy::Profile,
};

#[derive(Clone, Debug)]
pub struct Options {
    pub source: SourceConfig,
    pub node_name: String,
    /// Node addresses given explicitly; otherwise this namespace's addresses.
    pub node_addresses: Vec<IpAddr>,
    pub pins: PinPaths,
    pub status_file: Option<PathBuf>,
    pub interface_prefixes: Vec<String>,
    pub unknown_endpoint: crate::dataplane::UnknownEndpoint,
    pub map_sizes: crate::dataplane::MapSizes,
    pub profile: Profile,
    pub deny_log: LogFormat,
    pub log_settings: LogSettings,
    pub poll: Duration,
    /// Where to look for pod cgroups (default: the cgroup v2 mount).
    pub cgroup_root: Option<PathBuf>,
    /// Deny records also go to this file (JSON lines), rotated by size.
    pub deny_log_file: Option<PathBuf>,
    pub deny_log_file_max_bytes: u64,
    /// What a graceful stop leaves behind.
    pub on_exit: OnExit,
    /// The local HTTP endpoint (metrics, health, flows); `None`: off.
    pub listen: Option<std::net::SocketAddr>,
    /// Metrics and health only (for Prometheus and probes); `None`: off.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Cut established flows that a policy change denies (with a deny record).
    pub revoke_on_policy_change: bool,
    /// Allowed new flows go to user space (see `endpoint_flags::OBSERVE_*`).
    pub observe_flows: bool,
    /// Bound of the observed flows table.
    pub max_observed_flows: usize,
    /// What one policy and one namespace may cost.
    pub budgets: crate::policy::Budgets,
}

/// What the agent leaves in the kernel when it stops gracefully (SIGTERM,
/// SIGINT). A crash or SIGKILL always leaves the pinned state enforcing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OnExit {
    /// Fail closed: the last programmed policy keeps enforcing while the
    /// agent is away (restarts, upgrades).
    #[default]
    Keep,
    /// Fail open: detach and unpin everything; pods are unprotected until
    /// the agent is back.
    Remove,
}

/// Where the agent's objects come from.
#[derive(Clone)]
pub enum SourceConfig {
    /// Standalone: a directory of YAML objects.
    Dir(PathBuf),
    /// The API server.
    Kube(kube::Client),
}

impl std::fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceConfig::Dir(d) => write!(f, "Dir({})", d.display()),
            SourceConfig::Kube(_) => f.write_str("Kube"),
        }
    }
}
