//! Allowed new flows the kernel sent up (`Reason::Observed`): attributed to
//! workloads for the observed table, and judged again in user space for
//! what the kernel does not decide itself: audited policies (a would-deny
//! record when the policies with their audited ones deny the flow) and
//! Calico `Log` rules (a log record when one matched on the way).
//!
//! Both judgements use [`ordered::Layers::decide`], the evaluator the
//! compiler flattens into the maps, so a record says what enforcement
//! would do.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use palisade_common::FlowEvent;

use super::{
    Denial, DenyReason, IpProtocol, Policies, RecordAction, Side,
    observed::{Connection, Peer, PeerKind, Workload},
};
use crate::{
    dataplane::wire,
    model::{Model, ObjectRef, Pod, Protocol, policy::PolicyOrigin},
    policy::{
        Direction, Profile,
        ordered::{self, AddressPeer, DecidedBy, Layers},
        profile,
        services::{self, Frontend},
    },
};

/// Who holds an address, rebuilt whenever pods, Services or the node's
/// addresses change (not for policy edits).
#[derive(Debug, Default)]
pub struct Directory {
    pods: BTreeMap<IpAddr, ObjectRef>,
    /// Node addresses: this node's and hostNetwork pods'.
    hosts: BTreeSet<IpAddr>,
    frontends: BTreeMap<IpAddr, Frontend>,
}

impl Directory {
    pub fn new(model: &Model, profile: &Profile, node_addresses: &[IpAddr]) -> Self {
        let hosts: BTreeSet<IpAddr> = model
            .pods
            .values()
            .filter(|p| p.host_network)
            .flat_map(|p| p.ips.iter().copied())
            .chain(node_addresses.iter().copied())
            .collect();
        let pods = super::pods_by_ip(model);
        // An address a pod or node holds is judged as that, never as a
        // Service frontend: a tenant's Service cannot claim (externalIPs)
        // another's address and so redirect its records.
        let mut frontends = services::frontends(model, profile);
        frontends.retain(|ip, _| !pods.contains_key(ip) && !hosts.contains(ip));
        Self {
            pods,
            hosts,
            frontends,
        }
    }

    /// Pod addresses, for naming the sides of deny records.
    pub fn pods(&self) -> &BTreeMap<IpAddr, ObjectRef> {
        &self.pods
    }

    /// The pod (not hostNetwork) holding `ip`, found by address.
    pub fn pod<'m>(&self, model: &'m Model, ip: IpAddr) -> Option<&'m Pod> {
        self.pods.get(&ip).and_then(|r| model.pods.get(r))
    }

    fn peer(&self, model: &Model, ip: IpAddr) -> Peer {
        match self.pod(model, ip) {
            Some(p) => Peer {
                kind: PeerKind::Pod,
                ip,
                namespace: Some(p.namespace.clone()),
                pod: Some(p.name.clone()),
                workload: p.workload.as_ref().map(|w| Workload {
                    kind: w.kind.clone(),
                    name: w.name.clone(),
                }),
                labels: p.labels.clone(),
                service: None,
            },
            None => Peer {
                kind: if self.hosts.contains(&ip) {
                    PeerKind::Node
                } else {
                    PeerKind::External
                },
                ip,
                namespace: None,
                pod: None,
                workload: None,
                labels: BTreeMap::new(),
                service: None,
            },
        }
    }

    /// The (address, port) pairs a connection from a pod's egress reaches:
    /// the backends of a Service frontend (kube-proxy translates after the
    /// veth judged it), else the destination itself.
    fn reached(&self, dst: IpAddr, proto: u8, port: Option<u16>) -> Reached<'_> {
        let backends = Protocol::from_number(proto)
            .zip(port)
            .and_then(|(p, port)| {
                let f = self.frontends.get(&dst)?;
                Some((f, f.ports.get(&(p, port))?))
            });
        match backends {
            Some((f, set)) => Reached {
                service: Some(&f.service),
                targets: set.iter().map(|(ip, port)| (*ip, Some(*port))).collect(),
            },
            None => Reached {
                service: None,
                targets: vec![(dst, port)],
            },
        }
    }
}

struct Reached<'a> {
    service: Option<&'a ObjectRef>,
    targets: Vec<(IpAddr, Option<u16>)>,
}

/// An observed event's parts, decoded once.
struct Seen {
    dir: Direction,
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    sport: Option<u16>,
    dport: Option<u16>,
}

fn seen(ev: &FlowEvent) -> Option<Seen> {
    let ports = matches!(
        ev.proto,
        palisade_common::PROTO_TCP | palisade_common::PROTO_UDP | palisade_common::PROTO_SCTP
    );
    Some(Seen {
        dir: Direction::from_wire(ev.dir)?,
        proto: ev.proto,
        src: wire::ip(&ev.saddr),
        dst: wire::ip(&ev.daddr),
        sport: ports.then(|| ev.sport()),
        dport: ports.then(|| ev.dport()),
    })
}

/// The connections an observed event stands for: one, or one per backend
/// workload where the source addressed a Service.
pub fn connections(ev: &FlowEvent, model: &Model, dir_: &Directory) -> Vec<Connection> {
    let Some(s) = seen(ev) else {
        return Vec::new();
    };
    let protocol = IpProtocol(s.proto).to_string();
    let src = dir_.peer(model, s.src);
    let reached = match s.dir {
        Direction::Egress => dir_.reached(s.dst, s.proto, s.dport),
        // The server's veth sees the translated packet.
        Direction::Ingress => Reached {
            service: None,
            targets: vec![(s.dst, s.dport)],
        },
    };
    let mut out: Vec<Connection> = Vec::new();
    for (ip, port) in reached.targets {
        let mut dst = dir_.peer(model, ip);
        dst.service = reached.service.map(ToString::to_string);
        let named_port = dir_
            .pod(model, ip)
            .zip(Protocol::from_number(s.proto))
            .zip(port)
            .and_then(|((p, proto), port)| {
                p.ports
                    .iter()
                    .find(|c| c.protocol == proto && c.port == port)
                    .and_then(|c| c.name.clone())
            });
        let c = Connection {
            direction: s.dir,
            protocol: protocol.clone(),
            port,
            named_port,
            src: src.clone(),
            dst,
        };
        // Replicas of one backend workload are one connection.
        let same = |o: &Connection| {
            o.port == c.port
                && o.dst.namespace == c.dst.namespace
                && o.dst.workload == c.dst.workload
                && (c.dst.workload.is_some() || o.dst.ip == c.dst.ip)
        };
        if !out.iter().any(same) {
            out.push(c);
        }
    }
    out
}

/// What user space judges again, built once per batch of events. Only
/// pods a `Log` policy (or an audited one) selects are judged, so the
/// work per event is bounded by those policies, not by every policy.
pub struct Judges<'a> {
    /// The policies in force, and those with `Log` rules, when some have.
    pub logging: Option<(&'a Layers<'a>, &'a Layers<'a>)>,
    /// The policies with the audited ones, and the audited ones alone,
    /// when there are audited ones.
    pub would_be: Option<(&'a Layers<'a>, &'a Layers<'a>)>,
}

/// The would-deny and log records an allowed flow earns (none, mostly).
pub fn rejudge(ev: &FlowEvent, model: &Model, dir_: &Directory, j: &Judges<'_>) -> Vec<Denial> {
    let Some(s) = seen(ev) else {
        return Vec::new();
    };
    if j.logging.is_none() && j.would_be.is_none() {
        return Vec::new();
    }
    let (local, remote) = match s.dir {
        Direction::Ingress => (s.dst, s.src),
        Direction::Egress => (s.src, s.dst),
    };
    let Some(pod) = dir_.pod(model, local) else {
        return Vec::new();
    };
    // Node-to-pod traffic is allowed before any policy is read.
    if s.dir == Direction::Ingress && dir_.hosts.contains(&remote) {
        return Vec::new();
    }
    let targets = match s.dir {
        Direction::Egress => dir_.reached(remote, s.proto, s.dport).targets,
        Direction::Ingress => vec![(remote, s.dport)],
    };
    let record = |action, reason, policies: Vec<String>, tier| Denial {
        action,
        direction: s.dir,
        protocol: IpProtocol(s.proto),
        src: Side {
            ip: s.src,
            port: s.sport,
            pod: dir_.pods.get(&s.src).map(ToString::to_string),
        },
        dst: Side {
            ip: s.dst,
            port: s.dport,
            pod: dir_.pods.get(&s.dst).map(ToString::to_string),
        },
        reason,
        policies: Policies::new(policies),
        tier,
    };
    // Selection is judged once per side; each target is then decided.
    let decide_all = |layers: &Layers<'_>| {
        let selected = layers.select(model, pod, s.dir);
        targets
            .iter()
            .map(|(ip, port)| {
                let peer = AddressPeer {
                    ip: *ip,
                    pod: dir_.pod(model, *ip),
                };
                selected.decide(model, pod, s.dir, &peer, s.proto, *port)
            })
            .collect::<Vec<_>>()
    };
    let mut out = Vec::new();
    if let Some((layers, subjects)) = j.logging
        && subjects.any_selects(model, pod, s.dir)
        && let Some(logged) = decide_all(layers)
            .into_iter()
            .map(|d| d.logged)
            .find(|l| !l.is_empty())
    {
        let tier = logged.first().map(ordered::tier_of);
        let names = logged.iter().map(ToString::to_string).collect();
        out.push(record(RecordAction::Log, DenyReason::LogRule, names, tier));
    }
    if let Some((layers, subjects)) = j.would_be
        && subjects.any_selects(model, pod, s.dir)
        && let Some(denied) = decide_all(layers).into_iter().find(|d| !d.allow)
    {
        let (policies, tier) = match denied.by {
            DecidedBy::Rule { origin, .. } => {
                let tier = ordered::tier_of(&origin);
                (vec![origin], tier)
            }
            // Isolated by the policies of a tier (NetworkPolicies: the
            // default tier), of which the audited ones are to blame.
            DecidedBy::EndOfTier { tier } => (
                subjects
                    .selecting(model, pod, s.dir)
                    .into_iter()
                    .filter(|o| ordered::tier_of(o) == tier)
                    .collect(),
                tier,
            ),
            DecidedBy::Default => (Vec::new(), String::new()),
        };
        let default_deny = PolicyOrigin::Profile(profile::DEFAULT_DENY);
        let reason = if !policies.is_empty() && policies.iter().all(|o| *o == default_deny) {
            DenyReason::DefaultDeny
        } else {
            DenyReason::Policy
        };
        let names = policies.iter().map(ToString::to_string).collect();
        out.push(record(
            RecordAction::Audit,
            reason,
            names,
            (!tier.is_empty()).then_some(tier),
        ));
    }
    out
}

#[cfg(test)]
mod tests;
