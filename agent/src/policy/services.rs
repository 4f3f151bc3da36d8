//! Service frontends, judged as the backends they reach.
//!
//! kube-proxy rewrites a Service address to a backend after the client's
//! veth has judged the packet, so the client's egress cannot see the
//! backend. Instead each frontend address gets an identity of its own
//! ([`super::identity::Kind::Service`], ipcache flag `SERVICE`) that no
//! rule peer matches, and the compiler adds, per local endpoint, an allow
//! for (frontend identity, Service port) exactly when a direct connection
//! to every backend on its target port would pass that endpoint's egress,
//! judged by [`super::sim`] over the maps compiled without these entries.
//! Mixed verdicts fail closed: the frontend is denied, because kube-proxy
//! may pick any backend.
//!
//! Ingress needs none of this: the server's veth sees the packet after the
//! translation, with the real client.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use ipnet::IpNet;
use palisade_common::{endpoint_flags, ipcache_flags};

use super::{
    profile::Profile,
    sim::{self, Verdict},
    state::{Direction, EndpointEntry, IpcacheEntry, Maps, PolicyKey},
};
use crate::model::{EndpointSlice, Model, ObjectRef, Protocol};

/// The origin of the rule that attributes a frontend allowed only because
/// the endpoint's egress is not isolated (see [`entries`]).
pub const UNISOLATED: &str = "unisolated";

/// One frontend address with everything kube-proxy translates there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    /// The Service that names the identity: the first, in key order, of the
    /// Services listing the address (ports and backends are all of theirs).
    pub service: ObjectRef,
    /// (protocol, Service port) -> (backend address, target port), sorted.
    pub ports: BTreeMap<(Protocol, u16), BTreeSet<(IpAddr, u16)>>,
    /// Some backend is a metadata address (under the metadata block): the
    /// entry carries the METADATA flag, so the block cannot be bypassed.
    pub metadata_backed: bool,
}

/// Every frontend address of the model's Services, with its backends: the
/// endpoint addresses of the Service's slices, of the frontend's family,
/// on the slice port with the Service port's name and protocol.
pub fn frontends(model: &Model, profile: &Profile) -> BTreeMap<IpAddr, Frontend> {
    let mut slices: BTreeMap<(&str, &str), Vec<&EndpointSlice>> = BTreeMap::new();
    for s in model.endpoint_slices.values() {
        if let Some(svc) = &s.service {
            slices
                .entry((s.namespace.as_str(), svc.as_str()))
                .or_default()
                .push(s);
        }
    }
    let metadata = profile.metadata_prefixes();
    let mut out: BTreeMap<IpAddr, Frontend> = BTreeMap::new();
    for svc in model.services.values() {
        let svc_slices = slices
            .get(&(svc.namespace.as_str(), svc.name.as_str()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        for addr in &svc.frontends {
            let frontend = out.entry(*addr).or_insert_with(|| Frontend {
                service: svc.key(),
                ports: BTreeMap::new(),
                metadata_backed: false,
            });
            for port in &svc.ports {
                let backends = frontend
                    .ports
                    .entry((port.protocol, port.port))
                    .or_default();
                for slice in svc_slices {
                    for sp in slice
                        .ports
                        .iter()
                        .filter(|sp| sp.name == port.name && sp.protocol == port.protocol)
                    {
                        for b in slice
                            .addresses
                            .iter()
                            .filter(|b| b.is_ipv4() == addr.is_ipv4())
                        {
                            backends.insert((*b, sp.port));
                        }
                    }
                }
                frontend.metadata_backed |= profile.block_metadata
                    && backends
                        .iter()
                        .any(|(b, _)| metadata.iter().any(|m| m.contains(b)));
            }
        }
    }
    out
}

/// The ipcache flags of a frontend's entry.
pub fn flags(frontend: &Frontend) -> u32 {
    ipcache_flags::SERVICE
        | if frontend.metadata_backed {
            ipcache_flags::METADATA
        } else {
            0
        }
}

/// The egress allows for Service frontends, for every local endpoint in
/// `endpoints`, from `maps` as compiled without them. Endpoints with the
/// same flags and egress entries get the same verdicts, so each such group
/// is judged once.
///
/// An entry's rule id is the deciding rule of the first backend (in address
/// order) that a rule allowed. An unisolated endpoint under the metadata
/// block needs entries for the ports of a metadata-backed frontend whose
/// backends are allowed only because its egress is not isolated: those get
/// `unisolated_rule()` (the [`UNISOLATED`] rule).
pub fn entries(
    maps: &Maps,
    frontends: &BTreeMap<IpAddr, Frontend>,
    endpoints: &[EndpointEntry],
    unisolated_rule: &mut dyn FnMut() -> u32,
) -> BTreeMap<PolicyKey, u32> {
    let mut out = BTreeMap::new();
    if frontends.is_empty() {
        return out;
    }
    let live = live(maps, frontends);
    for ((flags, _), members) in groups(maps, endpoints) {
        // The binding to a veth plays no part in a policy verdict.
        let judge_as = EndpointEntry {
            id: members[0],
            flags,
            ifindex: 0,
        };
        let isolated = flags & endpoint_flags::EGRESS_ISOLATED != 0;
        for f in &live {
            // Unisolated: only the metadata block can deny, and only for
            // metadata-backed frontends.
            if !isolated && !f.metadata_backed {
                continue;
            }
            for LivePort {
                protocol,
                port,
                peers,
            } in &f.ports
            {
                let rule = match all_allowed(maps, judge_as, *protocol, peers) {
                    Allowed::No => continue,
                    Allowed::ByRule(id) => id,
                    Allowed::Unisolated => unisolated_rule(),
                };
                for ep in &members {
                    out.insert(
                        PolicyKey {
                            endpoint: *ep,
                            dir: Direction::Egress,
                            proto: protocol.number(),
                            identity: f.identity,
                            port: *port,
                            port_bits: 16,
                        },
                        rule,
                    );
                }
            }
        }
    }
    out
}

/// Frontends whose address is theirs in the ipcache (a pod, the node or
/// the metadata block may hold it instead).
fn live(maps: &Maps, frontends: &BTreeMap<IpAddr, Frontend>) -> Vec<Live> {
    frontends
        .iter()
        .filter_map(|(addr, f)| {
            let e = maps.ipcache.get(&IpNet::from(*addr))?;
            (e.flags & ipcache_flags::SERVICE != 0).then_some((e.identity, f))
        })
        .map(|(identity, f)| {
            let ports = f
                .ports
                .iter()
                .map(|((protocol, port), backends)| {
                    // In backend address order, so that attribution does not depend on ids.
                    let mut seen = BTreeSet::new();
                    let peers = backends
                        .iter()
                        .map(|(b, target)| (sim::lookup_ipcache(maps, *b), *target))
                        .filter(|peer| seen.insert(*peer))
                        .collect();
                    LivePort {
                        protocol: *protocol,
                        port: *port,
                        peers,
                    }
                })
                .collect();
            Live {
                identity,
                metadata_backed: f.metadata_backed,
                ports,
            }
        })
        .collect()
}

/// An endpoint's flags and egress entries: endpoints of one shape get the
/// same verdicts.
type Shape = (u32, Vec<(u8, u32, u16, u8, u32)>);

/// The endpoints that egress isolation or the metadata block may deny a
/// frontend, grouped by [`Shape`].
fn groups(maps: &Maps, endpoints: &[EndpointEntry]) -> HashMap<Shape, Vec<u32>> {
    let mut groups: HashMap<Shape, Vec<u32>> = HashMap::new();
    for ep in endpoints {
        let isolated = ep.flags & endpoint_flags::EGRESS_ISOLATED != 0;
        let blocks = ep.flags & endpoint_flags::BLOCK_METADATA != 0;
        if !isolated && !blocks {
            continue;
        }
        let lo = PolicyKey {
            endpoint: ep.id,
            dir: Direction::Egress,
            proto: 0,
            identity: 0,
            port: 0,
            port_bits: 0,
        };
        let hi = PolicyKey {
            proto: u8::MAX,
            identity: u32::MAX,
            port: u16::MAX,
            port_bits: u8::MAX,
            ..lo
        };
        let shape = maps
            .policy
            .range(lo..=hi)
            .map(|(k, rule)| (k.proto, k.identity, k.port, k.port_bits, *rule))
            .collect();
        groups.entry((ep.flags, shape)).or_default().push(ep.id);
    }
    groups
}

/// A frontend that holds its address, as [`entries`] judges it.
struct Live {
    identity: u32,
    metadata_backed: bool,
    ports: Vec<LivePort>,
}

struct LivePort {
    protocol: Protocol,
    port: u16,
    /// Distinct (backend's ipcache entry, target port): a verdict depends on
    /// a backend only through these, and one Service's backends mostly
    /// share an identity.
    peers: Vec<(IpcacheEntry, u16)>,
}

enum Allowed {
    No,
    ByRule(u32),
    Unisolated,
}

/// Whether every backend (at least one) is allowed to `ep` directly, and
/// by which rule.
fn all_allowed(
    maps: &Maps,
    ep: EndpointEntry,
    protocol: Protocol,
    peers: &[(IpcacheEntry, u16)],
) -> Allowed {
    if peers.is_empty() {
        return Allowed::No;
    }
    let mut rule = None;
    for (peer, target) in peers {
        match sim::judge_peer(
            maps,
            ep,
            *peer,
            Direction::Egress,
            protocol.number(),
            *target,
        ) {
            Verdict::Rule(id) => {
                rule.get_or_insert(id);
            }
            v if v.allows() => {}
            _ => return Allowed::No,
        }
    }
    rule.map_or(Allowed::Unisolated, Allowed::ByRule)
}
