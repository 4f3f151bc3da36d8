//! Ordered policies that can deny: ClusterNetworkPolicy
//! (policy.networking.k8s.io/v1alpha2, Admin and Baseline tiers) and Calico
//! v3 (projectcalico.org/v3 NetworkPolicy, GlobalNetworkPolicy, Tier), in
//! one validated form. The index builds them; the engine evaluates them in
//! [`Stage`] order around the NetworkPolicy layer, and never sees API types.
//!
//! Evaluation, per direction of a pod (its ingress, or its egress):
//! - tiers in order ([`TierKey`]); within a tier, the policies that select
//!   the pod in that direction, by ([`PolicyOrder`]);
//! - within a policy, rules in order: the first rule that matches the
//!   connection decides: `Allow` and `Deny` end the evaluation, `Pass`
//!   skips the rest of the tier, `Log` records and goes on;
//! - a tier that selects the pod but decides nothing denies at its end
//!   when [`Tier::end_of_tier_deny`] (Calico tiers and the NetworkPolicy
//!   layer); ClusterNetworkPolicy tiers go on to the next tier;
//! - when no tier decides, the connection is allowed.

use std::{cmp::Ordering, fmt};

use ipnet::IpNet;

use super::{
    ObjectRef, Protocol, calico_selector::CalicoSelector, policy::PortSpec, selector::Selector,
};

/// Where a tier sits relative to NetworkPolicy v1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// ClusterNetworkPolicy `tier: Admin`: before everything else.
    Admin,
    /// Calico tiers, NetworkPolicy v1 sitting in Calico's `default` tier.
    Calico,
    /// ClusterNetworkPolicy `tier: Baseline`: after everything else.
    Baseline,
}

/// The position of a tier: stage, then `order` (lower first, none last),
/// then name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct TierKey {
    pub stage: Stage,
    pub order: Option<Order>,
    pub name: String,
}

impl Ord for TierKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.stage
            .cmp(&other.stage)
            .then_with(|| order_cmp(self.order, other.order))
            .then_with(|| self.name.cmp(&other.name))
    }
}

impl PartialOrd for TierKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Calico's `order` (a float, finite by validation) or a ClusterNetworkPolicy
/// `priority`; totally ordered.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Order(pub f64);

impl Eq for Order {}

impl std::hash::Hash for Order {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state);
    }
}

impl Ord for Order {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl PartialOrd for Order {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Lower first; no order after every order.
fn order_cmp(a: Option<Order>, b: Option<Order>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.cmp(&b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

/// The order of policies within a tier: `order` (none last), then name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct PolicyOrder {
    pub order: Option<Order>,
    /// `namespace/name` for namespaced policies, `name` for global ones.
    pub name: String,
}

impl Ord for PolicyOrder {
    fn cmp(&self, other: &Self) -> Ordering {
        order_cmp(self.order, other.order).then_with(|| self.name.cmp(&other.name))
    }
}

impl PartialOrd for PolicyOrder {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A tier as the engine evaluates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tier {
    pub key: TierKey,
    /// Whether a pod that a policy of the tier selects, and that no rule
    /// decided for, is denied at the end of the tier.
    pub end_of_tier_deny: bool,
}

/// Who wrote an ordered policy; how deny records name it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum OrderedOrigin {
    /// ClusterNetworkPolicy in the Admin tier: `admin/<name>`.
    Admin(String),
    /// ClusterNetworkPolicy in the Baseline tier: `baseline/<name>`.
    Baseline(String),
    /// Calico NetworkPolicy (namespace) or GlobalNetworkPolicy (none):
    /// `calico/<tier>/<ns>/<name>`, `calico/<tier>/<name>`.
    Calico {
        tier: String,
        namespace: Option<String>,
        name: String,
    },
}

impl OrderedOrigin {
    /// The API kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            OrderedOrigin::Admin(_) | OrderedOrigin::Baseline(_) => "ClusterNetworkPolicy",
            OrderedOrigin::Calico {
                namespace: Some(_), ..
            } => "NetworkPolicy.projectcalico.org",
            OrderedOrigin::Calico {
                namespace: None, ..
            } => "GlobalNetworkPolicy.projectcalico.org",
        }
    }
}

impl fmt::Display for OrderedOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OrderedOrigin::Admin(n) => write!(f, "admin/{n}"),
            OrderedOrigin::Baseline(n) => write!(f, "baseline/{n}"),
            OrderedOrigin::Calico {
                tier,
                namespace: Some(ns),
                name,
            } => write!(f, "calico/{tier}/{ns}/{name}"),
            OrderedOrigin::Calico {
                tier,
                namespace: None,
                name,
            } => write!(f, "calico/{tier}/{name}"),
        }
    }
}

/// A label selection in either API's language.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LabelMatch {
    /// metav1.LabelSelector (ClusterNetworkPolicy).
    Kube(Selector),
    /// A Calico selector expression.
    Calico(CalicoSelector),
}

impl LabelMatch {
    pub fn matches(&self, labels: &super::Labels) -> bool {
        match self {
            LabelMatch::Kube(s) => s.matches(labels),
            LabelMatch::Calico(s) => s.matches(labels),
        }
    }

    pub fn everything() -> Self {
        LabelMatch::Kube(Selector::everything())
    }
}

/// The namespaces a pod selection looks in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Namespaces {
    /// One namespace (a namespaced Calico policy without namespaceSelector).
    Named(String),
    /// Namespaces whose labels match.
    Matching(LabelMatch),
}

impl Namespaces {
    pub fn matches(&self, name: &str, labels: &super::Labels) -> bool {
        match self {
            Namespaces::Named(n) => n == name,
            Namespaces::Matching(m) => m.matches(labels),
        }
    }
}

/// The pods a policy applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Subject {
    pub namespaces: Namespaces,
    pub pods: LabelMatch,
}

impl Subject {
    /// Whether `pod` of `namespace` (with those labels) is one this selects.
    pub fn selects(
        &self,
        namespace: &str,
        namespace_labels: &super::Labels,
        pod: &super::Labels,
    ) -> bool {
        self.namespaces.matches(namespace, namespace_labels) && self.pods.matches(pod)
    }
}

/// One peer of a rule: every condition given must hold (Calico's entity
/// rule; a ClusterNetworkPolicy peer fills one or two of them).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PeerMatch {
    /// The peer is a pod in these namespaces (with `pods`), or, without
    /// `pods`, any pod in them.
    pub namespaces: Option<Namespaces>,
    /// The peer is a pod whose labels match.
    pub pods: Option<LabelMatch>,
    /// The peer is a pod whose labels do not match (a non-pod matches).
    pub not_pods: Option<LabelMatch>,
    /// The peer's address lies in one of these (`nets`, `networks`).
    pub nets: Option<Vec<IpNet>>,
    /// The peer's address lies in none of these (`notNets`).
    pub not_nets: Vec<IpNet>,
}

/// A protocol condition: the three with ports by name, others by number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpProtocolNumber(pub u8);

impl From<Protocol> for IpProtocolNumber {
    fn from(p: Protocol) -> Self {
        IpProtocolNumber(p.number())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Allow,
    Deny,
    /// Skip the rest of this tier (ClusterNetworkPolicy: to NetworkPolicy
    /// from Admin, to the default from Baseline).
    Pass,
    /// Record the connection and go on to the next rule (Calico).
    Log,
}

/// One rule. Everything given must match: the peer (any of `peers`, none
/// of them required when `None`), the protocol, and the port (any of
/// `ports`, none of `not_ports`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OrderedRule {
    pub action: Action,
    /// `None`: any peer. `Some`: at least one must match.
    pub peers: Option<Vec<PeerMatch>>,
    pub protocol: Option<IpProtocolNumber>,
    pub not_protocol: Option<IpProtocolNumber>,
    /// `None`: any port. Each spec names its protocol (a Calico rule's
    /// `protocol` is copied into its ports).
    pub ports: Option<Vec<PortSpec>>,
    pub not_ports: Vec<PortSpec>,
    /// Conditions on the policy's own pod, the other end from the peer:
    /// Calico's `destination` selector or nets on an ingress rule, its
    /// `source` ones on an egress rule. `None`: any pod the policy selects.
    pub local: Option<PeerMatch>,
}

/// An ordered policy: who it applies to, where it sits, its rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderedPolicy {
    pub origin: OrderedOrigin,
    /// Resolved by the index from the policy's tier (and its Tier object).
    pub tier: Tier,
    pub order: PolicyOrder,
    pub subject: Subject,
    /// `None`: the policy does not apply to ingress (`types`).
    pub ingress: Option<Vec<OrderedRule>>,
    pub egress: Option<Vec<OrderedRule>>,
}

impl OrderedPolicy {
    /// Whether a rule of this policy logs (Calico `Log`): its pods' flows
    /// are observed so that user space can write the records.
    pub fn logs(&self) -> bool {
        self.ingress
            .iter()
            .chain(self.egress.iter())
            .flatten()
            .any(|r| r.action == Action::Log)
    }

    /// The key that sorts policies into evaluation order.
    pub fn position(&self) -> (&TierKey, &PolicyOrder) {
        (&self.tier.key, &self.order)
    }
}

/// The tier NetworkPolicy v1 sits in: Calico's `default` tier. Its order
/// is Calico's default for that tier.
pub fn default_tier() -> TierKey {
    TierKey {
        stage: Stage::Calico,
        order: Some(Order(DEFAULT_TIER_ORDER)),
        name: DEFAULT_TIER.to_string(),
    }
}

pub const DEFAULT_TIER: &str = "default";
/// Calico gives the `default` tier order 1,000,000.
pub const DEFAULT_TIER_ORDER: f64 = 1_000_000.0;
/// Where Calico places a Kubernetes NetworkPolicy within the default tier.
pub const NETWORK_POLICY_ORDER: f64 = 1000.0;

/// Object names of the ordered kinds, for the index.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OrderedRef {
    ClusterNetworkPolicy(String),
    CalicoNetworkPolicy(ObjectRef),
    CalicoGlobalNetworkPolicy(String),
    CalicoTier(String),
}
