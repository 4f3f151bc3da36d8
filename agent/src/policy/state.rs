//! The compiled desired state of the datapath maps, its diff, and the
//! writer that applies map operations.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use ipnet::IpNet;

use super::addr::{canonical_ip, canonical_net};
use crate::model::ObjectRef;
use crate::model::policy::PolicyOrigin;

/// Shared with the kernel side: one definition of the wire values.
pub use palisade_common::Direction;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointEntry {
    pub id: u32,
    pub flags: u32,
    /// The host-side interface the endpoint is bound to (0: none yet).
    pub ifindex: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpcacheEntry {
    pub identity: u32,
    pub flags: u32,
}

/// A policy map key in logical form (host byte order). `proto == 0` means any
/// protocol and any port (then `port == 0` and `port_bits == 0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    pub endpoint: u32,
    pub dir: Direction,
    pub proto: u8,
    pub identity: u32,
    pub port: u16,
    /// How many leading bits of `port` must match (16: exactly `port`).
    pub port_bits: u8,
}

impl PolicyKey {
    /// Whether this entry matches a concrete port.
    pub fn covers_port(&self, port: u16) -> bool {
        if self.port_bits == 0 {
            return true;
        }
        let shift = 16 - u32::from(self.port_bits);
        (port >> shift) == (self.port >> shift)
    }
}

/// Where a map entry came from, for deny logs and `explain`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct RuleRef {
    pub origin: PolicyOrigin,
    #[serde(serialize_with = "crate::model::as_display")]
    pub dir: Direction,
    pub index: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}[{}]", self.origin, self.dir, self.index)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct EndpointInfo {
    pub pod: Option<ObjectRef>,
    /// Policies that isolate the endpoint, per direction; empty: not isolated.
    pub ingress_isolated_by: Vec<PolicyOrigin>,
    pub egress_isolated_by: Vec<PolicyOrigin>,
}

impl EndpointInfo {
    pub fn isolated_by(&self, dir: Direction) -> &[PolicyOrigin] {
        match dir {
            Direction::Ingress => &self.ingress_isolated_by,
            Direction::Egress => &self.egress_isolated_by,
        }
    }
}

/// What an identity stands for, for logs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum IdentityInfo {
    Pods {
        namespace: String,
        labels: std::sync::Arc<BTreeMap<String, String>>,
    },
    Cidr(IpNet),
    Host,
    Metadata,
    /// A Service frontend address (judged by the Service's backends).
    Service {
        namespace: String,
        name: String,
    },
}

/// A local hostNetwork pod whose processes get the metadata block through
/// cgroup hooks (its traffic crosses no pod veth).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostNetworkBlock {
    pub pod: ObjectRef,
    pub uid: String,
}

/// Everything the datapath maps should hold, plus what explains it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub maps: Maps,
    pub host_network_blocks: std::collections::BTreeSet<HostNetworkBlock>,
    pub endpoint_info: BTreeMap<u32, EndpointInfo>,
    pub rules: BTreeMap<u32, RuleRef>,
    pub identities: BTreeMap<u32, IdentityInfo>,
    /// NetworkPolicies over a budget, and what is enforced instead.
    pub rejected: BTreeMap<crate::model::policy::PolicyOrigin, super::budget::Rejection>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    UpsertPolicy(PolicyKey, u32),
    UpsertIpcache(IpNet, IpcacheEntry),
    UpsertEndpoint(IpAddr, EndpointEntry),
    UpsertIface(u32, u32),
    DeleteIface(u32),
    DeleteEndpoint(IpAddr),
    DeleteIpcache(IpNet),
    DeletePolicy(PolicyKey),
}

/// Operations that turn `old` into `new`, ordered so that no packet sees a
/// state stricter than both: new allow rules first, then identities and
/// endpoints, removals last.
pub fn diff(old: &Maps, new: &Maps) -> Vec<MapOp> {
    let mut ops = Vec::new();
    upserts(&old.policy, &new.policy, &mut ops, |k, v| {
        MapOp::UpsertPolicy(*k, *v)
    });
    upserts(&old.ipcache, &new.ipcache, &mut ops, |k, v| {
        MapOp::UpsertIpcache(*k, *v)
    });
    upserts(&old.endpoints, &new.endpoints, &mut ops, |k, v| {
        MapOp::UpsertEndpoint(*k, *v)
    });
    upserts(&old.ifaces, &new.ifaces, &mut ops, |k, v| {
        MapOp::UpsertIface(*k, *v)
    });
    removals(&old.ifaces, &new.ifaces, &mut ops, |k| {
        MapOp::DeleteIface(*k)
    });
    removals(&old.endpoints, &new.endpoints, &mut ops, |k| {
        MapOp::DeleteEndpoint(*k)
    });
    removals(&old.ipcache, &new.ipcache, &mut ops, |k| {
        MapOp::DeleteIpcache(*k)
    });
    removals(&old.policy, &new.policy, &mut ops, |k| {
        MapOp::DeletePolicy(*k)
    });
    ops
}

fn upserts<K: Ord, V: PartialEq>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    ops: &mut Vec<MapOp>,
    op: impl Fn(&K, &V) -> MapOp,
) {
    for (k, v) in new {
        if old.get(k) != Some(v) {
            ops.push(op(k, v));
        }
    }
}

fn removals<K: Ord, V>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    ops: &mut Vec<MapOp>,
    op: impl Fn(&K) -> MapOp,
) {
    for k in old.keys() {
        if !new.contains_key(k) {
            ops.push(op(k));
        }
    }
}

/// Applies map operations: aya maps in the agent, [`Maps`] in tests.
pub trait MapWriter {
    type Error: std::error::Error + Send + Sync + 'static;
    fn apply(&mut self, op: &MapOp) -> Result<(), Self::Error>;
}

/// The contents of the three policy maps, in logical form. Also the
/// in-memory [`MapWriter`]: the agent's mirror of the kernel, and the fake in tests.
/// It keys addresses canonically, as the kernel does: a v4-mapped key is
/// the IPv4 entry, never a second one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Maps {
    pub endpoints: BTreeMap<IpAddr, EndpointEntry>,
    /// Host-side ifindex of a pod veth -> the endpoint id bound to it.
    pub ifaces: BTreeMap<u32, u32>,
    pub ipcache: BTreeMap<IpNet, IpcacheEntry>,
    pub policy: BTreeMap<PolicyKey, u32>,
}

impl MapWriter for Maps {
    type Error = std::convert::Infallible;

    fn apply(&mut self, op: &MapOp) -> Result<(), Self::Error> {
        match op {
            MapOp::UpsertPolicy(k, v) => {
                self.policy.insert(*k, *v);
            }
            MapOp::UpsertIpcache(k, v) => {
                self.ipcache.insert(canonical_net(*k), *v);
            }
            MapOp::UpsertEndpoint(k, v) => {
                self.endpoints.insert(canonical_ip(*k), *v);
            }
            MapOp::DeleteEndpoint(k) => {
                self.endpoints.remove(&canonical_ip(*k));
            }
            MapOp::UpsertIface(k, v) => {
                self.ifaces.insert(*k, *v);
            }
            MapOp::DeleteIface(k) => {
                self.ifaces.remove(k);
            }
            MapOp::DeleteIpcache(k) => {
                self.ipcache.remove(&canonical_net(*k));
            }
            MapOp::DeletePolicy(k) => {
                self.policy.remove(k);
            }
        }
        Ok(())
    }
}

impl Maps {
    pub fn len(&self) -> usize {
        self.endpoints.len() + self.ifaces.len() + self.ipcache.len() + self.policy.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
