//! The compiled maps, evaluated the way the datapath evaluates them, agree
//! with the reference evaluator (written from the API text) on generated
//! models: random labels, selectors, policies, ipBlocks, ports, profiles,
//! Services over random backends (frontends judged at the client's egress);
//! and the verdicts do not depend on the order objects arrive in. A compiler
//! that lives across edits (its caches in play) compiles exactly what a
//! fresh one compiles after every edit.

mod support;

use std::{collections::BTreeMap, net::IpAddr};

use palisade_agent::{
    dataplane::wire,
    index::{Index, Object},
    model::{
        Model, Protocol,
        calico_selector::CalicoSelector,
        ordered::{
            Action, IpProtocolNumber, LabelMatch, Namespaces, Order, OrderedOrigin, OrderedPolicy,
            OrderedRef, OrderedRule, PeerMatch, PolicyOrder, Stage, Subject, Tier, TierKey,
        },
        policy::{PortRef, PortSpec},
    },
    policy::{
        Compiler, Direction, MapWriter, Maps, Profile, compile, diff,
        reference::{self, Party},
        sim,
    },
};
use proptest::prelude::*;
use serde_json::{Value, json};
use support::{NODE, canonical, node};

const NAMESPACES: [&str; 3] = ["x", "y", "z"];
const EXTERNALS: [&str; 6] = [
    "203.0.113.10",
    "169.254.169.254",
    "10.0.9.9",
    "2001:db8::5",
    "fd00:ec2::254",
    "100.100.100.200",
];
const PORTS: [(Protocol, u16); 6] = [
    (Protocol::Tcp, 53),
    (Protocol::Tcp, 80),
    (Protocol::Tcp, 81),
    (Protocol::Udp, 53),
    (Protocol::Udp, 80),
    (Protocol::Tcp, 8080),
];

fn label_map() -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop::sample::select(vec!["a", "b", "c"])),
        prop::option::of(prop::sample::select(vec!["fe", "be"])),
    )
        .prop_map(|(app, role)| {
            let mut m = serde_json::Map::new();
            if let Some(a) = app {
                m.insert("app".into(), json!(a));
            }
            if let Some(r) = role {
                m.insert("role".into(), json!(r));
            }
            Value::Object(m)
        })
}

fn selector() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({})),
        prop::sample::select(vec!["a", "b", "c"]).prop_map(|a| json!({"matchLabels": {"app": a}})),
        prop::sample::select(vec!["fe", "be"]).prop_map(|r| json!({"matchLabels": {"role": r}})),
        (
            prop::sample::select(vec!["In", "NotIn"]),
            prop::sample::subsequence(vec!["a", "b", "c"], 1..3)
        )
            .prop_map(
                |(op, v)| json!({"matchExpressions": [{"key": "app", "operator": op, "values": v}]})
            ),
        prop::sample::select(vec!["Exists", "DoesNotExist"])
            .prop_map(|op| json!({"matchExpressions": [{"key": "role", "operator": op}]})),
    ]
}

fn ns_selector() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({})),
        prop::sample::select(vec!["blue", "red"]).prop_map(|t| json!({"matchLabels": {"team": t}})),
        prop::sample::select(NAMESPACES.to_vec())
            .prop_map(|n| json!({"matchLabels": {"kubernetes.io/metadata.name": n}})),
    ]
}

fn cidr() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({"cidr": "0.0.0.0/0"})),
        Just(json!({"cidr": "0.0.0.0/0", "except": ["169.254.169.254/32"]})),
        Just(json!({"cidr": "169.254.169.254/32"})),
        Just(json!({"cidr": "100.64.0.0/10"})),
        Just(json!({"cidr": "203.0.113.0/24"})),
        (1u8..4).prop_map(
            |n| json!({"cidr": format!("10.0.{n}.0/24"), "except": [format!("10.0.{n}.11/32")]})
        ),
        Just(json!({"cidr": "10.0.0.0/16", "except": ["10.0.2.0/24", "10.0.9.0/24"]})),
        (1u8..4, 10u8..13).prop_map(|(n, h)| json!({"cidr": format!("10.0.{n}.{h}/32")})),
        // IPv6 blocks that cover ::ffff:0:0/96, where the kernel keeps IPv4.
        Just(json!({"cidr": "::/0"})),
        Just(json!({"cidr": "::/1", "except": ["2001:db8::/32"]})),
        Just(json!({"cidr": "2001:db8::/32"})),
    ]
}

fn peer() -> impl Strategy<Value = Value> {
    prop_oneof![
        selector().prop_map(|s| json!({"podSelector": s})),
        ns_selector().prop_map(|s| json!({"namespaceSelector": s})),
        (ns_selector(), selector())
            .prop_map(|(n, p)| json!({"namespaceSelector": n, "podSelector": p})),
        cidr().prop_map(|c| json!({"ipBlock": c})),
    ]
}

fn port() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!({"port": 80})),
        Just(json!({"port": 81, "protocol": "TCP"})),
        Just(json!({"protocol": "UDP", "port": 53})),
        Just(json!({"protocol": "UDP"})),
        Just(json!({"port": 80, "endPort": 81})),
        Just(json!({"port": "http"})),
        Just(json!({"port": "dns", "protocol": "UDP"})),
    ]
}

fn rule(peer_key: &'static str) -> impl Strategy<Value = Value> {
    (
        prop::collection::vec(peer(), 0..3),
        prop::collection::vec(port(), 0..3),
    )
        .prop_map(move |(peers, ports)| {
            let mut r = serde_json::Map::new();
            if !peers.is_empty() {
                r.insert(peer_key.into(), json!(peers));
            }
            if !ports.is_empty() {
                r.insert("ports".into(), json!(ports));
            }
            Value::Object(r)
        })
}

fn policy(i: usize) -> impl Strategy<Value = Value> {
    (
        prop::sample::select(NAMESPACES.to_vec()),
        selector(),
        prop::option::of(prop::collection::vec(rule("from"), 0..3)),
        prop::option::of(prop::collection::vec(rule("to"), 0..3)),
        prop::sample::select(vec![
            None,
            Some(vec!["Ingress"]),
            Some(vec!["Egress"]),
            Some(vec!["Ingress", "Egress"]),
        ]),
    )
        .prop_map(move |(ns, sel, ingress, egress, types)| {
            let mut spec = serde_json::Map::new();
            spec.insert("podSelector".into(), sel);
            if let Some(i) = ingress {
                spec.insert("ingress".into(), json!(i));
            }
            if let Some(e) = egress {
                spec.insert("egress".into(), json!(e));
            }
            if let Some(t) = types {
                spec.insert("policyTypes".into(), json!(t));
            }
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                   "metadata": {"name": format!("p{i}"), "namespace": ns}, "spec": spec})
        })
}

/// Frontend address of Service `s<i>`.
const FRONTENDS: [&str; 2] = ["10.96.0.1", "10.96.0.2"];
/// (name, protocol, Service port, target port) a Service may have.
const SERVICE_PORTS: [(&str, &str, u16, u16); 3] = [
    ("web", "TCP", 1080, 80),
    ("dns", "UDP", 53, 53),
    ("alt", "TCP", 81, 8080),
];
/// Frontend ports probed: the Service ports and one that is none.
const FRONTEND_PORTS: [(Protocol, u16); 4] = [
    (Protocol::Tcp, 1080),
    (Protocol::Udp, 53),
    (Protocol::Tcp, 81),
    (Protocol::Tcp, 80),
];
/// Backend addresses: the pods' and two external ones (one the metadata address).
const BACKENDS: [&str; 8] = [
    "10.0.1.10",
    "10.0.2.10",
    "10.0.3.10",
    "10.0.1.11",
    "10.0.2.11",
    "10.0.3.11",
    "169.254.169.254",
    "203.0.113.10",
];

/// Service `s<i>` and its two EndpointSlices (one of whose port names may
/// not match, so it adds no backends).
fn service(i: usize) -> impl Strategy<Value = Vec<Value>> {
    (
        prop::sample::subsequence(SERVICE_PORTS.to_vec(), 1..=3),
        prop::collection::vec(prop::sample::select(BACKENDS.to_vec()), 0..3),
        prop::collection::vec(prop::sample::select(BACKENDS.to_vec()), 0..3),
        prop::bool::ANY,
    )
        .prop_map(move |(ports, a, b, b_unnamed)| {
            let name = format!("s{i}");
            let ns = NAMESPACES[i % 3];
            let svc_ports: Vec<Value> = ports
                .iter()
                .map(|(n, proto, port, target)| {
                    json!({"name": n, "protocol": proto, "port": port, "targetPort": target})
                })
                .collect();
            let slice = |suffix: &str, addrs: &[&str], unnamed: bool| {
                let slice_ports: Vec<Value> = ports
                    .iter()
                    .map(|(n, proto, _, target)| {
                        json!({"name": if unnamed { "" } else { *n }, "protocol": proto, "port": target})
                    })
                    .collect();
                let endpoints: Vec<Value> =
                    addrs.iter().map(|a| json!({"addresses": [a]})).collect();
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                       "metadata": {"name": format!("{name}-{suffix}"), "namespace": ns,
                                    "labels": {"kubernetes.io/service-name": name}},
                       "addressType": "IPv4", "endpoints": endpoints, "ports": slice_ports})
            };
            vec![
                json!({"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": name, "namespace": ns},
                       "spec": {"clusterIP": FRONTENDS[i], "ports": svc_ports}}),
                slice("a", &a, false),
                slice("b", &b, b_unnamed),
            ]
        })
}

#[derive(Debug, Clone)]
struct Case {
    objects: Vec<Value>,
    profile: Profile,
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(prop::sample::select(vec!["blue", "red"]), 3),
        prop::collection::vec((label_map(), prop::bool::ANY), 6),
        (0usize..5).prop_flat_map(|n| (0..n).map(policy).collect::<Vec<_>>()),
        (0usize..=FRONTENDS.len()).prop_flat_map(|n| (0..n).map(service).collect::<Vec<_>>()),
        prop::bool::ANY,
        prop::bool::ANY,
        prop::bool::ANY,
        prop::bool::ANY,
    )
        .prop_map(|(teams, pods, policies, services, default_deny, block_metadata, dns_exempt, metadata_dns)| {
            let mut objects = Vec::new();
            for (n, team) in NAMESPACES.iter().zip(&teams) {
                objects.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": {"team": team}}}));
            }
            for (i, (labels, alt_port)) in pods.into_iter().enumerate() {
                let ns = NAMESPACES[i % 3];
                // Named ports differ between pods so that egress names resolve per peer.
                let http = if alt_port { 8080 } else { 80 };
                objects.push(json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": format!("p{i}"), "namespace": ns, "labels": labels},
                    "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "i", "ports": [
                        {"name": "http", "containerPort": http}, {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
                    "status": {"podIP": format!("10.0.{}.{}", i % 3 + 1, 10 + i / 3)}
                }));
            }
            objects.extend(policies);
            objects.extend(services.into_iter().flatten());
            let mut profile = Profile { default_deny, block_metadata, metadata_dns, ..Profile::default() };
            if dns_exempt {
                profile.default_deny_exempt.insert("z".into());
            }
            Case { objects, profile }
        })
}

/// A Calico selector over the generated labels.
fn calico_sel() -> impl Strategy<Value = CalicoSelector> {
    prop::sample::select(vec![
        "all()",
        "app == 'a'",
        "app != 'b'",
        "role in {'fe'}",
        "!has(role)",
        "has(app) && role == 'be'",
        "app == 'c' || role == 'fe'",
    ])
    .prop_map(|s| CalicoSelector::parse(s).expect("valid selector"))
}

fn calico_ns_sel() -> impl Strategy<Value = CalicoSelector> {
    prop::sample::select(vec![
        "all()",
        "team == 'blue'",
        "kubernetes.io/metadata.name == 'x'",
        "kubernetes.io/metadata.name not in {'y', 'z'}",
    ])
    .prop_map(|s| CalicoSelector::parse(s).expect("valid selector"))
}

fn net() -> impl Strategy<Value = ipnet::IpNet> {
    prop::sample::select(vec![
        "0.0.0.0/0",
        "169.254.169.254/32",
        "10.0.1.0/24",
        "10.0.2.11/32",
        "203.0.113.0/24",
        "::/0",
        "10.0.0.0/16",
    ])
    .prop_map(|s| s.parse().expect("net"))
}

fn peer_match() -> impl Strategy<Value = PeerMatch> {
    (
        prop::option::of(prop_oneof![
            calico_ns_sel().prop_map(|s| Namespaces::Matching(LabelMatch::Calico(s))),
            prop::sample::select(NAMESPACES.to_vec()).prop_map(|n| Namespaces::Named(n.into())),
        ]),
        prop::option::of(calico_sel().prop_map(LabelMatch::Calico)),
        prop::option::of(calico_sel().prop_map(LabelMatch::Calico)),
        prop::option::of(prop::collection::vec(net(), 1..3)),
        prop::collection::vec(net(), 0..2),
    )
        .prop_map(|(namespaces, pods, not_pods, nets, not_nets)| PeerMatch {
            namespaces,
            pods,
            not_pods,
            nets,
            not_nets,
        })
}

fn port_spec() -> impl Strategy<Value = PortSpec> {
    prop_oneof![
        Just(PortSpec {
            protocol: Protocol::Tcp,
            port: Some(PortRef::Range { start: 80, end: 80 })
        }),
        Just(PortSpec {
            protocol: Protocol::Tcp,
            port: Some(PortRef::Range {
                start: 80,
                end: 8080
            })
        }),
        Just(PortSpec {
            protocol: Protocol::Udp,
            port: None
        }),
        Just(PortSpec {
            protocol: Protocol::Udp,
            port: Some(PortRef::Range { start: 53, end: 53 })
        }),
        Just(PortSpec {
            protocol: Protocol::Tcp,
            port: Some(PortRef::Named("http".into()))
        }),
        Just(PortSpec {
            protocol: Protocol::Udp,
            port: Some(PortRef::Named("dns".into()))
        }),
    ]
}

fn ordered_rule() -> impl Strategy<Value = OrderedRule> {
    (
        prop::sample::select(vec![Action::Allow, Action::Deny, Action::Pass, Action::Log]),
        prop::option::of(prop::collection::vec(peer_match(), 1..3)),
        prop::option::of(prop::sample::select(vec![6u8, 17, 1])),
        prop::option::of(prop::sample::select(vec![6u8, 17])),
        prop::option::of(prop::collection::vec(port_spec(), 1..3)),
        prop::collection::vec(port_spec(), 0..2),
        prop::option::weighted(0.3, peer_match()),
    )
        .prop_map(
            |(action, peers, protocol, not_protocol, ports, not_ports, local)| OrderedRule {
                action,
                peers,
                protocol: protocol.map(IpProtocolNumber),
                not_protocol: not_protocol.map(IpProtocolNumber),
                ports,
                not_ports,
                local,
            },
        )
}

/// Ordered policies in every stage: Admin, two Calico tiers (one of them
/// `default`, next to NetworkPolicy), Baseline.
fn ordered_policy(i: usize) -> impl Strategy<Value = OrderedPolicy> {
    (
        0usize..5,
        prop::option::of(0u8..3),
        prop_oneof![
            calico_ns_sel().prop_map(|s| Namespaces::Matching(LabelMatch::Calico(s))),
            prop::sample::select(NAMESPACES.to_vec()).prop_map(|n| Namespaces::Named(n.into())),
        ],
        calico_sel(),
        prop::option::of(prop::collection::vec(ordered_rule(), 0..3)),
        prop::option::of(prop::collection::vec(ordered_rule(), 0..3)),
    )
        .prop_map(move |(tier, order, namespaces, pods, ingress, egress)| {
            let name = format!("o{i}");
            let calico = |t: &str, order: Option<f64>, end: bool| {
                (
                    Tier {
                        key: TierKey {
                            stage: Stage::Calico,
                            order: order.map(Order),
                            name: t.into(),
                        },
                        end_of_tier_deny: end,
                    },
                    OrderedOrigin::Calico {
                        tier: t.into(),
                        namespace: None,
                        name: name.clone(),
                    },
                )
            };
            let (tier, origin) = match tier {
                0 => (
                    Tier {
                        key: TierKey {
                            stage: Stage::Admin,
                            order: None,
                            name: "admin".into(),
                        },
                        end_of_tier_deny: false,
                    },
                    OrderedOrigin::Admin(name.clone()),
                ),
                1 => calico("security", Some(100.0), true),
                2 => calico("open", Some(200.0), false),
                3 => calico("default", Some(1_000_000.0), true),
                _ => (
                    Tier {
                        key: TierKey {
                            stage: Stage::Baseline,
                            order: None,
                            name: "baseline".into(),
                        },
                        end_of_tier_deny: false,
                    },
                    OrderedOrigin::Baseline(name.clone()),
                ),
            };
            OrderedPolicy {
                origin,
                tier,
                // Around NetworkPolicy's 1000 in the default tier.
                order: PolicyOrder {
                    order: order.map(|o| Order(f64::from(o) * 999.0)),
                    name: name.clone(),
                },
                subject: Subject {
                    namespaces,
                    pods: LabelMatch::Calico(pods),
                },
                ingress,
                egress,
            }
        })
}

fn ordered_set() -> impl Strategy<Value = BTreeMap<OrderedRef, OrderedPolicy>> {
    (0usize..5)
        .prop_flat_map(|n| (0..n).map(ordered_policy).collect::<Vec<_>>())
        .prop_map(|ps| {
            ps.into_iter()
                .map(|p| {
                    (
                        OrderedRef::CalicoGlobalNetworkPolicy(p.order.name.clone()),
                        p,
                    )
                })
                .collect()
        })
}

/// One change of the kind a watch delivers.
#[derive(Debug, Clone)]
enum Edit {
    RelabelPod(usize, Value),
    MovePod(usize, u8),
    DeletePod(usize),
    RelabelNamespace(usize, &'static str),
    PutPolicy(Value),
    DeletePolicy(usize),
    ToggleDefaultDeny,
    ToggleMetadataBlock,
    ToggleMetadataDns,
    /// Service `s<i>` and its slices, replaced.
    PutService(usize, Vec<Value>),
    DeleteSlices(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => (0usize..6, label_map()).prop_map(|(i, l)| Edit::RelabelPod(i, l)),
        // New addresses may collide with each other: precedence must hold too.
        1 => (0usize..6, 20u8..23).prop_map(|(i, h)| Edit::MovePod(i, h)),
        1 => (0usize..6).prop_map(Edit::DeletePod),
        2 => (0usize..3, prop::sample::select(vec!["blue", "red", "green"]))
            .prop_map(|(i, t)| Edit::RelabelNamespace(i, t)),
        3 => (0usize..5).prop_flat_map(policy).prop_map(Edit::PutPolicy),
        1 => (0usize..5).prop_map(Edit::DeletePolicy),
        1 => Just(Edit::ToggleDefaultDeny),
        1 => Just(Edit::ToggleMetadataBlock),
        1 => Just(Edit::ToggleMetadataDns),
        2 => (0usize..FRONTENDS.len())
            .prop_flat_map(|i| service(i).prop_map(move |s| Edit::PutService(i, s))),
        1 => (0usize..FRONTENDS.len()).prop_map(Edit::DeleteSlices),
    ]
}

fn named<'a>(objects: &'a mut [Value], kind: &str, name: &str) -> Option<&'a mut Value> {
    objects
        .iter_mut()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn apply_edit(objects: &mut Vec<Value>, profile: &mut Profile, e: &Edit) {
    match e {
        Edit::RelabelPod(i, labels) => {
            if let Some(p) = named(objects, "Pod", &format!("p{i}")) {
                p["metadata"]["labels"] = labels.clone();
            }
        }
        Edit::MovePod(i, h) => {
            if let Some(p) = named(objects, "Pod", &format!("p{i}")) {
                p["status"]["podIP"] = json!(format!("10.0.{}.{h}", i % 3 + 1));
            }
        }
        Edit::DeletePod(i) => {
            objects.retain(|o| !(o["kind"] == "Pod" && o["metadata"]["name"] == format!("p{i}")))
        }
        Edit::RelabelNamespace(i, team) => {
            if let Some(n) = named(objects, "Namespace", NAMESPACES[*i]) {
                n["metadata"]["labels"]["team"] = json!(team);
            }
        }
        Edit::PutPolicy(p) => {
            let name = p["metadata"]["name"].clone();
            objects.retain(|o| !(o["kind"] == "NetworkPolicy" && o["metadata"]["name"] == name));
            objects.push(p.clone());
        }
        Edit::DeletePolicy(i) => objects.retain(|o| {
            !(o["kind"] == "NetworkPolicy" && o["metadata"]["name"] == format!("p{i}"))
        }),
        Edit::ToggleDefaultDeny => profile.default_deny = !profile.default_deny,
        Edit::ToggleMetadataBlock => profile.block_metadata = !profile.block_metadata,
        Edit::ToggleMetadataDns => profile.metadata_dns = !profile.metadata_dns,
        Edit::PutService(i, svc) => {
            let name = format!("s{i}");
            objects.retain(|o| !owned_by_service(o, &name));
            objects.extend(svc.iter().cloned());
        }
        Edit::DeleteSlices(i) => {
            let name = format!("s{i}");
            objects.retain(|o| !(o["kind"] == "EndpointSlice" && owned_by_service(o, &name)));
        }
    }
}

fn owned_by_service(o: &Value, name: &str) -> bool {
    (o["kind"] == "Service" && o["metadata"]["name"] == name)
        || (o["kind"] == "EndpointSlice"
            && o["metadata"]["labels"]["kubernetes.io/service-name"] == name)
}

fn build(objects: &[Value]) -> Model {
    let mut index = Index::default();
    for v in objects {
        let o = match v["kind"].as_str() {
            Some("Namespace") => Object::Namespace(Box::new(
                serde_json::from_value(v.clone()).expect("namespace"),
            )),
            Some("Pod") => Object::Pod(Box::new(serde_json::from_value(v.clone()).expect("pod"))),
            Some("Service") => Object::Service(Box::new(
                serde_json::from_value(v.clone()).expect("service"),
            )),
            Some("EndpointSlice") => {
                Object::EndpointSlice(Box::new(serde_json::from_value(v.clone()).expect("slice")))
            }
            _ => {
                Object::NetworkPolicy(Box::new(serde_json::from_value(v.clone()).expect("policy")))
            }
        };
        index.apply(&o).expect("generated objects are valid");
    }
    index.model().clone()
}

/// Every verdict, compiled vs reference, as mismatch descriptions.
fn mismatches(model: &Model, profile: &Profile) -> Vec<String> {
    mismatches_of(&compile(model, &node(), profile), model, profile)
}

/// Every verdict of a compiled state against the reference, for `model`.
fn mismatches_of(
    state: &palisade_agent::policy::DesiredState,
    model: &Model,
    profile: &Profile,
) -> Vec<String> {
    let mut out = Vec::new();
    let pods: Vec<_> = model.pods.values().collect();
    let node_ip: IpAddr = node().addresses[0];
    for (proto, port) in PORTS {
        for src in &pods {
            let s = Party::Pod(src, src.ips[0]);
            let mut dests: Vec<(String, Party<'_>)> = pods
                .iter()
                .filter(|d| d.key() != src.key())
                .map(|d| (d.key().to_string(), Party::Pod(d, d.ips[0])))
                .collect();
            dests.extend(
                EXTERNALS
                    .iter()
                    .map(|e| (e.to_string(), Party::External(e.parse().expect("ip")))),
            );
            for (dname, d) in dests {
                let dip = match d {
                    Party::Pod(_, ip) | Party::External(ip) | Party::Node(ip) => ip,
                };
                let want = reference::allowed(model, profile, s, d, proto, port);
                let got =
                    sim::connection_allowed(&state.maps, src.ips[0], dip, proto.number(), port);
                if want != got {
                    out.push(format!(
                        "{} -> {dname} {proto}/{port}: reference {want}, compiled {got}",
                        src.key()
                    ));
                }
            }
            let want = reference::allowed(model, profile, Party::Node(node_ip), s, proto, port);
            let got =
                sim::connection_allowed(&state.maps, node_ip, src.ips[0], proto.number(), port);
            if want != got {
                out.push(format!(
                    "node -> {} {proto}/{port}: reference {want}, compiled {got}",
                    src.key()
                ));
            }
        }
    }
    // Service frontends, at the client's egress.
    for src in &pods {
        for frontend in FRONTENDS {
            let f: IpAddr = frontend.parse().expect("ip");
            // Without a Service it is a plain external address, checked above.
            if !model.services.values().any(|s| s.frontends.contains(&f)) {
                continue;
            }
            for (proto, port) in FRONTEND_PORTS {
                let want = reference::service_egress_allowed(
                    model,
                    profile,
                    Party::Pod(src, src.ips[0]),
                    f,
                    proto,
                    port,
                );
                let got = sim::judge(
                    &state.maps,
                    src.ips[0],
                    f,
                    Direction::Egress,
                    proto.number(),
                    port,
                )
                .allows();
                if want != got {
                    out.push(format!(
                        "{} -> service {frontend} {proto}/{port}: reference {want}, compiled {got}",
                        src.key()
                    ));
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Ordered policies that deny, pass and log, in every stage around
    /// NetworkPolicy: the flattened maps decide as the ordered reference.
    #[test]
    fn ordered_policies_compile_to_what_the_reference_decides(c in case(), ordered in ordered_set()) {
        let mut model = build(&c.objects);
        model.ordered = ordered;
        let bad = mismatches(&model, &c.profile);
        prop_assert!(bad.is_empty(), "{} mismatches, first: {:?}\nprofile: {:?}\nordered: {:#?}\nobjects: {}", bad.len(), bad.first(), c.profile,
            model.ordered, serde_json::to_string(&c.objects).unwrap_or_default());
    }

    #[test]
    fn compiled_maps_agree_with_the_reference(c in case()) {
        let model = build(&c.objects);
        let bad = mismatches(&model, &c.profile);
        prop_assert!(bad.is_empty(), "{} mismatches, first: {:?}\nobjects: {}", bad.len(), bad.first(),
            serde_json::to_string(&c.objects).unwrap_or_default());
    }

    /// One compiler across changes (its caches in play) gives what the
    /// reference gives for the model after the change.
    #[test]
    fn a_long_lived_compiler_agrees_with_the_reference_after_changes(first in case(), second in case()) {
        let mut compiler = palisade_agent::policy::Compiler::default();
        let _ = compiler.compile(&build(&first.objects), &node(), &second.profile);
        let model = build(&second.objects);
        let state = compiler.compile(&model, &node(), &second.profile);
        let bad = mismatches_of(&state, &model, &second.profile);
        prop_assert!(bad.is_empty(), "{} mismatches, first: {:?}", bad.len(), bad.first());
    }

    /// The incremental paths (a pod re-signed alone, rule matches updated
    /// by the identity delta, namespace relabels, new CIDRs, profile
    /// changes) give, after every edit, the state a fresh compile gives.
    #[test]
    fn a_compiler_kept_across_edits_compiles_what_a_fresh_one_does(
        c in case(),
        edits in prop::collection::vec(edit(), 1..10),
    ) {
        let mut compiler = Compiler::default();
        let mut objects = c.objects.clone();
        let mut profile = c.profile.clone();
        let _ = compiler.compile(&build(&objects), &node(), &profile);
        for (step, e) in edits.iter().enumerate() {
            apply_edit(&mut objects, &mut profile, e);
            let model = build(&objects);
            let kept = canonical(&compiler.compile(&model, &node(), &profile));
            let fresh = canonical(&compile(&model, &node(), &profile));
            prop_assert_eq!(kept, fresh, "after edit {} {:?}", step, e);
        }
    }

    /// Two logical keys never name one kernel entry (IPv4 and v4-mapped
    /// IPv6), the mirror holds what the compiler wrote, and IPv4 has its
    /// root entry, so no IPv6 prefix can match an IPv4 address.
    #[test]
    fn every_logical_key_is_its_own_kernel_key(c in case()) {
        let state = compile(&build(&c.objects), &node(), &c.profile);
        let ipcache: std::collections::BTreeSet<_> = state.maps.ipcache.keys()
            .map(|n| { let k = wire::ipcache_key(n); (k.prefix_len(), k.data()) }).collect();
        prop_assert_eq!(ipcache.len(), state.maps.ipcache.len());
        let endpoints: std::collections::BTreeSet<_> =
            state.maps.endpoints.keys().map(|ip| wire::addr(*ip)).collect();
        prop_assert_eq!(endpoints.len(), state.maps.endpoints.len());
        prop_assert!(state.maps.ipcache.contains_key(&"0.0.0.0/0".parse().expect("net")));
        let mut mirror = Maps::default();
        for op in diff(&Maps::default(), &state.maps) {
            let Ok(()) = mirror.apply(&op);
        }
        prop_assert_eq!(mirror, state.maps);
    }

    #[test]
    fn verdicts_do_not_depend_on_arrival_order(c in case(), seed in any::<u64>()) {
        let mut shuffled = c.objects.clone();
        // A deterministic shuffle from the seed.
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let a = compile(&build(&c.objects), &node(), &c.profile);
        let b = compile(&build(&shuffled), &node(), &c.profile);
        prop_assert_eq!(a.maps, b.maps);
    }
}
