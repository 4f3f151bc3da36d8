//! The sync loop against in-memory maps: incremental edits touch little,
//! failed writes are retried, the index keeps the last good object.

mod support;

use palisade_agent::{
    index::{Index, Kind},
    policy::{MapOp, MapWriter, Maps, Profile},
    sync::Syncer,
};
use support::*;

const NP_B: &str = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]\n";

#[test]
fn one_label_change_touches_few_entries() {
    let mut syncer = Syncer::new(Maps::default(), Maps::default());
    let m1 = model(&(xyz() + NP_B));
    let full = syncer.sync(&m1, &node(), &Profile::default());
    assert!(full.ops > 20, "first sync writes everything ({})", full.ops);
    let again = syncer.sync(&m1, &node(), &Profile::default());
    assert_eq!(again.ops, 0, "an unchanged model writes nothing");
    let m2 = model(
        &(xyz().replace(
            "{name: c, namespace: z, labels: {pod: c}}",
            "{name: c, namespace: z, labels: {pod: b}}",
        ) + NP_B),
    );
    let edit = syncer.sync(&m2, &node(), &Profile::default());
    assert!(
        edit.ops > 0 && edit.ops <= 4,
        "a relabel rewrites the pod's identity and nothing else ({} ops)",
        edit.ops
    );
    assert_eq!(syncer.mirror(), &syncer.state().maps);
}

/// A writer that fails every write while `broken` is set.
#[derive(Default)]
struct Flaky {
    maps: Maps,
    broken: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("injected failure")]
struct Injected;

impl MapWriter for Flaky {
    type Error = Injected;
    fn apply(&mut self, op: &MapOp) -> Result<(), Injected> {
        if self.broken && matches!(op, MapOp::UpsertPolicy(..)) {
            return Err(Injected);
        }
        let _ = self.maps.apply(op);
        Ok(())
    }
}

#[test]
fn failed_writes_are_retried_and_the_mirror_stays_true() {
    let mut syncer = Syncer::new(
        Flaky {
            broken: true,
            ..Default::default()
        },
        Maps::default(),
    );
    let m = model(&(xyz() + NP_B));
    let r = syncer.sync(&m, &node(), &Profile::default());
    assert!(r.failed > 0);
    assert_eq!(
        syncer.mirror(),
        &syncer.writer().maps,
        "mirror holds what the kernel holds"
    );
    syncer.writer_mut().broken = false;
    let r = syncer.sync(&m, &node(), &Profile::default());
    assert_eq!(r.failed, 0);
    assert_eq!(syncer.writer().maps, syncer.state().maps, "converged");
}

#[test]
fn an_invalid_update_keeps_the_last_good_policy() {
    let mut index = Index::default();
    for o in objects(&(xyz() + NP_B)) {
        index.apply(&o).expect("valid");
    }
    let good = index.model().clone();
    let bad = objects(&NP_B.replace("pod: b}}}]}]", "pod: b}}}], ports: [{port: 0}]}]"))
        .pop()
        .expect("object");
    let err =
        palisade_agent::error_chain::chain(&index.apply(&bad).expect_err("port 0 is invalid"));
    assert!(
        err.contains("NetworkPolicy x/p") && err.contains("ingress[0].ports[0]"),
        "{err}"
    );
    assert_eq!(index.model(), &good, "the model is unchanged");
    assert_eq!(index.rejected().len(), 1);
}

#[test]
fn a_relist_deletes_what_is_gone() {
    let mut index = Index::default();
    for o in objects(&(xyz() + NP_B)) {
        index.apply(&o).expect("valid");
    }
    assert_eq!(index.model().policies.len(), 1);
    let errors = index.reset(Kind::NetworkPolicy, &[]);
    assert!(errors.is_empty());
    assert!(index.model().policies.is_empty());
    let pods: Vec<_> = objects(&xyz())
        .into_iter()
        .filter(|o| o.key().kind == Kind::Pod)
        .take(2)
        .collect();
    index.reset(Kind::Pod, &pods);
    assert_eq!(index.model().pods.len(), 2);
}

#[test]
fn a_restarted_agent_rewrites_nothing_for_an_unchanged_model() {
    let m = model(&(xyz() + NP_B));
    let mut first = Syncer::new(Maps::default(), Maps::default());
    first.sync(&m, &node(), &Profile::default());
    let kernel = first.writer().clone();
    // A new agent finds the maps pinned, with ids it did not allocate.
    let mut second = Syncer::new(kernel.clone(), kernel.clone());
    let r = second.sync(&m, &node(), &Profile::default());
    assert_eq!(r.ops, 0, "adopted ids reproduce the pinned maps");
    assert_eq!(second.writer(), &kernel);
    // And a change after the restart is still minimal.
    let m2 = model(&(xyz() + &NP_B.replace("pod: b}}}]}]", "pod: c}}}]}]")));
    let r = second.sync(&m2, &node(), &Profile::default());
    assert!(r.ops > 0 && r.ops <= 6, "{} ops", r.ops);
}

/// A policy map that holds at most `capacity` entries, as a kernel map does:
/// a write into a full map fails and displaces nothing.
struct Bounded {
    maps: Maps,
    capacity: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("policy map full")]
struct Full;

impl MapWriter for Bounded {
    type Error = Full;
    fn apply(&mut self, op: &MapOp) -> Result<(), Full> {
        if let MapOp::UpsertPolicy(k, _) = op
            && !self.maps.policy.contains_key(k)
            && self.maps.policy.len() >= self.capacity
        {
            return Err(Full);
        }
        let _ = self.maps.apply(op);
        Ok(())
    }
}

const VICTIM_80: &str = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: y}\nspec:\n  podSelector: {matchLabels: {pod: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: 80}]}]\n";

#[test]
fn on_a_full_map_a_newcomer_never_takes_the_room_of_an_edit() {
    let profile = Profile::default();
    let mut syncer = Syncer::new(
        Bounded {
            maps: Maps::default(),
            capacity: usize::MAX,
        },
        Maps::default(),
    );
    let m1 = model(&(xyz() + VICTIM_80));
    assert_eq!(syncer.sync(&m1, &node(), &profile).failed, 0);
    // The map is now exactly full.
    let programmed = syncer.writer().maps.policy.len();
    syncer.writer_mut().capacity = programmed;

    // Namespace x (whose endpoints sort first) adds a policy of many
    // entries while y edits its port: y's edit frees one entry and needs one.
    let tenant = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: big, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {}}], ports: [{port: 1, endPort: 1000}]}]\n";
    let m2 = model(&(xyz() + &VICTIM_80.replace("port: 80", "port: 8080") + tenant));
    let r = syncer.sync(&m2, &node(), &profile);
    assert!(r.failed > 0, "the newcomer did not fit");
    let maps = &syncer.writer().maps;
    assert_eq!(maps.policy.len(), programmed, "nothing was displaced");
    let (b, a) = (xyz_ip("y/b"), xyz_ip("y/a"));
    assert!(
        palisade_agent::policy::sim::connection_allowed(maps, b, a, 6, 8080),
        "the edit got the room it freed"
    );
    assert!(!palisade_agent::policy::sim::connection_allowed(
        maps, b, a, 6, 80
    ));
    assert_eq!(syncer.mirror(), maps, "the mirror holds what the map holds");
}
