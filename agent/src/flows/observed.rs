//! Observed (allowed) connections, aggregated per workload pair: what
//! `palisade flows --allowed` prints and `palisade advise` proposes
//! policies from.
//!
//! A record is one (direction, protocol, server port, source, destination)
//! where pods are folded into their owning workload, so that a Deployment's
//! replicas and restarts make one record, with counts and first and last
//! seen. The table is bounded: past `max` records, new keys are counted as
//! dropped instead of remembered, and one namespace (that of the pod the
//! connection was judged at) holds at most a quarter of it, so one
//! tenant's scan of many ports or addresses cannot keep the others' flows
//! out.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    time::SystemTime,
};

use serde::{Deserialize, Serialize};

use crate::policy::Direction;

/// What holds an address, as the agent saw it when the flow opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerKind {
    /// A pod of the cluster (not hostNetwork).
    Pod,
    /// A node's address (or a hostNetwork pod's, which is the node's).
    Node,
    /// Anything else: outside the cluster, or a pod the agent does not know.
    External,
}

/// The controller that owns a pod, as a policy author names it:
/// `Deployment shop/api` has `kind: Deployment`, `name: api`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Workload {
    pub kind: String,
    pub name: String,
}

/// One side of an observed connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub kind: PeerKind,
    /// An address of this side (of the last pod seen, for a workload).
    pub ip: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The last pod seen on this side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
    /// The pod's labels (all of them; `advise` picks the stable ones).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `namespace/name` of the Service the connection was addressed to, when
    /// the source sent it to a Service frontend (the destination is then the
    /// backend the agent resolved it to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl Peer {
    /// What folds connections into one record: the workload (or pod) for
    /// pods, the address for everything else.
    fn key(&self) -> PeerKey {
        match (self.kind, &self.namespace) {
            (PeerKind::Pod, Some(ns)) => PeerKey::Pod {
                namespace: ns.clone(),
                owner: match &self.workload {
                    Some(w) => (w.kind.clone(), w.name.clone()),
                    None => (
                        "Pod".to_string(),
                        self.pod.clone().unwrap_or_else(|| self.ip.to_string()),
                    ),
                },
            },
            _ => PeerKey::Address(self.kind, self.ip),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum PeerKey {
    Pod {
        namespace: String,
        owner: (String, String),
    },
    Address(PeerKind, IpAddr),
}

/// A connection the datapath allowed, attributed, before aggregation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// Where it was judged: `egress` at the source pod, `ingress` at the
    /// destination pod.
    #[serde(with = "direction")]
    pub direction: Direction,
    /// `TCP`, `UDP`, `SCTP`, `ICMP`, `ICMPv6` or `proto-N`.
    pub protocol: String,
    /// The server's port, for protocols with ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The destination pod's name for `port` (a container port name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub named_port: Option<String>,
    pub src: Peer,
    pub dst: Peer,
}

/// An aggregated record: `palisade flows --allowed --json` prints one per line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedFlow {
    #[serde(flatten)]
    pub connection: Connection,
    /// New connections counted (the kernel samples under load, so this is
    /// a lower bound).
    pub count: u64,
    #[serde(with = "rfc3339")]
    pub first_seen: SystemTime,
    #[serde(with = "rfc3339")]
    pub last_seen: SystemTime,
}

type FlowKey = (Direction, String, Option<u16>, PeerKey, PeerKey);

fn flow_key(c: &Connection) -> FlowKey {
    (
        c.direction,
        c.protocol.clone(),
        c.port,
        c.src.key(),
        c.dst.key(),
    )
}

/// The bounded table of observed flows.
#[derive(Debug)]
pub struct Observed {
    max: usize,
    flows: HashMap<FlowKey, ObservedFlow>,
    /// Records per namespace of the judged pod (`-`: none).
    per_namespace: HashMap<String, usize>,
    dropped: u64,
}

/// Whose share of the table a connection takes: the namespace of the pod
/// it was judged at.
fn owner(c: &Connection) -> &str {
    let local = match c.direction {
        Direction::Egress => &c.src,
        Direction::Ingress => &c.dst,
    };
    local.namespace.as_deref().unwrap_or("-")
}

impl Observed {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            flows: HashMap::new(),
            per_namespace: HashMap::new(),
            dropped: 0,
        }
    }

    /// The most records one namespace may hold.
    fn share(&self) -> usize {
        self.max.div_ceil(4)
    }

    /// Counts one new connection seen at `now`.
    pub fn record(&mut self, c: Connection, now: SystemTime) {
        let key = flow_key(&c);
        if let Some(f) = self.flows.get_mut(&key) {
            f.count += 1;
            f.last_seen = now;
            // The latest pod and address of each side.
            f.connection = c;
            return;
        }
        let held = self.per_namespace.get(owner(&c)).copied().unwrap_or(0);
        if self.flows.len() >= self.max || held >= self.share() {
            self.dropped += 1;
            return;
        }
        *self.per_namespace.entry(owner(&c).to_string()).or_default() += 1;
        self.flows.insert(
            key,
            ObservedFlow {
                connection: c,
                count: 1,
                first_seen: now,
                last_seen: now,
            },
        );
    }

    /// New flows not remembered because the table (or their namespace's
    /// share of it) was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Every record, in a stable order (by first seen, then key).
    pub fn snapshot(&self) -> Vec<ObservedFlow> {
        let mut v: Vec<(&FlowKey, &ObservedFlow)> = self.flows.iter().collect();
        v.sort_by(|a, b| a.1.first_seen.cmp(&b.1.first_seen).then(a.0.cmp(b.0)));
        v.into_iter().map(|(_, f)| f.clone()).collect()
    }
}

mod direction {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::policy::Direction;

    pub(super) fn serialize<S: Serializer>(d: &Direction, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(d)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Direction, D::Error> {
        match String::deserialize(d)?.as_str() {
            "ingress" => Ok(Direction::Ingress),
            "egress" => Ok(Direction::Egress),
            other => Err(serde::de::Error::custom(format!(
                "direction {other:?}: expected ingress or egress"
            ))),
        }
    }
}

mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn pod(ns: &str, name: &str, workload: &str, ip: &str) -> Peer {
        Peer {
            kind: PeerKind::Pod,
            ip: ip.parse().expect("ip"),
            namespace: Some(ns.into()),
            pod: Some(name.into()),
            workload: Some(Workload {
                kind: "Deployment".into(),
                name: workload.into(),
            }),
            labels: BTreeMap::from([("app".to_string(), workload.to_string())]),
            service: None,
        }
    }

    fn conn(src: Peer, dst: Peer, port: u16) -> Connection {
        Connection {
            direction: Direction::Egress,
            protocol: "TCP".into(),
            port: Some(port),
            named_port: None,
            src,
            dst,
        }
    }

    #[test]
    fn replicas_of_a_workload_fold_into_one_record() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut o = Observed::new(10);
        let api = pod("shop", "api-1", "api", "10.0.0.9");
        o.record(
            conn(pod("shop", "web-a", "web", "10.0.0.1"), api.clone(), 80),
            t0,
        );
        o.record(
            conn(pod("shop", "web-b", "web", "10.0.0.2"), api.clone(), 80),
            t0 + Duration::from_secs(5),
        );
        o.record(conn(pod("shop", "web-b", "web", "10.0.0.2"), api, 81), t0);
        let all = o.snapshot();
        assert_eq!(all.len(), 2);
        let on_80 = all
            .iter()
            .find(|f| f.connection.port == Some(80))
            .expect("80");
        assert_eq!(on_80.count, 2);
        assert_eq!(on_80.first_seen, t0);
        assert_eq!(on_80.last_seen, t0 + Duration::from_secs(5));
        assert_eq!(on_80.connection.src.pod.as_deref(), Some("web-b"));
    }

    #[test]
    fn a_full_table_counts_new_flows_instead_of_growing() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut o = Observed::new(2);
        let dst = pod("z", "x", "x", "10.0.0.9");
        o.record(conn(pod("a", "p", "p", "10.0.0.1"), dst.clone(), 1), t0);
        o.record(conn(pod("b", "p", "p", "10.0.0.2"), dst.clone(), 1), t0);
        o.record(conn(pod("c", "p", "p", "10.0.0.3"), dst.clone(), 1), t0);
        o.record(conn(pod("a", "p", "p", "10.0.0.1"), dst, 1), t0);
        assert_eq!(o.len(), 2);
        assert_eq!(o.dropped(), 1);
        assert_eq!(o.snapshot()[0].count, 2);
    }

    #[test]
    fn one_namespace_holds_at_most_a_quarter_of_the_table() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut o = Observed::new(8);
        let dst = pod("b", "x", "x", "10.0.0.9");
        for port in 0..10 {
            o.record(
                conn(pod("scan", "p", "p", "10.0.0.1"), dst.clone(), port),
                t0,
            );
        }
        assert_eq!(o.len(), 2, "a quarter of 8");
        o.record(conn(pod("calm", "q", "q", "10.0.0.2"), dst, 80), t0);
        assert_eq!(o.len(), 3, "another namespace still gets in");
        assert_eq!(o.dropped(), 8);
    }

    #[test]
    fn records_round_trip_through_json() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let mut o = Observed::new(4);
        let mut ext = pod("a", "x", "x", "192.0.2.7");
        ext.kind = PeerKind::External;
        ext.namespace = None;
        ext.pod = None;
        ext.workload = None;
        ext.labels.clear();
        o.record(conn(pod("a", "p", "p", "10.0.0.1"), ext, 443), t0);
        let f = &o.snapshot()[0];
        let line = serde_json::to_string(f).expect("serializes");
        assert!(line.contains(r#""direction":"egress""#), "{line}");
        assert!(line.contains(r#""kind":"external""#), "{line}");
        let back: ObservedFlow = serde_json::from_str(&line).expect("parses");
        assert_eq!(&back, f);
    }
}
