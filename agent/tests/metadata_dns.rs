//! The metadata block and DNS (issue #20): UDP and TCP 53 to a metadata
//! address are judged like any destination unless `metadataDNS: false`;
//! every other port stays blocked; under default deny with `allowDNS` the
//! metadata addresses count as cluster DNS; the addresses are a setting.
//! Each case is checked on the compiled maps (through the datapath
//! simulation) and against the reference evaluator.

mod support;

use std::net::IpAddr;

use palisade_agent::{
    model::Protocol,
    policy::{
        Profile, compile,
        reference::{self, Party},
        sim,
    },
};
use support::*;

const METADATA: [&str; 3] = ["169.254.169.254", "fd00:ec2::254", "100.100.100.200"];
const PROBES: [(Protocol, u16); 4] = [
    (Protocol::Udp, 53),
    (Protocol::Tcp, 53),
    (Protocol::Tcp, 80),
    (Protocol::Udp, 5353),
];

/// Which (protocol, port) pod x/a may send to `dst`, per the compiled maps;
/// asserts the reference evaluator agrees on each.
fn open_ports(policies: &str, profile: &Profile, dst: &str) -> Vec<(Protocol, u16)> {
    let m = model(&(xyz() + policies));
    let state = compile(&m, &node(), profile);
    let src = m
        .pods
        .values()
        .find(|p| p.name == "a" && p.namespace == "x")
        .expect("x/a");
    let dst: IpAddr = dst.parse().expect("ip");
    PROBES
        .into_iter()
        .filter(|(proto, port)| {
            let compiled =
                sim::connection_allowed(&state.maps, xyz_ip("x/a"), dst, proto.number(), *port);
            let want = reference::allowed(
                &m,
                profile,
                Party::Pod(src, src.ips[0]),
                Party::External(dst),
                *proto,
                *port,
            );
            assert_eq!(
                compiled, want,
                "{dst} {proto:?}/{port}: compiled {compiled}, reference {want}"
            );
            compiled
        })
        .collect()
}

const DNS: [(Protocol, u16); 2] = [(Protocol::Udp, 53), (Protocol::Tcp, 53)];

#[test]
fn dns_to_every_default_metadata_address_stays_open_and_nothing_else() {
    for addr in METADATA {
        assert_eq!(open_ports("", &Profile::default(), addr), DNS, "{addr}");
    }
}

#[test]
fn metadata_dns_false_closes_dns_too() {
    let profile = Profile {
        metadata_dns: false,
        ..Profile::default()
    };
    for addr in METADATA {
        assert_eq!(open_ports("", &profile, addr), [], "{addr}");
    }
}

#[test]
fn dns_to_the_metadata_address_follows_egress_policy_like_any_destination() {
    // Egress open to 0.0.0.0/0 on 53 only: DNS to the metadata server
    // passes (the block leaves DNS alone), the rest stays blocked.
    let dns_anywhere = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
        metadata: {name: dns, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  \
        egress: [{to: [{ipBlock: {cidr: 0.0.0.0/0}}], ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 80}]}]\n";
    assert_eq!(
        open_ports(dns_anywhere, &Profile::default(), "169.254.169.254"),
        [(Protocol::Udp, 53)]
    );
    // Egress closed entirely: DNS to it is closed too.
    let closed = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
        metadata: {name: closed, namespace: x}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n";
    assert_eq!(
        open_ports(closed, &Profile::default(), "169.254.169.254"),
        []
    );
}

#[test]
fn under_default_deny_with_allow_dns_the_metadata_server_is_cluster_dns() {
    let profile = Profile {
        default_deny: true,
        ..Profile::default()
    };
    for addr in METADATA {
        assert_eq!(open_ports("", &profile, addr), DNS, "{addr}");
    }
    let no_dns = Profile {
        allow_dns: false,
        ..profile.clone()
    };
    assert_eq!(open_ports("", &no_dns, "169.254.169.254"), []);
    let closed = Profile {
        metadata_dns: false,
        ..profile
    };
    assert_eq!(open_ports("", &closed, "169.254.169.254"), []);
}

#[test]
fn the_addresses_are_a_setting() {
    let profile = Profile {
        metadata_addresses: vec!["192.0.2.254".parse().expect("ip")],
        metadata_dns: false,
        ..Profile::default()
    };
    assert_eq!(open_ports("", &profile, "192.0.2.254"), []);
    // An address no longer listed is an ordinary destination.
    assert_eq!(open_ports("", &profile, "169.254.169.254"), PROBES);
}

#[test]
fn metadata_settings_parse_and_validate() {
    let p: Profile = serde_yaml::from_str(
        "metadataAddresses: [169.254.169.254, 100.100.100.200]\nmetadataDNS: false\n",
    )
    .expect("valid");
    assert!(!p.metadata_dns);
    assert_eq!(p.metadata_addresses.len(), 2);
    p.validate().expect("valid");
    let d = Profile::default();
    assert!(
        d.metadata_dns,
        "DNS to the metadata server is open by default"
    );
    let mapped: Profile =
        serde_yaml::from_str("metadataAddresses: [\"::ffff:169.254.169.254\"]\n").expect("parses");
    let e = mapped.validate().expect_err("v4-mapped rejected");
    assert!(e.to_string().contains("write it as IPv4"), "{e}");
}
