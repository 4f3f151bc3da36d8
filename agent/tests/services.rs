//! Service traffic at the client's veth: a frontend (ClusterIP, Service
//! port) gets the verdict of a direct connection to its backends (on their
//! target port), through the datapath simulation of the compiled maps.

mod support;

use palisade_agent::{
    index::{Index, Kind, ObjectKey},
    model::{Model, ObjectRef},
    policy::{Compiler, Direction, Profile, compile, dump, sim},
};
use palisade_common::{PROTO_TCP, PROTO_UDP, ipcache_flags};
use support::*;

/// Namespace x with a client `web` (app=web), a second client `other`
/// (app=other), and two `db` backends whose container port 5432 is named pg.
fn cluster() -> String {
    let mut s = ns("x", "");
    for (name, labels, ip) in [
        ("web", "app: web", "10.0.1.10"),
        ("other", "app: other", "10.0.1.11"),
    ] {
        s.push_str(&pod("x", name, labels, ip));
    }
    for (name, ip) in [("db-0", "10.0.1.20"), ("db-1", "10.0.1.21")] {
        s.push_str(&db_pod(name, ip));
    }
    s
}

fn db_pod(name: &str, ip: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: db}}}}\n\
         spec: {{nodeName: {NODE}, containers: [{{name: c, image: i, ports: [{{name: pg, containerPort: 5432}}]}}]}}\n\
         status: {{podIP: \"{ip}\"}}\n"
    )
}

/// Service x/db at 10.96.0.10:15432 -> targetPort pg, backends `ips` on 5432.
fn db_service(ips: &[&str]) -> String {
    let endpoints: Vec<String> = ips
        .iter()
        .map(|ip| format!("{{addresses: [\"{ip}\"]}}"))
        .collect();
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: db, namespace: x}}\n\
         spec: {{clusterIP: 10.96.0.10, clusterIPs: [10.96.0.10], ports: [{{name: sql, port: 15432, targetPort: pg}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: db-abcde, namespace: x, labels: {{kubernetes.io/service-name: db}}}}\n\
         addressType: IPv4\nendpoints: [{}]\nports: [{{name: sql, port: 5432, protocol: TCP}}]\n",
        endpoints.join(", ")
    )
}

/// An egress policy for the pods labelled `app: <app>`.
fn egress(name: &str, app: &str, rules: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: x}}\n\
         spec: {{podSelector: {{matchLabels: {{app: {app}}}}}, policyTypes: [Egress], egress: [{rules}]}}\n"
    )
}

const WEB_TO_DB_5432: &str =
    "{to: [{podSelector: {matchLabels: {app: db}}}], ports: [{port: 5432}]}";
const WEB_TO_DB_PG: &str = "{to: [{podSelector: {matchLabels: {app: db}}}], ports: [{port: pg}]}";
const FRONTEND: &str = "10.96.0.10";

fn no_metadata_block() -> Profile {
    Profile {
        block_metadata: false,
        ..Profile::default()
    }
}

fn egress_allowed(
    m: &Model,
    profile: &Profile,
    src: &str,
    dst: &str,
    proto: u8,
    port: u16,
) -> bool {
    let state = compile(m, &node(), profile);
    sim::judge(
        &state.maps,
        ip(src),
        ip(dst),
        Direction::Egress,
        proto,
        port,
    )
    .allows()
}

#[test]
fn a_rule_for_the_backends_opens_the_frontend_on_the_service_port() {
    for rule in [WEB_TO_DB_5432, WEB_TO_DB_PG] {
        let m = model(
            &(cluster()
                + &db_service(&["10.0.1.20", "10.0.1.21"])
                + &egress("web", "web", rule)
                + &egress(
                    "other",
                    "other",
                    "{to: [{podSelector: {matchLabels: {app: web}}}]}",
                )),
        );
        let p = no_metadata_block();
        assert!(
            egress_allowed(&m, &p, "10.0.1.10", FRONTEND, PROTO_TCP, 15432),
            "{rule}"
        );
        // The backend port on the frontend, and the other protocol, are not the Service's.
        assert!(
            !egress_allowed(&m, &p, "10.0.1.10", FRONTEND, PROTO_TCP, 5432),
            "{rule}"
        );
        assert!(
            !egress_allowed(&m, &p, "10.0.1.10", FRONTEND, PROTO_UDP, 15432),
            "{rule}"
        );
        // Another isolated pod without the rule is denied.
        assert!(
            !egress_allowed(&m, &p, "10.0.1.11", FRONTEND, PROTO_TCP, 15432),
            "{rule}"
        );
    }
}

#[test]
fn the_allow_is_attributed_to_the_backends_rule_and_the_identity_to_the_service() {
    let m = model(
        &(cluster()
            + &db_service(&["10.0.1.20", "10.0.1.21"])
            + &egress("web", "web", WEB_TO_DB_5432)),
    );
    let state = compile(&m, &node(), &no_metadata_block());
    let text = dump::render(&state);
    let line = text
        .lines()
        .find(|l| l.contains("(service x/db)") && l.contains("allow"))
        .unwrap_or_else(|| panic!("no Service allow in:\n{text}"));
    assert!(
        line.contains("tcp port 15432/16 <- x/web egress[0]"),
        "{line}"
    );
    let entry = state.maps.ipcache[&format!("{FRONTEND}/32").parse().expect("net")];
    assert_eq!(entry.flags, ipcache_flags::SERVICE);
}

#[test]
fn a_pod_whose_egress_is_not_isolated_reaches_every_frontend() {
    let m = model(&(cluster() + &db_service(&["10.0.1.20"])));
    assert!(egress_allowed(
        &m,
        &no_metadata_block(),
        "10.0.1.11",
        FRONTEND,
        PROTO_TCP,
        15432
    ));
}

#[test]
fn mixed_verdicts_among_backends_fail_closed() {
    // 10.0.1.11 is `other`, which the rule does not name.
    let m = model(
        &(cluster()
            + &db_service(&["10.0.1.20", "10.0.1.11"])
            + &egress("web", "web", WEB_TO_DB_5432)),
    );
    let p = no_metadata_block();
    assert!(egress_allowed(
        &m,
        &p,
        "10.0.1.10",
        "10.0.1.20",
        PROTO_TCP,
        5432
    ));
    assert!(!egress_allowed(
        &m,
        &p,
        "10.0.1.10",
        FRONTEND,
        PROTO_TCP,
        15432
    ));
}

#[test]
fn a_frontend_without_backends_is_denied_to_isolated_pods() {
    let m = model(&(cluster() + &db_service(&[]) + &egress("web", "web", WEB_TO_DB_5432)));
    assert!(!egress_allowed(
        &m,
        &no_metadata_block(),
        "10.0.1.10",
        FRONTEND,
        PROTO_TCP,
        15432
    ));
}

#[test]
fn rules_for_any_peer_or_an_ip_block_do_not_open_a_frontend() {
    for rule in [
        "{ports: [{port: 15432}]}",
        "{to: [{ipBlock: {cidr: 10.96.0.0/12}}]}",
        "{to: [{ipBlock: {cidr: 10.96.0.10/32}}]}",
    ] {
        let m = model(&(cluster() + &db_service(&["10.0.1.20"]) + &egress("web", "web", rule)));
        assert!(
            !egress_allowed(
                &m,
                &no_metadata_block(),
                "10.0.1.10",
                FRONTEND,
                PROTO_TCP,
                15432
            ),
            "{rule}"
        );
    }
    // A rule for every peer and port opens it: through the backends it allows.
    let m = model(&(cluster() + &db_service(&["10.0.1.20"]) + &egress("web", "web", "{}")));
    assert!(egress_allowed(
        &m,
        &no_metadata_block(),
        "10.0.1.10",
        FRONTEND,
        PROTO_TCP,
        15432
    ));
}

#[test]
fn a_service_in_front_of_the_metadata_address_stays_blocked() {
    let m = model(&(cluster() + &db_service(&["169.254.169.254"])));
    let blocked = Profile::default();
    assert!(blocked.block_metadata);
    // `web`'s egress is not isolated; the metadata block alone denies.
    assert!(!egress_allowed(
        &m,
        &blocked,
        "10.0.1.10",
        FRONTEND,
        PROTO_TCP,
        15432
    ));
    let state = compile(&m, &node(), &blocked);
    let entry = state.maps.ipcache[&format!("{FRONTEND}/32").parse().expect("net")];
    assert_eq!(
        entry.flags,
        ipcache_flags::SERVICE | ipcache_flags::METADATA
    );

    // A rule naming the metadata address exactly opens it, through the Service too.
    let m = model(
        &(cluster()
            + &db_service(&["169.254.169.254"])
            + &egress(
                "web",
                "web",
                "{to: [{ipBlock: {cidr: 169.254.169.254/32}}]}",
            )),
    );
    assert!(egress_allowed(
        &m,
        &blocked,
        "10.0.1.10",
        FRONTEND,
        PROTO_TCP,
        15432
    ));
    assert!(!egress_allowed(
        &m,
        &blocked,
        "10.0.1.11",
        FRONTEND,
        PROTO_TCP,
        15432
    ));
}

#[test]
fn a_frontend_under_the_metadata_block_keeps_its_other_ports_open_to_unisolated_pods() {
    let svc = "---\napiVersion: v1\nkind: Service\nmetadata: {name: mixed, namespace: x}\n\
               spec: {clusterIP: 10.96.0.30, ports: [{name: meta, port: 80}, {name: db, port: 15432}]}\n\
               ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
               metadata: {name: mixed-1, namespace: x, labels: {kubernetes.io/service-name: mixed}}\n\
               addressType: IPv4\nendpoints: [{addresses: [169.254.169.254]}]\nports: [{name: meta, port: 80}]\n\
               ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
               metadata: {name: mixed-2, namespace: x, labels: {kubernetes.io/service-name: mixed}}\n\
               addressType: IPv4\nendpoints: [{addresses: [10.0.1.20]}]\nports: [{name: db, port: 5432}]\n";
    let m = model(&(cluster() + svc));
    let p = Profile::default();
    assert!(!egress_allowed(
        &m,
        &p,
        "10.0.1.10",
        "10.96.0.30",
        PROTO_TCP,
        80
    ));
    assert!(egress_allowed(
        &m,
        &p,
        "10.0.1.10",
        "10.96.0.30",
        PROTO_TCP,
        15432
    ));
    // Not a Service port: under the block the frontend is as closed as the address.
    assert!(!egress_allowed(
        &m,
        &p,
        "10.0.1.10",
        "10.96.0.30",
        PROTO_TCP,
        443
    ));
    let text = dump::render(&compile(&m, &node(), &p));
    assert!(
        text.contains("(service x/mixed) tcp port 15432/16 <- unisolated egress[0]"),
        "{text}"
    );
}

#[test]
fn a_service_cannot_take_the_metadata_address_pod_addresses_or_the_nodes() {
    let svc = "---\napiVersion: v1\nkind: Service\nmetadata: {name: odd, namespace: x}\n\
               spec: {clusterIP: 10.96.0.20, externalIPs: [169.254.169.254, 10.0.1.20, 172.31.0.1], ports: [{port: 80}]}\n";
    let m = model(&(cluster() + svc));
    let state = compile(&m, &node(), &Profile::default());
    for addr in ["169.254.169.254/32", "10.0.1.20/32", "172.31.0.1/32"] {
        let e = state.maps.ipcache[&addr.parse().expect("net")];
        assert_eq!(e.flags & ipcache_flags::SERVICE, 0, "{addr}");
    }
    let e = state.maps.ipcache[&"10.96.0.20/32".parse().expect("net")];
    assert_eq!(e.flags, ipcache_flags::SERVICE);
}

#[test]
fn default_deny_with_dns_reaches_the_kube_dns_cluster_ip() {
    let mut s = cluster();
    s.push_str(&ns("kube-system", ""));
    s.push_str(&pod(
        "kube-system",
        "coredns",
        "k8s-app: kube-dns",
        "10.0.9.2",
    ));
    s.push_str(
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: kube-dns, namespace: kube-system}\n\
         spec: {clusterIP: 10.96.0.53, ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}, {name: metrics, port: 9153}]}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: kube-dns-1, namespace: kube-system, labels: {kubernetes.io/service-name: kube-dns}}\n\
         addressType: IPv4\nendpoints: [{addresses: [10.0.9.2], conditions: {ready: true}}]\n\
         ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}, {name: metrics, port: 9153}]\n",
    );
    let m = model(&s);
    let p = Profile {
        default_deny: true,
        allow_dns: true,
        ..Profile::default()
    };
    for src in ["10.0.1.10", "10.0.1.20"] {
        assert!(
            egress_allowed(&m, &p, src, "10.96.0.53", PROTO_UDP, 53),
            "{src}"
        );
        assert!(
            egress_allowed(&m, &p, src, "10.96.0.53", PROTO_TCP, 53),
            "{src}"
        );
        assert!(
            !egress_allowed(&m, &p, src, "10.96.0.53", PROTO_TCP, 9153),
            "{src}"
        );
    }
    let state = compile(&m, &node(), &p);
    let text = dump::render(&state);
    assert!(
        text.contains("(service kube-system/kube-dns) udp port 53/16 <- allow-dns egress[0]"),
        "{text}"
    );
}

#[test]
fn ipv6_frontends_take_ipv6_backends_only() {
    let mut s = cluster();
    s.push_str(&db_pod("db-6", "fd00::20"));
    s.push_str(
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: x}\n\
         spec: {clusterIPs: [10.96.0.10, \"fd00:96::10\"], ports: [{name: sql, port: 15432}]}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: db-v4, namespace: x, labels: {kubernetes.io/service-name: db}}\n\
         addressType: IPv4\nendpoints: [{addresses: [10.0.1.11]}]\nports: [{name: sql, port: 5432}]\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: db-v6, namespace: x, labels: {kubernetes.io/service-name: db}}\n\
         addressType: IPv6\nendpoints: [{addresses: [\"fd00::20\"]}]\nports: [{name: sql, port: 5432}]\n",
    );
    s.push_str(&egress("web", "web", WEB_TO_DB_5432));
    let m = model(&s);
    let p = no_metadata_block();
    // v4's only backend is `other` (not allowed); v6's is a db pod.
    assert!(!egress_allowed(
        &m,
        &p,
        "10.0.1.10",
        FRONTEND,
        PROTO_TCP,
        15432
    ));
    assert!(egress_allowed(
        &m,
        &p,
        "10.0.1.10",
        "fd00:96::10",
        PROTO_TCP,
        15432
    ));
}

#[test]
fn a_kept_compiler_follows_service_and_slice_edits_like_a_fresh_one() {
    let base = cluster() + &egress("web", "web", WEB_TO_DB_5432);
    let steps = [
        base.clone(),
        base.clone() + &db_service(&["10.0.1.20"]),
        base.clone() + &db_service(&["10.0.1.20", "10.0.1.21"]),
        base.clone() + &db_service(&["10.0.1.20", "10.0.1.11"]),
        base.clone() + &db_service(&["10.0.1.21"]).replace("port: 15432", "port: 15433"),
        base.clone() + &db_service(&["10.0.1.21"]).replace("10.96.0.10", "10.96.0.11"),
        base.clone() + &db_service(&["169.254.169.254"]),
        base.clone(),
    ];
    let profile = Profile::default();
    let mut compiler = Compiler::default();
    let mut verdicts = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let m = model(step);
        let kept = compiler.compile(&m, &node(), &profile);
        let fresh = compile(&m, &node(), &profile);
        assert_eq!(canonical(&kept), canonical(&fresh), "after step {i}");
        verdicts.push(
            sim::judge(
                &kept.maps,
                ip("10.0.1.10"),
                ip(FRONTEND),
                Direction::Egress,
                PROTO_TCP,
                15432,
            )
            .allows(),
        );
    }
    assert_eq!(
        verdicts,
        [false, true, true, false, false, false, false, false],
        "{verdicts:?}"
    );
}

#[test]
fn a_bad_service_or_slice_is_rejected_by_name_and_the_rest_kept() {
    let mut index = Index::default();
    for o in objects(&(cluster() + &db_service(&["10.0.1.20"]))) {
        index.apply(&o).expect("valid");
    }
    let bad = objects(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: v6, namespace: x, labels: {kubernetes.io/service-name: db}}\n\
         addressType: IPv6\nendpoints: [{addresses: [10.0.1.21]}]\nports: [{port: 5432}]\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {name: big, namespace: x}\n\
         spec: {clusterIP: 10.96.0.12, ports: [{port: 70000}]}\n",
    );
    let e0 = palisade_agent::error_chain::chain(&index.apply(&bad[0]).expect_err("wrong family"));
    assert!(
        e0.contains("EndpointSlice x/v6") && e0.contains("endpoints[0].addresses[0]"),
        "{e0}"
    );
    let e1 = palisade_agent::error_chain::chain(&index.apply(&bad[1]).expect_err("port range"));
    assert!(
        e1.contains("Service x/big") && e1.contains("spec.ports[0].port"),
        "{e1}"
    );
    assert_eq!(index.rejected().len(), 2);
    assert_eq!(index.model().services.len(), 1);
    assert_eq!(index.model().endpoint_slices.len(), 1);

    index.delete(&ObjectKey {
        kind: Kind::Service,
        object: ObjectRef::new("x", "db"),
    });
    assert!(index.model().services.is_empty());
    let _ = index.reset(Kind::EndpointSlice, &[]);
    assert!(index.model().endpoint_slices.is_empty());
    // The relist of slices forgets the rejected slice; the Service's stays.
    assert_eq!(index.rejected().len(), 1);
}
