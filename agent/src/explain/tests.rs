use super::*;
use crate::{
    index::Index,
    model::Node,
    policy::{Compiler, Maps},
    source::yaml::parse_objects,
};

const NODE: &str = "n1";

fn ns(name: &str, labels: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{labels}}}}}\n"
    )
}

fn pod(ns: &str, name: &str, labels: &str, ip: &str, ports: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\n\
         spec: {{nodeName: {NODE}, containers: [{{name: c, image: i, ports: [{ports}]}}]}}\n\
         status: {{podIP: \"{ip}\"}}\n"
    )
}

/// x/a (app=a) 10.0.1.10, x/b (app=b) 10.0.1.11 serving `http` on 8080,
/// kube-system/dns (k8s-app=kube-dns) 10.0.2.10.
fn cluster() -> String {
    let mut s = ns("x", "") + &ns("kube-system", "");
    s += &pod("x", "a", "app: a", "10.0.1.10", "");
    s += &pod(
        "x",
        "b",
        "app: b",
        "10.0.1.11",
        "{name: http, containerPort: 8080}",
    );
    s += &pod(
        "kube-system",
        "dns",
        "k8s-app: kube-dns",
        "10.0.2.10",
        "{containerPort: 53, protocol: UDP}",
    );
    s
}

fn np(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\nspec: {spec}\n"
    )
}

struct Fixture {
    model: Model,
    profile: Profile,
    node: Node,
    maps: Maps,
}

impl NodeMaps for Fixture {
    fn maps(&self, node: &str) -> Option<&dyn MapView> {
        (node == NODE).then_some(&self.maps as &dyn MapView)
    }
}

fn fixture(yaml: &str, profile: Profile) -> Fixture {
    let mut index = Index::default();
    for o in parse_objects("test.yaml", yaml) {
        index.apply(&o.expect("parse")).expect("apply");
    }
    let node = Node {
        name: NODE.into(),
        addresses: vec![IpAddr::from([172, 31, 0, 1])],
        ..Node::default()
    };
    let state = Compiler::default().compile(index.model(), &node, &profile);
    Fixture {
        model: index.model().clone(),
        profile,
        node,
        maps: state.maps,
    }
}

fn run(f: &Fixture, from: &str, to: &str, port: &str) -> Explanation {
    let nodes = [f.node.clone()];
    let world = World {
        model: &f.model,
        profile: &f.profile,
        nodes: &nodes,
        maps: Some(f),
    };
    let q = Query {
        from: from.parse().expect("from"),
        to: to.parse().expect("to"),
        port: port.parse().expect("port"),
    };
    let e = explain(&world, &q).expect("explain");
    assert_eq!(e.maps_agree, Some(true), "{}", human(&e));
    e
}

fn rule(policy: &str, index: usize) -> Decided {
    Decided::Rule {
        policy: policy.into(),
        tier: "default".into(),
        index,
        action: crate::model::ordered::Action::Allow,
    }
}

#[test]
fn arguments_parse_as_documented() {
    assert_eq!(
        "x/a".parse::<EndpointArg>(),
        Ok(EndpointArg::Pod(ObjectRef::new("x", "a")))
    );
    assert_eq!("node".parse::<EndpointArg>(), Ok(EndpointArg::Node));
    assert!("x/a/b".parse::<EndpointArg>().is_err());
    assert_eq!(
        "53/udp".parse::<PortArg>(),
        Ok(PortArg {
            port: PortName::Number(53),
            protocol: Protocol::Udp
        })
    );
    assert_eq!(
        "http".parse::<PortArg>(),
        Ok(PortArg {
            port: PortName::Named("http".into()),
            protocol: Protocol::Tcp
        })
    );
    assert!("80/icmp".parse::<PortArg>().is_err());
}

#[test]
fn allowed_by_a_rule_and_denied_by_isolation() {
    let yaml = cluster()
        + &np(
            "b-from-a",
            "{podSelector: {matchLabels: {app: b}}, ingress: [{from: [{podSelector: {matchLabels: {app: a}}}]}]}",
        );
    let f = fixture(&yaml, Profile::default());
    let e = run(&f, "x/a", "x/b", "8080");
    assert!(e.allowed);
    let ingress = e.ingress.expect("ingress side");
    assert_eq!(ingress.selected_by, ["x/b-from-a"]);
    assert_eq!(ingress.decided_by, rule("x/b-from-a", 0));
    assert_eq!(e.egress.expect("egress").decided_by, Decided::NotIsolated);

    let e = run(&f, "kube-system/dns", "x/b", "8080");
    assert!(!e.allowed);
    assert_eq!(
        e.ingress.expect("ingress").decided_by,
        Decided::EndOfTier {
            tier: "default".into()
        }
    );
    // The node's own traffic always gets in.
    let e = run(&f, "node", "x/b", "8080");
    assert!(e.allowed);
    assert_eq!(e.ingress.expect("ingress").decided_by, Decided::NodeToPod);
}

#[test]
fn a_named_port_is_resolved_on_the_destination() {
    let yaml = cluster()
        + &np(
            "b-http",
            "{podSelector: {matchLabels: {app: b}}, ingress: [{ports: [{port: http}]}]}",
        );
    let f = fixture(&yaml, Profile::default());
    let e = run(&f, "x/a", "x/b", "http");
    assert!(e.allowed);
    let n = e.named_port.expect("named port");
    assert_eq!((n.port, n.pod), (8080, ObjectRef::new("x", "b")));
    assert!(!run(&f, "x/a", "x/b", "8081").allowed);
    assert_eq!(
        explain(
            &World {
                model: &f.model,
                profile: &f.profile,
                nodes: &[],
                maps: None
            },
            &Query {
                from: "x/a".parse().expect("from"),
                to: "x/a".parse().expect("to"),
                port: "http".parse().expect("port"),
            }
        )
        .map(|_| ()),
        Err(ExplainError::NoNamedPort {
            pod: ObjectRef::new("x", "a"),
            name: "http".into(),
            protocol: Protocol::Tcp
        })
    );
}

#[test]
fn default_deny_isolates_and_the_dns_allowance_opens_dns() {
    let profile = Profile {
        default_deny: true,
        ..Profile::default()
    };
    let f = fixture(&cluster(), profile);
    let e = run(&f, "x/a", "x/b", "8080");
    assert!(!e.allowed);
    let egress = e.egress.expect("egress");
    assert!(egress.profile.default_deny);
    // Ties in the default tier go by name.
    assert_eq!(egress.selected_by, ["allow-dns", "default-deny"]);

    let e = run(&f, "x/a", "kube-system/dns", "53/udp");
    assert!(e.allowed, "{}", human(&e));
    let egress = e.egress.expect("egress");
    assert!(egress.profile.allow_dns);
    assert_eq!(egress.decided_by, rule("allow-dns", 0));
    // kube-system is exempt: its ingress is not isolated.
    assert_eq!(e.ingress.expect("ingress").decided_by, Decided::NotIsolated);
}

#[test]
fn the_metadata_block_holds_until_a_rule_names_the_address() {
    let f = fixture(&cluster(), Profile::default());
    let e = run(&f, "x/a", "169.254.169.254", "80");
    assert!(!e.allowed);
    let egress = e.egress.expect("egress");
    assert_eq!(egress.decided_by, Decided::MetadataBlock);
    assert!(egress.profile.metadata_blocked);
    assert!(e.ingress.is_none());
    // DNS to it stays open (metadataDNS).
    assert!(run(&f, "x/a", "169.254.169.254", "53/udp").allowed);

    let yaml = cluster()
        + &np(
            "a-metadata",
            "{podSelector: {matchLabels: {app: a}}, egress: [{to: [{ipBlock: {cidr: 169.254.169.254/32}}]}]}",
        );
    let f = fixture(&yaml, Profile::default());
    let e = run(&f, "x/a", "169.254.169.254", "80");
    assert!(e.allowed);
    assert_eq!(
        e.egress.expect("egress").decided_by,
        rule("x/a-metadata", 0)
    );
}

#[test]
fn an_ordered_deny_overrides_a_networkpolicy_allow() {
    let yaml = cluster()
        + &np(
            "b-any",
            "{podSelector: {matchLabels: {app: b}}, ingress: [{}]}",
        )
        + "---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
           metadata: {name: no-a}\nspec: {tier: Admin, priority: 10, \
           subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: b}}}}, \
           ingress: [{name: deny-a, action: Deny, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: a}}}}]}]}\n";
    let f = fixture(&yaml, Profile::default());
    let e = run(&f, "x/a", "x/b", "8080");
    assert!(!e.allowed);
    let ingress = e.ingress.expect("ingress");
    assert_eq!(ingress.selected_by, ["admin/no-a", "x/b-any"]);
    assert_eq!(
        ingress.decided_by,
        Decided::Rule {
            policy: "admin/no-a".into(),
            tier: "admin".into(),
            index: 0,
            action: crate::model::ordered::Action::Deny
        }
    );
    // The Admin rule does not match the DNS pod: NetworkPolicy decides.
    let e = run(&f, "kube-system/dns", "x/b", "8080");
    assert_eq!(e.ingress.expect("ingress").decided_by, rule("x/b-any", 0));
}

#[test]
fn a_service_frontend_is_explained_by_its_backends() {
    let yaml = cluster()
        + "---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: x}\n\
           spec: {clusterIP: 10.96.0.10, clusterIPs: [10.96.0.10], ports: [{name: h, port: 80, targetPort: http}]}\n\
           ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
           metadata: {name: web-1, namespace: x, labels: {kubernetes.io/service-name: web}}\n\
           addressType: IPv4\nendpoints: [{addresses: [\"10.0.1.11\"]}]\nports: [{name: h, port: 8080, protocol: TCP}]\n"
        + &np(
            "a-to-b",
            "{podSelector: {matchLabels: {app: a}}, egress: [{to: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 8080}]}]}",
        );
    let f = fixture(&yaml, Profile::default());
    let e = run(&f, "x/a", "10.96.0.10", "80");
    assert!(e.allowed, "{}", human(&e));
    assert_eq!(e.to.name, "svc:x/web");
    let svc = e.service.expect("service");
    assert_eq!(svc.backends.len(), 1);
    assert_eq!(svc.backends[0].to.name, "x/b");
    assert_eq!(svc.backends[0].port, 8080);
    assert_eq!(
        svc.egress.expect("frontend egress").decided_by,
        Decided::Frontend
    );
    // The verdict through the Service is the verdict to the backend.
    let direct = run(&f, "x/a", "x/b", "8080");
    assert_eq!(direct.allowed, e.allowed);
    // By name, as the scenarios write it.
    assert!(run(&f, "x/a", "svc:x/web", "80").allowed);
    assert_eq!(
        "svc:x/web".parse::<EndpointArg>(),
        Ok(EndpointArg::Service(ObjectRef::new("x", "web")))
    );
    // Another port of the frontend has no backends.
    assert!(!run(&f, "x/a", "10.96.0.10", "81").allowed);
    // `node` is the backend's node.
    assert!(run(&f, "node", "10.96.0.10", "80").allowed);
}

#[test]
fn maps_that_differ_from_the_policy_are_reported() {
    let yaml = cluster()
        + &np(
            "b-from-a",
            "{podSelector: {matchLabels: {app: b}}, ingress: [{from: [{podSelector: {matchLabels: {app: a}}}]}]}",
        );
    let mut f = fixture(&yaml, Profile::default());
    // What a lost write would leave: b isolated, the rule's entries gone.
    f.maps.policy.clear();
    let nodes = [f.node.clone()];
    let world = World {
        model: &f.model,
        profile: &f.profile,
        nodes: &nodes,
        maps: Some(&f),
    };
    let q = Query {
        from: "x/a".parse().expect("from"),
        to: "x/b".parse().expect("to"),
        port: "8080".parse().expect("port"),
    };
    let e = explain(&world, &q).expect("explain");
    assert!(e.allowed);
    assert_eq!(e.maps_agree, Some(false));
    let m = e.ingress.and_then(|s| s.maps).expect("maps check");
    assert_eq!((m.verdict.as_str(), m.agrees), ("DeniedIsolated", false));
    assert!(human(&explain(&world, &q).expect("explain")).contains("MISMATCH"));
}
