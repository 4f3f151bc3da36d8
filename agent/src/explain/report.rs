//! What an explanation says, serializable (`--json`, `GET /explain`).

use std::{fmt, net::IpAddr};

use serde::Serialize;

use crate::{
    model::{ObjectRef, Protocol, as_display},
    policy::state::Direction,
};

/// The answer.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    pub from: Party,
    pub to: Party,
    #[serde(serialize_with = "as_display")]
    pub protocol: Protocol,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub named_port: Option<NamedPort>,
    pub allowed: bool,
    /// The client's side, when it is a pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<Side>,
    /// The server's side, when it is a pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Side>,
    /// The destination is a Service frontend: its backends, each explained.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceHop>,
    /// Whether every kernel verdict checked equals the semantic one
    /// (`None`: no maps were checked).
    pub maps_agree: Option<bool>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Party {
    /// `ns/name`, `node/NAME` or the address.
    pub name: String,
    pub ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct NamedPort {
    pub name: String,
    pub pod: ObjectRef,
    pub port: u16,
}

/// One pod's side of the connection.
#[derive(Clone, Debug, Serialize)]
pub struct Side {
    pub pod: ObjectRef,
    pub node: String,
    #[serde(serialize_with = "as_display")]
    pub direction: Direction,
    /// Every policy selecting the pod in this direction, in evaluation order.
    pub selected_by: Vec<String>,
    pub allowed: bool,
    pub decided_by: Decided,
    /// Calico `Log` rules that matched on the way.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logged: Vec<String>,
    pub profile: ProfilePart,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub maps: Option<MapsCheck>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Decided {
    /// A rule matched: the first that allowed or denied.
    Rule {
        policy: String,
        tier: String,
        index: usize,
        action: crate::model::ordered::Action,
    },
    /// A tier selected the pod and none of its rules decided (for the
    /// `default` tier: NetworkPolicy's isolation).
    EndOfTier { tier: String },
    /// No tier decided: the pod is not isolated in this direction.
    NotIsolated,
    /// The metadata block: no rule naming the metadata address opened it.
    MetadataBlock,
    /// From the pod's own node: always allowed in.
    NodeToPod,
    /// A hostNetwork pod: no veth, no policy (only the metadata block).
    HostNetwork,
    /// A Service frontend, allowed when every backend is, on its target port.
    Frontend,
}

impl fmt::Display for Decided {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decided::Rule {
                policy,
                tier,
                index,
                action,
            } => write!(f, "{action:?} by {policy} rule {index} (tier {tier})"),
            Decided::EndOfTier { tier } if tier == crate::model::ordered::DEFAULT_TIER => {
                write!(f, "isolated: no rule of the default tier allowed it")
            }
            Decided::EndOfTier { tier } => write!(f, "end of tier {tier}: no rule decided"),
            Decided::NotIsolated => f.write_str("not isolated: no policy decided"),
            Decided::MetadataBlock => f.write_str("metadata block"),
            Decided::NodeToPod => f.write_str("from the pod's own node: always allowed"),
            Decided::HostNetwork => f.write_str("hostNetwork pod: not judged by policy"),
            Decided::Frontend => f.write_str("a Service frontend: as its backends"),
        }
    }
}

/// What the agent's profile contributes to this side.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfilePart {
    /// The profile's default deny isolates the pod.
    pub default_deny: bool,
    /// The profile's DNS allowance decided.
    #[serde(rename = "allowDNS")]
    pub allow_dns: bool,
    /// The peer is a metadata address under the block (egress only).
    pub metadata_blocked: bool,
    /// The pod or its namespace opted out of the metadata block.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub metadata_opted_out: bool,
}

/// The kernel's verdict for one side, from one node's maps.
#[derive(Clone, Debug, Serialize)]
pub struct MapsCheck {
    pub node: String,
    pub local: IpAddr,
    pub remote: IpAddr,
    pub port: u16,
    /// As [`sim::Verdict`] names it (`Rule(7)`, `DeniedIsolated`, ...).
    pub verdict: String,
    pub allowed: bool,
    pub agrees: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServiceHop {
    pub service: ObjectRef,
    pub frontend: IpAddr,
    pub port: u16,
    /// The client's egress against the frontend (precomputed from the
    /// backends, as the compiler does), when the client is a pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<Side>,
    pub backends: Vec<Explanation>,
    /// Backends disagree: kube-proxy may pick any, so the frontend fails closed.
    pub mixed: bool,
}
