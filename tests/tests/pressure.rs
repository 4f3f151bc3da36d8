//! Full maps. Policy map: writes that do not fit fail, are counted, and the
//! rules they would have added do not allow anything (fail closed); the
//! agent's mirror still says exactly what the kernel holds, and it recovers
//! as soon as the model fits again. Conntrack (an LRU): the least recently
//! used flows are forgotten; a forgotten TCP flow is re-adopted from policy,
//! a forgotten UDP flow's replies are judged by policy. Privileged.

use std::net::IpAddr;

use palisade_agent::{
    dataplane::{MapSizes, UnknownEndpoint, paths::Hook},
    policy::Profile,
};
use palisade_tests::{
    fixtures,
    packets::{self, ACK, SYN, TCP, UDP},
};

/// TC_ACT_UNSPEC: allowed, the next TCX program (if any) decides.
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

/// a admits TCP 80 from `n` single addresses 10.9.0.1..n.
fn model(n: usize) -> String {
    let mut s = format!(
        "{PODS}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: a-in, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Ingress]\n  ingress:\n"
    );
    for i in 1..=n {
        s.push_str(&format!(
            "  - from: [{{ipBlock: {{cidr: 10.9.0.{i}/32}}}}]\n    ports: [{{port: 80}}]\n"
        ));
    }
    s
}

#[test]
fn a_full_policy_map_fails_closed_and_recovers() {
    let sizes = MapSizes {
        policy: Some(8),
        ..MapSizes::default()
    };
    let (_pins, mut dp, mut syncer, failed) = fixtures::load_sized(
        &model(20),
        &Profile::default(),
        UnknownEndpoint::Allow,
        sizes,
    );
    assert!(
        failed >= 12,
        "20 rules do not fit in 8 entries ({failed} failed writes)"
    );
    let desired = syncer.state().maps.clone();
    assert!(syncer.mirror().policy.len() <= 8);
    assert_ne!(syncer.mirror(), &desired);
    // Rules that made it allow; rules that did not are not there to allow.
    let a = ip("10.0.1.10");
    let mut allowed = 0;
    for i in 1..=20u16 {
        let v = fixtures::test_run(
            &mut dp,
            Hook::ToPod,
            &packets::packet(ip(&format!("10.9.0.{i}")), a, TCP, 40000 + i, 80, SYN),
        )
        .expect("run");
        allowed += u32::from(v == TC_ACT_UNSPEC);
    }
    assert!(
        allowed > 0 && allowed <= 8,
        "only written rules allow ({allowed})"
    );
    // Anyone else stays denied: a is isolated whatever the map holds.
    assert_eq!(
        fixtures::test_run(
            &mut dp,
            Hook::ToPod,
            &packets::packet(ip("10.9.1.1"), a, TCP, 41000, 80, SYN)
        )
        .expect("run"),
        TC_ACT_SHOT
    );

    // The model fits again: one sync converges (removals make room first).
    let fits = fixtures::parse_model(&model(4));
    let r = syncer.sync(&fits, &fixtures::node(&fits), &Profile::default());
    assert_eq!(r.failed, 0);
    assert_eq!(syncer.mirror(), &syncer.state().maps, "converged");
    for i in 1..=4u16 {
        let v = fixtures::test_run(
            &mut dp,
            Hook::ToPod,
            &packets::packet(ip(&format!("10.9.0.{i}")), a, TCP, 42000 + i, 80, SYN),
        )
        .expect("run");
        assert_eq!(v, TC_ACT_UNSPEC, "rule {i} programmed after recovery");
    }
}

#[test]
fn an_overflowing_conntrack_forgets_the_oldest_flows() {
    // b may only send to a (TCP 80) and to 10.9.0.53 on UDP 53; its ingress is closed.
    let yaml = format!(
        "{PODS}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: b, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: b}}}}\n  policyTypes: [Ingress, Egress]\n  egress:\n  - to: [{{podSelector: {{matchLabels: {{pod: a}}}}}}]\n    ports: [{{port: 80}}]\n  - to: [{{ipBlock: {{cidr: 10.9.0.53/32}}}}]\n    ports: [{{protocol: UDP, port: 53}}]\n"
    );
    let sizes = MapSizes {
        conntrack: Some(64),
        ..MapSizes::default()
    };
    let (_pins, mut dp, _syncer, failed) =
        fixtures::load_sized(&yaml, &Profile::default(), UnknownEndpoint::Allow, sizes);
    assert_eq!(failed, 0);
    let (a, b, dns) = (ip("10.0.1.10"), ip("10.0.1.11"), ip("10.9.0.53"));
    // The first flows: a TCP connection b -> a:80 and a DNS query.
    assert_eq!(
        fixtures::test_run(
            &mut dp,
            Hook::FromPod,
            &packets::packet(b, a, TCP, 50000, 80, SYN)
        )
        .expect("run"),
        TC_ACT_UNSPEC
    );
    assert_eq!(
        fixtures::test_run(
            &mut dp,
            Hook::FromPod,
            &packets::packet(b, dns, UDP, 50001, 53, 0)
        )
        .expect("run"),
        TC_ACT_UNSPEC
    );
    // Their replies pass while tracked.
    assert_eq!(
        fixtures::test_run(
            &mut dp,
            Hook::ToPod,
            &packets::packet(dns, b, UDP, 53, 50001, 0)
        )
        .expect("run"),
        TC_ACT_UNSPEC
    );
    // Many newer flows, each answered (used, as the old ones were), push
    // them out of the 64-entry LRU.
    for i in 0..2000u16 {
        let port = 51000 + i;
        fixtures::test_run(
            &mut dp,
            Hook::FromPod,
            &packets::packet(b, a, TCP, port, 80, SYN),
        )
        .expect("run");
        fixtures::test_run(
            &mut dp,
            Hook::ToPod,
            &packets::packet(a, b, TCP, 80, port, SYN | ACK),
        )
        .expect("run");
    }
    // The forgotten TCP flow's next reply segment is judged the way it
    // travels: b's ingress is closed, so it is dropped (a reply is never
    // adopted on the strength of the reverse direction: that is how a forged
    // ACK would open a closed port)...
    assert_eq!(
        fixtures::test_run(
            &mut dp,
            Hook::ToPod,
            &packets::packet(a, b, TCP, 80, 50000, ACK)
        )
        .expect("run"),
        TC_ACT_SHOT
    );
    // ...until b's own next segment, which its egress allows, is adopted;
    // then the replies flow again.
    for (hook, pkt) in [
        (Hook::FromPod, packets::packet(b, a, TCP, 50000, 80, ACK)),
        (Hook::ToPod, packets::packet(a, b, TCP, 80, 50000, ACK)),
    ] {
        assert_eq!(
            fixtures::test_run(&mut dp, hook, &pkt).expect("run"),
            TC_ACT_UNSPEC
        );
    }
    // ...while a late DNS answer of a forgotten query is judged by b's
    // closed ingress: dropped (fail closed), never let through unjudged.
    assert_eq!(
        fixtures::test_run(
            &mut dp,
            Hook::ToPod,
            &packets::packet(dns, b, UDP, 53, 50001, 0)
        )
        .expect("run"),
        TC_ACT_SHOT
    );
}

#[test]
fn one_pods_flood_cannot_evict_another_pods_flows() {
    // a may only query 10.9.0.53 on UDP 53 (both directions isolated); b is
    // open and floods new flows. Same 64-entry conntrack as above, but with
    // a per-endpoint budget of new flows.
    let yaml = format!(
        "{PODS}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: a, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Ingress, Egress]\n  egress:\n  - to: [{{ipBlock: {{cidr: 10.9.0.53/32}}}}]\n    ports: [{{protocol: UDP, port: 53}}]\n"
    );
    let sizes = MapSizes {
        conntrack: Some(64),
        budgets: palisade_agent::dataplane::Budgets {
            new_flows_per_sec: 10,
            new_flow_burst: 16,
            ..Default::default()
        },
        ..MapSizes::default()
    };
    let (pins, mut dp, _syncer, failed) =
        fixtures::load_sized(&yaml, &Profile::default(), UnknownEndpoint::Allow, sizes);
    assert_eq!(failed, 0);
    let (a, b, dns) = (ip("10.0.1.10"), ip("10.0.1.11"), ip("10.9.0.53"));
    let run = |dp: &mut palisade_agent::dataplane::Datapath, hook, pkt: Vec<u8>| {
        fixtures::test_run(dp, hook, &pkt).expect("run")
    };
    assert_eq!(
        run(
            &mut dp,
            Hook::FromPod,
            packets::packet(a, dns, UDP, 50001, 53, 0)
        ),
        TC_ACT_UNSPEC
    );
    // b's flood: 2000 new flows, of which only its burst gets through.
    let mut passed = 0;
    for i in 0..2000u16 {
        let v = run(
            &mut dp,
            Hook::FromPod,
            packets::packet(b, ip("10.9.9.9"), UDP, 20000 + i, 1000 + i, 0),
        );
        if v == TC_ACT_UNSPEC {
            passed += 1;
        }
    }
    assert!(
        (16..=20).contains(&passed),
        "b's new flows are held to its budget: {passed} passed"
    );
    let counters_map = dp.take_counters().expect("counters");
    let limited = palisade_agent::dataplane::counters::read(&counters_map)
        .into_iter()
        .find(|(c, _)| *c == palisade_common::Counter::RateLimited)
        .map_or(0, |(_, v)| v);
    assert!(limited >= 1900, "rate-limited flows counted: {limited}");
    // a's query is still tracked: its answer passes a's closed ingress.
    assert_eq!(
        run(
            &mut dp,
            Hook::ToPod,
            packets::packet(dns, a, UDP, 53, 50001, 0)
        ),
        TC_ACT_UNSPEC
    );
    drop(pins);
}
