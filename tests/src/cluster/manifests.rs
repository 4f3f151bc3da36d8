//! The pure half of the cluster runner: what a scenario becomes on a real
//! cluster (objects, probe commands, label edits, agent settings) and which
//! pairs a check probes. Tested without a cluster; the kubectl half only
//! carries these out.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::{
    matrix::Name,
    probe::Proto,
    scenario::{Labels, PodSpec, PortSpec, default_ports},
    services::{Backends, PodView, Service},
};

/// Every object a run creates carries this label (value: the run id), so
/// that cleanup finds them, even after an interrupted run.
pub const RUN_LABEL: &str = "palisade.dev/e2e";
/// The image the upstream network policy tests use: it serves and probes.
pub const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.53";
/// Where the per-node probers live (hostNetwork: they are "node").
pub const PROBER_NAMESPACE: &str = "palisade-e2e";
/// Kept on every namespace whatever a relabel says (the API server sets it).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

pub fn namespace(name: &str, labels: &Labels, run: &str) -> Value {
    let mut labels = labels.clone();
    labels.insert(RUN_LABEL.into(), run.into());
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

/// The container serving one port (probes exec into a pod's first one).
pub fn container_name(p: &PortSpec) -> String {
    format!("c-{}-{}", p.port, p.protocol.to_lowercase())
}

/// A scenario pod: one agnhost container serving each of its ports, as in
/// the upstream tests, with the scenario's port names as named ports.
/// `node`: the node it must run on (`None`: the scheduler's choice).
pub fn pod(spec: &PodSpec, labels: &Labels, run: &str, node: Option<&str>) -> Value {
    let mut labels = labels.clone();
    labels.insert(RUN_LABEL.into(), run.into());
    let containers: Vec<Value> = spec
        .ports
        .clone()
        .unwrap_or_else(default_ports)
        .iter()
        .map(|p| {
            let mut port = json!({"containerPort": p.port, "protocol": p.protocol});
            if let Some(n) = &p.name {
                port["name"] = json!(n);
            }
            json!({
                "name": container_name(p),
                "image": AGNHOST,
                "args": ["serve-hostname", format!("--{}", p.protocol.to_lowercase()),
                         "--http=false", "--port", p.port.to_string()],
                "ports": [port],
            })
        })
        .collect();
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": labels},
        "spec": {"hostNetwork": spec.host_network, "terminationGracePeriodSeconds": 0,
                 "containers": containers},
    });
    if let Some(n) = node {
        pod["spec"]["nodeName"] = json!(n);
    }
    pod
}

/// The cluster's nodes (`kubectl get nodes -o json`) in the order a
/// scenario's `node-0`, `node-1`, ... map onto them: workers first (kind's
/// control-plane node comes last), each group by name.
pub fn node_order(list: &Value) -> Vec<String> {
    let mut nodes: Vec<(bool, String)> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            let labels = &n["metadata"]["labels"];
            let control = labels
                .get("node-role.kubernetes.io/control-plane")
                .is_some();
            Some((control, n["metadata"]["name"].as_str()?.to_string()))
        })
        .collect();
    nodes.sort();
    nodes.into_iter().map(|(_, n)| n).collect()
}

/// Where a run puts its pods. A scenario that names nodes, or one run with
/// `--nodes N`, is pinned: `node-K` is the K-th node of [`node_order`], the
/// other pods go round-robin over the first N. Otherwise the scheduler
/// places them (verdicts must not depend on it).
#[derive(Debug)]
pub struct Placement {
    nodes: Vec<String>,
    next: usize,
}

impl Placement {
    pub fn new(
        order: Vec<String>,
        wanted: Option<usize>,
        pods: &[PodSpec],
    ) -> anyhow::Result<Self> {
        let Some(n) = wanted.or_else(|| pods.iter().any(|p| p.node.is_some()).then_some(1)) else {
            return Ok(Self {
                nodes: Vec::new(),
                next: 0,
            });
        };
        let named = pods
            .iter()
            .filter_map(|p| {
                p.node
                    .as_deref()?
                    .strip_prefix("node-")?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map_or(0, |k| k + 1);
        let n = n.max(named);
        anyhow::ensure!(
            n <= order.len(),
            "the scenario needs {n} nodes; the cluster has {} ({})",
            order.len(),
            order.join(", ")
        );
        Ok(Self {
            nodes: order.into_iter().take(n).collect(),
            next: 0,
        })
    }

    /// The node for one pod (`None`: left to the scheduler).
    pub fn node_for(&mut self, p: &PodSpec) -> anyhow::Result<Option<String>> {
        if self.nodes.is_empty() {
            return Ok(None);
        }
        let k = match &p.node {
            Some(name) => name
                .strip_prefix("node-")
                .and_then(|k| k.parse::<usize>().ok())
                .filter(|k| *k < self.nodes.len())
                .with_context(|| format!("pod {}/{} names node {name:?}", p.namespace, p.name))?,
            None => {
                self.next += 1;
                (self.next - 1) % self.nodes.len()
            }
        };
        Ok(Some(self.nodes[k].clone()))
    }
}

/// The label an EndpointSlice's owner puts on it; a run's own slices say
/// so, and the EndpointSlice controller leaves them alone.
const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";

/// What a run creates for one Service: the Service, whose ClusterIPs the
/// API server allocates (read back with [`cluster_ips`]), and, for a Service
/// without selector (`--via-service`'s one per pod), the EndpointSlices
/// naming its backends; a selector's slices are the controller's.
pub fn service_objects(svc: &Service, pods: &BTreeMap<String, PodView>, run: &str) -> Vec<Value> {
    let mut out = svc.objects(pods);
    if matches!(svc.backends, Backends::Selector(_)) {
        out.truncate(1);
    }
    for o in &mut out {
        o["metadata"]["labels"][RUN_LABEL] = json!(run);
        if o["kind"] == "Service" {
            if let Some(spec) = o["spec"].as_object_mut() {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
        } else {
            o["metadata"]["labels"][MANAGED_BY] = json!("palisade-e2e");
        }
    }
    out
}

/// A Service's allocated addresses (`kubectl get service -o json`).
pub fn cluster_ips(service: &Value) -> Vec<IpAddr> {
    service["spec"]["clusterIPs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str()?.parse().ok())
        .collect()
}

/// The first address of each family.
pub fn by_family(ips: &[IpAddr]) -> (Option<std::net::Ipv4Addr>, Option<std::net::Ipv6Addr>) {
    let v4 = ips.iter().find_map(|ip| match ip {
        IpAddr::V4(a) => Some(*a),
        IpAddr::V6(_) => None,
    });
    let v6 = ips.iter().find_map(|ip| match ip {
        IpAddr::V6(a) => Some(*a),
        IpAddr::V4(_) => None,
    });
    (v4, v6)
}

/// The ready addresses of one family in a Service's EndpointSlices
/// (`kubectl get endpointslices -l kubernetes.io/service-name=... -o json`).
pub fn ready_addresses(slices: &Value, v6: bool) -> std::collections::BTreeSet<IpAddr> {
    let family = if v6 { "IPv6" } else { "IPv4" };
    slices["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["addressType"] == family)
        .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
        .filter(|e| e["conditions"]["ready"] != json!(false))
        .flat_map(|e| e["addresses"].as_array().into_iter().flatten())
        .filter_map(|a| a.as_str()?.parse().ok())
        .collect()
}

/// The source `node` of a scenario: a hostNetwork pod on one node, so its
/// probes leave from the node's own addresses.
pub fn node_prober(node: &str, run: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": prober_name(node), "namespace": PROBER_NAMESPACE,
                     "labels": {RUN_LABEL: run}},
        "spec": {"nodeName": node, "hostNetwork": true, "terminationGracePeriodSeconds": 0,
                 "tolerations": [{"operator": "Exists"}],
                 "containers": [{"name": "probe", "image": AGNHOST, "args": ["pause"]}]},
    })
}

pub fn prober_name(node: &str) -> String {
    format!("node-{node}")
}

/// agnhost's connect: exit 0 when a TCP connection is accepted, a UDP
/// datagram answered, or an SCTP association set up, within the timeout.
/// SCTP uses the kernel's stack in the pods, so the kind nodes' kernel must
/// have SCTP (`modprobe sctp` on the host running kind).
pub fn probe_command(to: IpAddr, port: u16, proto: Proto, timeout: Duration) -> Vec<String> {
    let proto = proto.lower();
    vec![
        "/agnhost".into(),
        "connect".into(),
        std::net::SocketAddr::new(to, port).to_string(),
        format!("--timeout={}ms", timeout.as_millis()),
        format!("--protocol={proto}"),
    ]
}

/// `kubectl label --overwrite` arguments that turn `current` into `wanted`
/// (a relabel replaces the labels), leaving the `keep` keys alone.
pub fn label_args(current: &Labels, wanted: &Labels, keep: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = current
        .keys()
        .filter(|k| !wanted.contains_key(*k) && !keep.contains(&k.as_str()))
        .map(|k| format!("{k}-"))
        .collect();
    args.extend(
        wanted
            .iter()
            .filter(|(k, _)| !keep.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}={v}")),
    );
    args
}

/// The agent's config file: the deployed one with the scenario's settings
/// replacing its top-level keys.
pub fn agent_config(base: &str, overrides: Option<&serde_yaml::Mapping>) -> anyhow::Result<String> {
    let mut config: serde_yaml::Mapping = serde_yaml::from_str(base)?;
    for (k, v) in overrides.into_iter().flatten() {
        config.insert(k.clone(), v.clone());
    }
    Ok(serde_yaml::to_string(&config)?)
}

/// A pod as the cluster placed it.
#[derive(Clone, Debug)]
pub struct Placed {
    pub ips: Vec<IpAddr>,
    pub node: String,
    pub ports: Vec<PortSpec>,
}

impl Placed {
    pub fn addr(&self, v6: bool) -> Option<IpAddr> {
        self.ips.iter().copied().find(|ip| ip.is_ipv6() == v6)
    }
}

/// The (source, destination) pairs a check probes: every destination pod
/// that listens on the port, from every other pod with an address of the
/// family and from `node` (the destination's own node). Externals are not
/// in a cluster; the local harness probes them.
pub fn pairs(
    pods: &BTreeMap<Name, Placed>,
    port: u16,
    protocol: &str,
    v6: bool,
) -> Vec<(Name, Name)> {
    let mut out = Vec::new();
    for (d, dst) in pods {
        let listens = dst
            .ports
            .iter()
            .any(|p| p.port == port && p.protocol == protocol);
        if !listens || dst.addr(v6).is_none() {
            continue;
        }
        for (s, src) in pods {
            if s != d && src.addr(v6).is_some() {
                out.push((s.clone(), d.clone()));
            }
        }
        out.push(("node".into(), d.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use palisade_agent::index::unknown_fields;

    use super::*;

    fn strict<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) {
        let t: T = serde_json::from_value(v.clone()).expect("valid object");
        let unknown = unknown_fields(v, &serde_json::to_value(&t).expect("serialize"));
        assert!(unknown.is_empty(), "unknown fields {unknown:?}");
    }

    fn spec(ports: Option<Vec<PortSpec>>) -> PodSpec {
        PodSpec {
            name: "a".into(),
            namespace: "x".into(),
            labels: Labels::new(),
            ports,
            host_network: false,
            node: None,
        }
    }

    #[test]
    fn objects_are_valid_api_objects() {
        let labels = Labels::from([("pod".to_string(), "a".to_string())]);
        let named = vec![
            PortSpec {
                port: 53,
                protocol: "UDP".into(),
                name: Some("dns".into()),
            },
            PortSpec {
                port: 80,
                protocol: "TCP".into(),
                name: None,
            },
        ];
        let p = pod(&spec(Some(named)), &labels, "r1", Some("kind-worker"));
        strict::<Pod>(&p);
        assert_eq!(p["metadata"]["labels"][RUN_LABEL], "r1");
        assert_eq!(p["metadata"]["labels"]["pod"], "a");
        assert_eq!(p["spec"]["containers"][0]["name"], "c-53-udp");
        assert_eq!(p["spec"]["containers"][0]["ports"][0]["name"], "dns");
        assert_eq!(
            p["spec"]["containers"][0]["args"],
            json!(["serve-hostname", "--udp", "--http=false", "--port", "53"])
        );
        let default = pod(&spec(None), &labels, "r1", None);
        strict::<Pod>(&default);
        assert_eq!(
            default["spec"]["containers"].as_array().map(Vec::len),
            Some(default_ports().len()),
            "one container per default port"
        );
        assert_eq!(p["spec"]["nodeName"], "kind-worker");
        assert!(
            default["spec"].get("nodeName").is_none(),
            "the scheduler's choice"
        );
        strict::<Pod>(&node_prober("kind-worker", "r1"));
        strict::<Namespace>(&namespace("x", &labels, "r1"));
    }

    #[test]
    fn probes_name_the_address_family_properly() {
        let t = Duration::from_secs(1);
        assert_eq!(
            probe_command("10.244.1.7".parse().expect("ip"), 80, Proto::Tcp, t),
            [
                "/agnhost",
                "connect",
                "10.244.1.7:80",
                "--timeout=1000ms",
                "--protocol=tcp"
            ]
        );
        assert_eq!(
            probe_command("fd00:10:244::7".parse().expect("ip"), 53, Proto::Udp, t)[2],
            "[fd00:10:244::7]:53"
        );
        assert_eq!(
            probe_command("10.244.1.7".parse().expect("ip"), 80, Proto::Sctp, t)[4],
            "--protocol=sctp"
        );
    }

    #[test]
    fn a_relabel_replaces_labels_but_keeps_the_protected_ones() {
        let l = |kv: &[(&str, &str)]| -> Labels {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let current = l(&[
            ("pod", "b"),
            ("old", "1"),
            (NAMESPACE_NAME_LABEL, "y"),
            (RUN_LABEL, "r1"),
        ]);
        let wanted = l(&[("pod", "b"), ("role", "frontend")]);
        assert_eq!(
            label_args(&current, &wanted, &[NAMESPACE_NAME_LABEL, RUN_LABEL]),
            ["old-", "pod=b", "role=frontend"]
        );
    }

    #[test]
    fn scenario_settings_replace_the_deployed_ones() {
        let base = "defaultDeny: false\nallowDNS: true\nblockMetadata: true\n";
        let overrides: serde_yaml::Mapping =
            serde_yaml::from_str("defaultDeny: true\nblockMetadata: false\n").expect("yaml");
        let merged: serde_yaml::Mapping =
            serde_yaml::from_str(&agent_config(base, Some(&overrides)).expect("merge"))
                .expect("yaml");
        let get = |k: &str| merged.get(k).and_then(serde_yaml::Value::as_bool);
        assert_eq!(
            (get("defaultDeny"), get("allowDNS"), get("blockMetadata")),
            (Some(true), Some(true), Some(false))
        );
        assert_eq!(agent_config(base, None).expect("same"), base);
    }

    #[test]
    fn pairs_cover_listening_pods_and_their_node() {
        let placed = |ip: &str, ports: Vec<PortSpec>| Placed {
            ips: vec![ip.parse().expect("ip")],
            node: "n".into(),
            ports,
        };
        let udp_only = vec![PortSpec {
            port: 53,
            protocol: "UDP".into(),
            name: None,
        }];
        let pods = BTreeMap::from([
            ("x/a".to_string(), placed("10.0.0.1", default_ports())),
            ("x/b".to_string(), placed("10.0.0.2", default_ports())),
            ("x/dns".to_string(), placed("10.0.0.3", udp_only)),
        ]);
        let p = pairs(&pods, 80, "TCP", false);
        assert_eq!(p.len(), 2 * 3, "a and b, each from two pods and node");
        assert!(!p.iter().any(|(s, d)| s == d));
        assert!(!p.iter().any(|(_, d)| d == "x/dns"));
        assert!(
            pairs(&pods, 80, "TCP", true).is_empty(),
            "no IPv6 addresses"
        );
    }

    fn view(name: &str, v4: &str, labels: &[(&str, &str)]) -> PodView {
        PodView {
            key: format!("x/{name}"),
            namespace: "x".into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            node_name: "kind-worker".into(),
            v4: Some(v4.parse().expect("address")),
            v6: None,
            ports: vec![PortSpec {
                port: 80,
                protocol: "TCP".into(),
                name: Some("http".into()),
            }],
        }
    }

    #[test]
    fn services_leave_addresses_to_the_api_server_and_selector_slices_to_the_controller() {
        use k8s_openapi::api::{core::v1::Service as ApiService, discovery::v1::EndpointSlice};
        let pods: BTreeMap<String, PodView> = [
            view("a", "10.244.1.5", &[("app", "web")]),
            view("b", "10.244.2.6", &[]),
        ]
        .into_iter()
        .map(|p| (p.key.clone(), p))
        .collect();
        let mut pool = crate::services::AddressPool::default();
        let spec: crate::scenario::ServiceSpec = serde_yaml::from_str(
            "{name: web, namespace: x, selector: {app: web}, ports: [{port: 8080, targetPort: http}]}",
        )
        .expect("spec");
        let web = Service::from_spec(&spec, &mut pool, crate::scenario::Family::Ipv4);
        let objs = service_objects(&web, &pods, "r1");
        assert_eq!(objs.len(), 1, "the controller makes a selector's slices");
        strict::<ApiService>(&objs[0]);
        assert!(objs[0]["spec"].get("clusterIP").is_none());
        assert!(objs[0]["spec"].get("clusterIPs").is_none());
        assert_eq!(objs[0]["spec"]["selector"]["app"], "web");
        assert_eq!(objs[0]["spec"]["ports"][0]["targetPort"], "http");
        assert_eq!(objs[0]["metadata"]["labels"][RUN_LABEL], "r1");

        let own = Service::for_pod(&pods["x/b"], &mut pool, crate::scenario::Family::Ipv4);
        let objs = service_objects(&own, &pods, "r1");
        assert_eq!(objs.len(), 2, "a selector-less Service and its slice");
        strict::<ApiService>(&objs[0]);
        strict::<EndpointSlice>(&objs[1]);
        assert!(objs[0]["spec"].get("selector").is_none());
        assert_eq!(objs[1]["metadata"]["labels"][MANAGED_BY], "palisade-e2e");
        assert_eq!(
            objs[1]["metadata"]["labels"]["kubernetes.io/service-name"],
            own.name
        );
        assert_eq!(objs[1]["endpoints"][0]["addresses"][0], "10.244.2.6");

        let listed = json!({"spec": {"clusterIPs": ["10.96.40.2", "fd00:10:96::2"]}});
        assert_eq!(
            cluster_ips(&listed),
            vec![
                "10.96.40.2".parse::<IpAddr>().expect("v4"),
                "fd00:10:96::2".parse().expect("v6")
            ]
        );
        let slices = json!({"items": [
            {"addressType": "IPv4", "endpoints": [
                {"addresses": ["10.244.1.5"], "conditions": {"ready": true}},
                {"addresses": ["10.244.1.6"], "conditions": {"ready": false}},
                {"addresses": ["10.244.1.7"]}]},
            {"addressType": "IPv6", "endpoints": [{"addresses": ["fd00::5"]}]}]});
        let ready: Vec<String> = ready_addresses(&slices, false)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            ready,
            ["10.244.1.5", "10.244.1.7"],
            "not-ready ones are no backends"
        );
    }

    #[test]
    fn scenario_nodes_map_onto_workers_first_and_a_cluster_too_small_is_an_error() {
        let list = json!({"items": [
            {"metadata": {"name": "kind-control-plane",
                          "labels": {"node-role.kubernetes.io/control-plane": ""}}},
            {"metadata": {"name": "kind-worker2", "labels": {}}},
            {"metadata": {"name": "kind-worker", "labels": {}}}]});
        let order = node_order(&list);
        assert_eq!(order, ["kind-worker", "kind-worker2", "kind-control-plane"]);
        let mut pinned = spec(None);
        pinned.node = Some("node-1".into());
        let free = spec(None);

        let mut none =
            Placement::new(order.clone(), None, std::slice::from_ref(&free)).expect("placement");
        assert_eq!(
            none.node_for(&free).expect("node"),
            None,
            "the scheduler places"
        );

        let mut two =
            Placement::new(order.clone(), Some(2), std::slice::from_ref(&free)).expect("placement");
        let spread: Vec<Option<String>> =
            (0..3).map(|_| two.node_for(&free).expect("node")).collect();
        assert_eq!(
            spread,
            [
                Some("kind-worker".into()),
                Some("kind-worker2".into()),
                Some("kind-worker".into())
            ]
        );
        let mut named =
            Placement::new(order.clone(), None, std::slice::from_ref(&pinned)).expect("placement");
        assert_eq!(
            named.node_for(&pinned).expect("node"),
            Some("kind-worker2".into())
        );

        let err = Placement::new(order, Some(4), &[]).expect_err("three nodes only");
        assert!(
            err.to_string().contains("needs 4 nodes; the cluster has 3"),
            "{err}"
        );
    }
}
