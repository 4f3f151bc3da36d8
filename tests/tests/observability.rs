//! Deny records, `palisade flows` and metrics on real traffic: one
//! aggregated record per denied flow with the right attribution (a named
//! policy, the default deny, the metadata block), a flood kept within the
//! log budget with a suppression summary, and Prometheus counters that move.
//! Privileged: root, netns, eBPF.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    process::Command,
    time::Duration,
};

use palisade_tests::{
    agent::{AgentProcess, AgentSpec, agent_bin},
    fixtures, netns, probe,
    scenario::{Family, PortSpec},
    topology::Cluster,
};
use serde_json::Value;

const SOURCE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Namespace
metadata: {name: d}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]
"#;

/// `GET path` on the agent's endpoint, from inside the node's namespace.
fn http_get(node: &str, path: &str) -> anyhow::Result<String> {
    http_get_at(node, "127.0.0.1:9965", path)
}

fn http_get_at(node: &str, addr: &str, path: &str) -> anyhow::Result<String> {
    let (addr, path) = (addr.to_string(), path.to_string());
    netns::in_netns(node, move || {
        let mut s = TcpStream::connect(addr)?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: agent\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
}

fn records(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn deny_records_flows_cli_and_metrics() -> anyhow::Result<()> {
    palisade_tests::fixtures::require_root();
    let bin = agent_bin()?;
    let run = format!("o{}", std::process::id() % 100_000);
    let mut cluster = Cluster::new(&run, Family::Ipv4)?;
    let web = vec![PortSpec {
        port: 80,
        protocol: "TCP".into(),
        name: None,
    }];
    let ips = [
        Ipv4Addr::new(10, 8, 0, 10),
        Ipv4Addr::new(10, 8, 0, 11),
        Ipv4Addr::new(10, 8, 0, 12),
        Ipv4Addr::new(10, 8, 1, 10),
    ];
    let a = cluster.add_wired("x/a", Some(ips[0]), None, web.clone())?;
    let b = cluster.add_wired("x/b", Some(ips[1]), None, web.clone())?;
    let c = cluster.add_wired("x/c", Some(ips[2]), None, web.clone())?;
    let d = cluster.add_wired("d/d1", Some(ips[3]), None, web.clone())?;
    let md = cluster.add_wired(
        "external:metadata",
        Some(Ipv4Addr::new(169, 254, 169, 254)),
        None,
        web.clone(),
    )?;
    let _l: Vec<_> = [&b, &d, &md]
        .iter()
        .map(|h| probe::listen(h.netns.as_deref(), &web))
        .collect::<Result<_, _>>()?;
    let (na, nc) = (
        a.netns.clone().unwrap_or_default(),
        c.netns.clone().unwrap_or_default(),
    );

    let dir = std::env::temp_dir().join(format!("palisade-observe-{run}"));
    let source = dir.join("source");
    std::fs::create_dir_all(&source)?;
    std::fs::write(
        source.join("cluster.yaml"),
        format!(
            "{SOURCE}{}{}{}{}",
            fixtures::pod_yaml("x", "a", ips[0]),
            fixtures::pod_yaml("x", "b", ips[1]),
            fixtures::pod_yaml("x", "c", ips[2]),
            fixtures::pod_yaml("d", "d1", ips[3])
        ),
    )?;
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        "defaultDeny: true\ndefaultDenyExempt: [x, kube-system]\n",
    )?;
    let agent = AgentProcess::start(AgentSpec {
        config: Some(config),
        extra: [
            "--poll-ms",
            "50",
            "--deny-idle-secs",
            "1.5",
            "--deny-rate",
            "2",
            "--policy-map-size",
            "4096",
            "--metrics-listen",
            "[::]:9974",
        ]
        .map(String::from)
        .to_vec(),
        ..AgentSpec::in_dir(
            bin.clone(),
            &cluster.node_netns,
            &dir,
            format!("/sys/fs/bpf/palisade-observe-{run}").into(),
        )
    })?;
    agent.wait_programmed(&cluster.interfaces(), Duration::from_secs(20))?;
    let node = cluster.node_netns.clone();
    assert!(
        http_get(&node, "/readyz")?.starts_with("HTTP/1.0 200"),
        "ready once programmed"
    );

    // One denied flow per reason.
    let short = Duration::from_millis(1500);
    assert!(
        !fixtures::connects(&nc, SocketAddr::from((ips[1], 80)), short),
        "c -> b is denied by x/b-from-a"
    );
    assert!(
        !fixtures::connects(&na, SocketAddr::from((ips[3], 80)), short),
        "a -> d/d1 is denied by the default deny"
    );
    assert!(
        !fixtures::connects(&na, "169.254.169.254:80".parse()?, short),
        "a -> metadata is blocked"
    );
    assert!(
        fixtures::connects(&na, SocketAddr::from((ips[1], 80)), short),
        "a -> b is allowed"
    );
    // Each denied connect sent two SYNs (0 s, 1 s); the records come once
    // the flows have been quiet for the idle window.
    std::thread::sleep(Duration::from_millis(2500));

    // Through the CLI, as an operator would.
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{node}"))
        .arg(&bin)
        .args(["flows", "--json"])
        .output()?;
    assert!(
        out.status.success(),
        "palisade flows: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = records(&String::from_utf8_lossy(&out.stdout));
    let to = |ip: Ipv4Addr| {
        recs.iter()
            .filter(|r| r["dst"]["ip"] == ip.to_string())
            .collect::<Vec<_>>()
    };
    let c_to_b = to(ips[1]);
    assert_eq!(
        c_to_b.len(),
        1,
        "exactly one record for the denied flow: {c_to_b:?}"
    );
    assert_eq!(c_to_b[0]["reason"], "policy");
    assert_eq!(c_to_b[0]["policies"], serde_json::json!(["x/b-from-a"]));
    assert_eq!(c_to_b[0]["src"]["pod"], "x/c");
    assert_eq!(c_to_b[0]["dst"]["pod"], "x/b");
    assert_eq!(c_to_b[0]["dst"]["port"], 80);
    assert_eq!(c_to_b[0]["direction"], "ingress");
    assert!(c_to_b[0]["count"].as_u64().unwrap_or(0) >= 1);
    let a_to_d = to(ips[3]);
    assert_eq!(a_to_d.len(), 1, "{a_to_d:?}");
    assert_eq!(a_to_d[0]["reason"], "default-deny");
    let a_to_md = to(Ipv4Addr::new(169, 254, 169, 254));
    assert_eq!(a_to_md.len(), 1, "{a_to_md:?}");
    assert_eq!(a_to_md[0]["reason"], "metadata-block");
    assert_eq!(a_to_md[0]["direction"], "egress");
    // Filters.
    let only_d = records(&http_get(&node, "/flows?namespace=d")?);
    assert_eq!(only_d.len(), 1, "{only_d:?}");

    // A flood of denied flows (distinct source ports) stays within the budget.
    let flood: Vec<_> = (0..200)
        .map(|_| {
            let nc = nc.clone();
            std::thread::spawn(move || {
                fixtures::connects(
                    &nc,
                    SocketAddr::from((ips[1], 80)),
                    Duration::from_millis(300),
                )
            })
        })
        .collect();
    for t in flood {
        assert!(!t.join().unwrap_or(true), "flood connections are denied");
    }
    std::thread::sleep(Duration::from_millis(4000));
    let all = records(&std::fs::read_to_string(dir.join("deny.jsonl"))?);
    let denies = all.iter().filter(|r| r["type"] == "deny").count();
    let suppressed: u64 = all
        .iter()
        .filter(|r| r["type"] == "suppressed")
        .filter_map(|r| r["suppressed"].as_u64())
        .sum();
    // Budget: burst 8 (4x the rate) plus 2 per second over the few seconds of the test.
    assert!(
        denies <= 8 + 2 * 12,
        "records stay within the budget: {denies}"
    );
    assert!(
        suppressed > 100,
        "a summary says how many were suppressed: {suppressed}"
    );

    // Metrics moved.
    let metrics = http_get(&node, "/metrics")?;
    let value = |needle: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    assert!(
        value("palisade_datapath_packets_total{counter=\"denied\"}") >= 200.0,
        "{metrics}"
    );
    assert!(
        value(
            "palisade_denied_flows_total{direction=\"egress\",reason=\"metadata-block\",policy=\"\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        value("palisade_deny_records_suppressed_total") > 100.0,
        "{metrics}"
    );
    assert!(
        value("palisade_map_entries{map=\"policy\"}") >= 1.0,
        "{metrics}"
    );
    assert!(
        metrics.contains("palisade_policy_programming_seconds_count 1"),
        "{metrics}"
    );
    // Capacities as the kernel holds them, --policy-map-size included.
    assert_eq!(
        value("palisade_map_capacity{map=\"policy\"}"),
        4096.0,
        "{metrics}"
    );
    assert_eq!(
        value("palisade_map_capacity{map=\"ipcache\"}"),
        f64::from(palisade_common::MAX_IPCACHE),
        "{metrics}"
    );

    // The metrics port serves metrics and health, over IPv4 and IPv6, and
    // never flows or status.
    for addr in ["127.0.0.1:9974", "[::1]:9974"] {
        let m = http_get_at(&node, addr, "/metrics")?;
        assert!(m.contains("palisade_map_capacity"), "{addr}: {m}");
        assert!(http_get_at(&node, addr, "/readyz")?.starts_with("HTTP/1.0 200"));
        for path in ["/flows", "/status"] {
            let r = http_get_at(&node, addr, path)?;
            assert!(r.starts_with("HTTP/1.0 404"), "{addr}{path}: {r}");
        }
    }

    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A Calico `Log` rule writes a log record for what it matched and leaves
/// the verdict to the rules after it; the would-deny metric moves for an
/// audited policy; a deny record names the ordered policy (or tier end) that
/// decided, and its tier.
#[test]
fn log_rules_and_audited_policies_write_their_records() -> anyhow::Result<()> {
    palisade_tests::fixtures::require_root();
    let bin = agent_bin()?;
    let run = format!("l{}", std::process::id() % 100_000);
    let mut cluster = Cluster::new(&run, Family::Ipv4)?;
    let web = vec![PortSpec {
        port: 80,
        protocol: "TCP".into(),
        name: None,
    }];
    let names = ["a", "b", "c", "d", "e", "f", "g"];
    let ips: Vec<Ipv4Addr> = (10..)
        .take(names.len())
        .map(|i| Ipv4Addr::new(10, 6, 0, i))
        .collect();
    let hosts = names
        .iter()
        .zip(&ips)
        .map(|(n, ip)| cluster.add_wired(&format!("x/{n}"), Some(*ip), None, web.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let _l: Vec<_> = hosts[1..]
        .iter()
        .map(|h| probe::listen(h.netns.as_deref(), &web))
        .collect::<Result<_, _>>()?;
    let a = &hosts[0];
    let na = a.netns.clone().unwrap_or_default();
    let dir = std::env::temp_dir().join(format!("palisade-log-{run}"));
    let source = dir.join("source");
    std::fs::create_dir_all(&source)?;
    let policies = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: log-then-allow, namespace: x}
spec:
  selector: 'pod == "b"'
  types: [Ingress]
  ingress:
    - action: Log
    - action: Allow
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: log-then-deny, namespace: x}
spec:
  selector: 'pod == "d"'
  types: [Ingress]
  ingress:
    - action: Log
    - action: Deny
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: c-closed
  namespace: x
  annotations: {palisade.dev/mode: audit}
spec:
  podSelector: {matchLabels: {pod: c}}
  policyTypes: [Ingress]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: no-e}
spec:
  tier: Admin
  priority: 5
  subject:
    pods:
      namespaceSelector: {}
      podSelector: {matchLabels: {pod: e}}
  ingress:
    - name: deny-all
      action: Deny
      from: [{namespaces: {}}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: no-f}
spec:
  tier: Baseline
  priority: 5
  subject:
    pods:
      namespaceSelector: {}
      podSelector: {matchLabels: {pod: f}}
  ingress:
    - name: deny-all
      action: Deny
      from: [{namespaces: {}}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: g-from-nobody, namespace: x}
spec:
  selector: 'pod == "g"'
  types: [Ingress]
  ingress:
    - action: Allow
      source: {selector: 'pod == "nobody"'}
"#;
    let pods: String = names
        .iter()
        .zip(&ips)
        .map(|(n, ip)| fixtures::pod_yaml("x", n, *ip))
        .collect();
    std::fs::write(source.join("cluster.yaml"), format!("{policies}{pods}"))?;
    let agent = AgentProcess::start(AgentSpec {
        extra: ["--poll-ms", "50", "--deny-idle-secs", "1"]
            .map(String::from)
            .to_vec(),
        ..AgentSpec::in_dir(
            bin.clone(),
            &cluster.node_netns,
            &dir,
            format!("/sys/fs/bpf/palisade-log-{run}").into(),
        )
    })?;
    agent.wait_programmed(&cluster.interfaces(), Duration::from_secs(20))?;
    let node = cluster.node_netns.clone();
    let short = Duration::from_millis(1500);
    assert!(
        fixtures::connects(&na, SocketAddr::from((ips[1], 80)), short),
        "a Log rule does not change the verdict"
    );
    assert!(
        fixtures::connects(&na, SocketAddr::from((ips[2], 80)), short),
        "an audited policy does not deny"
    );
    assert!(
        !fixtures::connects(&na, SocketAddr::from((ips[3], 80)), short),
        "the rule after the Log rule denies"
    );
    for (ip, why) in [
        (ips[4], "an Admin Deny"),
        (ips[5], "a Baseline Deny"),
        (ips[6], "the end of the Calico tier"),
    ] {
        assert!(
            !fixtures::connects(&na, SocketAddr::from((ip, 80)), short),
            "{why} denies"
        );
    }
    std::thread::sleep(Duration::from_millis(2500));
    let recs = records(&http_get(&node, "/flows")?);
    let to_d = |t: &str| {
        recs.iter()
            .filter(|r| r["type"] == t && r["dst"]["pod"] == "x/d")
            .count()
    };
    // The dropped SYN is retransmitted after about a second, which with
    // `--deny-idle-secs 1` may open a second record: one log per deny.
    assert!(to_d("deny") >= 1, "{recs:?}");
    assert_eq!(
        to_d("log"),
        to_d("deny"),
        "a Log rule logs what is then denied too: {recs:?}"
    );
    let logged: Vec<&Value> = recs
        .iter()
        .filter(|r| r["type"] == "log" && r["dst"]["pod"] == "x/b")
        .collect();
    assert_eq!(logged.len(), 1, "{recs:?}");
    assert_eq!(logged[0]["action"], "log");
    assert_eq!(logged[0]["dst"]["pod"], "x/b");
    assert_eq!(
        logged[0]["policies"],
        serde_json::json!(["calico/default/x/log-then-allow"])
    );
    let audited: Vec<&Value> = recs.iter().filter(|r| r["type"] == "would-deny").collect();
    assert_eq!(audited.len(), 1, "{recs:?}");
    assert_eq!(audited[0]["action"], "audit");
    assert_eq!(audited[0]["dst"]["pod"], "x/c");
    assert_eq!(audited[0]["policies"], serde_json::json!(["x/c-closed"]));
    // Each deny record names what decided, and its tier.
    for (pod, policy, tier) in [
        ("x/d", "calico/default/x/log-then-deny", "default"),
        ("x/e", "admin/no-e", "admin"),
        ("x/f", "baseline/no-f", "baseline"),
        ("x/g", "end-of-tier", "default"),
    ] {
        let denied: Vec<&Value> = recs
            .iter()
            .filter(|r| r["type"] == "deny" && r["dst"]["pod"] == pod)
            .collect();
        assert!(!denied.is_empty(), "{pod} denied: {recs:?}");
        for r in denied {
            assert_eq!(r["policies"], serde_json::json!([policy]), "{r}");
            assert_eq!(r["tier"], tier, "{r}");
        }
    }
    assert!(
        recs.iter().all(|r| r["type"] != "deny"
            || ["x/d", "x/e", "x/f", "x/g"].contains(&r["dst"]["pod"].as_str().unwrap_or(""))),
        "nothing else was denied: {recs:?}"
    );
    let metrics = http_get(&node, "/metrics")?;
    assert!(
        metrics.contains("palisade_would_deny_flows_total{direction=\"ingress\",reason=\"policy\",policy=\"x/c-closed\"} 1"),
        "{metrics}"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
