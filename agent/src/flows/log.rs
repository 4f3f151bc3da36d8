//! Aggregation and rate limiting of deny records.
//!
//! A flow is (direction, protocol, source, destination with ports). Its
//! packets are counted into one record that is emitted when the flow has
//! been quiet for `idle`, or is `max_age` old. Records leave through a token
//! bucket (`rate` per second, `burst`); when it runs dry, records are counted
//! instead and a summary record says how many were suppressed.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use serde::Serialize;

use super::Denial;

#[derive(Clone, Debug)]
pub struct LogSettings {
    pub idle: Duration,
    pub max_age: Duration,
    pub rate: f64,
    pub burst: f64,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(2),
            max_age: Duration::from_secs(10),
            rate: 50.0,
            burst: 200.0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Record {
    Deny {
        #[serde(serialize_with = "rfc3339")]
        time: SystemTime,
        node: String,
        #[serde(flatten)]
        flow: Denial,
        count: u64,
        #[serde(serialize_with = "rfc3339")]
        first: SystemTime,
    },
    Suppressed {
        #[serde(serialize_with = "rfc3339")]
        time: SystemTime,
        node: String,
        suppressed: u64,
    },
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

impl Record {
    /// One line for people.
    pub fn human(&self) -> String {
        match self {
            Record::Deny {
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
                    flow.reason.clone()
                } else {
                    format!("isolated-by: {}", flow.policies.join(", "))
                };
                format!(
                    "{} DENY {} {} {} -> {} ({why}) x{count}",
                    humantime::format_rfc3339_seconds(*time),
                    flow.direction,
                    flow.protocol,
                    side(&flow.src),
                    side(&flow.dst)
                )
            }
            Record::Suppressed {
                time, suppressed, ..
            } => format!(
                "{} {suppressed} deny records suppressed (rate limit)",
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

pub struct DenyLog {
    settings: LogSettings,
    node: String,
    open: BTreeMap<Denial, Open>,
    tokens: f64,
    refilled: Option<SystemTime>,
    suppressed: u64,
}

impl DenyLog {
    pub fn new(node: impl Into<String>, settings: LogSettings) -> Self {
        let tokens = settings.burst;
        Self {
            settings,
            node: node.into(),
            open: BTreeMap::new(),
            tokens,
            refilled: None,
            suppressed: 0,
        }
    }

    /// Counts one denied packet.
    pub fn observe(&mut self, flow: Denial, now: SystemTime) {
        let e = self.open.entry(flow).or_insert(Open {
            first: now,
            last: now,
            count: 0,
        });
        e.count += 1;
        e.last = now;
    }

    fn refill(&mut self, now: SystemTime) {
        if let Some(prev) = self.refilled {
            let dt = now.duration_since(prev).unwrap_or_default().as_secs_f64();
            self.tokens = (self.tokens + dt * self.settings.rate).min(self.settings.burst);
        }
        self.refilled = Some(now);
    }

    /// Records due at `now` (flows gone quiet or old), rate-limited.
    pub fn flush(&mut self, now: SystemTime) -> Vec<Record> {
        self.refill(now);
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
            if self.tokens >= 1.0 {
                self.tokens -= 1.0;
                out.push(Record::Deny {
                    time: now,
                    node: self.node.clone(),
                    flow,
                    count: o.count,
                    first: o.first,
                });
            } else {
                self.suppressed += 1;
            }
        }
        if self.suppressed > 0 && self.tokens >= 1.0 {
            self.tokens -= 1.0;
            out.push(Record::Suppressed {
                time: now,
                node: self.node.clone(),
                suppressed: self.suppressed,
            });
            self.suppressed = 0;
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
            direction: Direction::Ingress,
            protocol: "TCP".into(),
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
            reason: "policy".into(),
            policies: vec!["x/deny".into()],
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
        assert!(matches!(&out[0], Record::Deny { count: 2, .. }));
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
            .filter(|r| matches!(r, Record::Deny { .. }))
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
        assert!(
            json.contains("\"type\":\"deny\"") && json.contains("\"policies\":[\"x/deny\"]"),
            "{json}"
        );
    }
}
