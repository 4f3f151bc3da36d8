//! Policies as the engine reads them: validated, with no API types. The
//! index builds them (from NetworkPolicy today); the compiler and the
//! reference evaluator only ever see these.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{ObjectRef, Protocol, selector::Selector};

/// Who a policy came from: a NetworkPolicy object, or one of the agent's
/// built-in profiles (default deny, DNS, metadata block).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum PolicyOrigin {
    NetworkPolicy(ObjectRef),
    Profile(&'static str),
    /// A ClusterNetworkPolicy or Calico policy.
    Ordered(super::ordered::OrderedOrigin),
}

impl std::fmt::Display for PolicyOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyOrigin::NetworkPolicy(r) => write!(f, "{r}"),
            PolicyOrigin::Profile(name) => f.write_str(name),
            PolicyOrigin::Ordered(o) => write!(f, "{o}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub origin: PolicyOrigin,
    pub namespace: String,
    pub pod_selector: Selector,
    /// `None`: the policy does not apply to ingress (policyTypes). `Some`,
    /// even empty: selected pods are isolated for ingress and these rules allow.
    pub ingress: Option<Vec<Rule>>,
    pub egress: Option<Vec<Rule>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Rule {
    /// Empty: every peer.
    pub peers: Vec<Peer>,
    /// Empty: every port of every protocol.
    pub ports: Vec<PortSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// Pods selected by `pods` in the namespaces of `namespaces`.
    Pods {
        namespaces: NamespaceScope,
        pods: Selector,
    },
    IpBlock {
        cidr: IpNet,
        except: Vec<IpNet>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NamespaceScope {
    /// The policy's own namespace (peer without namespaceSelector).
    Own(String),
    Selected(Selector),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PortSpec {
    pub protocol: Protocol,
    /// `None`: every port of the protocol.
    pub port: Option<PortRef>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PortRef {
    /// An inclusive range; a single port is `start == end`.
    Range { start: u16, end: u16 },
    /// A named container port, resolved against the pod that serves it.
    Named(String),
}

/// Whether an address lies in an ipBlock.
pub fn in_block(ip: IpAddr, cidr: &IpNet, except: &[IpNet]) -> bool {
    cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
}
