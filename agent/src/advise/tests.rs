use std::time::{Duration, SystemTime};

use super::{
    check::{Judge, advise_and_judge, assert_observed_allowed, ip, model_of},
    input::parse_flows,
    *,
};
use crate::{
    flows::observed::{Connection, Workload},
    policy::Direction,
};

pub(super) fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(super) fn pod(ns: &str, workload: &str, name: &str, addr: &str, kv: &[(&str, &str)]) -> Peer {
    Peer {
        kind: PeerKind::Pod,
        ip: ip(addr),
        namespace: Some(ns.into()),
        pod: Some(name.into()),
        workload: Some(Workload {
            kind: "Deployment".into(),
            name: workload.into(),
        }),
        labels: labels(kv),
        service: None,
    }
}

fn bare(ns: &str, name: &str, addr: &str, kv: &[(&str, &str)]) -> Peer {
    Peer {
        workload: None,
        ..pod(ns, "-", name, addr, kv)
    }
}

pub(super) fn address(kind: PeerKind, addr: &str) -> Peer {
    Peer {
        kind,
        ip: ip(addr),
        namespace: None,
        pod: None,
        workload: None,
        labels: Labels::new(),
        service: None,
    }
}

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000 + secs)
}

pub(super) fn record(
    direction: Direction,
    protocol: &str,
    port: Option<u16>,
    named: Option<&str>,
    src: &Peer,
    dst: &Peer,
) -> ObservedFlow {
    ObservedFlow {
        connection: Connection {
            direction,
            protocol: protocol.into(),
            port,
            named_port: named.map(str::to_string),
            src: src.clone(),
            dst: dst.clone(),
        },
        count: 1,
        first_seen: t(0),
        last_seen: t(60),
    }
}

/// The records the agents write for one connection: egress where the
/// client is a pod, ingress where the server is.
pub(super) fn seen(
    protocol: &str,
    port: u16,
    named: Option<&str>,
    src: &Peer,
    dst: &Peer,
) -> Vec<ObservedFlow> {
    let mut v = Vec::new();
    if src.kind == PeerKind::Pod {
        v.push(record(
            Direction::Egress,
            protocol,
            Some(port),
            named,
            src,
            dst,
        ));
    }
    if dst.kind == PeerKind::Pod {
        v.push(record(
            Direction::Ingress,
            protocol,
            Some(port),
            named,
            src,
            dst,
        ));
    }
    v
}

fn web() -> Peer {
    pod(
        "shop",
        "web",
        "web-7d9f-abcde",
        "10.244.1.10",
        &[("app", "web"), ("pod-template-hash", "7d9f")],
    )
}

fn api() -> Peer {
    pod(
        "shop",
        "api",
        "api-5c4b-xyz12",
        "10.244.1.20",
        &[("app", "api"), ("pod-template-hash", "5c4b")],
    )
}

fn db() -> Peer {
    Peer {
        workload: Some(Workload {
            kind: "StatefulSet".into(),
            name: "db".into(),
        }),
        ..pod(
            "data",
            "db",
            "db-0",
            "10.244.2.30",
            &[
                ("app", "db"),
                ("controller-revision-hash", "db-6b8"),
                ("statefulset.kubernetes.io/pod-name", "db-0"),
                ("apps.kubernetes.io/pod-index", "0"),
            ],
        )
    }
}

fn coredns() -> Peer {
    pod(
        "kube-system",
        "coredns",
        "coredns-1",
        "10.244.0.5",
        &[("k8s-app", "kube-dns"), ("pod-template-hash", "66")],
    )
}

fn shop() -> Vec<ObservedFlow> {
    [
        seen("TCP", 8080, Some("http"), &web(), &api()),
        seen("TCP", 5432, Some("pg"), &api(), &db()),
        seen(
            "TCP",
            443,
            None,
            &api(),
            &address(PeerKind::External, "192.0.2.7"),
        ),
        seen("UDP", 53, Some("dns"), &api(), &coredns()),
        seen(
            "TCP",
            8080,
            Some("http"),
            &address(PeerKind::External, "203.0.113.9"),
            &web(),
        ),
    ]
    .concat()
}

fn policy<'a>(a: &'a Advice, name: &str) -> &'a AdvisedPolicy {
    a.policies
        .iter()
        .find(|p| p.workload.name == name)
        .unwrap_or_else(|| panic!("no policy for {name}"))
}

fn pods(ns: &str, kv: &[(&str, &str)]) -> Target {
    Target::Pods {
        namespace: ns.into(),
        selection: Selection {
            match_labels: labels(kv),
            absent: Default::default(),
        },
    }
}

fn tcp(n: u16) -> Port {
    Port {
        protocol: Protocol::Tcp,
        port: PortRef::Number(n),
    }
}

fn named(protocol: Protocol, n: &str) -> Port {
    Port {
        protocol,
        port: PortRef::Named(n.into()),
    }
}

#[test]
fn selectors_keep_only_stable_labels() {
    let a = advise(&shop(), &Options::default());
    assert_eq!(
        policy(&a, "web").selection.match_labels,
        labels(&[("app", "web")])
    );
    assert_eq!(
        policy(&a, "db").selection.match_labels,
        labels(&[("app", "db")])
    );
    let yaml = a.to_yaml().expect("renders");
    for unstable in UNSTABLE_LABELS {
        assert!(!yaml.contains(unstable), "{unstable} in\n{yaml}");
    }
}

#[test]
fn named_ports_where_every_record_names_them() {
    let a = advise(&shop(), &Options::default());
    assert_eq!(
        policy(&a, "api").ingress,
        [Rule {
            peers: vec![pods("shop", &[("app", "web")])],
            ports: vec![named(Protocol::Tcp, "http")],
        }]
    );
    // One record without the name: the number, which holds on every pod.
    let mut flows = shop();
    flows.extend(seen("TCP", 8080, None, &web(), &api()));
    let a = advise(&flows, &Options::default());
    assert_eq!(policy(&a, "api").ingress[0].ports, [tcp(8080)]);
    assert_eq!(policy(&a, "web").egress[0].ports, [tcp(8080)]);
}

#[test]
fn outside_addresses_are_single_address_blocks() {
    let mut flows = shop();
    flows.extend(seen(
        "TCP",
        443,
        None,
        &api(),
        &address(PeerKind::External, "2001:db8::7"),
    ));
    // The datapath's v4-mapped form is written as IPv4.
    flows.extend(seen(
        "TCP",
        443,
        None,
        &api(),
        &address(PeerKind::External, "::ffff:198.51.100.4"),
    ));
    let a = advise(&flows, &Options::default());
    let egress = &policy(&a, "api").egress;
    let blocks: Vec<String> = egress
        .iter()
        .flat_map(|r| &r.peers)
        .filter_map(|t| match t {
            Target::Block(n) => Some(n.to_string()),
            Target::Pods { .. } => None,
        })
        .collect();
    assert_eq!(
        blocks,
        ["192.0.2.7/32", "198.51.100.4/32", "2001:db8::7/128"]
    );
    // Three peers on the same port make one rule.
    assert_eq!(egress.iter().filter(|r| r.ports == [tcp(443)]).count(), 1);
    assert_eq!(
        policy(&a, "web").ingress,
        [Rule {
            peers: vec![Target::Block("203.0.113.9/32".parse().expect("net"))],
            ports: vec![named(Protocol::Tcp, "http")],
        }]
    );
}

#[test]
fn the_two_records_of_a_connection_are_one() {
    let flows = seen("TCP", 8080, Some("http"), &web(), &api());
    assert_eq!(flows.len(), 2);
    let a = advise(&flows, &Options::default());
    assert_eq!((a.records, a.connections), (2, 1));
    assert_eq!(policy(&a, "api").ingress.len(), 1);
    assert_eq!(policy(&a, "web").egress.len(), 1);
    // Another replica, another node's record: still one rule, one peer.
    let mut other = web();
    other.pod = Some("web-7d9f-fghij".into());
    other.ip = ip("10.244.3.11");
    let mut flows = flows;
    flows.extend(seen("TCP", 8080, Some("http"), &other, &api()));
    let a = advise(&flows, &Options::default());
    assert_eq!(a.connections, 1);
    assert_eq!(policy(&a, "api").ingress[0].peers.len(), 1);
}

#[test]
fn dns_to_the_resolver_is_kept_and_the_resolver_left_alone() {
    let flows = shop();
    let (a, yaml, judge) = advise_and_judge(&flows, &Options::default(), &[]);
    assert!(a.policies.iter().all(|p| p.workload.name != "coredns"));
    assert!(
        a.notes.iter().any(|n| n.contains("coredns")),
        "{:?}",
        a.notes
    );
    // The observed DNS flow makes no rule of its own: the DNS rule holds it.
    assert!(policy(&a, "api").egress.iter().all(|r| {
        !r.peers
            .contains(&pods("kube-system", &[("k8s-app", "kube-dns")]))
    }));
    for p in &a.policies {
        let np = a.network_policy(p);
        let egress = np.spec.and_then(|s| s.egress).expect("egress");
        let last = serde_json::to_value(egress.last()).expect("json");
        assert_eq!(
            last,
            serde_json::json!({
                "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
            })
        );
    }
    // Every workload reaches the resolver, seen or not, on 53 only.
    for client in [web(), api(), db()] {
        assert!(
            judge.allowed(&client, &coredns(), Protocol::Udp, 53),
            "{yaml}"
        );
        assert!(
            judge.allowed(&client, &coredns(), Protocol::Tcp, 53),
            "{yaml}"
        );
        assert!(
            !judge.allowed(&client, &coredns(), Protocol::Udp, 54),
            "{yaml}"
        );
    }
}

#[test]
fn the_dns_target_is_configurable() {
    let resolver = pod(
        "dns",
        "unbound",
        "unbound-1",
        "10.244.0.9",
        &[("app", "unbound")],
    );
    let mut flows = shop();
    flows.extend(seen("UDP", 53, None, &web(), &resolver));
    let options = Options {
        dns_namespace: "dns".into(),
        dns_selector: labels(&[("app", "unbound")]),
        ..Options::default()
    };
    let (a, yaml, judge) = advise_and_judge(&flows, &options, &[]);
    assert!(yaml.contains("kubernetes.io/metadata.name: dns"), "{yaml}");
    assert!(judge.allowed(&db(), &resolver, Protocol::Udp, 53), "{yaml}");
    // kube-dns is now an ordinary workload: api's flow to it is a rule.
    assert!(a.policies.iter().any(|p| p.workload.name == "coredns"));
    assert!(judge.allowed(&api(), &coredns(), Protocol::Udp, 53));
    assert!(!judge.allowed(&web(), &coredns(), Protocol::Udp, 53));
}

#[test]
fn the_shop_is_allowed_exactly() {
    let flows = shop();
    let stranger = pod("shop", "x", "x-1", "10.244.1.99", &[("app", "x")]);
    let (_, yaml, judge) =
        advise_and_judge(&flows, &Options::default(), std::slice::from_ref(&stranger));
    assert_observed_allowed(&judge, &flows, &yaml);
    let outsider = address(PeerKind::External, "198.51.100.1");
    for (src, dst, proto, port) in [
        (web(), api(), Protocol::Tcp, 8081),
        (web(), api(), Protocol::Udp, 8080),
        (web(), db(), Protocol::Tcp, 5432),
        (api(), web(), Protocol::Tcp, 8080),
        (stranger.clone(), api(), Protocol::Tcp, 8080),
        (api(), stranger.clone(), Protocol::Tcp, 443),
        (api(), outsider.clone(), Protocol::Tcp, 443),
        (outsider.clone(), web(), Protocol::Tcp, 8080),
        (
            db(),
            address(PeerKind::External, "192.0.2.7"),
            Protocol::Tcp,
            443,
        ),
    ] {
        assert!(
            !judge.allowed(&src, &dst, proto, port),
            "{proto} {:?} -> {:?}:{port} allowed by\n{yaml}",
            src.pod,
            dst.pod
        );
    }
}

#[test]
fn a_record_without_labels_does_not_erase_them() {
    let mut unknown = api();
    unknown.labels.clear();
    let flows = [
        seen("TCP", 8080, None, &web(), &api()),
        vec![record(
            Direction::Egress,
            "TCP",
            Some(9090),
            None,
            &web(),
            &unknown,
        )],
    ]
    .concat();
    let a = advise(&flows, &Options::default());
    assert_eq!(
        policy(&a, "api").selection.match_labels,
        labels(&[("app", "api")])
    );
}

/// A client reaches a Service when its egress allows every backend on the
/// target port: the records name the backend and its port, so the advice
/// opens the frontend too.
#[test]
fn a_connection_through_a_service_stays_open() {
    let mut replica = api();
    replica.pod = Some("api-5c4b-other".into());
    replica.ip = ip("10.244.1.21");
    let mut flows = Vec::new();
    for backend in [api(), replica.clone()] {
        let mut dst = backend;
        dst.service = Some("shop/api".into());
        flows.extend(seen("TCP", 8080, Some("http"), &web(), &dst));
    }
    let service = "---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec: {clusterIP: 10.96.0.20, ports: [{port: 80, targetPort: http}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: shop, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.20]}, {addresses: [10.244.1.21]}]
ports: [{port: 8080}]
";
    let yaml = advise(&flows, &Options::default())
        .to_yaml()
        .expect("renders");
    let judge = Judge::new(model_of(&(yaml.clone() + service), &flows, &[]));
    let frontend = ip("10.96.0.20");
    assert!(
        judge.service_allowed(&web(), frontend, Protocol::Tcp, 80),
        "{yaml}"
    );
    // The egress side only: a workload with a policy that never used it.
    assert!(!judge.service_allowed(&api(), frontend, Protocol::Tcp, 80));
    assert!(!judge.service_allowed(&web(), frontend, Protocol::Tcp, 81));
}

#[test]
fn a_workload_whose_labels_another_extends_excludes_it() {
    let shop_all = pod("shop", "shop", "shop-1", "10.244.1.40", &[("app", "shop")]);
    let shop_db = pod(
        "shop",
        "shop-db",
        "shop-db-1",
        "10.244.1.41",
        &[("app", "shop"), ("tier", "db")],
    );
    let flows = [
        seen("TCP", 80, None, &shop_all, &api()),
        seen("TCP", 5432, None, &web(), &shop_db),
    ]
    .concat();
    let (a, yaml, judge) = advise_and_judge(&flows, &Options::default(), &[]);
    assert_eq!(
        policy(&a, "shop").selection.absent,
        ["tier".to_string()].into()
    );
    assert_observed_allowed(&judge, &flows, &yaml);
    assert!(
        !judge.allowed(&shop_db, &api(), Protocol::Tcp, 80),
        "{yaml}"
    );
    assert!(
        !judge.allowed(&web(), &shop_all, Protocol::Tcp, 5432),
        "{yaml}"
    );
}

#[test]
fn without_stable_labels_the_fallback_is_said() {
    let only_unstable = bare(
        "shop",
        "job-x",
        "10.244.1.50",
        &[("job-name", "x"), ("controller-uid", "u1")],
    );
    let unlabelled = bare("shop", "debug", "10.244.1.51", &[]);
    let flows = [
        seen("TCP", 8080, None, &only_unstable, &api()),
        seen("TCP", 8080, None, &unlabelled, &api()),
    ]
    .concat();
    let (a, yaml, judge) = advise_and_judge(&flows, &Options::default(), &[]);
    let job = policy(&a, "job-x");
    assert_eq!(
        job.selection.match_labels,
        labels(&[("controller-uid", "u1"), ("job-name", "x")])
    );
    assert!(
        job.notes.iter().any(|n| n.contains("no stable label")),
        "{:?}",
        job.notes
    );
    assert!(a.policies.iter().all(|p| p.workload.name != "debug"));
    assert!(
        a.notes.iter().any(|n| n.contains("Pod shop/debug")),
        "{:?}",
        a.notes
    );
    assert!(yaml.contains("cidr: 10.244.1.51/32"), "{yaml}");
    assert_observed_allowed(&judge, &flows, &yaml);
}

#[test]
fn node_peers_and_what_policies_cannot_say() {
    let node = address(PeerKind::Node, "172.18.0.3");
    let mut flows = seen("TCP", 8080, None, &node, &api());
    flows.push(record(Direction::Egress, "ICMP", None, None, &api(), &node));
    let (a, yaml, judge) = advise_and_judge(&flows, &Options::default(), &[]);
    let p = policy(&a, "api");
    assert_eq!(
        p.ingress[0].peers,
        [Target::Block("172.18.0.3/32".parse().expect("net"))]
    );
    assert!(
        p.notes.iter().any(|n| n.contains("own node")),
        "{:?}",
        p.notes
    );
    assert!(
        p.notes
            .iter()
            .any(|n| n.contains("left out") && n.contains("ICMP"))
    );
    assert!(yaml.contains("# left out"), "{yaml}");
    assert_observed_allowed(&judge, &flows, &yaml);
}

#[test]
fn options_namespace_audit_and_names() {
    let mut flows = shop();
    // A StatefulSet named like a Deployment of the same namespace.
    let mut twin = api();
    twin.workload = Some(Workload {
        kind: "StatefulSet".into(),
        name: "api".into(),
    });
    twin.labels = labels(&[("app", "api-state")]);
    twin.pod = Some("api-0".into());
    twin.ip = ip("10.244.1.21");
    flows.extend(seen("TCP", 9000, None, &web(), &twin));
    let options = Options {
        namespace: Some("shop".into()),
        audit: true,
        name_prefix: "np-".into(),
        ..Options::default()
    };
    let a = advise(&flows, &options);
    let names: Vec<&str> = a.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "np-api-deployment-least-privilege",
            "np-web-least-privilege",
            "np-api-statefulset-least-privilege"
        ]
    );
    let yaml = a.to_yaml().expect("renders");
    assert_eq!(
        yaml.matches("    palisade.dev/mode: audit\n").count(),
        3,
        "{yaml}"
    );
    // The agent reads annotated policies as any others.
    model_of(&yaml, &flows, &[]);
    let long = Options {
        name_suffix: format!("-{}", "x".repeat(300)),
        ..Options::default()
    };
    assert!(
        advise(&flows, &long)
            .policies
            .iter()
            .all(|p| p.name.len() == 253)
    );
    assert!(!yaml.contains("name: db"), "{yaml}");
}

#[test]
fn output_is_stable_whatever_the_order_of_records() {
    let flows = shop();
    let want = advise(&flows, &Options::default())
        .to_yaml()
        .expect("renders");
    let mut reversed = flows.clone();
    reversed.reverse();
    assert_eq!(
        advise(&reversed, &Options::default())
            .to_yaml()
            .expect("renders"),
        want
    );
    assert!(want.starts_with(
        "# NetworkPolicies proposed by `palisade advise` from 5 observed connections (8 records), seen between 2026-11-30T"
    ), "{want}");
}

/// The whole output for one connection, as a reader gets it.
#[test]
fn one_connection_reads_as_two_policies() {
    let flows = seen("TCP", 8080, Some("http"), &web(), &api());
    let got = advise(&flows, &Options::default())
        .to_yaml()
        .expect("renders");
    let want = r#"# NetworkPolicies proposed by `palisade advise` from 1 observed connection (2 records), seen between 2026-11-30T00:53:20Z and 2026-11-30T00:54:20Z.
# Each isolates one workload both ways and allows what was seen, plus DNS to
# pods k8s-app=kube-dns in namespace kube-system (UDP and TCP 53). Connections not seen are denied.
---
# Deployment shop/api (app=api)
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: api-least-privilege
  namespace: shop
spec:
  egress:
  - ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
    to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: kube-system
      podSelector:
        matchLabels:
          k8s-app: kube-dns
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: web
    ports:
    - port: http
      protocol: TCP
  podSelector:
    matchLabels:
      app: api
  policyTypes:
  - Ingress
  - Egress
---
# Deployment shop/web (app=web)
# nothing was seen connecting to it: all ingress denied
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-least-privilege
  namespace: shop
spec:
  egress:
  - ports:
    - port: http
      protocol: TCP
    to:
    - podSelector:
        matchLabels:
          app: api
  - ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
    to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: kube-system
      podSelector:
        matchLabels:
          k8s-app: kube-dns
  ingress: []
  podSelector:
    matchLabels:
      app: web
  policyTypes:
  - Ingress
  - Egress
"#;
    assert_eq!(got, want, "got:\n{got}");
}

#[test]
fn flows_are_read_as_lines_or_as_an_array() {
    let flows = shop();
    let lines: String = flows
        .iter()
        .map(|f| serde_json::to_string(f).expect("json") + "\n\n")
        .collect();
    assert_eq!(parse_flows("a", &lines).expect("lines"), flows);
    let array = serde_json::to_string(&flows).expect("json");
    assert_eq!(parse_flows("b", &array).expect("array"), flows);
    let e = parse_flows("c", "{\"direction\":\"sideways\"}\n")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert_eq!(e, "c: line 1: not an observed flow");
}

#[test]
fn the_judge_sees_an_empty_advice_as_no_policy() {
    let j = Judge::new(model_of("", &shop(), &[]));
    assert!(j.allowed(&web(), &db(), Protocol::Tcp, 1));
}
