//! Services of the local cluster: their endpoints (what the EndpointSlice
//! controller would compute from pods), the kube-proxy translation they
//! give, and the API objects the agent reads (Service, EndpointSlice).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use serde_json::{Value, json};

use crate::{
    kubeproxy,
    scenario::{Family, Labels, PortSpec, ServicePortSpec, ServiceSpec, TargetPort},
};

/// The offset `--via-service` adds to a pod port to make its Service port,
/// so that a policy compared with the Service port would visibly fail.
const VIA_SERVICE_OFFSET: u16 = 30000;

/// A pod as Services see it.
#[derive(Clone, Debug)]
pub struct PodView {
    /// `NS/NAME`.
    pub key: String,
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub node_name: String,
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
    pub ports: Vec<PortSpec>,
}

/// How a Service finds its backends.
#[derive(Clone, Debug)]
pub enum Backends {
    Selector(Labels),
    /// No selector; the EndpointSlice names these pods (`NS/NAME`), as
    /// `--via-service` does for each pod.
    Pods(Vec<String>),
    /// No selector and no endpoints.
    None,
}

/// A ClusterIP Service with the addresses the harness gave it.
#[derive(Clone, Debug)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    pub backends: Backends,
    /// Named when the Service has several ports (the API requires it).
    pub ports: Vec<ServicePortSpec>,
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

/// One backend of a Service: a pod and the target port of each Service
/// port (`None`: the pod has no container port of that name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub pod: String,
    pub node_name: String,
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
    pub targets: Vec<Option<u16>>,
}

/// Hands out ClusterIPs from 10.96.0.0/16 and fd00:10:96::/112, never twice in a run.
#[derive(Debug)]
pub struct AddressPool {
    next: u16,
}

impl Default for AddressPool {
    fn default() -> Self {
        // .0.1 is the kubernetes Service and .0.10 kube-dns on a real
        // cluster; start above both.
        Self { next: 16 }
    }
}

impl AddressPool {
    pub fn take(&mut self, family: Family) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
        let k = self.next;
        self.next += 1;
        let [hi, lo] = k.to_be_bytes();
        (
            family.v4().then(|| Ipv4Addr::new(10, 96, hi, lo)),
            family
                .v6()
                .then(|| Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, k)),
        )
    }
}

impl Service {
    pub fn from_spec(spec: &ServiceSpec, pool: &mut AddressPool, family: Family) -> Self {
        let (v4, v6) = pool.take(family);
        Self {
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
            backends: spec
                .selector
                .clone()
                .map_or(Backends::None, Backends::Selector),
            ports: named_ports(&spec.ports),
            v4,
            v6,
        }
    }

    /// The Service `--via-service` gives one pod: no selector, one port per
    /// pod port, shifted so the Service port differs from the target port.
    pub fn for_pod(pod: &PodView, pool: &mut AddressPool, family: Family) -> Self {
        let (v4, v6) = pool.take(family);
        let ports = pod
            .ports
            .iter()
            .map(|p| ServicePortSpec {
                name: Some(format!("{}-{}", p.protocol.to_lowercase(), p.port)),
                port: via_service_port(p.port),
                target_port: Some(TargetPort::Number(p.port)),
                protocol: p.protocol.clone(),
            })
            .collect();
        Self {
            namespace: pod.namespace.clone(),
            name: format!("probe-{}", pod.name),
            backends: Backends::Pods(vec![pod.key.clone()]),
            ports,
            v4,
            v6,
        }
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn addr(&self, v6: bool) -> Option<IpAddr> {
        if v6 {
            self.v6.map(IpAddr::V6)
        } else {
            self.v4.map(IpAddr::V4)
        }
    }

    /// The backends among `pods`, in pod name order.
    pub fn endpoints(&self, pods: &BTreeMap<String, PodView>) -> Vec<Endpoint> {
        let chosen: Vec<&PodView> = match &self.backends {
            Backends::Selector(sel) => pods
                .values()
                .filter(|p| {
                    p.namespace == self.namespace
                        && sel.iter().all(|(k, v)| p.labels.get(k) == Some(v))
                })
                .collect(),
            Backends::Pods(keys) => keys.iter().filter_map(|k| pods.get(k)).collect(),
            Backends::None => Vec::new(),
        };
        chosen
            .into_iter()
            .map(|p| Endpoint {
                pod: p.key.clone(),
                node_name: p.node_name.clone(),
                v4: p.v4,
                v6: p.v6,
                targets: self.ports.iter().map(|sp| target_of(sp, p)).collect(),
            })
            .collect()
    }

    /// The backends of Service port `i` (the pods with a target for it),
    /// and the node they all run on when they share one: the source `node`
    /// probes a Service only where every backend is its own.
    pub fn port_backends(
        &self,
        i: usize,
        pods: &BTreeMap<String, PodView>,
    ) -> (Vec<String>, Option<String>) {
        let eps: Vec<Endpoint> = self
            .endpoints(pods)
            .into_iter()
            .filter(|ep| ep.targets[i].is_some())
            .collect();
        let mut nodes: Vec<&str> = eps.iter().map(|ep| ep.node_name.as_str()).collect();
        nodes.sort_unstable();
        nodes.dedup();
        let node = match nodes.as_slice() {
            [one] => Some((*one).to_string()),
            _ => None,
        };
        (eps.into_iter().map(|ep| ep.pod).collect(), node)
    }

    /// What kube-proxy programs for this Service, both families.
    pub fn proxy_ports(&self, pods: &BTreeMap<String, PodView>) -> Vec<kubeproxy::ServicePort> {
        let eps = self.endpoints(pods);
        let mut out = Vec::new();
        for v6 in [false, true] {
            let Some(addr) = self.addr(v6) else { continue };
            for (i, sp) in self.ports.iter().enumerate() {
                let backends = eps
                    .iter()
                    .filter_map(|e| {
                        let ip = if v6 {
                            e.v6.map(IpAddr::V6)
                        } else {
                            e.v4.map(IpAddr::V4)
                        };
                        Some(SocketAddr::new(ip?, e.targets[i]?))
                    })
                    .collect();
                out.push(kubeproxy::ServicePort {
                    service: self.key(),
                    addr,
                    proto: match sp.protocol.as_str() {
                        "UDP" => "udp",
                        "SCTP" => "sctp",
                        _ => "tcp",
                    },
                    port: sp.port,
                    backends,
                });
            }
        }
        out
    }

    /// The Service and its EndpointSlices (one per family, more when
    /// backends resolve a named port differently), as the API holds them.
    pub fn objects(&self, pods: &BTreeMap<String, PodView>) -> Vec<Value> {
        let mut families = Vec::new();
        let mut ips = Vec::new();
        if let Some(a) = self.v4 {
            families.push("IPv4");
            ips.push(a.to_string());
        }
        if let Some(a) = self.v6 {
            families.push("IPv6");
            ips.push(a.to_string());
        }
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| {
                let target = match p.target_port.clone().unwrap_or(TargetPort::Number(p.port)) {
                    TargetPort::Number(n) => json!(n),
                    TargetPort::Name(s) => json!(s),
                };
                json!({"name": p.name.clone().unwrap_or_default(), "port": p.port,
                       "targetPort": target, "protocol": p.protocol})
            })
            .collect();
        let mut spec = json!({
            "type": "ClusterIP",
            "clusterIP": ips.first(),
            "clusterIPs": ips,
            "ipFamilies": families,
            "ipFamilyPolicy": if families.len() > 1 { "RequireDualStack" } else { "SingleStack" },
            "ports": ports,
        });
        if let Backends::Selector(sel) = &self.backends {
            spec["selector"] = json!(sel);
        }
        let mut out = vec![json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec,
        })];
        let eps = self.endpoints(pods);
        for (v6, family) in [(false, "IPv4"), (true, "IPv6")] {
            if self.addr(v6).is_none() {
                continue;
            }
            // Endpoints that resolve every port alike share a slice.
            let mut groups: BTreeMap<Vec<Option<u16>>, Vec<&Endpoint>> = BTreeMap::new();
            for e in &eps {
                if (v6 && e.v6.is_some()) || (!v6 && e.v4.is_some()) {
                    groups.entry(e.targets.clone()).or_default().push(e);
                }
            }
            for (k, (targets, members)) in groups.into_iter().enumerate() {
                let suffix = if k == 0 {
                    String::new()
                } else {
                    format!("-{k}")
                };
                out.push(self.slice(family, v6, &suffix, &targets, &members));
            }
        }
        out
    }

    fn slice(
        &self,
        family: &str,
        v6: bool,
        suffix: &str,
        targets: &[Option<u16>],
        members: &[&Endpoint],
    ) -> Value {
        let endpoints: Vec<Value> = members
            .iter()
            .filter_map(|e| {
                let (ns, name) = e.pod.split_once('/')?;
                let addr = if v6 {
                    e.v6?.to_string()
                } else {
                    e.v4?.to_string()
                };
                Some(json!({
                    "addresses": [addr],
                    "conditions": {"ready": true},
                    "targetRef": {"kind": "Pod", "namespace": ns, "name": name},
                    "nodeName": e.node_name,
                }))
            })
            .collect();
        let ports: Vec<Value> = self
            .ports
            .iter()
            .zip(targets)
            .filter_map(|(p, t)| {
                Some(json!({"name": p.name.clone().unwrap_or_default(), "port": (*t)?, "protocol": p.protocol}))
            })
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{}-{}{suffix}", self.name, family.to_lowercase()),
                "namespace": self.namespace,
                "labels": {"kubernetes.io/service-name": self.name},
            },
            "addressType": family,
            "endpoints": endpoints,
            "ports": ports,
        })
    }
}

/// The Service port `--via-service` gives a pod port.
pub fn via_service_port(port: u16) -> u16 {
    let p = port.wrapping_add(VIA_SERVICE_OFFSET);
    // 35536 wraps to 0, which is no port.
    if p == 0 { VIA_SERVICE_OFFSET } else { p }
}

/// The ports with names where the API wants them (several ports).
fn named_ports(ports: &[ServicePortSpec]) -> Vec<ServicePortSpec> {
    let several = ports.len() > 1;
    ports
        .iter()
        .map(|p| {
            let mut p = p.clone();
            if p.name.is_none() && several {
                p.name = Some(format!("{}-{}", p.protocol.to_lowercase(), p.port));
            }
            p
        })
        .collect()
}

/// A Service port's target on one pod: the number, or the pod's container
/// port of that name and protocol.
fn target_of(sp: &ServicePortSpec, pod: &PodView) -> Option<u16> {
    match sp
        .target_port
        .clone()
        .unwrap_or(TargetPort::Number(sp.port))
    {
        TargetPort::Number(n) => Some(n),
        TargetPort::Name(name) => pod
            .ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()) && p.protocol == sp.protocol)
            .map(|p| p.port),
    }
}

#[cfg(test)]
mod tests {
    use palisade_agent::index::unknown_fields;

    use super::*;

    fn pod(ns: &str, name: &str, labels: &[(&str, &str)], ports: Vec<PortSpec>, i: u8) -> PodView {
        PodView {
            key: format!("{ns}/{name}"),
            namespace: ns.into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            node_name: format!("node-{}", i % 2),
            v4: Some(Ipv4Addr::new(10, 244, 1, 10 + i)),
            v6: Some(Ipv6Addr::new(
                0xfd00,
                0x10,
                0x244,
                1,
                0,
                0,
                0,
                10 + i as u16,
            )),
            ports,
        }
    }

    fn port(port: u16, protocol: &str, name: Option<&str>) -> PortSpec {
        PortSpec {
            port,
            protocol: protocol.into(),
            name: name.map(str::to_string),
        }
    }

    fn pods() -> BTreeMap<String, PodView> {
        [
            pod(
                "kube-system",
                "dns-a",
                &[("k8s-app", "kube-dns")],
                vec![port(53, "UDP", Some("dns"))],
                0,
            ),
            pod(
                "kube-system",
                "dns-b",
                &[("k8s-app", "kube-dns")],
                vec![port(5353, "UDP", Some("dns"))],
                1,
            ),
            pod(
                "kube-system",
                "other",
                &[("k8s-app", "other")],
                vec![port(53, "UDP", Some("dns"))],
                2,
            ),
            pod(
                "app",
                "web",
                &[("k8s-app", "kube-dns")],
                vec![port(53, "UDP", Some("dns"))],
                3,
            ),
        ]
        .into_iter()
        .map(|p| (p.key.clone(), p))
        .collect()
    }

    fn dns() -> Service {
        let spec = ServiceSpec {
            name: "kube-dns".into(),
            namespace: "kube-system".into(),
            selector: Some(Labels::from([("k8s-app".into(), "kube-dns".into())])),
            ports: vec![ServicePortSpec {
                name: None,
                port: 53,
                target_port: Some(TargetPort::Name("dns".into())),
                protocol: "UDP".into(),
            }],
        };
        Service::from_spec(&spec, &mut AddressPool::default(), Family::Dual)
    }

    #[test]
    fn a_selector_picks_pods_of_its_namespace_and_named_ports_resolve_per_pod() {
        let eps = dns().endpoints(&pods());
        let got: Vec<(&str, Option<u16>)> =
            eps.iter().map(|e| (e.pod.as_str(), e.targets[0])).collect();
        assert_eq!(
            got,
            [
                ("kube-system/dns-a", Some(53)),
                ("kube-system/dns-b", Some(5353))
            ]
        );
        let proxy = dns().proxy_ports(&pods());
        assert_eq!(proxy.len(), 2);
        assert_eq!(proxy[0].addr, "10.96.0.16".parse::<IpAddr>().expect("addr"));
        assert_eq!(
            proxy[0].backends,
            [
                "10.244.1.10:53".parse().expect("a"),
                "10.244.1.11:5353".parse().expect("a")
            ]
        );
        assert_eq!(
            proxy[1].backends[1],
            "[fd00:10:244:1::b]:5353".parse().expect("a")
        );
    }

    #[test]
    fn objects_are_valid_api_objects_with_a_slice_per_family_and_port_set() {
        let objs = dns().objects(&pods());
        let kinds: Vec<String> = objs
            .iter()
            .map(|o| {
                format!(
                    "{} {}",
                    o["kind"].as_str().unwrap_or_default(),
                    o["metadata"]["name"].as_str().unwrap_or_default()
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "Service kube-dns",
                "EndpointSlice kube-dns-ipv4",
                "EndpointSlice kube-dns-ipv4-1",
                "EndpointSlice kube-dns-ipv6",
                "EndpointSlice kube-dns-ipv6-1",
            ]
        );
        assert_eq!(
            objs[0]["spec"]["clusterIPs"],
            json!(["10.96.0.16", "fd00:10:96::10"])
        );
        assert_eq!(objs[0]["spec"]["ports"][0]["targetPort"], "dns");
        assert_eq!(objs[1]["ports"][0]["port"], 53);
        assert_eq!(objs[1]["endpoints"][0]["targetRef"]["name"], "dns-a");
        assert_eq!(objs[2]["ports"][0]["port"], 5353);
        assert_eq!(objs[3]["endpoints"][0]["addresses"][0], "fd00:10:244:1::a");
        let svc: k8s_openapi::api::core::v1::Service =
            serde_json::from_value(objs[0].clone()).expect("a Service");
        let unknown = unknown_fields(&objs[0], &serde_json::to_value(&svc).expect("json"));
        assert!(unknown.is_empty(), "unknown fields {unknown:?}");
        for o in &objs[1..] {
            let s: k8s_openapi::api::discovery::v1::EndpointSlice =
                serde_json::from_value(o.clone()).expect("an EndpointSlice");
            let unknown = unknown_fields(o, &serde_json::to_value(&s).expect("json"));
            assert!(unknown.is_empty(), "unknown fields {unknown:?}");
        }
    }

    #[test]
    fn a_pods_own_service_sends_to_it_on_shifted_ports() {
        let pods = pods();
        let web = &pods["app/web"];
        let s = Service::for_pod(web, &mut AddressPool::default(), Family::Ipv4);
        assert_eq!(s.name, "probe-web");
        let proxy = s.proxy_ports(&pods);
        assert_eq!(proxy.len(), 1);
        assert_eq!((proxy[0].proto, proxy[0].port), ("udp", 30053));
        assert_eq!(proxy[0].backends, ["10.244.1.13:53".parse().expect("a")]);
        assert!(s.objects(&pods)[0]["spec"].get("selector").is_none());
        assert_eq!(via_service_port(35536), 30000);
    }
}
