use palisade_common::{PROTO_TCP, Reason, v4_mapped};

use super::*;
use crate::index::{Index, Object};

fn model(yaml: &str) -> Model {
    let mut index = Index::default();
    for doc in crate::source::yaml::parse_objects("test", yaml) {
        index.apply(&doc.expect("parses")).expect("valid");
    }
    index.model().clone()
}

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: shop
  labels: {app: web, pod-template-hash: abc12}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-abc12, uid: u, controller: true}]
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: api-1, namespace: shop, labels: {app: api}}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {phase: Running, podIP: 10.0.0.2}
"#;

fn v4(s: &str) -> [u8; 16] {
    let ip: std::net::Ipv4Addr = s.parse().expect("ip");
    v4_mapped(ip.octets())
}

fn allowed(src: &str, dst: &str, port: u16, dir: Direction) -> FlowEvent {
    FlowEvent {
        saddr: v4(src),
        daddr: v4(dst),
        sport_be: 40000u16.to_be_bytes(),
        dport_be: port.to_be_bytes(),
        endpoint: 1,
        proto: PROTO_TCP,
        dir: dir.wire(),
        reason: Reason::Observed as u8,
        ..Default::default()
    }
}

#[test]
fn an_observed_flow_names_workloads_and_the_named_port() {
    let m = model(PODS);
    let d = Directory::new(&m, &Profile::default(), &[]);
    let c = connections(
        &allowed("10.0.0.1", "10.0.0.2", 8080, Direction::Egress),
        &m,
        &d,
    );
    assert_eq!(c.len(), 1);
    let c = &c[0];
    assert_eq!(c.protocol, "TCP");
    assert_eq!(c.port, Some(8080));
    assert_eq!(c.named_port.as_deref(), Some("http"));
    assert_eq!(
        c.src.workload,
        Some(Workload {
            kind: "Deployment".into(),
            name: "web".into()
        })
    );
    assert_eq!(c.dst.workload, None, "a bare pod has no workload");
    assert_eq!(c.dst.pod.as_deref(), Some("api-1"));
    let out = connections(
        &allowed("10.0.0.1", "192.0.2.9", 443, Direction::Egress),
        &m,
        &d,
    );
    assert_eq!(out[0].dst.kind, PeerKind::External);
}

const AUDITED: &str = r#"
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: api-only-from-web
  namespace: shop
  annotations: {palisade.dev/mode: audit}
spec:
  podSelector: {matchLabels: {app: api}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: http}]
"#;

#[test]
fn an_audited_policy_is_not_enforced_but_would_deny_what_it_does_not_allow() {
    let m = model(&format!("{PODS}{AUDITED}"));
    assert!(m.policies.is_empty(), "not enforced");
    assert_eq!(m.audited.policies.len(), 1);
    let d = Directory::new(&m, &Profile::default(), &[]);
    let network = ordered::network_policies_with_audited(&m, &Profile::default());
    let would_be = Layers::with_audited(&m, &network);
    let subjects = Layers::from_parts(m.audited.ordered.values(), m.audited.policies.values());
    let j = Judges {
        logging: None,
        would_be: Some((&would_be, &subjects)),
    };
    // Allowed by it: no record.
    let ok = allowed("10.0.0.1", "10.0.0.2", 8080, Direction::Ingress);
    assert!(rejudge(&ok, &m, &d, &j).is_empty());
    // Another port, and another client: would-deny records naming it.
    for ev in [
        allowed("10.0.0.1", "10.0.0.2", 9090, Direction::Ingress),
        allowed("192.0.2.9", "10.0.0.2", 8080, Direction::Ingress),
    ] {
        let r = rejudge(&ev, &m, &d, &j);
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].action, RecordAction::Audit);
        assert_eq!(&*r[0].policies, ["shop/api-only-from-web".to_string()]);
    }
    // The client's egress is not what the policy selects.
    let egress = allowed("10.0.0.1", "10.0.0.2", 9090, Direction::Egress);
    assert!(rejudge(&egress, &m, &d, &j).is_empty());
}

#[test]
fn removing_the_annotation_enforces_the_policy() {
    let mut index = Index::default();
    for doc in crate::source::yaml::parse_objects("test", &format!("{PODS}{AUDITED}")) {
        index.apply(&doc.expect("parses")).expect("valid");
    }
    assert!(index.model().policies.is_empty());
    let enforced = AUDITED.replace("  annotations: {palisade.dev/mode: audit}\n", "");
    for doc in crate::source::yaml::parse_objects("test", &enforced) {
        let doc = doc.expect("parses");
        if let Object::NetworkPolicy(_) = doc {
            index.apply(&doc).expect("valid");
        }
    }
    assert_eq!(index.model().policies.len(), 1);
    assert!(index.model().audited.is_empty(), "moved, not copied");
}

#[test]
fn node_to_pod_traffic_earns_no_would_deny_record() {
    // Deny-all ingress in audit mode: the kubelet's probes from the node
    // stay allowed once enforced, so they are not would-deny.
    let closed = AUDITED.replace(
        "  ingress:\n  - from: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: http}]\n",
        "",
    );
    let m = model(&format!("{PODS}{closed}"));
    let node: IpAddr = "172.31.0.1".parse().expect("ip");
    let d = Directory::new(&m, &Profile::default(), &[node]);
    let network = ordered::network_policies_with_audited(&m, &Profile::default());
    let would_be = Layers::with_audited(&m, &network);
    let subjects = Layers::from_parts(m.audited.ordered.values(), m.audited.policies.values());
    let j = Judges {
        logging: None,
        would_be: Some((&would_be, &subjects)),
    };
    let probe = allowed("172.31.0.1", "10.0.0.2", 8080, Direction::Ingress);
    assert!(rejudge(&probe, &m, &d, &j).is_empty());
    let other = allowed("10.0.0.1", "10.0.0.2", 8080, Direction::Ingress);
    assert_eq!(
        rejudge(&other, &m, &d, &j).len(),
        1,
        "a pod is still judged"
    );
}
