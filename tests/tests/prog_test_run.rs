//! The tc programs judged through BPF_PROG_TEST_RUN on hand-built packets,
//! with maps written from a compiled model: the kernel must give the verdict
//! the in-memory simulation gives (the behaviour the engine's tests rely on).
//! Privileged: needs root (CAP_BPF, CAP_NET_ADMIN); fails, never skips.

use std::net::IpAddr;

use palisade_agent::{
    dataplane::{Datapath, UnknownEndpoint, paths::Hook},
    policy::{Direction, Profile, sim},
    sync::Syncer,
};
use palisade_tests::{
    fixtures::{self, Pins},
    packets::{self, ACK, SYN, TCP, UDP},
};

/// TC_ACT_UNSPEC: allowed, the next TCX program (if any) decides.
const TC_ACT_UNSPEC: u32 = u32::MAX;
const TC_ACT_SHOT: u32 = 2;

const MODEL: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {podIP: 10.0.1.10, podIPs: [{ip: 10.0.1.10}, {ip: "fd00::1:10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {podIP: 10.0.1.11, podIPs: [{ip: 10.0.1.11}, {ip: "fd00::1:11"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: x, labels: {pod: c}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {podIP: 10.0.1.12}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-in, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 80}, {port: 1000, endPort: 2000}, {protocol: UDP, port: 53}]
  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.1.12/32]}}]
    ports: [{port: 443}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-out, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 203.0.113.0/24}}]
  - ports: [{port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-out, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 80}]
"#;

type Setup = (
    Pins,
    Datapath,
    Syncer<palisade_agent::dataplane::KernelMaps>,
);

fn setup_with(profile: &Profile, unknown: UnknownEndpoint) -> Setup {
    fixtures::load(MODEL, profile, unknown)
}

fn setup(profile: &Profile) -> Setup {
    setup_with(profile, UnknownEndpoint::Allow)
}

fn run(dp: &mut Datapath, hook: Hook, pkt: &[u8]) -> u32 {
    fixtures::test_run(dp, hook, pkt).expect("BPF_PROG_TEST_RUN")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

#[test]
fn kernel_verdicts_match_the_simulation() {
    let (_pins, mut dp, syncer) = setup(&Profile::default());
    let maps = syncer.state().maps.clone();
    let addrs = [
        "10.0.1.10",
        "10.0.1.11",
        "10.0.1.12",
        "203.0.113.7",
        "172.31.0.1",
        "169.254.169.254",
        "8.8.8.8",
        "fd00::1:10",
        "fd00::1:11",
        "fd00:ec2::254",
        "2001:db8::1",
    ];
    let mut sport = 20000u16;
    let mut checked = 0;
    for (proto, ports) in [
        (TCP, vec![80u16, 443, 1000, 1500, 2000, 2001, 22]),
        (UDP, vec![53, 80]),
    ] {
        for s in addrs {
            for d in addrs {
                if s == d || ip(s).is_ipv4() != ip(d).is_ipv4() {
                    continue;
                }
                for &port in &ports {
                    sport += 1;
                    let (src, dst) = (ip(s), ip(d));
                    for (hook, dir, local, remote) in [
                        (Hook::FromPod, Direction::Egress, src, dst),
                        (Hook::ToPod, Direction::Ingress, dst, src),
                    ] {
                        let want = sim::judge_at(
                            &maps,
                            fixtures::TEST_RUN_IFINDEX,
                            local,
                            remote,
                            dir,
                            proto,
                            port,
                        )
                        .allows();
                        let flags = if proto == TCP { SYN } else { 0 };
                        let got = run(
                            &mut dp,
                            hook,
                            &packets::packet(src, dst, proto, sport, port, flags),
                        );
                        assert_eq!(
                            got,
                            if want { TC_ACT_UNSPEC } else { TC_ACT_SHOT },
                            "{s}:{sport} -> {d}:{port} proto {proto} at {hook:?}"
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    assert!(checked > 500);
}

#[test]
fn replies_of_allowed_flows_pass_and_unsolicited_ones_do_not() {
    let (_pins, mut dp, _s) = setup(&Profile::default());
    let (a, b, c) = (ip("10.0.1.10"), ip("10.0.1.11"), ip("10.0.1.12"));
    // b -> a:80 is allowed at a's ingress (and b's egress): the flow is tracked.
    assert_eq!(
        run(
            &mut dp,
            Hook::ToPod,
            &packets::packet(b, a, TCP, 40000, 80, SYN)
        ),
        TC_ACT_UNSPEC
    );
    // a's reply leaves a (a's egress is not isolated anyway) and enters b:
    // b's ingress is not isolated, so look at a's side only: the reply is tracked.
    assert_eq!(
        run(
            &mut dp,
            Hook::FromPod,
            &packets::packet(a, b, TCP, 80, 40000, SYN | ACK)
        ),
        TC_ACT_UNSPEC
    );
    // c -> a:80 is denied; an unsolicited "reply" from c to a is too.
    assert_eq!(
        run(
            &mut dp,
            Hook::ToPod,
            &packets::packet(c, a, TCP, 40001, 80, SYN)
        ),
        TC_ACT_SHOT
    );
    // b's egress is isolated (only 203.0.113.0/24 and port 80): b -> c:22 denied,
    // but the reply of c's connection *to* b (b's ingress is open) passes b's egress.
    assert_eq!(
        run(
            &mut dp,
            Hook::FromPod,
            &packets::packet(b, c, TCP, 40002, 22, SYN)
        ),
        TC_ACT_SHOT
    );
    assert_eq!(
        run(
            &mut dp,
            Hook::ToPod,
            &packets::packet(c, b, TCP, 40003, 22, SYN)
        ),
        TC_ACT_UNSPEC
    );
    assert_eq!(
        run(
            &mut dp,
            Hook::FromPod,
            &packets::packet(b, c, TCP, 22, 40003, SYN | ACK)
        ),
        TC_ACT_UNSPEC,
        "reply of a tracked flow"
    );
    // UDP: b -> 203.0.113.7:53 allowed, the answer comes back into b.
    let ext = ip("203.0.113.7");
    assert_eq!(
        run(
            &mut dp,
            Hook::FromPod,
            &packets::packet(b, ext, UDP, 5353, 53, 0)
        ),
        TC_ACT_UNSPEC
    );
    assert_eq!(
        run(
            &mut dp,
            Hook::ToPod,
            &packets::packet(ext, b, UDP, 53, 5353, 0)
        ),
        TC_ACT_UNSPEC
    );
}

#[test]
fn mid_stream_tcp_is_adopted_only_in_the_direction_it_travels() {
    let (_pins, mut dp, _s) = setup(&Profile::default());
    let (a, b) = (ip("10.0.1.10"), ip("10.0.1.11"));
    // The forged-ACK attack: a may connect to b:80, but b may not connect
    // to a:41000. A lone ACK from b:80 into a is not adopted as the reply of
    // a connection a might have opened: it is judged as what it is...
    assert_eq!(
        run(
            &mut dp,
            Hook::ToPod,
            &packets::packet(b, a, TCP, 80, 41000, ACK)
        ),
        TC_ACT_SHOT
    );
    // ...so the SYN that follows from the same port finds no entry to pass as.
    assert_eq!(
        run(
            &mut dp,
            Hook::ToPod,
            &packets::packet(b, a, TCP, 80, 41000, SYN)
        ),
        TC_ACT_SHOT
    );
    // A connection a opened before enforcement: a's own segment is allowed
    // in its direction and adopted; b's replies then pass.
    assert_eq!(
        run(
            &mut dp,
            Hook::FromPod,
            &packets::packet(a, b, TCP, 41001, 80, ACK)
        ),
        TC_ACT_UNSPEC
    );
    assert_eq!(
        run(
            &mut dp,
            Hook::ToPod,
            &packets::packet(b, a, TCP, 80, 41001, ACK)
        ),
        TC_ACT_UNSPEC
    );
    // A SYN never matches a reply: b cannot open a:41001 on the back of it.
    assert_eq!(
        run(
            &mut dp,
            Hook::ToPod,
            &packets::packet(b, a, TCP, 80, 41001, SYN)
        ),
        TC_ACT_SHOT
    );
    // Nor is an adopted entry a shortcut for a SYN: it is judged (and a may).
    assert_eq!(
        run(
            &mut dp,
            Hook::FromPod,
            &packets::packet(a, b, TCP, 41001, 80, SYN)
        ),
        TC_ACT_UNSPEC
    );
}

#[test]
fn spoofed_sources_and_foreign_icmp_errors_are_dropped() {
    let (_pins, mut dp, _s) = setup(&Profile::default());
    let (a, b, c) = (ip("10.0.1.10"), ip("10.0.1.11"), ip("10.0.1.12"));
    // A source that is no endpoint, on a veth bound to one: forged.
    assert_eq!(
        run(
            &mut dp,
            Hook::FromPod,
            &packets::packet(ip("10.0.1.99"), b, TCP, 5000, 80, SYN)
        ),
        TC_ACT_SHOT
    );
    // b's flow to 203.0.113.7:80 (b may).
    assert_eq!(
        run(
            &mut dp,
            Hook::FromPod,
            &packets::packet(b, ip("203.0.113.7"), TCP, 43000, 80, SYN)
        ),
        TC_ACT_UNSPEC
    );
    // An error about it, addressed to b: related.
    let err_for_b = packets::icmp4_unreachable(
        [203, 0, 113, 7],
        [10, 0, 1, 11],
        [10, 0, 1, 11],
        [203, 0, 113, 7],
        TCP,
        43000,
        80,
    );
    assert_eq!(run(&mut dp, Hook::ToPod, &err_for_b), TC_ACT_UNSPEC);
    // The same quoted flow in an error addressed to a (isolated, and the
    // flow is not a's): judged as a new packet, denied.
    let err_for_a = packets::icmp4_unreachable(
        [203, 0, 113, 7],
        [10, 0, 1, 10],
        [10, 0, 1, 11],
        [203, 0, 113, 7],
        TCP,
        43000,
        80,
    );
    assert_eq!(run(&mut dp, Hook::ToPod, &err_for_a), TC_ACT_SHOT);
    let _ = (a, c);
}

#[test]
fn icmpv6_control_passes_only_in_its_link_local_form() {
    let (_pins, mut dp, _s) = setup(&Profile::default());
    let a6: [u8; 16] = "fd00::1:10"
        .parse::<std::net::Ipv6Addr>()
        .expect("ip")
        .octets();
    let b6: [u8; 16] = "fd00::1:11"
        .parse::<std::net::Ipv6Addr>()
        .expect("ip")
        .octets();
    let gw: [u8; 16] = "fe80::1"
        .parse::<std::net::Ipv6Addr>()
        .expect("ip")
        .octets();
    let all_nodes: [u8; 16] = "ff02::1"
        .parse::<std::net::Ipv6Addr>()
        .expect("ip")
        .octets();
    // Neighbour advertisement from the gateway, hop limit 255: passes into a.
    assert_eq!(
        run(
            &mut dp,
            Hook::ToPod,
            &packets::icmp6(gw, all_nodes, 136, 255)
        ),
        TC_ACT_UNSPEC
    );
    // The same type from b to a's global address with a routed hop limit:
    // not neighbour discovery, judged like any packet (a is isolated).
    assert_eq!(
        run(&mut dp, Hook::ToPod, &packets::icmp6(b6, a6, 135, 64)),
        TC_ACT_SHOT
    );
    // With hop limit 255 towards a pod, only the node itself can have sent
    // it (a forwarded packet has a lower one): the node's advertisement to a
    // pod that solicited from its global address passes...
    assert_eq!(
        run(&mut dp, Hook::ToPod, &packets::icmp6(gw, a6, 136, 255)),
        TC_ACT_UNSPEC
    );
    // ...while from a pod, a global destination would be routed on: judged
    // (a's egress allows only TCP to b:80).
    assert_eq!(
        run(&mut dp, Hook::FromPod, &packets::icmp6(a6, b6, 136, 255)),
        TC_ACT_SHOT
    );
    // An IPv6 packet with a v4-mapped address would alias IPv4: malformed.
    let mapped: [u8; 16] = "::ffff:10.0.1.11"
        .parse::<std::net::Ipv6Addr>()
        .expect("ip")
        .octets();
    assert_eq!(
        run(
            &mut dp,
            Hook::ToPod,
            &packets::ipv6(
                mapped,
                a6,
                TCP,
                &[],
                &[
                    0, 80, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0
                ]
            )
        ),
        TC_ACT_SHOT
    );
}

#[test]
fn later_fragments_follow_an_allowed_first_fragment() {
    let (_pins, mut dp, _s) = setup(&Profile::default());
    // b may reach a on UDP 53 only: the first fragment of a datagram to
    // a:53 passes, and so do the later fragments of that datagram...
    assert_eq!(
        run(
            &mut dp,
            Hook::ToPod,
            &packets::first_fragment_udp([10, 0, 1, 11], [10, 0, 1, 10], 777, 5353, 53)
        ),
        TC_ACT_UNSPEC
    );
    assert_eq!(
        run(
            &mut dp,
            Hook::ToPod,
            &packets::later_fragment_id([10, 0, 1, 11], [10, 0, 1, 10], UDP, 777)
        ),
        TC_ACT_UNSPEC
    );
    // ...but not those of another datagram, nor of a denied one.
    assert_eq!(
        run(
            &mut dp,
            Hook::ToPod,
            &packets::later_fragment_id([10, 0, 1, 11], [10, 0, 1, 10], UDP, 778)
        ),
        TC_ACT_SHOT
    );
    assert_eq!(
        run(
            &mut dp,
            Hook::ToPod,
            &packets::first_fragment_udp([10, 0, 1, 11], [10, 0, 1, 10], 779, 5353, 54)
        ),
        TC_ACT_SHOT
    );
    assert_eq!(
        run(
            &mut dp,
            Hook::ToPod,
            &packets::later_fragment_id([10, 0, 1, 11], [10, 0, 1, 10], UDP, 779)
        ),
        TC_ACT_SHOT
    );
}

#[test]
fn ipv6_extension_headers_fragments_and_malformed_packets() {
    let (_pins, mut dp, _s) = setup(&Profile::default());
    let a6: [u8; 16] = "fd00::1:10"
        .parse::<std::net::Ipv6Addr>()
        .expect("ip")
        .octets();
    let b6: [u8; 16] = "fd00::1:11"
        .parse::<std::net::Ipv6Addr>()
        .expect("ip")
        .octets();
    let tcp = |dport: u16| {
        let mut p = 41000u16.to_be_bytes().to_vec();
        p.extend(dport.to_be_bytes());
        p.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, SYN, 0xff, 0xff, 0, 0, 0, 0]);
        p
    };
    // b -> a:80 over IPv6 through hop-by-hop and destination options: allowed.
    assert_eq!(
        run(
            &mut dp,
            Hook::ToPod,
            &packets::ipv6(b6, a6, TCP, &[0, 60], &tcp(80))
        ),
        TC_ACT_UNSPEC
    );
    // b -> a:22 likewise: denied (the ports behind the headers were found).
    assert_eq!(
        run(
            &mut dp,
            Hook::ToPod,
            &packets::ipv6(b6, a6, TCP, &[0, 60], &tcp(22))
        ),
        TC_ACT_SHOT
    );
    // Later IPv4 fragments carry no ports: denied into an endpoint isolated by port rules.
    assert_eq!(
        run(
            &mut dp,
            Hook::ToPod,
            &packets::later_fragment([10, 0, 1, 11], [10, 0, 1, 10], TCP)
        ),
        TC_ACT_SHOT
    );
    // ...and passed where the endpoint is not isolated (c's ingress).
    assert_eq!(
        run(
            &mut dp,
            Hook::ToPod,
            &packets::later_fragment([10, 0, 1, 11], [10, 0, 1, 12], TCP)
        ),
        TC_ACT_UNSPEC
    );
    // A header shorter than its minimum: dropped.
    assert_eq!(
        run(
            &mut dp,
            Hook::ToPod,
            &packets::bad_ihl([10, 0, 1, 11], [10, 0, 1, 10])
        ),
        TC_ACT_SHOT
    );
    // A frame cut inside the TCP header (the kernel's test runner refuses
    // frames cut inside the IP header): dropped.
    let mut cut = packets::packet(ip("10.0.1.11"), ip("10.0.1.10"), TCP, 1, 80, SYN);
    cut.truncate(14 + 20 + 2);
    assert_eq!(run(&mut dp, Hook::ToPod, &cut), TC_ACT_SHOT);
    // Not IP (ARP): none of our business.
    let mut arp = vec![0xff; 12];
    arp.extend([0x08, 0x06]);
    arp.extend([0u8; 28]);
    assert_eq!(run(&mut dp, Hook::ToPod, &arp), TC_ACT_UNSPEC);
}

#[test]
fn metadata_is_blocked_even_for_unisolated_pods() {
    let (_pins, mut dp, _s) = setup(&Profile::default());
    let md = ip("169.254.169.254");
    // c has no egress policy at all.
    assert_eq!(
        run(
            &mut dp,
            Hook::FromPod,
            &packets::packet(ip("10.0.1.12"), md, TCP, 41000, 80, SYN)
        ),
        TC_ACT_SHOT
    );
    let (_pins2, mut dp2, _s2) = setup(&Profile {
        block_metadata: false,
        ..Profile::default()
    });
    assert_eq!(
        run(
            &mut dp2,
            Hook::FromPod,
            &packets::packet(ip("10.0.1.12"), md, TCP, 41000, 80, SYN)
        ),
        TC_ACT_UNSPEC
    );
}

#[test]
fn unknown_addresses_on_pod_veths_are_dropped_when_configured() {
    let (_pins, mut dp, _s) = setup_with(&Profile::default(), UnknownEndpoint::Deny);
    // 10.0.1.99 has a veth but no pod the agent knows of (yet): dropped both ways.
    let (new, b) = (ip("10.0.1.99"), ip("10.0.1.11"));
    assert_eq!(
        run(
            &mut dp,
            Hook::FromPod,
            &packets::packet(new, b, TCP, 40000, 80, SYN)
        ),
        TC_ACT_SHOT
    );
    assert_eq!(
        run(
            &mut dp,
            Hook::ToPod,
            &packets::packet(b, new, TCP, 40001, 80, SYN)
        ),
        TC_ACT_SHOT
    );
    // Known pods are judged as usual, and non-IP frames pass.
    assert_eq!(
        run(
            &mut dp,
            Hook::ToPod,
            &packets::packet(b, ip("10.0.1.10"), TCP, 40002, 80, SYN)
        ),
        TC_ACT_UNSPEC
    );
    let mut arp = vec![0xff; 12];
    arp.extend([0x08, 0x06]);
    arp.extend([0u8; 28]);
    assert_eq!(run(&mut dp, Hook::FromPod, &arp), TC_ACT_UNSPEC);
}

/// The conntrack key of TCP 10.0.1.10:`lport` -> 10.0.1.11:80, from the
/// local (10.0.1.10) side, as the datapath writes it.
fn a_to_b_tcp_key(lport: u16) -> palisade_common::CtKey {
    palisade_common::CtKey {
        local: palisade_common::v4_mapped([10, 0, 1, 10]),
        remote: palisade_common::v4_mapped([10, 0, 1, 11]),
        lport_be: lport.to_be_bytes(),
        rport_be: 80u16.to_be_bytes(),
        proto: TCP,
        _pad: [0; 3],
    }
}

/// One conntrack slot serves a flow both ways. A SYN from the other side of
/// a live flow, allowed or not, does not take it over (the flow stays judged
/// the way it was opened), and a revoked flow's tombstone drops it, while a
/// new connection the way the cut one went is judged afresh.
#[test]
fn a_syn_from_the_other_side_never_takes_a_flows_slot() {
    use palisade_common::ct_flags;
    let (_pins, mut dp, _s) = setup(&Profile::default());
    let (a, b) = (ip("10.0.1.10"), ip("10.0.1.11"));
    let ct = dp.take_conntrack().expect("conntrack map");
    let key = a_to_b_tcp_key(1500);
    // a -> b:80 from port 1500 (a-out allows it): one entry, opened egress.
    assert_eq!(
        run(
            &mut dp,
            Hook::FromPod,
            &packets::packet(a, b, TCP, 1500, 80, SYN)
        ),
        TC_ACT_UNSPEC
    );
    let opened = ct.get(&key, 0).expect("the flow is tracked under a's key");
    assert_eq!(opened.flags & ct_flags::OPENED_INGRESS, 0);
    // b:80 -> a:1500 SYN: a-in admits b on 1000-2000, so it passes, but the
    // entry is still the egress flow a opened.
    assert_eq!(
        run(
            &mut dp,
            Hook::ToPod,
            &packets::packet(b, a, TCP, 80, 1500, SYN)
        ),
        TC_ACT_UNSPEC
    );
    let after = ct.get(&key, 0).expect("still tracked");
    assert_eq!(after.flags & ct_flags::OPENED_INGRESS, 0, "{after:?}");
    assert_eq!(
        after.created_ns, opened.created_ns,
        "the slot was not reopened"
    );
    // Revoked (as the sweeper writes it): the other side's SYN is dropped,
    // a's own new SYN is judged by policy and reopens the slot.
    let mut ct = ct;
    let tombstone = palisade_common::CtValue {
        flags: after.flags | ct_flags::REVOKED | ct_flags::RST,
        ..after
    };
    ct.insert(key, tombstone, 0).expect("write the tombstone");
    assert_eq!(
        run(
            &mut dp,
            Hook::ToPod,
            &packets::packet(b, a, TCP, 80, 1500, SYN)
        ),
        TC_ACT_SHOT,
        "a SYN from the other side of a revoked flow"
    );
    assert_eq!(
        run(
            &mut dp,
            Hook::FromPod,
            &packets::packet(a, b, TCP, 1500, 80, ACK)
        ),
        TC_ACT_SHOT,
        "a segment of the revoked flow"
    );
    assert_eq!(
        run(
            &mut dp,
            Hook::FromPod,
            &packets::packet(a, b, TCP, 1500, 80, SYN)
        ),
        TC_ACT_UNSPEC,
        "a new connection the way the cut one went"
    );
    let reopened = ct.get(&key, 0).expect("tracked again");
    assert_eq!(reopened.flags & ct_flags::REVOKED, 0, "{reopened:?}");
}

/// A tracked packet writes its entry only when the idle time is due a
/// refresh (every 250 jiffies, read in one load): right after the opening
/// packet nothing is written, a second and more later the idle time moves.
#[test]
fn established_packets_refresh_the_idle_time_at_most_every_250_jiffies() {
    let (_pins, mut dp, _s) = setup(&Profile::default());
    let (a, b) = (ip("10.0.1.10"), ip("10.0.1.11"));
    let ct = dp.take_conntrack().expect("conntrack map");
    let key = a_to_b_tcp_key(1501);
    let syn = packets::packet(a, b, TCP, 1501, 80, SYN);
    let ack = packets::packet(a, b, TCP, 1501, 80, ACK);
    assert_eq!(run(&mut dp, Hook::FromPod, &syn), TC_ACT_UNSPEC);
    let opened = ct.get(&key, 0).expect("tracked");
    assert_eq!(run(&mut dp, Hook::FromPod, &ack), TC_ACT_UNSPEC);
    let soon = ct.get(&key, 0).expect("tracked");
    assert_eq!(soon, opened, "no write while no refresh is due");
    // 250 jiffies are at most 2.5 s (HZ >= 100).
    std::thread::sleep(std::time::Duration::from_millis(2600));
    assert_eq!(run(&mut dp, Hook::FromPod, &ack), TC_ACT_UNSPEC);
    let later = ct.get(&key, 0).expect("tracked");
    assert!(
        later.last_seen_ns >= opened.last_seen_ns + 2_000_000_000,
        "the idle time moved: {opened:?} -> {later:?}"
    );
    assert_ne!(later.touched_jiffies, opened.touched_jiffies);
    assert_eq!(later.created_ns, opened.created_ns);
}
