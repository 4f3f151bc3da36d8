//! The promise of `palisade advise` over random worlds: applying the
//! advice allows every observed connection and denies the unobserved ones
//! next to it (another port, protocol, pod or outside address).

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::{
    check::{advise_and_judge, assert_observed_allowed, ip},
    tests::{address, pod, seen},
    *,
};
use crate::flows::observed::Workload;

/// Workloads (labels from a small pool, so that two may carry the same
/// or one another's plus more; unstable labels per replica; IPv4 or
/// IPv6; named ports whose names mean different numbers on different
/// workloads), outside addresses and a node, and connections among them.
#[derive(Clone, Debug)]
struct World {
    workloads: Vec<Wl>,
    conns: Vec<Conn>,
}

#[derive(Clone, Debug)]
struct Wl {
    namespace: &'static str,
    kind: &'static str,
    app: &'static str,
    tier: Option<&'static str>,
    replicas: usize,
    v6: bool,
    /// Which of [`PORTS`] the template names.
    named: Vec<bool>,
}

#[derive(Clone, Copy, Debug)]
struct Conn {
    src: usize,
    dst: usize,
    protocol: Protocol,
    port: u16,
    src_replica: usize,
    dst_replica: usize,
    /// The client's record lacks the port's name (so it goes by number).
    unnamed: bool,
}

const PORTS: [u16; 4] = [80, 443, 5432, 8080];
const OUTSIDE: [&str; 3] = ["192.0.2.1", "2001:db8::1", "172.18.0.2"];

fn world() -> impl Strategy<Value = World> {
    let wl = (
        prop::sample::select(vec!["shop", "data"]),
        prop::sample::select(vec!["Deployment", "StatefulSet", "Pod"]),
        prop::sample::select(vec!["a", "b", "c"]),
        prop::option::of(prop::sample::select(vec!["web", "db"])),
        1..3usize,
        any::<bool>(),
        prop::collection::vec(any::<bool>(), PORTS.len()),
    )
        .prop_map(|(namespace, kind, app, tier, replicas, v6, named)| Wl {
            namespace,
            kind,
            app,
            tier,
            replicas: if kind == "Pod" { 1 } else { replicas },
            v6,
            named,
        });
    prop::collection::vec(wl, 1..6).prop_flat_map(|workloads| {
        let ends = workloads.len() + OUTSIDE.len();
        let conn = (
            0..ends,
            0..ends,
            prop::sample::select(vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp]),
            prop::sample::select(PORTS.to_vec()),
            0..3usize,
            0..3usize,
            prop::bool::weighted(0.2),
        )
            .prop_map(
                |(src, dst, protocol, port, src_replica, dst_replica, unnamed)| Conn {
                    src,
                    dst,
                    protocol,
                    port,
                    src_replica,
                    dst_replica,
                    unnamed,
                },
            );
        (Just(workloads), prop::collection::vec(conn, 1..12))
            .prop_map(|(workloads, conns)| World { workloads, conns })
    })
}

/// What a policy can tell apart: a workload by its namespace and stable
/// labels, anything else by itself.
type Class = (usize, &'static str, &'static str, Option<&'static str>);

impl World {
    fn end(&self, i: usize, r: usize) -> Peer {
        let Some(w) = self.workloads.get(i) else {
            let addr = OUTSIDE[i - self.workloads.len()];
            let kind = if addr.starts_with("172.") {
                PeerKind::Node
            } else {
                PeerKind::External
            };
            return address(kind, addr);
        };
        let r = r % w.replicas;
        let mut labels = Labels::from([
            ("app".to_string(), w.app.to_string()),
            ("pod-template-hash".to_string(), format!("h{r}")),
        ]);
        if let Some(tier) = w.tier {
            labels.insert("tier".into(), tier.into());
        }
        let addr = if w.v6 {
            format!("fd00:244:{i}::{}", r + 1)
        } else {
            format!("10.244.{i}.{}", r + 1)
        };
        Peer {
            kind: PeerKind::Pod,
            ip: ip(&addr),
            namespace: Some(w.namespace.into()),
            pod: Some(format!("w{i}-{r}")),
            workload: (w.kind != "Pod").then(|| Workload {
                kind: w.kind.into(),
                name: format!("w{i}"),
            }),
            labels,
            service: None,
        }
    }

    fn is_pod(&self, i: usize) -> bool {
        i < self.workloads.len()
    }

    fn class(&self, i: usize) -> Class {
        match self.workloads.get(i) {
            Some(w) => (usize::MAX, w.namespace, w.app, w.tier),
            None => (i, "", "", None),
        }
    }

    fn class_size(&self, i: usize) -> usize {
        (0..self.workloads.len())
            .filter(|j| self.class(*j) == self.class(i))
            .count()
    }

    /// A name unique within a workload that means another number on the next.
    fn name_of(&self, d: usize, port: u16) -> Option<String> {
        let w = self.workloads.get(d)?;
        let k = PORTS.iter().position(|p| *p == port)?;
        w.named[k].then(|| format!("n{}", (k + d) % PORTS.len()))
    }

    fn flows(&self) -> Vec<ObservedFlow> {
        let mut out = Vec::new();
        for c in &self.conns {
            // Outside to outside never reaches a pod's veth.
            if !self.is_pod(c.src) && !self.is_pod(c.dst) {
                continue;
            }
            let named = self.name_of(c.dst, c.port);
            let mut records = seen(
                &c.protocol.to_string(),
                c.port,
                named.as_deref(),
                &self.end(c.src, c.src_replica),
                &self.end(c.dst, c.dst_replica),
            );
            if c.unnamed {
                records[0].connection.named_port = None;
            }
            out.extend(records);
        }
        out
    }

    /// Whether a connection between these classes was seen on (protocol, port).
    fn seen(&self, s: usize, d: usize, protocol: Protocol, port: u16) -> bool {
        self.conns.iter().any(|c| {
            self.class(c.src) == self.class(s)
                && self.class(c.dst) == self.class(d)
                && c.protocol == protocol
                && c.port == port
                && (self.is_pod(c.src) || self.is_pod(c.dst))
        })
    }
}

fn stranger(ns: &str) -> Peer {
    let addr = if ns == "shop" {
        "10.244.99.1"
    } else {
        "10.244.99.2"
    };
    pod(ns, "stranger", "stranger-1", addr, &[("app", "stranger")])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    #[test]
    fn advice_allows_exactly_what_was_seen(w in world()) {
        let flows = w.flows();
        prop_assume!(!flows.is_empty());
        let (_, yaml, judge) =
            advise_and_judge(&flows, &Options::default(), &[stranger("shop"), stranger("data")]);
        assert_observed_allowed(&judge, &flows, &yaml);
        let outsider = address(PeerKind::External, "198.51.100.1");
        let mut probes: BTreeMap<String, (Peer, Peer, Protocol, u16)> = BTreeMap::new();
        for c in &w.conns {
            if !w.is_pod(c.src) && !w.is_pod(c.dst) {
                continue;
            }
            let (src, dst) = (w.end(c.src, c.src_replica), w.end(c.dst, c.dst_replica));
            // Where two workloads share labels, a port name resolves on
            // either: only the numbers of a lone workload are exact.
            if w.class_size(c.dst) <= 1 {
                for other in PORTS.iter().copied().chain([c.port + 1]) {
                    for p in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                        if !w.seen(c.src, c.dst, p, other) {
                            probes.insert(
                                format!("{p} {}->{}:{other}", c.src, c.dst),
                                (src.clone(), dst.clone(), p, other),
                            );
                        }
                    }
                }
            }
            let (p, n) = (c.protocol, c.port);
            if let Some(ns) = &dst.namespace {
                probes.insert(format!("stranger->{}", c.dst), (stranger(ns), dst.clone(), p, n));
                if !w.is_pod(c.src) {
                    probes.insert(format!("outsider->{}", c.dst), (outsider.clone(), dst.clone(), p, n));
                }
            }
            if let Some(ns) = &src.namespace {
                probes.insert(format!("{}->stranger", c.src), (src.clone(), stranger(ns), p, n));
                if !w.is_pod(c.dst) {
                    probes.insert(format!("{}->outsider", c.src), (src.clone(), outsider.clone(), p, n));
                }
            }
        }
        for (what, (src, dst, p, n)) in &probes {
            prop_assert!(!judge.allowed(src, dst, *p, *n), "unseen {what} allowed by\n{yaml}");
        }
    }
}
