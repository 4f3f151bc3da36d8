//! `palisade-bench`: what Palisade costs, measured side by side in one run
//! (run it through `cargo xtask bench`). Sections:
//!
//! * engine: full compile and one incremental sync of 10k pods x 1k
//!   policies, agent RSS, map entries;
//! * datapath: TCP throughput (iperf3) and short-connection rate between two
//!   pod namespaces: bare veth, Palisade with 10 / 1k / 10k rules on the node,
//!   and the same rules as nftables (linear chain, and a set);
//! * service: short-connection rate through a ClusterIP (kube-proxy-style
//!   nftables DNAT on the node), without and with Palisade judging it,
//!   in interleaved rounds.
//!
//! Results go to stdout, BENCHMARKS.md and bench.json (ratios, and the raw
//! figures they come from).

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use aya::programs::{TestRun, TestRunOptions};
use clap::Parser;
use palisade_agent::{
    dataplane::{UnknownEndpoint, paths::Hook},
    index::{Index, Object},
    model::{Model, Node},
    policy::{Compiler, Maps, Profile},
    source::fake_apiserver::{FakeApiServer, served_objects},
    sync::Syncer,
};
use palisade_tests::{
    agent::{AgentProcess, AgentSpec, agent_bin},
    exec::run,
    fixtures,
    kubeproxy::{self, ServicePort},
    netns, packets,
    scenario::Family,
    topology::Cluster,
};
use serde_json::{Value, json};

#[derive(Parser)]
struct Cli {
    /// A run under 5 minutes: shorter transfers, fewer repetitions.
    #[arg(long)]
    quick: bool,
    /// Where BENCHMARKS.md and bench.json go.
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Run one section and print it, without writing the reports.
    #[arg(long, value_parser = ["engine", "enforce", "program", "datapath", "service"])]
    only: Option<String>,
    /// With `--only`: put the section into the last run's bench.json and
    /// write both reports again, the section marked as re-run.
    #[arg(long, requires = "only")]
    update: bool,
}

// ---------------------------------------------------------------- engine

fn synthetic_model(
    pods: usize,
    policies: usize,
    namespaces: usize,
    node: &str,
    local: usize,
) -> Model {
    let mut index = Index::default();
    let apps = 200;
    for n in 0..namespaces {
        let ns: ApiNamespace = serde_json::from_value(json!({"metadata": {"name": format!("ns{n}"), "labels": {"team": format!("t{}", n % 10), "env": if n % 3 == 0 { "prod" } else { "dev" }}}})).expect("ns");
        index
            .apply(&Object::Namespace(Box::new(ns)))
            .expect("valid");
    }
    for i in 0..pods {
        let ns = i % namespaces;
        let app = (i / 7) % apps;
        let tier = ["web", "api", "db"][app % 3];
        let pod: ApiPod = serde_json::from_value(json!({
            "metadata": {"name": format!("p{i}"), "namespace": format!("ns{ns}"),
                         "labels": {"app": format!("app{app}"), "tier": tier, "version": format!("v{}", i % 3)}},
            "spec": {"nodeName": if i < local { node.to_string() } else { format!("node{}", i % 100) },
                     "containers": [{"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"podIP": format!("10.{}.{}.{}", 64 + i / 65536, (i / 256) % 256, i % 256)}
        }))
        .expect("pod");
        index.apply(&Object::Pod(Box::new(pod))).expect("valid");
    }
    for p in 0..policies {
        let ns = p % namespaces;
        let app = (p * 7) % apps;
        let np: ApiPolicy = serde_json::from_value(json!({
            "metadata": {"name": format!("np{p}"), "namespace": format!("ns{ns}")},
            "spec": {
                "podSelector": {"matchLabels": {"app": format!("app{app}")}},
                "ingress": [
                    {"from": [{"podSelector": {"matchLabels": {"tier": "web"}}},
                              {"namespaceSelector": {"matchLabels": {"team": format!("t{}", p % 10)}}, "podSelector": {"matchLabels": {"app": format!("app{}", (app + 1) % apps)}}}],
                     "ports": [{"port": "http"}, {"port": 9000, "endPort": 9100}]},
                    {"from": [{"ipBlock": {"cidr": format!("192.168.{}.0/24", p % 256), "except": [format!("192.168.{}.7/32", p % 256)]}}]}
                ],
                "egress": [{"to": [{"namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]}}], "ports": [{"port": 5432}]}]
            }
        }))
        .expect("policy");
        index
            .apply(&Object::NetworkPolicy(Box::new(np)))
            .expect("valid");
    }
    index.model().clone()
}

/// `model` plus 100 ClusterNetworkPolicies (50 Admin, 50 Baseline) and 100
/// Calico GlobalNetworkPolicies in two tiers, each selecting the pods of
/// some namespaces or apps, with Deny, Pass, Allow and Log rules over
/// namespaces, pods, nets and ports: the issue-16 engine scale.
fn with_ordered(model: &Model) -> Model {
    use palisade_agent::model::{
        Protocol,
        calico_selector::CalicoSelector,
        ordered::{
            Action, LabelMatch, Namespaces, Order, OrderedOrigin, OrderedPolicy, OrderedRef,
            OrderedRule, PeerMatch, PolicyOrder, Stage, Subject, Tier, TierKey,
        },
        policy::{PortRef, PortSpec},
    };
    let calico = |s: &str| LabelMatch::Calico(CalicoSelector::parse(s).expect("selector"));
    let tcp = |start: u16, end: u16| PortSpec {
        protocol: Protocol::Tcp,
        port: Some(PortRef::Range { start, end }),
    };
    let rule = |action, peers: Option<Vec<PeerMatch>>, ports: Option<Vec<PortSpec>>| OrderedRule {
        action,
        peers,
        protocol: None,
        not_protocol: None,
        ports,
        not_ports: Vec::new(),
        local: None,
    };
    let mut m = model.clone();
    for i in 0..200usize {
        let (tier, origin) = match i {
            0..50 => (
                Tier {
                    key: TierKey {
                        stage: Stage::Admin,
                        order: None,
                        name: "admin".into(),
                    },
                    end_of_tier_deny: false,
                },
                OrderedOrigin::Admin(format!("cnp{i}")),
            ),
            50..100 => (
                Tier {
                    key: TierKey {
                        stage: Stage::Baseline,
                        order: None,
                        name: "baseline".into(),
                    },
                    end_of_tier_deny: false,
                },
                OrderedOrigin::Baseline(format!("cnp{i}")),
            ),
            _ => {
                let t = if i % 2 == 0 { "security" } else { "platform" };
                (
                    Tier {
                        key: TierKey {
                            stage: Stage::Calico,
                            order: Some(Order(if i % 2 == 0 { 100.0 } else { 200.0 })),
                            name: t.into(),
                        },
                        end_of_tier_deny: i % 2 == 0,
                    },
                    OrderedOrigin::Calico {
                        tier: t.into(),
                        namespace: None,
                        name: format!("gnp{i}"),
                    },
                )
            }
        };
        let subject = if i < 100 {
            Subject {
                namespaces: Namespaces::Matching(calico(&format!("team == 't{}'", i % 10))),
                pods: calico("all()"),
            }
        } else {
            Subject {
                namespaces: Namespaces::Matching(calico("all()")),
                pods: calico(&format!("app == 'app{}'", (i * 3) % 200)),
            }
        };
        let ingress = vec![
            rule(
                Action::Log,
                Some(vec![PeerMatch {
                    nets: Some(vec!["192.168.0.0/16".parse().expect("net")]),
                    ..PeerMatch::default()
                }]),
                None,
            ),
            rule(
                Action::Deny,
                Some(vec![PeerMatch {
                    namespaces: Some(Namespaces::Matching(calico("env == 'dev'"))),
                    pods: Some(calico("tier == 'db'")),
                    ..PeerMatch::default()
                }]),
                Some(vec![tcp(22, 22)]),
            ),
            rule(
                if i % 3 == 0 {
                    Action::Pass
                } else {
                    Action::Allow
                },
                Some(vec![PeerMatch {
                    pods: Some(calico(&format!("app == 'app{}'", (i + 1) % 200))),
                    ..PeerMatch::default()
                }]),
                Some(vec![tcp(8080, 8080), tcp(9000, 9100)]),
            ),
        ];
        let egress = vec![
            rule(
                Action::Deny,
                Some(vec![PeerMatch {
                    nets: Some(vec![
                        format!("10.200.{}.0/24", i % 256).parse().expect("net"),
                    ]),
                    ..PeerMatch::default()
                }]),
                None,
            ),
            rule(
                Action::Allow,
                Some(vec![PeerMatch {
                    namespaces: Some(Namespaces::Matching(calico("env == 'prod'"))),
                    ..PeerMatch::default()
                }]),
                Some(vec![tcp(5432, 5432)]),
            ),
        ];
        let name = format!("o{i}");
        m.ordered.insert(
            OrderedRef::CalicoGlobalNetworkPolicy(name.clone()),
            OrderedPolicy {
                origin,
                tier,
                order: PolicyOrder {
                    order: Some(Order(i as f64)),
                    name,
                },
                subject,
                ingress: Some(ingress),
                egress: Some(egress),
            },
        );
    }
    m
}

/// `model` plus one Service per app (cluster IP 10.96.x.y, ports 80 -> http
/// and 5432) whose EndpointSlice lists every pod of that app.
fn with_services(model: &Model) -> Model {
    let mut index = Index::default();
    let mut by_app: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for pod in model.pods.values() {
        by_app
            .entry(pod.labels["app"].clone())
            .or_default()
            .extend(pod.ips.iter().map(ToString::to_string));
    }
    for (n, (app, ips)) in by_app.into_iter().enumerate() {
        let ns = format!("ns{}", n % 100);
        let svc: ApiService = serde_json::from_value(json!({
            "metadata": {"name": app, "namespace": ns},
            "spec": {"clusterIP": format!("10.96.{}.{}", n / 256, n % 256),
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}, {"name": "db", "port": 5432}]}
        }))
        .expect("service");
        index.apply(&Object::Service(Box::new(svc))).expect("valid");
        let slice: ApiSlice = serde_json::from_value(json!({
            "metadata": {"name": format!("{app}-1"), "namespace": ns, "labels": {"kubernetes.io/service-name": app}},
            "addressType": "IPv4",
            "endpoints": ips.iter().map(|ip| json!({"addresses": [ip]})).collect::<Vec<_>>(),
            "ports": [{"name": "http", "port": 8080}, {"name": "db", "port": 5432}]
        }))
        .expect("slice");
        index
            .apply(&Object::EndpointSlice(Box::new(slice)))
            .expect("valid");
    }
    let mut out = model.clone();
    out.services = index.model().services.clone();
    out.endpoint_slices = index.model().endpoint_slices.clone();
    out
}

type ApiService = k8s_openapi::api::core::v1::Service;
type ApiSlice = k8s_openapi::api::discovery::v1::EndpointSlice;
type ApiNamespace = k8s_openapi::api::core::v1::Namespace;
type ApiPod = k8s_openapi::api::core::v1::Pod;
type ApiPolicy = k8s_openapi::api::networking::v1::NetworkPolicy;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn engine(quick: bool) -> Value {
    let node = Node {
        name: "bench-node".into(),
        addresses: vec!["172.31.0.1".parse().expect("ip")],
        ..Node::default()
    };
    let profile = Profile::default();
    let t = Instant::now();
    let model = synthetic_model(10_000, 1_000, 100, &node.name, 110);
    let build_ms = t.elapsed().as_secs_f64() * 1e3;
    let reps = if quick { 3 } else { 7 };
    let mut full = Vec::new();
    let mut entries = None;
    for _ in 0..reps {
        let t = Instant::now();
        let s = Compiler::default().compile(&model, &node, &profile);
        full.push(t.elapsed().as_secs_f64() * 1e3);
        entries = Some((
            s.maps.endpoints.len(),
            s.maps.ipcache.len(),
            s.maps.policy.len(),
        ));
    }
    let (endpoints, ipcache, policy) = entries.expect("compiled");
    // The same with a Service per app, under the default profile and under
    // default deny (every local pod isolated: every frontend judged).
    let serviced = with_services(&model);
    let deny = Profile {
        default_deny: true,
        ..Profile::default()
    };
    let mut with_services_ms = Vec::new();
    let mut with_services_deny_ms = Vec::new();
    let mut service_entries = 0;
    for _ in 0..reps {
        let t = Instant::now();
        let _ = Compiler::default().compile(&serviced, &node, &profile);
        with_services_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let s = Compiler::default().compile(&serviced, &node, &deny);
        with_services_deny_ms.push(t.elapsed().as_secs_f64() * 1e3);
        service_entries = s.maps.policy.len();
    }
    drop(serviced);
    // Ordered policies beside the NetworkPolicies: what resolving their
    // precedence in user space costs in compile time and map entries.
    let ordered = with_ordered(&model);
    let mut ordered_ms = Vec::new();
    let mut ordered_entries = 0;
    for _ in 0..reps {
        let t = Instant::now();
        let s = Compiler::default().compile(&ordered, &node, &profile);
        ordered_ms.push(t.elapsed().as_secs_f64() * 1e3);
        ordered_entries = s.maps.policy.len();
    }
    drop(ordered);
    // From here on the process holds what an agent holds: one model, and a
    // syncer (compiler with its caches, compiled state, mirror of the maps).
    let mut model = model;
    let mut syncer = Syncer::new(Maps::default(), Maps::default());
    syncer.sync(&model, &node, &profile);
    let mut incremental = Vec::new();
    let mut incremental_compile = Vec::new();
    let mut ops = Vec::new();
    let mut stats = None;
    for i in 0..reps {
        // One pod changes its labels (a local one: the expensive kind).
        let key = model.pods.keys().nth(i).cloned().expect("pod");
        let pod = model.pods.get_mut(&key).expect("pod");
        pod.labels.insert("app".into(), format!("app{}", 100 + i));
        let r = syncer.sync(&model, &node, &profile);
        incremental.push((r.compile + r.apply).as_secs_f64() * 1e3);
        incremental_compile.push(r.compile.as_secs_f64() * 1e3);
        ops.push(r.ops as f64);
        stats = Some(syncer.compile_stats());
    }
    let largest = largest_admitted(&mut model, &mut syncer, &node, &profile, reps);
    let result = json!({
        "largest_admitted_policy": largest,
        "ordered": {"cluster_network_policies": 100, "calico_policies": 100,
                    "full_compile_ms_median": median(ordered_ms), "policy_entries": ordered_entries},
        "pods": 10_000, "policies": 1_000, "namespaces": 100, "local_pods": 110,
        "model_build_ms": build_ms,
        "full_compile_ms_median": median(full),
        "services": 200,
        "full_compile_with_services_ms_median": median(with_services_ms),
        "full_compile_with_services_default_deny_ms_median": median(with_services_deny_ms),
        "policy_entries_with_services_default_deny": service_entries,
        "incremental_sync_ms_median": median(incremental),
        "incremental_compile_ms_median": median(incremental_compile),
        "incremental_work": stats,
        "incremental_ops_median": median(ops),
        "rss_mib": rss_kib() as f64 / 1024.0,
        "map_entries": {"endpoints": endpoints, "ipcache": ipcache, "policy": policy},
        "kernel_map_bytes_estimate": endpoints * (16 + 8) + ipcache * (20 + 8) + policy * (16 + 4),
    });
    println!("engine: {result}");
    result
}

/// Adds, to the agent-sized model and syncer, the largest policies the
/// default budgets admit in one namespace: one of 50 peers (each a pod of
/// its own) x 1,000 ports on one local pod (estimate 50,000 entries, all
/// real), and one ipBlock with 999 excepts (1,000 CIDRs). Then times another
/// namespace's edit beside them.
fn largest_admitted(
    model: &mut Model,
    syncer: &mut Syncer<Maps>,
    node: &Node,
    profile: &Profile,
    reps: usize,
) -> Value {
    let entries_before = syncer.state().maps.policy.len();
    let ipcache_before = syncer.state().maps.ipcache.len();
    let pod = |name: &str, labels: Value, ip: String| -> Object {
        Object::Pod(Box::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "tenant", "labels": labels},
                "spec": {"nodeName": node.name, "containers": [{"name": "c", "image": "i"}]},
                "status": {"podIP": ip}
            }))
            .expect("pod"),
        ))
    };
    let mut objects = vec![pod("t0", json!({"app": "t"}), "10.200.0.1".into())];
    for i in 0..50 {
        objects.push(pod(
            &format!("peer{i}"),
            json!({"peer": format!("p{i}")}),
            format!("10.200.1.{}", i + 1),
        ));
    }
    let peers: Vec<Value> = (0..50)
        .map(|i| json!({"podSelector": {"matchLabels": {"peer": format!("p{i}")}}}))
        .collect();
    let ports: Vec<Value> = (1..=1000).map(|p| json!({"port": p})).collect();
    let excepts: Vec<String> = (0..999)
        .map(|e| format!("10.201.{}.{}/32", e / 256, e % 256))
        .collect();
    for (name, rule) in [
        ("largest-entries", json!({"from": peers, "ports": ports})),
        (
            "largest-cidrs",
            json!({"from": [{"ipBlock": {"cidr": "10.201.0.0/16", "except": excepts}}]}),
        ),
    ] {
        let np: ApiPolicy = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "tenant"},
            "spec": {"podSelector": {"matchLabels": {"app": "t"}}, "ingress": [rule]}
        }))
        .expect("policy");
        objects.push(Object::NetworkPolicy(Box::new(np)));
    }
    let mut index = Index::default();
    for o in &objects {
        index.apply(o).expect("valid");
    }
    let added = index.model().clone();
    let estimate: Vec<Value> = added
        .policies
        .values()
        .map(|p| json!(palisade_agent::policy::budget::Cost::of(p)))
        .collect();
    model.pods.extend(added.pods);
    model.policies.extend(added.policies);
    let r = syncer.sync(model, node, profile);
    assert!(
        syncer.state().rejected.is_empty(),
        "within the default budgets"
    );
    let compile_ms = r.compile.as_secs_f64() * 1e3;
    let sync_ms = (r.compile + r.apply).as_secs_f64() * 1e3;
    let entries = syncer.state().maps.policy.len() - entries_before;
    let ipcache = syncer.state().maps.ipcache.len() - ipcache_before;
    let rss_mib = rss_kib() as f64 / 1024.0;
    // Another namespace's edit beside them (one pod relabelled, as above).
    let mut edit = Vec::new();
    for i in 0..reps {
        let key = model.pods.keys().nth(i).cloned().expect("pod");
        let pod = model.pods.get_mut(&key).expect("pod");
        pod.labels.insert("app".into(), format!("app{}", 150 + i));
        let r = syncer.sync(model, node, profile);
        edit.push(r.compile.as_secs_f64() * 1e3);
    }
    json!({
        "estimate": estimate,
        "policy_entries": entries,
        "ipcache_entries": ipcache,
        "admit_compile_ms": compile_ms,
        "admit_sync_ms": sync_ms,
        "rss_mib_after": rss_mib,
        "other_namespace_edit_compile_ms_median": median(edit),
        "other_namespace_edit_work": syncer.compile_stats(),
    })
}

// --------------------------------------------------------------- program

/// The tc program's own cost per packet: BPF_PROG_TEST_RUN runs one frame
/// `repeat` times inside the kernel and reports the mean, which leaves the
/// rest of the network stack, and most of a shared machine's noise, out.
/// Each case is timed for Palisade and for the floor (`palisade_floor`: the
/// same parser and one conntrack lookup) alternately, round after round;
/// the ratio is taken per round. Cases: a packet of a tracked flow, a reply,
/// a new allowed flow (a fresh source port per run, so one run each), and a
/// new flow the policy denies (never tracked: every run takes the whole
/// policy path).
fn program(quick: bool) -> anyhow::Result<Value> {
    const MODEL: &str = "\
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: p, labels: {pod: client}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: p, labels: {pod: server}}
spec: {nodeName: n1, containers: [{name: c, image: i}]}
status: {podIP: 10.0.0.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-out, namespace: p}
spec:
  podSelector: {matchLabels: {pod: client}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {pod: server}}}], ports: [{port: 80}]}]
";
    use packets::{ACK, SYN, TCP};
    // TC_ACT_UNSPEC and TC_ACT_SHOT as the test run returns them.
    const PASS: u32 = u32::MAX;
    const DROP: u32 = 2;
    let (client, server): (std::net::IpAddr, std::net::IpAddr) =
        ("10.0.0.1".parse()?, "10.0.0.2".parse()?);
    let (_pins, mut dp, _syncer) =
        fixtures::load(MODEL, &Profile::default(), UnknownEndpoint::Allow);
    let repeat = if quick { 200_000 } else { 1_000_000 };
    let rounds = if quick { 3 } else { 7 };
    let new_flows_per_round = if quick { 500 } else { 2_000 };
    // Mean ns per run of `pkt` over `repeat` runs, checked against the verdict
    // the case must take (a bench of the wrong path measures nothing).
    let run = |prog: &mut aya::programs::SchedClassifier,
               pkt: &[u8],
               repeat: u32,
               want: Option<u32>|
     -> anyhow::Result<f64> {
        let r = prog.test_run(TestRunOptions {
            data_in: Some(pkt),
            repeat,
            ..TestRunOptions::new()
        })?;
        if let Some(want) = want {
            anyhow::ensure!(
                r.return_value == want,
                "program returned {} where {want} was expected",
                r.return_value
            );
        }
        Ok(r.duration.as_secs_f64() * 1e9)
    };
    // Open the flow once: the tracked and reply cases find it.
    run(
        dp.classifier(Hook::FromPod)?,
        &packets::packet(client, server, TCP, 40000, 80, SYN),
        1,
        Some(PASS),
    )?;
    let repeated = [
        (
            "tracked",
            Hook::FromPod,
            packets::packet(client, server, TCP, 40000, 80, ACK),
            PASS,
        ),
        (
            "reply",
            Hook::ToPod,
            packets::packet(server, client, TCP, 80, 40000, SYN | ACK),
            PASS,
        ),
        (
            "denied_new",
            Hook::FromPod,
            packets::packet(client, server, TCP, 40001, 81, SYN),
            DROP,
        ),
    ];
    let mut ours: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut floor: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut ratios: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut next_port = 20_000u16;
    for round in 0..rounds {
        for (name, hook, pkt, want) in &repeated {
            // Alternate which goes first, so that drift favours neither.
            let (o, f) = if round % 2 == 0 {
                let o = run(dp.classifier(*hook)?, pkt, repeat, Some(*want))?;
                (o, run(dp.floor_classifier()?, pkt, repeat, None)?)
            } else {
                let f = run(dp.floor_classifier()?, pkt, repeat, None)?;
                (run(dp.classifier(*hook)?, pkt, repeat, Some(*want))?, f)
            };
            ours.entry(name).or_default().push(o);
            floor.entry(name).or_default().push(f);
            ratios.entry(name).or_default().push(o / f);
        }
        // New allowed flows: every run a fresh source port, so one run each;
        // the floor times the same packets (a conntrack miss for it too).
        let (mut o, mut f) = (Vec::new(), Vec::new());
        for _ in 0..new_flows_per_round {
            let pkt = packets::packet(client, server, TCP, next_port, 80, SYN);
            next_port += 1;
            o.push(run(dp.classifier(Hook::FromPod)?, &pkt, 1, Some(PASS))?);
            f.push(run(dp.floor_classifier()?, &pkt, 1, None)?);
        }
        let (o, f) = (median(o), median(f));
        ours.entry("allowed_new").or_default().push(o);
        floor.entry("allowed_new").or_default().push(f);
        ratios.entry("allowed_new").or_default().push(o / f);
    }
    let mut cases = serde_json::Map::new();
    for (name, r) in ratios {
        let (ratio, lo, hi) = spread(r);
        cases.insert(
            name.into(),
            json!({"ns": median(ours[name].clone()), "floor_ns": median(floor[name].clone()),
                   "ratio": ratio, "ratio_min": lo, "ratio_max": hi}),
        );
    }
    let r = json!({"repeat": repeat, "rounds": rounds, "new_flows_per_round": new_flows_per_round,
                   "cases": cases, "target_tracked_ratio": 1.3});
    println!("program: {r}");
    Ok(r)
}

// -------------------------------------------------------------- datapath

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 11);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 10);

/// `n` allowed /32 sources (10.200.x.y) plus the real client last, on port 5201 and 80.
fn peers(n: usize) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = (0..n.saturating_sub(1))
        .map(|i| Ipv4Addr::new(10, 200, (i / 250) as u8, (i % 250 + 1) as u8))
        .collect();
    v.push(CLIENT);
    v
}

fn source_yaml(n: usize) -> String {
    let mut s = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n");
    for (name, ip) in [("client", CLIENT), ("server", SERVER)] {
        s.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: bench, labels: {{app: {name}}}}}\nspec: {{nodeName: palisade-node, containers: [{{name: c, image: i}}]}}\nstatus: {{podIP: \"{ip}\"}}\n"
        ));
    }
    s.push_str("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server-in, namespace: bench}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress:\n");
    for ip in peers(n) {
        s.push_str(&format!("  - from: [{{ipBlock: {{cidr: {ip}/32}}}}]\n    ports: [{{port: 5201}}, {{port: 80}}]\n"));
    }
    s
}

fn nft_rules(n: usize, with_set: bool) -> String {
    let mut s = String::from("table inet bench {\n");
    if with_set {
        s.push_str("  set allowed { type ipv4_addr; elements = { ");
        s.push_str(
            &peers(n)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        );
        s.push_str(" } }\n");
    }
    s.push_str("  chain bench_forward { type filter hook forward priority 0; policy accept;\n    ct state established,related accept\n");
    if with_set {
        s.push_str(&format!(
            "    ip daddr {SERVER} ip saddr @allowed tcp dport {{ 80, 5201 }} accept\n"
        ));
    } else {
        for ip in peers(n) {
            s.push_str(&format!(
                "    ip daddr {SERVER} ip saddr {ip} tcp dport {{ 80, 5201 }} accept\n"
            ));
        }
    }
    s.push_str(&format!("    ip daddr {SERVER} drop\n  }}\n}}\n"));
    s
}

struct Bed {
    cluster: Cluster,
    client_ns: String,
    server_ns: String,
}

fn testbed() -> anyhow::Result<Bed> {
    let run = format!("b{}", std::process::id() % 100_000);
    let mut cluster = Cluster::new(&run, Family::Ipv4)?;
    let c = cluster.add_wired("bench/client", Some(CLIENT), None, Vec::new())?;
    let s = cluster.add_wired("bench/server", Some(SERVER), None, Vec::new())?;
    let (client_ns, server_ns) = (c.netns.unwrap_or_default(), s.netns.unwrap_or_default());
    // A one-byte echo for the connection rate (iperf3 servers start per run).
    let l = netns::in_netns(&server_ns, || Ok(TcpListener::bind("0.0.0.0:80")?))?;
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_ok() {
                let _ = s.write_all(&b);
            }
        }
    });
    Ok(Bed {
        cluster,
        client_ns,
        server_ns,
    })
}

fn iperf(bed: &Bed, secs: u32) -> anyhow::Result<f64> {
    // A one-shot server (-1) per run, as our child, so none outlives the bench.
    let mut server = Command::new("ip")
        .args(["netns", "exec", &bed.server_ns, "iperf3", "-s", "-1"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("starting iperf3 -s")?;
    std::thread::sleep(Duration::from_millis(300));
    let out = run(Command::new("ip").args([
        "netns",
        "exec",
        &bed.client_ns,
        "iperf3",
        "-J",
        "-c",
        &SERVER.to_string(),
        // A setup that blocks the client fails the bench, never hangs it.
        "--connect-timeout",
        "3000",
        "-t",
        &secs.to_string(),
    ]));
    if out.is_err() {
        let _ = server.kill();
    }
    let _ = server.wait();
    let v: Value = serde_json::from_slice(&out?.stdout).context("iperf3 JSON")?;
    v.pointer("/end/sum_received/bits_per_second")
        .and_then(Value::as_f64)
        .context("iperf3 result")
}

fn conn_rate(bed: &Bed, secs: f64) -> anyhow::Result<f64> {
    conn_rate_to(bed, SocketAddr::from((SERVER, 80)), secs)
}

fn conn_rate_to(bed: &Bed, to: SocketAddr, secs: f64) -> anyhow::Result<f64> {
    let ns = bed.client_ns.clone();
    netns::in_netns(&ns, move || {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut n = 0u64;
        while Instant::now() < deadline {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(1))?;
            s.write_all(b"x")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)?;
            // The server closes first (as HTTP/1.0 does), so TIME_WAIT stays
            // on its side: a client closing first parks every port for 60 s,
            // and thousands of connections a second use up the ephemeral
            // range, after which connect() crawls, whatever the datapath.
            let _ = s.read(&mut b);
            n += 1;
        }
        Ok(n as f64 / secs)
    })
}

fn measure(bed: &Bed, quick: bool) -> anyhow::Result<(f64, f64)> {
    let secs = if quick { 2 } else { 4 };
    let gbps = iperf(bed, secs)? / 1e9;
    let cps = conn_rate(bed, if quick { 1.5 } else { 3.0 })?;
    Ok((gbps, cps))
}

/// The setups of one rule count, measured back to back in one round. At
/// 1k rules also Palisade without flow observation (`--observe-flows
/// false`), for what recording allowed flows costs.
fn setups(n: usize) -> &'static [&'static str] {
    if n == 1_000 {
        &[
            "bare",
            "palisade",
            "nft-linear",
            "nft-set",
            "palisade-unobserved",
        ]
    } else {
        &["bare", "palisade", "nft-linear", "nft-set"]
    }
}

/// User and system CPU seconds a process has used so far.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 12th and 13th, in clock ticks.
    let rest = stat.rsplit_once(')').context("/proc stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// One setup, measured once: Palisade's agent or an nftables ruleset is
/// put in place, measured, and removed again; for Palisade also the share
/// of one CPU its agent used meanwhile.
fn measure_setup(
    bed: &Bed,
    setup: &str,
    n: usize,
    dir: &std::path::Path,
    quick: bool,
) -> anyhow::Result<(f64, f64, Option<f64>)> {
    let node = &bed.cluster.node_netns;
    match setup {
        "bare" => measure(bed, quick).map(|(g, c)| (g, c, None)),
        "palisade" | "palisade-unobserved" => {
            let observe = if setup == "palisade" { "true" } else { "false" };
            let source = dir.join(format!("src-{n}"));
            std::fs::create_dir_all(&source)?;
            std::fs::write(source.join("bench.yaml"), source_yaml(n))?;
            let agent = AgentProcess::start(AgentSpec {
                source,
                // One policy of n ipBlock peers: at 10k it is over the
                // default CIDR budgets (1,000 per policy, 4,000 per
                // namespace) on purpose, to compare with nftables at scale.
                extra: [
                    "--listen",
                    "off",
                    "--max-policy-cidrs",
                    "0",
                    "--max-namespace-cidrs",
                    "0",
                    "--observe-flows",
                    observe,
                ]
                .map(String::from)
                .to_vec(),
                ..AgentSpec::in_dir(
                    agent_bin()?,
                    node,
                    dir,
                    PathBuf::from(format!(
                        "/sys/fs/bpf/palisade-bench-{}-{n}",
                        std::process::id()
                    )),
                )
            })?;
            agent.wait_programmed(&bed.cluster.interfaces(), Duration::from_secs(60))?;
            // Its start (verifier, first sync) is not the datapath's cost.
            std::thread::sleep(Duration::from_secs(1));
            // What the agent itself takes of the machine while measured: on
            // 2 CPUs, time it spends is time the measured traffic does not get.
            let pid = agent.pid().context("agent pid")?;
            let (cpu0, t0) = (cpu_seconds(pid)?, Instant::now());
            let r = measure(bed, quick)?;
            let share = (cpu_seconds(pid)? - cpu0) / t0.elapsed().as_secs_f64();
            Ok((r.0, r.1, Some(share)))
        }
        nft => {
            let file = dir.join(format!("{nft}-{n}.nft"));
            std::fs::write(&file, nft_rules(n, nft == "nft-set"))?;
            run(Command::new("ip")
                .args(["netns", "exec", node, "nft", "-f"])
                .arg(&file))?;
            let r = measure(bed, quick);
            run(Command::new("ip").args([
                "netns", "exec", node, "nft", "delete", "table", "inet", "bench",
            ]))?;
            r.map(|(g, c)| (g, c, None))
        }
    }
}

/// Median and range of a sample.
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let mid = median(v.clone());
    (mid, v[0], v[v.len() - 1])
}

/// Every setup at every rule count, in rounds: within a round each rule
/// count's four setups run back to back in an order that rotates from
/// round to round, and each is compared with the bare run of its own
/// round, so that drift on a shared machine lands in the spread, not in
/// the ratio.
fn datapath(quick: bool) -> anyhow::Result<Value> {
    let bed = testbed()?;
    let dir = std::env::temp_dir().join(format!("palisade-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let rounds = if quick { 2 } else { 5 };
    // (setup-n) -> per round (Gbit/s, conn/s, throughput ratio, conn ratio)
    let mut samples: BTreeMap<String, Vec<[f64; 4]>> = BTreeMap::new();
    let mut agent_cpu: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        for n in [10usize, 1_000, 10_000] {
            let mut got: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
            let setups = setups(n);
            for k in 0..setups.len() {
                let setup = setups[(k + round) % setups.len()];
                let (g, c, cpu) = measure_setup(&bed, setup, n, &dir, quick)?;
                println!("round {round}, {setup}-{n}: {g:.2} Gbit/s, {c:.0} conn/s");
                if let Some(cpu) = cpu {
                    agent_cpu
                        .entry(format!("{setup}-{n}"))
                        .or_default()
                        .push(cpu);
                }
                got.insert(setup, (g, c));
            }
            let bare = got["bare"];
            for (setup, (g, c)) in got {
                let key = if setup == "bare" {
                    "bare".to_string()
                } else {
                    format!("{setup}-{n}")
                };
                samples
                    .entry(key)
                    .or_default()
                    .push([g, c, g / bare.0, c / bare.1]);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut out = serde_json::Map::new();
    let col = |v: &[[f64; 4]], i: usize| v.iter().map(|r| r[i]).collect::<Vec<f64>>();
    for (k, v) in &samples {
        let (tput, tput_lo, tput_hi) = spread(col(v, 2));
        let (conn, conn_lo, conn_hi) = spread(col(v, 3));
        let cpu = agent_cpu.get(k).map(|c| median(c.clone()));
        out.insert(
            k.clone(),
            json!({
                "agent_cpu_share": cpu,
                "samples": v.len(),
                "gbit_per_s": median(col(v, 0)), "conn_per_s": median(col(v, 1)),
                "throughput_vs_bare": tput, "throughput_vs_bare_min": tput_lo, "throughput_vs_bare_max": tput_hi,
                "conn_rate_vs_bare": conn, "conn_rate_vs_bare_min": conn_lo, "conn_rate_vs_bare_max": conn_hi,
            }),
        );
    }
    // Palisade against nftables linear, round by round.
    for n in ["10", "1000", "10000"] {
        let (Some(p), Some(l)) = (
            samples.get(&format!("palisade-{n}")),
            samples.get(&format!("nft-linear-{n}")),
        ) else {
            continue;
        };
        let ratios: Vec<f64> = p.iter().zip(l).map(|(p, l)| p[1] / l[1]).collect();
        let (mid, lo, hi) = spread(ratios);
        out.insert(
            format!("palisade-vs-nft-linear-{n}"),
            json!({"conn_rate_ratio": mid, "min": lo, "max": hi}),
        );
    }
    out.insert("rounds".into(), json!(rounds));
    Ok(Value::Object(out))
}

// ---------------------------------------------------------------- service

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 9, 9);

/// The client may reach the server's port 80 only, and the server admits
/// the client only: a connection to the Service (port 8080) passes only if
/// Palisade judges it by the backend and its target port.
fn service_yaml() -> String {
    let mut s = source_yaml(0).replace("ports: [{port: 5201}, {port: 80}]", "ports: [{port: 80}]");
    s.push_str(&format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: client-out, namespace: bench}}\nspec:\n  podSelector: {{matchLabels: {{app: client}}}}\n  policyTypes: [Egress]\n  egress: [{{to: [{{podSelector: {{matchLabels: {{app: server}}}}}}], ports: [{{port: 80}}]}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: server, namespace: bench}}\nspec: {{clusterIP: {VIP}, clusterIPs: [{VIP}], ports: [{{name: http, port: 8080, targetPort: 80, protocol: TCP}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: server-1, namespace: bench, labels: {{kubernetes.io/service-name: server}}}}\naddressType: IPv4\nendpoints: [{{addresses: [\"{SERVER}\"], conditions: {{ready: true}}}}]\nports: [{{name: http, port: 80, protocol: TCP}}]\n"
    ));
    s
}

/// Connections per second to the ClusterIP, bare (kube-proxy's DNAT only)
/// and with Palisade, in rounds whose order alternates; each round's ratio
/// compares two runs minutes apart at most, and the median of the rounds
/// is what is reported, with its range.
fn service(quick: bool) -> anyhow::Result<Value> {
    let bed = testbed()?;
    kubeproxy::apply(
        &bed.cluster.node_netns,
        &[ServicePort {
            service: "bench/server".into(),
            addr: VIP.into(),
            proto: "tcp",
            port: 8080,
            backends: vec![SocketAddr::from((SERVER, 80))],
        }],
    )?;
    let bin = agent_bin()?;
    let dir = std::env::temp_dir().join(format!("palisade-bench-svc-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("source"))?;
    std::fs::write(dir.join("source/bench.yaml"), service_yaml())?;
    let (rounds, secs) = if quick { (3, 2.0) } else { (7, 3.0) };
    let vip = SocketAddr::from((VIP, 8080));
    let (mut bare, mut with, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let mut pair = [0.0f64; 2];
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            pair[which] = if which == 0 {
                conn_rate_to(&bed, vip, secs)?
            } else {
                let agent = AgentProcess::start(AgentSpec {
                    extra: vec!["--listen".into(), "off".into()],
                    ..AgentSpec::in_dir(
                        bin.clone(),
                        &bed.cluster.node_netns,
                        &dir,
                        PathBuf::from(format!(
                            "/sys/fs/bpf/palisade-bench-svc-{}",
                            std::process::id()
                        )),
                    )
                })?;
                agent.wait_programmed(&bed.cluster.interfaces(), Duration::from_secs(60))?;
                // The agent's start (verifier, first sync, first sweep) is
                // not the datapath's cost; on two CPUs it would be counted.
                std::thread::sleep(Duration::from_secs(1));
                conn_rate_to(&bed, vip, secs)?
            };
        }
        println!(
            "service round {round}: bare {:.0} conn/s, palisade {:.0} conn/s ({:.3})",
            pair[0],
            pair[1],
            pair[1] / pair[0]
        );
        bare.push(pair[0]);
        with.push(pair[1]);
        ratios.push(pair[1] / pair[0]);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let (mid, lo, hi) = spread(ratios.clone());
    let r = json!({
        "rounds": rounds, "seconds_per_run": secs,
        "bare_conn_per_s": bare, "palisade_conn_per_s": with, "ratios": ratios,
        "ratio_median": mid, "ratio_min": lo, "ratio_max": hi,
        "bare_median": median(bare.clone()), "palisade_median": median(with.clone()),
    });
    println!("service: {r}");
    Ok(r)
}

const POLL_MS: u64 = 200;
const PROBE_MS: u64 = 3;

/// Where the enforce section's agent reads its objects from.
#[derive(Clone, Copy)]
enum EnforceSource {
    /// The standalone directory: a change is an atomic rename.
    Dir,
    /// An API server in memory: a change is a watch event.
    ApiServer,
}

/// How the enforce section makes a change (allow or not, the version to
/// give the object), from the probing thread.
type Change = Box<dyn Fn(bool, u64) -> anyhow::Result<()> + Send>;

/// Time to enforce from each source.
fn enforce(quick: bool) -> anyhow::Result<Value> {
    let dir = enforce_from(EnforceSource::Dir, quick)?;
    let api = enforce_from(EnforceSource::ApiServer, quick)?;
    let r = json!({"pods": 1000, "policies": 500, "poll_ms": POLL_MS, "probe_timeout_ms": PROBE_MS,
                   "dir": dir, "api_server": api});
    println!("enforce: {r}");
    Ok(r)
}

/// 1k pods (2 real, 998 on other nodes) and 500 policies.
fn enforce_objects() -> String {
    let mut base = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n");
    for (name, ip) in [("client", CLIENT), ("server", SERVER)] {
        base.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: bench, labels: {{app: {name}}}}}\nspec: {{nodeName: palisade-node, containers: [{{name: c, image: i}}]}}\nstatus: {{podIP: \"{ip}\"}}\n"
        ));
    }
    for i in 0..998 {
        base.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: bench, labels: {{app: a{}}}}}\nspec: {{nodeName: other, containers: [{{name: c, image: i}}]}}\nstatus: {{podIP: \"10.251.{}.{}\"}}\n",
            i % 50,
            i / 250,
            i % 250 + 1
        ));
    }
    for i in 0..499 {
        base.push_str(&format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np{i}, namespace: bench}}\nspec:\n  podSelector: {{matchLabels: {{app: a{}}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: a{}}}}}}}], ports: [{{port: 8080}}]}}]\n",
            i % 50,
            (i + 1) % 50
        ));
    }
    base
}

/// The policy that toggles whether the client may reach the server.
fn server_policy(allow: bool) -> String {
    let from = if allow { "client" } else { "nobody" };
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: server-in, namespace: bench}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: {from}}}}}}}]}}]\n"
    )
}

/// One policy toggles whether the client may reach the server, 1k pods and
/// 500 policies beside it. Time from the change (written into the
/// directory, or sent on the watch) to the first connection attempt that
/// shows the new verdict.
fn enforce_from(from: EnforceSource, quick: bool) -> anyhow::Result<Value> {
    let bed = testbed()?;
    let bin = agent_bin()?;
    let run = format!("{}-{}", std::process::id(), from as u8);
    let dir = std::env::temp_dir().join(format!("palisade-enforce-{run}"));
    let source = dir.join("src");
    std::fs::create_dir_all(&source)?;
    let base = enforce_objects();
    let spec = AgentSpec {
        bin,
        node_netns: bed.cluster.node_netns.clone(),
        source: source.clone(),
        config: None,
        pin_root: PathBuf::from(format!("/sys/fs/bpf/palisade-enforce-{run}")),
        status_file: dir.join("status.json"),
        stdout: dir.join("deny.jsonl"),
        stderr: dir.join("agent.log"),
        // The default poll interval: the change is read when inotify reports it.
        extra: ["--poll-ms", &POLL_MS.to_string(), "--listen", "off"]
            .map(String::from)
            .to_vec(),
        node_name: palisade_tests::topology::NODE_NAME.into(),
        interface_prefixes: vec![palisade_tests::topology::IF_PREFIX.into()],
        wrapper: Vec::new(),
    };
    let (agent, change): (AgentProcess, Change) = match from {
        EnforceSource::Dir => {
            std::fs::write(source.join("base.yaml"), &base)?;
            std::fs::write(source.join("server.yaml"), server_policy(false))?;
            let source = source.clone();
            let change = move |allow: bool, _| {
                let tmp = source.join("server.yaml.tmp");
                std::fs::write(&tmp, server_policy(allow))?;
                std::fs::rename(&tmp, source.join("server.yaml"))?;
                Ok(())
            };
            (AgentProcess::start(spec)?, Box::new(change))
        }
        EnforceSource::ApiServer => {
            // Bound in the node's namespace, where the agent runs.
            let listener = netns::in_netns(&bed.cluster.node_netns, || {
                Ok(TcpListener::bind("127.0.0.1:0")?)
            })?;
            let mut objects = served_objects(&base, 1)?;
            objects.extend(served_objects(&server_policy(false), 1)?);
            let fake = FakeApiServer::spawn(listener, objects)?;
            let kubeconfig = dir.join("kubeconfig");
            std::fs::write(&kubeconfig, fake.kubeconfig())?;
            let agent = AgentProcess::start_with_api_server(spec, kubeconfig)?;
            // A change pushed before the watches are open would be lost.
            let deadline = Instant::now() + Duration::from_secs(60);
            while fake.watches() < palisade_agent::index::Kind::REQUIRED.len() {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the agent's watches did not open in 60s"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            let change = move |allow: bool, version: u64| {
                let policy = served_objects(&server_policy(allow), version)?.remove(0);
                fake.push("NetworkPolicy", "MODIFIED", policy);
                Ok(())
            };
            (agent, Box::new(change))
        }
    };
    agent.wait_programmed(&bed.cluster.interfaces(), Duration::from_secs(60))?;
    let client_ns = bed.client_ns.clone();
    let rounds = if quick { 20 } else { 100 };
    let samples = netns::in_netns(&client_ns, move || {
        let to = SocketAddr::from((SERVER, 80));
        // A refused SYN costs the whole timeout: keep it short so samples
        // are not rounded up to it (a local connect takes well under 1 ms).
        let probe = || TcpStream::connect_timeout(&to, Duration::from_millis(PROBE_MS)).is_ok();
        let mut samples = Vec::new();
        for i in 0..rounds {
            let allow = i % 2 == 0;
            // Start from a settled state.
            std::thread::sleep(Duration::from_millis(100));
            let t0 = Instant::now();
            change(allow, i + 2)?;
            while probe() != allow {
                anyhow::ensure!(
                    t0.elapsed() < Duration::from_secs(5),
                    "the change did not take effect in 5s"
                );
            }
            samples.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        Ok(samples)
    })?;
    let log = agent.log();
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    // The agent's own part: from the batch's arrival to the maps written,
    // as its `programmed` records say, for the syncs of the changes.
    let field = |line: &str, name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let syncs: Vec<String> = log
        .lines()
        .map(strip_ansi)
        .filter(|l| l.contains("programmed") && field(l, "ops").is_some_and(|n| n > 0.0))
        .collect();
    // The last ones: the changes' (the first sync programs the whole state).
    let syncs = &syncs[syncs.len().saturating_sub(samples.len())..];
    let part = |name: &str| {
        let ms: Vec<f64> = syncs
            .iter()
            .filter_map(|l| field(l, name))
            .map(|us| us / 1e3)
            .collect();
        let (p50, p99, _) = percentiles(&ms);
        json!({"p50_ms": p50, "p99_ms": p99})
    };
    let (p50, p99, max) = percentiles(&samples);
    Ok(
        json!({"changes": samples.len(), "p50_ms": p50, "p99_ms": p99, "max_ms": max,
              "agent_syncs": syncs.len(), "agent": part("since_change_us"),
              "compile": part("compile_us"), "apply": part("apply_us")}),
    )
}

/// A log line without its terminal colours.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

/// p50, p99 and max (NaN of nothing).
fn percentiles(samples: &[f64]) -> (f64, f64, f64) {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        sorted
            .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    (pct(0.5), pct(0.99), pct(1.0))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // SAFETY: no preconditions.
    anyhow::ensure!(
        unsafe { libc::geteuid() } == 0,
        "benchmarks need root (network namespaces, eBPF)"
    );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    if cli.update {
        let only = cli.only.as_deref().unwrap_or_default();
        let json_path = cli.out.join("bench.json");
        let mut report: Value =
            serde_json::from_str(&std::fs::read_to_string(&json_path).with_context(|| {
                format!("--update needs a full run's {}", json_path.display())
            })?)?;
        report[only] = match only {
            "engine" => engine(cli.quick),
            "enforce" => enforce(cli.quick)?,
            "program" => program(cli.quick)?,
            "datapath" => datapath(cli.quick)?,
            _ => service(cli.quick)?,
        };
        report["rerun"][only] = json!(started);
        return write_reports(&cli.out, &report);
    }
    match cli.only.as_deref() {
        Some("engine") => {
            engine(cli.quick);
            return Ok(());
        }
        Some("enforce") => return enforce(cli.quick).map(drop),
        Some("program") => return program(cli.quick).map(drop),
        Some("datapath") => {
            println!("datapath: {}", datapath(cli.quick)?);
            return Ok(());
        }
        Some("service") => return service(cli.quick).map(drop),
        _ => {}
    }
    let engine = engine(cli.quick);
    let enforce = enforce(cli.quick)?;
    let program = program(cli.quick)?;
    let datapath = datapath(cli.quick)?;
    let service = service(cli.quick)?;
    let report = json!({"started": started, "kernel": kernel, "cpus": cpus, "quick": cli.quick, "engine": engine, "enforce": enforce, "program": program, "datapath": datapath, "service": service});
    write_reports(&cli.out, &report)
}

/// bench.json and BENCHMARKS.md (keeping its hand-written part), then the
/// report on stdout.
fn write_reports(out: &std::path::Path, report: &Value) -> anyhow::Result<()> {
    std::fs::write(
        out.join("bench.json"),
        serde_json::to_string_pretty(report)?,
    )?;
    let path = out.join("BENCHMARKS.md");
    let kept = std::fs::read_to_string(&path)
        .ok()
        .and_then(|old| old.find(HAND_WRITTEN).map(|i| old[i..].to_string()))
        .unwrap_or_else(|| format!("{HAND_WRITTEN}\n"));
    std::fs::write(&path, format!("{}\n{kept}", markdown(report)))?;
    println!("{}", markdown(report));
    Ok(())
}

/// From this line on BENCHMARKS.md is written by hand (comparisons made
/// outside one bench run, e.g. old and new builds side by side), and a
/// bench run keeps it.
const HAND_WRITTEN: &str = "<!-- Below: measured by hand, kept by `cargo xtask bench`. -->";

fn markdown(r: &Value) -> String {
    let mut s = String::from("# Benchmarks\n\n");
    s.push_str(&format!(
        "Produced by `cargo xtask bench{}` on {} ({} CPUs, kernel {}). All figures of one run, side by side; \
         quote the ratios, not the absolute numbers: these machines are noisy.\n\n",
        if r["quick"].as_bool() == Some(true) { " --quick" } else { "" },
        r["started"].as_str().unwrap_or(""),
        r["cpus"],
        r["kernel"].as_str().unwrap_or("")
    ));
    if let Some(rerun) = r["rerun"].as_object() {
        for (section, when) in rerun {
            s.push_str(&format!(
                "Section `{section}` re-run on {} (`--only {section} --update`); its figures are of that run.\n\n",
                when.as_str().unwrap_or("")
            ));
        }
    }
    let d = &r["datapath"];
    s.push_str(&format!(
        "## Datapath: two pod namespaces on one node\n\n\
         {} rounds; in each, every rule count's setups (four; five at 1k, with Palisade unobserved) run back to back in an order rotating \
         from round to round, and each is compared with the bare run of its own round. Medians over \
         the rounds, the ratio's range after it.\n\n\
         The agent's column is the share of one CPU its process used while measured (median): \
         on 2 CPUs that is taken from the traffic.\n\n\
         | setup | Gbit/s | vs bare | conn/s | vs bare | agent CPU |\n|---|---|---|---|---|---|\n",
        d["rounds"]
    ));
    let order = [
        "bare",
        "palisade-10",
        "nft-linear-10",
        "nft-set-10",
        "palisade-1000",
        "palisade-unobserved-1000",
        "nft-linear-1000",
        "nft-set-1000",
        "palisade-10000",
        "nft-linear-10000",
        "nft-set-10000",
    ];
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    for k in order {
        if let Some(row) = d.get(k) {
            s.push_str(&format!(
                "| {k} | {:.2} | {:.3} ({:.3} – {:.3}) | {:.0} | {:.3} ({:.3} – {:.3}) | {} |\n",
                f(&row["gbit_per_s"]),
                f(&row["throughput_vs_bare"]),
                f(&row["throughput_vs_bare_min"]),
                f(&row["throughput_vs_bare_max"]),
                f(&row["conn_per_s"]),
                f(&row["conn_rate_vs_bare"]),
                f(&row["conn_rate_vs_bare_min"]),
                f(&row["conn_rate_vs_bare_max"]),
                row["agent_cpu_share"]
                    .as_f64()
                    .map_or("–".to_string(), |c| format!("{:.0} %", c * 100.0)),
            ));
        }
    }
    for n in ["10", "1000", "10000"] {
        if let Some(v) = d.get(format!("palisade-vs-nft-linear-{n}")) {
            s.push_str(&format!(
                "\nConnection rate Palisade / nftables linear at {n} rules: {:.2}x ({:.2} – {:.2})",
                f(&v["conn_rate_ratio"]),
                f(&v["min"]),
                f(&v["max"])
            ));
        }
    }
    if let (Some(on), Some(off)) = (d.get("palisade-1000"), d.get("palisade-unobserved-1000")) {
        s.push_str(&format!(
            "\n\nRecording allowed flows (`--observe-flows`, on by default) at 1k rules: connection rate \
             {:.3} of bare with it, {:.3} without it (same rounds).",
            f(&on["conn_rate_vs_bare"]),
            f(&off["conn_rate_vs_bare"])
        ));
    }
    let verdict = |name: &str, mid: f64, lo: f64, target: f64| {
        if lo >= target {
            format!("- {name}: met in every round (median {mid:.2}, target {target})\n")
        } else if mid >= target {
            format!(
                "- {name}: met by the median ({mid:.2}, target {target}); the range crosses it ({lo:.2})\n"
            )
        } else {
            format!("- {name}: not met (median {mid:.2}, target {target})\n")
        }
    };
    s.push_str("\n\nTargets (issue 18):\n\n");
    let p1k = &d["palisade-1000"];
    s.push_str(&verdict(
        "new-connection rate with 1k rules ≥ 0.95 of bare",
        f(&p1k["conn_rate_vs_bare"]),
        f(&p1k["conn_rate_vs_bare_min"]),
        0.95,
    ));
    let v10k = &d["palisade-vs-nft-linear-10000"];
    s.push_str(&verdict(
        "connection rate at 10k rules ≥ 3x nftables linear",
        f(&v10k["conn_rate_ratio"]),
        f(&v10k["min"]),
        3.0,
    ));
    let v = &r["service"];
    let target = 0.93;
    let lo = v["ratio_min"].as_f64().unwrap_or(0.0);
    let mid = v["ratio_median"].as_f64().unwrap_or(0.0);
    s.push_str(&format!(
        "\n\n## Connection rate through a Service (ClusterIP, kube-proxy-style nftables DNAT)\n\n\
         One-byte request and reply per connection to the Service address, the client's egress and the \
         server's ingress both restricted by policy (judged by the backend and its target port). \
         {} interleaved rounds of {} s per setup, order alternating; per round Palisade / bare.\n\n\
         | | bare conn/s (median) | palisade conn/s (median) | ratio median | ratio range |\n|---|---|---|---|---|\n\
         | through the Service | {:.0} | {:.0} | {:.3} | {:.3} – {:.3} |\n\n{}\n",
        v["rounds"],
        v["seconds_per_run"],
        v["bare_median"].as_f64().unwrap_or(0.0),
        v["palisade_median"].as_f64().unwrap_or(0.0),
        mid,
        lo,
        v["ratio_max"].as_f64().unwrap_or(0.0),
        if lo >= target {
            format!("Target ≥ {target} of bare: met in every round.")
        } else if mid >= target {
            format!("Target ≥ {target} of bare: met by the median; the range crosses it, so not in every round.")
        } else {
            format!("Target ≥ {target} of bare: not met.")
        }
    ));
    s.push_str("\n\n## Engine: 10k pods x 1k policies (synthetic), 110 pods on this node\n\n");
    let e = &r["engine"];
    s.push_str(&format!(
        "- full compile (median): {:.1} ms\n- one pod relabelled, compile by the kept compiler (median): {:.1} ms ({:.2}x the full compile); its work: {}\n- the same, compile + diff + apply to in-memory maps (median): {:.1} ms, {} map writes\n- RSS of the bench process holding what an agent holds (the model, the syncer with its compiler caches, compiled state and map mirror): {:.1} MiB\n- map entries: {}\n- kernel map memory for those entries (keys + values, estimate): {:.1} KiB\n",
        e["full_compile_ms_median"].as_f64().unwrap_or(0.0),
        e["incremental_compile_ms_median"].as_f64().unwrap_or(0.0),
        e["incremental_compile_ms_median"].as_f64().unwrap_or(0.0)
            / e["full_compile_ms_median"].as_f64().unwrap_or(1.0),
        e["incremental_work"],
        e["incremental_sync_ms_median"].as_f64().unwrap_or(0.0),
        e["incremental_ops_median"],
        e["rss_mib"].as_f64().unwrap_or(0.0),
        e["map_entries"],
        e["kernel_map_bytes_estimate"].as_f64().unwrap_or(0.0) / 1024.0
    ));
    let o = &e["ordered"];
    s.push_str(&format!(
        "- with 100 ClusterNetworkPolicies (Admin and Baseline) and 100 Calico policies (two tiers) added, every one of them selecting some of the local pods: full compile (median) {:.1} ms, {} policy entries (against {} without them): the cost of resolving precedence in user space\n",
        o["full_compile_ms_median"].as_f64().unwrap_or(0.0),
        o["policy_entries"],
        e["map_entries"]["policy"],
    ));
    let l = &e["largest_admitted_policy"];
    s.push_str(&format!(
        "- largest policies the default budgets admit, added to that model (50 peers x 1,000 ports on one pod; 999 excepts): {} policy entries, {} ipcache entries; compile {:.1} ms, compile + apply {:.1} ms; RSS after {:.1} MiB; another namespace's edit beside them (median compile): {:.1} ms, work {}\n",
        l["policy_entries"],
        l["ipcache_entries"],
        l["admit_compile_ms"].as_f64().unwrap_or(0.0),
        l["admit_sync_ms"].as_f64().unwrap_or(0.0),
        l["rss_mib_after"].as_f64().unwrap_or(0.0),
        l["other_namespace_edit_compile_ms_median"].as_f64().unwrap_or(0.0),
        l["other_namespace_edit_work"],
    ));
    let p = &r["program"];
    s.push_str(&format!(
        "\n## Program cost per packet (BPF_PROG_TEST_RUN)\n\n{} rounds; in each, Palisade and the floor (`palisade_floor`: the same parser, then one conntrack lookup, nothing else) alternately, {} runs each per case (a new allowed flow: {} single runs with fresh source ports, median); the ratio per round, median and range over the rounds.\n\n| packet | Palisade ns | floor ns | Palisade / floor |\n|---|---|---|---|\n",
        p["rounds"], p["repeat"], p["new_flows_per_round"]
    ));
    for (case, label) in [
        ("tracked", "packet of a tracked flow"),
        ("reply", "reply of a tracked flow"),
        (
            "allowed_new",
            "new flow allowed by policy (conntrack insert)",
        ),
        (
            "denied_new",
            "new flow denied by policy (full lookup path, deny event)",
        ),
    ] {
        let c = &p["cases"][case];
        s.push_str(&format!(
            "| {label} | {:.0} | {:.0} | {:.2} ({:.2} – {:.2}) |\n",
            c["ns"].as_f64().unwrap_or(0.0),
            c["floor_ns"].as_f64().unwrap_or(0.0),
            c["ratio"].as_f64().unwrap_or(0.0),
            c["ratio_min"].as_f64().unwrap_or(0.0),
            c["ratio_max"].as_f64().unwrap_or(0.0),
        ));
    }
    let tracked = &p["cases"]["tracked"];
    let (ratio, hi) = (
        tracked["ratio"].as_f64().unwrap_or(f64::MAX),
        tracked["ratio_max"].as_f64().unwrap_or(f64::MAX),
    );
    let target = p["target_tracked_ratio"].as_f64().unwrap_or(1.3);
    s.push_str(&format!(
        "\nTarget (issue 18): a tracked-flow packet ≤ {target}x the floor: {}\n",
        if hi <= target {
            format!("met in every round (median {ratio:.2})")
        } else if ratio <= target {
            format!("met by the median ({ratio:.2}); the range crosses it ({hi:.2})")
        } else {
            format!("not met (median {ratio:.2})")
        }
    ));
    let t = &r["enforce"];
    s.push_str(&format!(
        "\n## Time to enforce: 1k pods x 500 policies in the model\n\nFrom a policy change to the first connection attempt with the new verdict (probe timeout {} ms), changes alternating allow and deny. The standalone source's change is an atomic rename, read when inotify reports it (the poll interval being {} ms); the API server's is a watch event (`MODIFIED`) sent by an API server in memory (`source::fake_apiserver`) to the agent's kube-rs watchers.\n\nThe agent's part is from a batch's arrival to the maps written, and the compile within it (its `programmed` records), p50 / p99.\n\n| source | changes | p50 | p99 | max | agent's part | compile |\n|---|---|---|---|---|---|---|\n",
        t["probe_timeout_ms"], t["poll_ms"]
    ));
    let target = 20.0;
    let mut verdicts = Vec::new();
    for (key, name) in [
        ("dir", "standalone directory"),
        ("api_server", "API server (watch)"),
    ] {
        let e = &t[key];
        let p99 = e["p99_ms"].as_f64().unwrap_or(f64::NAN);
        let ms = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        s.push_str(&format!(
            "| {name} | {} | {:.1} ms | {p99:.1} ms | {:.1} ms | {:.1} / {:.1} ms | {:.1} / {:.1} ms |\n",
            e["changes"],
            ms(&e["p50_ms"]),
            ms(&e["max_ms"]),
            ms(&e["agent"]["p50_ms"]),
            ms(&e["agent"]["p99_ms"]),
            ms(&e["compile"]["p50_ms"]),
            ms(&e["compile"]["p99_ms"])
        ));
        verdicts.push(format!(
            "{name} {} (p99 {p99:.1} ms)",
            if p99 <= target { "met" } else { "not met" }
        ));
    }
    s.push_str(&format!(
        "\nTarget (issue 18): p99 ≤ {target} ms for both sources: {}\n",
        verdicts.join("; ")
    ));
    s
}
