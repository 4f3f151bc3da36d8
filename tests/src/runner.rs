//! Runs one scenario: build the local cluster (one namespace per node,
//! each with its own agent in standalone mode, pods wired by CNI, Services
//! translated by a kube-proxy-style nftables ruleset), probe every pair,
//! apply each step, probe again.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use palisade_agent::{source::dir::DirSource, status::Status};
use serde_json::json;

use crate::{
    agent::{AgentProcess, AgentSpec},
    explain_check::{Oracle, cluster_nodes, scenario_config},
    kubeproxy,
    matrix::{self, Table},
    nodes::LocalCluster,
    probe::{self, Listeners, Origin, Probe, Proto},
    scenario::{Expect, PodSpec, Scenario, Verdict, default_ports, expand_policy},
    services::{AddressPool, PodView, Service, via_service_port},
    topology::{Created, Host, forget, remember},
};

/// Whether Service and EndpointSlice objects go into the agent's source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceObjects {
    /// Only for runs that have Services (the scenario's or `--via-service`),
    /// so plain scenarios pass with an agent that does not read them yet.
    #[default]
    Auto,
    Always,
    Never,
}

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
    /// Run on this many nodes instead of the scenario's `nodes`.
    pub nodes: Option<usize>,
    /// Probe every pod through a Service of its own.
    pub via_service: bool,
    pub service_objects: ServiceObjects,
    /// CNI plugins chained after ptp (e.g. `palisade-cni`), by type name.
    pub extra_cni: Vec<String>,
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
    cluster: LocalCluster,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    ns_order: Vec<String>,
    pods: BTreeMap<String, PodState>,
    /// The scenario's Services, in file order.
    services: Vec<Service>,
    /// `--via-service`: each pod's own Service, by pod.
    pod_services: BTreeMap<String, Service>,
    pool: AddressPool,
    policies: Vec<serde_yaml::Value>,
    listeners: BTreeMap<String, Listeners>,
    source: PathBuf,
    dir: PathBuf,
    deny_seen: Vec<usize>,
    report: String,
    checks: usize,
    /// hostNetwork pods listen in their node's namespace; bound once per node.
    node_listeners: BTreeMap<usize, Listeners>,
    ns_next: BTreeMap<String, u16>,
    /// Pods placed round-robin so far.
    placed: usize,
}

/// Where a probe to one destination goes.
struct Target {
    to: SocketAddr,
    /// The node that probes as `node` (the destination's, or the one node
    /// of a Service's backends); `None`: no node probe.
    node: Option<usize>,
    /// Pods never probed against it (itself, a Service's backends).
    backends: Vec<String>,
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
    // Removed last, also on interrupt: the agents write into it.
    remember(Created::Dir(dir.clone()));
    let _dir = TempDir(dir.clone());
    let nodes = opts.nodes.unwrap_or(scenario.nodes);
    if nodes == 0 {
        bail!("a cluster needs at least one node");
    }
    let cluster = LocalCluster::new(&run_id, scenario.family, nodes, &dir, &opts.extra_cni)?;
    let mut run = Run {
        opts,
        scenario,
        cluster,
        namespaces: BTreeMap::new(),
        ns_order: Vec::new(),
        pods: BTreeMap::new(),
        services: Vec::new(),
        pod_services: BTreeMap::new(),
        pool: AddressPool::default(),
        policies: Vec::new(),
        listeners: BTreeMap::new(),
        source: source.clone(),
        dir: dir.clone(),
        deny_seen: vec![0; nodes],
        report: String::new(),
        checks: 0,
        node_listeners: BTreeMap::new(),
        ns_next: BTreeMap::new(),
        placed: 0,
    };
    for ns in &scenario.namespaces {
        run.namespaces.insert(ns.name.clone(), ns.labels.clone());
        run.ns_order.push(ns.name.clone());
    }
    for svc in &scenario.services {
        let s = Service::from_spec(svc, &mut run.pool, scenario.family);
        run.services.push(s);
    }
    for p in &scenario.pods {
        run.add_pod(p)?;
    }
    for e in &scenario.externals {
        let ports = e.ports.clone().unwrap_or_else(default_ports);
        let host = run
            .cluster
            .add_external(&format!("external:{}", e.name), e.ip, ports)?;
        run.listen(&host)?;
    }
    run.policies = scenario.policies.clone();
    run.sync_services()?;
    run.write_source()?;

    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        serde_yaml::to_string(&scenario.agent.clone().unwrap_or_default())?,
    )?;
    let mut agents = Vec::new();
    for (i, node) in run.cluster.nodes.iter().enumerate() {
        let node_dir = dir.join(&node.name);
        std::fs::create_dir_all(&node_dir)?;
        agents.push(AgentProcess::start(AgentSpec {
            // One source for all: every agent reads the same cluster objects.
            source: source.clone(),
            config: Some(config.clone()),
            extra: ["--poll-ms", "50", "--deny-idle-secs", "1.5"]
                .map(String::from)
                .to_vec(),
            node_name: node.name.clone(),
            // No prefixes: the agent finds the pod veths by their host
            // routes, as on a real node, and leaves the uplink `eth0` alone.
            interface_prefixes: Vec::new(),
            ..AgentSpec::in_dir(
                opts.agent.clone(),
                &node.netns,
                &node_dir,
                PathBuf::from(format!("/sys/fs/bpf/palisade-e2e-{run_id}-n{i}")),
            )
        })?);
    }

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
            run.pod_services.remove(p);
            run.listeners.remove(p);
            run.cluster.remove_host(p)?;
        }
        for p in &step.add_pods {
            run.add_pod(p)?;
        }
        // What the EndpointSlice controller and kube-proxy would do.
        run.sync_services()?;
        run.write_source()?;
        passed &= run.wait_and_check(&format!("step {:?}", step.name), &step.expect)?;
    }
    if !passed {
        for a in &agents {
            let log = a.log();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            run.report.push_str(&format!(
                "agent log of {} (last lines):\n",
                a.spec.node_name
            ));
            for l in tail.into_iter().rev() {
                run.report.push_str(&format!("  {l}\n"));
            }
        }
    }
    Ok((passed, run.checks, run.report))
}

/// Removes a directory when dropped (after the agent, which writes into it).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
        forget(&Created::Dir(self.0.clone()));
    }
}

fn scenario_counter() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A pod's addresses: 10.244.(namespace + 1).(10 + pod) and the like in
/// fd00:10:244::/48, by the namespace's and the pod's order of appearance.
pub fn pod_addresses(
    family: crate::scenario::Family,
    ns_idx: u16,
    pod_idx: u16,
) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let third = (ns_idx + 1) as u8;
    let fourth = (10 + pod_idx) as u8;
    (
        family.v4().then_some(Ipv4Addr::new(10, 244, third, fourth)),
        family.v6().then_some(Ipv6Addr::new(
            0xfd00,
            0x10,
            0x244,
            ns_idx + 1,
            0,
            0,
            0,
            10 + pod_idx,
        )),
    )
}

/// The Pod object the agent's source gets for a scenario pod.
pub fn pod_doc(
    spec: &PodSpec,
    labels: &BTreeMap<String, String>,
    uid: &str,
    node_name: &str,
    ports: &[crate::scenario::PortSpec],
    ips: &[String],
) -> serde_json::Value {
    let ports: Vec<serde_json::Value> = ports
        .iter()
        .map(|p| {
            let mut v = json!({"containerPort": p.port, "protocol": p.protocol});
            if let Some(n) = &p.name {
                v["name"] = json!(n);
            }
            v
        })
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": labels, "uid": uid},
        "spec": {"nodeName": node_name, "hostNetwork": spec.host_network,
                 "containers": [{"name": "main", "image": "palisade-probe", "ports": ports}]},
        "status": {"phase": "Running", "podIP": ips.first(), "podIPs": ips.iter().map(|i| json!({"ip": i})).collect::<Vec<_>>()},
    })
}

/// (kind, namespace, name) of a policy object, as steps replace and delete them.
pub fn object_key(v: &serde_yaml::Value) -> (String, String, String) {
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
    /// The node a pod runs on: the one it names, else the next round-robin.
    fn place(&mut self, p: &PodSpec) -> anyhow::Result<usize> {
        let n = self.cluster.nodes.len();
        match &p.node {
            Some(name) => name
                .strip_prefix("node-")
                .and_then(|k| k.parse::<usize>().ok())
                .filter(|k| *k < n)
                .with_context(|| {
                    format!(
                        "pod {}/{} names node {name:?}; this cluster has node-0 .. node-{}",
                        p.namespace,
                        p.name,
                        n - 1
                    )
                }),
            None => {
                self.placed += 1;
                Ok((self.placed - 1) % n)
            }
        }
    }

    fn add_pod(&mut self, p: &PodSpec) -> anyhow::Result<()> {
        let name = format!("{}/{}", p.namespace, p.name);
        let ports = p.ports.clone().unwrap_or_else(default_ports);
        let node = self.place(p)?;
        if p.host_network {
            let h = self.cluster.add_host_network(&name, node, ports)?;
            if !self.node_listeners.contains_key(&node) {
                let netns = self.cluster.nodes[node].netns.clone();
                let addrs: Vec<std::net::IpAddr> = [false, true]
                    .into_iter()
                    .filter_map(|v6| h.addr(v6))
                    .collect();
                let l = probe::listen_at(Some(&netns), &h.ports, &addrs)?;
                self.node_listeners.insert(node, l);
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
            let (v4, v6) = pod_addresses(self.cluster.family, ns_idx, pod_idx);
            let h = self.cluster.add_pod(&name, node, v4, v6, ports)?;
            self.listen(&h)?;
        }
        self.pods.insert(
            name.clone(),
            PodState {
                spec: p.clone(),
                labels: p.labels.clone(),
            },
        );
        if self.opts.via_service {
            let view = self.pod_views()?.remove(&name).context("pod view")?;
            let svc = Service::for_pod(&view, &mut self.pool, self.cluster.family);
            self.pod_services.insert(name, svc);
        }
        Ok(())
    }

    fn listen(&mut self, h: &Host) -> anyhow::Result<()> {
        let l = probe::listen(h.netns.as_deref(), &h.ports)
            .with_context(|| format!("listeners of {}", h.name))?;
        self.listeners.insert(h.name.clone(), l);
        Ok(())
    }

    fn pod_ip(&self, name: &str, v6: bool) -> Option<std::net::IpAddr> {
        self.cluster.hosts.get(name).and_then(|h| h.addr(v6))
    }

    /// Pods with their current labels, addresses and nodes.
    fn pod_views(&self) -> anyhow::Result<BTreeMap<String, PodView>> {
        let mut out = BTreeMap::new();
        for (key, pod) in &self.pods {
            let host = self.cluster.hosts.get(key).context("pod without host")?;
            let node = host.node.context("pod without node")?;
            out.insert(
                key.clone(),
                PodView {
                    key: key.clone(),
                    namespace: pod.spec.namespace.clone(),
                    name: pod.spec.name.clone(),
                    labels: pod.labels.clone(),
                    node_name: self.cluster.nodes[node].name.clone(),
                    v4: host.v4,
                    v6: host.v6,
                    ports: host.ports.clone(),
                },
            );
        }
        Ok(out)
    }

    fn all_services(&self) -> impl Iterator<Item = &Service> {
        self.services.iter().chain(self.pod_services.values())
    }

    /// Programs every node's Service translation from the current endpoints.
    fn sync_services(&self) -> anyhow::Result<()> {
        let views = self.pod_views()?;
        let ports: Vec<kubeproxy::ServicePort> = self
            .all_services()
            .flat_map(|s| s.proxy_ports(&views))
            .collect();
        for n in &self.cluster.nodes {
            kubeproxy::apply(&n.netns, &ports)
                .with_context(|| format!("Service translation on {}", n.name))?;
        }
        Ok(())
    }

    /// Whether the agent's source gets Service and EndpointSlice objects.
    fn write_service_objects(&self) -> bool {
        match self.opts.service_objects {
            ServiceObjects::Always => true,
            ServiceObjects::Never => false,
            ServiceObjects::Auto => self.all_services().next().is_some(),
        }
    }

    /// Writes namespaces, pods, Services and policies as the agent's source directory.
    fn write_source(&self) -> anyhow::Result<()> {
        let mut docs = Vec::new();
        for (name, labels) in &self.namespaces {
            docs.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}));
        }
        let views = self.pod_views()?;
        for (name, pod) in &self.pods {
            let host = self.cluster.hosts.get(name).context("pod without host")?;
            let mut ips = Vec::new();
            if let Some(a) = host.v4 {
                ips.push(a.to_string());
            }
            if let Some(a) = host.v6 {
                ips.push(a.to_string());
            }
            docs.push(pod_doc(
                &pod.spec,
                &pod.labels,
                &host.uid,
                &views[name].node_name,
                &host.ports,
                &ips,
            ));
        }
        if self.write_service_objects() {
            for s in self.all_services() {
                docs.extend(s.objects(&views));
            }
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

    fn status_file(&self, node: usize) -> PathBuf {
        self.dir
            .join(&self.cluster.nodes[node].name)
            .join("status.json")
    }

    /// Waits until every node's agent has programmed this source and
    /// attached to every pod veth of its node.
    fn wait_programmed(&self) -> anyhow::Result<()> {
        let want = format!("{:016x}", DirSource::new(&self.source).read()?.digest);
        let deadline = Instant::now() + self.opts.ready_timeout;
        for node in 0..self.cluster.nodes.len() {
            let ifaces = self.cluster.interfaces(node);
            let status_file = self.status_file(node);
            let mut last = None;
            loop {
                if let Ok(st) = Status::read(&status_file) {
                    if st.ready
                        && st.source_digest == want
                        && ifaces.iter().all(|i| st.attached.contains(i))
                        && st.cgroups_pending.is_empty()
                    {
                        if !st.rejected.is_empty() {
                            bail!("the agent rejected objects: {}", st.rejected.join("; "));
                        }
                        break;
                    }
                    last = Some(st);
                }
                if Instant::now() >= deadline {
                    bail!(
                        "the agent of {} did not program the source within {:?} (want digest {want}, interfaces {ifaces:?}; last status: {last:?})",
                        self.cluster.nodes[node].name,
                        self.opts.ready_timeout
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    fn wait_and_check(&mut self, label: &str, expects: &[Expect]) -> anyhow::Result<bool> {
        self.wait_programmed()?;
        let mut ok = true;
        let families = self.cluster.family.probed();
        for e in expects {
            let proto = Proto::parse(&e.protocol)?;
            for &v6 in &families {
                let mut disagreements = Vec::new();
                let table = self.check(label, e, proto, v6, &mut disagreements)?;
                self.checks += 1;
                if table.mismatches() > 0 {
                    ok = false;
                    self.report.push_str(&table.render());
                } else if self.opts.show_matrices {
                    println!("{}", table.render_observed());
                }
                if !disagreements.is_empty() {
                    ok = false;
                    self.report.push_str(&format!(
                        "palisade explain disagrees with {} probe(s):\n{}",
                        disagreements.len(),
                        disagreements.join("")
                    ));
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
        for node in 0..self.cluster.nodes.len() {
            let path = self
                .dir
                .join(&self.cluster.nodes[node].name)
                .join("deny.jsonl");
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            println!(
                "denied flows logged by the agent of {} ({label}):",
                self.cluster.nodes[node].name
            );
            for l in &lines[self.deny_seen[node].min(lines.len())..] {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
                    println!("  {}", palisade_agent::flows::client::human(&v));
                }
            }
            self.deny_seen[node] = lines.len();
        }
    }

    /// Where a probe to `dest` on this expectation's port goes, if anywhere.
    fn target(&self, dest: &str, e: &Expect, v6: bool) -> anyhow::Result<Option<Target>> {
        let proto = e.protocol.as_str();
        if let Some(key) = dest.strip_prefix("svc:") {
            let Some(svc) = self.services.iter().find(|s| s.key() == key) else {
                return Ok(None);
            };
            let (Some(i), Some(addr)) = (
                svc.ports
                    .iter()
                    .position(|p| p.port == e.port && p.protocol == proto),
                svc.addr(v6),
            ) else {
                return Ok(None);
            };
            let (backends, node) = svc.port_backends(i, &self.pod_views()?);
            return Ok(Some(Target {
                to: SocketAddr::new(addr, e.port),
                node: node.and_then(|one| self.cluster.nodes.iter().position(|n| n.name == one)),
                backends,
            }));
        }
        let host = self
            .cluster
            .hosts
            .get(dest)
            .context("destination without host")?;
        if !host
            .ports
            .iter()
            .any(|p| p.port == e.port && p.protocol == proto)
        {
            return Ok(None);
        }
        let to = match self.pod_services.get(dest) {
            Some(svc) => svc
                .addr(v6)
                .map(|a| SocketAddr::new(a, via_service_port(e.port))),
            None => host.addr(v6).map(|a| SocketAddr::new(a, e.port)),
        };
        Ok(to.map(|to| Target {
            to,
            node: host.node,
            backends: vec![dest.to_string()],
        }))
    }

    /// Probes one matrix; disagreements of `palisade explain` with the
    /// probes go into `explain_disagreements`.
    fn check(
        &self,
        label: &str,
        e: &Expect,
        proto: Proto,
        v6: bool,
        explain_disagreements: &mut Vec<String>,
    ) -> anyhow::Result<Table> {
        let fam = if v6 { "IPv6" } else { "IPv4" };
        let mode = if self.opts.via_service {
            " via Services"
        } else {
            ""
        };
        let mut table = Table {
            title: format!(
                "{} {}: {}/{} {fam}{mode}",
                self.scenario.name, label, e.port, e.protocol
            ),
            ..Default::default()
        };
        let mut sources: Vec<String> = self.pods.keys().cloned().collect();
        sources.push("node".into());
        let mut dests: Vec<String> = self.pods.keys().cloned().collect();
        dests.extend(self.services.iter().map(|s| format!("svc:{}", s.key())));
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
            let Some(target) = self.target(d, e, v6)? else {
                continue;
            };
            for s in &sources {
                // A pod is never probed against itself, directly or through
                // a Service; the node's traffic to hosts outside the cluster
                // crosses no pod and no policy.
                if target.backends.contains(s) {
                    continue;
                }
                let origin = if s == "node" {
                    let Some(n) = target.node else { continue };
                    Origin {
                        netns: self.cluster.nodes[n].netns.clone(),
                        cgroup: None,
                    }
                } else {
                    let h = self.cluster.hosts.get(s).context("source without host")?;
                    if h.addr(v6).is_none() {
                        continue;
                    }
                    Origin {
                        netns: self
                            .cluster
                            .netns_of(h)
                            .context("source without namespace")?,
                        cgroup: h.cgroup.clone(),
                    }
                };
                probes.push(Probe {
                    origin,
                    to: target.to,
                    proto,
                });
                pairs.push((s.clone(), d.clone()));
            }
        }
        let results = probe::run_all(&probes, self.opts.probe_timeout, self.opts.parallel);
        // `palisade explain` must say what the probe saw, pair by pair.
        let oracle = Oracle::from_source(
            &self.source,
            scenario_config(self.scenario)?,
            cluster_nodes(self.cluster.nodes.len())?,
        )?;
        let protocol = palisade_agent::model::Protocol::parse(&e.protocol)
            .context("the scenario's protocol")?;
        for (((s, d), observed), probe) in pairs.into_iter().zip(results).zip(&probes) {
            let x = oracle.explain(&s, probe.to, protocol)?;
            if x.allowed != observed || x.maps_agree == Some(false) {
                explain_disagreements.push(format!(
                    "{}: {s} -> {d}: probe {}, explain {}{}\n{}",
                    table.title,
                    if observed { "allowed" } else { "denied" },
                    if x.allowed { "allows" } else { "denies" },
                    if x.maps_agree == Some(false) {
                        " (its maps check disagrees)"
                    } else {
                        ""
                    },
                    palisade_agent::explain::human(&x)
                ));
            }
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
