//! `palisade explain FROM TO [PORT/PROTO]`: the verdict of one connection
//! and why. Pure: the semantic answer comes from the ordered core
//! ([`Layers::decide`], each side as the connection meets it), the kernel's
//! answer from a [`MapView`] per node ([`sim::judge`], the datapath's own
//! lookups), and the two are compared. The agent feeds it its model and its
//! pinned maps; `palisade explain --source` a directory and compiled maps.

pub mod client;
mod compiled;
mod render;

use std::{collections::BTreeMap, fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;
use serde::Serialize;

use crate::{
    model::{Labels, Model, Node, ObjectRef, Pod, Protocol, as_display, policy::in_block},
    policy::{
        Profile,
        ordered::{self, DecidedBy, Layers, PeerView},
        profile::{ALLOW_DNS, DEFAULT_DENY},
        services,
        sim::{self, MapView},
        state::Direction,
    },
};

pub use compiled::CompiledNodes;
pub use render::human;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExplainError {
    #[error("{0:?} is neither NAMESPACE/POD, svc:NAMESPACE/NAME, an address nor `node`")]
    Endpoint(String),
    #[error("{0:?} is not PORT[/PROTO] (PORT a number or a port name, PROTO tcp, udp or sctp)")]
    Port(String),
    #[error("no pod {0}")]
    NoPod(ObjectRef),
    #[error("pod {0} has no address (yet)")]
    NoAddress(ObjectRef),
    #[error("no address of {0} is of the other side's family")]
    Family(String),
    #[error("no Service {0} with a frontend of the client's family")]
    NoService(ObjectRef),
    #[error("`node` is a source only: name a node's address as the destination")]
    NodeDestination,
    #[error("`node` as the source means the destination pod's node: the destination must be a pod")]
    NodeWithoutPod,
    #[error("a named port ({0}) is resolved on the destination pod: the destination must be a pod")]
    NamedPortWithoutPod(String),
    #[error("pod {pod} has no {protocol} container port named {name:?}")]
    NoNamedPort {
        pod: ObjectRef,
        name: String,
        protocol: Protocol,
    },
}

/// One side as given on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointArg {
    Pod(ObjectRef),
    /// The destination pod's node (kubelet probes, hostNetwork processes).
    Node,
    Address(IpAddr),
    /// `svc:NS/NAME`: the Service's frontend (of the client's family).
    Service(ObjectRef),
}

impl FromStr for EndpointArg {
    type Err = ExplainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "node" {
            return Ok(EndpointArg::Node);
        }
        if let Ok(ip) = s.parse() {
            return Ok(EndpointArg::Address(ip));
        }
        let (svc, key) = match s.strip_prefix("svc:") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        match key.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                let r = ObjectRef::new(ns, name);
                Ok(if svc {
                    EndpointArg::Service(r)
                } else {
                    EndpointArg::Pod(r)
                })
            }
            _ => Err(ExplainError::Endpoint(s.to_string())),
        }
    }
}

impl fmt::Display for EndpointArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointArg::Pod(r) => write!(f, "{r}"),
            EndpointArg::Node => f.write_str("node"),
            EndpointArg::Address(ip) => write!(f, "{ip}"),
            EndpointArg::Service(r) => write!(f, "svc:{r}"),
        }
    }
}

/// `80`, `80/udp`, `http`, `dns/UDP`; TCP when no protocol is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortArg {
    pub port: PortName,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortName {
    Number(u16),
    /// A container port name, resolved on the destination pod.
    Named(String),
}

impl Default for PortArg {
    fn default() -> Self {
        Self {
            port: PortName::Number(80),
            protocol: Protocol::Tcp,
        }
    }
}

impl FromStr for PortArg {
    type Err = ExplainError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ExplainError::Port(s.to_string());
        let (port, protocol) = match s.split_once('/') {
            Some((p, proto)) => (
                p,
                Protocol::parse(&proto.to_ascii_uppercase()).ok_or_else(bad)?,
            ),
            None => (s, Protocol::Tcp),
        };
        let port = match port.parse::<u16>() {
            Ok(n) => PortName::Number(n),
            Err(_)
                if !port.is_empty()
                    && port.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
            {
                PortName::Named(port.to_string())
            }
            Err(_) => return Err(bad()),
        };
        Ok(Self { port, protocol })
    }
}

impl fmt::Display for PortArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            PortName::Number(n) => write!(f, "{n}/{}", self.protocol),
            PortName::Named(n) => write!(f, "{n}/{}", self.protocol),
        }
    }
}

/// What is asked: a connection from `from` to `to` on `port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub from: EndpointArg,
    pub to: EndpointArg,
    pub port: PortArg,
}

/// The kernel maps of each node, as the datapath would read them.
pub trait NodeMaps {
    /// The maps of `node`; `None`: not available here (another node's).
    fn maps(&self, node: &str) -> Option<&dyn MapView>;
    /// Whether `pod`, a hostNetwork pod of `node`, has the metadata block
    /// on its cgroup; `None`: unknown.
    fn cgroup_blocked(&self, _node: &str, _pod: &ObjectRef) -> Option<bool> {
        None
    }
}

/// Everything an explanation reads.
pub struct World<'a> {
    pub model: &'a Model,
    pub profile: &'a Profile,
    /// Nodes whose addresses are known (traffic from a pod's own node is
    /// always allowed in); others are treated as any address.
    pub nodes: &'a [Node],
    pub maps: Option<&'a dyn NodeMaps>,
}

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

/// A resolved side.
#[derive(Clone, Copy)]
struct End<'a> {
    ip: Option<IpAddr>,
    pod: Option<&'a Pod>,
    /// The node whose own address this is.
    node: Option<&'a str>,
}

impl End<'_> {
    fn policy_pod(&self) -> Option<&Pod> {
        self.pod.filter(|p| !p.host_network)
    }
}

/// A peer for the ordered evaluation; under the metadata block only a net
/// naming a metadata prefix exactly holds a metadata address.
struct Peer<'a> {
    ip: Option<IpAddr>,
    pod: Option<&'a Pod>,
    metadata: Option<Vec<IpNet>>,
}

impl PeerView for Peer<'_> {
    fn pod(&self) -> Option<(&str, &Labels)> {
        self.pod
            .filter(|p| !p.host_network)
            .map(|p| (p.namespace.as_str(), &p.labels))
    }

    fn in_net(&self, net: &IpNet) -> bool {
        let Some(ip) = self.ip else { return false };
        match &self.metadata {
            Some(m) => m.contains(net) && net.contains(&ip),
            None => in_block(ip, net, &[]),
        }
    }

    fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.pod.and_then(|p| p.named_port(name, protocol))
    }

    fn blocked(&self) -> bool {
        self.metadata.is_some()
    }
}

/// Explains `q` in `world`.
pub fn explain(world: &World<'_>, q: &Query) -> Result<Explanation, ExplainError> {
    let network = ordered::network_policies(world.model, world.profile);
    let cx = Cx {
        world,
        layers: Layers::new(world.model, &network),
        frontends: services::frontends(world.model, world.profile),
    };
    cx.explain(q)
}

struct Cx<'a> {
    world: &'a World<'a>,
    layers: Layers<'a>,
    frontends: BTreeMap<IpAddr, services::Frontend>,
}

impl<'a> Cx<'a> {
    fn model(&self) -> &'a Model {
        self.world.model
    }

    fn pod(&self, r: &ObjectRef) -> Result<&'a Pod, ExplainError> {
        self.model()
            .pods
            .get(r)
            .ok_or_else(|| ExplainError::NoPod(r.clone()))
    }

    /// The pod holding `ip` (one with its own network first), and the node
    /// whose address it is.
    fn by_address(&self, ip: IpAddr) -> End<'a> {
        let pods = || self.model().pods.values().filter(|p| p.ips.contains(&ip));
        let pod = pods().find(|p| !p.host_network).or_else(|| pods().next());
        let node = self
            .world
            .nodes
            .iter()
            .find(|n| n.addresses.contains(&ip))
            .map(|n| n.name.as_str())
            .or_else(|| pod.filter(|p| p.host_network).map(|p| p.node.as_str()));
        End {
            ip: Some(ip),
            pod,
            node,
        }
    }

    /// The frontend of Service `r` of the client's family (IPv4 first).
    fn frontend_of(&self, r: &ObjectRef, from: &EndpointArg) -> Result<IpAddr, ExplainError> {
        let families: Vec<bool> = match from {
            EndpointArg::Pod(p) => self.pod(p)?.ips.iter().map(IpAddr::is_ipv6).collect(),
            EndpointArg::Address(ip) => vec![ip.is_ipv6()],
            EndpointArg::Node | EndpointArg::Service(_) => vec![false, true],
        };
        let svc = self.model().services.get(r);
        families
            .iter()
            .find_map(|v6| {
                svc?.frontends
                    .iter()
                    .find(|f| f.is_ipv6() == *v6 && self.frontends.contains_key(f))
                    .copied()
            })
            .ok_or_else(|| ExplainError::NoService(r.clone()))
    }

    fn node_address(&self, node: &str, v6: bool) -> Option<IpAddr> {
        self.world
            .nodes
            .iter()
            .find(|n| n.name == node)
            .and_then(|n| n.addresses.iter().find(|a| a.is_ipv6() == v6).copied())
    }

    fn explain(&self, q: &Query) -> Result<Explanation, ExplainError> {
        let to = match &q.to {
            EndpointArg::Node => return Err(ExplainError::NodeDestination),
            EndpointArg::Pod(r) => {
                let pod = self.pod(r)?;
                End {
                    ip: None,
                    pod: Some(pod),
                    node: pod.host_network.then_some(pod.node.as_str()),
                }
            }
            EndpointArg::Address(ip) => self.by_address(*ip),
            EndpointArg::Service(r) => End {
                ip: Some(self.frontend_of(r, &q.from)?),
                pod: None,
                node: None,
            },
        };
        if let (None, Some(ip)) = (to.pod, to.ip)
            && let Some(f) = self.frontends.get(&ip)
        {
            // `node` stands for each backend's node, resolved per backend.
            let from = match q.from {
                EndpointArg::Node => End {
                    ip: None,
                    pod: None,
                    node: None,
                },
                _ => self.addresses(&q.from, to)?.0,
            };
            let (port, _) = self.port(&q.port, &to)?;
            return self.through_service(q, from, ip, f, port);
        }
        let (from, to) = self.addresses(&q.from, to)?;
        let (port, named_port) = self.port(&q.port, &to)?;
        Ok(self.direct(from, to, q.port.protocol, port, named_port))
    }

    /// Both sides with addresses of one family.
    fn addresses(
        &self,
        from: &EndpointArg,
        to: End<'a>,
    ) -> Result<(End<'a>, End<'a>), ExplainError> {
        let ips = |p: Option<&Pod>| p.map(|p| p.ips.clone()).unwrap_or_default();
        match from {
            EndpointArg::Service(r) => Err(ExplainError::Endpoint(format!("svc:{r}"))),
            EndpointArg::Node => {
                let pod = to.pod.ok_or(ExplainError::NodeWithoutPod)?;
                let to_ip = to
                    .ip
                    .or(pod.ips.first().copied())
                    .ok_or_else(|| ExplainError::NoAddress(pod.key()))?;
                let from = End {
                    ip: self.node_address(&pod.node, to_ip.is_ipv6()),
                    pod: None,
                    node: Some(pod.node.as_str()),
                };
                Ok((
                    from,
                    End {
                        ip: Some(to_ip),
                        ..to
                    },
                ))
            }
            EndpointArg::Address(ip) => {
                let from = self.by_address(*ip);
                let to_ip = match to.ip {
                    Some(t) => Some(t),
                    None => {
                        let pod = to.pod.ok_or(ExplainError::NodeWithoutPod)?;
                        if pod.ips.is_empty() {
                            return Err(ExplainError::NoAddress(pod.key()));
                        }
                        Some(
                            ips(to.pod)
                                .into_iter()
                                .find(|t| t.is_ipv6() == ip.is_ipv6())
                                .ok_or_else(|| ExplainError::Family(pod.key().to_string()))?,
                        )
                    }
                };
                Ok((from, End { ip: to_ip, ..to }))
            }
            EndpointArg::Pod(r) => {
                let pod = self.pod(r)?;
                if pod.ips.is_empty() {
                    return Err(ExplainError::NoAddress(pod.key()));
                }
                let want: Vec<IpAddr> = match to.ip {
                    Some(t) => vec![t],
                    None => ips(to.pod),
                };
                if want.is_empty() {
                    return Err(ExplainError::NoAddress(
                        to.pod.map(Pod::key).unwrap_or_else(|| r.clone()),
                    ));
                }
                // The first of the client's addresses the server has a
                // family for (IPv4 first on dual-stack pods).
                let (f, t) = pod
                    .ips
                    .iter()
                    .find_map(|f| {
                        want.iter()
                            .find(|t| t.is_ipv6() == f.is_ipv6())
                            .map(|t| (*f, *t))
                    })
                    .ok_or_else(|| ExplainError::Family(r.to_string()))?;
                let from = End {
                    ip: Some(f),
                    pod: Some(pod),
                    node: pod.host_network.then_some(pod.node.as_str()),
                };
                Ok((from, End { ip: Some(t), ..to }))
            }
        }
    }

    fn port(&self, arg: &PortArg, to: &End<'a>) -> Result<(u16, Option<NamedPort>), ExplainError> {
        match &arg.port {
            PortName::Number(n) => Ok((*n, None)),
            PortName::Named(name) => {
                let pod = to
                    .pod
                    .ok_or_else(|| ExplainError::NamedPortWithoutPod(name.clone()))?;
                let port = pod.named_port(name, arg.protocol).ok_or_else(|| {
                    ExplainError::NoNamedPort {
                        pod: pod.key(),
                        name: name.clone(),
                        protocol: arg.protocol,
                    }
                })?;
                Ok((
                    port,
                    Some(NamedPort {
                        name: name.clone(),
                        pod: pod.key(),
                        port,
                    }),
                ))
            }
        }
    }

    fn party(&self, e: &End<'_>) -> Party {
        let name = match (e.pod, e.node, e.ip) {
            (Some(p), _, _) => p.key().to_string(),
            (None, Some(n), _) => format!("node/{n}"),
            (None, None, Some(ip)) => match self.frontends.get(&ip) {
                Some(f) => format!("svc:{}", f.service),
                None => ip.to_string(),
            },
            (None, None, None) => "?".into(),
        };
        Party {
            name,
            ip: e.ip,
            node: e.pod.map(|p| p.node.clone()).or(e.node.map(str::to_string)),
            host_network: e.pod.is_some_and(|p| p.host_network),
        }
    }

    /// A connection that no Service translates.
    fn direct(
        &self,
        from: End<'a>,
        to: End<'a>,
        protocol: Protocol,
        port: u16,
        named_port: Option<NamedPort>,
    ) -> Explanation {
        let egress = from
            .pod
            .map(|pod| self.egress(pod, from.ip, to, protocol, port));
        let ingress = to
            .policy_pod()
            .map(|pod| self.ingress(pod, to.ip, from, protocol, port));
        let allowed =
            egress.as_ref().is_none_or(|s| s.allowed) && ingress.as_ref().is_none_or(|s| s.allowed);
        let checks = egress
            .iter()
            .chain(&ingress)
            .filter_map(|s| s.maps.as_ref());
        Explanation {
            from: self.party(&from),
            to: self.party(&to),
            protocol,
            port,
            named_port,
            allowed,
            maps_agree: agree(checks),
            egress,
            ingress,
            service: None,
        }
    }

    fn profile_part(&self, pod: &Pod) -> ProfilePart {
        let p = self.world.profile;
        let ns = self.model().namespace_labels(&pod.namespace);
        ProfilePart {
            default_deny: p.default_deny && !p.default_deny_exempt.contains(&pod.namespace),
            metadata_opted_out: p.block_metadata && p.metadata_opted_out(&pod.labels, &ns),
            ..ProfilePart::default()
        }
    }

    /// Whether the metadata block holds `pod`'s egress to `ip` on this port.
    fn metadata_blocked(
        &self,
        pod: &Pod,
        ip: Option<IpAddr>,
        protocol: Protocol,
        port: u16,
    ) -> bool {
        let p = self.world.profile;
        let ns = self.model().namespace_labels(&pod.namespace);
        p.block_metadata
            && !p.metadata_opted_out(&pod.labels, &ns)
            && ip.is_some_and(|ip| p.metadata_prefixes().iter().any(|m| m.contains(&ip)))
            && p.metadata_blocks_port(protocol, port)
    }

    fn egress(
        &self,
        pod: &'a Pod,
        local: Option<IpAddr>,
        to: End<'a>,
        protocol: Protocol,
        port: u16,
    ) -> Side {
        let blocked = self.metadata_blocked(pod, to.ip, protocol, port);
        let mut profile = self.profile_part(pod);
        profile.metadata_blocked = blocked;
        if pod.host_network {
            // Only the cgroup hooks of the metadata block see its traffic.
            let maps = self.cgroup_check(pod, local, to.ip, protocol, port, !blocked);
            return Side {
                pod: pod.key(),
                node: pod.node.clone(),
                direction: Direction::Egress,
                selected_by: Vec::new(),
                allowed: !blocked,
                decided_by: if blocked {
                    Decided::MetadataBlock
                } else {
                    Decided::HostNetwork
                },
                logged: Vec::new(),
                profile,
                maps,
            };
        }
        let peer = Peer {
            ip: to.ip,
            pod: to.pod,
            metadata: blocked.then(|| self.world.profile.metadata_prefixes()),
        };
        self.decide(
            pod,
            Direction::Egress,
            local,
            to.ip,
            &peer,
            protocol,
            port,
            profile,
        )
    }

    fn ingress(
        &self,
        pod: &'a Pod,
        local: Option<IpAddr>,
        from: End<'a>,
        protocol: Protocol,
        port: u16,
    ) -> Side {
        let profile = self.profile_part(pod);
        if from.node == Some(pod.node.as_str()) {
            let maps = self.veth_check(
                pod,
                Direction::Ingress,
                local,
                from.ip,
                protocol,
                port,
                true,
            );
            return Side {
                pod: pod.key(),
                node: pod.node.clone(),
                direction: Direction::Ingress,
                selected_by: self.selected(pod, Direction::Ingress),
                allowed: true,
                decided_by: Decided::NodeToPod,
                logged: Vec::new(),
                profile,
                maps,
            };
        }
        let peer = Peer {
            ip: from.ip,
            pod: from.pod,
            metadata: None,
        };
        self.decide(
            pod,
            Direction::Ingress,
            local,
            from.ip,
            &peer,
            protocol,
            port,
            profile,
        )
    }

    fn selected(&self, pod: &Pod, dir: Direction) -> Vec<String> {
        self.layers
            .selecting(self.model(), pod, dir)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one side of one connection, spelled out"
    )]
    fn decide(
        &self,
        pod: &'a Pod,
        dir: Direction,
        local: Option<IpAddr>,
        remote: Option<IpAddr>,
        peer: &Peer<'_>,
        protocol: Protocol,
        port: u16,
        mut profile: ProfilePart,
    ) -> Side {
        let d = self
            .layers
            .decide(self.model(), pod, dir, peer, protocol.number(), Some(port));
        let selected_by = self.selected(pod, dir);
        profile.default_deny &= selected_by.iter().any(|s| s == DEFAULT_DENY);
        let decided_by = match &d.by {
            DecidedBy::Rule {
                origin,
                index,
                action,
            } => {
                profile.allow_dns = origin.to_string() == ALLOW_DNS;
                Decided::Rule {
                    policy: origin.to_string(),
                    tier: ordered::tier_of(origin),
                    index: *index,
                    action: *action,
                }
            }
            DecidedBy::EndOfTier { tier } => Decided::EndOfTier { tier: tier.clone() },
            DecidedBy::Default if peer.blocked() => Decided::MetadataBlock,
            DecidedBy::Default => Decided::NotIsolated,
        };
        let maps = self.veth_check(pod, dir, local, remote, protocol, port, d.allow);
        Side {
            pod: pod.key(),
            node: pod.node.clone(),
            direction: dir,
            selected_by,
            allowed: d.allow,
            decided_by,
            logged: d.logged.iter().map(ToString::to_string).collect(),
            profile,
            maps,
        }
    }

    /// The datapath's verdict at `pod`'s veth, from its node's maps.
    #[expect(
        clippy::too_many_arguments,
        reason = "one side of one connection, spelled out"
    )]
    fn veth_check(
        &self,
        pod: &Pod,
        dir: Direction,
        local: Option<IpAddr>,
        remote: Option<IpAddr>,
        protocol: Protocol,
        port: u16,
        semantic: bool,
    ) -> Option<MapsCheck> {
        let maps = self.world.maps?.maps(&pod.node)?;
        let (local, remote) = (local?, remote?);
        let v = sim::judge(&Dyn(maps), local, remote, dir, protocol.number(), port);
        Some(MapsCheck {
            node: pod.node.clone(),
            local,
            remote,
            port,
            verdict: format!("{v:?}"),
            allowed: v.allows(),
            agrees: v.allows() == semantic,
        })
    }

    /// The cgroup hooks' verdict for a hostNetwork pod: blocked when the
    /// pod carries the block and the destination's ipcache entry says so.
    fn cgroup_check(
        &self,
        pod: &Pod,
        local: Option<IpAddr>,
        remote: Option<IpAddr>,
        protocol: Protocol,
        port: u16,
        semantic: bool,
    ) -> Option<MapsCheck> {
        let nm = self.world.maps?;
        let on_pod = nm.cgroup_blocked(&pod.node, &pod.key())?;
        let maps = nm.maps(&pod.node)?;
        let (local, remote) = (local?, remote?);
        let flags = maps.ipcache(remote).flags;
        let blocked = on_pod && palisade_common::metadata_blocks(flags, protocol.number(), port);
        Some(MapsCheck {
            node: pod.node.clone(),
            local,
            remote,
            port,
            verdict: if blocked {
                "CgroupBlocked"
            } else {
                "CgroupPassed"
            }
            .into(),
            allowed: !blocked,
            agrees: blocked != semantic,
        })
    }

    /// Through a Service frontend: the client's egress against the
    /// frontend, then each backend as a direct connection on its target port.
    fn through_service(
        &self,
        q: &Query,
        from: End<'a>,
        frontend: IpAddr,
        f: &services::Frontend,
        port: u16,
    ) -> Result<Explanation, ExplainError> {
        let protocol = q.port.protocol;
        let targets = f.ports.get(&(protocol, port)).cloned().unwrap_or_default();
        let mut backends = Vec::new();
        for (ip, target) in &targets {
            let sub = Query {
                from: q.from.clone(),
                to: EndpointArg::Address(*ip),
                port: PortArg {
                    port: PortName::Number(*target),
                    protocol,
                },
            };
            // The source is resolved afresh: `node` is each backend's node.
            let to = self.by_address(*ip);
            let (from, to) = match self.addresses(&sub.from, to) {
                Ok(pair) => pair,
                Err(ExplainError::NodeWithoutPod) => continue,
                Err(e) => return Err(e),
            };
            backends.push(self.direct(from, to, protocol, *target, None));
        }
        let egress = from
            .pod
            .filter(|p| !p.host_network)
            .map(|pod| self.frontend_egress(pod, from.ip, frontend, f, &backends, protocol, port));
        let all = !backends.is_empty() && backends.iter().all(|b| b.allowed);
        let mixed = backends.iter().any(|b| b.allowed) && !all;
        let allowed = all && egress.as_ref().is_none_or(|s| s.allowed);
        let checks = egress
            .iter()
            .filter_map(|s| s.maps.as_ref())
            .map(|c| c.agrees)
            .chain(backends.iter().filter_map(|b| b.maps_agree));
        let maps_agree = checks.fold(None, |acc: Option<bool>, a| Some(acc.unwrap_or(true) && a));
        Ok(Explanation {
            from: self.party(&from),
            to: self.party(&End {
                ip: Some(frontend),
                pod: None,
                node: None,
            }),
            protocol,
            port,
            named_port: None,
            allowed,
            egress: None,
            ingress: None,
            service: Some(ServiceHop {
                service: f.service.clone(),
                frontend,
                port,
                egress,
                backends,
                mixed,
            }),
            maps_agree,
        })
    }

    /// The client's egress to a frontend, as the compiler precomputes it:
    /// allowed when a direct connection to every backend would pass the
    /// client's egress (and there is one), or when nothing restricts it.
    #[expect(
        clippy::too_many_arguments,
        reason = "one side of one connection, spelled out"
    )]
    fn frontend_egress(
        &self,
        pod: &'a Pod,
        local: Option<IpAddr>,
        frontend: IpAddr,
        f: &services::Frontend,
        backends: &[Explanation],
        protocol: Protocol,
        port: u16,
    ) -> Side {
        let selected_by = self.selected(pod, Direction::Egress);
        let mut profile = self.profile_part(pod);
        profile.default_deny &= selected_by.iter().any(|s| s == DEFAULT_DENY);
        let metadata_in_play = f.metadata_backed && !profile.metadata_opted_out;
        let unrestricted = selected_by.is_empty() && !metadata_in_play;
        let allowed = unrestricted
            || (!backends.is_empty()
                && backends
                    .iter()
                    .all(|b| b.egress.as_ref().is_none_or(|s| s.allowed)));
        let decided_by = if unrestricted {
            Decided::NotIsolated
        } else {
            Decided::Frontend
        };
        let maps = self.veth_check(
            pod,
            Direction::Egress,
            local,
            Some(frontend),
            protocol,
            port,
            allowed,
        );
        Side {
            pod: pod.key(),
            node: pod.node.clone(),
            direction: Direction::Egress,
            selected_by,
            allowed,
            decided_by,
            logged: Vec::new(),
            profile,
            maps,
        }
    }
}

/// A `dyn MapView` where [`sim`] wants a sized one.
struct Dyn<'m>(&'m dyn MapView);

impl MapView for Dyn<'_> {
    fn endpoint(&self, local: IpAddr) -> Option<crate::policy::state::EndpointEntry> {
        self.0.endpoint(local)
    }

    fn ipcache(&self, addr: IpAddr) -> crate::policy::state::IpcacheEntry {
        self.0.ipcache(addr)
    }

    fn policy(&self, ep: u32, dir: Direction, proto: u8, identity: u32, port: u16) -> Option<u32> {
        self.0.policy(ep, dir, proto, identity, port)
    }
}

fn agree<'c>(checks: impl Iterator<Item = &'c MapsCheck>) -> Option<bool> {
    checks.fold(None, |acc, c| Some(acc.unwrap_or(true) && c.agrees))
}

#[cfg(test)]
mod tests;
