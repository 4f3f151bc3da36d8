//! The agent's state between wakes of the daemon loop, and what each kind
//! of wake does to it: source batches, deny events, ticks.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, mpsc},
    time::{Duration, Instant, SystemTime},
};

use aya::maps::{MapData, PerCpuArray};
use palisade_common::{FlowEvent, Reason};
use tracing::{info, warn};

use super::{Options, backoff::Backoff};
use crate::{
    api::Shared,
    dataplane::{
        Datapath, KernelMaps,
        attach::Attacher,
        cgroups::{self, CgroupBlocks},
        conntrack::Sweep,
        counters, interfaces,
    },
    error_chain::chain,
    flows::{
        self, PolicyCache,
        allowed::{self, Directory},
        log::DenyLog,
        sink::Sink,
    },
    index::{Index, Kind},
    model::{Model, Node, ObjectRef, policy::Policy},
    policy::{
        Profile,
        ordered::{self, Layers},
    },
    source::{Batch, SourceEvent},
    status::Status,
    sync::Syncer,
};

/// Who holds each pod address: the pod and its uid.
type Owners = BTreeMap<IpAddr, (ObjectRef, String)>;

/// What the agent drives in the kernel, opened by the daemon.
pub(super) struct Kernel {
    pub dp: Datapath,
    pub syncer: Syncer<KernelMaps>,
    pub counters: PerCpuArray<MapData, u64>,
    pub netlink: rtnetlink::Handle,
    /// To the conntrack thread.
    pub sweeps: mpsc::Sender<Sweep>,
}

pub(super) struct Agent {
    shared: Arc<Shared>,
    dp: Datapath,
    syncer: Syncer<KernelMaps>,
    counters: PerCpuArray<MapData, u64>,
    netlink: rtnetlink::Handle,
    sweeps: mpsc::Sender<Sweep>,
    profile: Profile,
    /// Node addresses are looked up unless given.
    lookup_addresses: bool,
    revoke_on_policy_change: bool,
    status_file: Option<PathBuf>,

    index: Index,
    /// Writes wait until every kind has been listed once.
    listed: BTreeSet<Kind>,
    /// The source's version of what it last sent.
    digest: String,
    node: Node,
    /// To notice an address changing hands.
    owners: Owners,
    /// Addresses whose holder changed since the last sweep.
    reassigned: BTreeSet<IpAddr>,
    /// Interfaces that host routes point at.
    routed: BTreeSet<u32>,
    /// Something changed that is not programmed yet.
    dirty: bool,
    /// Of that, objects that place pods or addresses (not only policies).
    pods_changed: bool,
    backoff: Backoff,
    /// When the first change not yet programmed came in.
    changed_at: Option<Instant>,
    ready: bool,
    last_sync_ops: usize,
    last_metrics: Instant,

    deny_log: DenyLog,
    sink: Sink,
    /// Who holds each address, for attributing events.
    directory: Directory,
    /// The isolating policies' names per endpoint, shared by deny records.
    names: PolicyCache,

    attacher: Attacher,
    cgroups: CgroupBlocks,
}

impl Agent {
    pub(super) fn new(opts: &Options, shared: Arc<Shared>, kernel: Kernel) -> anyhow::Result<Self> {
        let index = Index::default();
        let sink = Sink::open(
            opts.deny_log,
            opts.deny_log_file.as_deref(),
            opts.deny_log_file_max_bytes,
            shared.clone(),
        )?;
        Ok(Self {
            shared,
            dp: kernel.dp,
            syncer: kernel.syncer,
            counters: kernel.counters,
            netlink: kernel.netlink,
            sweeps: kernel.sweeps,
            profile: opts.profile.clone(),
            lookup_addresses: opts.node_addresses.is_empty(),
            revoke_on_policy_change: opts.revoke_on_policy_change,
            status_file: opts.status_file.clone(),
            listed: BTreeSet::new(),
            digest: String::new(),
            node: Node {
                name: opts.node_name.clone(),
                addresses: opts.node_addresses.clone(),
                interfaces: BTreeMap::new(),
            },
            owners: address_owners(index.model()),
            reassigned: BTreeSet::new(),
            routed: BTreeSet::new(),
            dirty: true,
            pods_changed: false,
            backoff: Backoff::default(),
            changed_at: None,
            ready: false,
            last_sync_ops: 0,
            last_metrics: Instant::now() - Duration::from_secs(60),
            deny_log: DenyLog::new(&opts.node_name, opts.log_settings.clone()),
            sink,
            directory: Directory::new(index.model(), &opts.profile, &opts.node_addresses),
            names: PolicyCache::default(),
            attacher: Attacher::new(opts.interface_prefixes.clone()),
            cgroups: CgroupBlocks::new(opts.cgroup_root.clone().or_else(cgroups::cgroup2_root)),
            index,
        })
    }

    /// Applies source batches; everything queued goes into the same sync.
    pub(super) fn on_batch(&mut self, batches: impl IntoIterator<Item = Batch>) {
        self.changed_at.get_or_insert_with(Instant::now);
        let mut pods_changed = false;
        for batch in batches {
            pods_changed |= batch.iter().any(moves_addresses);
            apply_batch(&mut self.index, &mut self.listed, &mut self.digest, batch);
        }
        // A policy edit (the common change) leaves who holds which address
        // alone: no O(pods) rebuild between it and its map writes.
        if pods_changed {
            self.pods_changed = true;
            self.rebuild_directory();
            let owners = address_owners(self.index.model());
            self.reassigned
                .extend(changed_owners(&self.owners, &owners));
            self.owners = owners;
        }
        self.dirty = true;
        // A change is programmed at once, backoff or not.
        self.backoff.wake();
    }

    /// Events from the ring (denials and observed allowed flows) or flows
    /// the conntrack thread cut, attributed by the state programmed now.
    pub(super) fn on_events(&mut self, events: impl IntoIterator<Item = FlowEvent>) {
        let now = SystemTime::now();
        let model = self.index.model();
        let events: Vec<FlowEvent> = events.into_iter().collect();
        let observing = events.iter().any(|e| e.reason == Reason::Observed as u8);
        let logs = observing && model.ordered.values().any(|p| p.logs());
        let audits = observing && !model.audited.is_empty();
        // Built once per batch, and only what the events need: ordered
        // policies name the rule or tier end that denied (and Log rules),
        // audited ones need the policy set as it would be without audit.
        let network: Vec<Policy> = if model.ordered.is_empty() {
            Vec::new()
        } else {
            ordered::network_policies(model, &self.profile)
        };
        let layers = (!model.ordered.is_empty()).then(|| Layers::new(model, &network));
        let log_subjects =
            logs.then(|| Layers::from_parts(model.ordered.values().filter(|p| p.logs()), []));
        let with_audited: Vec<Policy> = if audits {
            ordered::network_policies_with_audited(model, &self.profile)
        } else {
            Vec::new()
        };
        let would_be = audits.then(|| Layers::with_audited(model, &with_audited));
        let audit_subjects = audits.then(|| {
            Layers::from_parts(
                model.audited.ordered.values(),
                model.audited.policies.values(),
            )
        });
        let judges = allowed::Judges {
            logging: layers.as_ref().zip(log_subjects.as_ref()),
            would_be: would_be.as_ref().zip(audit_subjects.as_ref()),
        };
        let mut observed = self.shared.observed();
        for ev in events {
            if ev.reason == Reason::Observed as u8 {
                for c in allowed::connections(&ev, model, &self.directory) {
                    observed.record(c, now);
                }
                for d in allowed::rejudge(&ev, model, &self.directory, &judges) {
                    self.deny_log.observe(d, now);
                }
                continue;
            }
            if let Some(mut d) = flows::attribute(
                &ev,
                self.syncer.state(),
                &mut self.names,
                self.directory.pods(),
            ) {
                let logged = layers.as_ref().and_then(|layers| {
                    flows::name_deciding_policy(&mut d, model, &self.directory, layers)
                });
                self.deny_log.observe(d, now);
                if let Some(l) = logged {
                    self.deny_log.observe(l, now);
                }
            }
        }
    }

    /// Brings the node, the maps, attachments and cgroups up to date and
    /// publishes deny records and status.
    pub(super) async fn on_tick(&mut self) {
        // A policy change is programmed before the node's refreshes (netlink
        // dumps), from the node as last seen: they only matter to changes
        // of pods, which they then follow within this tick.
        if !self.pods_changed {
            self.sync_when_due();
        }
        if self.lookup_addresses {
            self.refresh_addresses().await;
        }
        self.refresh_bindings().await;
        self.sync_when_due();
        // Attached to new veths before reporting ready for them.
        self.attacher
            .reconcile(&mut self.dp, &self.netlink, &self.routed)
            .await;
        self.cgroups.reconcile(&mut self.dp, self.syncer.state());
        self.sink.emit(self.deny_log.flush(SystemTime::now()));
        self.publish(self.status());
    }

    /// Flushes what the deny log still holds, on a graceful stop.
    pub(super) fn stop(&mut self) {
        self.sink.emit(self.deny_log.drain(SystemTime::now()));
    }

    pub(super) fn status(&self) -> Status {
        let state = self.syncer.state();
        Status {
            ready: self.ready,
            revision: self.syncer.revision(),
            last_sync_ops: self.last_sync_ops,
            source_digest: self.digest.clone(),
            attached: self.dp.attached().values().cloned().collect(),
            cgroups: self.cgroups.attached().map(|b| b.pod.to_string()).collect(),
            cgroups_pending: self
                .cgroups
                .pending(state)
                .map(|b| b.pod.to_string())
                .collect(),
            endpoints: state.maps.endpoints.len(),
            map_entries: self.syncer.mirror().len(),
            rejected: self
                .index
                .rejected()
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect(),
            over_budget: state.rejected.values().map(ToString::to_string).collect(),
            unsupported: None,
        }
    }

    async fn refresh_addresses(&mut self) {
        match interfaces::local_addresses(&self.netlink).await {
            Ok(addrs) if addrs != self.node.addresses => {
                self.node.addresses = addrs;
                // Records name the node's addresses as the node.
                self.rebuild_directory();
                self.dirty = true;
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "listing node addresses"),
        }
    }

    /// Which veth each local pod address is routed to (its binding); the
    /// veths of host routes the API has not told of yet are a new pod's.
    async fn refresh_bindings(&mut self) {
        let local_ips = local_pod_ips(self.index.model(), &self.node.name);
        match interfaces::host_routes(&self.netlink).await {
            Ok(routes) => {
                self.routed = routes.values().copied().collect();
                let bound: BTreeMap<IpAddr, u32> = routes
                    .into_iter()
                    .filter(|(ip, _)| local_ips.contains(ip))
                    .collect();
                if bound != self.node.interfaces {
                    self.node.interfaces = bound;
                    self.dirty = true;
                }
            }
            Err(e) => warn!(error = %e, "listing routes"),
        }
    }

    fn sync_when_due(&mut self) {
        if self.dirty && Kind::all_required(&self.listed) && self.backoff.due(Instant::now()) {
            self.sync();
        }
    }

    fn rebuild_directory(&mut self) {
        self.directory = Directory::new(self.index.model(), &self.profile, &self.node.addresses);
    }

    fn sync(&mut self) {
        let report = self
            .syncer
            .sync(self.index.model(), &self.node, &self.profile);
        self.names.clear();
        info!(
            revision = report.revision,
            ops = report.ops,
            failed = report.failed,
            compile_us = report.compile.as_micros() as u64,
            apply_us = report.apply.as_micros() as u64,
            since_change_us = self.changed_at.map(|t| t.elapsed().as_micros() as u64),
            "programmed"
        );
        self.dirty = report.failed > 0;
        // A failed sync is retried after the next refresh of the bindings.
        self.pods_changed &= self.dirty;
        if self.dirty {
            self.backoff.failed(Instant::now());
        } else {
            self.backoff.succeeded();
        }
        self.last_sync_ops = report.ops;
        if report.ops > 0 || !self.reassigned.is_empty() {
            let _ = self.sweeps.send(Sweep {
                revoke: self.revoke_on_policy_change,
                reassigned: std::mem::take(&mut self.reassigned),
            });
        }
        self.ready = true;
        // What `GET /explain` answers from: the model just programmed.
        self.shared.publish_model(crate::api::ModelSnapshot {
            model: self.index.model().clone(),
            profile: self.profile.clone(),
            node: self.node.clone(),
            pins: self.dp.pins().clone(),
        });
        self.shared
            .metrics
            .observe_sync(self.syncer.state(), &report, self.changed_at.take());
    }

    /// The status to the file (when it changed) and the HTTP endpoint, and
    /// the gauges at most once a second.
    fn publish(&mut self, status: Status) {
        if let Some(path) = &self.status_file
            && self
                .shared
                .status
                .read()
                .map(|s| *s != status)
                .unwrap_or(true)
            && let Err(e) = status.write(path)
        {
            warn!(error = %e, path = %path.display(), "writing status");
        }
        if self.last_metrics.elapsed() >= Duration::from_secs(1) {
            self.last_metrics = Instant::now();
            let metrics = &self.shared.metrics;
            metrics.observe_datapath(&counters::read(&self.counters));
            metrics.observe_programmed(self.syncer.mirror(), self.index.rejected().len());
            let table = self.shared.observed();
            metrics.observe_flow_table(table.len(), table.dropped());
        }
        if let Ok(mut s) = self.shared.status.write() {
            *s = status;
        }
    }
}

/// Applies one batch of source events to the index (pure but for logs).
pub fn apply_batch(
    index: &mut Index,
    listed: &mut BTreeSet<Kind>,
    version: &mut String,
    batch: Batch,
) {
    for ev in batch {
        match ev {
            SourceEvent::Reset { kind, objects } => {
                for e in index.reset(kind, &objects) {
                    warn!(error = %chain(&e), "object rejected; its last good version stays in force");
                }
                listed.insert(kind);
            }
            SourceEvent::Apply(o) => {
                if let Err(e) = index.apply(&o) {
                    warn!(error = %chain(&e), "object rejected; its last good version stays in force");
                }
            }
            SourceEvent::Delete(key) => index.delete(&key),
            SourceEvent::Rejected(e) => warn!(error = %chain(&*e), "source object rejected"),
            SourceEvent::Version(v) => *version = v,
            SourceEvent::Trouble(e) => {
                warn!(error = %chain(&e), "source trouble; enforcement unchanged, retrying")
            }
        }
    }
}

/// Whether an event may change who holds an address (anything but a
/// policy: pods, namespaces, Services and their slices).
fn moves_addresses(ev: &SourceEvent) -> bool {
    let kind = match ev {
        SourceEvent::Reset { kind, .. } => *kind,
        SourceEvent::Apply(o) => o.key().kind,
        SourceEvent::Delete(key) => key.kind,
        SourceEvent::Rejected(_) | SourceEvent::Version(_) | SourceEvent::Trouble(_) => {
            return false;
        }
    };
    // Every kind named: a new one is a decision, not a default.
    match kind {
        Kind::Namespace | Kind::Pod | Kind::Service | Kind::EndpointSlice => true,
        Kind::NetworkPolicy
        | Kind::ClusterNetworkPolicy
        | Kind::CalicoNetworkPolicy
        | Kind::CalicoGlobalNetworkPolicy
        | Kind::CalicoTier => false,
    }
}

/// Every pod address with the pod (and its uid) that holds it.
fn address_owners(model: &Model) -> Owners {
    model
        .pods
        .values()
        .filter(|p| !p.host_network)
        .flat_map(|p| p.ips.iter().map(move |ip| (*ip, (p.key(), p.uid.clone()))))
        .collect()
}

/// Addresses whose holder differs between two snapshots (including ones
/// that appeared or vanished).
fn changed_owners<'a>(old: &'a Owners, new: &'a Owners) -> impl Iterator<Item = IpAddr> + 'a {
    let gone = old
        .iter()
        .filter(|(ip, o)| new.get(ip) != Some(o))
        .map(|(ip, _)| *ip);
    let came = new.keys().filter(|ip| !old.contains_key(ip)).copied();
    gone.chain(came)
}

/// Addresses of this node's pods that a veth carries.
fn local_pod_ips(model: &Model, node: &str) -> BTreeSet<IpAddr> {
    model
        .pods
        .values()
        .filter(|p| p.node == node && !p.host_network)
        .flat_map(|p| p.ips.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::ObjectKey;

    /// Policy kinds never move addresses (their batches skip the address
    /// rebuild and are programmed first); every other kind may.
    #[test]
    fn only_policies_leave_addresses_where_they_are() {
        for kind in Kind::ALL {
            let key = ObjectKey {
                kind,
                object: ObjectRef {
                    namespace: "x".into(),
                    name: "y".into(),
                },
            };
            let moves = moves_addresses(&SourceEvent::Delete(key));
            let reset = moves_addresses(&SourceEvent::Reset {
                kind,
                objects: Vec::new(),
            });
            assert_eq!(moves, reset, "{kind:?}");
            let policy = !matches!(
                kind,
                Kind::Namespace | Kind::Pod | Kind::Service | Kind::EndpointSlice
            );
            assert_eq!(moves, !policy, "{kind:?}");
        }
        assert!(!moves_addresses(&SourceEvent::Version("v".into())));
    }
}
