//! One sync: compile the model, diff against what the kernel holds, apply.
//! Generic over the writer so the whole loop runs against the in-memory
//! maps in tests.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use tracing::{debug, info, warn};

use crate::{
    model::{Model, Node},
    policy::{
        Budgets, CompileStats, Compiler, DesiredState, MapOp, MapWriter, Maps, Profile, diff,
    },
};

pub struct Syncer<W: MapWriter> {
    compiler: Compiler,
    writer: W,
    /// What the kernel holds, as far as successful writes tell.
    mirror: Maps,
    state: DesiredState,
    revision: u64,
    /// Until the first sync: take over the ids found in the kernel maps.
    adopt: bool,
}

#[derive(Debug, Default, Clone)]
pub struct SyncReport {
    pub revision: u64,
    pub ops: usize,
    pub failed: usize,
    pub compile: Duration,
    pub apply: Duration,
}

impl<W: MapWriter> Syncer<W> {
    /// Starts from what the kernel already holds (pinned maps of a previous
    /// run), so the first sync only changes what differs.
    pub fn new(writer: W, observed: Maps) -> Self {
        Self {
            compiler: Compiler::default().above(&observed),
            writer,
            adopt: !observed.is_empty(),
            mirror: observed,
            state: DesiredState::default(),
            revision: 0,
        }
    }

    /// Whether every endpoint observes its allowed flows.
    pub fn with_observation(mut self, observe: bool) -> Self {
        self.compiler = self.compiler.with_observation(observe);
        self
    }

    /// Admits policies within `budgets` (default: [`Budgets::default`]).
    pub fn with_budgets(mut self, budgets: Budgets) -> Self {
        self.compiler = self.compiler.with_budgets(budgets);
        self
    }

    pub fn state(&self) -> &DesiredState {
        &self.state
    }

    pub fn mirror(&self) -> &Maps {
        &self.mirror
    }

    pub fn writer(&self) -> &W {
        &self.writer
    }

    pub fn writer_mut(&mut self) -> &mut W {
        &mut self.writer
    }

    /// What the last compile cost (see [`CompileStats`]).
    pub fn compile_stats(&self) -> CompileStats {
        self.compiler.stats()
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Brings the maps to the model. A failed write is logged and counted;
    /// the mirror keeps the kernel's real content, so the next sync retries it.
    pub fn sync(&mut self, model: &Model, node: &Node, profile: &Profile) -> SyncReport {
        let t0 = Instant::now();
        let mut desired = self.compiler.compile(model, node, profile);
        if std::mem::take(&mut self.adopt) {
            self.compiler.adopt_ids(&self.mirror, &desired);
            desired = self.compiler.compile(model, node, profile);
        }
        let compile = t0.elapsed();
        log_rejections(&self.state, &desired);
        let mut ops = diff(&self.mirror, &desired.maps);
        by_precedence(&mut ops, &desired);
        let t1 = Instant::now();
        // A write that fails (a full map) is tried once more after the
        // removals, which may have made room; what still fails is counted,
        // left out of the mirror, and retried by the next sync. Writes never
        // displace an entry (the maps are tries, not LRU): what is
        // programmed keeps its place, and the room removals free goes to
        // the oldest rules first ([`by_precedence`]).
        let mut retry = Vec::new();
        for op in &ops {
            match self.writer.apply(op) {
                Ok(()) => {
                    let _ = self.mirror.apply(op);
                }
                Err(_) => retry.push(op),
            }
        }
        let mut failed = 0;
        let mut first_error = None;
        // Whose policy entries did not fit: the namespaces of their pods.
        let mut short: BTreeSet<&str> = BTreeSet::new();
        for op in retry {
            match self.writer.apply(op) {
                Ok(()) => {
                    let _ = self.mirror.apply(op);
                }
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert_with(|| crate::error_chain::chain(&e));
                    if let MapOp::UpsertPolicy(k, _) = op
                        && let Some(pod) = desired
                            .endpoint_info
                            .get(&k.endpoint)
                            .and_then(|i| i.pod.as_ref())
                    {
                        short.insert(&pod.namespace);
                    }
                }
            }
        }
        // One line per sync, however many writes failed: a map that is full
        // must not turn into a log flood.
        if let Some(error) = first_error {
            let namespaces: Vec<&str> = short.iter().take(10).copied().collect();
            warn!(
                failed,
                first = %error,
                ?namespaces,
                more_namespaces = short.len().saturating_sub(namespaces.len()),
                "map writes failed; retried with backoff"
            );
        }
        self.state = desired;
        self.revision += 1;
        let report = SyncReport {
            revision: self.revision,
            ops: ops.len(),
            failed,
            compile,
            apply: t1.elapsed(),
        };
        debug!(?report, "synced");
        report
    }
}

/// One line when a policy becomes over budget (or its reason changes) and
/// one when it fits again; nothing while it stays as it was.
fn log_rejections(old: &DesiredState, new: &DesiredState) {
    for (policy, r) in &new.rejected {
        if old.rejected.get(policy) != Some(r) {
            warn!(%policy, reason = r.reason.label(), "{r}");
        }
    }
    for policy in old.rejected.keys() {
        if !new.rejected.contains_key(policy) {
            info!(%policy, "policy within its budgets again (or deleted): enforced as written");
        }
    }
}

/// Orders the writes of one kind so that on a full map the older claims
/// win: policy entries by rule id (ids only grow, and an edited policy keeps
/// its rules' ids, so a newcomer's entries come after every rule that was
/// there before), ipcache entries of pods, nodes and Services before policy
/// CIDRs (which a tenant can multiply). The order between kinds is
/// [`diff`]'s, which keeps every transition at most as strict as both ends.
fn by_precedence(ops: &mut [MapOp], state: &DesiredState) {
    let is_cidr = |identity: u32| {
        matches!(
            state.identities.get(&identity),
            Some(crate::policy::state::IdentityInfo::Cidr(_))
        )
    };
    // Stable: ops of equal rank stay in diff's (key) order.
    ops.sort_by_key(|op| match op {
        MapOp::UpsertPolicy(_, rule) => (0, *rule),
        MapOp::UpsertIpcache(_, e) => (1, u32::from(is_cidr(e.identity))),
        MapOp::UpsertEndpoint(..) => (2, 0),
        MapOp::UpsertIface(..) => (3, 0),
        MapOp::DeleteIface(_) => (4, 0),
        MapOp::DeleteEndpoint(_) => (5, 0),
        MapOp::DeleteIpcache(_) => (6, 0),
        MapOp::DeletePolicy(_) => (7, 0),
    });
}
