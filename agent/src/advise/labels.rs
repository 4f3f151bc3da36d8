//! Which labels select a workload: the stable ones (the pod template's),
//! and, where another workload of the namespace carries them all too, a
//! `DoesNotExist` on one of its own keys so the selector stays exact.

use std::collections::{BTreeMap, BTreeSet};

use super::WorkloadRef;
use crate::model::Labels;

/// Labels a controller stamps per pod or per revision: a selector on them
/// stops matching at the next rollout, restart or scale.
pub const UNSTABLE_LABELS: [&str; 8] = [
    "pod-template-hash",
    "controller-revision-hash",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "job-name",
    "controller-uid",
    "batch.kubernetes.io/job-name",
    "batch.kubernetes.io/controller-uid",
];

pub(super) fn is_stable(key: &str) -> bool {
    !UNSTABLE_LABELS.contains(&key)
}

pub fn stable(labels: &Labels) -> Labels {
    labels
        .iter()
        .filter(|(k, _)| is_stable(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// A pod selector: `matchLabels`, plus keys that must be absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selection {
    pub match_labels: Labels,
    pub absent: BTreeSet<String>,
}

impl Selection {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.absent.iter().all(|k| !labels.contains_key(k))
    }
}

/// What the flows say about a workload's pods.
#[derive(Clone, Debug, Default)]
pub(super) struct PodLabels {
    /// The labels every pod seen carries with the same value.
    pub(super) common: Labels,
    /// Every key any pod seen carries.
    pub(super) keys: BTreeSet<String>,
    filled: bool,
}

impl PodLabels {
    pub(super) fn add(&mut self, labels: &Labels) {
        // A record without labels says the agent did not know them (a
        // controller's pods always carry some): it must not erase them.
        if labels.is_empty() {
            return;
        }
        if self.filled {
            self.common.retain(|k, v| labels.get(k) == Some(v));
        } else {
            self.common = labels.clone();
            self.filled = true;
        }
        self.keys.extend(labels.keys().cloned());
    }
}

/// How a workload is selected, with what a reader should know about it.
#[derive(Clone, Debug, Default)]
pub(super) struct Chosen {
    /// `None`: the pods carry no label at all, so no selector picks only them.
    pub(super) selection: Option<Selection>,
    pub(super) notes: Vec<String>,
}

/// The selector of every workload, from the labels of all of them: a
/// workload's stable labels, or all its labels when none is stable, made
/// exact against the other workloads of its namespace that the flows show.
pub(super) fn choose(
    workloads: &BTreeMap<WorkloadRef, PodLabels>,
) -> BTreeMap<WorkloadRef, Chosen> {
    workloads
        .iter()
        .map(|(w, seen)| (w.clone(), choose_one(w, seen, workloads)))
        .collect()
}

fn choose_one(w: &WorkloadRef, seen: &PodLabels, all: &BTreeMap<WorkloadRef, PodLabels>) -> Chosen {
    let mut notes = Vec::new();
    let mut match_labels = stable(&seen.common);
    if match_labels.is_empty() {
        match_labels = seen.common.clone();
        if match_labels.is_empty() {
            notes.push(format!(
                "{w}: its pods have no label in common, so no selector picks only them; peers name it by address"
            ));
            return Chosen {
                selection: None,
                notes,
            };
        }
        notes.push(format!(
            "{w}: no stable label, selected by {} (changes when its pods are replaced)",
            show(&match_labels)
        ));
    }
    let mut absent = BTreeSet::new();
    for (other, theirs) in all {
        if other == w || other.namespace != w.namespace {
            continue;
        }
        if !match_labels
            .iter()
            .all(|(k, v)| theirs.common.get(k) == Some(v))
        {
            continue;
        }
        // A key the other workload always has and this one never: stable
        // keys first, since the others come and go with revisions.
        let mut extra: Vec<&String> = theirs
            .common
            .keys()
            .filter(|k| !seen.keys.contains(*k))
            .collect();
        extra.sort_by_key(|k| (!is_stable(k), (*k).clone()));
        match extra.first() {
            Some(k) => {
                absent.insert((*k).clone());
            }
            None => notes.push(format!(
                "{w}: {other} carries the same labels, so this selector picks its pods too"
            )),
        }
    }
    Chosen {
        selection: Some(Selection {
            match_labels,
            absent,
        }),
        notes,
    }
}

pub(super) fn show(labels: &Labels) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
