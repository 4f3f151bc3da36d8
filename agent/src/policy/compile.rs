//! `compile(model, node, profile) -> DesiredState`: NetworkPolicy semantics
//! turned into map contents.
//!
//! Remote addresses are compressed into identities: two addresses share an
//! identity when no policy can tell them apart, i.e. they have the same pod
//! facts (namespace, labels, named ports) and lie in the same set of the
//! CIDRs that policies name. Longest-prefix match on the ipcache then yields
//! an identity whose CIDR membership is exact, which is what makes ipBlock
//! with `except`, and ipBlocks that cover pods, come out right.
//!
//! Bounds: ipcache entries = pod addresses + distinct CIDRs + node addresses;
//! policy entries per local endpoint <= sum over rules of
//! (matching identities) x (ports, a range counting at most 31 prefixes).

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use palisade_common::{IDENTITY_ANY, IDENTITY_FIRST, PROTO_ANY, endpoint_flags, ipcache_flags};

use super::{
    alloc::Allocator,
    profile::{Profile, metadata_prefixes},
    state::{
        DesiredState, Direction, EndpointEntry, EndpointInfo, HostNetworkBlock, IdentityInfo,
        IpcacheEntry, PolicyKey, RuleRef,
    },
    types::{NamespaceScope, Peer, Policy, PolicyOrigin, PortRef, Rule},
};
use crate::model::{ContainerPort, Labels, Model, Node, ObjectRef, Pod, Protocol};

/// What an identity is made of. Ordered, so identities come out in a stable order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Signature {
    kind: Kind,
    /// The policy CIDRs that contain the address(es), sorted.
    blocks: Vec<IpNet>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Pod {
        namespace: String,
        labels: Labels,
        /// Named container ports only: numbers need no resolution.
        named_ports: Vec<ContainerPort>,
    },
    Cidr,
    Host,
    Metadata(IpNet),
}

/// Compiles with id allocations that persist across calls, so that an edit
/// changes only the entries it touches.
#[derive(Clone, Debug)]
pub struct Compiler {
    identities: Allocator<Signature>,
    endpoints: Allocator<ObjectRef>,
    rules: Allocator<RuleRef>,
}

impl Default for Compiler {
    fn default() -> Self {
        Self {
            identities: Allocator::starting_at(IDENTITY_FIRST),
            endpoints: Allocator::starting_at(1),
            rules: Allocator::starting_at(1),
        }
    }
}

impl Compiler {
    /// A compiler whose ids start above every id in `observed` (the pinned
    /// maps of a previous run), so no id can mean two things while the first
    /// diff is applied.
    pub fn above(mut self, observed: &super::state::Maps) -> Self {
        let max_identity = observed
            .ipcache
            .values()
            .map(|e| e.identity)
            .max()
            .unwrap_or(0);
        let max_endpoint = observed.endpoints.values().map(|e| e.id).max().unwrap_or(0);
        let max_rule = observed.policy.values().copied().max().unwrap_or(0);
        self.identities =
            Allocator::starting_at(IDENTITY_FIRST.max(max_identity.saturating_add(1)));
        self.endpoints = Allocator::starting_at(max_endpoint.saturating_add(1).max(1));
        self.rules = Allocator::starting_at(max_rule.saturating_add(1).max(1));
        self
    }
}

impl Compiler {
    /// Takes over the ids a previous run left in the kernel maps: `fresh` is
    /// a compile of the current model; wherever it holds an address, endpoint
    /// or policy key that `observed` also holds, the observed id replaces the
    /// fresh one. Compiling again then reproduces the observed maps exactly
    /// where the model is unchanged, so a restart rewrites nothing.
    pub fn adopt_ids(&mut self, observed: &super::state::Maps, fresh: &DesiredState) {
        fn consistent(pairs: impl Iterator<Item = (u32, u32)>) -> BTreeMap<u32, u32> {
            let mut map: BTreeMap<u32, Option<u32>> = BTreeMap::new();
            for (new, old) in pairs {
                let e = map.entry(new).or_insert(Some(old));
                if *e != Some(old) {
                    *e = None;
                }
            }
            let mut claimed = BTreeSet::new();
            map.into_iter()
                .filter_map(|(new, old)| old.map(|o| (new, o)))
                .filter(|(_, old)| claimed.insert(*old))
                .collect()
        }
        let identities =
            consistent(fresh.maps.ipcache.iter().filter_map(|(net, e)| {
                observed.ipcache.get(net).map(|o| (e.identity, o.identity))
            }));
        let endpoints = consistent(
            fresh
                .maps
                .endpoints
                .iter()
                .filter_map(|(ip, e)| observed.endpoints.get(ip).map(|o| (e.id, o.id))),
        );
        let rules = consistent(fresh.maps.policy.iter().filter_map(|(k, rule)| {
            let mut old_key = *k;
            old_key.endpoint = *endpoints.get(&k.endpoint)?;
            if k.identity != IDENTITY_ANY {
                old_key.identity = *identities.get(&k.identity)?;
            }
            observed.policy.get(&old_key).map(|old| (*rule, *old))
        }));
        self.identities.renumber(&identities);
        self.endpoints.renumber(&endpoints);
        self.rules.renumber(&rules);
    }
}

/// One-shot compile with fresh ids.
pub fn compile(model: &Model, node: &Node, profile: &Profile) -> DesiredState {
    Compiler::default().compile(model, node, profile)
}

struct IdentityFacts<'a> {
    id: u32,
    sig: &'a Signature,
    /// Namespace labels for pod identities.
    ns_labels: Option<&'a Labels>,
}

impl Compiler {
    pub fn compile(&mut self, model: &Model, node: &Node, profile: &Profile) -> DesiredState {
        let mut state = DesiredState::default();
        let local: Vec<&Pod> = model
            .pods
            .values()
            .filter(|p| p.node == node.name && !p.host_network && !p.ips.is_empty())
            .collect();

        // Policies that can apply here: NetworkPolicies plus the profile's,
        // only for namespaces that have local endpoints.
        let local_namespaces: BTreeSet<&str> = local.iter().map(|p| p.namespace.as_str()).collect();
        let synthetic: Vec<Policy> = local_namespaces
            .iter()
            .flat_map(|ns| profile.policies_for(ns))
            .collect();
        let policies: Vec<&Policy> = model
            .policies
            .values()
            .filter(|p| local_namespaces.contains(p.namespace.as_str()))
            .chain(synthetic.iter())
            .collect();

        // The CIDRs policies name (peers of rules that can apply here).
        let mut blocks: BTreeSet<IpNet> = BTreeSet::new();
        for p in &policies {
            for rule in p.ingress.iter().chain(p.egress.iter()).flatten() {
                for peer in &rule.peers {
                    if let Peer::IpBlock { cidr, except } = peer {
                        blocks.insert(*cidr);
                        blocks.extend(except.iter().copied());
                    }
                }
            }
        }
        let containing = |addr: &IpNet| -> Vec<IpNet> {
            blocks
                .iter()
                .filter(|b| b.contains(addr))
                .copied()
                .collect()
        };

        // Address -> signature. Later inserts win: CIDRs, then node, metadata, pods.
        let mut addresses: BTreeMap<IpNet, (Signature, u32)> = BTreeMap::new();
        for b in &blocks {
            addresses.insert(
                *b,
                (
                    Signature {
                        kind: Kind::Cidr,
                        blocks: containing(b),
                    },
                    0,
                ),
            );
        }
        if profile.block_metadata {
            for m in metadata_prefixes() {
                let sig = Signature {
                    kind: Kind::Metadata(m),
                    blocks: containing(&m),
                };
                addresses.insert(m, (sig, ipcache_flags::METADATA));
            }
        }
        for ip in &node.addresses {
            let net = IpNet::from(*ip);
            let sig = Signature {
                kind: Kind::Host,
                blocks: containing(&net),
            };
            addresses.insert(net, (sig, ipcache_flags::HOST));
        }
        for pod in model.pods.values().filter(|p| !p.host_network) {
            let mut named_ports: Vec<ContainerPort> = pod
                .ports
                .iter()
                .filter(|p| p.name.is_some())
                .cloned()
                .collect();
            named_ports.sort();
            for ip in &pod.ips {
                let net = IpNet::from(*ip);
                // A node address is the node, whatever pod claims it.
                if node.addresses.contains(ip) {
                    continue;
                }
                let sig = Signature {
                    kind: Kind::Pod {
                        namespace: pod.namespace.clone(),
                        labels: pod.labels.clone(),
                        named_ports: named_ports.clone(),
                    },
                    blocks: containing(&net),
                };
                addresses.insert(net, (sig, 0));
            }
        }

        // Identities, and the ipcache.
        let mut by_sig: BTreeMap<Signature, u32> = BTreeMap::new();
        for (net, (sig, flags)) in &addresses {
            let id = *by_sig
                .entry(sig.clone())
                .or_insert_with(|| self.identities.id(sig));
            state.maps.ipcache.insert(
                *net,
                IpcacheEntry {
                    identity: id,
                    flags: *flags,
                },
            );
        }
        let ns_labels: BTreeMap<String, Labels> = by_sig
            .keys()
            .filter_map(|s| match &s.kind {
                Kind::Pod { namespace, .. } => Some((
                    namespace.clone(),
                    model.namespace_labels(namespace).into_owned(),
                )),
                _ => None,
            })
            .collect();
        let identities: Vec<IdentityFacts<'_>> = by_sig
            .iter()
            .map(|(sig, id)| IdentityFacts {
                id: *id,
                sig,
                ns_labels: match &sig.kind {
                    Kind::Pod { namespace, .. } => ns_labels.get(namespace),
                    _ => None,
                },
            })
            .collect();
        for f in &identities {
            state.identities.insert(
                f.id,
                match &f.sig.kind {
                    Kind::Pod {
                        namespace, labels, ..
                    } => IdentityInfo::Pods {
                        namespace: namespace.clone(),
                        labels: labels.clone(),
                    },
                    Kind::Cidr => IdentityInfo::Cidr(
                        *f.sig
                            .blocks
                            .iter()
                            .max_by_key(|b| b.prefix_len())
                            .unwrap_or(&IpNet::default()),
                    ),
                    Kind::Host => IdentityInfo::Host,
                    Kind::Metadata(_) => IdentityInfo::Metadata,
                },
            );
        }

        // Peers of each rule resolve to identities once, for all endpoints.
        let mut peer_cache: BTreeMap<(usize, Direction, usize), PeerMatch> = BTreeMap::new();

        for pod in &local {
            let pod_ref = pod.key();
            let ep_id = self.endpoints.id(&pod_ref);
            let pod_ns_labels = model.namespace_labels(&pod.namespace);
            let block_metadata =
                profile.block_metadata && !profile.metadata_opted_out(&pod.labels, &pod_ns_labels);
            let mut flags = if block_metadata {
                endpoint_flags::BLOCK_METADATA
            } else {
                0
            };
            let mut info = EndpointInfo {
                pod: Some(pod_ref),
                ..Default::default()
            };

            for dir in Direction::BOTH {
                let mut isolated_by = Vec::new();
                for (pi, policy) in policies.iter().enumerate() {
                    if policy.namespace != pod.namespace
                        || !policy.pod_selector.matches(&pod.labels)
                    {
                        continue;
                    }
                    let Some(rules) = (match dir {
                        Direction::Ingress => &policy.ingress,
                        Direction::Egress => &policy.egress,
                    }) else {
                        continue;
                    };
                    if !isolated_by.contains(&policy.origin) {
                        isolated_by.push(policy.origin.clone());
                    }
                    for (ri, rule) in rules.iter().enumerate() {
                        let rule_id = self.rules.id(&RuleRef {
                            origin: policy.origin.clone(),
                            dir,
                            index: ri,
                        });
                        let peers = peer_cache
                            .entry((pi, dir, ri))
                            .or_insert_with(|| match_peers(rule, &identities));
                        emit_rule(
                            &mut state.maps.policy,
                            Emit {
                                endpoint: ep_id,
                                dir,
                                rule_id,
                                pod,
                                block_metadata,
                            },
                            rule,
                            peers,
                            &identities,
                        );
                    }
                }
                if !isolated_by.is_empty() {
                    isolated_by.sort();
                    // Isolated by the profile alone (default deny and its DNS
                    // allowance): denials are the default deny's.
                    let only_default = isolated_by
                        .iter()
                        .all(|o| matches!(o, PolicyOrigin::Profile(_)));
                    flags |= match dir {
                        Direction::Ingress => {
                            endpoint_flags::INGRESS_ISOLATED
                                | if only_default {
                                    endpoint_flags::INGRESS_DEFAULT_DENY
                                } else {
                                    0
                                }
                        }
                        Direction::Egress => {
                            endpoint_flags::EGRESS_ISOLATED
                                | if only_default {
                                    endpoint_flags::EGRESS_DEFAULT_DENY
                                } else {
                                    0
                                }
                        }
                    };
                }
                match dir {
                    Direction::Ingress => info.ingress_isolated_by = isolated_by,
                    Direction::Egress => info.egress_isolated_by = isolated_by,
                }
            }
            for ip in &pod.ips {
                state
                    .maps
                    .endpoints
                    .insert(*ip, EndpointEntry { id: ep_id, flags });
            }
            state.endpoint_info.insert(ep_id, info);
        }

        // hostNetwork pods of this node: the metadata block goes on their cgroup.
        if profile.block_metadata {
            for pod in model
                .pods
                .values()
                .filter(|p| p.node == node.name && p.host_network)
            {
                if !profile.metadata_opted_out(&pod.labels, &model.namespace_labels(&pod.namespace))
                {
                    state.host_network_blocks.insert(HostNetworkBlock {
                        pod: pod.key(),
                        uid: pod.uid.clone(),
                    });
                }
            }
        }

        // Rule names for every rule id in use.
        for p in &policies {
            for (dir, rules) in [
                (Direction::Ingress, &p.ingress),
                (Direction::Egress, &p.egress),
            ] {
                for ri in 0..rules.as_ref().map_or(0, Vec::len) {
                    let r = RuleRef {
                        origin: p.origin.clone(),
                        dir,
                        index: ri,
                    };
                    let id = self.rules.id(&r);
                    state.rules.insert(id, r);
                }
            }
        }

        self.identities.release_unused();
        self.endpoints.release_unused();
        self.rules.release_unused();
        state
    }
}

/// A rule's peers as identities: every peer, or a list (by index into the
/// identity facts). Metadata identities are listed apart: whether they match
/// depends on the endpoint's metadata block.
enum PeerMatch {
    Any,
    Some {
        loose: Vec<usize>,
        /// Metadata identities matched by a block naming them exactly.
        metadata_exact: Vec<usize>,
        /// Metadata identities matched only by a wider block.
        metadata_loose: Vec<usize>,
    },
}

fn match_peers(rule: &Rule, identities: &[IdentityFacts<'_>]) -> PeerMatch {
    if rule.peers.is_empty() {
        return PeerMatch::Any;
    }
    let mut loose = Vec::new();
    let mut metadata_exact = Vec::new();
    let mut metadata_loose = Vec::new();
    for (i, f) in identities.iter().enumerate() {
        let mut matched_exact = false;
        let mut matched = false;
        for peer in &rule.peers {
            match peer {
                Peer::Pods { namespaces, pods } => {
                    if let Kind::Pod {
                        namespace, labels, ..
                    } = &f.sig.kind
                    {
                        let ns_ok = match namespaces {
                            NamespaceScope::Own(ns) => ns == namespace,
                            NamespaceScope::Selected(sel) => {
                                f.ns_labels.is_some_and(|l| sel.matches(l))
                            }
                        };
                        if ns_ok && pods.matches(labels) {
                            matched = true;
                        }
                    }
                }
                Peer::IpBlock { cidr, except } => {
                    let inside = f.sig.blocks.contains(cidr)
                        && !except.iter().any(|e| f.sig.blocks.contains(e));
                    if inside {
                        matched = true;
                        if let Kind::Metadata(m) = &f.sig.kind
                            && m == cidr
                        {
                            matched_exact = true;
                        }
                    }
                }
            }
        }
        match (&f.sig.kind, matched, matched_exact) {
            (_, false, _) => {}
            (Kind::Metadata(_), true, true) => metadata_exact.push(i),
            (Kind::Metadata(_), true, false) => metadata_loose.push(i),
            _ => loose.push(i),
        }
    }
    PeerMatch::Some {
        loose,
        metadata_exact,
        metadata_loose,
    }
}

struct Emit<'a> {
    endpoint: u32,
    dir: Direction,
    rule_id: u32,
    pod: &'a Pod,
    block_metadata: bool,
}

/// Inclusive port range as (value, prefix bits) pairs covering it exactly.
pub fn port_prefixes(start: u16, end: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut s, e) = (u32::from(start), u32::from(end));
    while s <= e {
        let mut size: u32 = if s == 0 {
            1 << 16
        } else {
            s & s.wrapping_neg()
        };
        while s + size - 1 > e {
            size >>= 1;
        }
        out.push((s as u16, (16 - size.trailing_zeros()) as u8));
        s += size;
    }
    out
}

fn insert(map: &mut BTreeMap<PolicyKey, u32>, key: PolicyKey, rule: u32) {
    // First rule wins; the value only attributes the allow.
    map.entry(key).or_insert(rule);
}

fn emit_ports(
    map: &mut BTreeMap<PolicyKey, u32>,
    e: &Emit<'_>,
    identity: u32,
    protocol: Protocol,
    start: u16,
    end: u16,
) {
    for (port, port_bits) in port_prefixes(start, end) {
        insert(
            map,
            PolicyKey {
                endpoint: e.endpoint,
                dir: e.dir,
                proto: protocol.number(),
                identity,
                port,
                port_bits,
            },
            e.rule_id,
        );
    }
}

fn emit_rule(
    map: &mut BTreeMap<PolicyKey, u32>,
    e: Emit<'_>,
    rule: &Rule,
    peers: &PeerMatch,
    identities: &[IdentityFacts<'_>],
) {
    // Identities this endpoint treats as matched: every peer, or the listed
    // ones plus the metadata identities the block leaves open to this rule.
    let listed: Vec<usize> = match peers {
        PeerMatch::Any => Vec::new(),
        PeerMatch::Some {
            loose,
            metadata_exact,
            metadata_loose,
        } => {
            let mut v = loose.clone();
            v.extend(metadata_exact);
            if !e.block_metadata {
                v.extend(metadata_loose);
            }
            v
        }
    };
    let any = matches!(peers, PeerMatch::Any);
    let peer_ids: Vec<u32> = if any {
        vec![IDENTITY_ANY]
    } else {
        listed.iter().map(|i| identities[*i].id).collect()
    };
    let key = |proto: u8, identity: u32| PolicyKey {
        endpoint: e.endpoint,
        dir: e.dir,
        proto,
        identity,
        port: 0,
        port_bits: 0,
    };

    if rule.ports.is_empty() {
        for identity in &peer_ids {
            insert(map, key(PROTO_ANY, *identity), e.rule_id);
        }
        return;
    }
    for spec in &rule.ports {
        match &spec.port {
            None => {
                for identity in &peer_ids {
                    insert(map, key(spec.protocol.number(), *identity), e.rule_id);
                }
            }
            Some(PortRef::Range { start, end }) => {
                for identity in &peer_ids {
                    emit_ports(map, &e, *identity, spec.protocol, *start, *end);
                }
            }
            // Ingress: the name is the local pod's port.
            Some(PortRef::Named(name)) if e.dir == Direction::Ingress => {
                if let Some(port) = e.pod.named_port(name, spec.protocol) {
                    for identity in &peer_ids {
                        emit_ports(map, &e, *identity, spec.protocol, port, port);
                    }
                }
            }
            // Egress: the name is each destination pod's port, so it can mean
            // a different number per peer identity.
            Some(PortRef::Named(name)) => {
                let candidates: Vec<usize> = if any {
                    (0..identities.len()).collect()
                } else {
                    listed.clone()
                };
                for i in candidates {
                    if let Kind::Pod { named_ports, .. } = &identities[i].sig.kind {
                        for p in named_ports {
                            if p.protocol == spec.protocol
                                && p.name.as_deref() == Some(name.as_str())
                            {
                                emit_ports(
                                    map,
                                    &e,
                                    identities[i].id,
                                    spec.protocol,
                                    p.port,
                                    p.port,
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_split_into_exact_prefixes() {
        assert_eq!(port_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_prefixes(32000, 32767), vec![(32000, 8), (32256, 7)]);
        for (s, e) in [
            (1u16, 65535u16),
            (1000, 1999),
            (0, 0),
            (65535, 65535),
            (5, 6),
        ] {
            let parts = port_prefixes(s, e);
            for p in 0..=65535u32 {
                let p = p as u16;
                let hits = parts
                    .iter()
                    .filter(|(v, bits)| {
                        let k = PolicyKey {
                            endpoint: 0,
                            dir: Direction::Ingress,
                            proto: 6,
                            identity: 0,
                            port: *v,
                            port_bits: *bits,
                        };
                        k.covers_port(p)
                    })
                    .count();
                assert_eq!(hits, usize::from(p >= s && p <= e), "port {p} in {s}-{e}");
            }
        }
    }
}
