//! The datapath's decision for the first packet of a flow, computed from a
//! [`Maps`] the way the eBPF program computes it from the maps:
//! endpoint lookup, longest-prefix ipcache match, then at most four policy
//! lookups (two for a metadata or Service peer: its exact identity only). Tests hold the compiler to the reference evaluator through this,
//! and the privileged tests hold the kernel to this.

use std::net::IpAddr;

use ipnet::IpNet;
use palisade_common::{IDENTITY_ANY, IDENTITY_WORLD, PROTO_ANY, endpoint_flags, ipcache_flags};

use super::{
    addr::{canonical_ip, wire_addr, wire_prefix, wire_prefix_contains},
    state::{Direction, EndpointEntry, IpcacheEntry, Maps, PolicyKey},
};

/// The three lookups the datapath makes, over some copy of its maps: the
/// in-memory [`Maps`] here, the pinned kernel maps in `dataplane` (so the
/// agent can re-judge a tracked flow exactly as a packet would be judged).
pub trait MapView {
    fn endpoint(&self, local: IpAddr) -> Option<EndpointEntry>;
    /// Longest-prefix match; an address without an entry is the world.
    fn ipcache(&self, addr: IpAddr) -> IpcacheEntry;
    /// The rule of the entry covering `port` for this key, if any.
    fn policy(&self, ep: u32, dir: Direction, proto: u8, identity: u32, port: u16) -> Option<u32>;
}

impl MapView for Maps {
    fn endpoint(&self, local: IpAddr) -> Option<EndpointEntry> {
        self.endpoints.get(&canonical_ip(local)).copied()
    }

    fn ipcache(&self, addr: IpAddr) -> IpcacheEntry {
        lookup_ipcache(self, addr)
    }

    fn policy(&self, ep: u32, dir: Direction, proto: u8, identity: u32, port: u16) -> Option<u32> {
        lookup_policy(self, ep, dir, proto, identity, port)
    }
}

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
    /// On a pod's veth, an address that is not that pod's.
    DeniedSpoofed,
}

impl Verdict {
    pub fn allows(self) -> bool {
        !matches!(
            self,
            Verdict::DeniedIsolated | Verdict::DeniedMetadata | Verdict::DeniedSpoofed
        )
    }
}

/// Longest-prefix match over the kernel's 128-bit keys, as its LPM trie
/// does it: an IPv4 address is `::ffff:a.b.c.d`, so an IPv6 prefix that
/// covers `::ffff:0:0/96` can match it.
///
/// # Panics
/// When two logical keys are one kernel key: the kernel would hold only
/// the last one written, and no mirror of it may hold both.
pub fn lookup_ipcache(maps: &Maps, addr: IpAddr) -> IpcacheEntry {
    let want = wire_addr(addr);
    let mut best: Option<(u8, &IpNet, &IpcacheEntry)> = None;
    for (net, entry) in &maps.ipcache {
        let (len, key) = wire_prefix(net);
        if !wire_prefix_contains(len, &key, &want) {
            continue;
        }
        match best {
            Some((l, other, _)) if l == len => {
                panic!("ipcache keys {other} and {net} are one kernel key")
            }
            Some((l, _, _)) if l > len => {}
            _ => best = Some((len, net, entry)),
        }
    }
    best.map_or(
        IpcacheEntry {
            identity: IDENTITY_WORLD,
            flags: 0,
        },
        |(_, _, e)| *e,
    )
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
    maps: &impl MapView,
    ep: u32,
    dir: Direction,
    proto: u8,
    identity: u32,
    port: u16,
    any_peer: bool,
) -> Option<u32> {
    maps.policy(ep, dir, proto, identity, port)
        .or_else(|| maps.policy(ep, dir, PROTO_ANY, identity, 0))
        .or_else(|| {
            any_peer
                .then(|| {
                    maps.policy(ep, dir, proto, IDENTITY_ANY, port)
                        .or_else(|| maps.policy(ep, dir, PROTO_ANY, IDENTITY_ANY, 0))
                })
                .flatten()
        })
}

/// The verdict at `local`'s veth for a new flow with `remote`, where `port`
/// is the server's port (local on ingress, remote on egress).
pub fn judge(
    maps: &impl MapView,
    local: IpAddr,
    remote: IpAddr,
    dir: Direction,
    proto: u8,
    port: u16,
) -> Verdict {
    let Some(ep) = maps.endpoint(local) else {
        return Verdict::NotLocal;
    };
    judge_peer(maps, ep, maps.ipcache(remote), dir, proto, port)
}

/// [`judge`] for an endpoint entry and a peer's ipcache entry already looked up.
pub fn judge_peer(
    maps: &impl MapView,
    ep: EndpointEntry,
    peer: IpcacheEntry,
    dir: Direction,
    proto: u8,
    port: u16,
) -> Verdict {
    if dir == Direction::Egress
        && ep.flags & endpoint_flags::BLOCK_METADATA != 0
        && palisade_common::metadata_blocks(peer.flags, proto, port)
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
    // A Service frontend is judged by its backends' entries alone.
    let any_peer = peer.flags & ipcache_flags::SERVICE == 0;
    rule_for(maps, ep.id, dir, proto, peer.identity, port, any_peer)
        .map_or(Verdict::DeniedIsolated, Verdict::Rule)
}

/// [`judge`] for a packet seen on interface `ifindex`, with the binding of
/// endpoints to their veths that the kernel checks first.
pub fn judge_at(
    maps: &Maps,
    ifindex: u32,
    local: IpAddr,
    remote: IpAddr,
    dir: Direction,
    proto: u8,
    port: u16,
) -> Verdict {
    match maps.endpoints.get(&canonical_ip(local)) {
        Some(ep) if ep.ifindex != ifindex => Verdict::DeniedSpoofed,
        None if maps.ifaces.contains_key(&ifindex) => Verdict::DeniedSpoofed,
        _ => judge(maps, local, remote, dir, proto, port),
    }
}

/// Whether a new connection from `src` to `dst:port` passes both veths
/// (the client's egress and the server's ingress) on this node.
pub fn connection_allowed(
    maps: &impl MapView,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    port: u16,
) -> bool {
    judge(maps, src, dst, Direction::Egress, proto, port).allows()
        && judge(maps, dst, src, Direction::Ingress, proto, port).allows()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("net")
    }

    fn entry(identity: u32) -> IpcacheEntry {
        IpcacheEntry { identity, flags: 0 }
    }

    #[test]
    fn an_ipv6_prefix_covering_v4_mapped_space_matches_ipv4() {
        let mut maps = Maps::default();
        maps.ipcache.insert(net("::/0"), entry(300));
        let v4 = IpAddr::from([203, 0, 113, 10]);
        assert_eq!(lookup_ipcache(&maps, v4), entry(300));
        maps.ipcache.insert(net("0.0.0.0/0"), entry(IDENTITY_WORLD));
        assert_eq!(lookup_ipcache(&maps, v4), entry(IDENTITY_WORLD));
        let v6: IpAddr = "2001:db8::1".parse().expect("ip");
        assert_eq!(lookup_ipcache(&maps, v6), entry(300));
    }

    #[test]
    #[should_panic(expected = "are one kernel key")]
    fn two_logical_keys_for_one_kernel_key_are_caught() {
        let mut maps = Maps::default();
        maps.ipcache.insert(net("169.254.169.254/32"), entry(300));
        maps.ipcache
            .insert(net("::ffff:169.254.169.254/128"), entry(301));
        lookup_ipcache(&maps, IpAddr::from([169, 254, 169, 254]));
    }
}
