//! The datapath's decision for the first packet of a flow, computed from a
//! [`Maps`] the way the eBPF program computes it from the maps:
//! endpoint lookup, longest-prefix ipcache match, then at most four policy
//! lookups (two for a metadata or Service peer: its exact identity only). Tests hold the compiler to the reference evaluator through this,
//! and the privileged tests hold the kernel to this.

use std::net::IpAddr;

use ipnet::IpNet;
use palisade_common::{IDENTITY_ANY, IDENTITY_WORLD, PROTO_ANY, endpoint_flags, ipcache_flags};

use super::state::{Direction, EndpointEntry, IpcacheEntry, Maps, PolicyKey};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not a local endpoint: the datapath does not judge it.
    NotLocal,
    /// Allowed: not isolated, from the node, or by this rule id.
    Unisolated,
    Host,
    Rule(u32),
    DeniedIsolated,
    DeniedMetadata,
}

impl Verdict {
    pub fn allows(self) -> bool {
        !matches!(self, Verdict::DeniedIsolated | Verdict::DeniedMetadata)
    }
}

/// Longest-prefix match, as the kernel's LPM trie does it.
pub fn lookup_ipcache(maps: &Maps, addr: IpAddr) -> IpcacheEntry {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    for len in (0..=max).rev() {
        let net = IpNet::new(addr, len).expect("valid prefix length").trunc();
        if let Some(e) = maps.ipcache.get(&net) {
            return *e;
        }
    }
    IpcacheEntry {
        identity: IDENTITY_WORLD,
        flags: 0,
    }
}

fn lookup_policy(
    maps: &Maps,
    ep: u32,
    dir: Direction,
    proto: u8,
    identity: u32,
    port: u16,
) -> Option<u32> {
    // Entries for this (endpoint, dir, proto, identity) differ only in port
    // prefix; they never overlap, so any covering one is the match.
    let lo = PolicyKey {
        endpoint: ep,
        dir,
        proto,
        identity,
        port: 0,
        port_bits: 0,
    };
    let hi = PolicyKey {
        endpoint: ep,
        dir,
        proto,
        identity,
        port: u16::MAX,
        port_bits: u8::MAX,
    };
    maps.policy
        .range(lo..=hi)
        .filter(|(k, _)| proto == PROTO_ANY || k.covers_port(port))
        .max_by_key(|(k, _)| k.port_bits)
        .map(|(_, v)| *v)
}

fn rule_for(
    maps: &Maps,
    ep: u32,
    dir: Direction,
    proto: u8,
    identity: u32,
    port: u16,
    any_peer: bool,
) -> Option<u32> {
    lookup_policy(maps, ep, dir, proto, identity, port)
        .or_else(|| lookup_policy(maps, ep, dir, PROTO_ANY, identity, 0))
        .or_else(|| {
            any_peer
                .then(|| {
                    lookup_policy(maps, ep, dir, proto, IDENTITY_ANY, port)
                        .or_else(|| lookup_policy(maps, ep, dir, PROTO_ANY, IDENTITY_ANY, 0))
                })
                .flatten()
        })
}

/// The verdict at `local`'s veth for a new flow with `remote`, where `port`
/// is the server's port (local on ingress, remote on egress).
pub fn judge(
    maps: &Maps,
    local: IpAddr,
    remote: IpAddr,
    dir: Direction,
    proto: u8,
    port: u16,
) -> Verdict {
    let Some(ep) = maps.endpoints.get(&local) else {
        return Verdict::NotLocal;
    };
    judge_peer(maps, *ep, lookup_ipcache(maps, remote), dir, proto, port)
}

/// [`judge`] for an endpoint entry and a peer's ipcache entry already looked up.
pub fn judge_peer(
    maps: &Maps,
    ep: EndpointEntry,
    peer: IpcacheEntry,
    dir: Direction,
    proto: u8,
    port: u16,
) -> Verdict {
    if dir == Direction::Egress
        && peer.flags & ipcache_flags::METADATA != 0
        && ep.flags & endpoint_flags::BLOCK_METADATA != 0
    {
        return rule_for(maps, ep.id, dir, proto, peer.identity, port, false)
            .map_or(Verdict::DeniedMetadata, Verdict::Rule);
    }
    let isolated = match dir {
        Direction::Ingress => endpoint_flags::INGRESS_ISOLATED,
        Direction::Egress => endpoint_flags::EGRESS_ISOLATED,
    };
    if ep.flags & isolated == 0 {
        return Verdict::Unisolated;
    }
    if dir == Direction::Ingress && peer.flags & ipcache_flags::HOST != 0 {
        return Verdict::Host;
    }
    // A Service frontend opens only by entries for its own identity.
    let any_peer = peer.flags & ipcache_flags::SERVICE == 0;
    rule_for(maps, ep.id, dir, proto, peer.identity, port, any_peer)
        .map_or(Verdict::DeniedIsolated, Verdict::Rule)
}

/// Whether a new connection from `src` to `dst:port` passes both veths
/// (the client's egress and the server's ingress) on this node.
pub fn connection_allowed(maps: &Maps, src: IpAddr, dst: IpAddr, proto: u8, port: u16) -> bool {
    judge(maps, src, dst, Direction::Egress, proto, port).allows()
        && judge(maps, dst, src, Direction::Ingress, proto, port).allows()
}
