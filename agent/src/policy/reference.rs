//! An independent reference evaluator, written straight from the
//! NetworkPolicy API text, with no identities, maps or caches. The compiler
//! is checked against it (see the tests in `tests/`).

use std::net::IpAddr;

use super::{
    ordered::{Layers, PeerView},
    profile::Profile,
    state::Direction,
};
use crate::model::policy::{NamespaceScope, Peer, Policy, PortRef, Rule, in_block};
use crate::model::{Model, Pod, Protocol};

/// One side of a connection.
#[derive(Clone, Copy, Debug)]
pub enum Party<'a> {
    Pod(&'a Pod, IpAddr),
    /// The node the server pod runs on.
    Node(IpAddr),
    External(IpAddr),
}

impl Party<'_> {
    fn ip(&self) -> IpAddr {
        match *self {
            Party::Pod(_, ip) | Party::Node(ip) | Party::External(ip) => ip,
        }
    }

    fn pod(&self) -> Option<&Pod> {
        match self {
            Party::Pod(p, _) if !p.host_network => Some(p),
            _ => None,
        }
    }
}

fn all_policies(model: &Model, profile: &Profile, namespace: &str) -> Vec<Policy> {
    model
        .policies
        .values()
        .filter(|p| p.namespace == namespace)
        .cloned()
        .chain(profile.policies_for(namespace))
        .collect()
}

/// "A connection from a source pod to a destination pod requires both the
/// egress policy on the source and the ingress policy on the destination."
pub fn allowed(
    model: &Model,
    profile: &Profile,
    src: Party<'_>,
    dst: Party<'_>,
    protocol: Protocol,
    port: u16,
) -> bool {
    egress_allows(model, profile, src, dst, protocol, port)
        && ingress_allows(model, profile, src, dst, protocol, port)
}

/// Service traffic as the client's veth sees it: "a connection to a Service
/// frontend port is allowed iff a direct connection to every backend on its
/// target port is allowed, and there is at least one backend", since
/// kube-proxy may pick any of them after the client's egress is judged. A
/// pod whose egress nothing restricts (not isolated, and the metadata block
/// not in play for a metadata backend on any port) reaches every frontend. Only the
/// client's egress: the server's ingress sees the backend and the real
/// client, as for a direct connection.
///
/// Backends are read from the objects as written: the addresses of the
/// Service's EndpointSlices (of the frontend's family) on the slice port
/// with the Service port's name and protocol. A backend address is the
/// last pod in key order holding it, or an external address. `frontend`
/// must be an address no pod, node or (blocked) metadata prefix holds.
pub fn service_egress_allowed(
    model: &Model,
    profile: &Profile,
    src: Party<'_>,
    frontend: IpAddr,
    protocol: Protocol,
    port: u16,
) -> bool {
    let Some(pod) = src.pod() else {
        return true;
    };
    // Per Service port of the frontend: its backends.
    let mut backends: Vec<(Protocol, u16, IpAddr, u16)> = Vec::new();
    for svc in model
        .services
        .values()
        .filter(|s| s.frontends.contains(&frontend))
    {
        for sp in &svc.ports {
            for slice in model.endpoint_slices.values().filter(|s| {
                s.namespace == svc.namespace && s.service.as_deref() == Some(svc.name.as_str())
            }) {
                for target in slice
                    .ports
                    .iter()
                    .filter(|p| p.name == sp.name && p.protocol == sp.protocol)
                {
                    for addr in slice
                        .addresses
                        .iter()
                        .filter(|a| a.is_ipv4() == frontend.is_ipv4())
                    {
                        backends.push((sp.protocol, sp.port, *addr, target.port));
                    }
                }
            }
        }
    }
    let party = |ip: IpAddr| match model.pods.values().rfind(|p| p.ips.contains(&ip)) {
        Some(p) => Party::Pod(p, ip),
        None => Party::External(ip),
    };
    let ns_labels = model.namespace_labels(&pod.namespace);
    // The metadata address behind any port puts the whole frontend under
    // the block, as the address itself is.
    let metadata_in_play = profile.block_metadata
        && !profile.metadata_opted_out(&pod.labels, &ns_labels)
        && backends
            .iter()
            .any(|(_, _, b, _)| profile.metadata_prefixes().iter().any(|m| m.contains(b)));
    let network = all_policies(model, profile, &pod.namespace);
    // An ordered policy selecting the pod isolates it as NetworkPolicy does.
    let isolated = network
        .iter()
        .any(|p| p.egress.is_some() && p.pod_selector.matches(&pod.labels))
        || Layers::new(model, &network).ordered_selects(model, pod, Direction::Egress);
    if !isolated && !metadata_in_play {
        return true;
    }
    let mut on_port = backends
        .iter()
        .filter(|(proto, p, _, _)| *proto == protocol && *p == port)
        .peekable();
    on_port.peek().is_some()
        && on_port.all(|(_, _, b, target)| {
            egress_allows(model, profile, src, party(*b), protocol, *target)
        })
}

fn peer_matches(model: &Model, policy: &Policy, peer: &Peer, other: Party<'_>) -> bool {
    match peer {
        Peer::IpBlock { cidr, except } => in_block(other.ip(), cidr, except),
        Peer::Pods { namespaces, pods } => {
            let Some(pod) = other.pod() else {
                return false;
            };
            let ns_ok = match namespaces {
                NamespaceScope::Own(ns) => *ns == pod.namespace && *ns == policy.namespace,
                NamespaceScope::Selected(sel) => {
                    sel.matches(&model.namespace_labels(&pod.namespace))
                }
            };
            ns_ok && pods.matches(&pod.labels)
        }
    }
}

/// Whether `rule` admits `other` on `port`, named ports resolved on `server`.
fn rule_matches(
    model: &Model,
    policy: &Policy,
    rule: &Rule,
    other: Party<'_>,
    server: Option<&Pod>,
    protocol: Protocol,
    port: u16,
) -> bool {
    let peer_ok = rule.peers.is_empty()
        || rule
            .peers
            .iter()
            .any(|p| peer_matches(model, policy, p, other));
    let port_ok = rule.ports.is_empty()
        || rule.ports.iter().any(|spec| {
            spec.protocol == protocol
                && match &spec.port {
                    None => true,
                    Some(PortRef::Range { start, end }) => (*start..=*end).contains(&port),
                    Some(PortRef::Named(name)) => {
                        server.and_then(|s| s.named_port(name, protocol)) == Some(port)
                    }
                }
        });
    peer_ok && port_ok
}

/// With ordered policies: the tiers in order, NetworkPolicy (and the
/// profile's) in the default tier ([`super::ordered`]).
fn ordered_allows(
    model: &Model,
    profile: &Profile,
    pod: &Pod,
    dir: Direction,
    peer: &PartyPeer<'_>,
    protocol: Protocol,
    port: u16,
) -> bool {
    let network = all_policies(model, profile, &pod.namespace);
    Layers::new(model, &network)
        .decide(model, pod, dir, peer, protocol.number(), Some(port))
        .allow
}

/// A party as a peer of the ordered evaluation; under the metadata block
/// only a net naming a metadata prefix exactly holds a metadata address.
struct PartyPeer<'a> {
    party: Party<'a>,
    metadata: Option<&'a [ipnet::IpNet]>,
}

impl PeerView for PartyPeer<'_> {
    fn pod(&self) -> Option<(&str, &crate::model::Labels)> {
        self.party.pod().map(|p| (p.namespace.as_str(), &p.labels))
    }

    fn in_net(&self, net: &ipnet::IpNet) -> bool {
        match self.metadata {
            Some(m) => m.contains(net) && net.contains(&self.party.ip()),
            None => net.contains(&self.party.ip()),
        }
    }

    fn blocked(&self) -> bool {
        self.metadata.is_some()
    }

    fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.party.pod().and_then(|p| p.named_port(name, protocol))
    }
}

fn egress_allows(
    model: &Model,
    profile: &Profile,
    src: Party<'_>,
    dst: Party<'_>,
    protocol: Protocol,
    port: u16,
) -> bool {
    let Some(pod) = src.pod() else {
        return true;
    };
    if !model.ordered.is_empty() {
        let ns_labels = model.namespace_labels(&pod.namespace);
        let blocked = profile.block_metadata
            && !profile.metadata_opted_out(&pod.labels, &ns_labels)
            && profile
                .metadata_prefixes()
                .iter()
                .any(|m| m.contains(&dst.ip()))
            && profile.metadata_blocks_port(protocol, port);
        let metadata = profile.metadata_prefixes();
        let peer = PartyPeer {
            party: dst,
            metadata: blocked.then_some(&metadata[..]),
        };
        return ordered_allows(
            model,
            profile,
            pod,
            Direction::Egress,
            &peer,
            protocol,
            port,
        );
    }
    let selecting: Vec<Policy> = all_policies(model, profile, &pod.namespace)
        .into_iter()
        .filter(|p| p.pod_selector.matches(&pod.labels))
        .collect();
    // The metadata block: only an ipBlock naming the address exactly opens
    // it; DNS to it, where left open, is judged like any destination.
    let ns_labels = model.namespace_labels(&pod.namespace);
    let metadata = profile.metadata_prefixes();
    if profile.block_metadata
        && !profile.metadata_opted_out(&pod.labels, &ns_labels)
        && metadata.iter().any(|m| m.contains(&dst.ip()))
        && profile.metadata_blocks_port(protocol, port)
    {
        return selecting.iter().any(|p| {
            p.egress.iter().flatten().any(|r| {
                r.peers.iter().any(|peer| {
                    matches!(peer, Peer::IpBlock { cidr, except }
                        if metadata.contains(cidr) && in_block(dst.ip(), cidr, except))
                }) && rule_matches(
                    model,
                    p,
                    &Rule {
                        peers: Vec::new(),
                        ports: r.ports.clone(),
                    },
                    dst,
                    dst.pod(),
                    protocol,
                    port,
                )
            })
        });
    }
    let isolating: Vec<&Policy> = selecting.iter().filter(|p| p.egress.is_some()).collect();
    if isolating.is_empty() {
        return true;
    }
    isolating.iter().any(|p| {
        p.egress
            .iter()
            .flatten()
            .any(|r| rule_matches(model, p, r, dst, dst.pod(), protocol, port))
    })
}

fn ingress_allows(
    model: &Model,
    profile: &Profile,
    src: Party<'_>,
    dst: Party<'_>,
    protocol: Protocol,
    port: u16,
) -> bool {
    let Some(pod) = dst.pod() else {
        return true;
    };
    if matches!(src, Party::Node(_)) {
        return true;
    }
    if !model.ordered.is_empty() {
        let peer = PartyPeer {
            party: src,
            metadata: None,
        };
        return ordered_allows(
            model,
            profile,
            pod,
            Direction::Ingress,
            &peer,
            protocol,
            port,
        );
    }
    let isolating: Vec<Policy> = all_policies(model, profile, &pod.namespace)
        .into_iter()
        .filter(|p| p.ingress.is_some() && p.pod_selector.matches(&pod.labels))
        .collect();
    if isolating.is_empty() || matches!(src, Party::Node(_)) {
        return true;
    }
    isolating.iter().any(|p| {
        p.ingress
            .iter()
            .flatten()
            .any(|r| rule_matches(model, p, r, src, Some(pod), protocol, port))
    })
}
