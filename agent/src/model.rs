//! The cluster as the policy engine sees it: only the fields that matter for
//! enforcement, already validated. Built by the index from API objects.

use std::{borrow::Cow, collections::BTreeMap, fmt, net::IpAddr};

pub mod calico_selector;
pub mod ordered;
pub mod policy;
pub mod selector;

use policy::Policy;

pub type Labels = BTreeMap<String, String>;

/// Serializes a value as its `Display` form (wire enums from `common`,
/// which has no serde).
pub(crate) fn as_display<T: fmt::Display, S: serde::Serializer>(
    v: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// The label every namespace carries with its own name (Kubernetes >= 1.21).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => palisade_common::PROTO_TCP,
            Protocol::Udp => palisade_common::PROTO_UDP,
            Protocol::Sctp => palisade_common::PROTO_SCTP,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            palisade_common::PROTO_TCP => Some(Protocol::Tcp),
            palisade_common::PROTO_UDP => Some(Protocol::Udp),
            palisade_common::PROTO_SCTP => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// Parses the API spelling (`TCP`, `UDP`, `SCTP`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        })
    }
}

/// `namespace/name` of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// Includes [`NAMESPACE_NAME_LABEL`].
    pub labels: Labels,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    /// metadata.uid: how the kubelet names the pod's cgroup.
    pub uid: String,
    pub labels: Labels,
    /// Empty until the pod has an address; such a pod is neither endpoint nor peer.
    pub ips: Vec<IpAddr>,
    pub node: String,
    pub host_network: bool,
    pub ports: Vec<ContainerPort>,
    /// The controller that owns the pod, as people name it (a ReplicaSet's
    /// pods are its Deployment's): what flow observation folds pods into.
    pub workload: Option<Workload>,
}

/// A pod's owning controller: `kind` (Deployment, StatefulSet, DaemonSet,
/// Job, ...) and its name in the pod's namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Workload {
    pub kind: String,
    pub name: String,
}

impl Pod {
    pub fn key(&self) -> ObjectRef {
        ObjectRef::new(&self.namespace, &self.name)
    }

    /// The number a named port stands for on this pod, for one protocol.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.protocol == protocol && p.name.as_deref() == Some(name))
            .map(|p| p.port)
    }
}

/// A Service port as kube-proxy translates it: traffic to a frontend on
/// `port` goes to the backends' slice port of the same name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePort {
    /// Empty for the unnamed port of a single-port Service.
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    /// Kept for completeness; node-port traffic is not judged as the Service's.
    pub node_port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// Addresses kube-proxy translates: cluster IPs, external IPs and
    /// load-balancer ingress IPs, without duplicates (headless: none).
    pub frontends: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
}

impl Service {
    pub fn key(&self) -> ObjectRef {
        ObjectRef::new(&self.namespace, &self.name)
    }
}

/// A port of an EndpointSlice: the backends' number for a Service port name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlicePort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSlice {
    pub namespace: String,
    pub name: String,
    /// The Service it belongs to (label `kubernetes.io/service-name`).
    pub service: Option<String>,
    /// Every endpoint address, whatever its conditions: a superset of the
    /// backends kube-proxy picks (FQDN slices have none).
    pub addresses: Vec<IpAddr>,
    pub ports: Vec<SlicePort>,
}

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// This node: its name (pods are local when `spec.nodeName` equals it), its
/// own addresses (traffic from them to local pods is always allowed), and
/// which host-side interface carries each local pod address (learnt from
/// the node's routes; an address without one is bound to no interface and
/// cannot send).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub interfaces: BTreeMap<IpAddr, u32>,
}

/// Everything the compiler reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Model {
    pub namespaces: BTreeMap<String, Namespace>,
    pub pods: BTreeMap<ObjectRef, Pod>,
    pub policies: BTreeMap<ObjectRef, Policy>,
    /// ClusterNetworkPolicies and Calico policies, each with its tier resolved.
    pub ordered: BTreeMap<ordered::OrderedRef, ordered::OrderedPolicy>,
    pub services: BTreeMap<ObjectRef, Service>,
    pub endpoint_slices: BTreeMap<ObjectRef, EndpointSlice>,
    /// Policies annotated `palisade.dev/mode: audit`: judged, never
    /// enforced (and absent from `policies` and `ordered`).
    pub audited: Audited,
}

/// The annotation that sets a policy's [`Mode`] (`audit` or `enforce`).
pub const MODE_ANNOTATION: &str = "palisade.dev/mode";

/// Whether a policy is enforced, or evaluated only to log what it would deny.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

/// The audited policies, of each kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audited {
    pub policies: BTreeMap<ObjectRef, Policy>,
    pub ordered: BTreeMap<ordered::OrderedRef, ordered::OrderedPolicy>,
}

impl Audited {
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty() && self.ordered.is_empty()
    }
}

/// Puts `value` where its mode says, taking it out of the other map.
pub fn place<K: Ord, V>(
    enforced: &mut BTreeMap<K, V>,
    audited: &mut BTreeMap<K, V>,
    key: K,
    value: V,
    mode: Mode,
) {
    match mode {
        Mode::Enforce => {
            audited.remove(&key);
            enforced.insert(key, value);
        }
        Mode::Audit => {
            enforced.remove(&key);
            audited.insert(key, value);
        }
    }
}

impl Model {
    /// Labels of a namespace; a namespace not (yet) seen has only its name label,
    /// which is what the API server would give it.
    pub fn namespace_labels(&self, name: &str) -> Cow<'_, Labels> {
        match self.namespaces.get(name) {
            Some(ns) => Cow::Borrowed(&ns.labels),
            None => Cow::Owned(Labels::from([(
                NAMESPACE_NAME_LABEL.to_string(),
                name.to_string(),
            )])),
        }
    }
}
