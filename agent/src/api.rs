//! The agent's local HTTP endpoint (`--listen`, default 127.0.0.1:9965):
//!
//! * `GET /metrics`: Prometheus text format;
//! * `GET /healthz`: 200 while the agent runs; `GET /readyz`: 200 once the
//!   first full sync is programmed, 503 before;
//! * `GET /status`: what is programmed (JSON);
//! * `GET /flows[?follow=true][&namespace=NS][&pod=NS/POD][&limit=N]`: deny
//!   records as JSON lines, the recent ones, then (follow) new ones as they come.
//!   `palisade flows` reads this.
//! * `GET /flows/allowed[?namespace=NS][&pod=NS/POD]`: the observed allowed
//!   connections, one aggregated record per workload pair, port and
//!   direction (JSON lines); `palisade flows --allowed` and `palisade
//!   advise` read this.
//! * `GET /explain?from=..&to=..[&port=PORT/PROTO][&format=json]`: why a
//!   connection is allowed or denied, from the model of the last sync, with
//!   the verdict of this node's pinned maps beside it (`palisade explain`).
//!
//! `--metrics-listen` serves only `/metrics`, `/healthz` and `/readyz`
//! ([`public_router`]): flows and status name pods and addresses, so they
//! stay on the loopback endpoint while Prometheus and the kubelet scrape
//! the node's address.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex, RwLock},
};

use axum::{
    Router,
    body::Body,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::sync::broadcast;
use tokio_stream::{StreamExt as _, wrappers::BroadcastStream};

use crate::{
    dataplane::{PinPaths, conntrack::PinnedMaps},
    explain::{self, EndpointArg, NodeMaps, PortArg},
    flows::{
        log::Record,
        observed::{Observed, ObservedFlow},
    },
    metrics::Metrics,
    model::{Model, Node, ObjectRef},
    policy::{Profile, sim::MapView},
    status::Status,
};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9965";
/// Deny records kept for `GET /flows` without `follow`.
const RECENT: usize = 1000;
/// Observed flow records kept unless the agent is told otherwise.
pub const DEFAULT_MAX_OBSERVED: usize = 10_000;

pub struct Shared {
    pub metrics: Metrics,
    pub status: RwLock<Status>,
    recent: Mutex<VecDeque<Record>>,
    tx: broadcast::Sender<Record>,
    /// Allowed connections seen, per workload pair (`GET /flows/allowed`).
    observed: Mutex<Observed>,
    /// What `GET /explain` reads; none before the first sync.
    model: RwLock<Option<Arc<ModelSnapshot>>>,
}

/// The agent's view as of its last sync, for `GET /explain`.
pub struct ModelSnapshot {
    pub model: Model,
    pub profile: Profile,
    pub node: Node,
    /// Where this node's maps are pinned: the kernel side of the check.
    pub pins: PinPaths,
}

impl Default for Shared {
    fn default() -> Self {
        Self::new()
    }
}

impl Shared {
    pub fn new() -> Self {
        Self {
            metrics: Metrics::new(),
            status: RwLock::new(Status::default()),
            recent: Mutex::new(VecDeque::new()),
            tx: broadcast::channel(4096).0,
            observed: Mutex::new(Observed::new(DEFAULT_MAX_OBSERVED)),
            model: RwLock::new(None),
        }
    }

    /// Replaces what `GET /explain` answers from.
    pub fn publish_model(&self, snapshot: ModelSnapshot) {
        if let Ok(mut m) = self.model.write() {
            *m = Some(Arc::new(snapshot));
        }
    }

    /// With room for `max` observed flow records.
    pub fn with_max_observed(max: usize) -> Self {
        let s = Self::new();
        *s.observed() = Observed::new(max);
        s
    }

    /// The observed flows table, locked.
    pub fn observed(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.observed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes a deny record to the metrics, the recent buffer and followers.
    fn publish_record(&self, r: &Record) {
        self.metrics.observe_record(r);
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(r.clone());
        let _ = self.tx.send(r.clone());
    }
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct FlowQuery {
    #[serde(default)]
    pub follow: bool,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub limit: Option<usize>,
}

impl FlowQuery {
    /// Whether a record concerns the namespace / pod asked for (either side).
    pub fn matches(&self, r: &Record) -> bool {
        let Record::Flow { flow, .. } = r else {
            return self.namespace.is_none() && self.pod.is_none();
        };
        self.names_either([flow.src.pod.as_deref(), flow.dst.pod.as_deref()])
    }

    /// Whether an observed flow concerns the namespace / pod asked for.
    pub fn matches_observed(&self, f: &ObservedFlow) -> bool {
        let name = |p: &crate::flows::observed::Peer| {
            p.namespace
                .as_ref()
                .zip(p.pod.as_ref())
                .map(|(ns, pod)| format!("{ns}/{pod}"))
        };
        let (src, dst) = (name(&f.connection.src), name(&f.connection.dst));
        self.names_either([src.as_deref(), dst.as_deref()])
    }

    /// Whether `namespace/name` pods of the two sides match the query.
    fn names_either(&self, pods: [Option<&str>; 2]) -> bool {
        let ns_ok = self.namespace.as_ref().is_none_or(|ns| {
            pods.iter()
                .flatten()
                .any(|p| p.split_once('/').is_some_and(|(n, _)| n == ns))
        });
        let pod_ok = self.pod.as_ref().is_none_or(|want| {
            pods.iter()
                .flatten()
                .any(|p| p == want || p.split_once('/').is_some_and(|(_, name)| name == want))
        });
        ns_ok && pod_ok
    }
}

fn line(r: &Record) -> String {
    let mut s = serde_json::to_string(r).unwrap_or_default();
    s.push('\n');
    s
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    let st = s.status.read().map(|st| st.clone()).unwrap_or_default();
    if let Some(why) = st.unsupported {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: cannot enforce: {why}\n"),
        )
            .into_response()
    } else if st.ready {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: first sync not programmed\n",
        )
            .into_response()
    }
}

async fn status(State(s): State<Arc<Shared>>) -> Response {
    let st = s.status.read().map(|st| st.clone()).unwrap_or_default();
    axum::Json(st).into_response()
}

async fn flows(State(s): State<Arc<Shared>>, Query(q): Query<FlowQuery>) -> Response {
    let rx = s.tx.subscribe();
    let mut recent: Vec<String> = s
        .recent
        .lock()
        .map(|r| r.iter().filter(|r| q.matches(r)).map(line).collect())
        .unwrap_or_default();
    if let Some(limit) = q.limit {
        let skip = recent.len().saturating_sub(limit);
        recent.drain(..skip);
    }
    let head = tokio_stream::iter(recent.into_iter().map(Ok::<_, std::io::Error>));
    let body = if q.follow {
        let tail = BroadcastStream::new(rx).filter_map(move |r| match r {
            Ok(r) if q.matches(&r) => Some(Ok(line(&r))),
            _ => None,
        });
        Body::from_stream(head.chain(tail))
    } else {
        Body::from_stream(head)
    };
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

async fn allowed(State(s): State<Arc<Shared>>, Query(q): Query<FlowQuery>) -> Response {
    // A copy, so the table is not locked while it is written out.
    let snapshot = s.observed().snapshot();
    let body: String = snapshot
        .iter()
        .filter(|f| q.matches_observed(f))
        .map(|f| {
            let mut l = serde_json::to_string(f).unwrap_or_default();
            l.push('\n');
            l
        })
        .collect();
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct ExplainQuery {
    pub from: String,
    pub to: String,
    pub port: Option<String>,
    /// `json`, or text for people (the default).
    pub format: Option<String>,
}

/// This node's pinned maps, and the hostNetwork pods whose cgroups carry
/// the metadata block now.
struct PinnedNode {
    node: String,
    maps: PinnedMaps,
    cgroups: Vec<String>,
}

impl NodeMaps for PinnedNode {
    fn maps(&self, node: &str) -> Option<&dyn MapView> {
        (node == self.node).then_some(&self.maps as &dyn MapView)
    }

    fn cgroup_blocked(&self, node: &str, pod: &ObjectRef) -> Option<bool> {
        (node == self.node).then(|| self.cgroups.contains(&pod.to_string()))
    }
}

async fn explain_handler(State(s): State<Arc<Shared>>, Query(q): Query<ExplainQuery>) -> Response {
    let bad =
        |e: explain::ExplainError| (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
    let query = match (
        q.from.parse::<EndpointArg>(),
        q.to.parse::<EndpointArg>(),
        q.port.as_deref().map_or(Ok(PortArg::default()), str::parse),
    ) {
        (Ok(from), Ok(to), Ok(port)) => explain::Query { from, to, port },
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return bad(e),
    };
    let Some(snap) = s.model.read().ok().and_then(|m| m.clone()) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no model yet: first sync not programmed\n",
        )
            .into_response();
    };
    let cgroups = s
        .status
        .read()
        .map(|st| st.cgroups.clone())
        .unwrap_or_default();
    // Without pinned maps (not enforcing yet) the kernel side is not checked.
    let kernel = PinnedMaps::open(&snap.pins).ok().map(|maps| PinnedNode {
        node: snap.node.name.clone(),
        maps,
        cgroups,
    });
    let world = explain::World {
        model: &snap.model,
        profile: &snap.profile,
        nodes: std::slice::from_ref(&snap.node),
        maps: kernel.as_ref().map(|k| k as &dyn NodeMaps),
    };
    match explain::explain(&world, &query) {
        Ok(e) if q.format.as_deref() == Some("json") => axum::Json(e).into_response(),
        Ok(e) => explain::human(&e).into_response(),
        Err(e) => bad(e),
    }
}

/// Everything: the loopback endpoint.
pub fn router(shared: Arc<Shared>) -> Router {
    public_router(shared.clone()).merge(
        Router::new()
            .route("/status", get(status))
            .route("/flows", get(flows))
            .route("/flows/allowed", get(allowed))
            .route("/explain", get(explain_handler))
            .with_state(shared),
    )
}

/// Metrics and health only: the endpoint other hosts may reach.
pub fn public_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(shared)
}

/// Serves `router` on `addr` until the process ends.
pub async fn serve(addr: SocketAddr, router: Router) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router).await
}

impl crate::flows::sink::Publish for Shared {
    fn publish(&self, r: &Record) {
        self.publish_record(r);
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// The status line of `GET path` on a router served on an ephemeral port.
    async fn status_of(router: Router, path: &str) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(axum::serve(l, router).into_future());
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out.lines().next().unwrap_or_default().to_string()
    }

    /// The whole answer of `GET path`.
    async fn get(router: Router, path: &str) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(axum::serve(l, router).into_future());
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn explain_answers_from_the_published_model_on_loopback_only() {
        let shared = Arc::new(Shared::new());
        let path = "/explain?from=x%2Fa&to=10.0.0.2&port=80%2Ftcp";
        assert!(get(router(shared.clone()), path).await.contains(" 503 "));
        let mut model = Model::default();
        model.pods.insert(
            ObjectRef::new("x", "a"),
            crate::model::Pod {
                namespace: "x".into(),
                name: "a".into(),
                uid: "u".into(),
                labels: Default::default(),
                ips: vec!["10.0.0.1".parse().expect("ip")],
                node: "n1".into(),
                host_network: false,
                ports: Vec::new(),
                workload: None,
            },
        );
        shared.publish_model(ModelSnapshot {
            model,
            profile: Profile::default(),
            node: Node {
                name: "n1".into(),
                ..Node::default()
            },
            pins: PinPaths::new("/nonexistent/palisade"),
        });
        let text = get(router(shared.clone()), path).await;
        assert!(
            text.contains("x/a (10.0.0.1, n1) -> 10.0.0.2 on 80/TCP: ALLOWED"),
            "{text}"
        );
        assert!(text.contains("kernel maps: not checked"), "{text}");
        let json = get(router(shared.clone()), &format!("{path}&format=json")).await;
        assert!(json.contains("\"allowed\":true"), "{json}");
        assert!(
            get(router(shared.clone()), "/explain?from=x&to=y")
                .await
                .contains(" 400 ")
        );
        assert!(get(public_router(shared), path).await.contains(" 404 "));
    }

    #[tokio::test]
    async fn the_public_endpoint_serves_metrics_and_health_but_no_flows_or_status() {
        let shared = Arc::new(Shared::new());
        for path in ["/metrics", "/healthz"] {
            assert!(
                status_of(public_router(shared.clone()), path)
                    .await
                    .contains("200"),
                "{path}"
            );
        }
        assert!(
            status_of(public_router(shared.clone()), "/readyz")
                .await
                .contains("503"),
            "not ready before the first sync"
        );
        for path in ["/flows", "/status"] {
            assert!(
                status_of(public_router(shared.clone()), path)
                    .await
                    .contains("404"),
                "{path} must not be served beyond loopback"
            );
            assert!(
                status_of(router(shared.clone()), path)
                    .await
                    .contains("200"),
                "{path} on the loopback endpoint"
            );
        }
    }
}
