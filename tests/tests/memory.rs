//! The agent stays inside the DaemonSet's memory limit (read from
//! `deploy/base/daemonset.yaml`, so the two cannot drift apart) when abused:
//! (a) a pod floods new TCP SYNs and UDP datagrams from every source port at
//! a pod isolated by 200 policies with long names, and the agent keeps
//! syncing meanwhile (another namespace's edit made during the flood is
//! enforced); (b) one namespace holds the largest policies the default
//! budgets admit. Measured as the agent process's peak RSS (VmHWM).
//! Privileged: root, netns, eBPF.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use palisade_tests::{
    agent::{AgentProcess, AgentSpec, agent_bin},
    fixtures, probe, raw,
    scenario::{Family, PortSpec},
    topology::{Cluster, NODE_NAME},
};

/// `resources.limits.memory` of the agent container, in bytes.
fn daemonset_memory_limit() -> anyhow::Result<u64> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/daemonset.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let ds: serde_yaml::Value = serde_yaml::from_str(&text)?;
    let containers = ds["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .context("the DaemonSet has no containers")?;
    let agent = containers
        .iter()
        .find(|c| c["name"].as_str() == Some("agent"))
        .context("no container named agent in the DaemonSet")?;
    let limit = agent["resources"]["limits"]["memory"]
        .as_str()
        .context("the agent container has no resources.limits.memory")?;
    parse_quantity(limit).with_context(|| format!("memory limit {limit:?}"))
}

/// A Kubernetes memory quantity ("256Mi", "1G", "512000000") in bytes.
fn parse_quantity(q: &str) -> anyhow::Result<u64> {
    let digits = q.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: u64 = digits.parse()?;
    let unit: u64 = match &q[digits.len()..] {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        u => bail!("unit {u:?} not understood"),
    };
    Ok(n * unit)
}

/// Peak resident set of a process (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (has the agent died?)"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/PID/status")?;
    Ok(kib * 1024)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn require_root() {
    palisade_tests::fixtures::require_root();
}

fn web() -> Vec<PortSpec> {
    vec![PortSpec {
        port: 80,
        protocol: "TCP".into(),
        name: None,
    }]
}

fn namespace(name: &str) -> String {
    format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n")
}

/// A policy selecting `pod: POD` in `ns` with one ingress rule.
fn ingress_policy(ns: &str, name: &str, pod: &str, from: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec:\n  podSelector: {{matchLabels: {{pod: {pod}}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: {from}}}}}}}]}}]\n"
    )
}

/// 200 policies isolating `t/v`, each with a 245-character name (a
/// NetworkPolicy's name may have 253): every denied packet's record names
/// them all.
fn isolating_policies() -> String {
    (0..200)
        .map(|i| {
            let name = format!("isolate-{i:03}-{}", "x".repeat(233));
            ingress_policy("t", &name, "v", "nobody")
        })
        .collect()
}

#[test]
fn the_agent_stays_within_its_memory_limit_and_keeps_syncing_under_a_denied_flood()
-> anyhow::Result<()> {
    require_root();
    let limit = daemonset_memory_limit()?;
    let bin = agent_bin()?;
    let run = format!("m{}", std::process::id() % 100_000);
    let mut cluster = Cluster::new(&run, Family::Ipv4)?;
    let ips = [
        Ipv4Addr::new(10, 7, 0, 10), // evil/a: the flooder
        Ipv4Addr::new(10, 7, 0, 11), // t/v: its target, isolated by 200 policies
        Ipv4Addr::new(10, 7, 1, 10), // y/c
        Ipv4Addr::new(10, 7, 1, 11), // y/d: closed to c until y's edit
    ];
    let a = cluster.add_wired("evil/a", Some(ips[0]), None, web())?;
    let v = cluster.add_wired("t/v", Some(ips[1]), None, web())?;
    let c = cluster.add_wired("y/c", Some(ips[2]), None, web())?;
    let d = cluster.add_wired("y/d", Some(ips[3]), None, web())?;
    let _listeners: Vec<_> = [&v, &d]
        .iter()
        .map(|h| probe::listen(h.netns.as_deref(), &web()))
        .collect::<Result<_, _>>()?;
    let na = a.netns.clone().context("a's netns")?;
    let nc = c.netns.clone().context("c's netns")?;

    let dir = std::env::temp_dir().join(format!("palisade-memory-{run}"));
    let source = dir.join("source");
    std::fs::create_dir_all(&source)?;
    let base = format!(
        "{}{}{}{}{}{}{}{}",
        namespace("evil"),
        namespace("t"),
        namespace("y"),
        fixtures::pod_yaml("evil", "a", ips[0]),
        fixtures::pod_yaml("t", "v", ips[1]),
        fixtures::pod_yaml("y", "c", ips[2]),
        fixtures::pod_yaml("y", "d", ips[3]),
        isolating_policies(),
    );
    fixtures::write_source(
        &source,
        &format!("{base}{}", ingress_policy("y", "d-in", "d", "nobody")),
    )?;
    // The defaults, as the DaemonSet runs it (but for the source and poll).
    let mut agent = AgentProcess::start(AgentSpec {
        extra: ["--poll-ms", "200"].map(String::from).to_vec(),
        ..AgentSpec::in_dir(
            bin,
            &cluster.node_netns,
            &dir,
            format!("/sys/fs/bpf/palisade-memory-{run}").into(),
        )
    })?;
    agent.wait_programmed(&cluster.interfaces(), Duration::from_secs(60))?;
    let pid = agent.pid().context("agent pid")?;
    let before = peak_rss(pid)?;
    let short = Duration::from_millis(500);
    assert!(
        !fixtures::connects(&nc, SocketAddr::from((ips[3], 80)), short),
        "c -> d is closed before y's edit"
    );

    // The flood: new TCP SYNs and UDP datagrams, a new source port each, for 5 s.
    let (src, dst) = (ips[0], ips[1]);
    let flood_for = Duration::from_secs(5);
    let started = Instant::now();
    let flood = std::thread::spawn(move || {
        raw::flood4(&na, started + flood_for, move |i| {
            let sport = 1024 + (i / 2 % 64_000) as u16;
            let from = SocketAddrV4::new(src, sport);
            if i % 2 == 0 {
                raw::tcp4(from, SocketAddrV4::new(dst, 80), 0x02, i as u32, 0, &[])
            } else {
                raw::udp4(from, SocketAddrV4::new(dst, 53), b"flood")
            }
        })
    });

    // y's edit, written during the flood, must be enforced within seconds
    // (normally milliseconds; 1.6 GiB and no sync for 18 s before the fix
    // that bounded the drain).
    std::thread::sleep(Duration::from_secs(1));
    fixtures::write_source(
        &source,
        &format!("{base}{}", ingress_policy("y", "d-in", "d", "c")),
    )?;
    let edited = Instant::now();
    let bound = Duration::from_secs(3);
    let mut enforced = None;
    while edited.elapsed() < bound {
        if fixtures::connects(&nc, SocketAddr::from((ips[3], 80)), short) {
            enforced = Some(edited.elapsed());
            break;
        }
    }
    let during_flood = started.elapsed() < flood_for;
    let sent = flood
        .join()
        .map_err(|_| anyhow::anyhow!("flood panicked"))??;
    // Flows go quiet after the flood; their records are made (idle 2 s).
    std::thread::sleep(Duration::from_secs(3));
    if let Some(st) = agent.exited() {
        bail!(
            "the agent exited during the flood ({st}); log:\n{}",
            agent.log()
        );
    }
    let peak = peak_rss(pid)?;
    eprintln!(
        "memory under a denied flood: {sent} packets in {flood_for:?}; agent peak RSS {:.1} MiB \
         (before the flood {:.1} MiB), limit {:.0} MiB; y's edit enforced after {enforced:?}",
        mib(peak),
        mib(before),
        mib(limit)
    );
    assert!(
        sent >= 100_000,
        "the flood must be a flood: only {sent} packets sent in {flood_for:?}"
    );
    let enforced = enforced.with_context(|| {
        format!(
            "y's edit made during the flood was not enforced within {bound:?}: syncs are starved"
        )
    })?;
    assert!(
        during_flood,
        "the edit was enforced after {enforced:?}, only once the flood had ended"
    );
    assert!(
        peak < limit,
        "peak RSS {:.1} MiB is over the DaemonSet's limit of {:.0} MiB",
        mib(peak),
        mib(limit)
    );
    // The flood was seen and recorded (not just dropped unread), naming the policies.
    let log = std::fs::read_to_string(dir.join("deny.jsonl"))?;
    let first = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["type"] == "deny" && r["dst"]["pod"] == "t/v")
        .context("no deny record of the flood")?;
    assert_eq!(
        first["policies"].as_array().map(Vec::len),
        Some(200),
        "the record names the 200 isolating policies"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn the_agent_stays_within_its_memory_limit_with_the_largest_admitted_policies() -> anyhow::Result<()>
{
    require_root();
    let limit = daemonset_memory_limit()?;
    let bin = agent_bin()?;
    let run = format!("n{}", std::process::id() % 100_000);
    let mut cluster = Cluster::new(&run, Family::Ipv4)?;
    let ips = [
        Ipv4Addr::new(10, 6, 0, 10), // tenant/t0: selected by every policy
        Ipv4Addr::new(10, 6, 0, 11), // tenant/peer0: one of the 50 peers
        Ipv4Addr::new(10, 6, 0, 12), // tenant/o: no peer
    ];
    let t0 = cluster.add_wired("tenant/t0", Some(ips[0]), None, web())?;
    let peer0 = cluster.add_wired("tenant/peer0", Some(ips[1]), None, web())?;
    let o = cluster.add_wired("tenant/o", Some(ips[2]), None, web())?;
    let _listeners = probe::listen(t0.netns.as_deref(), &web())?;
    let np = peer0.netns.clone().context("peer0's netns")?;
    let no = o.netns.clone().context("o's netns")?;

    // Four policies of 50 peers x 999 ports (49,950 entries each, just under
    // the per-policy budget of 50,000; 199,800 together, just under the
    // namespace's 200,000) and one ipBlock with 999 excepts (1,000 CIDRs, the
    // per-policy CIDR budget), all selecting t0.
    let mut text = format!(
        "{}{}{}",
        namespace("tenant"),
        fixtures::pod_yaml("tenant", "t0", ips[0]).replace("pod: t0", "pod: t0, app: t"),
        fixtures::pod_yaml("tenant", "o", ips[2]),
    );
    for i in 0..50 {
        let ip = if i == 0 {
            ips[1].to_string()
        } else {
            format!("10.6.1.{i}")
        };
        let node = if i == 0 { NODE_NAME } else { "elsewhere" };
        text += &format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: peer{i}, namespace: tenant, labels: {{peer: p{i}}}}}\n\
             spec: {{nodeName: {node}, containers: [{{name: c, image: i}}]}}\nstatus: {{podIP: \"{ip}\"}}\n"
        );
    }
    for k in 0..4u32 {
        text += &format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: largest-{k}, namespace: tenant}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: t}}}}\n  ingress:\n  - from:\n"
        );
        for i in 0..50 {
            text += &format!("    - podSelector: {{matchLabels: {{peer: p{i}}}}}\n");
        }
        text += "    ports:\n";
        for port in (k * 1000 + 1)..=(k * 1000 + 999) {
            text += &format!("    - {{port: {port}}}\n");
        }
    }
    text += "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: largest-cidrs, namespace: tenant}\n\
             spec:\n  podSelector: {matchLabels: {app: t}}\n  ingress:\n  - from:\n    - ipBlock:\n        cidr: 10.201.0.0/16\n        except:\n";
    for e in 0..999 {
        text += &format!("        - 10.201.{}.{}/32\n", e / 256, e % 256);
    }

    let dir = std::env::temp_dir().join(format!("palisade-memory-{run}"));
    let source = dir.join("source");
    std::fs::create_dir_all(&source)?;
    fixtures::write_source(&source, &text)?;
    let mut agent = AgentProcess::start(AgentSpec {
        extra: ["--poll-ms", "200"].map(String::from).to_vec(),
        ..AgentSpec::in_dir(
            bin,
            &cluster.node_netns,
            &dir,
            format!("/sys/fs/bpf/palisade-memory-{run}").into(),
        )
    })?;
    let status = agent.wait_programmed(&cluster.interfaces(), Duration::from_secs(120))?;
    let pid = agent.pid().context("agent pid")?;
    assert!(
        status.over_budget.is_empty(),
        "the policies are within the default budgets: {:?}",
        status.over_budget
    );
    assert!(
        status.map_entries >= 4 * 49_950,
        "all their entries are programmed: {}",
        status.map_entries
    );
    let short = Duration::from_millis(1500);
    assert!(
        fixtures::connects(&np, SocketAddr::from((ips[0], 80)), short),
        "peer0 -> t0:80 is allowed by largest-0"
    );
    assert!(
        !fixtures::connects(&no, SocketAddr::from((ips[0], 80)), short),
        "o -> t0:80 is denied: t0 is isolated and o is no peer"
    );
    if let Some(st) = agent.exited() {
        bail!("the agent exited ({st}); log:\n{}", agent.log());
    }
    let peak = peak_rss(pid)?;
    eprintln!(
        "memory with the largest admitted policies: {} map entries; agent peak RSS {:.1} MiB, limit {:.0} MiB",
        status.map_entries,
        mib(peak),
        mib(limit)
    );
    assert!(
        peak < limit,
        "peak RSS {:.1} MiB is over the DaemonSet's limit of {:.0} MiB",
        mib(peak),
        mib(limit)
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn memory_quantities_parse() -> anyhow::Result<()> {
    assert_eq!(parse_quantity("256Mi")?, 256 << 20);
    assert_eq!(parse_quantity("1Gi")?, 1 << 30);
    assert_eq!(parse_quantity("500M")?, 500_000_000);
    assert_eq!(parse_quantity("1048576")?, 1 << 20);
    assert!(parse_quantity("1Pb").is_err());
    Ok(())
}
