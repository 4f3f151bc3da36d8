//! Observed allowed flows in the kernel: an endpoint that observes sends
//! each allowed new flow up once (not its later packets, not denials as
//! observations), within its own budget, and one that does not sends
//! nothing, unless an audited policy selects it. Privileged.

use std::net::IpAddr;

use aya::maps::{MapData, RingBuf};
use palisade_agent::{
    dataplane::{Budgets, Datapath, MapSizes, UnknownEndpoint, paths::Hook},
    policy::Profile,
};
use palisade_common::{Counter, FlowEvent, Reason};
use palisade_tests::{
    fixtures,
    packets::{self, ACK, SYN, TCP},
};

const TC_ACT_UNSPEC: u32 = u32::MAX;
const TC_ACT_SHOT: u32 = 2;

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

const PODS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {podIP: 10.0.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {podIP: 10.0.1.11}
"#;

/// a admits TCP 80 only.
const A_ON_80: &str = r#"
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-80, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress]
  ingress: [{ports: [{port: 80}]}]
"#;

fn drain(ring: &mut RingBuf<MapData>) -> Vec<FlowEvent> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        out.push(FlowEvent::decode(&item).expect("a whole event"));
    }
    out
}

fn observed(events: &[FlowEvent]) -> Vec<&FlowEvent> {
    events
        .iter()
        .filter(|e| e.reason == Reason::Observed as u8)
        .collect()
}

fn run(dp: &mut Datapath, pkt: &[u8]) -> u32 {
    fixtures::test_run(dp, Hook::ToPod, pkt).expect("run")
}

#[test]
fn an_observing_endpoint_sends_each_allowed_new_flow_once() {
    let (pins, mut dp, _syncer, failed) = fixtures::load_with(
        &format!("{PODS}{A_ON_80}"),
        &Profile::default(),
        UnknownEndpoint::Allow,
        MapSizes::default(),
        true,
    );
    assert_eq!(failed, 0);
    let mut ring = dp.take_events().expect("ring");
    let (a, b) = (ip("10.0.1.10"), ip("10.0.1.11"));
    let syn = packets::packet(b, a, TCP, 40000, 80, SYN);
    assert_eq!(run(&mut dp, &syn), TC_ACT_UNSPEC);
    // The same flow's next packet is conntrack's: no second observation.
    let ack = packets::packet(b, a, TCP, 40000, 80, ACK);
    assert_eq!(run(&mut dp, &ack), TC_ACT_UNSPEC);
    // A denied flow is a deny event, not an observation.
    let denied = packets::packet(b, a, TCP, 40001, 81, SYN);
    assert_eq!(run(&mut dp, &denied), TC_ACT_SHOT);

    let events = drain(&mut ring);
    let seen = observed(&events);
    assert_eq!(seen.len(), 1, "{events:?}");
    let e = seen[0];
    assert_eq!((e.sport(), e.dport(), e.proto), (40000, 80, TCP));
    assert_eq!(e.dir, palisade_common::DIR_INGRESS);
    assert_eq!(
        events
            .iter()
            .filter(|e| e.reason == Reason::Isolated as u8)
            .count(),
        1
    );
    assert_eq!(fixtures::pinned_counter(&pins.0, Counter::Observed), 1);
}

#[test]
fn observations_have_a_budget_of_their_own() {
    let sizes = MapSizes {
        budgets: Budgets {
            observed_flows_per_sec: 1,
            observed_flow_burst: 4,
            ..Default::default()
        },
        ..MapSizes::default()
    };
    let (pins, mut dp, _syncer, failed) = fixtures::load_with(
        &format!("{PODS}{A_ON_80}"),
        &Profile::default(),
        UnknownEndpoint::Allow,
        sizes,
        true,
    );
    assert_eq!(failed, 0);
    let mut ring = dp.take_events().expect("ring");
    let (a, b) = (ip("10.0.1.10"), ip("10.0.1.11"));
    for sport in 0..50u16 {
        let syn = packets::packet(b, a, TCP, 41000 + sport, 80, SYN);
        assert_eq!(
            run(&mut dp, &syn),
            TC_ACT_UNSPEC,
            "allowed, observed or not"
        );
    }
    // Denials still get their events: the budgets are apart.
    let denied = packets::packet(b, a, TCP, 42000, 81, SYN);
    assert_eq!(run(&mut dp, &denied), TC_ACT_SHOT);
    let events = drain(&mut ring);
    let n = observed(&events).len();
    assert!((4..=6).contains(&n), "{n} observations within a burst of 4");
    assert!(events.iter().any(|e| e.reason == Reason::Isolated as u8));
    assert_eq!(
        fixtures::pinned_counter(&pins.0, Counter::ObserveBudget),
        50 - n as u64
    );
}

#[test]
fn without_observation_only_audited_pods_send_their_flows() {
    let audited = r#"
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: b-audit
  namespace: x
  annotations: {palisade.dev/mode: audit}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Ingress]
  ingress: []
"#;
    let (_pins, mut dp, _syncer, failed) = fixtures::load_with(
        &format!("{PODS}{A_ON_80}{audited}"),
        &Profile::default(),
        UnknownEndpoint::Allow,
        MapSizes::default(),
        false,
    );
    assert_eq!(failed, 0);
    let mut ring = dp.take_events().expect("ring");
    let (a, b) = (ip("10.0.1.10"), ip("10.0.1.11"));
    assert_eq!(
        run(&mut dp, &packets::packet(b, a, TCP, 43000, 80, SYN)),
        TC_ACT_UNSPEC
    );
    // The audited policy denies all of b's ingress, yet b is not isolated.
    assert_eq!(
        run(&mut dp, &packets::packet(a, b, TCP, 43001, 22, SYN)),
        TC_ACT_UNSPEC,
        "an audited policy is not enforced"
    );
    let events = drain(&mut ring);
    let seen = observed(&events);
    assert_eq!(seen.len(), 1, "only b's: {events:?}");
    assert_eq!(seen[0].dport(), 22);
}
