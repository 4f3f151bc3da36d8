//! Runs one scenario: build the cluster, start the real agent on it in
//! standalone mode, probe every pair, apply each step, probe again.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use palisade_agent::{source::dir::DirSource, status::Status};
use serde_json::json;

use crate::{
    agent::{AgentProcess, AgentSpec},
    matrix::{self, Table},
    probe::{self, Listeners, Origin, Probe, Proto},
    scenario::{Expect, PodSpec, Scenario, Verdict, default_ports, expand_policy},
    topology::{Cluster, Host, NODE_NAME},
};

#[derive(Clone, Debug)]
pub struct Options {
    pub agent: PathBuf,
    pub probe_timeout: Duration,
    pub parallel: usize,
    /// Print deny records as they are checked (the demo).
    pub show_denials: bool,
    /// Print the matrices even when they match.
    pub show_matrices: bool,
    pub ready_timeout: Duration,
}

/// The outcome of one scenario file.
pub struct Outcome {
    pub name: String,
    pub passed: bool,
    pub checks: usize,
    pub report: String,
}

struct PodState {
    spec: PodSpec,
    labels: BTreeMap<String, String>,
}

struct Run<'a> {
    opts: &'a Options,
    scenario: &'a Scenario,
    cluster: Cluster,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    ns_order: Vec<String>,
    pods: BTreeMap<String, PodState>,
    policies: Vec<serde_yaml::Value>,
    listeners: BTreeMap<String, Listeners>,
    source: PathBuf,
    status_file: PathBuf,
    deny_log: PathBuf,
    deny_seen: usize,
    report: String,
    checks: usize,
    node_listener: Option<Listeners>,
    ns_next: BTreeMap<String, u16>,
}

pub fn run_file(path: &Path, opts: &Options) -> Outcome {
    let name = path.display().to_string();
    let scenario = match Scenario::load(path) {
        Ok(s) => s,
        Err(e) => {
            return Outcome {
                name,
                passed: false,
                checks: 0,
                report: format!("{e:#}"),
            };
        }
    };
    let unsupported = scenario.unsupported_kinds();
    if !unsupported.is_empty() {
        return Outcome {
            name: scenario.name,
            passed: false,
            checks: 0,
            report: format!(
                "cannot run: Palisade does not enforce {} yet",
                unsupported.join(", ")
            ),
        };
    }
    match run_scenario(&scenario, opts) {
        Ok((passed, checks, report)) => Outcome {
            name: scenario.name,
            passed,
            checks,
            report,
        },
        Err(e) => Outcome {
            name: scenario.name,
            passed: false,
            checks: 0,
            report: format!("error: {e:#}"),
        },
    }
}

fn run_scenario(scenario: &Scenario, opts: &Options) -> anyhow::Result<(bool, usize, String)> {
    let run_id = format!("{}{}", std::process::id() % 100_000, scenario_counter());
    let dir = std::env::temp_dir().join(format!("palisade-scenario-{run_id}"));
    let source = dir.join("source");
    std::fs::create_dir_all(&source)?;
    let cluster = Cluster::new(&run_id, scenario.family)?;
    let mut run = Run {
        opts,
        scenario,
        cluster,
        namespaces: BTreeMap::new(),
        ns_order: Vec::new(),
        pods: BTreeMap::new(),
        policies: Vec::new(),
        listeners: BTreeMap::new(),
        source: source.clone(),
        status_file: dir.join("status.json"),
        deny_log: dir.join("deny.jsonl"),
        deny_seen: 0,
        report: String::new(),
        checks: 0,
        node_listener: None,
        ns_next: BTreeMap::new(),
    };
    for ns in &scenario.namespaces {
        run.namespaces.insert(ns.name.clone(), ns.labels.clone());
        run.ns_order.push(ns.name.clone());
    }
    for p in &scenario.pods {
        run.add_pod(p)?;
    }
    for e in &scenario.externals {
        let ports = e.ports.clone().unwrap_or_else(default_ports);
        let (v4, v6) = match e.ip {
            IpAddr::V4(a) => (Some(a), None),
            IpAddr::V6(a) => (None, Some(a)),
        };
        let host = run
            .cluster
            .add_wired(&format!("external:{}", e.name), v4, v6, ports)?;
        run.listen(&host)?;
    }
    run.policies = scenario.policies.clone();
    run.write_source()?;

    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        serde_yaml::to_string(&scenario.agent.clone().unwrap_or_default())?,
    )?;
    // Dropped after the agent (reverse order), which writes into it.
    let _dir = TempDir(dir.clone());
    let _agent = AgentProcess::start(AgentSpec {
        config: Some(config),
        extra: ["--poll-ms", "50", "--deny-idle-secs", "1.5"]
            .map(String::from)
            .to_vec(),
        ..AgentSpec::in_dir(
            opts.agent.clone(),
            &run.cluster.node_netns,
            &dir,
            PathBuf::from(format!("/sys/fs/bpf/palisade-e2e-{run_id}")),
        )
    })?;

    let mut passed = run.wait_and_check("initial", &scenario.expect.clone())?;
    for step in &scenario.steps {
        for r in &step.relabel {
            let pod = run
                .pods
                .get_mut(&r.pod)
                .with_context(|| format!("step {:?}: no pod {}", step.name, r.pod))?;
            pod.labels = r.labels.clone();
        }
        for r in &step.relabel_namespace {
            run.namespaces.insert(r.namespace.clone(), r.labels.clone());
        }
        for obj in &step.apply {
            let key = object_key(obj);
            run.policies.retain(|p| object_key(p) != key);
            run.policies.push(obj.clone());
        }
        for d in &step.delete {
            run.policies.retain(|p| {
                object_key(p)
                    != (
                        d.kind.clone(),
                        d.namespace.clone().unwrap_or_default(),
                        d.name.clone(),
                    )
            });
        }
        for p in &step.delete_pods {
            run.pods.remove(p);
            run.listeners.remove(p);
            run.cluster.remove_host(p);
        }
        for p in &step.add_pods {
            run.add_pod(p)?;
        }
        run.write_source()?;
        passed &= run.wait_and_check(&format!("step {:?}", step.name), &step.expect)?;
    }
    if !passed {
        let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        run.report.push_str("agent log (last lines):\n");
        for l in tail.into_iter().rev() {
            run.report.push_str(&format!("  {l}\n"));
        }
    }
    Ok((passed, run.checks, run.report))
}

/// Removes a directory when dropped (after the agent, which writes into it).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scenario_counter() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn object_key(v: &serde_yaml::Value) -> (String, String, String) {
    let s = |p: &[&str]| {
        let mut cur = v;
        for k in p {
            match cur.get(*k) {
                Some(n) => cur = n,
                None => return String::new(),
            }
        }
        cur.as_str().unwrap_or_default().to_string()
    };
    (
        s(&["kind"]),
        s(&["metadata", "namespace"]),
        s(&["metadata", "name"]),
    )
}

impl Run<'_> {
    fn add_pod(&mut self, p: &PodSpec) -> anyhow::Result<()> {
        let name = format!("{}/{}", p.namespace, p.name);
        let ports = p.ports.clone().unwrap_or_else(default_ports);
        if p.host_network {
            let h = self.cluster.add_host_network(&name, ports)?;
            // hostNetwork pods listen in the node's namespace; bind once.
            if self.node_listener.is_none() {
                self.node_listener = Some(probe::listen(Some(&self.cluster.node_netns), &h.ports)?);
            }
        } else {
            let ns_idx = match self.ns_order.iter().position(|n| *n == p.namespace) {
                Some(i) => i,
                None => {
                    self.ns_order.push(p.namespace.clone());
                    self.ns_order.len() - 1
                }
            } as u16;
            // Never reuse an address within a run: a deleted pod's stays retired.
            let next = self.ns_next.entry(p.namespace.clone()).or_insert(0);
            let pod_idx = *next;
            *next += 1;
            let third = (ns_idx + 1) as u8;
            let fourth = (10 + pod_idx) as u8;
            let v4 = self
                .cluster
                .family
                .v4()
                .then_some(Ipv4Addr::new(10, 244, third, fourth));
            let v6 = self.cluster.family.v6().then_some(Ipv6Addr::new(
                0xfd00,
                0x10,
                0x244,
                ns_idx + 1,
                0,
                0,
                0,
                10 + pod_idx,
            ));
            let h = self.cluster.add_wired(&name, v4, v6, ports)?;
            self.listen(&h)?;
        }
        self.pods.insert(
            name,
            PodState {
                spec: p.clone(),
                labels: p.labels.clone(),
            },
        );
        Ok(())
    }

    fn listen(&mut self, h: &Host) -> anyhow::Result<()> {
        let l = probe::listen(h.netns.as_deref(), &h.ports)
            .with_context(|| format!("listeners of {}", h.name))?;
        self.listeners.insert(h.name.clone(), l);
        Ok(())
    }

    fn pod_ip(&self, name: &str, v6: bool) -> Option<IpAddr> {
        self.cluster.hosts.get(name).and_then(|h| h.addr(v6))
    }

    /// Writes namespaces, pods and policies as the agent's source directory.
    fn write_source(&self) -> anyhow::Result<()> {
        let mut docs = Vec::new();
        for (name, labels) in &self.namespaces {
            docs.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}));
        }
        for (name, pod) in &self.pods {
            let host = self.cluster.hosts.get(name).context("pod without host")?;
            let mut ips = Vec::new();
            if let Some(a) = host.v4 {
                ips.push(a.to_string());
            }
            if let Some(a) = host.v6 {
                ips.push(a.to_string());
            }
            let ports: Vec<serde_json::Value> = host
                .ports
                .iter()
                .map(|p| {
                    let mut v = json!({"containerPort": p.port, "protocol": p.protocol});
                    if let Some(n) = &p.name {
                        v["name"] = json!(n);
                    }
                    v
                })
                .collect();
            docs.push(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod.spec.name, "namespace": pod.spec.namespace, "labels": pod.labels, "uid": host.uid},
                "spec": {"nodeName": NODE_NAME, "hostNetwork": pod.spec.host_network,
                         "containers": [{"name": "main", "image": "palisade-probe", "ports": ports}]},
                "status": {"phase": "Running", "podIP": ips.first(), "podIPs": ips.iter().map(|i| json!({"ip": i})).collect::<Vec<_>>()},
            }));
        }
        let mut text = String::new();
        for d in &docs {
            text.push_str("---\n");
            text.push_str(&serde_yaml::to_string(d)?);
        }
        for p in &self.policies {
            for obj in expand_policy(p, self.cluster.family, &|pod, v6| self.pod_ip(pod, v6))? {
                text.push_str("---\n");
                text.push_str(&serde_yaml::to_string(&obj)?);
            }
        }
        let tmp = self.source.join("cluster.yaml.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.source.join("cluster.yaml"))?;
        Ok(())
    }

    /// Waits until the agent has programmed this source and attached to every pod veth.
    fn wait_programmed(&self) -> anyhow::Result<()> {
        let want = format!("{:016x}", DirSource::new(&self.source).read()?.digest);
        let ifaces = self.cluster.interfaces();
        let deadline = Instant::now() + self.opts.ready_timeout;
        let mut last = None;
        while Instant::now() < deadline {
            if let Ok(st) = Status::read(&self.status_file) {
                if st.ready
                    && st.source_digest == want
                    && ifaces.iter().all(|i| st.attached.contains(i))
                    && st.cgroups_pending.is_empty()
                {
                    if !st.rejected.is_empty() {
                        bail!("the agent rejected objects: {}", st.rejected.join("; "));
                    }
                    return Ok(());
                }
                last = Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "the agent did not program the source within {:?} (want digest {want}, interfaces {ifaces:?}; last status: {last:?})",
            self.opts.ready_timeout
        )
    }

    fn wait_and_check(&mut self, label: &str, expects: &[Expect]) -> anyhow::Result<bool> {
        self.wait_programmed()?;
        let mut ok = true;
        let families = self.cluster.family.probed();
        for e in expects {
            let proto = Proto::parse(&e.protocol)?;
            for &v6 in &families {
                let table = self.check(label, e, proto, v6)?;
                self.checks += 1;
                if table.mismatches() > 0 {
                    ok = false;
                    self.report.push_str(&table.render());
                } else if self.opts.show_matrices {
                    println!("{}", table.render_observed());
                }
            }
        }
        if self.opts.show_denials {
            self.print_denials(label);
        }
        Ok(ok)
    }

    fn print_denials(&mut self, label: &str) {
        // Records are written after a flow has been quiet for a moment.
        std::thread::sleep(Duration::from_millis(2000));
        let text = std::fs::read_to_string(&self.deny_log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        println!("denied flows logged by the agent ({label}):");
        for l in &lines[self.deny_seen.min(lines.len())..] {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
                println!("  {}", palisade_agent::flows::client::human(&v));
            }
        }
        self.deny_seen = lines.len();
    }

    fn check(&self, label: &str, e: &Expect, proto: Proto, v6: bool) -> anyhow::Result<Table> {
        let fam = if v6 { "IPv6" } else { "IPv4" };
        let mut table = Table {
            title: format!(
                "{} {}: {}/{} {fam}",
                self.scenario.name, label, e.port, e.protocol
            ),
            ..Default::default()
        };
        let proto_name = e.protocol.as_str();
        let mut sources: Vec<String> = self.pods.keys().cloned().collect();
        sources.push("node".into());
        let mut dests: Vec<String> = self.pods.keys().cloned().collect();
        dests.extend(
            self.cluster
                .hosts
                .keys()
                .filter(|k| k.starts_with("external:"))
                .cloned(),
        );
        let mut probes = Vec::new();
        let mut pairs = Vec::new();
        for d in &dests {
            let host = self
                .cluster
                .hosts
                .get(d)
                .context("destination without host")?;
            if !host
                .ports
                .iter()
                .any(|p| p.port == e.port && p.protocol == proto_name)
            {
                continue;
            }
            let Some(addr) = host.addr(v6) else { continue };
            for s in &sources {
                // A pod is never probed against itself; the node's traffic to
                // hosts outside the cluster crosses no pod and no policy.
                if s == d || (s == "node" && d.starts_with("external:")) {
                    continue;
                }
                let origin = if s == "node" {
                    Origin {
                        netns: self.cluster.node_netns.clone(),
                        cgroup: None,
                    }
                } else {
                    let h = self.cluster.hosts.get(s).context("source without host")?;
                    if h.addr(v6).is_none() {
                        continue;
                    }
                    match &h.netns {
                        Some(n) => Origin {
                            netns: n.clone(),
                            cgroup: None,
                        },
                        None => Origin {
                            netns: self.cluster.node_netns.clone(),
                            cgroup: h.cgroup.clone(),
                        },
                    }
                };
                probes.push(Probe {
                    origin,
                    to: SocketAddr::new(addr, e.port),
                    proto,
                });
                pairs.push((s.clone(), d.clone()));
            }
        }
        let results = probe::run_all(&probes, self.opts.probe_timeout, self.opts.parallel);
        for ((s, d), observed) in pairs.into_iter().zip(results) {
            let expected = matrix::expected(e, &s, &d) == Verdict::Allow;
            table.cells.insert((s, d), (expected, observed));
        }
        table.sources = sources
            .into_iter()
            .filter(|s| table.cells.keys().any(|(a, _)| a == s))
            .collect();
        table.dests = dests
            .into_iter()
            .filter(|d| table.cells.keys().any(|(_, b)| b == d))
            .collect();
        Ok(table)
    }
}
