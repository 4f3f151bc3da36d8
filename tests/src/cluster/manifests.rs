//! The pure half of the cluster runner: what a scenario becomes on a real
//! cluster (objects, probe commands, label edits, agent settings) and which
//! pairs a check probes. Tested without a cluster; the kubectl half only
//! carries these out.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use serde_json::{Value, json};

use crate::{
    matrix::Name,
    probe::Proto,
    scenario::{Labels, PodSpec, PortSpec, default_ports},
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
pub fn pod(spec: &PodSpec, labels: &Labels, run: &str) -> Value {
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
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": labels},
        "spec": {"hostNetwork": spec.host_network, "terminationGracePeriodSeconds": 0,
                 "containers": containers},
    })
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

/// agnhost's connect: exit 0 when a TCP connection is accepted, or a UDP
/// datagram answered, within the timeout.
pub fn probe_command(to: IpAddr, port: u16, proto: Proto, timeout: Duration) -> Vec<String> {
    let proto = match proto {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
    };
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
        let p = pod(&spec(Some(named)), &labels, "r1");
        strict::<Pod>(&p);
        assert_eq!(p["metadata"]["labels"][RUN_LABEL], "r1");
        assert_eq!(p["metadata"]["labels"]["pod"], "a");
        assert_eq!(p["spec"]["containers"][0]["name"], "c-53-udp");
        assert_eq!(p["spec"]["containers"][0]["ports"][0]["name"], "dns");
        assert_eq!(
            p["spec"]["containers"][0]["args"],
            json!(["serve-hostname", "--udp", "--http=false", "--port", "53"])
        );
        let default = pod(&spec(None), &labels, "r1");
        strict::<Pod>(&default);
        assert_eq!(
            default["spec"]["containers"].as_array().map(Vec::len),
            Some(default_ports().len()),
            "one container per default port"
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
}
