//! `palisade explain` held to the scenarios: [`Oracle`] explains a probe
//! from the objects the agent reads, and [`desk`] replays a scenario
//! without a kernel (the objects exactly as the runner writes them, the
//! same pairs) and compares explain's verdict with the expected one. The
//! runner asks the same [`Oracle`] after each live probe.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use anyhow::Context as _;
use palisade_agent::{
    config::FileConfig,
    explain::{self, CompiledNodes, EndpointArg, Explanation, PortArg, PortName},
    index::Index,
    model::{Node, Protocol},
    source::{dir::DirSource, yaml::parse_objects},
};
use serde_json::json;

use crate::{
    matrix,
    nodes::node_addresses,
    runner::{object_key, pod_addresses, pod_doc},
    scenario::{
        Expect, ExternalSpec, PodSpec, PortSpec, Scenario, Verdict, default_ports, expand_policy,
    },
    services::{AddressPool, PodView, Service, via_service_port},
};

/// The agent settings of a scenario, as its config file gives them.
pub fn scenario_config(s: &Scenario) -> anyhow::Result<FileConfig> {
    let cfg: FileConfig = match &s.agent {
        Some(m) => serde_yaml::from_value(serde_yaml::Value::Mapping(m.clone()))
            .context("the scenario's agent settings")?,
        None => FileConfig::default(),
    };
    cfg.profile.validate()?;
    Ok(cfg)
}

/// The local cluster's nodes with their uplink addresses.
pub fn cluster_nodes(n: usize) -> anyhow::Result<Vec<Node>> {
    (0..n)
        .map(|i| {
            let (v4, v6) = node_addresses(i)?;
            Ok(Node {
                name: format!("node-{i}"),
                addresses: vec![v4.into(), v6.into()],
                ..Node::default()
            })
        })
        .collect()
}

/// The model of one state of a scenario, and the maps each node compiles.
pub struct Oracle {
    index: Index,
    cfg: FileConfig,
    nodes: Vec<Node>,
    compiled: CompiledNodes,
    /// Objects the index refused (a scenario has none).
    pub rejected: Vec<String>,
}

impl Oracle {
    pub fn from_text(text: &str, cfg: FileConfig, nodes: Vec<Node>) -> Self {
        let mut index = Index::default();
        let mut rejected = Vec::new();
        for o in parse_objects("scenario.yaml", text) {
            match o {
                Ok(o) => {
                    if let Err(e) = index.apply(&o) {
                        rejected.push(palisade_agent::error_chain::chain(&e));
                    }
                }
                Err(e) => rejected.push(palisade_agent::error_chain::chain(&e)),
            }
        }
        let compiled = CompiledNodes::compile(index.model(), &cfg.profile, &nodes, cfg.budgets);
        Self {
            index,
            cfg,
            nodes,
            compiled,
            rejected,
        }
    }

    /// What an agent reads from `dir` (the runner's source).
    pub fn from_source(dir: &Path, cfg: FileConfig, nodes: Vec<Node>) -> anyhow::Result<Self> {
        let snap = DirSource::new(dir).read()?;
        let mut index = Index::default();
        for o in &snap.objects {
            index.apply(o)?;
        }
        let compiled = CompiledNodes::compile(index.model(), &cfg.profile, &nodes, cfg.budgets);
        Ok(Self {
            index,
            cfg,
            nodes,
            compiled,
            rejected: Vec::new(),
        })
    }

    /// Explains a probe from `from` (`ns/pod` or `node`) to `to`.
    pub fn explain(
        &self,
        from: &str,
        to: SocketAddr,
        protocol: Protocol,
    ) -> anyhow::Result<Explanation> {
        let world = explain::World {
            model: self.index.model(),
            profile: &self.cfg.profile,
            nodes: &self.nodes,
            maps: Some(&self.compiled),
        };
        let q = explain::Query {
            from: from.parse()?,
            to: EndpointArg::Address(to.ip()),
            port: PortArg {
                port: PortName::Number(to.port()),
                protocol,
            },
        };
        explain::explain(&world, &q).with_context(|| format!("explain {from} -> {to} {protocol}"))
    }
}

/// What a replay found.
#[derive(Debug, Default)]
pub struct DeskReport {
    /// (check, probe) pairs compared.
    pub pairs: usize,
    pub checks: usize,
    /// Pairs where explain's verdict is not the expected one.
    pub wrong: Vec<String>,
    /// Pairs where the compiled maps disagree with explain's semantic verdict.
    pub maps_mismatch: Vec<String>,
}

struct DeskPod {
    spec: PodSpec,
    labels: BTreeMap<String, String>,
    node: usize,
    v4: Option<std::net::Ipv4Addr>,
    v6: Option<std::net::Ipv6Addr>,
    ports: Vec<PortSpec>,
}

/// A scenario's cluster on paper: placement, addresses, Services and
/// objects as the runner makes them.
struct Desk<'a> {
    scenario: &'a Scenario,
    nodes: usize,
    via_service: bool,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    ns_order: Vec<String>,
    ns_next: BTreeMap<String, u16>,
    placed: usize,
    pods: BTreeMap<String, DeskPod>,
    services: Vec<Service>,
    pod_services: BTreeMap<String, Service>,
    pool: AddressPool,
    policies: Vec<serde_yaml::Value>,
}

/// Replays `scenario` (on `nodes` nodes, through a Service per pod with
/// `via_service`) and explains every probe of every check.
pub fn desk(
    scenario: &Scenario,
    nodes: Option<usize>,
    via_service: bool,
) -> anyhow::Result<DeskReport> {
    let cfg = scenario_config(scenario)?;
    let nodes = nodes.unwrap_or(scenario.nodes);
    let mut d = Desk {
        scenario,
        nodes,
        via_service,
        namespaces: BTreeMap::new(),
        ns_order: Vec::new(),
        ns_next: BTreeMap::new(),
        placed: 0,
        pods: BTreeMap::new(),
        services: Vec::new(),
        pod_services: BTreeMap::new(),
        pool: AddressPool::default(),
        policies: scenario.policies.clone(),
    };
    for ns in &scenario.namespaces {
        d.namespaces.insert(ns.name.clone(), ns.labels.clone());
        d.ns_order.push(ns.name.clone());
    }
    for svc in &scenario.services {
        d.services
            .push(Service::from_spec(svc, &mut d.pool, scenario.family));
    }
    for p in &scenario.pods {
        d.add_pod(p)?;
    }
    let mut report = DeskReport::default();
    d.check("initial", &scenario.expect, &cfg, &mut report)?;
    for step in &scenario.steps {
        for r in &step.relabel {
            d.pods.get_mut(&r.pod).context("relabel: no pod")?.labels = r.labels.clone();
        }
        for r in &step.relabel_namespace {
            d.namespaces.insert(r.namespace.clone(), r.labels.clone());
        }
        for obj in &step.apply {
            let key = object_key(obj);
            d.policies.retain(|p| object_key(p) != key);
            d.policies.push(obj.clone());
        }
        for del in &step.delete {
            let key = (
                del.kind.clone(),
                del.namespace.clone().unwrap_or_default(),
                del.name.clone(),
            );
            d.policies.retain(|p| object_key(p) != key);
        }
        for p in &step.delete_pods {
            d.pods.remove(p);
            d.pod_services.remove(p);
        }
        for p in &step.add_pods {
            d.add_pod(p)?;
        }
        d.check(
            &format!("step {:?}", step.name),
            &step.expect,
            &cfg,
            &mut report,
        )?;
    }
    Ok(report)
}

impl Desk<'_> {
    fn add_pod(&mut self, p: &PodSpec) -> anyhow::Result<()> {
        let name = format!("{}/{}", p.namespace, p.name);
        let node = match &p.node {
            Some(n) => n
                .strip_prefix("node-")
                .and_then(|k| k.parse::<usize>().ok())
                .filter(|k| *k < self.nodes)
                .with_context(|| format!("pod {name} names node {n:?}"))?,
            None => {
                self.placed += 1;
                (self.placed - 1) % self.nodes
            }
        };
        let family = self.scenario.family;
        let (v4, v6) = if p.host_network {
            let (a4, a6) = node_addresses(node)?;
            (family.v4().then_some(a4), family.v6().then_some(a6))
        } else {
            let ns_idx = match self.ns_order.iter().position(|n| *n == p.namespace) {
                Some(i) => i,
                None => {
                    self.ns_order.push(p.namespace.clone());
                    self.ns_order.len() - 1
                }
            } as u16;
            let next = self.ns_next.entry(p.namespace.clone()).or_insert(0);
            let pod_idx = *next;
            *next += 1;
            pod_addresses(family, ns_idx, pod_idx)
        };
        self.pods.insert(
            name.clone(),
            DeskPod {
                spec: p.clone(),
                labels: p.labels.clone(),
                node,
                v4,
                v6,
                ports: p.ports.clone().unwrap_or_else(default_ports),
            },
        );
        if self.via_service {
            let view = self.views().remove(&name).context("pod view")?;
            let svc = Service::for_pod(&view, &mut self.pool, family);
            self.pod_services.insert(name, svc);
        }
        Ok(())
    }

    fn views(&self) -> BTreeMap<String, PodView> {
        self.pods
            .iter()
            .map(|(k, p)| {
                (
                    k.clone(),
                    PodView {
                        key: k.clone(),
                        namespace: p.spec.namespace.clone(),
                        name: p.spec.name.clone(),
                        labels: p.labels.clone(),
                        node_name: format!("node-{}", p.node),
                        v4: p.v4,
                        v6: p.v6,
                        ports: p.ports.clone(),
                    },
                )
            })
            .collect()
    }

    fn ip(&self, pod: &str, v6: bool) -> Option<IpAddr> {
        let p = self.pods.get(pod)?;
        if v6 {
            p.v6.map(IpAddr::V6)
        } else {
            p.v4.map(IpAddr::V4)
        }
    }

    /// The agent's source, as `Run::write_source` writes it.
    fn source_text(&self) -> anyhow::Result<String> {
        let mut docs = Vec::new();
        for (name, labels) in &self.namespaces {
            docs.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}));
        }
        let views = self.views();
        for (name, p) in &self.pods {
            let ips: Vec<String> = [self.ip(name, false), self.ip(name, true)]
                .into_iter()
                .flatten()
                .map(|a| a.to_string())
                .collect();
            docs.push(pod_doc(
                &p.spec,
                &p.labels,
                &format!("uid-{name}"),
                &views[name].node_name,
                &p.ports,
                &ips,
            ));
        }
        for s in self.services.iter().chain(self.pod_services.values()) {
            docs.extend(s.objects(&views));
        }
        let mut text = String::new();
        for d in &docs {
            text.push_str("---\n");
            text.push_str(&serde_yaml::to_string(d)?);
        }
        for p in &self.policies {
            for obj in expand_policy(p, self.scenario.family, &|pod, v6| self.ip(pod, v6))? {
                text.push_str("---\n");
                text.push_str(&serde_yaml::to_string(&obj)?);
            }
        }
        Ok(text)
    }

    /// Where a probe to `dest` goes and who is never probed against it, as
    /// `Run::target` decides.
    fn target(
        &self,
        dest: &str,
        e: &Expect,
        v6: bool,
    ) -> Option<(SocketAddr, Option<usize>, Vec<String>)> {
        let proto = e.protocol.as_str();
        let views = self.views();
        if let Some(key) = dest.strip_prefix("svc:") {
            let svc = self.services.iter().find(|s| s.key() == key)?;
            let i = svc
                .ports
                .iter()
                .position(|p| p.port == e.port && p.protocol == proto)?;
            let addr = svc.addr(v6)?;
            let (backends, node) = svc.port_backends(i, &views);
            let node = node.and_then(|n| n.strip_prefix("node-")?.parse().ok());
            return Some((SocketAddr::new(addr, e.port), node, backends));
        }
        if let Some(name) = dest.strip_prefix("external:") {
            let x: &ExternalSpec = self.scenario.externals.iter().find(|x| x.name == name)?;
            let ports = x.ports.clone().unwrap_or_else(default_ports);
            if !ports
                .iter()
                .any(|p| p.port == e.port && p.protocol == proto)
                || x.ip.is_ipv6() != v6
            {
                return None;
            }
            return Some((SocketAddr::new(x.ip, e.port), None, vec![dest.to_string()]));
        }
        let p = self.pods.get(dest)?;
        if !p
            .ports
            .iter()
            .any(|p| p.port == e.port && p.protocol == proto)
        {
            return None;
        }
        let to = match self.pod_services.get(dest) {
            Some(svc) => SocketAddr::new(svc.addr(v6)?, via_service_port(e.port)),
            None => SocketAddr::new(self.ip(dest, v6)?, e.port),
        };
        Some((to, Some(p.node), vec![dest.to_string()]))
    }

    fn check(
        &self,
        label: &str,
        expects: &[Expect],
        cfg: &FileConfig,
        report: &mut DeskReport,
    ) -> anyhow::Result<()> {
        let oracle = Oracle::from_text(
            &self.source_text()?,
            cfg.clone(),
            cluster_nodes(self.nodes)?,
        );
        if !oracle.rejected.is_empty() {
            anyhow::bail!("{label}: objects rejected: {}", oracle.rejected.join("; "));
        }
        let mut sources: Vec<String> = self.pods.keys().cloned().collect();
        sources.push("node".into());
        let mut dests: Vec<String> = self.pods.keys().cloned().collect();
        dests.extend(self.services.iter().map(|s| format!("svc:{}", s.key())));
        dests.extend(
            self.scenario
                .externals
                .iter()
                .map(|x| format!("external:{}", x.name)),
        );
        for e in expects {
            let protocol = Protocol::parse(&e.protocol.to_ascii_uppercase())
                .with_context(|| format!("protocol {}", e.protocol))?;
            for v6 in self.scenario.family.probed() {
                report.checks += 1;
                for d in &dests {
                    let Some((to, node, backends)) = self.target(d, e, v6) else {
                        continue;
                    };
                    for s in &sources {
                        if backends.contains(s)
                            || (s == "node" && node.is_none())
                            || (s != "node" && self.ip(s, v6).is_none())
                        {
                            continue;
                        }
                        report.pairs += 1;
                        let x = oracle.explain(s, to, protocol)?;
                        let want = matrix::expected(e, s, d) == Verdict::Allow;
                        let what = format!(
                            "{} {label} {}/{} {}: {s} -> {d} ({to})",
                            self.scenario.name,
                            e.port,
                            e.protocol,
                            if v6 { "IPv6" } else { "IPv4" }
                        );
                        if x.allowed != want {
                            report.wrong.push(format!(
                                "{what}: expected {}, explain says {}\n{}",
                                verdict(want),
                                verdict(x.allowed),
                                explain::human(&x)
                            ));
                        }
                        if x.maps_agree == Some(false) {
                            report
                                .maps_mismatch
                                .push(format!("{what}\n{}", explain::human(&x)));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "allow" } else { "deny" }
}
