//! An API server in memory, for tests and benchmarks of the kube source:
//! lists and watches of the kinds the source requires (CRD kinds answer
//! 404, as a cluster without them does), watch events pushed by the
//! caller (and kept for later lists), and an expired watch (410 Gone) on
//! request.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
};

use axum::{
    Router,
    body::Body,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast};

/// Where each required kind is listed and watched.
const ROUTES: [(&str, &str); 5] = [
    ("/api/v1/namespaces", "Namespace"),
    ("/api/v1/pods", "Pod"),
    (
        "/apis/networking.k8s.io/v1/networkpolicies",
        "NetworkPolicy",
    ),
    ("/api/v1/services", "Service"),
    ("/apis/discovery.k8s.io/v1/endpointslices", "EndpointSlice"),
];

#[derive(Clone)]
struct Served {
    objects: Arc<Mutex<Vec<Value>>>,
    events: broadcast::Sender<(String, Value)>,
    /// The next watch of each kind answers 410 Gone.
    gone: Arc<Mutex<BTreeSet<String>>>,
}

#[derive(serde::Deserialize)]
struct Params {
    watch: Option<String>,
}

/// The fake. Dropping it stops accepting; with [`FakeApiServer::spawn`] it
/// also ends open watches (their runtime goes with it), with
/// [`FakeApiServer::serve`] they end with the caller's runtime.
pub struct FakeApiServer {
    served: Served,
    addr: SocketAddr,
    stop: Arc<Notify>,
}

impl FakeApiServer {
    /// Serves on `listener` from a task of the current tokio runtime.
    pub fn serve(listener: tokio::net::TcpListener, objects: Vec<Value>) -> std::io::Result<Self> {
        let (fake, run) = Self::new(listener, objects)?;
        tokio::spawn(run);
        Ok(fake)
    }

    /// Serves on `listener` from a thread and runtime of its own, for
    /// callers without a runtime. The listener keeps the network namespace
    /// it was bound in.
    pub fn spawn(listener: std::net::TcpListener, objects: Vec<Value>) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        listener.set_nonblocking(true)?;
        let (fake, run) = rt
            .block_on(async { Self::new(tokio::net::TcpListener::from_std(listener)?, objects) })?;
        std::thread::spawn(move || rt.block_on(run));
        Ok(fake)
    }

    fn new(
        listener: tokio::net::TcpListener,
        objects: Vec<Value>,
    ) -> std::io::Result<(Self, impl Future<Output = ()> + Send + 'static)> {
        let served = Served {
            objects: Arc::new(Mutex::new(objects)),
            events: broadcast::channel(1024).0,
            gone: Arc::default(),
        };
        let addr = listener.local_addr()?;
        let stop = Arc::new(Notify::new());
        let router = ROUTES
            .iter()
            .fold(Router::new(), |r, &(path, kind)| {
                r.route(
                    path,
                    get(move |State(s): State<Served>, Query(q): Query<Params>| {
                        serve_kind(s, kind, q)
                    }),
                )
            })
            .with_state(served.clone());
        let stopped = stop.clone();
        // Not a graceful shutdown: that would wait for the open watches.
        let run = async move {
            tokio::select! {
                _ = axum::serve(listener, router).into_future() => {}
                () = stopped.notified() => {}
            }
        };
        Ok((Self { served, addr, stop }, run))
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig naming this server, for `KUBECONFIG`.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{}\"}}}}]\nusers: [{{name: fake, user: {{}}}}]\ncontexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\ncurrent-context: fake\n",
            self.url()
        )
    }

    /// Open watches, of every kind.
    pub fn watches(&self) -> usize {
        self.served.events.receiver_count()
    }

    /// Sends a watch event (`ADDED`, `MODIFIED`, `DELETED`, `ERROR`) to the
    /// open watches of `kind`, and keeps what it says for later lists (a
    /// relist then agrees with the watch).
    pub fn push(&self, kind: &str, event_type: &str, object: Value) {
        if event_type != "ERROR" {
            self.edit(|objects| {
                let same = |o: &Value| {
                    o["kind"] == kind
                        && o["metadata"]["namespace"] == object["metadata"]["namespace"]
                        && o["metadata"]["name"] == object["metadata"]["name"]
                };
                objects.retain(|o| !same(o));
                if event_type != "DELETED" {
                    objects.push(object.clone());
                }
            });
        }
        // No open watch is no error: a relist serves the objects.
        drop(
            self.served
                .events
                .send((kind.into(), json!({"type": event_type, "object": object}))),
        );
    }

    /// Changes what lists serve.
    pub fn edit(&self, f: impl FnOnce(&mut Vec<Value>)) {
        f(&mut self
            .served
            .objects
            .lock()
            .unwrap_or_else(PoisonError::into_inner));
    }

    /// The next watch of `kind` answers 410 Gone (an expired resourceVersion).
    pub fn expire_next_watch(&self, kind: &str) {
        self.served
            .gone
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(kind.into());
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.stop.notify_one();
    }
}

/// YAML documents as the API server serves them: JSON, with the
/// `resourceVersion` and `uid` it always sets.
pub fn served_objects(yaml: &str, version: u64) -> Result<Vec<Value>, serde_yaml::Error> {
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let mut v: Value = serde::Deserialize::deserialize(doc)?;
        if v.is_null() {
            continue;
        }
        let meta = &v["metadata"];
        let uid = format!(
            "uid-{}-{}",
            meta["namespace"].as_str().unwrap_or_default(),
            meta["name"].as_str().unwrap_or_default()
        );
        v["metadata"]["uid"] = json!(uid);
        v["metadata"]["resourceVersion"] = json!(version.to_string());
        out.push(v);
    }
    Ok(out)
}

async fn serve_kind(served: Served, kind: &'static str, q: Params) -> Response {
    let watching = q.watch.as_deref().is_some_and(|w| w == "true" || w == "1");
    if !watching {
        let items: Vec<Value> = served
            .objects
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|o| o["kind"] == kind)
            .cloned()
            .collect();
        return axum::Json(json!({"apiVersion": "v1", "kind": format!("{kind}List"), "metadata": {"resourceVersion": "1"}, "items": items}))
            .into_response();
    }
    if served
        .gone
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(kind)
    {
        return (
            StatusCode::GONE,
            axum::Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired", "code": 410, "message": "too old resource version"})),
        )
            .into_response();
    }
    let rx = served.events.subscribe();
    let stream = futures_util::stream::unfold(rx, move |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok((k, ev)) if k == kind => {
                    let mut line = ev.to_string();
                    line.push('\n');
                    return Some((Ok::<_, std::io::Error>(line), rx));
                }
                Ok(_) => continue,
                // A watch that missed events ends: the watcher relists
                // instead of going on from a gap.
                Err(_) => return None,
            }
        }
    });
    Body::from_stream(stream).into_response()
}
