//! Scenario files against a real cluster (`cargo xtask kind e2e`): the
//! namespaces, pods and policies go through the API server, probes run with
//! `kubectl exec` (agnhost connect, as in the upstream tests), the agent is
//! the deployed DaemonSet. Needs kubectl and a cluster; the pure half is
//! [`manifests`], tested everywhere.
//!
//! Services are real: the API server allocates their ClusterIPs, the
//! EndpointSlice controller (or, for `--via-service`'s selector-less one per
//! pod, the run) lists their backends, and the cluster's kube-proxy
//! translates them. `nodes:`, `node:` and `--nodes N` pin pods to the
//! cluster's nodes (workers first).
//!
//! Differences from the local harness, by necessity: externals are not
//! probed (a cluster has no hosts at the scenario's addresses), and the
//! `node` source is a hostNetwork prober on the destination pod's node.
//! Enforcement after an API change is eventually consistent, so a check
//! re-probes the cells that disagree until `settle` has passed.

pub mod manifests;

use std::{
    collections::BTreeMap,
    io::Write as _,
    net::{IpAddr, SocketAddr},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use manifests::{
    NAMESPACE_NAME_LABEL, PROBER_NAMESPACE, Placed, Placement, RUN_LABEL, agent_config, by_family,
    cluster_ips, container_name, label_args, node_order, node_prober, pairs, probe_command,
    prober_name, ready_addresses, service_objects,
};
use serde_json::Value;

use crate::{
    matrix::{self, Name, Table},
    probe::Proto,
    runner::Outcome,
    scenario::{Expect, Labels, PodSpec, Scenario, Step, Verdict, default_ports, expand_policy},
    services::{AddressPool, PodView, Service, via_service_port},
};

#[derive(Clone, Debug)]
pub struct Options {
    /// kubectl context of the cluster.
    pub context: String,
    pub probe_timeout: Duration,
    pub parallel: usize,
    /// How long a check may wait for enforcement to catch up with a change.
    pub settle: Duration,
    /// The agent's base config (deploy/base's ConfigMap `config.yaml`).
    pub base_config: String,
    /// Pin the pods to this many nodes (`--nodes`).
    pub nodes: Option<usize>,
    /// Probe every pod through a Service of its own (`--via-service`).
    pub via_service: bool,
}

/// Where a probe to one destination goes.
struct Target {
    to: SocketAddr,
    /// The node whose prober stands for the source `node`; none when the
    /// backends are on several nodes.
    node: Option<String>,
    /// Never probed from themselves.
    backends: Vec<Name>,
}

struct Run<'a> {
    opts: &'a Options,
    scenario: &'a Scenario,
    id: String,
    /// Namespaces this run created (deleted at the end); others are left.
    created: Vec<String>,
    ns_labels: BTreeMap<String, Labels>,
    pod_labels: BTreeMap<Name, Labels>,
    placed: BTreeMap<Name, Placed>,
    placement: Placement,
    /// The scenario's Services and `--via-service`'s one per pod, with the
    /// addresses the API server gave them.
    services: Vec<Service>,
    pod_services: BTreeMap<Name, Service>,
    report: String,
    checks: usize,
}

pub fn run_file(path: &Path, opts: &Options) -> Outcome {
    let fail = |name: String, report: String| Outcome {
        name,
        passed: false,
        checks: 0,
        report,
    };
    let scenario = match Scenario::load(path) {
        Ok(s) => s,
        Err(e) => return fail(path.display().to_string(), format!("{e:#}")),
    };
    let unsupported = scenario.unsupported_kinds();
    if !unsupported.is_empty() {
        return fail(
            scenario.name,
            format!(
                "cannot run: Palisade does not enforce {} yet",
                unsupported.join(", ")
            ),
        );
    }
    let mut run = Run {
        opts,
        scenario: &scenario,
        id: format!("{}-{}", scenario.name, std::process::id()),
        created: Vec::new(),
        ns_labels: BTreeMap::new(),
        pod_labels: BTreeMap::new(),
        placed: BTreeMap::new(),
        placement: Placement::new(Vec::new(), None, &[]).expect("no nodes wanted"),
        services: Vec::new(),
        pod_services: BTreeMap::new(),
        report: String::new(),
        checks: 0,
    };
    let result = run.all();
    let cleanup = run.cleanup();
    match (result, cleanup) {
        (Ok(passed), Ok(())) => Outcome {
            name: scenario.name.clone(),
            passed,
            checks: run.checks,
            report: run.report,
        },
        (Err(e), _) | (Ok(_), Err(e)) => fail(scenario.name.clone(), format!("error: {e:#}")),
    }
}

impl Run<'_> {
    fn kubectl(&self) -> Command {
        let mut c = Command::new("kubectl");
        c.args(["--context", &self.opts.context]);
        c
    }

    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .kubectl()
            .args(args)
            .output()
            .context("running kubectl")?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn apply(&self, objects: &[Value]) -> anyhow::Result<()> {
        let mut child = self
            .kubectl()
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("running kubectl apply")?;
        {
            let mut stdin = child.stdin.take().context("kubectl stdin")?;
            for o in objects {
                writeln!(stdin, "---\n{}", serde_json::to_string(o)?)?;
            }
        }
        if !child.wait()?.success() {
            bail!("kubectl apply failed");
        }
        Ok(())
    }

    fn all(&mut self) -> anyhow::Result<bool> {
        let existing: Vec<String> = self
            .run(&["get", "namespaces", "-o", "name"])?
            .lines()
            .map(|l| l.trim_start_matches("namespace/").to_string())
            .collect();
        self.configure_agent()?;
        let mut namespaces = Vec::new();
        for ns in &self.scenario.namespaces {
            if !existing.contains(&ns.name) {
                self.created.push(ns.name.clone());
            }
            self.ns_labels.insert(ns.name.clone(), ns.labels.clone());
            namespaces.push(manifests::namespace(&ns.name, &ns.labels, &self.id));
        }
        if !existing.iter().any(|n| n == PROBER_NAMESPACE) {
            self.created.push(PROBER_NAMESPACE.into());
            namespaces.push(manifests::namespace(
                PROBER_NAMESPACE,
                &Labels::new(),
                &self.id,
            ));
        }
        self.apply(&namespaces)?;
        let nodes = node_order(&serde_json::from_str(
            &self.run(&["get", "nodes", "-o", "json"])?,
        )?);
        let wanted = self
            .opts
            .nodes
            .or((self.scenario.nodes > 1).then_some(self.scenario.nodes));
        let mut all_pods = self.scenario.pods.clone();
        all_pods.extend(self.scenario.steps.iter().flat_map(|s| s.add_pods.clone()));
        self.placement = Placement::new(nodes.clone(), wanted, &all_pods)?;
        let probers: Vec<Value> = nodes.iter().map(|n| node_prober(n, &self.id)).collect();
        self.apply(&probers)?;
        self.add_pods(&self.scenario.pods.clone())?;
        let mut pool = AddressPool::default();
        let views = self.pod_views();
        for spec in &self.scenario.services {
            let mut svc = Service::from_spec(spec, &mut pool, self.scenario.family);
            self.apply(&service_objects(&svc, &views, &self.id))?;
            self.read_back(&mut svc)?;
            self.services.push(svc);
        }
        self.sync_services()?;
        self.apply_policies(&self.scenario.policies.clone())?;
        let mut ok = self.check("initial", &self.scenario.expect.clone());
        for step in &self.scenario.steps {
            self.step(step)?;
            ok &= self.check(&step.name, &step.expect);
        }
        Ok(ok)
    }

    /// The scenario's agent settings over the deployed ones; the DaemonSet
    /// is restarted when they change (the agent reads them at start).
    fn configure_agent(&self) -> anyhow::Result<()> {
        let wanted = agent_config(&self.opts.base_config, self.scenario.agent.as_ref())?;
        // kustomize's generator names the ConfigMap palisade-config-<hash>:
        // the DaemonSet says which one its pods mount.
        let name = self.run(&[
            "-n",
            "palisade-system",
            "get",
            "daemonset/palisade",
            "-o",
            "jsonpath={.spec.template.spec.volumes[?(@.name==\"config\")].configMap.name}",
        ])?;
        let name = name.trim();
        if name.is_empty() {
            bail!("daemonset/palisade mounts no ConfigMap volume named config");
        }
        let current = self
            .run(&[
                "-n",
                "palisade-system",
                "get",
                "configmap",
                name,
                "-o",
                "jsonpath={.data.config\\.yaml}",
            ])
            .unwrap_or_default();
        if current == wanted {
            return Ok(());
        }
        self.apply(&[serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "palisade-system"},
            "data": {"config.yaml": wanted},
        })])?;
        self.run(&[
            "-n",
            "palisade-system",
            "rollout",
            "restart",
            "daemonset/palisade",
        ])?;
        self.run(&[
            "-n",
            "palisade-system",
            "rollout",
            "status",
            "daemonset/palisade",
            "--timeout=180s",
        ])?;
        Ok(())
    }

    fn add_pods(&mut self, pods: &[PodSpec]) -> anyhow::Result<()> {
        let mut objects = Vec::new();
        for p in pods {
            let node = self.placement.node_for(p)?;
            objects.push(manifests::pod(p, &p.labels, &self.id, node.as_deref()));
        }
        self.apply(&objects)?;
        for p in pods {
            self.pod_labels
                .insert(format!("{}/{}", p.namespace, p.name), p.labels.clone());
        }
        self.run(&[
            "wait",
            "--for=condition=Ready",
            "pod",
            "-A",
            "-l",
            &format!("{RUN_LABEL}={}", self.id),
            "--timeout=180s",
        ])?;
        self.discover(pods)
    }

    /// Where the cluster put the pods, and their addresses.
    fn discover(&mut self, pods: &[PodSpec]) -> anyhow::Result<()> {
        let list: Value = serde_json::from_str(&self.run(&[
            "get",
            "pods",
            "-A",
            "-l",
            &format!("{RUN_LABEL}={}", self.id),
            "-o",
            "json",
        ])?)?;
        for p in pods {
            let item = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|i| {
                    i["metadata"]["namespace"] == p.namespace.as_str()
                        && i["metadata"]["name"] == p.name.as_str()
                })
                .with_context(|| format!("pod {}/{} not listed", p.namespace, p.name))?;
            let ips: Vec<IpAddr> = item["status"]["podIPs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|i| i["ip"].as_str()?.parse().ok())
                .collect();
            self.placed.insert(
                format!("{}/{}", p.namespace, p.name),
                Placed {
                    ips,
                    node: item["spec"]["nodeName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    ports: p.ports.clone().unwrap_or_else(default_ports),
                },
            );
        }
        Ok(())
    }

    /// Policies with their placeholders expanded (once per family when a
    /// dual-stack scenario names a pod address), labelled for cleanup.
    fn apply_policies(&self, policies: &[serde_yaml::Value]) -> anyhow::Result<()> {
        let mut objects = Vec::new();
        for p in policies {
            let ip = |pod: &str, v6: bool| self.placed.get(pod).and_then(|p| p.addr(v6));
            for mut obj in expand_policy(p, self.scenario.family, &ip)? {
                obj["metadata"]["labels"][RUN_LABEL] = Value::String(self.id.clone());
                objects.push(obj);
            }
        }
        if objects.is_empty() {
            return Ok(());
        }
        self.apply(&objects)
    }

    fn step(&mut self, step: &Step) -> anyhow::Result<()> {
        let keep = [NAMESPACE_NAME_LABEL, RUN_LABEL];
        for r in &step.relabel {
            let (ns, name) = r.pod.split_once('/').context("relabel pod: ns/name")?;
            let current = self.pod_labels.get(&r.pod).cloned().unwrap_or_default();
            let mut args = vec!["-n", ns, "label", "--overwrite", "pod", name];
            let edits = label_args(&current, &r.labels, &keep);
            args.extend(edits.iter().map(String::as_str));
            self.run(&args)?;
            self.pod_labels.insert(r.pod.clone(), r.labels.clone());
        }
        for r in &step.relabel_namespace {
            let current = self
                .ns_labels
                .get(&r.namespace)
                .cloned()
                .unwrap_or_default();
            let mut args = vec!["label", "--overwrite", "namespace", r.namespace.as_str()];
            let edits = label_args(&current, &r.labels, &keep);
            args.extend(edits.iter().map(String::as_str));
            self.run(&args)?;
            self.ns_labels.insert(r.namespace.clone(), r.labels.clone());
        }
        self.apply_policies(&step.apply)?;
        for d in &step.delete {
            let kind = d.kind.to_lowercase();
            match &d.namespace {
                Some(ns) => self.run(&["-n", ns, "delete", &kind, &d.name, "--wait=false"])?,
                None => self.run(&["delete", &kind, &d.name, "--wait=false"])?,
            };
        }
        if !step.add_pods.is_empty() {
            self.add_pods(&step.add_pods)?;
        }
        for p in &step.delete_pods {
            let (ns, name) = p.split_once('/').context("deletePods: ns/name")?;
            self.run(&["-n", ns, "delete", "pod", name, "--wait=true"])?;
            self.placed.remove(p);
            if let Some(svc) = self.pod_services.remove(p) {
                self.run(&["-n", ns, "delete", "service", &svc.name, "--wait=false"])?;
            }
        }
        self.sync_services()
    }

    /// Pods with their current labels, addresses and nodes.
    fn pod_views(&self) -> BTreeMap<Name, PodView> {
        self.placed
            .iter()
            .filter_map(|(key, p)| {
                let (ns, name) = key.split_once('/')?;
                let (v4, v6) = by_family(&p.ips);
                Some((
                    key.clone(),
                    PodView {
                        key: key.clone(),
                        namespace: ns.into(),
                        name: name.into(),
                        labels: self.pod_labels.get(key).cloned().unwrap_or_default(),
                        node_name: p.node.clone(),
                        v4,
                        v6,
                        ports: p.ports.clone(),
                    },
                ))
            })
            .collect()
    }

    /// Creates `--via-service`'s Services not made yet (a new pod's), reads
    /// back their ClusterIPs, and waits until every Service's EndpointSlices
    /// list exactly the backends a probe expects.
    fn sync_services(&mut self) -> anyhow::Result<()> {
        let views = self.pod_views();
        if self.opts.via_service {
            let mut pool = AddressPool::default();
            for (key, view) in &views {
                if view.ports.is_empty() || self.pod_services.contains_key(key) {
                    continue;
                }
                let mut svc = Service::for_pod(view, &mut pool, self.scenario.family);
                self.apply(&service_objects(&svc, &views, &self.id))?;
                self.read_back(&mut svc)?;
                self.pod_services.insert(key.clone(), svc);
            }
        }
        for svc in self.services.iter().chain(self.pod_services.values()) {
            self.await_endpoints(svc, &views)?;
        }
        Ok(())
    }

    /// The pool only shapes the object; the cluster's own addresses count.
    fn read_back(&self, svc: &mut Service) -> anyhow::Result<()> {
        let obj: Value = serde_json::from_str(&self.run(&[
            "-n",
            &svc.namespace,
            "get",
            "service",
            &svc.name,
            "-o",
            "json",
        ])?)?;
        let (v4, v6) = by_family(&cluster_ips(&obj));
        (svc.v4, svc.v6) = (
            v4.filter(|_| svc.v4.is_some()),
            v6.filter(|_| svc.v6.is_some()),
        );
        anyhow::ensure!(
            svc.v4.is_some() || svc.v6.is_some(),
            "service {} got no ClusterIP of the scenario's family",
            svc.key()
        );
        Ok(())
    }

    /// Until kube-proxy can translate to exactly the expected backends, a
    /// denied probe would prove nothing.
    fn await_endpoints(
        &self,
        svc: &Service,
        views: &BTreeMap<Name, PodView>,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(90);
        let eps = svc.endpoints(views);
        loop {
            let slices: Value = serde_json::from_str(&self.run(&[
                "-n",
                &svc.namespace,
                "get",
                "endpointslices",
                "-l",
                &format!("kubernetes.io/service-name={}", svc.name),
                "-o",
                "json",
            ])?)?;
            let ready = |v6: bool| {
                let want: std::collections::BTreeSet<IpAddr> = eps
                    .iter()
                    .filter(|e| e.targets.iter().any(Option::is_some))
                    .filter_map(|e| {
                        if v6 {
                            e.v6.map(IpAddr::V6)
                        } else {
                            e.v4.map(IpAddr::V4)
                        }
                    })
                    .collect();
                svc.addr(v6).is_none() || ready_addresses(&slices, v6) == want
            };
            if ready(false) && ready(true) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "service {}: its EndpointSlices do not list the expected backends after 90 s",
                    svc.key()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Where a probe to `dest` on this port goes: the pod (or its own
    /// Service under `--via-service`), or a scenario Service.
    fn target(&self, dest: &str, e: &Expect, v6: bool) -> Option<Target> {
        if let Some(key) = dest.strip_prefix("svc:") {
            let svc = self.services.iter().find(|s| s.key() == key)?;
            let i = svc
                .ports
                .iter()
                .position(|p| p.port == e.port && p.protocol == e.protocol)?;
            let (backends, node) = svc.port_backends(i, &self.pod_views());
            return Some(Target {
                to: SocketAddr::new(svc.addr(v6)?, e.port),
                node,
                backends,
            });
        }
        let dst = self.placed.get(dest)?;
        let to = match self.pod_services.get(dest) {
            Some(svc) => SocketAddr::new(svc.addr(v6)?, via_service_port(e.port)),
            None => SocketAddr::new(dst.addr(v6)?, e.port),
        };
        Some(Target {
            to,
            node: Some(dst.node.clone()),
            backends: vec![dest.to_string()],
        })
    }

    /// Probes one (source, destination) pair from inside the source pod
    /// (or the destination node's prober for `node`).
    fn probe(&self, from: &str, to: &str, e: &Expect, proto: Proto, v6: bool) -> bool {
        let Some(target) = self.target(to, e, v6) else {
            return false;
        };
        let (ns, pod, container) = if from == "node" {
            let Some(node) = &target.node else {
                return false;
            };
            (PROBER_NAMESPACE.to_string(), prober_name(node), None)
        } else {
            let Some((ns, pod)) = from.split_once('/') else {
                return false;
            };
            let first = self
                .placed
                .get(from)
                .and_then(|p| p.ports.first())
                .map(container_name);
            (ns.to_string(), pod.to_string(), first)
        };
        let mut cmd = self.kubectl();
        cmd.args(["-n", &ns, "exec", &pod]);
        if let Some(c) = &container {
            cmd.args(["-c", c]);
        }
        cmd.arg("--")
            .args(probe_command(
                target.to.ip(),
                target.to.port(),
                proto,
                self.opts.probe_timeout,
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.status().is_ok_and(|s| s.success())
    }

    fn probe_all(&self, cells: &[(Name, Name)], e: &Expect, v6: bool) -> Vec<bool> {
        let Ok(proto) = Proto::parse(&e.protocol) else {
            return vec![false; cells.len()];
        };
        let mut out = Vec::with_capacity(cells.len());
        for chunk in cells.chunks(self.opts.parallel.max(1)) {
            std::thread::scope(|s| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|(from, to)| s.spawn(move || self.probe(from, to, e, proto, v6)))
                    .collect();
                out.extend(handles.into_iter().map(|h| h.join().unwrap_or(false)));
            });
        }
        out
    }

    fn check(&mut self, label: &str, expects: &[Expect]) -> bool {
        let families = self.scenario.family.probed();
        let mut ok = true;
        for e in expects {
            for &v6 in &families {
                let table = self.check_one(label, e, v6);
                self.checks += 1;
                if table.mismatches() > 0 {
                    ok = false;
                    self.report.push_str(&table.render());
                }
            }
        }
        ok
    }

    fn check_one(&self, label: &str, e: &Expect, v6: bool) -> Table {
        let fam = if v6 { "IPv6" } else { "IPv4" };
        let mut table = Table {
            title: format!(
                "{} {label}: {}/{} {fam} (cluster)",
                self.scenario.name, e.port, e.protocol
            ),
            ..Default::default()
        };
        let mut cells = pairs(&self.placed, e.port, &e.protocol, v6);
        for svc in &self.services {
            let dest = format!("svc:{}", svc.key());
            let Some(target) = self.target(&dest, e, v6) else {
                continue;
            };
            for (s, src) in &self.placed {
                if !target.backends.contains(s) && src.addr(v6).is_some() {
                    cells.push((s.clone(), dest.clone()));
                }
            }
            if target.node.is_some() {
                cells.push(("node".into(), dest));
            }
        }
        let expected: Vec<bool> = cells
            .iter()
            .map(|(s, d)| matrix::expected(e, s, d) == Verdict::Allow)
            .collect();
        let mut observed = self.probe_all(&cells, e, v6);
        // Re-probe what disagrees until enforcement has caught up or time is up.
        let deadline = Instant::now() + self.opts.settle;
        loop {
            let wrong: Vec<usize> = (0..cells.len())
                .filter(|i| observed[*i] != expected[*i])
                .collect();
            if wrong.is_empty() || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
            let again: Vec<(Name, Name)> = wrong.iter().map(|i| cells[*i].clone()).collect();
            for (i, o) in wrong.into_iter().zip(self.probe_all(&again, e, v6)) {
                observed[i] = o;
            }
        }
        for (i, (s, d)) in cells.iter().enumerate() {
            table
                .cells
                .insert((s.clone(), d.clone()), (expected[i], observed[i]));
            if !table.sources.contains(s) {
                table.sources.push(s.clone());
            }
            if !table.dests.contains(d) {
                table.dests.push(d.clone());
            }
        }
        table
    }

    /// Deletes what this run made: its namespaces, and its pods and
    /// policies in namespaces that were there before.
    fn cleanup(&self) -> anyhow::Result<()> {
        let selector = format!("{RUN_LABEL}={}", self.id);
        self.run(&[
            "delete",
            "pods,services,endpointslices,networkpolicies",
            "-A",
            "-l",
            &selector,
            "--wait=false",
        ])?;
        for ns in &self.created {
            self.run(&["delete", "namespace", ns, "--wait=false"])?;
        }
        Ok(())
    }
}
