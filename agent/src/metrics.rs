//! Prometheus metrics. Label values are bounded: counter names, directions,
//! reasons and policy names, never addresses or pod names.

use std::{
    collections::{BTreeSet, HashSet},
    sync::Mutex,
    time::Instant,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::{
    flows::{RecordAction, log::Record},
    policy::{DesiredState, Maps},
    sync::SyncReport,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CounterLabels {
    pub counter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenyLabels {
    pub direction: String,
    pub reason: String,
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map: String,
}

pub struct Metrics {
    pub registry: Registry,
    datapath: Family<CounterLabels, Counter>,
    /// Last kernel counter values seen, to add only the difference.
    datapath_seen: Mutex<Vec<u64>>,
    denied_flows: Family<DenyLabels, Counter>,
    denied_packets: Family<DenyLabels, Counter>,
    /// Flows an audited policy would deny (would-deny records).
    would_deny_flows: Family<DenyLabels, Counter>,
    /// The label sets of the three families above, so that series of deleted
    /// policies can be dropped.
    deny_series: Mutex<HashSet<DenyLabels>>,
    suppressed: Counter,
    pub map_entries: Family<MapLabels, Gauge>,
    pub map_capacity: Family<MapLabels, Gauge>,
    pub programming_seconds: Histogram,
    pub sync_errors: Counter,
    pub rejected_objects: Gauge,
    observed_flows: Gauge,
    observed_flows_dropped: Gauge,
    /// By budget reason: a closed set of four label values.
    pub policies_rejected: Family<ReasonLabels, Gauge>,
    pub revision: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    // Over 80 lines: one registration per metric, a flat list that reads
    // best as it is.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("palisade");
        let datapath = Family::<CounterLabels, Counter>::default();
        registry.register(
            "datapath_packets",
            "Packets by datapath outcome (allowed, denied, ct_hit, malformed, fragment, ...), from the per-CPU kernel counters",
            datapath.clone(),
        );
        let denied_flows = Family::<DenyLabels, Counter>::default();
        registry.register(
            "denied_flows",
            "Denied flows (one per deny record), by direction, reason and isolating policy",
            denied_flows.clone(),
        );
        let denied_packets = Family::<DenyLabels, Counter>::default();
        registry.register(
            "denied_packets",
            "Denied packets reported by deny events",
            denied_packets.clone(),
        );
        let would_deny_flows = Family::<DenyLabels, Counter>::default();
        registry.register(
            "would_deny_flows",
            "Flows passed that the policies would deny without their palisade.dev/mode: audit annotation (one per would-deny record), by direction and deciding policy",
            would_deny_flows.clone(),
        );
        let suppressed = Counter::default();
        registry.register(
            "deny_records_suppressed",
            "Deny records not written because the log budget was spent",
            suppressed.clone(),
        );
        let map_entries = Family::<MapLabels, Gauge>::default();
        registry.register(
            "map_entries",
            "Entries in each datapath map",
            map_entries.clone(),
        );
        let map_capacity = Family::<MapLabels, Gauge>::default();
        registry.register(
            "map_capacity",
            "Maximum entries of each datapath map",
            map_capacity.clone(),
        );
        let programming_seconds = Histogram::new([
            0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ]);
        registry.register(
            "policy_programming_seconds",
            "Time from noticing a change in the source to the datapath maps holding it",
            programming_seconds.clone(),
        );
        let sync_errors = Counter::default();
        registry.register(
            "sync_errors",
            "Map writes that failed (retried on the next sync)",
            sync_errors.clone(),
        );
        let rejected_objects = Gauge::default();
        registry.register(
            "rejected_objects",
            "Objects rejected by validation (their last good version stays)",
            rejected_objects.clone(),
        );
        let observed_flows = Gauge::default();
        registry.register(
            "observed_flows",
            "Records in the observed (allowed) flows table",
            observed_flows.clone(),
        );
        let observed_flows_dropped = Gauge::default();
        registry.register(
            "observed_flows_dropped",
            "New observed flows not recorded because the table, or their namespace's quarter of it, was full",
            observed_flows_dropped.clone(),
        );
        let policies_rejected = Family::<ReasonLabels, Gauge>::default();
        registry.register(
            "policies_rejected",
            "NetworkPolicies over a budget, by the limit they exceed (last admitted version or isolation in force)",
            policies_rejected.clone(),
        );
        let revision = Gauge::default();
        registry.register(
            "programmed_revision",
            "Revision of the state programmed into the datapath",
            revision.clone(),
        );
        Self {
            registry,
            datapath,
            datapath_seen: Mutex::new(Vec::new()),
            denied_flows,
            denied_packets,
            would_deny_flows,
            deny_series: Mutex::new(HashSet::new()),
            suppressed,
            map_entries,
            map_capacity,
            programming_seconds,
            sync_errors,
            rejected_objects,
            observed_flows,
            observed_flows_dropped,
            policies_rejected,
            revision,
        }
    }

    /// Sets `palisade_policies_rejected` for every reason (zeros included).
    pub fn observe_rejections(&self, state: &crate::policy::DesiredState) {
        for reason in crate::policy::budget::Reason::ALL {
            let n = state
                .rejected
                .values()
                .filter(|r| r.reason == reason)
                .count();
            self.policies_rejected
                .get_or_create(&ReasonLabels {
                    reason: reason.label().into(),
                })
                .set(n as i64);
        }
    }

    /// After a sync: its outcome, and the deny series of policies `state`
    /// no longer holds dropped; `changed_at`: when the change it programmed
    /// came in.
    pub fn observe_sync(
        &self,
        state: &DesiredState,
        report: &SyncReport,
        changed_at: Option<Instant>,
    ) {
        self.sync_errors.inc_by(report.failed as u64);
        let live = live_policies(state);
        self.forget_policies(|p| live.contains(p));
        self.revision.set(report.revision as i64);
        self.observe_rejections(state);
        if let Some(t) = changed_at {
            self.programming_seconds.observe(t.elapsed().as_secs_f64());
        }
    }

    /// The maps' capacities, as the kernel holds them.
    pub fn observe_capacities(&self, capacities: &[(&'static str, u32)]) {
        for (name, cap) in capacities {
            self.map_capacity
                .get_or_create(&MapLabels {
                    map: (*name).into(),
                })
                .set(i64::from(*cap));
        }
    }

    /// The programmed maps' sizes and the number of rejected objects.
    pub fn observe_programmed(&self, maps: &Maps, rejected_objects: usize) {
        for (name, n) in [
            ("endpoints", maps.endpoints.len()),
            ("ipcache", maps.ipcache.len()),
            ("policy", maps.policy.len()),
        ] {
            let l = MapLabels { map: name.into() };
            self.map_entries.get_or_create(&l).set(n as i64);
        }
        self.rejected_objects.set(rejected_objects as i64);
    }

    /// The observed flows table's size and what it could not hold.
    pub fn observe_flow_table(&self, records: usize, dropped: u64) {
        self.observed_flows.set(records as i64);
        self.observed_flows_dropped
            .set(i64::try_from(dropped).unwrap_or(i64::MAX));
    }

    /// Takes the kernel counters (cumulative, possibly from before this process).
    pub fn observe_datapath(&self, values: &[(palisade_common::Counter, u64)]) {
        let mut seen = self.datapath_seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.resize(values.len(), 0);
        for (i, (c, v)) in values.iter().enumerate() {
            let delta = v.saturating_sub(seen[i]);
            seen[i] = *v;
            self.datapath
                .get_or_create(&CounterLabels {
                    counter: c.name().to_string(),
                })
                .inc_by(delta);
        }
    }

    pub fn observe_record(&self, r: &Record) {
        match r {
            Record::Flow { flow, count, .. } => {
                let labels = DenyLabels {
                    direction: flow.direction.to_string(),
                    reason: flow.reason.to_string(),
                    policy: flow.policies.join(","),
                };
                match flow.action {
                    RecordAction::Deny => {
                        self.denied_flows.get_or_create(&labels).inc();
                        self.denied_packets.get_or_create(&labels).inc_by(*count);
                    }
                    RecordAction::Audit => {
                        self.would_deny_flows.get_or_create(&labels).inc();
                    }
                    RecordAction::Log => return,
                }
                if let Ok(mut s) = self.deny_series.lock() {
                    s.insert(labels);
                }
            }
            Record::Suppressed { suppressed, .. } => {
                self.suppressed.inc_by(*suppressed);
            }
        }
    }

    /// Drops the deny series that name a policy `live` no longer knows, so
    /// that deleted policies do not keep label values alive.
    pub fn forget_policies(&self, live: impl Fn(&str) -> bool) {
        let Ok(mut series) = self.deny_series.lock() else {
            return;
        };
        series.retain(|l| {
            let keep = l.policy.is_empty() || l.policy.split(',').all(&live);
            if !keep {
                self.denied_flows.remove(l);
                self.denied_packets.remove(l);
                self.would_deny_flows.remove(l);
            }
            keep
        });
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The policies that a programmed state draws on (rules' origins and
/// isolating policies), by name.
fn live_policies(state: &DesiredState) -> BTreeSet<String> {
    state
        .rules
        .values()
        .map(|r| r.origin.to_string())
        .chain(state.endpoint_info.values().flat_map(|i| {
            i.ingress_isolated_by
                .iter()
                .chain(&i.egress_isolated_by)
                .map(ToString::to_string)
        }))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::{
        flows::{Denial, Side},
        policy::Direction,
    };

    #[test]
    fn series_of_deleted_policies_are_dropped() {
        let m = Metrics::new();
        let record = |policy: &str| Record::Flow {
            time: SystemTime::UNIX_EPOCH,
            node: "n1".into(),
            flow: Denial {
                action: crate::flows::RecordAction::Deny,
                direction: Direction::Ingress,
                protocol: crate::flows::IpProtocol(palisade_common::PROTO_TCP),
                src: Side {
                    ip: "10.0.0.1".parse().expect("ip"),
                    port: Some(1),
                    pod: None,
                },
                dst: Side {
                    ip: "10.0.0.2".parse().expect("ip"),
                    port: Some(80),
                    pod: None,
                },
                reason: crate::flows::DenyReason::Policy,
                policies: vec![policy.to_string()].into(),
                tier: None,
            },
            count: 3,
            first: SystemTime::UNIX_EPOCH,
        };
        m.observe_record(&record("x/gone"));
        m.observe_record(&record("x/kept"));
        assert!(m.encode().contains("x/gone"));
        m.forget_policies(|p| p == "x/kept");
        let text = m.encode();
        assert!(!text.contains("x/gone"), "{text}");
        assert!(text.contains("x/kept"), "{text}");
    }
}
