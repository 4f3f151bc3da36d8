//! Builders for engine tests: small models written as YAML, the way users
//! write them.

#![expect(dead_code, reason = "each test file uses a different subset")]

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use ipnet::IpNet;
use palisade_agent::{
    index::{Index, Object},
    model::{Model, Node, ObjectRef},
    policy::{
        DesiredState, Direction,
        state::{EndpointInfo, RuleRef},
    },
    source::yaml::parse_objects,
};

/// A model from YAML documents (Namespaces, Pods, NetworkPolicies); panics on
/// any rejected object, since tests mean them to be valid.
pub(crate) fn model(yaml: &str) -> Model {
    let mut index = Index::default();
    for o in objects(yaml) {
        index
            .apply(&o)
            .unwrap_or_else(|e| panic!("test object rejected: {e}"));
    }
    index.model().clone()
}

pub(crate) fn objects(yaml: &str) -> Vec<Object> {
    parse_objects("test", yaml)
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("test YAML: {e}")))
        .collect()
}

pub(crate) const NODE: &str = "n1";

pub(crate) fn node() -> Node {
    Node {
        name: NODE.into(),
        addresses: vec!["172.31.0.1".parse().expect("ip")],
        ..Node::default()
    }
}

/// A pod document on node n1.
pub(crate) fn pod(ns: &str, name: &str, labels: &str, ip: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\n\
         spec: {{nodeName: {NODE}, containers: [{{name: c, image: i, ports: [{{name: http, containerPort: 80}}, {{name: dns, containerPort: 53, protocol: UDP}}]}}]}}\n\
         status: {{podIP: \"{ip}\"}}\n"
    )
}

pub(crate) fn ns(name: &str, labels: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{labels}}}}}\n"
    )
}

/// The classic model: namespaces x, y, z (labelled ns: x|y|z), pods a, b, c
/// in each (labelled pod: a|b|c), at 10.0.<1..3>.<10..12>.
pub(crate) fn xyz() -> String {
    let mut s = String::new();
    for (i, n) in ["x", "y", "z"].iter().enumerate() {
        s.push_str(&ns(n, &format!("ns: {n}")));
        for (j, p) in ["a", "b", "c"].iter().enumerate() {
            s.push_str(&pod(
                n,
                p,
                &format!("pod: {p}"),
                &format!("10.0.{}.{}", i + 1, 10 + j),
            ));
        }
    }
    s
}

pub(crate) fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// Address of pod `ns/p` in the xyz model.
pub(crate) fn xyz_ip(name: &str) -> IpAddr {
    let (n, p) = name.split_once('/').expect("ns/pod");
    let i = ["x", "y", "z"]
        .iter()
        .position(|x| *x == n)
        .expect("namespace")
        + 1;
    let j = ["a", "b", "c"].iter().position(|x| *x == p).expect("pod") + 10;
    ip(&format!("10.0.{i}.{j}"))
}

pub(crate) const XYZ: [&str; 9] = [
    "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
];

/// A compiled state with its ids replaced by what they stand for: an
/// identity by the addresses that carry it, an endpoint by its pod, a rule
/// id by the rule. Two compiles of one model are equivalent exactly when
/// their canonical forms are equal, whatever ids they handed out.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Canonical {
    pub ipcache: BTreeMap<IpNet, (u32, Vec<IpNet>)>,
    pub endpoints: BTreeMap<IpAddr, (Option<ObjectRef>, u32)>,
    pub policy: BTreeSet<CanonicalEntry>,
    pub endpoint_info: BTreeMap<Option<ObjectRef>, EndpointInfo>,
}

/// (endpoint's pod, direction, protocol, peer addresses or any, port, port bits, rule).
pub(crate) type CanonicalEntry = (
    Option<ObjectRef>,
    Direction,
    u8,
    Option<Vec<IpNet>>,
    u16,
    u8,
    Option<RuleRef>,
);

pub(crate) fn canonical(state: &DesiredState) -> Canonical {
    let mut classes: BTreeMap<u32, Vec<IpNet>> = BTreeMap::new();
    for (net, e) in &state.maps.ipcache {
        classes.entry(e.identity).or_default().push(*net);
    }
    let pod_of = |id: u32| {
        state
            .endpoint_info
            .get(&id)
            .and_then(|info| info.pod.clone())
    };
    Canonical {
        ipcache: state
            .maps
            .ipcache
            .iter()
            .map(|(net, e)| (*net, (e.flags, classes[&e.identity].clone())))
            .collect(),
        endpoints: state
            .maps
            .endpoints
            .iter()
            .map(|(ip, e)| (*ip, (pod_of(e.id), e.flags)))
            .collect(),
        policy: state
            .maps
            .policy
            .iter()
            .map(|(k, rule)| {
                (
                    pod_of(k.endpoint),
                    k.dir,
                    k.proto,
                    classes.get(&k.identity).cloned(),
                    k.port,
                    k.port_bits,
                    state.rules.get(rule).cloned(),
                )
            })
            .collect(),
        endpoint_info: state
            .endpoint_info
            .values()
            .map(|info| (info.pod.clone(), info.clone()))
            .collect(),
    }
}
