//! Flow events: deny events decoded and attributed to pods and policies
//! (pure), observed allowed flows (`allowed`, `observed`), records
//! aggregated per flow and rate-limited (`log`, pure, clock passed in),
//! and where they go (`sink`).

pub mod allowed;
pub mod client;
pub mod file;
pub mod log;
pub mod observed;
pub mod sink;

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::IpAddr,
    sync::Arc,
};

use palisade_common::{FlowEvent, Reason, endpoint_flags};
use serde::Serialize;

use crate::{
    dataplane::wire,
    model::{Model, ObjectRef, Protocol},
    policy::{DesiredState, Direction, ordered, profile},
};

/// One side of a denied flow.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Side {
    pub ip: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `namespace/name` of the pod holding the address, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// What a record says happened to its flow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordAction {
    /// Dropped.
    #[default]
    Deny,
    /// Passed, but the policies with their audited ones would deny it.
    Audit,
    /// A Calico `Log` rule matched it, whatever the rules after it
    /// decided (a denied flow has its deny record too).
    Log,
}

/// A denied flow (or one an audited policy would deny, or a `Log` rule
/// logs), attributed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Denial {
    pub action: RecordAction,
    #[serde(serialize_with = "crate::model::as_display")]
    pub direction: Direction,
    pub protocol: IpProtocol,
    pub src: Side,
    pub dst: Side,
    pub reason: DenyReason,
    #[serde(skip_serializing_if = "Policies::is_empty")]
    pub policies: Policies,
    /// Where ordered policies judge the endpoint: the tier of the deciding
    /// policy (or whose end denied), `policies` naming that policy alone
    /// (`end-of-tier` for a tier's end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
}

/// Names the ordered policy (or the tier end) that denied `d`, where
/// ordered policies judge its endpoint; records of other endpoints stay
/// as they are. `layers` are the policies in force, built by the caller
/// once per batch of events. Returns the `log` record of the Calico `Log`
/// rules that matched on the way to the denial, if any (a `Log` rule logs
/// whatever the rules after it decide).
pub fn name_deciding_policy(
    d: &mut Denial,
    model: &Model,
    pods: &allowed::Directory,
    layers: &ordered::Layers<'_>,
) -> Option<Denial> {
    if d.reason != DenyReason::Policy {
        return None;
    }
    let (local, remote) = match d.direction {
        Direction::Ingress => (&d.dst, &d.src),
        Direction::Egress => (&d.src, &d.dst),
    };
    let pod = pods.pod(model, local.ip)?;
    if !layers.ordered_selects(model, pod, d.direction) {
        return None;
    }
    let peer = ordered::AddressPeer {
        ip: remote.ip,
        pod: pods.pod(model, remote.ip),
    };
    let decision = layers.decide(model, pod, d.direction, &peer, d.protocol.0, d.dst.port);
    let logged = (!decision.logged.is_empty()).then(|| Denial {
        action: RecordAction::Log,
        reason: DenyReason::LogRule,
        tier: decision.logged.first().map(ordered::tier_of),
        policies: Policies::new(decision.logged.iter().map(ToString::to_string)),
        ..d.clone()
    });
    if decision.allow {
        return logged;
    }
    let (name, tier) = match decision.by {
        ordered::DecidedBy::Rule { origin, .. } => {
            let tier = ordered::tier_of(&origin);
            (origin.to_string(), tier)
        }
        ordered::DecidedBy::EndOfTier { tier } => ("end-of-tier".to_string(), tier),
        ordered::DecidedBy::Default => return logged,
    };
    d.policies = Policies::new([name]);
    d.tier = Some(tier);
    logged
}

/// The policies a denied flow is blamed on: one shared list per endpoint
/// and direction (see [`PolicyCache`]), so that every open flow and record
/// refers to it instead of holding its own copy of every name (under a
/// flood at a pod isolated by 200 long-named policies, copies took the
/// agent past its memory limit).
#[derive(Clone, Debug, Default, Serialize)]
#[serde(transparent)]
pub struct Policies(Arc<[String]>);

impl Policies {
    pub fn new(names: impl IntoIterator<Item = String>) -> Self {
        Self(names.into_iter().collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Deref for Policies {
    type Target = [String];
    fn deref(&self) -> &[String] {
        &self.0
    }
}

impl From<Vec<String>> for Policies {
    fn from(v: Vec<String>) -> Self {
        Self(v.into())
    }
}

impl PartialEq for Policies {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for Policies {}

/// By the names, as equality compares them when the lists are not shared.
impl std::hash::Hash for Policies {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl Ord for Policies {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if Arc::ptr_eq(&self.0, &other.0) {
            return std::cmp::Ordering::Equal;
        }
        self.0.cmp(&other.0)
    }
}

impl PartialOrd for Policies {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The isolating policies of each endpoint and direction, named once per
/// programmed state: [`clear`](Self::clear) it whenever the state changes.
#[derive(Debug, Default)]
pub struct PolicyCache(HashMap<(u32, Direction), Policies>);

impl PolicyCache {
    pub fn clear(&mut self) {
        self.0.clear();
    }

    fn isolated_by(&mut self, state: &DesiredState, endpoint: u32, dir: Direction) -> Policies {
        self.0
            .entry((endpoint, dir))
            .or_insert_with(|| {
                Policies::new(
                    state
                        .endpoint_info
                        .get(&endpoint)
                        .map(|i| i.isolated_by(dir).iter().map(ToString::to_string))
                        .into_iter()
                        .flatten(),
                )
            })
            .clone()
    }
}

/// Why a flow was denied: a record's `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DenyReason {
    /// The profile's cluster-wide default deny, and no policy.
    DefaultDeny,
    /// The cloud metadata address, which no policy opened.
    MetadataBlock,
    /// An established flow that a policy change now denies, cut by the agent.
    Revoked,
    /// Isolated by `policies`, and no rule of theirs allows it.
    Policy,
    /// A `Log` rule of `policies` matched (not a denial).
    LogRule,
}

impl DenyReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::DefaultDeny => profile::DEFAULT_DENY,
            DenyReason::MetadataBlock => profile::METADATA_BLOCK,
            DenyReason::Revoked => "revoked",
            DenyReason::Policy => "policy",
            DenyReason::LogRule => "log-rule",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An IP protocol number, shown (and serialized) by name where it has one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpProtocol(pub u8);

impl fmt::Display for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Protocol::from_number(self.0) {
            Some(p) => write!(f, "{p}"),
            None => match self.0 {
                palisade_common::PROTO_ICMP => f.write_str("ICMP"),
                palisade_common::PROTO_ICMPV6 => f.write_str("ICMPv6"),
                n => write!(f, "proto-{n}"),
            },
        }
    }
}

impl Serialize for IpProtocol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Addresses of pods, for naming the sides of a flow.
pub fn pods_by_ip(model: &Model) -> BTreeMap<IpAddr, ObjectRef> {
    model
        .pods
        .values()
        .filter(|p| !p.host_network)
        .flat_map(|p| p.ips.iter().map(move |ip| (*ip, p.key())))
        .collect()
}

/// Attributes an event using the state that was programmed when it fired
/// (`cache` holding that state's names); `None` for a record with a
/// direction the kernel never writes.
pub fn attribute(
    ev: &FlowEvent,
    state: &DesiredState,
    cache: &mut PolicyCache,
    pods: &BTreeMap<IpAddr, ObjectRef>,
) -> Option<Denial> {
    let dir = Direction::from_wire(ev.dir)?;
    let ports = matches!(
        ev.proto,
        palisade_common::PROTO_TCP | palisade_common::PROTO_UDP | palisade_common::PROTO_SCTP
    );
    let side = |addr: &[u8; 16], port: u16| {
        let ip = wire::ip(addr);
        Side {
            ip,
            port: ports.then_some(port),
            pod: pods.get(&ip).map(ToString::to_string),
        }
    };
    let mut src = side(&ev.saddr, ev.sport());
    let dst = side(&ev.daddr, ev.dport());
    if ev.from_cgroup != 0 {
        src.pod = Some(format!("cgroup:{}", ev.cgroup));
    }
    let (reason, policies) = match Reason::from_u8(ev.reason) {
        Some(Reason::MetadataBlock) => (DenyReason::MetadataBlock, Policies::default()),
        // Cut by the agent: the policies that now isolate the endpoint.
        Some(Reason::Revoked) => (
            DenyReason::Revoked,
            cache.isolated_by(state, ev.endpoint, dir),
        ),
        _ => {
            let isolated_by = cache.isolated_by(state, ev.endpoint, dir);
            let default_bit = match dir {
                Direction::Ingress => endpoint_flags::INGRESS_DEFAULT_DENY,
                Direction::Egress => endpoint_flags::EGRESS_DEFAULT_DENY,
            };
            let only_default = state
                .maps
                .endpoints
                .values()
                .any(|e| e.id == ev.endpoint && e.flags & default_bit != 0);
            if only_default {
                (DenyReason::DefaultDeny, Policies::default())
            } else {
                (DenyReason::Policy, isolated_by)
            }
        }
    };
    Some(Denial {
        action: RecordAction::Deny,
        direction: dir,
        protocol: IpProtocol(ev.proto),
        src,
        dst,
        reason,
        policies,
        tier: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::policy::PolicyOrigin, policy::state::EndpointInfo};

    fn event(sport: u16) -> FlowEvent {
        let mut daddr = [0u8; 16];
        daddr[10..].copy_from_slice(&[0xff, 0xff, 10, 0, 0, 2]);
        FlowEvent {
            ts_ns: 0,
            cgroup: 0,
            saddr: [0; 16],
            daddr,
            sport_be: sport.to_be_bytes(),
            dport_be: 80u16.to_be_bytes(),
            endpoint: 7,
            identity: 1,
            proto: palisade_common::PROTO_TCP,
            dir: palisade_common::DIR_INGRESS,
            reason: Reason::Isolated as u8,
            from_cgroup: 0,
        }
    }

    fn isolated_by(names: &[&str]) -> DesiredState {
        let mut state = DesiredState::default();
        state.endpoint_info.insert(
            7,
            EndpointInfo {
                ingress_isolated_by: names
                    .iter()
                    .map(|n| {
                        PolicyOrigin::NetworkPolicy(ObjectRef {
                            namespace: "x".into(),
                            name: (*n).into(),
                        })
                    })
                    .collect(),
                ..Default::default()
            },
        );
        state
    }

    #[test]
    fn flows_at_one_endpoint_share_one_list_of_policy_names() {
        let state = isolated_by(&["a", "b"]);
        let mut cache = PolicyCache::default();
        let pods = BTreeMap::new();
        let one = attribute(&event(1000), &state, &mut cache, &pods).expect("attributed");
        let two = attribute(&event(1001), &state, &mut cache, &pods).expect("attributed");
        assert_ne!(one, two, "two flows");
        assert_eq!(&*one.policies, ["x/a".to_string(), "x/b".to_string()]);
        assert!(
            std::ptr::eq(one.policies.as_ptr(), two.policies.as_ptr()),
            "one copy of the names, however many flows"
        );
        // A new state is named afresh once the cache is cleared.
        cache.clear();
        let state = isolated_by(&["c"]);
        let three = attribute(&event(1002), &state, &mut cache, &pods).expect("attributed");
        assert_eq!(&*three.policies, ["x/c".to_string()]);
    }
}
