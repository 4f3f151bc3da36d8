//! The ordered evaluation core: one function that decides a connection for
//! one side (a pod's ingress or egress) over every policy layer —
//! ClusterNetworkPolicy Admin, Calico tiers with NetworkPolicy v1 in the
//! `default` tier at order 1000, ClusterNetworkPolicy Baseline — in the
//! order [`crate::model::ordered`] describes.
//!
//! The compiler resolves precedence here, in user space: for a pod that an
//! ordered policy selects, it asks [`Layers::decide`] once per (peer
//! identity, protocol, port interval) and writes only the allowed part as
//! policy entries, so the kernel keeps its allow-only lookups. The peer is
//! anything that can answer [`PeerView`]: an identity for the compiler, an
//! address and pod for the reference tests and `explain`.

use std::{collections::BTreeSet, fmt};

use ipnet::IpNet;

use crate::model::{
    Labels, Model, Pod, Protocol,
    ordered::{
        Action, NETWORK_POLICY_ORDER, Namespaces, Order, OrderedOrigin, OrderedPolicy, OrderedRule,
        PeerMatch, PolicyOrder, TierKey, default_tier,
    },
    policy::{NamespaceScope, Peer, Policy, PolicyOrigin, PortRef, PortSpec, Rule, in_block},
};

use super::state::Direction;

/// What the evaluation needs to know of the other side of a connection.
pub trait PeerView {
    /// Namespace and labels, when the peer is a pod (not hostNetwork).
    fn pod(&self) -> Option<(&str, &Labels)>;
    /// Whether the peer's address lies in `net`.
    fn in_net(&self, net: &IpNet) -> bool;
    /// The number a named container port of the peer stands for.
    fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16>;
    /// The peer is under the metadata block: only an allow rule naming it
    /// by a net opens it (no rule for any peer, and not the default).
    fn blocked(&self) -> bool {
        false
    }
}

/// One policy of a tier: an ordered policy, or a NetworkPolicy (or a
/// profile policy) in the `default` tier.
#[derive(Clone, Copy, Debug)]
enum Member<'a> {
    Ordered(&'a OrderedPolicy),
    Network(&'a Policy),
}

#[derive(Debug)]
struct Layer<'a> {
    key: TierKey,
    end_of_tier_deny: bool,
    /// In evaluation order.
    members: Vec<(PolicyOrder, Member<'a>)>,
}

/// Who decided a connection.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DecidedBy {
    /// A rule: its policy and index in the direction's rule list.
    Rule {
        origin: PolicyOrigin,
        index: usize,
        action: Action,
    },
    /// A tier selected the pod and no rule decided: `end-of-tier`.
    EndOfTier { tier: String },
    /// No tier selected the pod (or every one passed).
    Default,
}

impl fmt::Display for DecidedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecidedBy::Rule { origin, index, .. } => write!(f, "{origin} rule {index}"),
            DecidedBy::EndOfTier { tier } => write!(f, "end-of-tier {tier}"),
            DecidedBy::Default => f.write_str("default"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    pub by: DecidedBy,
    /// `Log` rules that matched on the way.
    pub logged: Vec<PolicyOrigin>,
}

/// Every policy layer that can apply on this node, sorted once per compile.
#[derive(Debug, Default)]
pub struct Layers<'a> {
    layers: Vec<Layer<'a>>,
    /// Whether any ordered policy exists: without one, nothing here is
    /// needed and NetworkPolicy keeps its direct compilation.
    any_ordered: bool,
}

impl<'a> Layers<'a> {
    /// `network` are the NetworkPolicies (and profile policies) in force.
    pub fn new(model: &'a Model, network: impl IntoIterator<Item = &'a Policy>) -> Self {
        Self::from_parts(model.ordered.values(), network)
    }

    /// Every policy, the audited ones too: what would be enforced without
    /// their `palisade.dev/mode: audit` annotation. `network` are the
    /// NetworkPolicies (audited ones included) and profile policies.
    pub fn with_audited(model: &'a Model, network: impl IntoIterator<Item = &'a Policy>) -> Self {
        Self::from_parts(
            model.ordered.values().chain(model.audited.ordered.values()),
            network,
        )
    }

    /// Layers of exactly these policies.
    pub fn from_parts(
        ordered: impl IntoIterator<Item = &'a OrderedPolicy>,
        network: impl IntoIterator<Item = &'a Policy>,
    ) -> Self {
        let mut layers: Vec<Layer<'a>> = Vec::new();
        let mut push =
            |key: TierKey, end_of_tier_deny: bool, order: PolicyOrder, m: Member<'a>| match layers
                .iter_mut()
                .find(|l| l.key == key)
            {
                Some(l) => l.members.push((order, m)),
                None => layers.push(Layer {
                    key,
                    end_of_tier_deny,
                    members: vec![(order, m)],
                }),
            };
        let mut any_ordered = false;
        for p in ordered {
            any_ordered = true;
            push(
                p.tier.key.clone(),
                p.tier.end_of_tier_deny,
                p.order.clone(),
                Member::Ordered(p),
            );
        }
        for p in network {
            push(
                default_tier(),
                true,
                PolicyOrder {
                    order: Some(Order(NETWORK_POLICY_ORDER)),
                    name: p.origin.to_string(),
                },
                Member::Network(p),
            );
        }
        layers.sort_by(|a, b| a.key.cmp(&b.key));
        for l in &mut layers {
            l.members.sort_by(|a, b| a.0.cmp(&b.0));
        }
        Self {
            layers,
            any_ordered,
        }
    }

    /// Whether an ordered policy selects `pod` in `dir`: only then does
    /// the pod need [`Layers::decide`].
    pub fn ordered_selects(&self, model: &Model, pod: &Pod, dir: Direction) -> bool {
        self.any_ordered
            && self.layers.iter().any(|l| {
                l.members.iter().any(|(_, m)| {
                    matches!(m, Member::Ordered(_)) && member_rules(model, *m, pod, dir).is_some()
                })
            })
    }

    /// Whether any policy here selects `pod` in `dir`.
    pub fn any_selects(&self, model: &Model, pod: &Pod, dir: Direction) -> bool {
        self.layers
            .iter()
            .flat_map(|l| &l.members)
            .any(|(_, m)| member_rules(model, *m, pod, dir).is_some())
    }

    /// The policies that select `pod` in `dir`, in evaluation order.
    pub fn selecting(&self, model: &Model, pod: &Pod, dir: Direction) -> Vec<PolicyOrigin> {
        self.layers
            .iter()
            .flat_map(|l| &l.members)
            .filter(|(_, m)| member_rules(model, *m, pod, dir).is_some())
            .map(|(_, m)| origin(*m))
            .collect()
    }

    /// The policies that apply to `pod` in `dir`, tier by tier: what every
    /// decision for that side reads (selection is judged once here).
    pub fn select(&self, model: &Model, pod: &Pod, dir: Direction) -> Selected<'a> {
        let tiers = self
            .layers
            .iter()
            .filter_map(|l| {
                let members: Vec<(PolicyOrigin, RuleList<'a>)> = l
                    .members
                    .iter()
                    .filter_map(|(_, m)| member_rules(model, *m, pod, dir).map(|r| (origin(*m), r)))
                    .collect();
                (!members.is_empty()).then(|| SelectedTier {
                    name: l.key.name.clone(),
                    end_of_tier_deny: l.end_of_tier_deny,
                    members,
                })
            })
            .collect();
        Selected { tiers }
    }

    /// Decides a connection on `pod`'s side `dir` with `peer` on the other
    /// side, for IP protocol `proto` and the server's `port` (`None` for
    /// protocols without ports).
    pub fn decide(
        &self,
        model: &Model,
        pod: &Pod,
        dir: Direction,
        peer: &dyn PeerView,
        proto: u8,
        port: Option<u16>,
    ) -> Decision {
        self.select(model, pod, dir)
            .decide(model, pod, dir, peer, proto, port)
    }
}

/// The policies that apply to one side of one pod, tier by tier.
#[derive(Debug)]
pub struct Selected<'a> {
    tiers: Vec<SelectedTier<'a>>,
}

#[derive(Debug)]
struct SelectedTier<'a> {
    name: String,
    end_of_tier_deny: bool,
    members: Vec<(PolicyOrigin, RuleList<'a>)>,
}

impl Selected<'_> {
    /// Decides a connection; see [`Layers::decide`].
    pub fn decide(
        &self,
        model: &Model,
        pod: &Pod,
        dir: Direction,
        peer: &dyn PeerView,
        proto: u8,
        port: Option<u16>,
    ) -> Decision {
        let mut logged = Vec::new();
        let conn = Conn {
            model,
            pod,
            dir,
            peer,
            proto,
            port,
        };
        'tiers: for tier in &self.tiers {
            for (origin, rules) in &tier.members {
                for (index, action) in rules.matching(&conn) {
                    let by = || DecidedBy::Rule {
                        origin: origin.clone(),
                        index,
                        action,
                    };
                    match action {
                        Action::Allow => {
                            return Decision {
                                allow: true,
                                by: by(),
                                logged,
                            };
                        }
                        Action::Deny => {
                            return Decision {
                                allow: false,
                                by: by(),
                                logged,
                            };
                        }
                        Action::Pass => continue 'tiers,
                        Action::Log => logged.push(origin.clone()),
                    }
                }
            }
            if tier.end_of_tier_deny {
                return Decision {
                    allow: false,
                    by: DecidedBy::EndOfTier {
                        tier: tier.name.clone(),
                    },
                    logged,
                };
            }
        }
        Decision {
            allow: !peer.blocked(),
            by: DecidedBy::Default,
            logged,
        }
    }

    /// What of `peer` the rules can tell apart: which peer conditions it
    /// meets, the numbers its named ports resolve to (egress), and whether
    /// the metadata block holds it. Peers with equal classes are decided
    /// alike on every protocol and port, so the compiler decides one of
    /// each class.
    pub fn class(
        &self,
        model: &Model,
        pod: &Pod,
        dir: Direction,
        peer: &dyn PeerView,
    ) -> PeerClass {
        let conn = Conn {
            model,
            pod,
            dir,
            peer,
            proto: 0,
            port: None,
        };
        let mut class = PeerClass {
            blocked: peer.blocked(),
            ..PeerClass::default()
        };
        let mut named = |spec: &PortSpec| {
            if let (Direction::Egress, Some(PortRef::Named(n))) = (dir, &spec.port) {
                class.ports.push(peer.named_port(n, spec.protocol));
            }
        };
        for tier in &self.tiers {
            for (_, rules) in &tier.members {
                match rules {
                    RuleList::Ordered(rules) => {
                        for r in *rules {
                            for m in r.peers.iter().flatten() {
                                class.matches.push(conn.peer_matches(m));
                            }
                            r.ports
                                .iter()
                                .flatten()
                                .chain(&r.not_ports)
                                .for_each(&mut named);
                        }
                    }
                    RuleList::Network(policy, rules) => {
                        for r in *rules {
                            for p in &r.peers {
                                class.matches.push(conn.network_peer_matches(policy, p));
                            }
                            r.ports.iter().for_each(&mut named);
                        }
                    }
                }
            }
        }
        class
    }

    /// Port ranges (per protocol) whose ends split the port space of the
    /// rules that can apply to `pod` in `dir`, named ports resolved on the
    /// local pod and on `peer`; and the other protocol numbers rules name.
    pub fn breakpoints(&self, pod: &Pod, dir: Direction, peer: &dyn PeerView) -> Breakpoints {
        let mut b = Breakpoints::default();
        let mut add = |spec: &PortSpec| {
            let server_port = |name: &str| match dir {
                Direction::Ingress => pod.named_port(name, spec.protocol),
                Direction::Egress => peer.named_port(name, spec.protocol),
            };
            let range = match &spec.port {
                None => None,
                Some(PortRef::Range { start, end }) => Some((*start, *end)),
                Some(PortRef::Named(n)) => server_port(n).map(|p| (p, p)),
            };
            if let Some((s, e)) = range {
                let set = b.ports.entry(spec.protocol).or_default();
                set.insert(u32::from(s));
                set.insert(u32::from(e) + 1);
            }
        };
        for tier in &self.tiers {
            for (_, rules) in &tier.members {
                match rules {
                    RuleList::Ordered(rules) => {
                        for r in *rules {
                            for spec in r.ports.iter().flatten().chain(&r.not_ports) {
                                add(spec);
                            }
                            b.protocols.extend(r.protocol.map(|p| p.0));
                            b.protocols.extend(r.not_protocol.map(|p| p.0));
                        }
                    }
                    RuleList::Network(_, rules) => {
                        for spec in rules.iter().flat_map(|r| &r.ports) {
                            add(spec);
                        }
                    }
                }
            }
        }
        b
    }
}

/// What the rules can tell apart of a peer ([`Selected::class`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerClass {
    matches: Vec<bool>,
    ports: Vec<Option<u16>>,
    blocked: bool,
}

/// Where the port space splits, for [`Selected::breakpoints`].
#[derive(Debug, Default)]
pub struct Breakpoints {
    /// Per protocol: the first port of each interval (plus 65536).
    pub ports: std::collections::BTreeMap<Protocol, BTreeSet<u32>>,
    /// Protocol numbers that rules name (`protocol`, `notProtocol`).
    pub protocols: BTreeSet<u8>,
}

impl Breakpoints {
    /// The inclusive port intervals of `protocol` between breakpoints,
    /// covering 0-65535.
    pub fn intervals(&self, protocol: Protocol) -> Vec<(u16, u16)> {
        let mut cuts: BTreeSet<u32> = BTreeSet::from([0, 1 << 16]);
        if let Some(set) = self.ports.get(&protocol) {
            cuts.extend(set.iter().copied().filter(|c| *c <= 1 << 16));
        }
        let cuts: Vec<u32> = cuts.into_iter().collect();
        cuts.windows(2)
            .map(|w| (w[0] as u16, (w[1] - 1) as u16))
            .collect()
    }

    /// Protocols without ports to try: every one a rule names, and one no
    /// rule names (standing for all the others).
    pub fn portless_protocols(&self) -> Vec<u8> {
        let with_ports = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp].map(Protocol::number);
        let mut out: Vec<u8> = self
            .protocols
            .iter()
            .copied()
            .filter(|p| !with_ports.contains(p))
            .collect();
        if let Some(other) =
            (1..=u8::MAX).find(|p| !with_ports.contains(p) && !self.protocols.contains(p))
        {
            out.push(other);
        }
        out
    }
}

/// The policy's own pod, as rules' `local` conditions see it.
struct LocalPod<'a>(&'a Pod);

impl PeerView for LocalPod<'_> {
    fn pod(&self) -> Option<(&str, &Labels)> {
        Some((self.0.namespace.as_str(), &self.0.labels))
    }

    fn in_net(&self, net: &IpNet) -> bool {
        self.0.ips.iter().any(|ip| in_block(*ip, net, &[]))
    }

    fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.0.named_port(name, protocol)
    }
}

/// The connection being decided.
#[derive(Clone, Copy)]
struct Conn<'a> {
    model: &'a Model,
    pod: &'a Pod,
    dir: Direction,
    peer: &'a dyn PeerView,
    proto: u8,
    port: Option<u16>,
}

impl Conn<'_> {
    /// The server's number for a named port: the local pod's on ingress,
    /// the peer's on egress.
    fn named(&self, name: &str, protocol: Protocol) -> Option<u16> {
        match self.dir {
            Direction::Ingress => self.pod.named_port(name, protocol),
            Direction::Egress => self.peer.named_port(name, protocol),
        }
    }

    fn port_matches(&self, spec: &PortSpec) -> bool {
        if spec.protocol.number() != self.proto {
            return false;
        }
        let Some(port) = self.port else {
            return spec.port.is_none();
        };
        match &spec.port {
            None => true,
            Some(PortRef::Range { start, end }) => (*start..=*end).contains(&port),
            Some(PortRef::Named(n)) => self.named(n, spec.protocol) == Some(port),
        }
    }

    fn namespaces_match(&self, ns: &Namespaces, peer_ns: &str) -> bool {
        ns.matches(peer_ns, &self.model.namespace_labels(peer_ns))
    }

    /// A rule's condition on the policy's own pod. Its nets hold when one
    /// of the pod's addresses lies in them: the pod is one endpoint for
    /// both of its families.
    fn local_matches(&self, m: &PeerMatch) -> bool {
        let local = LocalPod(self.pod);
        Conn {
            peer: &local,
            ..*self
        }
        .peer_matches(m)
    }

    fn peer_matches(&self, m: &PeerMatch) -> bool {
        let pod = self.peer.pod();
        if let Some(ns) = &m.namespaces {
            match pod {
                Some((peer_ns, _)) if self.namespaces_match(ns, peer_ns) => {}
                _ => return false,
            }
        }
        if let Some(sel) = &m.pods {
            match pod {
                Some((_, labels)) if sel.matches(labels) => {}
                _ => return false,
            }
        }
        if let Some(sel) = &m.not_pods
            && pod.is_some_and(|(_, labels)| sel.matches(labels))
        {
            return false;
        }
        if let Some(nets) = &m.nets
            && !nets.iter().any(|n| self.peer.in_net(n))
        {
            return false;
        }
        !m.not_nets.iter().any(|n| self.peer.in_net(n))
    }

    fn ordered_rule_matches(&self, r: &OrderedRule) -> bool {
        r.local.as_ref().is_none_or(|m| self.local_matches(m))
            && r.protocol.is_none_or(|p| p.0 == self.proto)
            && r.not_protocol.is_none_or(|p| p.0 != self.proto)
            && r.ports
                .as_ref()
                .is_none_or(|ports| ports.iter().any(|s| self.port_matches(s)))
            && !r.not_ports.iter().any(|s| self.port_matches(s))
            && match &r.peers {
                None => !self.peer.blocked(),
                Some(peers) => peers
                    .iter()
                    .any(|m| (m.nets.is_some() || !self.peer.blocked()) && self.peer_matches(m)),
            }
    }

    fn network_peer_matches(&self, policy: &Policy, peer: &Peer) -> bool {
        match peer {
            Peer::IpBlock { cidr, except } => {
                self.peer.in_net(cidr) && !except.iter().any(|e| self.peer.in_net(e))
            }
            Peer::Pods { namespaces, pods } => {
                let Some((peer_ns, labels)) = self.peer.pod() else {
                    return false;
                };
                let ns_ok = match namespaces {
                    NamespaceScope::Own(ns) => ns == peer_ns && *ns == policy.namespace,
                    NamespaceScope::Selected(sel) => {
                        sel.matches(&self.model.namespace_labels(peer_ns))
                    }
                };
                ns_ok && pods.matches(labels)
            }
        }
    }

    fn network_rule_matches(&self, policy: &Policy, r: &Rule) -> bool {
        let any_peer = r.peers.is_empty() && !self.peer.blocked();
        (any_peer || r.peers.iter().any(|p| self.network_peer_matches(policy, p)))
            && (r.ports.is_empty() || r.ports.iter().any(|s| self.port_matches(s)))
    }
}

/// A member's rules for one direction, when it selects the pod there.
#[derive(Debug)]
enum RuleList<'a> {
    Ordered(&'a [OrderedRule]),
    /// NetworkPolicy rules only allow.
    Network(&'a Policy, &'a [Rule]),
}

impl RuleList<'_> {
    /// (index, action) of the rules that match, in order.
    fn matching<'c>(
        &'c self,
        conn: &'c Conn<'_>,
    ) -> Box<dyn Iterator<Item = (usize, Action)> + 'c> {
        match self {
            RuleList::Ordered(rules) => Box::new(
                rules
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| conn.ordered_rule_matches(r))
                    .map(|(i, r)| (i, r.action)),
            ),
            RuleList::Network(policy, rules) => Box::new(
                rules
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| conn.network_rule_matches(policy, r))
                    .map(|(i, _)| (i, Action::Allow)),
            ),
        }
    }
}

fn member_rules<'a>(
    model: &Model,
    m: Member<'a>,
    pod: &Pod,
    dir: Direction,
) -> Option<RuleList<'a>> {
    match m {
        Member::Ordered(p) => {
            let ns_labels = model.namespace_labels(&pod.namespace);
            let selects = p.subject.selects(&pod.namespace, &ns_labels, &pod.labels);
            let rules = match dir {
                Direction::Ingress => p.ingress.as_deref(),
                Direction::Egress => p.egress.as_deref(),
            };
            rules.filter(|_| selects).map(RuleList::Ordered)
        }
        Member::Network(p) => {
            let selects = p.namespace == pod.namespace && p.pod_selector.matches(&pod.labels);
            let rules = match dir {
                Direction::Ingress => p.ingress.as_deref(),
                Direction::Egress => p.egress.as_deref(),
            };
            rules.filter(|_| selects).map(|r| RuleList::Network(p, r))
        }
    }
}

fn origin(m: Member<'_>) -> PolicyOrigin {
    match m {
        Member::Ordered(p) => PolicyOrigin::Ordered(p.origin.clone()),
        Member::Network(p) => p.origin.clone(),
    }
}

/// NetworkPolicies and the profile's policies for every namespace with a
/// pod: what sits in the default tier, for [`Layers::new`] outside a compile.
pub fn network_policies(model: &Model, profile: &super::Profile) -> Vec<Policy> {
    network_policies_of(model, profile, false)
}

/// [`network_policies`] with the audited NetworkPolicies, for
/// [`Layers::with_audited`].
pub fn network_policies_with_audited(model: &Model, profile: &super::Profile) -> Vec<Policy> {
    network_policies_of(model, profile, true)
}

fn network_policies_of(model: &Model, profile: &super::Profile, audited: bool) -> Vec<Policy> {
    let namespaces: BTreeSet<&str> = model.pods.values().map(|p| p.namespace.as_str()).collect();
    let audited = audited.then_some(&model.audited.policies);
    model
        .policies
        .values()
        .chain(audited.into_iter().flat_map(|a| a.values()))
        .cloned()
        .chain(
            namespaces
                .into_iter()
                .flat_map(|ns| profile.policies_for(ns)),
        )
        .collect()
}

/// The tier an origin's rules sit in, by name.
pub fn tier_of(origin: &PolicyOrigin) -> String {
    match origin {
        PolicyOrigin::Ordered(OrderedOrigin::Admin(_)) => "admin".into(),
        PolicyOrigin::Ordered(OrderedOrigin::Baseline(_)) => "baseline".into(),
        PolicyOrigin::Ordered(OrderedOrigin::Calico { tier, .. }) => tier.clone(),
        PolicyOrigin::NetworkPolicy(_) | PolicyOrigin::Profile(_) => {
            crate::model::ordered::DEFAULT_TIER.into()
        }
    }
}

/// A peer as the reference tests and `explain` see it: an address, and the
/// pod holding it if any.
pub struct AddressPeer<'a> {
    pub ip: std::net::IpAddr,
    pub pod: Option<&'a Pod>,
}

impl PeerView for AddressPeer<'_> {
    fn pod(&self) -> Option<(&str, &Labels)> {
        self.pod
            .filter(|p| !p.host_network)
            .map(|p| (p.namespace.as_str(), &p.labels))
    }

    fn in_net(&self, net: &IpNet) -> bool {
        in_block(self.ip, net, &[])
    }

    fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.pod.and_then(|p| p.named_port(name, protocol))
    }
}
