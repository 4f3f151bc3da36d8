//! `compile(model, node, profile) -> DesiredState`: NetworkPolicy semantics
//! turned into map contents.
//!
//! NetworkPolicies are first admitted against their budgets
//! ([`super::budget`]): one over a budget is compiled as its last admitted
//! version or as isolation only, before any of its rules is looked at.
//! Remote addresses become identities ([`super::identity`]); each rule's
//! peers become a set of identities ([`super::matching`]); each local
//! endpoint gets, per rule that selects it, one policy entry per matched
//! identity and port prefix.
//!
//! A [`Compiler`] is meant to live as long as the agent: ids persist, so an
//! edit changes only the entries it touches, and both layers keep what
//! they computed, so an edit also costs only what it touches. A relabelled
//! pod re-signs that pod's addresses and updates each rule by the one or two
//! identities that changed; an edited policy matches its new rules against
//! the identities; a new CIDR re-signs every address (their CIDR sets change).
//! What remains per compile is a pass of equality checks over the pods and
//! the assembly of the maps.
//!
//! Service frontends are judged as their backends ([`super::services`]):
//! recomputed whole on every compile, once per group of endpoints with the
//! same egress entries.
//!
//! Bounds: ipcache entries = pod addresses, distinct CIDRs, node addresses,
//! Service frontend addresses and the IPv4 root; policy entries per local
//! endpoint <= sum over rules of (matching identities) x (ports, a range
//! counting at most 31 prefixes), plus one per allowed (frontend, Service
//! port).

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use ipnet::IpNet;
use palisade_common::{
    DNS_PORT, IDENTITY_ANY, IDENTITY_FIRST, IDENTITY_WORLD, PROTO_ANY, endpoint_flags,
};

use super::{
    addr::{IPV4_ROOT, canonical_ip},
    alloc::Allocator,
    budget::{Admission, Admitted, Budgets, Cost, InForce, Reason as BudgetReason, Rejection},
    flatten::Flatten,
    identity::{Blocks, IdentityLayer, Kind, Signature},
    matching::{MatchCache, PeerMatch},
    ordered::Layers,
    profile::Profile,
    services,
    state::{
        DesiredState, Direction, EndpointEntry, EndpointInfo, HostNetworkBlock, IdentityInfo,
        IpcacheEntry, PolicyKey, RuleRef,
    },
};
use crate::model::policy::{Peer, Policy, PolicyOrigin, PortRef, Rule};
use crate::model::{
    Model, Node, ObjectRef, Pod, Protocol,
    ordered::{OrderedOrigin, OrderedPolicy, OrderedRef},
};

/// Compiles with ids and intermediate results that persist across calls,
/// so that an edit changes, and costs, only what it touches.
#[derive(Clone, Debug)]
pub struct Compiler {
    identities: Allocator<Arc<Signature>>,
    endpoints: Allocator<ObjectRef>,
    rules: Allocator<RuleRef>,
    identity_layer: IdentityLayer,
    matches: MatchCache,
    /// Which policies fit their budgets, remembered so that what is
    /// enforced keeps its place.
    admission: Admission,
    /// Every endpoint observes its allowed flows (else only those that
    /// audited policies or `Log` rules select).
    observe: bool,
    stats: CompileStats,
}

/// How much work the last compile did: what an edit cost, in units that do
/// not depend on the machine (tests assert on them; benchmarks report them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CompileStats {
    /// Pods whose addresses were signed anew.
    pub pods_signed: usize,
    /// Identities that appeared, vanished or changed meaning.
    pub identities_changed: usize,
    /// (rule, identity) pairs evaluated.
    pub rule_evaluations: usize,
    /// Distinct rules whose matches are kept for the next compile.
    pub rules_cached: usize,
}

impl Default for Compiler {
    fn default() -> Self {
        Self {
            identities: Allocator::starting_at(IDENTITY_FIRST),
            endpoints: Allocator::starting_at(1),
            rules: Allocator::starting_at(1),
            identity_layer: IdentityLayer::default(),
            matches: MatchCache::default(),
            admission: Admission::new(Budgets::default()),
            observe: false,
            stats: CompileStats::default(),
        }
    }
}

impl Compiler {
    /// A compiler that admits policies within `budgets`.
    pub fn with_budgets(mut self, budgets: Budgets) -> Self {
        self.admission = Admission::new(budgets);
        self
    }

    /// Whether every endpoint sends its allowed new flows to user space.
    pub fn with_observation(mut self, observe: bool) -> Self {
        self.observe = observe;
        self
    }
}

impl Compiler {
    /// A compiler whose ids start above every id in `observed` (the pinned
    /// maps of a previous run), so no id can mean two things while the first
    /// diff is applied.
    pub fn above(mut self, observed: &super::state::Maps) -> Self {
        let max_identity = observed
            .ipcache
            .values()
            .map(|e| e.identity)
            .max()
            .unwrap_or(0);
        let max_endpoint = observed.endpoints.values().map(|e| e.id).max().unwrap_or(0);
        let max_rule = observed.policy.values().copied().max().unwrap_or(0);
        self.identities =
            Allocator::starting_at(IDENTITY_FIRST.max(max_identity.saturating_add(1)));
        self.endpoints = Allocator::starting_at(max_endpoint.saturating_add(1).max(1));
        self.rules = Allocator::starting_at(max_rule.saturating_add(1).max(1));
        self.forget_results();
        self
    }

    /// Drops what earlier compiles computed (it names ids that are about to change).
    fn forget_results(&mut self) {
        self.identity_layer = IdentityLayer::default();
        self.matches = MatchCache::default();
    }
}

impl Compiler {
    /// Takes over the ids a previous run left in the kernel maps: `fresh` is
    /// a compile of the current model; wherever it holds an address, endpoint
    /// or policy key that `observed` also holds, the observed id replaces the
    /// fresh one. Compiling again then reproduces the observed maps exactly
    /// where the model is unchanged, so a restart rewrites nothing.
    pub fn adopt_ids(&mut self, observed: &super::state::Maps, fresh: &DesiredState) {
        fn consistent(pairs: impl Iterator<Item = (u32, u32)>) -> BTreeMap<u32, u32> {
            let mut map: BTreeMap<u32, Option<u32>> = BTreeMap::new();
            for (new, old) in pairs {
                let e = map.entry(new).or_insert(Some(old));
                if *e != Some(old) {
                    *e = None;
                }
            }
            let mut claimed = BTreeSet::new();
            map.into_iter()
                .filter_map(|(new, old)| old.map(|o| (new, o)))
                .filter(|(_, old)| claimed.insert(*old))
                .collect()
        }
        // Reserved ids (the IPv4 root's world) are no allocator's to hand out.
        let identities = consistent(
            fresh
                .maps
                .ipcache
                .iter()
                .filter_map(|(net, e)| observed.ipcache.get(net).map(|o| (e.identity, o.identity)))
                .filter(|(new, old)| *new >= IDENTITY_FIRST && *old >= IDENTITY_FIRST),
        );
        let endpoints = consistent(
            fresh
                .maps
                .endpoints
                .iter()
                .filter_map(|(ip, e)| observed.endpoints.get(ip).map(|o| (e.id, o.id))),
        );
        let rules = consistent(fresh.maps.policy.iter().filter_map(|(k, rule)| {
            let mut old_key = *k;
            old_key.endpoint = *endpoints.get(&k.endpoint)?;
            if k.identity != IDENTITY_ANY {
                old_key.identity = *identities.get(&k.identity)?;
            }
            observed.policy.get(&old_key).map(|old| (*rule, *old))
        }));
        self.identities.renumber(&identities);
        self.endpoints.renumber(&endpoints);
        self.rules.renumber(&rules);
        self.forget_results();
    }
}

/// One-shot compile with fresh ids.
pub fn compile(model: &Model, node: &Node, profile: &Profile) -> DesiredState {
    Compiler::default().compile(model, node, profile)
}

impl Compiler {
    pub fn compile(&mut self, model: &Model, node: &Node, profile: &Profile) -> DesiredState {
        let node = &canonical_node(node);
        let mut state = DesiredState::default();
        let local: Vec<&Pod> = model
            .pods
            .values()
            .filter(|p| p.node == node.name && !p.host_network && !p.ips.is_empty())
            .collect();

        // Policies that can apply here, by namespace: NetworkPolicies plus
        // the profile's, only for namespaces that have local endpoints.
        let local_namespaces: BTreeSet<&str> = local.iter().map(|p| p.namespace.as_str()).collect();
        let synthetic: Vec<Policy> = local_namespaces
            .iter()
            .flat_map(|ns| profile.policies_for(ns))
            .collect();
        let mut admitted = self.admit(model, &local);
        let ordered = self.admit_ordered(model, &local, std::mem::take(&mut admitted.totals));
        let by_namespace = by_namespace(model, &admitted, &local_namespaces, &synthetic);
        let policies = || by_namespace.values().flatten().copied();

        let frontends = services::frontends(model, profile);
        let resolution = self.identity_layer.resolve(
            &mut self.identities,
            model,
            node,
            profile,
            Blocks::new(named_blocks(policies(), model)),
            &frontends,
        );
        state.maps.ipcache = resolution.ipcache;
        // IPv4 is ::ffff:0:0/96 in the kernel's trie: with its root present,
        // an IPv6 prefix covering that (::/0) never wins for an IPv4 address.
        state.maps.ipcache.entry(IPV4_ROOT).or_insert(IpcacheEntry {
            identity: IDENTITY_WORLD,
            flags: 0,
        });
        let delta = resolution.delta;
        let identities = self.identity_layer.current();
        self.matches.update(&delta, identities, model);
        for (id, sig) in identities {
            state.identities.insert(*id, identity_info(sig));
        }

        let layers = Layers::from_parts(
            model
                .ordered
                .iter()
                .map(|(k, p)| ordered.substitutes.get(k).unwrap_or(p)),
            policies(),
        );
        // Pods whose flows user space judges again: those of audited
        // policies (would-deny records) and of `Log` rules.
        let audited_here: Vec<&Policy> = model
            .audited
            .policies
            .values()
            .filter(|p| local_namespaces.contains(p.namespace.as_str()))
            .collect();
        let watched = Layers::from_parts(
            model
                .audited
                .ordered
                .values()
                .chain(model.ordered.values().filter(|p| p.logs())),
            audited_here,
        );
        let mut endpoints = Endpoints {
            layers: &layers,
            watched: (!self.observe).then_some(&watched),
            rules: &mut self.rules,
            matches: &mut self.matches,
            identities,
            model,
            profile,
            flattened: BTreeMap::new(),
            flatten_limit: self.admission.budgets().namespace_entries,
            over_budget: BTreeMap::new(),
        };
        for pod in &local {
            let pod_ref = pod.key();
            let ep_id = self.endpoints.id(&pod_ref);
            let candidates = by_namespace.get(pod.namespace.as_str());
            endpoints.compile(&mut state, node, pod, pod_ref, ep_id, candidates);
        }
        let flattened_over = std::mem::take(&mut endpoints.over_budget);
        self.frontend_entries(&mut state, &frontends, &local);

        // hostNetwork pods of this node: the metadata block goes on their cgroup.
        if profile.block_metadata {
            state.host_network_blocks = host_network_blocks(model, node, profile);
        }

        self.name_rules(&mut state, policies());

        state.rejected = admitted.rejected;
        state.rejected.extend(ordered.rejected);
        state.rejected.extend(flattened_over);
        self.identities.release_unused();
        self.endpoints.release_unused();
        self.rules.release_unused();
        self.matches.release_unused();
        self.stats = CompileStats {
            pods_signed: resolution.pods_signed,
            identities_changed: delta.added.union(&delta.removed).count(),
            rule_evaluations: self.matches.evaluations(),
            rules_cached: self.matches.len(),
        };
        state
    }

    /// Rule names for every rule id in use.
    fn name_rules<'a>(
        &mut self,
        state: &mut DesiredState,
        policies: impl Iterator<Item = &'a Policy>,
    ) {
        for p in policies {
            for (dir, rules) in [
                (Direction::Ingress, &p.ingress),
                (Direction::Egress, &p.egress),
            ] {
                for ri in 0..rules.as_ref().map_or(0, Vec::len) {
                    let r = RuleRef {
                        origin: p.origin.clone(),
                        dir,
                        index: ri,
                    };
                    let id = self.rules.id(&r);
                    state.rules.insert(id, r);
                }
            }
        }
    }

    /// Budgets are judged before anything is compiled: a policy over one
    /// is compiled as its substitute (last admitted version or isolation).
    fn admit(&mut self, model: &Model, local: &[&Pod]) -> Admitted<ObjectRef, Policy> {
        let mut local_by_namespace: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
        for pod in local {
            local_by_namespace
                .entry(pod.namespace.as_str())
                .or_default()
                .push(pod);
        }
        self.admission.admit(&model.policies, |p| {
            local_by_namespace
                .get(p.namespace.as_str())
                .into_iter()
                .flatten()
                .filter(|pod| p.pod_selector.matches(&pod.labels))
                .count() as u64
        })
    }

    /// The ordered policies' budgets, after the NetworkPolicies' (whose
    /// namespace costs are `totals`); a policy's pods are the local pods
    /// its subject selects.
    fn admit_ordered(
        &mut self,
        model: &Model,
        local: &[&Pod],
        totals: BTreeMap<String, Cost>,
    ) -> Admitted<OrderedRef, OrderedPolicy> {
        self.admission.admit_ordered(&model.ordered, totals, |p| {
            local
                .iter()
                .filter(|pod| {
                    let ns_labels = model.namespace_labels(&pod.namespace);
                    p.subject.selects(&pod.namespace, &ns_labels, &pod.labels)
                })
                .count() as u64
        })
    }

    /// Service frontends, from the verdicts of their backends over the
    /// maps as they stand (they hold no frontend entries yet).
    fn frontend_entries(
        &mut self,
        state: &mut DesiredState,
        frontends: &BTreeMap<IpAddr, services::Frontend>,
        local: &[&Pod],
    ) {
        let local_entries: Vec<EndpointEntry> = local
            .iter()
            .filter_map(|p| p.ips.iter().find_map(|ip| state.maps.endpoints.get(ip)))
            .copied()
            .collect();
        let unisolated = RuleRef {
            origin: PolicyOrigin::Profile(services::UNISOLATED),
            dir: Direction::Egress,
            index: 0,
        };
        let mut unisolated_id = None;
        let frontend_entries =
            services::entries(&state.maps, frontends, &local_entries, &mut || {
                *unisolated_id.get_or_insert_with(|| self.rules.id(&unisolated))
            });
        for (k, rule) in frontend_entries {
            insert(&mut state.maps.policy, k, rule);
        }
        if let Some(id) = unisolated_id {
            state.rules.insert(id, unisolated);
        }
    }

    /// The work the last [`Compiler::compile`] did.
    pub fn stats(&self) -> CompileStats {
        self.stats
    }
}

/// The policies that can apply here, by namespace: the admitted versions
/// of NetworkPolicies in `local_namespaces`, then the profile's.
fn by_namespace<'a>(
    model: &'a Model,
    admitted: &'a Admitted<ObjectRef, Policy>,
    local_namespaces: &BTreeSet<&str>,
    synthetic: &'a [Policy],
) -> BTreeMap<&'a str, Vec<&'a Policy>> {
    let mut by_namespace: BTreeMap<&str, Vec<&Policy>> = BTreeMap::new();
    for p in model
        .policies
        .iter()
        .map(|(k, p)| admitted.substitutes.get(k).unwrap_or(p))
        .filter(|p| local_namespaces.contains(p.namespace.as_str()))
        .chain(synthetic.iter())
    {
        by_namespace
            .entry(p.namespace.as_str())
            .or_default()
            .push(p);
    }
    by_namespace
}

/// The CIDRs policies name (peers of rules that can apply here, and every
/// ordered policy's nets).
fn named_blocks<'a>(policies: impl Iterator<Item = &'a Policy>, model: &Model) -> BTreeSet<IpNet> {
    let mut blocks: BTreeSet<IpNet> = model
        .ordered
        .values()
        .flat_map(|p| p.ingress.iter().chain(p.egress.iter()).flatten())
        .flat_map(|r| r.peers.iter().flatten())
        .flat_map(|m| m.nets.iter().flatten().chain(&m.not_nets))
        .copied()
        .collect();
    for p in policies {
        for rule in p.ingress.iter().chain(p.egress.iter()).flatten() {
            for peer in &rule.peers {
                if let Peer::IpBlock { cidr, except } = peer {
                    blocks.insert(*cidr);
                    blocks.extend(except.iter().copied());
                }
            }
        }
    }
    blocks
}

/// This node's hostNetwork pods that the metadata block covers.
fn host_network_blocks(
    model: &Model,
    node: &Node,
    profile: &Profile,
) -> BTreeSet<HostNetworkBlock> {
    let mut blocks = BTreeSet::new();
    for pod in model
        .pods
        .values()
        .filter(|p| p.node == node.name && p.host_network)
    {
        if !profile.metadata_opted_out(&pod.labels, &model.namespace_labels(&pod.namespace)) {
            blocks.insert(HostNetworkBlock {
                pod: pod.key(),
                uid: pod.uid.clone(),
            });
        }
    }
    blocks
}

/// Compiles local endpoints: the parts of a [`Compiler`] that this needs,
/// borrowed next to the identities it holds.
struct Endpoints<'a> {
    layers: &'a Layers<'a>,
    /// Whose pods observe their flows; `None`: every pod does.
    watched: Option<&'a Layers<'a>>,
    rules: &'a mut Allocator<RuleRef>,
    matches: &'a mut MatchCache,
    identities: &'a BTreeMap<u32, Arc<Signature>>,
    model: &'a Model,
    profile: &'a Profile,
    /// What a namespace's own Calico policies cost where they are
    /// flattened (one entry per remote identity and allowed interval),
    /// measured and held to its entries budget (0: none).
    flattened: BTreeMap<String, u64>,
    flatten_limit: u64,
    over_budget: BTreeMap<PolicyOrigin, Rejection>,
}

impl Endpoints<'_> {
    /// A local pod's endpoint entries, and the policy entries of the rules
    /// of `candidates` (its namespace's policies) that select it.
    fn compile(
        &mut self,
        state: &mut DesiredState,
        node: &Node,
        pod: &Pod,
        pod_ref: ObjectRef,
        ep_id: u32,
        candidates: Option<&Vec<&Policy>>,
    ) {
        let pod_ns_labels = self.model.namespace_labels(&pod.namespace);
        let block_metadata = self.profile.block_metadata
            && !self.profile.metadata_opted_out(&pod.labels, &pod_ns_labels);
        let mut flags = if block_metadata {
            endpoint_flags::BLOCK_METADATA
        } else {
            0
        };
        let mut info = EndpointInfo {
            pod: Some(pod_ref),
            ..Default::default()
        };
        for dir in Direction::BOTH {
            let emit = Emit {
                endpoint: ep_id,
                dir,
                // Set per rule.
                rule_id: 0,
                pod,
                block_metadata,
                metadata_dns: self.profile.metadata_dns,
            };
            let isolated_by = if self.layers.ordered_selects(self.model, pod, dir) {
                let before = state.maps.policy.len();
                let isolated_by = Flatten {
                    layers: self.layers,
                    model: self.model,
                    identities: self.identities,
                    rules: self.rules,
                    named: &mut state.rules,
                    block_metadata,
                    metadata_dns: self.profile.metadata_dns,
                }
                .endpoint(&mut state.maps.policy, pod, ep_id, dir);
                let written = (state.maps.policy.len() - before) as u64;
                self.charge(
                    &mut state.maps.policy,
                    pod,
                    ep_id,
                    dir,
                    &isolated_by,
                    written,
                );
                isolated_by
            } else {
                self.rules_of(&mut state.maps.policy, emit, candidates)
            };
            flags |= isolation_flags(dir, &isolated_by);
            if self
                .watched
                .is_none_or(|w| w.any_selects(self.model, pod, dir))
            {
                flags |= match dir {
                    Direction::Ingress => endpoint_flags::OBSERVE_INGRESS,
                    Direction::Egress => endpoint_flags::OBSERVE_EGRESS,
                };
            }
            match dir {
                Direction::Ingress => info.ingress_isolated_by = isolated_by,
                Direction::Egress => info.egress_isolated_by = isolated_by,
            }
        }
        for ip in &pod.ips {
            let ifindex = node.interfaces.get(ip).copied().unwrap_or(0);
            state.maps.endpoints.insert(
                canonical_ip(*ip),
                EndpointEntry {
                    id: ep_id,
                    flags,
                    ifindex,
                },
            );
            if ifindex != 0 {
                state.maps.ifaces.insert(ifindex, ep_id);
            }
        }
        state.endpoint_info.insert(ep_id, info);
    }

    /// Charges `written` flattened entries of `pod`'s side `dir` to its
    /// namespace when a Calico policy of that namespace selects it there
    /// (a tenant's doing); over the budget they are taken out again and
    /// the side, isolated by its policies, allows nothing: fail closed,
    /// and the map keeps its room for everyone else.
    fn charge(
        &mut self,
        map: &mut BTreeMap<PolicyKey, u32>,
        pod: &Pod,
        ep_id: u32,
        dir: Direction,
        isolated_by: &[PolicyOrigin],
        written: u64,
    ) {
        let own = isolated_by.iter().find(|o| {
            matches!(o, PolicyOrigin::Ordered(OrderedOrigin::Calico { namespace: Some(ns), .. })
                if *ns == pod.namespace)
        });
        let Some(own) = own else {
            return;
        };
        let total = self.flattened.entry(pod.namespace.clone()).or_default();
        let sum = total.saturating_add(written);
        if self.flatten_limit == 0 || sum <= self.flatten_limit {
            *total = sum;
            return;
        }
        map.retain(|k, _| !(k.endpoint == ep_id && k.dir == dir));
        self.over_budget.insert(
            own.clone(),
            Rejection {
                policy: own.clone(),
                reason: BudgetReason::NamespaceEntries,
                cost: sum,
                limit: self.flatten_limit,
                in_force: InForce::IsolationOnly,
            },
        );
    }

    /// Emits the rules of `candidates` that select `e.pod` in `e.dir`;
    /// the policies that isolate it there, sorted.
    fn rules_of(
        &mut self,
        map: &mut BTreeMap<PolicyKey, u32>,
        e: Emit<'_>,
        candidates: Option<&Vec<&Policy>>,
    ) -> Vec<PolicyOrigin> {
        let dir = e.dir;
        let mut isolated_by = Vec::new();
        for policy in candidates.into_iter().flatten() {
            if !policy.pod_selector.matches(&e.pod.labels) {
                continue;
            }
            let Some(rules) = (match dir {
                Direction::Ingress => &policy.ingress,
                Direction::Egress => &policy.egress,
            }) else {
                continue;
            };
            if !isolated_by.contains(&policy.origin) {
                isolated_by.push(policy.origin.clone());
            }
            for (ri, rule) in rules.iter().enumerate() {
                let rule_id = self.rules.id(&RuleRef {
                    origin: policy.origin.clone(),
                    dir,
                    index: ri,
                });
                let peers = self.matches.get(rule, self.identities, self.model);
                emit_rule(map, Emit { rule_id, ..e }, rule, peers, self.identities);
            }
        }
        isolated_by.sort();
        isolated_by
    }
}

/// The endpoint flags of being isolated in `dir` by `isolated_by`.
fn isolation_flags(dir: Direction, isolated_by: &[PolicyOrigin]) -> u32 {
    if isolated_by.is_empty() {
        return 0;
    }
    // Isolated by the profile alone (default deny and its DNS
    // allowance): denials are the default deny's.
    let only_default = isolated_by
        .iter()
        .all(|o| matches!(o, PolicyOrigin::Profile(_)));
    match dir {
        Direction::Ingress => {
            endpoint_flags::INGRESS_ISOLATED
                | if only_default {
                    endpoint_flags::INGRESS_DEFAULT_DENY
                } else {
                    0
                }
        }
        Direction::Egress => {
            endpoint_flags::EGRESS_ISOLATED
                | if only_default {
                    endpoint_flags::EGRESS_DEFAULT_DENY
                } else {
                    0
                }
        }
    }
}

/// The node with its v4-mapped addresses written as IPv4, as the kernel keys them.
fn canonical_node(node: &Node) -> Cow<'_, Node> {
    if node.addresses.iter().all(|a| canonical_ip(*a) == *a) {
        return Cow::Borrowed(node);
    }
    let mut addresses: Vec<_> = Vec::with_capacity(node.addresses.len());
    for a in node.addresses.iter().map(|a| canonical_ip(*a)) {
        if !addresses.contains(&a) {
            addresses.push(a);
        }
    }
    Cow::Owned(Node {
        name: node.name.clone(),
        addresses,
        interfaces: node.interfaces.clone(),
    })
}

fn identity_info(sig: &Signature) -> IdentityInfo {
    match sig.kind.as_ref() {
        Kind::Pod {
            namespace, labels, ..
        } => IdentityInfo::Pods {
            namespace: namespace.clone(),
            labels: labels.clone(),
        },
        Kind::Cidr => IdentityInfo::Cidr(
            *sig.blocks
                .iter()
                .max_by_key(|b| b.prefix_len())
                .unwrap_or(&IpNet::default()),
        ),
        Kind::Host => IdentityInfo::Host,
        Kind::Metadata(_) => IdentityInfo::Metadata,
        Kind::Service { service, .. } => IdentityInfo::Service {
            namespace: service.namespace.clone(),
            name: service.name.clone(),
        },
    }
}

#[derive(Clone, Copy)]
struct Emit<'a> {
    endpoint: u32,
    dir: Direction,
    rule_id: u32,
    pod: &'a Pod,
    block_metadata: bool,
    /// DNS to the metadata addresses is judged like any destination.
    metadata_dns: bool,
}

/// Inclusive port range as (value, prefix bits) pairs covering it exactly.
pub fn port_prefixes(start: u16, end: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut s, e) = (u32::from(start), u32::from(end));
    while s <= e {
        let mut size: u32 = if s == 0 {
            1 << 16
        } else {
            s & s.wrapping_neg()
        };
        while s + size - 1 > e {
            size >>= 1;
        }
        out.push((s as u16, (16 - size.trailing_zeros()) as u8));
        s += size;
    }
    out
}

fn insert(map: &mut BTreeMap<PolicyKey, u32>, key: PolicyKey, rule: u32) {
    // First rule wins; the value only attributes the allow.
    map.entry(key).or_insert(rule);
}

fn emit_ports(
    map: &mut BTreeMap<PolicyKey, u32>,
    e: &Emit<'_>,
    identity: u32,
    protocol: Protocol,
    start: u16,
    end: u16,
) {
    for (port, port_bits) in port_prefixes(start, end) {
        insert(
            map,
            PolicyKey {
                endpoint: e.endpoint,
                dir: e.dir,
                proto: protocol.number(),
                identity,
                port,
                port_bits,
            },
            e.rule_id,
        );
    }
}

/// The protocols of TCP and UDP on which `rule` allows port 53.
fn dns_protocols(rule: &Rule) -> Vec<Protocol> {
    let dns = [Protocol::Udp, Protocol::Tcp];
    if rule.ports.is_empty() {
        return dns.to_vec();
    }
    dns.into_iter()
        .filter(|p| {
            rule.ports.iter().any(|s| {
                s.protocol == *p
                    && match &s.port {
                        None => true,
                        Some(PortRef::Range { start, end }) => (*start..=*end).contains(&DNS_PORT),
                        // Named egress ports are pods' ports; no metadata address has one.
                        Some(PortRef::Named(_)) => false,
                    }
            })
        })
        .collect()
}

fn emit_rule(
    map: &mut BTreeMap<PolicyKey, u32>,
    e: Emit<'_>,
    rule: &Rule,
    peers: &PeerMatch,
    identities: &BTreeMap<u32, Arc<Signature>>,
) {
    // Identities this endpoint treats as matched: every peer, or the listed
    // ones plus the metadata identities the block leaves open to this rule.
    let listed: Vec<u32> = if peers.any {
        Vec::new()
    } else {
        let mut v: Vec<u32> = peers.loose.iter().copied().collect();
        v.extend(&peers.metadata_exact);
        if !e.block_metadata {
            v.extend(&peers.metadata_loose);
        }
        v
    };
    let peer_ids: &[u32] = if peers.any { &[IDENTITY_ANY] } else { &listed };
    let key = |proto: u8, identity: u32| PolicyKey {
        endpoint: e.endpoint,
        dir: e.dir,
        proto,
        identity,
        port: 0,
        port_bits: 0,
    };

    // Where the block leaves DNS open, a looser block (0.0.0.0/0) holding a
    // metadata address opens DNS to it, as it would any destination.
    if e.block_metadata && e.metadata_dns && e.dir == Direction::Egress && !peers.any {
        for protocol in dns_protocols(rule) {
            for identity in &peers.metadata_loose {
                emit_ports(map, &e, *identity, protocol, DNS_PORT, DNS_PORT);
            }
        }
    }
    if rule.ports.is_empty() {
        for identity in peer_ids {
            insert(map, key(PROTO_ANY, *identity), e.rule_id);
        }
        return;
    }
    for spec in &rule.ports {
        match &spec.port {
            None => {
                for identity in peer_ids {
                    insert(map, key(spec.protocol.number(), *identity), e.rule_id);
                }
            }
            Some(PortRef::Range { start, end }) => {
                for identity in peer_ids {
                    emit_ports(map, &e, *identity, spec.protocol, *start, *end);
                }
            }
            // Ingress: the name is the local pod's port.
            Some(PortRef::Named(name)) if e.dir == Direction::Ingress => {
                if let Some(port) = e.pod.named_port(name, spec.protocol) {
                    for identity in peer_ids {
                        emit_ports(map, &e, *identity, spec.protocol, port, port);
                    }
                }
            }
            // Egress: the name is each destination pod's port, so it can mean
            // a different number per peer identity.
            Some(PortRef::Named(name)) => {
                let candidates: Box<dyn Iterator<Item = (&u32, &Arc<Signature>)>> = if peers.any {
                    Box::new(identities.iter())
                } else {
                    Box::new(listed.iter().filter_map(|id| identities.get_key_value(id)))
                };
                emit_named_egress(map, &e, spec.protocol, name, candidates);
            }
        }
    }
}

/// An egress port named `name`, as each candidate peer identity numbers it.
fn emit_named_egress<'a>(
    map: &mut BTreeMap<PolicyKey, u32>,
    e: &Emit<'_>,
    protocol: Protocol,
    name: &str,
    candidates: impl Iterator<Item = (&'a u32, &'a Arc<Signature>)>,
) {
    for (id, sig) in candidates {
        if let Kind::Pod { named_ports, .. } = sig.kind.as_ref() {
            for p in named_ports {
                if p.protocol == protocol && p.name.as_deref() == Some(name) {
                    emit_ports(map, e, *id, protocol, p.port, p.port);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_split_into_exact_prefixes() {
        assert_eq!(port_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_prefixes(32000, 32767), vec![(32000, 8), (32256, 7)]);
        for (s, e) in [
            (1u16, 65535u16),
            (1000, 1999),
            (0, 0),
            (65535, 65535),
            (5, 6),
        ] {
            let parts = port_prefixes(s, e);
            for p in 0..=65535u32 {
                let p = p as u16;
                let hits = parts
                    .iter()
                    .filter(|(v, bits)| {
                        let k = PolicyKey {
                            endpoint: 0,
                            dir: Direction::Ingress,
                            proto: 6,
                            identity: 0,
                            port: *v,
                            port_bits: *bits,
                        };
                        k.covers_port(p)
                    })
                    .count();
                assert_eq!(hits, usize::from(p >= s && p <= e), "port {p} in {s}-{e}");
            }
        }
    }
}
