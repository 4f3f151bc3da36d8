//! A tenant's valid but abusive NetworkPolicy (400 peers x 1,000 ports x 3
//! protocols: 1.2 million entries asked for) on a real agent: rejected whole,
//! said once in the log, shown in the status and the metrics, its pods
//! isolated; another namespace's new pod is enforced by its own policy.
//! Privileged: root, netns, eBPF.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use palisade_tests::{
    agent::{AgentProcess, AgentSpec, agent_bin},
    fixtures, netns, probe,
    scenario::{Family, PortSpec},
    topology::Cluster,
};

const VICTIM: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: Namespace
metadata: {name: t}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-a, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}]}]
"#;

fn flood() -> String {
    let mut s = String::from(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: flood, namespace: t}\n\
         spec:\n  podSelector: {}\n  ingress:\n  - from:\n",
    );
    for i in 0..400 {
        s += &format!("    - podSelector: {{matchLabels: {{peer: p{i}}}}}\n");
    }
    s += "    ports:\n";
    for port in 1000..2000 {
        for proto in ["TCP", "UDP", "SCTP"] {
            s += &format!("    - {{port: {port}, protocol: {proto}}}\n");
        }
    }
    s
}

fn http_get(node: &str, path: &str) -> anyhow::Result<String> {
    let path = path.to_string();
    netns::in_netns(node, move || {
        let mut s = TcpStream::connect("127.0.0.1:9965")?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: agent\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
}

#[test]
fn an_abusive_policy_is_rejected_and_another_namespaces_new_pod_is_enforced() -> anyhow::Result<()>
{
    palisade_tests::fixtures::require_root();
    let bin = agent_bin()?;
    let run = format!("b{}", std::process::id() % 100_000);
    let mut cluster = Cluster::new(&run, Family::Ipv4)?;
    let web = vec![PortSpec {
        port: 80,
        protocol: "TCP".into(),
        name: None,
    }];
    let ips = [
        Ipv4Addr::new(10, 9, 0, 10),
        Ipv4Addr::new(10, 9, 0, 11),
        Ipv4Addr::new(10, 9, 1, 10),
        Ipv4Addr::new(10, 9, 0, 12),
    ];
    let a = cluster.add_wired("x/a", Some(ips[0]), None, web.clone())?;
    let b = cluster.add_wired("x/b", Some(ips[1]), None, web.clone())?;
    let t1 = cluster.add_wired("t/t1", Some(ips[2]), None, web.clone())?;
    let mut listeners: Vec<_> = [&b, &t1]
        .iter()
        .map(|h| probe::listen(h.netns.as_deref(), &web))
        .collect::<Result<_, _>>()?;
    let na = a.netns.clone().unwrap_or_default();
    let nt = t1.netns.clone().unwrap_or_default();

    let dir = std::env::temp_dir().join(format!("palisade-budgets-{run}"));
    let source = dir.join("source");
    std::fs::create_dir_all(&source)?;
    let pods = format!(
        "{}{}{}",
        fixtures::pod_yaml("x", "a", ips[0]),
        fixtures::pod_yaml("x", "b", ips[1]),
        fixtures::pod_yaml("t", "t1", ips[2]),
    );
    fixtures::write_source(&source, &format!("{VICTIM}{pods}{}", flood()))?;
    let agent = AgentProcess::start(AgentSpec {
        extra: ["--poll-ms", "50"].map(String::from).to_vec(),
        ..AgentSpec::in_dir(
            bin,
            &cluster.node_netns,
            &dir,
            format!("/sys/fs/bpf/palisade-budgets-{run}").into(),
        )
    })?;
    let status = agent.wait_programmed(&cluster.interfaces(), Duration::from_secs(30))?;
    assert_eq!(status.over_budget.len(), 1, "{:?}", status.over_budget);
    let why = &status.over_budget[0];
    assert!(
        why.contains("t/flood") && why.contains("50000") && why.contains("budgets.policyEntries"),
        "the status names the policy and the limit: {why}"
    );
    assert!(
        status.map_entries < 1000,
        "nothing of it was written: {} entries",
        status.map_entries
    );

    let short = Duration::from_millis(1500);
    assert!(
        fixtures::connects(&na, SocketAddr::from((ips[1], 80)), short),
        "a -> b"
    );
    assert!(
        !fixtures::connects(&na, SocketAddr::from((ips[2], 80)), short),
        "the rejected policy isolates t1 and allows nothing"
    );

    // A new pod in x, selected by x's own policy.
    let b2 = cluster.add_wired("x/b2", Some(ips[3]), None, web.clone())?;
    listeners.push(probe::listen(b2.netns.as_deref(), &web)?);
    fixtures::write_source(
        &source,
        &format!(
            "{VICTIM}{pods}{}{}",
            fixtures::pod_yaml("x", "b2", ips[3]),
            flood()
        ),
    )?;
    agent.wait_programmed(&cluster.interfaces(), Duration::from_secs(30))?;
    assert!(
        fixtures::connects(&na, SocketAddr::from((ips[3], 80)), short),
        "a -> b2"
    );
    assert!(
        !fixtures::connects(&nt, SocketAddr::from((ips[3], 80)), short),
        "t1 -> b2 is denied by x/from-a"
    );

    // Said once, however many syncs ran; counted by reason.
    let log = agent.log();
    let said = log
        .lines()
        .filter(|l| l.contains("t/flood") && l.contains("exceed"))
        .count();
    assert_eq!(said, 1, "one log line for the rejection:\n{log}");
    let metrics = http_get(&cluster.node_netns, "/metrics")?;
    assert!(
        metrics.contains("palisade_policies_rejected{reason=\"policy_entries\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("palisade_policies_rejected{reason=\"namespace_cidrs\"} 0"));
    drop(listeners);
    Ok(())
}
