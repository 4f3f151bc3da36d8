//! `palisade advise` (issue 17): from observed (allowed) connections, one
//! NetworkPolicy per workload that allows exactly what was seen. Pure:
//! flows in, [`Advice`] out; [`render`] turns it into
//! `networking.k8s.io/v1` objects and YAML, [`input`] reads the flows.
//!
//! Each policy isolates its workload both ways. A connection is allowed by
//! an egress rule of the client's policy and an ingress rule of the
//! server's, each naming the other side as narrowly as the flows allow: a
//! pod by its workload's stable labels (and its namespace by name), any
//! other address by itself (/32, /128). DNS to the cluster resolver is
//! always allowed, seen or not.

pub mod input;
mod labels;
pub mod render;

#[cfg(test)]
mod check;
#[cfg(test)]
mod property;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    time::SystemTime,
};

use ipnet::IpNet;
pub use labels::{Selection, UNSTABLE_LABELS, stable};

use crate::{
    flows::observed::{ObservedFlow, Peer, PeerKind},
    model::{Labels, Protocol},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Only policies for workloads of this namespace (their peers may be anywhere).
    pub namespace: Option<String>,
    pub name_prefix: String,
    pub name_suffix: String,
    /// Annotate every policy `palisade.dev/mode: audit` (evaluated, not enforced).
    pub audit: bool,
    /// The cluster resolver every policy keeps open on UDP and TCP 53.
    pub dns_namespace: String,
    pub dns_selector: Labels,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            namespace: None,
            name_prefix: String::new(),
            name_suffix: "-least-privilege".into(),
            audit: false,
            dns_namespace: "kube-system".into(),
            dns_selector: Labels::from([("k8s-app".into(), "kube-dns".into())]),
        }
    }
}

/// The owner of a pod, which gets one policy: `Deployment shop/api`, or
/// `Pod shop/debug` for a pod without one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadRef {
    pub namespace: String,
    pub kind: String,
    pub name: String,
}

impl fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// One end of a connection, as policies can tell ends apart.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum End {
    Pod(WorkloadRef),
    Address(PeerKind, IpAddr),
}

fn end(p: &Peer) -> End {
    match (p.kind, &p.namespace) {
        (PeerKind::Pod, Some(ns)) => End::Pod(match &p.workload {
            Some(w) => WorkloadRef {
                namespace: ns.clone(),
                kind: w.kind.clone(),
                name: w.name.clone(),
            },
            None => WorkloadRef {
                namespace: ns.clone(),
                kind: "Pod".into(),
                name: p.pod.clone().unwrap_or_else(|| p.ip.to_string()),
            },
        }),
        // The datapath keys IPv4 as v4-mapped IPv6; the API wants IPv4.
        _ => End::Address(p.kind, p.ip.to_canonical()),
    }
}

/// A port as a rule names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortRef {
    Number(u16),
    /// The server's container port name (every pod seen names it so).
    Named(String),
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port {
    pub protocol: Protocol,
    pub port: PortRef,
}

/// The other side of a rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// Pods of `namespace` (the policy's own: no namespaceSelector).
    Pods {
        namespace: String,
        selection: Selection,
    },
    Block(IpNet),
}

/// Peers allowed on exactly these ports.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    pub peers: Vec<Target>,
    pub ports: Vec<Port>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdvisedPolicy {
    pub workload: WorkloadRef,
    pub name: String,
    pub selection: Selection,
    pub ingress: Vec<Rule>,
    /// Without the DNS rule, which [`render`] adds to every policy.
    pub egress: Vec<Rule>,
    /// What a reader should know (fallbacks, what was left out), one line each.
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advice {
    pub policies: Vec<AdvisedPolicy>,
    /// Notes about the whole set (workloads without a policy, and why).
    pub notes: Vec<String>,
    /// Records read, and the connections they make once each connection's
    /// two records (egress at the client, ingress at the server) are one.
    pub records: usize,
    pub connections: usize,
    /// First seen and last seen over every record.
    pub span: Option<(SystemTime, SystemTime)>,
    pub options: Options,
}

type ConnKey = (String, Option<u16>, End, End);

/// A name for a server's port: kept only while every record agrees.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Naming {
    One(String),
    Mixed,
}

/// Everything the records say, folded.
#[derive(Default)]
struct Seen {
    connections: BTreeSet<ConnKey>,
    pods: BTreeMap<WorkloadRef, labels::PodLabels>,
    addresses: BTreeMap<WorkloadRef, BTreeSet<IpAddr>>,
    names: BTreeMap<(WorkloadRef, Protocol, u16), Naming>,
    span: Option<(SystemTime, SystemTime)>,
}

impl Seen {
    fn new(flows: &[ObservedFlow]) -> Self {
        let mut s = Self::default();
        for f in flows {
            let c = &f.connection;
            let (src, dst) = (end(&c.src), end(&c.dst));
            for (e, p) in [(&src, &c.src), (&dst, &c.dst)] {
                if let End::Pod(w) = e {
                    s.pods.entry(w.clone()).or_default().add(&p.labels);
                    s.addresses
                        .entry(w.clone())
                        .or_default()
                        .insert(p.ip.to_canonical());
                }
            }
            if let (End::Pod(w), Some(proto), Some(port)) =
                (&dst, Protocol::parse(&c.protocol), c.port)
            {
                let named = match &c.named_port {
                    Some(n) => Naming::One(n.clone()),
                    None => Naming::Mixed,
                };
                s.names
                    .entry((w.clone(), proto, port))
                    .and_modify(|have| {
                        if *have != named {
                            *have = Naming::Mixed;
                        }
                    })
                    .or_insert(named);
            }
            s.connections.insert((c.protocol.clone(), c.port, src, dst));
            s.span = Some(match s.span {
                None => (f.first_seen, f.last_seen),
                Some((a, b)) => (a.min(f.first_seen), b.max(f.last_seen)),
            });
        }
        s
    }
}

/// The policies that allow exactly `flows` (see the module doc).
pub fn advise(flows: &[ObservedFlow], options: &Options) -> Advice {
    let seen = Seen::new(flows);
    let ctx = Ctx {
        chosen: labels::choose(&seen.pods),
        seen: &seen,
        options,
    };
    let mut notes = Vec::new();
    let mut subjects = Vec::new();
    for w in seen.pods.keys() {
        if options
            .namespace
            .as_ref()
            .is_some_and(|ns| *ns != w.namespace)
        {
            continue;
        }
        if ctx.is_dns(w) {
            notes.push(format!(
                "{w}: no policy, it is the cluster resolver every pod keeps reaching"
            ));
            continue;
        }
        match &ctx.chosen[w].selection {
            Some(sel) => subjects.push((w, sel)),
            None => notes.push(format!(
                "{w}: no policy, its pods have no label a selector could use"
            )),
        }
    }
    let names = policy_names(&subjects, options);
    let policies = subjects
        .into_iter()
        .zip(names)
        .map(|((w, sel), name)| ctx.policy(w, sel, name))
        .collect();
    Advice {
        policies,
        notes,
        records: flows.len(),
        connections: seen.connections.len(),
        span: seen.span,
        options: options.clone(),
    }
}

/// What one policy is built from.
struct Ctx<'a> {
    seen: &'a Seen,
    chosen: BTreeMap<WorkloadRef, labels::Chosen>,
    options: &'a Options,
}

impl Ctx<'_> {
    /// The cluster resolver's pods, which every policy's DNS rule reaches.
    fn is_dns(&self, w: &WorkloadRef) -> bool {
        w.namespace == self.options.dns_namespace
            && self.seen.pods.get(w).is_some_and(|l| {
                self.options
                    .dns_selector
                    .iter()
                    .all(|(k, v)| l.common.get(k) == Some(v))
            })
    }

    /// How rules name an end: by selector, or by address where no
    /// selector picks only it.
    fn targets(&self, e: &End) -> Vec<Target> {
        match e {
            End::Pod(w) => match &self.chosen[w].selection {
                Some(sel) => vec![Target::Pods {
                    namespace: w.namespace.clone(),
                    selection: sel.clone(),
                }],
                None => self.seen.addresses[w].iter().map(|ip| host(*ip)).collect(),
            },
            End::Address(_, ip) => vec![host(*ip)],
        }
    }

    /// The server's port: by name where every record names it so.
    fn port(&self, dst: &End, protocol: Protocol, number: u16) -> Port {
        let named = match dst {
            End::Pod(d) => self.seen.names.get(&(d.clone(), protocol, number)),
            End::Address(..) => None,
        };
        Port {
            protocol,
            port: match named {
                Some(Naming::One(n)) => PortRef::Named(n.clone()),
                _ => PortRef::Number(number),
            },
        }
    }

    fn policy(&self, w: &WorkloadRef, sel: &Selection, name: String) -> AdvisedPolicy {
        let me = End::Pod(w.clone());
        let mut notes: Vec<String> = self.chosen[w].notes.clone();
        let mut ingress: BTreeMap<Target, BTreeSet<Port>> = BTreeMap::new();
        let mut egress: BTreeMap<Target, BTreeSet<Port>> = BTreeMap::new();
        for (proto, port, src, dst) in &self.seen.connections {
            if *src != me && *dst != me {
                continue;
            }
            let (Some(protocol), Some(number)) = (Protocol::parse(proto), *port) else {
                let n = format!(
                    "left out, NetworkPolicy cannot name it: {proto} {} -> {}",
                    show_end(src),
                    show_end(dst)
                );
                note(&mut notes, n);
                continue;
            };
            let port = self.port(dst, protocol, number);
            if *dst == me {
                if let End::Address(PeerKind::Node, ip) = src {
                    let n = format!(
                        "ingress from node {ip} by ipBlock: the pod's own node (kubelet probes) is always allowed, another node's address is a peer like any"
                    );
                    note(&mut notes, n);
                }
                for t in self.targets(src) {
                    ingress.entry(t).or_default().insert(port.clone());
                }
            }
            // The DNS rule already holds it.
            let to_dns = matches!(dst, End::Pod(d) if self.is_dns(d))
                && matches!(protocol, Protocol::Udp | Protocol::Tcp)
                && number == 53;
            if *src == me && !to_dns {
                for t in self.targets(dst) {
                    egress.entry(t).or_default().insert(port.clone());
                }
            }
        }
        AdvisedPolicy {
            workload: w.clone(),
            name,
            selection: sel.clone(),
            ingress: rules(ingress),
            egress: rules(egress),
            notes,
        }
    }
}

fn note(notes: &mut Vec<String>, n: String) {
    if !notes.contains(&n) {
        notes.push(n);
    }
}

fn host(ip: IpAddr) -> Target {
    Target::Block(IpNet::from(ip))
}

fn show_end(e: &End) -> String {
    match e {
        End::Pod(w) => w.to_string(),
        End::Address(_, ip) => ip.to_string(),
    }
}

/// One rule per set of peers allowed on the same ports: exact, since each
/// peer gets its own ports and nothing more; ordered by peers.
fn rules(per_peer: BTreeMap<Target, BTreeSet<Port>>) -> Vec<Rule> {
    let mut by_ports: BTreeMap<BTreeSet<Port>, Vec<Target>> = BTreeMap::new();
    for (t, ports) in per_peer {
        by_ports.entry(ports).or_default().push(t);
    }
    let mut out: Vec<Rule> = by_ports
        .into_iter()
        .map(|(ports, peers)| Rule {
            peers,
            ports: ports.into_iter().collect(),
        })
        .collect();
    out.sort();
    out
}

/// `<prefix><workload><suffix>`, with the kind added where two workloads
/// of a namespace share a name.
fn policy_names(subjects: &[(&WorkloadRef, &Selection)], o: &Options) -> Vec<String> {
    let mut count: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (w, _) in subjects {
        *count.entry((&w.namespace, &w.name)).or_default() += 1;
    }
    subjects
        .iter()
        .map(|(w, _)| {
            let name = if count[&(w.namespace.as_str(), w.name.as_str())] > 1 {
                format!(
                    "{}{}-{}{}",
                    o.name_prefix,
                    w.name,
                    w.kind.to_lowercase(),
                    o.name_suffix
                )
            } else {
                format!("{}{}{}", o.name_prefix, w.name, o.name_suffix)
            };
            fit(name)
        })
        .collect()
}

/// Object names are at most 253 characters and end alphanumeric.
fn fit(name: String) -> String {
    if name.len() <= 253 {
        return name;
    }
    let cut: String = name.chars().take(253).collect();
    cut.trim_end_matches(['-', '.']).to_string()
}
