//! Stable numeric ids for identities, endpoints and rules.
//!
//! Ids only grow: an id that is released is never handed out again while
//! the agent runs, so a map entry written under an old meaning can never be
//! read under a new one while a diff is being applied.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug)]
pub struct Allocator<K: Ord> {
    ids: BTreeMap<K, u32>,
    next: u32,
    used: BTreeSet<u32>,
}

impl<K: Ord + Clone> Allocator<K> {
    pub fn starting_at(first: u32) -> Self {
        Self {
            ids: BTreeMap::new(),
            next: first,
            used: BTreeSet::new(),
        }
    }

    /// The id of `key`, allocating one if it has none; marks it used.
    pub fn id(&mut self, key: &K) -> u32 {
        let id = match self.ids.get(key) {
            Some(id) => *id,
            None => {
                let id = self.next;
                self.next = self.next.checked_add(1).expect("u32 ids exhausted");
                self.ids.insert(key.clone(), id);
                id
            }
        };
        self.used.insert(id);
        id
    }

    /// Marks an id handed out earlier as still in use, without a lookup.
    pub fn keep(&mut self, id: u32) {
        self.used.insert(id);
    }

    /// Forget every key not asked for since the last call.
    pub fn release_unused(&mut self) {
        let used = std::mem::take(&mut self.used);
        self.ids.retain(|_, id| used.contains(id));
    }

    /// Renumbers keys: every key whose id is in `remap` gets the mapped id.
    /// Ids stay unique: a target id already held by another key is skipped.
    pub fn renumber(&mut self, remap: &std::collections::BTreeMap<u32, u32>) {
        let taken: BTreeSet<u32> = self
            .ids
            .values()
            .filter(|id| !remap.contains_key(id))
            .copied()
            .collect();
        let mut given = BTreeSet::new();
        for id in self.ids.values_mut() {
            if let Some(new) = remap.get(id)
                && !taken.contains(new)
                && given.insert(*new)
            {
                *id = *new;
            }
        }
        if let Some(max) = self.ids.values().max() {
            self.next = self.next.max(max.saturating_add(1));
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_never_reused() {
        let mut a = Allocator::starting_at(10);
        assert_eq!(a.id(&"x"), 10);
        assert_eq!(a.id(&"y"), 11);
        assert_eq!(a.id(&"x"), 10);
        a.release_unused();
        a.id(&"y");
        a.release_unused();
        assert_eq!(a.id(&"y"), 11);
        assert_eq!(a.id(&"x"), 12, "released ids are not reused");
    }
}
