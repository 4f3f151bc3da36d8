//! Ordered policies into allow-only policy entries.
//!
//! For an endpoint that an ordered policy selects in a direction, every
//! remote identity (and the world outside the ipcache) is decided by
//! [`Layers::decide`] once per interval of the port space that the rules
//! can tell apart, and only the allowed intervals are written, as exact
//! port prefixes. The endpoint is isolated in that direction, so what is
//! not written is denied: precedence is resolved here and the kernel does
//! the same bounded lookups as for NetworkPolicy.
//!
//! Cost: per such endpoint and direction, at most (identities + 1) x
//! (allowed intervals of TCP, UDP and SCTP, each <= 31 prefixes) entries,
//! or one entry for an identity that every protocol and port may reach.
//! A row that is not allowed whole has no any-protocol entry, so protocols
//! without ports (ICMP, ...) are denied there even where a rule would allow
//! them: fail closed, and said in README.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use ipnet::IpNet;
use palisade_common::{IDENTITY_WORLD, PROTO_ANY};

use super::{
    alloc::Allocator,
    compile::port_prefixes,
    identity::{Kind, Signature},
    ordered::{DecidedBy, Layers, PeerClass, PeerView, Selected},
    state::{Direction, PolicyKey, RuleRef},
};
use crate::model::{Labels, Model, Pod, Protocol, policy::PolicyOrigin};

/// DNS, which the metadata block can leave open (`metadataDNS`).
const DNS_PORT: u16 = 53;

/// An identity as a peer.
struct IdentityPeer<'a> {
    sig: &'a Signature,
    /// The metadata block applies: only a net naming the metadata prefix
    /// exactly matches it.
    exact_metadata: bool,
}

impl PeerView for IdentityPeer<'_> {
    fn pod(&self) -> Option<(&str, &Labels)> {
        match &*self.sig.kind {
            Kind::Pod {
                namespace, labels, ..
            } => Some((namespace.as_str(), labels.as_ref())),
            _ => None,
        }
    }

    fn in_net(&self, net: &IpNet) -> bool {
        match &*self.sig.kind {
            Kind::Metadata(m) if self.exact_metadata => m == net,
            _ => self.sig.blocks.contains(net),
        }
    }

    fn blocked(&self) -> bool {
        self.exact_metadata
    }

    fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        match &*self.sig.kind {
            Kind::Pod { named_ports, .. } => named_ports
                .iter()
                .find(|p| p.protocol == protocol && p.name.as_deref() == Some(name))
                .map(|p| p.port),
            _ => None,
        }
    }
}

/// Addresses outside every ipcache prefix: no pod, in no net.
struct World;

impl PeerView for World {
    fn pod(&self) -> Option<(&str, &Labels)> {
        None
    }

    fn in_net(&self, _: &IpNet) -> bool {
        false
    }

    fn named_port(&self, _: &str, _: Protocol) -> Option<u16> {
        None
    }
}

/// What one endpoint's flattening needs.
pub(super) struct Flatten<'a> {
    pub layers: &'a Layers<'a>,
    pub model: &'a Model,
    pub identities: &'a BTreeMap<u32, Arc<Signature>>,
    pub rules: &'a mut Allocator<RuleRef>,
    pub named: &'a mut BTreeMap<u32, RuleRef>,
    pub block_metadata: bool,
    pub metadata_dns: bool,
}

/// One identity's decided row: everything (one entry), or the allowed
/// port intervals.
#[derive(Clone, Debug)]
enum Row {
    Whole(u32),
    Intervals(Vec<(Protocol, u16, u16, u32)>),
}

impl Flatten<'_> {
    /// Writes `pod`'s entries for `dir` into `map`; the policies that
    /// select it there (it is isolated by them).
    pub(super) fn endpoint(
        &mut self,
        map: &mut BTreeMap<PolicyKey, u32>,
        pod: &Pod,
        endpoint: u32,
        dir: Direction,
    ) -> Vec<PolicyOrigin> {
        let selected = self.layers.select(self.model, pod, dir);
        // Identities the rules cannot tell apart get the same row: decided once.
        let mut rows: HashMap<(PeerClass, Option<PeerClass>), Row> = HashMap::new();
        let identities = self.identities;
        let world = std::iter::once((IDENTITY_WORLD, None));
        let all = identities
            .iter()
            .filter(|(_, sig)| !matches!(&*sig.kind, Kind::Service { .. }))
            .map(|(id, sig)| (*id, Some(sig)))
            .chain(world);
        for (id, sig) in all {
            let metadata = sig.is_some_and(|s| matches!(&*s.kind, Kind::Metadata(_)))
                && self.block_metadata
                && dir == Direction::Egress;
            let exact = sig.map(|sig| IdentityPeer {
                sig,
                exact_metadata: metadata,
            });
            let loose = sig.filter(|_| metadata).map(|sig| IdentityPeer {
                sig,
                exact_metadata: false,
            });
            let peer: &dyn PeerView = match &exact {
                Some(p) => p,
                None => &World,
            };
            let dns_peer = loose.as_ref().map(|p| p as &dyn PeerView);
            let key = (
                selected.class(self.model, pod, dir, peer),
                dns_peer.map(|d| selected.class(self.model, pod, dir, d)),
            );
            let row = match rows.get(&key) {
                Some(r) => r.clone(),
                None => {
                    let r = self.row(&selected, pod, dir, peer, dns_peer);
                    rows.insert(key, r.clone());
                    r
                }
            };
            write_row(map, endpoint, dir, id, &row);
        }
        let mut by = self.layers.selecting(self.model, pod, dir);
        by.sort();
        by.dedup();
        by
    }

    /// Decides one peer over the port space. `dns_peer`: how the metadata
    /// identity is seen on DNS, where the block leaves DNS open.
    fn row(
        &mut self,
        selected: &Selected<'_>,
        pod: &Pod,
        dir: Direction,
        peer: &dyn PeerView,
        dns_peer: Option<&dyn PeerView>,
    ) -> Row {
        let mut bp = selected.breakpoints(pod, dir, peer);
        if dns_peer.is_some() {
            for p in [Protocol::Udp, Protocol::Tcp] {
                let set = bp.ports.entry(p).or_default();
                set.insert(u32::from(DNS_PORT));
                set.insert(u32::from(DNS_PORT) + 1);
            }
        }
        let mut whole = true;
        let mut first_rule = None;
        let mut allowed: Vec<(Protocol, u16, u16, u32)> = Vec::new();
        for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
            for (start, end) in bp.intervals(proto) {
                let dns = start == DNS_PORT && end == DNS_PORT && proto != Protocol::Sctp;
                let who = match dns_peer {
                    Some(d) if dns && self.metadata_dns => d,
                    _ => peer,
                };
                let d = selected.decide(self.model, pod, dir, who, proto.number(), Some(start));
                if !d.allow {
                    whole = false;
                    continue;
                }
                let rule = self.rule_id(&d.by, dir);
                first_rule.get_or_insert(rule);
                match allowed.last_mut() {
                    Some((p, _, e, r)) if *p == proto && *r == rule && *e + 1 == start => *e = end,
                    _ => allowed.push((proto, start, end, rule)),
                }
            }
        }
        for proto in bp.portless_protocols() {
            if !selected
                .decide(self.model, pod, dir, peer, proto, None)
                .allow
            {
                whole = false;
            }
        }
        match first_rule {
            Some(rule) if whole => Row::Whole(rule),
            _ => Row::Intervals(allowed),
        }
    }

    /// The rule id an allow is attributed to.
    fn rule_id(&mut self, by: &DecidedBy, dir: Direction) -> u32 {
        let r = match by {
            DecidedBy::Rule { origin, index, .. } => RuleRef {
                origin: origin.clone(),
                dir,
                index: *index,
            },
            // Allowed because no tier decided (or all passed).
            _ => RuleRef {
                origin: PolicyOrigin::Profile(UNDECIDED),
                dir,
                index: 0,
            },
        };
        let id = self.rules.id(&r);
        self.named.insert(id, r);
        id
    }
}

fn write_row(
    map: &mut BTreeMap<PolicyKey, u32>,
    endpoint: u32,
    dir: Direction,
    identity: u32,
    row: &Row,
) {
    let key = |proto: u8, port: u16, port_bits: u8| PolicyKey {
        endpoint,
        dir,
        proto,
        identity,
        port,
        port_bits,
    };
    match row {
        Row::Whole(rule) => {
            map.entry(key(PROTO_ANY, 0, 0)).or_insert(*rule);
        }
        Row::Intervals(allowed) => {
            for (proto, start, end, rule) in allowed {
                for (port, bits) in port_prefixes(*start, *end) {
                    map.entry(key(proto.number(), port, bits)).or_insert(*rule);
                }
            }
        }
    }
}

/// How an allow that no rule decided is named.
pub(super) const UNDECIDED: &str = "no-tier-decided";
