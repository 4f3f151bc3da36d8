//! `palisade explain FROM TO [PORT/PROTO]`: the verdict of one connection
//! and why. Pure: the semantic answer comes from the ordered core
//! ([`Layers::decide`], each side as the connection meets it), the kernel's
//! answer from a [`MapView`] per node ([`sim::judge`], the datapath's own
//! lookups), and the two are compared. The agent feeds it its model and its
//! pinned maps; `palisade explain --source` a directory and compiled maps.

mod args;
pub mod client;
mod compiled;
mod render;
mod report;
mod service;

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;

use crate::{
    model::{Labels, Model, Node, ObjectRef, Pod, Protocol, policy::in_block},
    policy::{
        Profile,
        ordered::{self, DecidedBy, Layers, PeerView},
        profile::{ALLOW_DNS, DEFAULT_DENY},
        services,
        sim::{self, MapView},
        state::Direction,
    },
};

pub use args::{EndpointArg, PortArg, PortName, Query};
pub use compiled::CompiledNodes;
pub use render::human;
pub use report::{
    Decided, Explanation, MapsCheck, NamedPort, Party, ProfilePart, ServiceHop, Side,
};

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
