//! Random and mutated packets through both tc programs (BPF_PROG_TEST_RUN):
//! every packet gets a verdict (pass or drop, nothing else) and exactly one
//! outcome counter, whatever its headers say: truncated headers, bogus IHL,
//! IPv6 extension header chains, fragments, garbage. Privileged.

use palisade_agent::{
    dataplane::{UnknownEndpoint, counters, paths::Hook},
    policy::Profile,
};
use palisade_common::Counter;
use palisade_tests::{
    fixtures,
    packets::{self, ACK, SYN, TCP, UDP},
};

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
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{ports: [{port: 80}]}]
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}}]}]
"#;

/// xorshift64*: deterministic, so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let ip = |s: &str| s.parse().expect("ip");
    let a6: [u8; 16] = "fd00::1:10"
        .parse::<std::net::Ipv6Addr>()
        .expect("ip")
        .octets();
    let b6: [u8; 16] = "fd00::1:11"
        .parse::<std::net::Ipv6Addr>()
        .expect("ip")
        .octets();
    let mut tcp6 = 1234u16.to_be_bytes().to_vec();
    tcp6.extend(80u16.to_be_bytes());
    tcp6.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, SYN, 0xff, 0xff, 0, 0, 0, 0]);
    let mut icmp4 = packets::packet(ip("10.0.1.11"), ip("10.0.1.10"), UDP, 1, 2, 0);
    icmp4[14 + 9] = 1; // ICMP, type/code from the UDP ports' bytes
    vec![
        packets::packet(ip("10.0.1.11"), ip("10.0.1.10"), TCP, 40000, 80, SYN),
        packets::packet(ip("10.0.1.10"), ip("10.0.2.11"), TCP, 40001, 443, SYN | ACK),
        packets::packet(ip("10.0.1.11"), ip("10.0.1.10"), UDP, 53, 5353, 0),
        packets::packet(ip("fd00::1:11"), ip("fd00::1:10"), TCP, 40002, 80, SYN),
        packets::ipv6(b6, a6, TCP, &[0, 60, 43], &tcp6),
        packets::ipv6(b6, a6, TCP, &[44], &tcp6),
        packets::later_fragment([10, 0, 1, 11], [10, 0, 1, 10], TCP),
        packets::bad_ihl([10, 0, 1, 11], [10, 0, 1, 10]),
        icmp4,
    ]
}

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut p = seed.to_vec();
    match rng.below(4) {
        // Flip bytes in the headers.
        0 => {
            for _ in 0..1 + rng.below(4) {
                let i = 14 + rng.below(p.len().saturating_sub(14).max(1));
                if i < p.len() {
                    p[i] = rng.next() as u8;
                }
            }
        }
        // Cut anywhere past the Ethernet header.
        1 => p.truncate(15 + rng.below(p.len().saturating_sub(14).max(1))),
        // Garbage after a valid Ethernet header.
        2 => {
            let n = rng.below(120);
            p.truncate(14);
            p.extend((0..n).map(|_| rng.next() as u8));
        }
        // A valid packet with a longer tail.
        _ => p.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
    }
    p
}

#[test]
fn every_packet_gets_a_verdict_and_one_outcome() {
    let (_pins, mut dp, _syncer) =
        fixtures::load(MODEL, &Profile::default(), UnknownEndpoint::Deny);
    let counters_map = dp.take_counters().expect("counters");
    let outcomes = |m: &aya::maps::PerCpuArray<aya::maps::MapData, u64>| -> u64 {
        counters::read(m)
            .iter()
            .filter(|(c, _)| Counter::OUTCOMES.contains(c))
            .map(|(_, v)| v)
            .sum()
    };

    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let seeds = seeds();
    let (mut ran, mut refused) = (0u64, 0u64);
    let mut verdicts = [0u64; 2];
    for i in 0..20_000 {
        let pkt = mutate(&mut rng, &seeds[i % seeds.len()]);
        let hook = if rng.below(2) == 0 {
            Hook::FromPod
        } else {
            Hook::ToPod
        };
        let before = outcomes(&counters_map);
        match fixtures::test_run(&mut dp, hook, &pkt) {
            Ok(verdict) => {
                ran += 1;
                // TC_ACT_UNSPEC (pass on to the next program) or TC_ACT_SHOT.
                let slot = match verdict {
                    u32::MAX => 0,
                    2 => 1,
                    other => panic!("verdict {other} for {pkt:02x?}"),
                };
                verdicts[slot] += 1;
                assert_eq!(
                    outcomes(&counters_map),
                    before + 1,
                    "exactly one outcome counter for {pkt:02x?}"
                );
            }
            // The kernel's test runner refuses some frames before the
            // program sees them (shorter than it wants); not a packet.
            Err(_) => refused += 1,
        }
    }
    eprintln!(
        "ran {ran}, refused by the kernel {refused}, passed {}, dropped {}",
        verdicts[0], verdicts[1]
    );
    assert!(ran > 12_000, "most inputs reached the programs");
    assert!(
        verdicts[0] > 1000 && verdicts[1] > 1000,
        "both verdicts occur"
    );
}
