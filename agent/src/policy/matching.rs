//! Which identities a rule's peers select, kept across compiles.
//!
//! A rule's matches depend only on its content and on the identities (their
//! signatures and their namespaces' labels). They are computed once per
//! distinct rule and then updated by the identity [`Delta`] of each compile:
//! a relabelled pod costs each cached rule a look at one or two identities,
//! not a scan of all of them. A new or edited rule (new content) is matched
//! against every identity once.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use super::identity::{Delta, Kind, Signature};
use crate::model::Model;
use crate::model::policy::{NamespaceScope, Peer, Rule};

/// A rule's peers as identities. Metadata identities are listed apart:
/// whether they match depends on the endpoint's metadata block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerMatch {
    /// The rule names no peer: every identity, and addresses without one.
    pub any: bool,
    pub loose: BTreeSet<u32>,
    /// Metadata identities matched by a block naming them exactly.
    pub metadata_exact: BTreeSet<u32>,
    /// Metadata identities matched only by a wider block.
    pub metadata_loose: BTreeSet<u32>,
}

impl PeerMatch {
    fn new(rule: &Rule) -> Self {
        Self {
            any: rule.peers.is_empty(),
            ..Self::default()
        }
    }

    fn remove(&mut self, id: u32) {
        self.loose.remove(&id);
        self.metadata_exact.remove(&id);
        self.metadata_loose.remove(&id);
    }

    fn add(&mut self, rule: &Rule, id: u32, sig: &Signature, model: &Model) {
        // A Service frontend is judged by its backends, never by peers.
        if self.any || matches!(sig.kind.as_ref(), Kind::Service { .. }) {
            return;
        }
        let mut matched = false;
        let mut matched_exact = false;
        for peer in &rule.peers {
            match peer {
                Peer::Pods { namespaces, pods } => {
                    if let Kind::Pod {
                        namespace, labels, ..
                    } = sig.kind.as_ref()
                    {
                        let ns_ok = match namespaces {
                            NamespaceScope::Own(ns) => ns == namespace,
                            NamespaceScope::Selected(sel) => {
                                sel.matches(&model.namespace_labels(namespace))
                            }
                        };
                        matched |= ns_ok && pods.matches(labels);
                    }
                }
                Peer::IpBlock { cidr, except } => {
                    let inside =
                        sig.blocks.contains(cidr) && !except.iter().any(|e| sig.blocks.contains(e));
                    if inside {
                        matched = true;
                        if let Kind::Metadata(m) = sig.kind.as_ref()
                            && m == cidr
                        {
                            matched_exact = true;
                        }
                    }
                }
            }
        }
        let set = match (sig.kind.as_ref(), matched, matched_exact) {
            (_, false, _) => return,
            (Kind::Metadata(_), true, true) => &mut self.metadata_exact,
            (Kind::Metadata(_), true, false) => &mut self.metadata_loose,
            _ => &mut self.loose,
        };
        set.insert(id);
    }
}

#[derive(Clone, Debug)]
struct Entry {
    matches: PeerMatch,
    used: bool,
}

/// Rule content -> its peer matches, for the rules of the last compile.
#[derive(Clone, Debug, Default)]
pub struct MatchCache {
    rules: HashMap<Rule, Entry>,
    /// (rule, identity) pairs evaluated since the last [`MatchCache::update`].
    evaluations: usize,
}

impl MatchCache {
    /// Brings every cached rule up to date with the identities of this
    /// compile, given what changed since the last one.
    pub fn update(
        &mut self,
        delta: &Delta,
        identities: &BTreeMap<u32, Arc<Signature>>,
        model: &Model,
    ) {
        self.evaluations = 0;
        for (rule, entry) in &mut self.rules {
            entry.used = false;
            for id in &delta.removed {
                entry.matches.remove(*id);
            }
            for id in &delta.added {
                if let Some(sig) = identities.get(id) {
                    entry.matches.add(rule, *id, sig, model);
                    self.evaluations += 1;
                }
            }
        }
    }

    /// The matches of `rule`, computed against every identity if the rule is new.
    pub fn get(
        &mut self,
        rule: &Rule,
        identities: &BTreeMap<u32, Arc<Signature>>,
        model: &Model,
    ) -> &PeerMatch {
        if !self.rules.contains_key(rule) {
            let mut matches = PeerMatch::new(rule);
            for (id, sig) in identities {
                matches.add(rule, *id, sig, model);
            }
            self.evaluations += identities.len();
            self.rules.insert(
                rule.clone(),
                Entry {
                    matches,
                    used: false,
                },
            );
        }
        let entry = self.rules.get_mut(rule).expect("inserted above");
        entry.used = true;
        &entry.matches
    }

    /// Forgets the rules this compile did not use.
    pub fn release_unused(&mut self) {
        self.rules.retain(|_, e| e.used);
    }

    pub fn evaluations(&self) -> usize {
        self.evaluations
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}
