//! NetworkPolicy semantics, rule by rule, on the compiled maps (through the
//! datapath simulation) for the classic x/y/z model.

mod support;

use ipnet::IpNet;
use palisade_agent::policy::{
    Direction, MapOp, MapWriter, Maps, Profile, compile, sim,
    state::{EndpointEntry, IpcacheEntry},
};
use palisade_common::{IDENTITY_WORLD, PROTO_TCP, PROTO_UDP, ipcache_flags};
use support::*;

/// Which of the 9x9 pod pairs may connect on (proto, port), as "src->dst" strings.
fn allowed_pairs(yaml: &str, proto: u8, port: u16) -> Vec<String> {
    let m = model(&(xyz() + yaml));
    let state = compile(
        &m,
        &node(),
        &Profile {
            block_metadata: false,
            ..Profile::default()
        },
    );
    let mut out = Vec::new();
    for s in XYZ {
        for d in XYZ {
            if s != d && sim::connection_allowed(&state.maps, xyz_ip(s), xyz_ip(d), proto, port) {
                out.push(format!("{s}->{d}"));
            }
        }
    }
    out
}

fn all_pairs_except(denied: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for s in XYZ {
        for d in XYZ {
            let p = format!("{s}->{d}");
            if s != d && !denied.contains(&p.as_str()) {
                out.push(p);
            }
        }
    }
    out
}

fn to(dst: &str, from: &[&str]) -> Vec<String> {
    XYZ.iter()
        .filter(|s| **s != dst && from.contains(s))
        .map(|s| format!("{s}->{dst}"))
        .collect()
}

fn into_dst_denied(dst: &str, allowed_from: &[&str]) -> Vec<String> {
    let mut denied: Vec<String> = XYZ
        .iter()
        .filter(|s| **s != dst && !allowed_from.contains(s))
        .map(|s| format!("{s}->{dst}"))
        .collect();
    denied.sort();
    let refs: Vec<&str> = denied.iter().map(String::as_str).collect();
    all_pairs_except(&refs)
}

const NP: &str = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n";

#[test]
fn no_policy_allows_everything() {
    assert_eq!(allowed_pairs("", PROTO_TCP, 80).len(), 72);
}

#[test]
fn empty_pod_selector_isolates_every_pod_of_the_namespace_only() {
    let p = format!("{NP}metadata: {{name: deny, namespace: x}}\nspec: {{podSelector: {{}}}}\n");
    let got = allowed_pairs(&p, PROTO_TCP, 80);
    for d in ["x/a", "x/b", "x/c"] {
        assert!(
            got.iter().all(|g| !g.ends_with(&format!("->{d}"))),
            "{d} is isolated"
        );
    }
    assert!(got.contains(&"x/a->y/a".to_string()), "egress is untouched");
    assert_eq!(got.len(), 72 - 24);
}

#[test]
fn pod_selector_peer_is_scoped_to_the_policy_namespace() {
    let p = format!(
        "{NP}metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]}}]\n"
    );
    assert_eq!(
        allowed_pairs(&p, PROTO_TCP, 80),
        into_dst_denied("x/a", &["x/b"])
    );
}

#[test]
fn namespace_selector_alone_admits_every_pod_of_those_namespaces() {
    let p = format!(
        "{NP}metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}]}}]\n"
    );
    assert_eq!(
        allowed_pairs(&p, PROTO_TCP, 80),
        into_dst_denied("x/a", &["y/a", "y/b", "y/c"])
    );
}

#[test]
fn namespace_and_pod_selector_in_one_peer_are_anded() {
    let p = format!(
        "{NP}metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}, podSelector: {{matchLabels: {{pod: b}}}}}}]}}]\n"
    );
    assert_eq!(
        allowed_pairs(&p, PROTO_TCP, 80),
        into_dst_denied("x/a", &["y/b"])
    );
}

#[test]
fn separate_peers_are_ored() {
    let p = format!(
        "{NP}metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: y}}}}}}, {{podSelector: {{matchLabels: {{pod: b}}}}}}]}}]\n"
    );
    assert_eq!(
        allowed_pairs(&p, PROTO_TCP, 80),
        into_dst_denied("x/a", &["y/a", "y/b", "y/c", "x/b"])
    );
}

#[test]
fn empty_namespace_selector_means_every_namespace() {
    let p = format!(
        "{NP}metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{from: [{{namespaceSelector: {{}}, podSelector: {{matchLabels: {{pod: c}}}}}}]}}]\n"
    );
    assert_eq!(
        allowed_pairs(&p, PROTO_TCP, 80),
        into_dst_denied("x/a", &["x/c", "y/c", "z/c"])
    );
}

#[test]
fn match_expressions_select_with_all_operators() {
    let p = format!(
        "{NP}metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{matchExpressions: [{{key: pod, operator: NotIn, values: [a, b]}}]}}\n  ingress: [{{from: [{{namespaceSelector: {{matchExpressions: [{{key: ns, operator: In, values: [z]}}]}}, podSelector: {{matchExpressions: [{{key: pod, operator: Exists}}, {{key: role, operator: DoesNotExist}}]}}}}]}}]\n"
    );
    assert_eq!(
        allowed_pairs(&p, PROTO_TCP, 80),
        into_dst_denied("x/c", &["z/a", "z/b", "z/c"])
    );
}

#[test]
fn policies_are_additive() {
    let p = format!(
        "{NP}metadata: {{name: p1, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]}}]\n\
         {NP}metadata: {{name: p2, namespace: x}}\nspec:\n  podSelector: {{}}\n  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: z}}}}, podSelector: {{matchLabels: {{pod: c}}}}}}]}}]\n"
    );
    let got = allowed_pairs(&p, PROTO_TCP, 80);
    assert!(got.contains(&"x/b->x/a".to_string()));
    assert!(got.contains(&"z/c->x/a".to_string()));
    assert!(got.contains(&"z/c->x/b".to_string()));
    assert!(!got.contains(&"x/a->x/b".to_string()));
    assert!(!got.contains(&"y/a->x/a".to_string()));
}

#[test]
fn egress_isolation_needs_policy_type_or_rules() {
    // Egress rules without policyTypes: both directions apply.
    let p = format!(
        "{NP}metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  egress: [{{to: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]}}]\n"
    );
    let got = allowed_pairs(&p, PROTO_TCP, 80);
    assert_eq!(
        to("x/b", &["x/a"])
            .iter()
            .filter(|p| got.contains(p))
            .count(),
        1
    );
    assert!(!got.contains(&"x/a->y/b".to_string()), "egress isolated");
    assert!(
        !got.contains(&"x/b->x/a".to_string()),
        "ingress isolated too (policyTypes default)"
    );
    // policyTypes [Egress] only: ingress stays open.
    let p = format!(
        "{NP}metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress: [{{to: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]}}]\n"
    );
    let got = allowed_pairs(&p, PROTO_TCP, 80);
    assert!(got.contains(&"x/b->x/a".to_string()));
    assert!(got.contains(&"y/c->x/a".to_string()));
}

#[test]
fn an_empty_egress_list_without_policy_types_leaves_egress_open() {
    // Upstream defaulting adds Egress only when spec.egress has rules.
    let p = format!(
        "{NP}metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  egress: []\n"
    );
    let got = allowed_pairs(&p, PROTO_TCP, 80);
    assert!(got.contains(&"x/a->y/b".to_string()), "egress stays open");
    assert!(
        !got.contains(&"x/b->x/a".to_string()),
        "ingress is isolated"
    );
}

#[test]
fn a_connection_needs_both_sides() {
    let p = format!(
        "{NP}metadata: {{name: client, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress: [{{to: [{{namespaceSelector: {{}}}}]}}]\n\
         {NP}metadata: {{name: server, namespace: y}}\nspec:\n  podSelector: {{matchLabels: {{pod: b}}}}\n  ingress: [{{from: [{{namespaceSelector: {{matchLabels: {{ns: z}}}}}}]}}]\n"
    );
    let got = allowed_pairs(&p, PROTO_TCP, 80);
    assert!(!got.contains(&"x/a->y/b".to_string()), "server side denies");
    assert!(got.contains(&"z/a->y/b".to_string()));
    assert!(got.contains(&"x/a->y/a".to_string()));
}

#[test]
fn ports_numbers_ranges_protocols_and_names() {
    let p = format!(
        "{NP}metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - ports: [{{port: 81}}, {{protocol: UDP, port: 8000, endPort: 8100}}, {{port: dns, protocol: UDP}}]\n"
    );
    assert!(allowed_pairs(&p, PROTO_TCP, 81).contains(&"y/a->x/a".to_string()));
    assert!(!allowed_pairs(&p, PROTO_TCP, 80).contains(&"y/a->x/a".to_string()));
    assert!(
        !allowed_pairs(&p, PROTO_UDP, 81).contains(&"y/a->x/a".to_string()),
        "no protocol means TCP"
    );
    for port in [8000, 8050, 8100] {
        assert!(
            allowed_pairs(&p, PROTO_UDP, port).contains(&"y/a->x/a".to_string()),
            "{port}"
        );
    }
    assert!(!allowed_pairs(&p, PROTO_UDP, 8101).contains(&"y/a->x/a".to_string()));
    assert!(
        allowed_pairs(&p, PROTO_UDP, 53).contains(&"y/a->x/a".to_string()),
        "named port dns = 53/UDP"
    );
}

#[test]
fn named_egress_ports_resolve_per_destination() {
    // y/b serves "http" on 8080, everyone else on 80.
    let policy = format!(
        "{NP}metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress: [{{ports: [{{port: http}}]}}]\n"
    );
    let m = model(&format!(
        "{}{policy}",
        xyz().replace(
            "metadata: {name: b, namespace: y, labels: {pod: b}}\nspec: {nodeName: n1, containers: [{name: c, image: i, ports: [{name: http, containerPort: 80}",
            "metadata: {name: b, namespace: y, labels: {pod: b}}\nspec: {nodeName: n1, containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}"
        )
    ));
    let state = compile(&m, &node(), &Profile::default());
    let ok = |d: &str, port| {
        sim::connection_allowed(&state.maps, xyz_ip("x/a"), xyz_ip(d), PROTO_TCP, port)
    };
    assert!(ok("y/b", 8080));
    assert!(!ok("y/b", 80));
    assert!(ok("y/a", 80));
    assert!(!ok("y/a", 8080));
}

#[test]
fn ip_block_with_except_covers_pods() {
    let p = format!(
        "{NP}metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress: [{{from: [{{ipBlock: {{cidr: 10.0.2.0/24, except: [10.0.2.11/32]}}}}]}}]\n"
    );
    assert_eq!(
        allowed_pairs(&p, PROTO_TCP, 80),
        into_dst_denied("x/a", &["y/a", "y/c"])
    );
}

#[test]
fn allow_all_rule_and_node_traffic() {
    let p = format!(
        "{NP}metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Ingress, Egress]\n  ingress: [{{}}]\n"
    );
    let got = allowed_pairs(&p, PROTO_TCP, 80);
    assert!(
        got.contains(&"y/a->x/a".to_string()),
        "ingress: [{{}}] allows all"
    );
    assert!(
        !got.contains(&"x/a->y/a".to_string()),
        "egress isolated, no rules"
    );
    let m = model(&(xyz() + &p));
    let state = compile(&m, &node(), &Profile::default());
    assert!(
        sim::connection_allowed(&state.maps, ip("172.31.0.1"), xyz_ip("x/a"), PROTO_TCP, 80),
        "node is always allowed in"
    );
}

#[test]
fn invalid_policies_are_rejected_with_their_name() {
    let bad = [
        (
            "spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}",
            "invalid CIDR",
        ),
        (
            "spec: {podSelector: {}, ingress: [{ports: [{port: 80, endPort: 79}]}]}",
            "endPort 79 is smaller",
        ),
        (
            "spec: {podSelector: {}, ingress: [{ports: [{port: 70000}]}]}",
            "out of range",
        ),
        (
            "spec: {podSelector: {}, ingress: [{ports: [{protocol: ICMP}]}]}",
            "unknown protocol",
        ),
        (
            "spec: {podSelector: {matchExpressions: [{key: a, operator: In}]}}",
            "needs at least one value",
        ),
        (
            "spec: {podSelector: {}, policyTypes: [Sideways]}",
            "unknown policyType",
        ),
        (
            "spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/8]}}]}]}",
            "is not strictly inside",
        ),
    ];
    for (spec, want) in bad {
        assert_rejected(spec, want);
    }
}

/// Applies policy x/bad with `spec` and expects an error naming it and containing `want`.
fn assert_rejected(spec: &str, want: &str) {
    let doc = format!("{NP}metadata: {{name: bad, namespace: x}}\n{spec}\n");
    let mut index = palisade_agent::index::Index::default();
    let o = objects(&doc).pop().expect("one object");
    let err = palisade_agent::error_chain::chain(&index.apply(&o).expect_err(spec));
    assert!(
        err.contains("NetworkPolicy x/bad") && err.contains(want),
        "{err} (wanted {want})"
    );
}

#[test]
fn an_except_equal_to_its_cidr_is_rejected() {
    // The API server wants each except strictly inside the cidr.
    assert_rejected(
        "spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/8]}}]}]}",
        "spec.ingress[0].from[0].ipBlock.except[0]: except 10.0.0.0/8 is not strictly inside cidr 10.0.0.0/8",
    );
}

#[test]
fn a_port_written_as_a_string_of_digits_is_rejected() {
    // A string port is an IANA_SVC_NAME, which needs a letter.
    assert_rejected(
        "spec: {podSelector: {}, ingress: [{ports: [{port: \"80\"}]}]}",
        "spec.ingress[0].ports[0].port: invalid port name \"80\"",
    );
}

fn net(s: &str) -> IpNet {
    s.parse().expect("net")
}

#[test]
fn a_v4_mapped_ip_block_is_rejected_with_a_clear_message() {
    // The datapath keys IPv4 as ::ffff:a.b.c.d: such a block would be one
    // kernel entry with the IPv4 one (the metadata block, a pod, the node).
    assert_rejected(
        "spec: {podSelector: {}, policyTypes: [Egress], egress: [{to: [{ipBlock: {cidr: \"::ffff:169.254.169.254/128\"}}]}]}",
        "spec.egress[0].to[0].ipBlock.cidr: ::ffff:169.254.169.254/128 is IPv4-mapped IPv6; write it as IPv4: 169.254.169.254/32",
    );
    assert_rejected(
        "spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: \"::/0\", except: [\"::ffff:10.0.0.0/104\"]}}]}]}",
        "spec.ingress[0].from[0].ipBlock.except[0]: ::ffff:10.0.0.0/104 is IPv4-mapped IPv6; write it as IPv4: 10.0.0.0/8",
    );
    assert_rejected(
        "spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: \"::ffff:0:0/96\"}}]}]}",
        "write it as IPv4: 0.0.0.0/0",
    );
}

#[test]
fn a_v4_mapped_pod_ip_is_rejected() {
    let mut index = palisade_agent::index::Index::default();
    let o = objects(&pod("x", "a", "pod: a", "::ffff:10.0.1.10"))
        .pop()
        .expect("one object");
    let err = palisade_agent::error_chain::chain(&index.apply(&o).expect_err("v4-mapped podIP"));
    assert!(
        err.contains("Pod x/a")
            && err.contains(
                "status.podIP: ::ffff:10.0.1.10 is IPv4-mapped IPv6; write it as IPv4: 10.0.1.10"
            ),
        "{err}"
    );
}

#[test]
fn a_v4_mapped_node_address_is_the_ipv4_node_address() {
    let deny = format!("{NP}metadata: {{name: deny, namespace: x}}\nspec: {{podSelector: {{}}}}\n");
    let mut n = node();
    n.addresses = vec![ip("::ffff:172.31.0.1")];
    let state = compile(&model(&(xyz() + &deny)), &n, &Profile::default());
    assert_eq!(
        state
            .maps
            .ipcache
            .get(&net("172.31.0.1/32"))
            .map(|e| e.flags),
        Some(ipcache_flags::HOST)
    );
    assert!(
        !state
            .maps
            .ipcache
            .contains_key(&net("::ffff:172.31.0.1/128"))
    );
    assert!(sim::connection_allowed(
        &state.maps,
        ip("172.31.0.1"),
        xyz_ip("x/a"),
        PROTO_TCP,
        80
    ));
}

#[test]
fn an_ipv6_block_covering_every_address_admits_no_ipv4_address() {
    // ::/0 covers ::ffff:0:0/96, where the kernel keeps IPv4.
    let p = format!(
        "{NP}metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: \"::/0\"}}}}]}}]\n"
    );
    let state = compile(&model(&(xyz() + &p)), &node(), &Profile::default());
    let egress = |dst| {
        sim::judge(
            &state.maps,
            xyz_ip("x/a"),
            ip(dst),
            Direction::Egress,
            PROTO_TCP,
            443,
        )
        .allows()
    };
    assert!(!egress("203.0.113.10"), "an IPv4 address without an entry");
    assert!(!egress("10.0.2.10"), "an IPv4 pod");
    assert!(egress("2001:db8::1"));
}

#[test]
fn the_ipcache_holds_the_ipv4_root_as_world() {
    let root = net("0.0.0.0/0");
    let world = IpcacheEntry {
        identity: IDENTITY_WORLD,
        flags: 0,
    };
    let state = compile(&model(&xyz()), &node(), &Profile::default());
    assert_eq!(state.maps.ipcache.get(&root), Some(&world));
    // A policy naming 0.0.0.0/0 gives it a CIDR identity instead.
    let p = format!(
        "{NP}metadata: {{name: p, namespace: x}}\nspec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n  egress: [{{to: [{{ipBlock: {{cidr: 0.0.0.0/0}}}}]}}]\n"
    );
    let state = compile(&model(&(xyz() + &p)), &node(), &Profile::default());
    let entry = state.maps.ipcache.get(&root).expect("the policy's block");
    assert_ne!(entry.identity, IDENTITY_WORLD);
    assert!(sim::connection_allowed(
        &state.maps,
        xyz_ip("x/a"),
        ip("203.0.113.10"),
        PROTO_TCP,
        443
    ));
}

#[test]
fn the_mirror_keys_entries_by_their_kernel_key() {
    let mut maps = Maps::default();
    let metadata = IpcacheEntry {
        identity: 300,
        flags: ipcache_flags::METADATA,
    };
    let lifted = IpcacheEntry {
        identity: 301,
        flags: 0,
    };
    let ops = [
        MapOp::UpsertIpcache(net("169.254.169.254/32"), metadata),
        MapOp::UpsertIpcache(net("::ffff:169.254.169.254/128"), lifted),
        MapOp::UpsertEndpoint(
            ip("::ffff:10.0.1.10"),
            EndpointEntry {
                id: 1,
                flags: 0,
                ifindex: 0,
            },
        ),
    ];
    for op in &ops {
        maps.apply(op).expect("infallible");
    }
    // As in the kernel: one entry, the last written.
    assert_eq!(
        maps.ipcache.iter().collect::<Vec<_>>(),
        [(&net("169.254.169.254/32"), &lifted)]
    );
    assert!(maps.endpoints.contains_key(&ip("10.0.1.10")));
    maps.apply(&MapOp::DeleteIpcache(net("::ffff:169.254.169.254/128")))
        .expect("infallible");
    maps.apply(&MapOp::DeleteEndpoint(ip("::ffff:10.0.1.10")))
        .expect("infallible");
    assert!(maps.is_empty());
}
