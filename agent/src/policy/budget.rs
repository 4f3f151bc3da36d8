//! What one policy, and one namespace, may cost on a node.
//!
//! A policy's cost is estimated from its text before anything is compiled:
//! policy-map entries per selected pod (per rule, peers x port prefixes,
//! each port spec counting its protocol once) and CIDRs (ipBlock cidrs plus
//! excepts: each can split identities and takes ipcache entries). The
//! per-policy limits judge that estimate alone, so they do not depend on
//! which pods exist; a namespace's entries are the estimates times the pods
//! each policy selects on this node (what the namespace takes of this
//! node's map), its CIDRs the plain sum.
//!
//! A policy over a budget is rejected whole: its last admitted version stays
//! in force, or, if it never had one, it isolates the pods it selects and
//! allows nothing (fail closed: the owner asked for isolation). Within a
//! namespace, policies already admitted keep their place: they are counted
//! first, then edited ones, then new ones by name, so a newcomer never
//! displaces what is enforced.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::compile::port_prefixes;
use crate::model::{
    ObjectRef,
    ordered::{Action, OrderedPolicy, OrderedRef, OrderedRule},
    policy::{Peer, Policy, PolicyOrigin, PortRef, PortSpec},
};

/// Limits per policy and per namespace; 0 means no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Budgets {
    /// Estimated policy-map entries per selected pod, one policy.
    pub policy_entries: u64,
    /// ipBlock CIDRs plus excepts, one policy.
    pub policy_cidrs: u64,
    /// Estimated entries times the local pods selected, summed over a
    /// namespace's policies.
    pub namespace_entries: u64,
    /// CIDRs plus excepts, summed over a namespace's policies.
    pub namespace_cidrs: u64,
}

impl Default for Budgets {
    /// Far above what real policies use (see README, "Budgets"), far below
    /// what fills the maps (1,048,576 policy, 262,144 ipcache entries).
    fn default() -> Self {
        Self {
            policy_entries: 50_000,
            policy_cidrs: 1_000,
            namespace_entries: 200_000,
            namespace_cidrs: 4_000,
        }
    }
}

impl Budgets {
    /// No limits at all.
    pub fn unlimited() -> Self {
        Self {
            policy_entries: 0,
            policy_cidrs: 0,
            namespace_entries: 0,
            namespace_cidrs: 0,
        }
    }
}

/// A policy's estimated cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Cost {
    pub entries: u64,
    pub cidrs: u64,
}

impl Cost {
    /// Reads the policy once; no identity, pod or map is looked at.
    pub fn of(policy: &Policy) -> Self {
        let mut cost = Cost::default();
        for rule in policy.ingress.iter().chain(policy.egress.iter()).flatten() {
            let cidrs = rule
                .peers
                .iter()
                .map(|peer| match peer {
                    Peer::IpBlock { except, .. } => 1 + except.len() as u64,
                    Peer::Pods { .. } => 0,
                })
                .sum();
            cost = cost.plus(Cost::rule(rule.peers.len(), &rule.ports, cidrs));
        }
        cost
    }

    /// An ordered policy's, estimated alike: peers x port prefixes per
    /// rule (excluded ports split ranges as ports do), nets and notNets
    /// as CIDRs.
    pub fn of_ordered(policy: &OrderedPolicy) -> Self {
        let mut cost = Cost::default();
        for rule in policy.ingress.iter().chain(policy.egress.iter()).flatten() {
            let peers = rule.peers.as_deref().unwrap_or_default();
            let cidrs = peers
                .iter()
                .chain(rule.local.iter())
                .map(|m| (m.nets.as_ref().map_or(0, Vec::len) + m.not_nets.len()) as u64)
                .sum();
            let ports = rule.ports.as_deref().unwrap_or_default();
            let mut c = Cost::rule(peers.len(), ports, cidrs);
            if !rule.not_ports.is_empty() {
                c.entries = c
                    .entries
                    .saturating_add(Cost::rule(peers.len(), &rule.not_ports, 0).entries);
            }
            cost = cost.plus(c);
        }
        cost
    }

    /// One rule: `peers` peers (0: any) times the prefixes of `ports`
    /// (none: every port).
    fn rule(peers: usize, ports: &[PortSpec], cidrs: u64) -> Self {
        let ports: u64 = if ports.is_empty() {
            1
        } else {
            ports
                .iter()
                .map(|p| match &p.port {
                    Some(PortRef::Range { start, end }) => port_prefixes(*start, *end).len() as u64,
                    _ => 1,
                })
                .sum()
        };
        Cost {
            entries: (peers.max(1) as u64).saturating_mul(ports),
            cidrs,
        }
    }

    /// What it takes of a node where it selects `pods` pods.
    fn on(self, pods: u64) -> Cost {
        Cost {
            entries: self.entries.saturating_mul(pods),
            cidrs: self.cidrs,
        }
    }

    fn plus(self, other: Cost) -> Cost {
        Cost {
            entries: self.entries.saturating_add(other.entries),
            cidrs: self.cidrs.saturating_add(other.cidrs),
        }
    }
}

/// Which limit a policy exceeded. Also the `reason` label of
/// `palisade_policies_rejected`: a closed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    PolicyEntries,
    PolicyCidrs,
    NamespaceEntries,
    NamespaceCidrs,
}

impl Reason {
    pub const ALL: [Reason; 4] = [
        Reason::PolicyEntries,
        Reason::PolicyCidrs,
        Reason::NamespaceEntries,
        Reason::NamespaceCidrs,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::PolicyEntries => "policy_entries",
            Reason::PolicyCidrs => "policy_cidrs",
            Reason::NamespaceEntries => "namespace_entries",
            Reason::NamespaceCidrs => "namespace_cidrs",
        }
    }

    /// The setting that sets the limit (config file `budgets.<name>`).
    fn setting(self) -> &'static str {
        match self {
            Reason::PolicyEntries => "policyEntries",
            Reason::PolicyCidrs => "policyCidrs",
            Reason::NamespaceEntries => "namespaceEntries",
            Reason::NamespaceCidrs => "namespaceCidrs",
        }
    }
}

/// What is enforced in place of a rejected policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum InForce {
    /// The version admitted before the edit.
    LastAdmitted,
    /// No version was ever admitted: the selected pods are isolated and the
    /// policy allows nothing.
    IsolationOnly,
}

/// Why a policy is not enforced as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rejection {
    pub policy: PolicyOrigin,
    pub reason: Reason,
    /// The policy's cost (per-policy limits) or the namespace's total with it.
    pub cost: u64,
    pub limit: u64,
    pub in_force: InForce,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.reason {
            Reason::PolicyEntries => "estimated policy entries (peers x port prefixes)",
            Reason::PolicyCidrs => "ipBlock CIDRs and excepts",
            Reason::NamespaceEntries => {
                "estimated policy entries (times the pods each selects on this node) of the namespace's admitted policies with this one"
            }
            Reason::NamespaceCidrs => {
                "ipBlock CIDRs and excepts of the namespace's admitted policies with this one"
            }
        };
        let scope = match self.reason {
            Reason::PolicyEntries | Reason::PolicyCidrs => "per-policy",
            Reason::NamespaceEntries | Reason::NamespaceCidrs => "per-namespace",
        };
        let in_force = match (self.in_force, &self.policy) {
            (InForce::LastAdmitted, _) => "its last admitted version stays in force",
            (InForce::IsolationOnly, PolicyOrigin::Ordered(_)) => {
                "it denies everything to and from the pods it selects"
            }
            (InForce::IsolationOnly, _) => "it isolates the pods it selects and allows nothing",
        };
        let kind = match &self.policy {
            PolicyOrigin::Ordered(o) => o.kind(),
            PolicyOrigin::NetworkPolicy(_) | PolicyOrigin::Profile(_) => "NetworkPolicy",
        };
        write!(
            f,
            "{kind} {}: {} {what} exceed the {scope} budget of {} (budgets.{}); {in_force}",
            self.policy,
            self.cost,
            self.limit,
            self.reason.setting(),
        )
    }
}

/// What budgets weigh, and what stands in for a rejected policy that
/// never had an admitted version (fail closed).
pub trait Budgeted: Clone + PartialEq {
    fn cost(&self) -> Cost;
    fn origin(&self) -> PolicyOrigin;
    fn isolation_only(&self) -> Self;
}

impl Budgeted for Policy {
    fn cost(&self) -> Cost {
        Cost::of(self)
    }

    fn origin(&self) -> PolicyOrigin {
        self.origin.clone()
    }

    /// Its selection and policy types but no rules.
    fn isolation_only(&self) -> Self {
        Policy {
            origin: self.origin.clone(),
            namespace: self.namespace.clone(),
            pod_selector: self.pod_selector.clone(),
            ingress: self.ingress.as_ref().map(|_| Vec::new()),
            egress: self.egress.as_ref().map(|_| Vec::new()),
        }
    }
}

impl Budgeted for OrderedPolicy {
    fn cost(&self) -> Cost {
        Cost::of_ordered(self)
    }

    fn origin(&self) -> PolicyOrigin {
        PolicyOrigin::Ordered(self.origin.clone())
    }

    /// Its place and selection, denying everything in its directions: an
    /// admin's deny must not open by being too large, and a tenant's
    /// policy closes what it selects, as an isolating NetworkPolicy does.
    fn isolation_only(&self) -> Self {
        let deny_all = || {
            vec![OrderedRule {
                action: Action::Deny,
                peers: None,
                protocol: None,
                not_protocol: None,
                ports: None,
                not_ports: Vec::new(),
                local: None,
            }]
        };
        OrderedPolicy {
            ingress: self.ingress.as_ref().map(|_| deny_all()),
            egress: self.egress.as_ref().map(|_| deny_all()),
            ..self.clone()
        }
    }
}

/// The outcome of one admission pass over policies keyed by `K`.
#[derive(Clone, Debug)]
pub struct Admitted<K, P> {
    /// Policy -> what is compiled instead of its current version.
    pub substitutes: BTreeMap<K, P>,
    pub rejected: BTreeMap<PolicyOrigin, Rejection>,
    /// The namespaces' admitted costs, for the next kind counted there.
    pub totals: BTreeMap<String, Cost>,
}

impl<K, P> Default for Admitted<K, P> {
    fn default() -> Self {
        Self {
            substitutes: BTreeMap::new(),
            rejected: BTreeMap::new(),
            totals: BTreeMap::new(),
        }
    }
}

/// Admission with memory: the versions admitted last time, with their cost.
#[derive(Clone, Debug, Default)]
pub struct Admission {
    budgets: Budgets,
    admitted: BTreeMap<ObjectRef, (Policy, Cost)>,
    admitted_ordered: BTreeMap<OrderedRef, (OrderedPolicy, Cost)>,
}

fn over(limit: u64, value: u64) -> bool {
    limit != 0 && value > limit
}

impl Admission {
    pub fn new(budgets: Budgets) -> Self {
        Self {
            budgets,
            admitted: BTreeMap::new(),
            admitted_ordered: BTreeMap::new(),
        }
    }

    pub fn budgets(&self) -> Budgets {
        self.budgets
    }

    /// Decides, for every NetworkPolicy, what is compiled: it as written,
    /// its last admitted version, or isolation only. `selected` counts the
    /// local pods a policy (version) selects.
    pub fn admit(
        &mut self,
        policies: &BTreeMap<ObjectRef, Policy>,
        selected: impl Fn(&Policy) -> u64,
    ) -> Admitted<ObjectRef, Policy> {
        let prev = std::mem::take(&mut self.admitted);
        let groups = group_by(policies, |k| Some(k.namespace.as_str()));
        let mut pass = Pass {
            budgets: self.budgets,
            prev,
            admitted: BTreeMap::new(),
            out: Admitted::default(),
        };
        for (ns, members) in groups {
            pass.namespace(ns, &members, &selected);
        }
        self.admitted = pass.admitted;
        pass.out
    }

    /// The same for ClusterNetworkPolicies and Calico policies, after the
    /// NetworkPolicies (`totals`: their namespaces' costs): a Calico
    /// NetworkPolicy counts against its namespace's budgets with them;
    /// cluster-scoped ones (an administrator's) against the per-policy
    /// budgets only.
    pub fn admit_ordered(
        &mut self,
        policies: &BTreeMap<OrderedRef, OrderedPolicy>,
        totals: BTreeMap<String, Cost>,
        selected: impl Fn(&OrderedPolicy) -> u64,
    ) -> Admitted<OrderedRef, OrderedPolicy> {
        let prev = std::mem::take(&mut self.admitted_ordered);
        let groups = group_by(policies, |k| match k {
            OrderedRef::CalicoNetworkPolicy(o) => Some(o.namespace.as_str()),
            OrderedRef::ClusterNetworkPolicy(_)
            | OrderedRef::CalicoGlobalNetworkPolicy(_)
            | OrderedRef::CalicoTier(_) => None,
        });
        let mut pass = Pass {
            budgets: self.budgets,
            prev,
            admitted: BTreeMap::new(),
            out: Admitted {
                totals,
                ..Admitted::default()
            },
        };
        for (ns, members) in groups {
            pass.namespace(ns, &members, &selected);
        }
        self.admitted_ordered = pass.admitted;
        pass.out
    }
}

/// Policies by namespace (`None`: cluster-scoped), in key order within each.
fn group_by<K: Ord, P>(
    policies: &BTreeMap<K, P>,
    namespace: impl Fn(&K) -> Option<&str>,
) -> BTreeMap<Option<String>, Vec<(&K, &P)>> {
    let mut groups: BTreeMap<Option<String>, Vec<(&K, &P)>> = BTreeMap::new();
    for (k, p) in policies {
        groups
            .entry(namespace(k).map(str::to_string))
            .or_default()
            .push((k, p));
    }
    groups
}

/// One admission pass: what was admitted before (`prev`) and what is now.
struct Pass<K, P> {
    budgets: Budgets,
    prev: BTreeMap<K, (P, Cost)>,
    admitted: BTreeMap<K, (P, Cost)>,
    out: Admitted<K, P>,
}

impl<K: Ord + Clone, P: Budgeted> Pass<K, P> {
    /// The first limit `cost` (for `selected` local pods) breaks on top of
    /// `total` (the namespace's admitted cost so far, entries weighted by
    /// the pods selected; `None`: no namespace budget applies), as
    /// (reason, value, limit).
    fn check(&self, total: Option<Cost>, cost: Cost, selected: u64) -> Option<(Reason, u64, u64)> {
        let b = &self.budgets;
        let mut checks = vec![
            (Reason::PolicyEntries, cost.entries, b.policy_entries),
            (Reason::PolicyCidrs, cost.cidrs, b.policy_cidrs),
        ];
        if let Some(total) = total {
            let sum = total.plus(cost.on(selected));
            checks.push((Reason::NamespaceEntries, sum.entries, b.namespace_entries));
            checks.push((Reason::NamespaceCidrs, sum.cidrs, b.namespace_cidrs));
        }
        checks
            .into_iter()
            .find(|(_, value, limit)| over(*limit, *value))
    }

    /// Moves what stays admitted from `prev` into `admitted` (no policy is
    /// copied unless it changed).
    fn namespace(
        &mut self,
        ns: Option<String>,
        policies: &[(&K, &P)],
        selected: &impl Fn(&P) -> u64,
    ) {
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        enum Seen {
            Unchanged,
            Edited,
            New,
        }
        // Unchanged admitted policies first, then edited ones, then new ones,
        // each group by name (stable sort): what is enforced keeps its place.
        let mut order: Vec<(Seen, &K, &P)> = policies
            .iter()
            .map(|(k, p)| {
                let seen = match self.prev.get(*k) {
                    Some((old, _)) if old == *p => Seen::Unchanged,
                    Some(_) => Seen::Edited,
                    None => Seen::New,
                };
                (seen, *k, *p)
            })
            .collect();
        order.sort_by_key(|(seen, _, _)| *seen);
        let mut total = ns
            .as_ref()
            .map(|n| self.out.totals.get(n).copied().unwrap_or_default());
        for (seen, key, policy) in order {
            let cost = match (seen, self.prev.get(key)) {
                (Seen::Unchanged, Some((_, c))) => *c,
                _ => policy.cost(),
            };
            let pods = selected(policy);
            let add = |total: &mut Option<Cost>, c: Cost, pods: u64| {
                if let Some(t) = total.as_mut() {
                    *t = t.plus(c.on(pods));
                }
            };
            let Some((reason, value, limit)) = self.check(total, cost, pods) else {
                add(&mut total, cost, pods);
                let kept = match (seen, self.prev.remove(key)) {
                    (Seen::Unchanged, Some(entry)) => entry,
                    _ => (policy.clone(), cost),
                };
                self.admitted.insert(key.clone(), kept);
                continue;
            };
            // Rejected: the last admitted version if it still fits, else isolation.
            let last = self
                .prev
                .remove(key)
                .filter(|(old, c)| self.check(total, *c, selected(old)).is_none());
            let in_force = match last {
                Some((old, c)) => {
                    add(&mut total, c, selected(&old));
                    self.out.substitutes.insert(key.clone(), old.clone());
                    self.admitted.insert(key.clone(), (old, c));
                    InForce::LastAdmitted
                }
                None => {
                    self.out
                        .substitutes
                        .insert(key.clone(), policy.isolation_only());
                    InForce::IsolationOnly
                }
            };
            self.out.rejected.insert(
                policy.origin(),
                Rejection {
                    policy: policy.origin(),
                    reason,
                    cost: value,
                    limit,
                    in_force,
                },
            );
        }
        if let (Some(ns), Some(total)) = (ns, total) {
            self.out.totals.insert(ns, total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        Protocol,
        policy::{PolicyOrigin, PortSpec, Rule},
        selector::Selector,
    };

    fn policy(ns: &str, name: &str, peers: usize, ranges: usize) -> Policy {
        let rule = Rule {
            peers: (0..peers)
                .map(|i| Peer::IpBlock {
                    cidr: format!("10.{}.{}.0/24", i / 256, i % 256)
                        .parse()
                        .expect("cidr"),
                    except: Vec::new(),
                })
                .collect(),
            ports: (0..ranges)
                .map(|i| PortSpec {
                    protocol: Protocol::Tcp,
                    // An even port and the next: one prefix (/15) each.
                    port: Some(PortRef::Range {
                        start: 2000 + 2 * i as u16,
                        end: 2001 + 2 * i as u16,
                    }),
                })
                .collect(),
        };
        Policy {
            origin: PolicyOrigin::NetworkPolicy(ObjectRef::new(ns, name)),
            namespace: ns.into(),
            pod_selector: Selector::everything(),
            ingress: Some(vec![rule]),
            egress: None,
        }
    }

    impl Admission {
        /// Every policy selecting one pod.
        fn admit_all(&mut self, ps: &BTreeMap<ObjectRef, Policy>) -> Admitted<ObjectRef, Policy> {
            self.admit(ps, |_| 1)
        }
    }

    fn np(ns: &str, name: &str) -> PolicyOrigin {
        PolicyOrigin::NetworkPolicy(ObjectRef::new(ns, name))
    }

    fn map(ps: &[Policy]) -> BTreeMap<ObjectRef, Policy> {
        ps.iter()
            .map(|p| {
                let PolicyOrigin::NetworkPolicy(k) = &p.origin else {
                    unreachable!()
                };
                (k.clone(), p.clone())
            })
            .collect()
    }

    #[test]
    fn cost_is_peers_times_port_prefixes_and_cidrs_with_excepts() {
        let p = policy("a", "p", 3, 4);
        assert_eq!(
            Cost::of(&p),
            Cost {
                entries: 12,
                cidrs: 3
            }
        );
        let mut q = p.clone();
        q.ingress = Some(vec![Rule::default()]);
        assert_eq!(
            Cost::of(&q),
            Cost {
                entries: 1,
                cidrs: 0
            }
        );
    }

    #[test]
    fn a_newcomer_never_displaces_an_admitted_policy() {
        let mut adm = Admission::new(Budgets {
            namespace_entries: 100,
            ..Budgets::unlimited()
        });
        let z = policy("a", "z", 10, 8);
        let out = adm.admit_all(&map(std::slice::from_ref(&z)));
        assert!(out.rejected.is_empty());
        // "b" sorts first but comes second: it is the one rejected.
        let b = policy("a", "b", 10, 3);
        let out = adm.admit_all(&map(&[b.clone(), z.clone()]));
        let r = &out.rejected[&np("a", "b")];
        assert_eq!(
            (r.reason, r.cost, r.limit, r.in_force),
            (Reason::NamespaceEntries, 110, 100, InForce::IsolationOnly)
        );
        assert!(!out.rejected.contains_key(&np("a", "z")));
        // Another namespace has its own budget.
        let other = policy("c", "b", 10, 3);
        let out = adm.admit_all(&map(&[b, z, other]));
        assert_eq!(out.rejected.len(), 1);
    }

    #[test]
    fn a_namespaces_own_new_pods_count_against_it() {
        let mut adm = Admission::new(Budgets {
            namespace_entries: 100,
            ..Budgets::unlimited()
        });
        let p = policy("a", "p", 2, 5);
        let ps = map(std::slice::from_ref(&p));
        assert!(adm.admit(&ps, |_| 10).rejected.is_empty(), "10 x 10 fits");
        let out = adm.admit(&ps, |_| 11);
        let r = &out.rejected[&np("a", "p")];
        assert_eq!(
            (r.reason, r.cost, r.in_force),
            (Reason::NamespaceEntries, 110, InForce::IsolationOnly)
        );
        assert!(
            adm.admit(&ps, |_| 10).rejected.is_empty(),
            "back when it fits"
        );
    }

    #[test]
    fn an_edit_over_budget_keeps_the_last_admitted_version() {
        let mut adm = Admission::new(Budgets {
            policy_entries: 50,
            ..Budgets::unlimited()
        });
        let small = policy("a", "p", 2, 2);
        assert!(
            adm.admit_all(&map(std::slice::from_ref(&small)))
                .rejected
                .is_empty()
        );
        let big = policy("a", "p", 20, 20);
        let out = adm.admit_all(&map(std::slice::from_ref(&big)));
        let r = &out.rejected[&np("a", "p")];
        assert_eq!(r.in_force, InForce::LastAdmitted);
        assert_eq!(out.substitutes[&ObjectRef::new("a", "p")], small);
        let text = r.to_string();
        assert!(
            text.contains("a/p") && text.contains("400") && text.contains("50"),
            "{text}"
        );
        // Still rejected on the next pass, still the old version.
        let out = adm.admit_all(&map(std::slice::from_ref(&big)));
        assert_eq!(out.substitutes[&ObjectRef::new("a", "p")], small);
        // A fresh admission (a restart) knows no last version.
        let out = Admission::new(adm.budgets()).admit_all(&map(&[big]));
        let p = &out.substitutes[&ObjectRef::new("a", "p")];
        assert_eq!(p.ingress, Some(Vec::new()), "isolation only");
    }
}
