//! Identities: remote addresses compressed into numbers.
//!
//! Two addresses share an identity when no policy can tell them apart: the
//! same pod facts (namespace, labels, named ports) and the same set of the
//! CIDRs that policies name. Longest-prefix match on the ipcache then yields
//! an identity whose CIDR membership is exact, which is what makes ipBlock
//! with `except`, and ipBlocks that cover pods, come out right.
//!
//! The layer is incremental: what a pod's addresses compile to is kept
//! across compiles and reused while the pod, the CIDR set and the node's
//! addresses are unchanged, and every compile reports which identities
//! appeared, vanished or changed meaning (their namespace was relabelled),
//! so that rule matches are updated by that delta alone.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use ipnet::IpNet;
use palisade_common::ipcache_flags;

use super::{
    addr::canonical_ip,
    alloc::Allocator,
    profile::Profile,
    services::{self, Frontend},
    state::IpcacheEntry,
};
use crate::model::{ContainerPort, Labels, Model, Node, ObjectRef, Pod};

/// What an identity is made of. Ordered, so identities come out in a stable order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Signature {
    pub kind: Arc<Kind>,
    /// The policy CIDRs that contain the address(es), sorted.
    pub blocks: Vec<IpNet>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Pod {
        namespace: String,
        /// Shared with the identity's [`super::state::IdentityInfo`].
        labels: Arc<Labels>,
        /// Named container ports only: numbers need no resolution.
        named_ports: Vec<ContainerPort>,
    },
    Cidr,
    Host,
    Metadata(IpNet),
    /// A Service frontend address. Its signature has no CIDRs: no rule peer
    /// matches it, it is judged by its backends ([`super::services`]).
    Service {
        service: ObjectRef,
        addr: IpAddr,
    },
}

impl Kind {
    pub fn pod_namespace(&self) -> Option<&str> {
        match self {
            Kind::Pod { namespace, .. } => Some(namespace),
            _ => None,
        }
    }

    fn of_pod(pod: &Pod) -> Self {
        let mut named_ports: Vec<ContainerPort> = pod
            .ports
            .iter()
            .filter(|p| p.name.is_some())
            .cloned()
            .collect();
        named_ports.sort();
        Kind::Pod {
            namespace: pod.namespace.clone(),
            labels: Arc::new(pod.labels.clone()),
            named_ports,
        }
    }
}

/// The CIDRs policies name, indexed by prefix length: the blocks that
/// contain an address take one hash lookup per distinct length, not a scan
/// of every block (10k pods x 500 blocks was most of a full compile).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Blocks {
    all: BTreeSet<IpNet>,
    /// Distinct prefix lengths per family, ascending.
    v4_lens: Vec<u8>,
    v6_lens: Vec<u8>,
}

impl Blocks {
    /// Policy CIDRs are truncated at validation, so a block equals the
    /// truncation of any address inside it to the block's length.
    pub fn new(all: BTreeSet<IpNet>) -> Self {
        let lens = |v6: bool| -> Vec<u8> {
            let set: BTreeSet<u8> = all
                .iter()
                .filter(|b| matches!(b, IpNet::V6(_)) == v6)
                .map(IpNet::prefix_len)
                .collect();
            set.into_iter().collect()
        };
        Self {
            v4_lens: lens(false),
            v6_lens: lens(true),
            all,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &IpNet> {
        self.all.iter()
    }

    /// The blocks that contain `net`, sorted.
    pub fn containing(&self, net: &IpNet) -> Vec<IpNet> {
        let lens = match net {
            IpNet::V4(_) => &self.v4_lens,
            IpNet::V6(_) => &self.v6_lens,
        };
        lens.iter()
            .take_while(|len| **len <= net.prefix_len())
            .filter_map(|len| IpNet::new(net.addr(), *len).ok().map(|n| n.trunc()))
            .filter(|b| self.all.contains(b))
            .collect()
    }
}

/// What one pod's addresses compiled to.
#[derive(Clone, Debug)]
struct PodMemo {
    ips: Vec<IpAddr>,
    ports: Vec<ContainerPort>,
    kind: Arc<Kind>,
    /// Each address that is the pod's (not a node address), its signature,
    /// and its identity once resolved.
    addrs: Vec<(IpNet, Arc<Signature>, Option<u32>)>,
}

impl PodMemo {
    fn still_describes(&self, pod: &Pod) -> bool {
        let Kind::Pod {
            namespace, labels, ..
        } = self.kind.as_ref()
        else {
            return false;
        };
        self.ips == pod.ips
            && self.ports == pod.ports
            && *namespace == pod.namespace
            && **labels == pod.labels
    }

    fn new(pod: &Pod, node: &Node, blocks: &Blocks) -> Self {
        let kind = Arc::new(Kind::of_pod(pod));
        let addrs = pod
            .ips
            .iter()
            // A node address is the node, whatever pod claims it.
            .map(|ip| canonical_ip(*ip))
            .filter(|ip| !node.addresses.contains(ip))
            .map(|ip| {
                let net = IpNet::from(ip);
                let sig = Signature {
                    kind: kind.clone(),
                    blocks: blocks.containing(&net),
                };
                (net, Arc::new(sig), None)
            })
            .collect();
        Self {
            ips: pod.ips.clone(),
            ports: pod.ports.clone(),
            kind,
            addrs,
        }
    }
}

/// Identities that appeared, and identities that vanished, since the last
/// compile. An identity whose namespace was relabelled is in both: rules
/// selecting namespaces must look at it again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub added: BTreeSet<u32>,
    pub removed: BTreeSet<u32>,
}

/// What [`IdentityLayer::resolve`] produced.
#[derive(Clone, Debug, Default)]
pub struct Resolution {
    pub ipcache: BTreeMap<IpNet, IpcacheEntry>,
    pub delta: Delta,
    /// Pods whose addresses were signed anew (not reused from the last compile).
    pub pods_signed: usize,
}

/// The identity layer's memory across compiles.
#[derive(Clone, Debug, Default)]
pub struct IdentityLayer {
    /// The CIDRs and node addresses the pod memos were computed against.
    blocks: Blocks,
    node_addresses: Vec<IpAddr>,
    /// In the model's pod order, so that a compile walks both side by side.
    pods: BTreeMap<ObjectRef, PodMemo>,
    /// Identity id -> signature, as of the last compile.
    current: BTreeMap<u32, Arc<Signature>>,
    /// Labels of the namespaces that have pods, as of the last compile.
    namespace_labels: BTreeMap<String, Labels>,
}

struct Slot {
    net: IpNet,
    sig: Arc<Signature>,
    id: Option<u32>,
    flags: u32,
    /// For a pod's address: (index of its memo, index of the address).
    owner: Option<(usize, usize)>,
}

impl IdentityLayer {
    /// Identity id -> signature, as of the last [`IdentityLayer::resolve`].
    pub fn current(&self) -> &BTreeMap<u32, Arc<Signature>> {
        &self.current
    }

    /// Assigns every address an identity and returns the ipcache plus what
    /// changed among identities since the last call.
    pub fn resolve(
        &mut self,
        alloc: &mut Allocator<Arc<Signature>>,
        model: &Model,
        node: &Node,
        profile: &Profile,
        blocks: Blocks,
        frontends: &BTreeMap<IpAddr, Frontend>,
    ) -> Resolution {
        if blocks != self.blocks || node.addresses != self.node_addresses {
            self.pods.clear();
            self.blocks = blocks;
            self.node_addresses = node.addresses.clone();
        }
        let blocks = &self.blocks;

        // Every address with its signature, in order of precedence: CIDRs,
        // then Service frontends, metadata, node, pods; of two claims on one
        // address the later wins (a Service cannot take the metadata address
        // out of the block, nor a pod's or the node's address from them).
        let mut slots: Vec<Slot> = Vec::with_capacity(self.pods.len() + blocks.all.len() + 8);
        push_claims(&mut slots, blocks, frontends, profile, node);

        // Pods: the memo and the model are both in pod order; walk them side
        // by side, moving every memo that still describes its pod over as it
        // is (no hashing, no allocation), and signing the others anew.
        let mut pods_signed = 0;
        let mut memos = Vec::with_capacity(self.pods.len());
        let mut old = std::mem::take(&mut self.pods).into_iter().peekable();
        let mut namespace_labels = BTreeMap::new();
        let mut relabelled = BTreeSet::new();
        let mut last_namespace: Option<&str> = None;
        for (key, pod) in &model.pods {
            if pod.host_network {
                continue;
            }
            while old.next_if(|(k, _)| k < key).is_some() {}
            let memo = match old.next_if(|(k, _)| k == key) {
                Some((k, m)) if m.still_describes(pod) => (k, m),
                _ => {
                    pods_signed += 1;
                    (key.clone(), PodMemo::new(pod, node, blocks))
                }
            };
            for (ai, (net, sig, id)) in memo.1.addrs.iter().enumerate() {
                slots.push(Slot {
                    net: *net,
                    sig: sig.clone(),
                    id: *id,
                    flags: 0,
                    owner: Some((memos.len(), ai)),
                });
            }
            memos.push(memo);
            // Pods come sorted by namespace: one label check per namespace.
            if last_namespace != Some(pod.namespace.as_str()) {
                last_namespace = Some(pod.namespace.as_str());
                let labels = model.namespace_labels(&pod.namespace).into_owned();
                if self.namespace_labels.get(&pod.namespace) != Some(&labels) {
                    relabelled.insert(pod.namespace.clone());
                }
                namespace_labels.insert(pod.namespace.clone(), labels);
            }
        }
        drop(old);
        let winners = winners(slots, &mut memos);
        let (identities, ipcache) = assign(alloc, &winners);
        remember_ids(&mut memos, &ipcache, &identities);
        self.pods = memos.into_iter().collect();
        let delta = self.delta(&identities, &relabelled);
        self.namespace_labels = namespace_labels;
        self.current = identities;
        Resolution {
            ipcache,
            delta,
            pods_signed,
        }
    }

    /// Identities that appeared or vanished since the last resolve, and
    /// those of `relabelled` namespaces as both.
    fn delta(
        &self,
        identities: &BTreeMap<u32, Arc<Signature>>,
        relabelled: &BTreeSet<String>,
    ) -> Delta {
        let mut delta = Delta {
            added: identities
                .keys()
                .filter(|id| !self.current.contains_key(id))
                .copied()
                .collect(),
            removed: self
                .current
                .keys()
                .filter(|id| !identities.contains_key(id))
                .copied()
                .collect(),
        };
        // Identities of relabelled namespaces mean something else to
        // namespace selectors: rules must look at them again.
        if !relabelled.is_empty() {
            for (id, sig) in identities {
                if sig
                    .kind
                    .pod_namespace()
                    .is_some_and(|ns| relabelled.contains(ns))
                    && self.current.contains_key(id)
                {
                    delta.added.insert(*id);
                    delta.removed.insert(*id);
                }
            }
        }
        delta
    }
}

/// The claims on addresses other than pods', in order of precedence (see
/// [`IdentityLayer::resolve`]): CIDRs, Service frontends, metadata, node.
fn push_claims(
    slots: &mut Vec<Slot>,
    blocks: &Blocks,
    frontends: &BTreeMap<IpAddr, Frontend>,
    profile: &Profile,
    node: &Node,
) {
    let other = |kind: Kind, net: IpNet, flags: u32| Slot {
        net,
        sig: Arc::new(Signature {
            kind: Arc::new(kind),
            blocks: blocks.containing(&net),
        }),
        id: None,
        flags,
        owner: None,
    };
    for b in blocks.iter() {
        slots.push(other(Kind::Cidr, *b, 0));
    }
    for (addr, f) in frontends {
        slots.push(Slot {
            net: IpNet::from(*addr),
            sig: Arc::new(Signature {
                kind: Arc::new(Kind::Service {
                    service: f.service.clone(),
                    addr: *addr,
                }),
                blocks: Vec::new(),
            }),
            id: None,
            flags: services::flags(f),
            owner: None,
        });
    }
    if profile.block_metadata {
        let flags = ipcache_flags::METADATA
            | if profile.metadata_dns {
                ipcache_flags::METADATA_DNS
            } else {
                0
            };
        for m in profile.metadata_prefixes() {
            slots.push(other(Kind::Metadata(m), m, flags));
        }
    }
    for ip in &node.addresses {
        let net = IpNet::from(*ip);
        slots.push(other(Kind::Host, net, ipcache_flags::HOST));
    }
}

/// The last claim on each address; a losing pod's memo forgets its id.
fn winners(mut slots: Vec<Slot>, memos: &mut [(ObjectRef, PodMemo)]) -> Vec<Slot> {
    // Stable: among claims on one address the last pushed stays last.
    slots.sort_by_key(|s| s.net);
    let mut winners: Vec<Slot> = Vec::with_capacity(slots.len());
    for slot in slots {
        match winners.last_mut() {
            Some(last) if last.net == slot.net => {
                // The losing pod's id is not kept in use below and will
                // be released: its memo must not bring it back later.
                if let Some((m, a)) = last.owner {
                    memos[m].1.addrs[a].2 = None;
                }
                *last = slot;
            }
            _ => winners.push(slot),
        }
    }
    winners
}

/// Identities, and the ipcache. A known id is kept as it is; a new
/// signature is looked up by content, so equal pods share one id.
fn assign(
    alloc: &mut Allocator<Arc<Signature>>,
    winners: &[Slot],
) -> (BTreeMap<u32, Arc<Signature>>, BTreeMap<IpNet, IpcacheEntry>) {
    let mut identities: BTreeMap<u32, Arc<Signature>> = BTreeMap::new();
    let ipcache: BTreeMap<IpNet, IpcacheEntry> = winners
        .iter()
        .map(|slot| {
            let id = match slot.id {
                Some(id) => id,
                None => alloc.id(&slot.sig),
            };
            identities.entry(id).or_insert_with(|| slot.sig.clone());
            (
                slot.net,
                IpcacheEntry {
                    identity: id,
                    flags: slot.flags,
                },
            )
        })
        .collect();
    for id in identities.keys() {
        alloc.keep(*id);
    }
    (identities, ipcache)
}

/// Remember the ids of pods signed anew; an address another object
/// took keeps none and is looked up by content next time.
fn remember_ids(
    memos: &mut [(ObjectRef, PodMemo)],
    ipcache: &BTreeMap<IpNet, IpcacheEntry>,
    identities: &BTreeMap<u32, Arc<Signature>>,
) {
    for (_, memo) in memos.iter_mut() {
        for (net, sig, id) in memo.addrs.iter_mut().filter(|a| a.2.is_none()) {
            *id = ipcache
                .get(net)
                .map(|e| e.identity)
                .filter(|id| identities.get(id).is_some_and(|s| **s == **sig));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containing_blocks_are_found_by_prefix_length() {
        let nets: BTreeSet<IpNet> = [
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.1.2.0/24",
            "10.1.2.7/32",
            "192.168.0.0/16",
            "fd00::/8",
            "fd00:1::/32",
        ]
        .iter()
        .map(|s| s.parse().expect("net"))
        .collect();
        let blocks = Blocks::new(nets.clone());
        for addr in [
            "10.1.2.7/32",
            "10.1.2.8/32",
            "10.1.0.0/16",
            "10.2.0.1/32",
            "11.0.0.1/32",
            "192.168.3.4/32",
            "fd00:1::5/128",
            "fd01::1/128",
            "10.0.0.0/8",
        ] {
            let net: IpNet = addr.parse().expect("net");
            let scan: Vec<IpNet> = nets.iter().filter(|b| b.contains(&net)).copied().collect();
            assert_eq!(blocks.containing(&net), scan, "{addr}");
        }
    }
}
