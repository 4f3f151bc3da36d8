//! `palisade-bench`: what Palisade costs, measured side by side in one run
//! (run it through `cargo xtask bench`). Sections:
//!
//! * engine: full compile and one incremental sync of 10k pods x 1k
//!   policies, agent RSS, map entries;
//! * datapath: TCP throughput (iperf3) and short-connection rate between two
//!   pod namespaces: bare veth, Palisade with 10 / 1k / 10k rules on the node,
//!   and the same rules as nftables (linear chain, and a set).
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
    sync::Syncer,
};
use palisade_tests::{
    agent::{AgentProcess, AgentSpec, agent_bin},
    exec::run,
    fixtures, netns, packets,
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
    #[arg(long, value_parser = ["engine", "enforce", "program", "datapath"])]
    only: Option<String>,
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
    let result = json!({
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

// --------------------------------------------------------------- program

/// The tc program's own cost per packet: BPF_PROG_TEST_RUN runs one frame
/// `repeat` times inside the kernel and reports the mean, which leaves the
/// rest of the network stack, and most of a shared machine's noise, out.
/// Paths: a packet of a tracked flow, a reply, and a new flow the policy
/// denies (never tracked, so every run takes the whole policy path).
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
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    let (client, server): (std::net::IpAddr, std::net::IpAddr) =
        ("10.0.0.1".parse()?, "10.0.0.2".parse()?);
    let (_pins, mut dp, _syncer) =
        fixtures::load(MODEL, &Profile::default(), UnknownEndpoint::Allow);
    let repeat = if quick { 200_000 } else { 1_000_000 };
    let mut cost = |hook: Hook, pkt: &[u8]| -> anyhow::Result<f64> {
        let prog = dp.classifier(hook)?;
        let mut runs = Vec::new();
        for _ in 0..5 {
            let r = prog.test_run(TestRunOptions {
                data_in: Some(pkt),
                repeat,
                ..TestRunOptions::new()
            })?;
            runs.push(r.duration.as_secs_f64() * 1e9);
        }
        Ok(median(runs))
    };
    // Open the flow once, then time its packets both ways.
    cost(
        Hook::FromPod,
        &packets::packet(client, server, 6, 40000, 80, SYN),
    )?;
    let established = cost(
        Hook::FromPod,
        &packets::packet(client, server, 6, 40000, 80, ACK),
    )?;
    let reply = cost(
        Hook::ToPod,
        &packets::packet(server, client, 6, 80, 40000, SYN | ACK),
    )?;
    let denied = cost(
        Hook::FromPod,
        &packets::packet(client, server, 6, 40001, 81, SYN),
    )?;
    let r = json!({"repeat": repeat, "established_ns": established, "reply_ns": reply, "denied_new_ns": denied});
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
    let ns = bed.client_ns.clone();
    netns::in_netns(&ns, move || {
        let deadline = Instant::now() + Duration::from_secs_f64(secs);
        let mut n = 0u64;
        let to = SocketAddr::from((SERVER, 80));
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
    let secs = if quick { 3 } else { 8 };
    let gbps = iperf(bed, secs)? / 1e9;
    let cps = conn_rate(bed, if quick { 2.0 } else { 5.0 })?;
    Ok((gbps, cps))
}

fn datapath(quick: bool) -> anyhow::Result<Value> {
    let bed = testbed()?;
    let bin = agent_bin()?;
    let mut rows: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    let bare = measure(&bed, quick)?;
    println!("bare veth: {:.2} Gbit/s, {:.0} conn/s", bare.0, bare.1);
    rows.insert("bare".into(), bare);
    let dir = std::env::temp_dir().join(format!("palisade-bench-{}", std::process::id()));
    for n in [10usize, 1_000, 10_000] {
        let source = dir.join(format!("src-{n}"));
        std::fs::create_dir_all(&source)?;
        std::fs::write(source.join("bench.yaml"), source_yaml(n))?;
        let agent = AgentProcess::start(AgentSpec {
            bin: bin.clone(),
            node_netns: bed.cluster.node_netns.clone(),
            source: source.clone(),
            config: None,
            pin_root: PathBuf::from(format!(
                "/sys/fs/bpf/palisade-bench-{}-{n}",
                std::process::id()
            )),
            status_file: dir.join(format!("status-{n}.json")),
            stdout: dir.join("deny.jsonl"),
            stderr: dir.join("agent.log"),
            extra: vec!["--listen".into(), "off".into()],
            node_name: palisade_tests::topology::NODE_NAME.into(),
            interface_prefixes: vec![palisade_tests::topology::IF_PREFIX.into()],
            wrapper: Vec::new(),
        });
        let agent = agent?;
        agent.wait_programmed(&bed.cluster.interfaces(), Duration::from_secs(60))?;
        let r = measure(&bed, quick)?;
        println!("palisade, {n} rules: {:.2} Gbit/s, {:.0} conn/s", r.0, r.1);
        rows.insert(format!("palisade-{n}"), r);
        drop(agent);
        for (label, set) in [("nft-linear", false), ("nft-set", true)] {
            let file = dir.join(format!("{label}-{n}.nft"));
            std::fs::write(&file, nft_rules(n, set))?;
            run(Command::new("ip")
                .args(["netns", "exec", &bed.cluster.node_netns, "nft", "-f"])
                .arg(&file))?;
            let r = measure(&bed, quick)?;
            println!("{label}, {n} rules: {:.2} Gbit/s, {:.0} conn/s", r.0, r.1);
            rows.insert(format!("{label}-{n}"), r);
            run(Command::new("ip").args([
                "netns",
                "exec",
                &bed.cluster.node_netns,
                "nft",
                "delete",
                "table",
                "inet",
                "bench",
            ]))?;
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let mut out = serde_json::Map::new();
    for (k, (gbps, cps)) in &rows {
        out.insert(
            k.clone(),
            json!({"gbit_per_s": gbps, "conn_per_s": cps,
            "throughput_vs_bare": gbps / bare.0, "conn_rate_vs_bare": cps / bare.1}),
        );
    }
    Ok(Value::Object(out))
}

const POLL_MS: u64 = 200;
const PROBE_MS: u64 = 3;

/// 1k pods (2 real, 998 on other nodes) and 500 policies in the model; one
/// policy toggles whether the client may reach the server. Time from writing
/// the change into the source directory to the first connection attempt that
/// shows the new verdict.
fn enforce(quick: bool) -> anyhow::Result<Value> {
    let bed = testbed()?;
    let bin = agent_bin()?;
    let dir = std::env::temp_dir().join(format!("palisade-enforce-{}", std::process::id()));
    let source = dir.join("src");
    std::fs::create_dir_all(&source)?;
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
    let server_policy = |allow: bool| {
        let from = if allow { "client" } else { "nobody" };
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: server-in, namespace: bench}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: {from}}}}}}}]}}]\n"
        )
    };
    std::fs::write(source.join("base.yaml"), &base)?;
    std::fs::write(source.join("server.yaml"), server_policy(false))?;
    let agent = AgentProcess::start(AgentSpec {
        bin,
        node_netns: bed.cluster.node_netns.clone(),
        source: source.clone(),
        config: None,
        pin_root: PathBuf::from(format!(
            "/sys/fs/bpf/palisade-enforce-{}",
            std::process::id()
        )),
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
    })?;
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
            let tmp = source.join("server.yaml.tmp");
            std::fs::write(&tmp, server_policy(allow))?;
            let t0 = Instant::now();
            std::fs::rename(&tmp, source.join("server.yaml"))?;
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
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    let mut sorted = samples.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| sorted[((sorted.len() as f64 - 1.0) * p).round() as usize];
    let r = json!({"changes": samples.len(), "pods": 1000, "policies": 500, "poll_ms": POLL_MS, "probe_timeout_ms": PROBE_MS,
                   "p50_ms": pct(0.5), "p99_ms": pct(0.99), "max_ms": pct(1.0)});
    println!("enforce: {r}");
    Ok(r)
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
    match cli.only.as_deref() {
        Some("engine") => {
            engine(cli.quick);
            return Ok(());
        }
        Some("enforce") => return enforce(cli.quick).map(drop),
        Some("program") => return program(cli.quick).map(drop),
        Some("datapath") => return datapath(cli.quick).map(drop),
        _ => {}
    }
    let engine = engine(cli.quick);
    let enforce = enforce(cli.quick)?;
    let program = program(cli.quick)?;
    let datapath = datapath(cli.quick)?;
    let report = json!({"started": started, "kernel": kernel, "cpus": cpus, "quick": cli.quick, "engine": engine, "enforce": enforce, "program": program, "datapath": datapath});
    std::fs::write(
        cli.out.join("bench.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(cli.out.join("BENCHMARKS.md"), markdown(&report))?;
    println!("{}", markdown(&report));
    Ok(())
}

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
    s.push_str("## Datapath: two pod namespaces on one node\n\n| setup | Gbit/s | vs bare | conn/s | vs bare |\n|---|---|---|---|---|\n");
    let d = &r["datapath"];
    let order = [
        "bare",
        "palisade-10",
        "nft-linear-10",
        "nft-set-10",
        "palisade-1000",
        "nft-linear-1000",
        "nft-set-1000",
        "palisade-10000",
        "nft-linear-10000",
        "nft-set-10000",
    ];
    for k in order {
        if let Some(row) = d.get(k) {
            s.push_str(&format!(
                "| {k} | {:.2} | {:.3} | {:.0} | {:.3} |\n",
                row["gbit_per_s"].as_f64().unwrap_or(0.0),
                row["throughput_vs_bare"].as_f64().unwrap_or(0.0),
                row["conn_per_s"].as_f64().unwrap_or(0.0),
                row["conn_rate_vs_bare"].as_f64().unwrap_or(0.0)
            ));
        }
    }
    for n in ["10", "1000", "10000"] {
        let p = d
            .get(format!("palisade-{n}"))
            .and_then(|v| v["conn_per_s"].as_f64())
            .unwrap_or(0.0);
        let l = d
            .get(format!("nft-linear-{n}"))
            .and_then(|v| v["conn_per_s"].as_f64())
            .unwrap_or(1.0);
        s.push_str(&format!(
            "\nConnection rate Palisade / nftables linear at {n} rules: {:.2}x",
            p / l
        ));
    }
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
    let p = &r["program"];
    s.push_str(&format!(
        "\n## Program cost per packet (BPF_PROG_TEST_RUN, kernel mean over {} runs)\n\n- packet of a tracked flow: {:.0} ns\n- reply of a tracked flow: {:.0} ns\n- new flow denied by policy (full lookup path, deny event): {:.0} ns\n",
        p["repeat"],
        p["established_ns"].as_f64().unwrap_or(0.0),
        p["reply_ns"].as_f64().unwrap_or(0.0),
        p["denied_new_ns"].as_f64().unwrap_or(0.0)
    ));
    let t = &r["enforce"];
    s.push_str(&format!(
        "\n## Time to enforce: 1k pods x 500 policies in the model\n\nFrom a policy change written into the standalone source (atomic rename; read when inotify reports it, the poll interval being {} ms) to the first connection attempt with the new verdict (probe timeout {} ms), {} changes alternating allow and deny: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms. The API-server source is pushed by its watches.\n",
        t["poll_ms"],
        t["probe_timeout_ms"],
        t["changes"],
        t["p50_ms"].as_f64().unwrap_or(0.0),
        t["p99_ms"].as_f64().unwrap_or(0.0),
        t["max_ms"].as_f64().unwrap_or(0.0)
    ));
    s
}
