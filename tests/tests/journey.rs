//! The least-privilege journey on real traffic, the way the README walks
//! it: an open three-tier app is observed (`palisade flows --allowed`), a
//! policy is proposed from what was seen (`palisade advise`), tried in audit
//! mode (no would-deny record for the observed traffic, one for a new
//! unwanted flow, nothing dropped), then enforced by dropping `--audit`
//! (the observed traffic still passes, the unwanted flows are denied).
//! Privileged: root, netns, eBPF.

use std::{
    net::{Ipv4Addr, SocketAddr},
    process::Command,
    time::Duration,
};

use palisade_tests::{
    agent::{AgentProcess, AgentSpec, agent_bin},
    fixtures, probe,
    scenario::{Family, PortSpec},
    topology::{Cluster, NODE_NAME},
};
use serde_json::Value;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 7, 1, 10);
const WEB: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 7, 0, 10), Ipv4Addr::new(10, 7, 0, 11)];
const API: Ipv4Addr = Ipv4Addr::new(10, 7, 0, 20);
const DB: Ipv4Addr = Ipv4Addr::new(10, 7, 0, 30);

fn port(port: u16, name: &str) -> Vec<PortSpec> {
    vec![PortSpec {
        port,
        protocol: "TCP".into(),
        name: Some(name.into()),
    }]
}

/// A pod with the metadata a controller gives it: labels (with the
/// controller's own hash labels, which policies must not use), an owner,
/// and a named container port.
fn pod(
    name: &str,
    ns: &str,
    ip: Ipv4Addr,
    labels: &str,
    owner: Option<(&str, &str)>,
    port: Option<(u16, &str)>,
) -> String {
    let owner = owner.map_or(String::new(), |(kind, name)| {
        format!(", ownerReferences: [{{apiVersion: apps/v1, kind: {kind}, name: {name}, uid: u-{name}, controller: true}}]")
    });
    let ports = port.map_or(String::new(), |(p, n)| {
        format!(", ports: [{{name: {n}, containerPort: {p}}}]")
    });
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}{owner}}}\n\
         spec: {{nodeName: {NODE_NAME}, containers: [{{name: c, image: i{ports}}}]}}\n\
         status: {{phase: Running, podIP: \"{ip}\"}}\n"
    )
}

fn app_yaml() -> String {
    [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: outside}\n".to_string(),
        pod("client", "outside", CLIENT, "app: client", None, None),
        pod(
            "web-6d4b8-aaaaa",
            "shop",
            WEB[0],
            "app: web, tier: front, pod-template-hash: 6d4b8",
            Some(("ReplicaSet", "web-6d4b8")),
            Some((80, "http")),
        ),
        pod(
            "web-6d4b8-bbbbb",
            "shop",
            WEB[1],
            "app: web, tier: front, pod-template-hash: 6d4b8",
            Some(("ReplicaSet", "web-6d4b8")),
            Some((80, "http")),
        ),
        pod(
            "api-7c9f0-ccccc",
            "shop",
            API,
            "app: api, pod-template-hash: 7c9f0",
            Some(("ReplicaSet", "api-7c9f0")),
            Some((8080, "api")),
        ),
        pod(
            "db-0",
            "shop",
            DB,
            "app: db, statefulset.kubernetes.io/pod-name: db-0, controller-revision-hash: db-5b7",
            Some(("StatefulSet", "db")),
            Some((5432, "pg")),
        ),
    ]
    .concat()
}

fn records(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The palisade CLI inside the node's namespace (where the agent listens).
fn cli(
    node: &str,
    bin: &std::path::Path,
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<String> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{node}"))
        .arg(bin)
        .args(args);
    let out = match stdin {
        None => cmd.output()?,
        Some(input) => {
            use std::io::Write as _;
            let mut child = cmd
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()?;
            child
                .stdin
                .take()
                .ok_or_else(|| anyhow::anyhow!("stdin"))?
                .write_all(input.as_bytes())?;
            child.wait_with_output()?
        }
    };
    anyhow::ensure!(
        out.status.success(),
        "palisade {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

struct App {
    client: String,
    web: [String; 2],
    api: String,
}

impl App {
    /// The app's own traffic: client -> web, each web -> api, api -> db.
    fn observed_traffic(&self) -> Vec<(&str, SocketAddr, &'static str)> {
        vec![
            (
                self.client.as_str(),
                SocketAddr::from((WEB[0], 80)),
                "client -> web-a",
            ),
            (
                self.client.as_str(),
                SocketAddr::from((WEB[1], 80)),
                "client -> web-b",
            ),
            (
                self.web[0].as_str(),
                SocketAddr::from((API, 8080)),
                "web-a -> api",
            ),
            (
                self.web[1].as_str(),
                SocketAddr::from((API, 8080)),
                "web-b -> api",
            ),
            (self.api.as_str(), SocketAddr::from((DB, 5432)), "api -> db"),
        ]
    }

    /// Flows the app never made.
    fn unwanted(&self) -> Vec<(&str, SocketAddr, &'static str)> {
        vec![
            (
                self.web[0].as_str(),
                SocketAddr::from((DB, 5432)),
                "web-a -> db",
            ),
            (
                self.client.as_str(),
                SocketAddr::from((API, 8080)),
                "client -> api",
            ),
        ]
    }
}

fn connects(ns: &str, to: SocketAddr) -> bool {
    fixtures::connects(ns, to, Duration::from_millis(1500))
}

#[test]
fn observe_advise_audit_enforce() -> anyhow::Result<()> {
    fixtures::require_root();
    let bin = agent_bin()?;
    let run = format!("j{}", std::process::id() % 100_000);
    let mut cluster = Cluster::new(&run, Family::Ipv4)?;
    let client = cluster.add_wired("outside/client", Some(CLIENT), None, Vec::new())?;
    let web_a = cluster.add_wired("shop/web-6d4b8-aaaaa", Some(WEB[0]), None, port(80, "http"))?;
    let web_b = cluster.add_wired("shop/web-6d4b8-bbbbb", Some(WEB[1]), None, port(80, "http"))?;
    let api = cluster.add_wired("shop/api-7c9f0-ccccc", Some(API), None, port(8080, "api"))?;
    let db = cluster.add_wired("shop/db-0", Some(DB), None, port(5432, "pg"))?;
    let _l = [
        probe::listen(web_a.netns.as_deref(), &port(80, "http"))?,
        probe::listen(web_b.netns.as_deref(), &port(80, "http"))?,
        probe::listen(api.netns.as_deref(), &port(8080, "api"))?,
        probe::listen(db.netns.as_deref(), &port(5432, "pg"))?,
    ];
    let ns = |h: &palisade_tests::topology::Host| h.netns.clone().unwrap_or_default();
    let app = App {
        client: ns(&client),
        web: [ns(&web_a), ns(&web_b)],
        api: ns(&api),
    };

    let dir = std::env::temp_dir().join(format!("palisade-journey-{run}"));
    let source = dir.join("source");
    std::fs::create_dir_all(&source)?;
    fixtures::write_source(&source, &app_yaml())?;
    let agent = AgentProcess::start(AgentSpec {
        extra: ["--poll-ms", "50", "--deny-idle-secs", "1"]
            .map(String::from)
            .to_vec(),
        ..AgentSpec::in_dir(
            bin.clone(),
            &cluster.node_netns,
            &dir,
            format!("/sys/fs/bpf/palisade-journey-{run}").into(),
        )
    })?;
    agent.wait_programmed(&cluster.interfaces(), Duration::from_secs(20))?;
    let node = cluster.node_netns.clone();

    // 1. Observe: the app is open; its traffic is recorded per workload.
    for (from, to, what) in app.observed_traffic() {
        assert!(
            connects(from, to),
            "{what} passes while nothing is enforced"
        );
    }
    let observed = cli(&node, &bin, &["flows", "--allowed", "--json"], None)?;
    println!(
        "$ palisade flows --allowed\n{}",
        cli(&node, &bin, &["flows", "--allowed"], None)?
    );
    let flows = records(&observed);
    let web_to_api: Vec<&Value> = flows
        .iter()
        .filter(|f| {
            f["src"]["workload"]["name"] == "web"
                && f["dst"]["workload"]["name"] == "api"
                && f["direction"] == "egress"
        })
        .collect();
    assert_eq!(
        web_to_api.len(),
        1,
        "both web replicas fold into Deployment web: {observed}"
    );
    assert_eq!(web_to_api[0]["src"]["workload"]["kind"], "Deployment");
    assert_eq!(web_to_api[0]["port"], 8080);
    assert_eq!(web_to_api[0]["named_port"], "api");
    assert!(web_to_api[0]["count"].as_u64().unwrap_or(0) >= 2);
    let human = cli(&node, &bin, &["flows", "--allowed"], None)?;
    assert!(
        human.contains("shop/web (Deployment) -> shop/api (Deployment):8080 (api)"),
        "{human}"
    );

    // 2. Advise, in audit mode: nothing is enforced yet.
    let advice = cli(
        &node,
        &bin,
        &["advise", "--from", "-", "--audit"],
        Some(&observed),
    )?;
    println!("$ palisade advise --audit\n{advice}");
    assert!(advice.contains("palisade.dev/mode: audit"), "{advice}");
    assert!(
        !advice.contains("pod-template-hash") && !advice.contains("controller-revision-hash"),
        "selectors use stable labels only:\n{advice}"
    );
    fixtures::write_source(&source, &format!("{}---\n{advice}", app_yaml()))?;
    agent.wait_programmed(&cluster.interfaces(), Duration::from_secs(20))?;
    let before = std::fs::read_to_string(dir.join("deny.jsonl"))?.len();
    for (from, to, what) in app.observed_traffic() {
        assert!(connects(from, to), "{what} passes under audit");
    }
    std::thread::sleep(Duration::from_millis(2500));
    let quiet = records(&std::fs::read_to_string(dir.join("deny.jsonl"))?[before..]);
    assert!(
        quiet.is_empty(),
        "the observed traffic earns no record under its own advice: {quiet:?}"
    );
    for (from, to, what) in app.unwanted() {
        assert!(connects(from, to), "{what} still passes under audit");
    }
    std::thread::sleep(Duration::from_millis(2500));
    let audit = records(&std::fs::read_to_string(dir.join("deny.jsonl"))?[before..]);
    assert!(
        audit.iter().all(|r| r["type"] != "deny"),
        "audit drops nothing: {audit:?}"
    );
    for (to, what) in [(DB, "web-a -> db"), (API, "client -> api")] {
        let hit: Vec<&Value> = audit
            .iter()
            .filter(|r| r["type"] == "would-deny" && r["dst"]["ip"] == to.to_string())
            .collect();
        assert!(!hit.is_empty(), "a would-deny record for {what}: {audit:?}");
        assert!(hit.iter().all(|r| r["action"] == "audit"), "{hit:?}");
        assert!(
            hit.iter()
                .all(|r| r["policies"].as_array().is_some_and(|p| !p.is_empty())),
            "the record names the audited policy: {hit:?}"
        );
    }
    let served = cli(&node, &bin, &["flows", "--json"], None)?;
    assert!(
        records(&served).iter().any(|r| r["type"] == "would-deny"),
        "the flows endpoint serves would-deny records too"
    );
    println!("$ palisade flows\n{}", cli(&node, &bin, &["flows"], None)?);

    // 3. Enforce: the same advice without --audit, no restart.
    let enforced = cli(&node, &bin, &["advise", "--from", "-"], Some(&observed))?;
    assert!(!enforced.contains("palisade.dev/mode"), "{enforced}");
    fixtures::write_source(&source, &format!("{}---\n{enforced}", app_yaml()))?;
    agent.wait_programmed(&cluster.interfaces(), Duration::from_secs(20))?;
    for (from, to, what) in app.observed_traffic() {
        assert!(connects(from, to), "{what} still passes once enforced");
    }
    for (from, to, what) in app.unwanted() {
        assert!(!connects(from, to), "{what} is denied once enforced");
    }

    // 4. Why: one command, with the kernel's maps checked beside it.
    let why = cli(
        &node,
        &bin,
        &["explain", "shop/web-6d4b8-aaaaa", "shop/db-0", "pg"],
        None,
    )?;
    println!("$ palisade explain shop/web-6d4b8-aaaaa shop/db-0 pg\n{why}");
    assert!(why.contains("DENIED"), "{why}");
    assert!(why.contains("kernel maps: agree"), "{why}");
    let ok = cli(
        &node,
        &bin,
        &["explain", "shop/api-7c9f0-ccccc", "shop/db-0", "pg"],
        None,
    )?;
    assert!(
        ok.contains("ALLOWED") && ok.contains("kernel maps: agree"),
        "{ok}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
