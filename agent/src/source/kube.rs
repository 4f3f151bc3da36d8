//! The API server as the source: one kube-rs watcher per kind (Namespaces,
//! Pods, NetworkPolicies, Services, EndpointSlices, all namespaces). A watcher's initial list (and
//! every relist after a lost watch) becomes one `Reset`, so deletions missed
//! while disconnected are not kept; errors are reported and retried with
//! kube-rs's default backoff while the datapath keeps its state.

use futures_util::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::mpsc::Sender;
use tracing::{Instrument as _, info, info_span};

use super::{Batch, SourceEvent};
use crate::index::{Kind, Object};

/// Watches every kind until the receiver is gone.
pub async fn run(client: Client, tx: Sender<Batch>) {
    let ns = tokio::spawn(
        watch(
            Api::<Namespace>::all(client.clone()),
            Kind::Namespace,
            |o| Object::Namespace(Box::new(o)),
            tx.clone(),
        )
        .instrument(info_span!("watch", kind = "Namespace")),
    );
    let pods = tokio::spawn(
        watch(
            Api::<Pod>::all(client.clone()),
            Kind::Pod,
            |o| Object::Pod(Box::new(o)),
            tx.clone(),
        )
        .instrument(info_span!("watch", kind = "Pod")),
    );
    let nps = tokio::spawn(
        watch(
            Api::<NetworkPolicy>::all(client.clone()),
            Kind::NetworkPolicy,
            |o| Object::NetworkPolicy(Box::new(o)),
            tx.clone(),
        )
        .instrument(info_span!("watch", kind = "NetworkPolicy")),
    );
    let services = tokio::spawn(
        watch(
            Api::<Service>::all(client.clone()),
            Kind::Service,
            |mut o| {
                trim(&mut o.metadata);
                Object::Service(Box::new(o))
            },
            tx.clone(),
        )
        .instrument(info_span!("watch", kind = "Service")),
    );
    let slices = tokio::spawn(
        watch(
            Api::<EndpointSlice>::all(client),
            Kind::EndpointSlice,
            |mut o| {
                trim(&mut o.metadata);
                // Only addresses count; hints, topology and targets are
                // most of a slice's size in a large cluster.
                for e in o.endpoints.iter_mut().flatten() {
                    e.conditions = None;
                    e.deprecated_topology = None;
                    e.hints = None;
                    e.hostname = None;
                    e.node_name = None;
                    e.target_ref = None;
                    e.zone = None;
                }
                Object::EndpointSlice(Box::new(o))
            },
            tx,
        )
        .instrument(info_span!("watch", kind = "EndpointSlice")),
    );
    let _ = tokio::join!(ns, pods, nps, services, slices);
}

/// Drops the metadata the index never reads (Services and slices are many
/// and often carry large annotations).
fn trim(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    meta.annotations = None;
    meta.managed_fields = None;
    meta.owner_references = None;
}

async fn watch<K>(api: Api<K>, kind: Kind, wrap: fn(K) -> Object, tx: Sender<Batch>)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    let mut initial: Vec<Object> = Vec::new();
    while let Some(event) = stream.next().await {
        let batch = match event {
            Ok(watcher::Event::Init) => {
                initial.clear();
                continue;
            }
            Ok(watcher::Event::InitApply(o)) => {
                initial.push(wrap(o));
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                info!(objects = initial.len(), "listed");
                vec![SourceEvent::Reset {
                    kind,
                    objects: std::mem::take(&mut initial),
                }]
            }
            Ok(watcher::Event::Apply(o)) => vec![SourceEvent::Apply(wrap(o))],
            Ok(watcher::Event::Delete(o)) => vec![SourceEvent::Delete(wrap(o).key())],
            Err(e) => vec![SourceEvent::Trouble(format!("{kind} watch: {e}"))],
        };
        if tx.send(batch).await.is_err() {
            return;
        }
    }
}
