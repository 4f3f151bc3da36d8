//! Aggregation and rate limiting of deny records.
//!
//! A flow is (direction, protocol, source, destination with ports). Its
//! packets are counted into one record that is emitted when the flow has
//! been quiet for `idle`, or is `max_age` old. Records leave through two
//! token buckets: one per source (the namespace of the pod that sent the
//! denied packet, or `-` for senders outside the cluster: `rate` per second,
//! `burst`), so one tenant's flood cannot crowd out another's denials, and
//! one for all (`total_rate`, `total_burst`). When a bucket runs dry, records
//! are counted instead and a summary record per source says how many were
//! suppressed. At most `max_open` flows are aggregated at once; past that,
//! new flows are counted as suppressed (memory stays bounded under a flood).

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use serde::Serialize;

use super::{Denial, RecordAction};

#[derive(Clone, Debug)]
pub struct LogSettings {
    pub idle: Duration,
    pub max_age: Duration,
    /// Per source.
    pub rate: f64,
    pub burst: f64,
    /// For all sources together.
    pub total_rate: f64,
    pub total_burst: f64,
    pub max_open: usize,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(2),
            max_age: Duration::from_secs(10),
            rate: 50.0,
            burst: 200.0,
            total_rate: 400.0,
            total_burst: 1600.0,
            max_open: 10_000,
        }
    }
}

/// A record as the agent writes it: `type` is `deny`, `would-deny` (an
/// audited policy's), `log` (a Calico `Log` rule's) or `suppressed`.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Flow {
        time: SystemTime,
        node: String,
        flow: Denial,
        count: u64,
        first: SystemTime,
    },
    Suppressed {
        time: SystemTime,
        node: String,
        /// Whose records: a namespace, or `-` for senders outside the cluster.
        source: String,
        suppressed: u64,
    },
}

impl Record {
    /// The record's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Flow { flow, .. } => match flow.action {
                RecordAction::Deny => "deny",
                RecordAction::Audit => "would-deny",
                RecordAction::Log => "log",
            },
            Record::Suppressed { .. } => "suppressed",
        }
    }
}

impl Serialize for Record {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct FlowLine<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            #[serde(serialize_with = "rfc3339")]
            time: &'a SystemTime,
            node: &'a str,
            #[serde(flatten)]
            flow: &'a Denial,
            count: u64,
            #[serde(serialize_with = "rfc3339")]
            first: &'a SystemTime,
        }
        #[derive(Serialize)]
        struct SuppressedLine<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            #[serde(serialize_with = "rfc3339")]
            time: &'a SystemTime,
            node: &'a str,
            source: &'a str,
            suppressed: u64,
        }
        match self {
            Record::Flow {
                time,
                node,
                flow,
                count,
                first,
            } => FlowLine {
                kind: self.kind(),
                time,
                node,
                flow,
                count: *count,
                first,
            }
            .serialize(s),
            Record::Suppressed {
                time,
                node,
                source,
                suppressed,
            } => SuppressedLine {
                kind: self.kind(),
                time,
                node,
                source,
                suppressed: *suppressed,
            }
            .serialize(s),
        }
    }
}

fn rfc3339<S: serde::Serializer>(t: &&SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(**t))
}

impl Record {
    /// One line for people.
    pub fn human(&self) -> String {
        match self {
            Record::Flow {
                time, flow, count, ..
            } => {
                let side = |s: &super::Side| {
                    let who = s.pod.clone().unwrap_or_else(|| s.ip.to_string());
                    match s.port {
                        Some(p) => format!("{who}:{p}"),
                        None => who,
                    }
                };
                let why = if flow.policies.is_empty() {
                    flow.reason.to_string()
                } else if flow.action == RecordAction::Log {
                    format!("logged-by: {}", flow.policies.join(", "))
                } else {
                    format!("isolated-by: {}", flow.policies.join(", "))
                };
                format!(
                    "{} {} {} {} {} -> {} ({why}) x{count}",
                    humantime::format_rfc3339_seconds(*time),
                    self.kind().to_uppercase(),
                    flow.direction,
                    flow.protocol,
                    side(&flow.src),
                    side(&flow.dst)
                )
            }
            Record::Suppressed {
                time,
                source,
                suppressed,
                ..
            } => format!(
                "{} {suppressed} deny records from {source} suppressed (rate limit)",
                humantime::format_rfc3339_seconds(*time)
            ),
        }
    }
}

struct Open {
    first: SystemTime,
    last: SystemTime,
    count: u64,
}

/// A token bucket.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    refilled: SystemTime,
}

impl Bucket {
    fn full(burst: f64, now: SystemTime) -> Self {
        Self {
            tokens: burst,
            refilled: now,
        }
    }

    fn refill(&mut self, now: SystemTime, rate: f64, burst: f64) {
        let dt = now
            .duration_since(self.refilled)
            .unwrap_or_default()
            .as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.refilled = now;
    }
}

/// Whose record a denial is, for fairness: the sending pod's namespace.
fn source_of(flow: &Denial) -> String {
    flow.src
        .pod
        .as_deref()
        .and_then(|p| p.split_once('/'))
        .map_or_else(|| "-".to_string(), |(ns, _)| ns.to_string())
}

pub struct DenyLog {
    settings: LogSettings,
    node: String,
    open: BTreeMap<Denial, Open>,
    total: Option<Bucket>,
    /// One bucket per source (bounded by the namespaces there are, plus `-`).
    sources: BTreeMap<String, Bucket>,
    suppressed: BTreeMap<String, u64>,
}

impl DenyLog {
    pub fn new(node: impl Into<String>, settings: LogSettings) -> Self {
        Self {
            settings,
            node: node.into(),
            open: BTreeMap::new(),
            total: None,
            sources: BTreeMap::new(),
            suppressed: BTreeMap::new(),
        }
    }

    /// Counts one denied packet.
    pub fn observe(&mut self, flow: Denial, now: SystemTime) {
        if let Some(e) = self.open.get_mut(&flow) {
            e.count += 1;
            e.last = now;
            return;
        }
        if self.open.len() >= self.settings.max_open {
            *self.suppressed.entry(source_of(&flow)).or_default() += 1;
            return;
        }
        self.open.insert(
            flow,
            Open {
                first: now,
                last: now,
                count: 1,
            },
        );
    }

    /// Takes a token from the source's bucket and the total one, if both have one.
    fn admit(&mut self, source: &str, now: SystemTime) -> bool {
        let s = &self.settings;
        let total = self
            .total
            .get_or_insert_with(|| Bucket::full(s.total_burst, now));
        total.refill(now, s.total_rate, s.total_burst);
        let own = self
            .sources
            .entry(source.to_string())
            .or_insert_with(|| Bucket::full(s.burst, now));
        own.refill(now, s.rate, s.burst);
        if own.tokens >= 1.0 && total.tokens >= 1.0 {
            own.tokens -= 1.0;
            total.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Records due at `now` (flows gone quiet or old), rate-limited.
    pub fn flush(&mut self, now: SystemTime) -> Vec<Record> {
        let due: Vec<Denial> = self
            .open
            .iter()
            .filter(|(_, o)| {
                now.duration_since(o.last).unwrap_or_default() >= self.settings.idle
                    || now.duration_since(o.first).unwrap_or_default() >= self.settings.max_age
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for flow in due {
            let Some(o) = self.open.remove(&flow) else {
                continue;
            };
            let source = source_of(&flow);
            if self.admit(&source, now) {
                out.push(Record::Flow {
                    time: now,
                    node: self.node.clone(),
                    flow,
                    count: o.count,
                    first: o.first,
                });
            } else {
                *self.suppressed.entry(source).or_default() += 1;
            }
        }
        let pending: Vec<String> = self.suppressed.keys().cloned().collect();
        for source in pending {
            if self.admit(&source, now) {
                let suppressed = self.suppressed.remove(&source).unwrap_or_default();
                out.push(Record::Suppressed {
                    time: now,
                    node: self.node.clone(),
                    source,
                    suppressed,
                });
            }
        }
        out
    }

    /// Everything still open, ignoring the windows (shutdown).
    pub fn drain(&mut self, now: SystemTime) -> Vec<Record> {
        let far = now + self.settings.max_age;
        self.flush(far)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{flows::Side, policy::Direction};

    fn flow(sport: u16) -> Denial {
        Denial {
            action: crate::flows::RecordAction::Deny,
            direction: Direction::Ingress,
            protocol: crate::flows::IpProtocol(palisade_common::PROTO_TCP),
            src: Side {
                ip: "10.0.0.1".parse().expect("ip"),
                port: Some(sport),
                pod: None,
            },
            dst: Side {
                ip: "10.0.0.2".parse().expect("ip"),
                port: Some(80),
                pod: Some("x/b".into()),
            },
            reason: crate::flows::DenyReason::Policy,
            policies: vec!["x/deny".to_string()].into(),
            tier: None,
        }
    }

    #[test]
    fn one_record_per_flow_with_a_count() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut log = DenyLog::new("n1", LogSettings::default());
        log.observe(flow(1), t0);
        log.observe(flow(1), t0 + Duration::from_secs(1));
        assert!(
            log.flush(t0 + Duration::from_millis(2500)).is_empty(),
            "still active"
        );
        let out = log.flush(t0 + Duration::from_secs(4));
        assert_eq!(out.len(), 1);
        assert!(matches!(&out[0], Record::Flow { count: 2, .. }));
        assert!(log.flush(t0 + Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn a_flood_stays_within_the_budget_and_is_summarised() {
        let settings = LogSettings {
            rate: 10.0,
            burst: 20.0,
            ..Default::default()
        };
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut log = DenyLog::new("n1", settings);
        for p in 0..1000 {
            log.observe(flow(p), t0);
        }
        let out = log.flush(t0 + Duration::from_secs(3));
        let denies = out
            .iter()
            .filter(|r| matches!(r, Record::Flow { .. }))
            .count();
        assert!(denies <= 20, "burst respected: {denies}");
        let out2 = log.flush(t0 + Duration::from_secs(4));
        let suppressed: u64 = out
            .iter()
            .chain(&out2)
            .filter_map(|r| match r {
                Record::Suppressed { suppressed, .. } => Some(*suppressed),
                _ => None,
            })
            .sum();
        assert_eq!(suppressed as usize + denies, 1000);
        let json = serde_json::to_string(&out[0]).expect("serializes");
        let _ = &json;
        assert!(
            json.contains("\"type\":\"deny\"") && json.contains("\"policies\":[\"x/deny\"]"),
            "{json}"
        );
    }

    /// A flow whose sender is a pod of namespace `ns`.
    fn from(ns: &str, sport: u16) -> Denial {
        let mut f = flow(sport);
        f.src.pod = Some(format!("{ns}/p"));
        f
    }

    #[test]
    fn one_sources_flood_does_not_hide_another_sources_denial() {
        let settings = LogSettings {
            rate: 10.0,
            burst: 20.0,
            max_open: 500,
            ..Default::default()
        };
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut log = DenyLog::new("n1", settings);
        // A flood from namespace a, bigger than the aggregation table...
        for p in 0..5000 {
            log.observe(from("a", p), t0);
        }
        // ...then one probe from namespace b.
        log.observe(from("b", 1), t0);
        assert!(log.open.len() <= 500, "aggregation is bounded");
        let out = log.flush(t0 + Duration::from_secs(3));
        let from_b = out
            .iter()
            .filter(|r| matches!(r, Record::Flow { flow, .. } if flow.src.pod.as_deref() == Some("b/p")))
            .count();
        let from_a = out
            .iter()
            .filter(|r| matches!(r, Record::Flow { flow, .. } if flow.src.pod.as_deref() == Some("a/p")))
            .count();
        assert!(from_a <= 20, "a's records stay within its budget: {from_a}");
        // b's denial was aggregated only if the table had room when it came;
        // the table is bounded, so it was counted instead: it is then in b's
        // own suppression summary, never silently lost in a's.
        let b_summary: u64 = out
            .iter()
            .chain(&log.flush(t0 + Duration::from_secs(5)))
            .filter_map(|r| match r {
                Record::Suppressed {
                    source, suppressed, ..
                } if source == "b" => Some(*suppressed),
                _ => None,
            })
            .sum();
        assert_eq!(
            from_b as u64 + b_summary,
            1,
            "b's denial is accounted for as b's"
        );
    }

    #[test]
    fn another_sources_denial_is_recorded_during_a_flood() {
        let settings = LogSettings {
            rate: 10.0,
            burst: 20.0,
            ..Default::default()
        };
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut log = DenyLog::new("n1", settings);
        for p in 0..1000 {
            log.observe(from("a", p), t0);
        }
        log.observe(from("b", 1), t0);
        let out = log.flush(t0 + Duration::from_secs(3));
        assert!(
            out.iter().any(
                |r| matches!(r, Record::Flow { flow, .. } if flow.src.pod.as_deref() == Some("b/p"))
            ),
            "b's denial is recorded whatever a sends"
        );
    }
}
