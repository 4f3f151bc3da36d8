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

use super::{Batch, SourceEvent, Trouble};
use crate::index::{Kind, Object};

/// Watches every kind until the receiver is gone.
pub async fn run(client: Client, tx: Sender<Batch>) {
    let ns = tokio::spawn(
        watch(
            Api::<Namespace>::all(client.clone()),
            Kind::Namespace,
            |o| trim(&mut o.metadata),
            |o| Object::Namespace(Box::new(o)),
            tx.clone(),
        )
        .instrument(info_span!("watch", kind = "Namespace")),
    );
    let pods = tokio::spawn(
        watch(
            Api::<Pod>::all(client.clone()),
            Kind::Pod,
            trim_pod,
            |o| Object::Pod(Box::new(o)),
            tx.clone(),
        )
        .instrument(info_span!("watch", kind = "Pod")),
    );
    let nps = tokio::spawn(
        watch(
            Api::<NetworkPolicy>::all(client.clone()),
            Kind::NetworkPolicy,
            |o| trim(&mut o.metadata),
            |o| Object::NetworkPolicy(Box::new(o)),
            tx.clone(),
        )
        .instrument(info_span!("watch", kind = "NetworkPolicy")),
    );
    let services = tokio::spawn(
        watch(
            Api::<Service>::all(client.clone()),
            Kind::Service,
            |o| trim(&mut o.metadata),
            |o| Object::Service(Box::new(o)),
            tx.clone(),
        )
        .instrument(info_span!("watch", kind = "Service")),
    );
    let slices = tokio::spawn(
        watch(
            Api::<EndpointSlice>::all(client),
            Kind::EndpointSlice,
            trim_slice,
            |o| Object::EndpointSlice(Box::new(o)),
            tx,
        )
        .instrument(info_span!("watch", kind = "EndpointSlice")),
    );
    let _ = tokio::join!(ns, pods, nps, services, slices);
}

/// Drops the metadata the index never reads (managed fields and
/// annotations are most of many objects' size).
fn trim(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    meta.annotations = None;
    meta.managed_fields = None;
    meta.owner_references = None;
}

/// Keeps of a Pod what the index reads: name, namespace, uid, labels, node,
/// hostNetwork, container ports, phase and addresses. Pods are the most
/// numerous objects and a full one is kilobytes (env, volumes, probes,
/// conditions), all held until a list completes.
pub fn trim_pod(pod: &mut Pod) {
    use k8s_openapi::api::core::v1::{Container, PodSpec, PodStatus};
    trim(&mut pod.metadata);
    pod.metadata.finalizers = None;
    pod.spec = pod.spec.take().map(|s| PodSpec {
        node_name: s.node_name,
        host_network: s.host_network,
        containers: s
            .containers
            .into_iter()
            .map(|c| Container {
                name: c.name,
                ports: c.ports,
                ..Container::default()
            })
            .collect(),
        ..PodSpec::default()
    });
    pod.status = pod.status.take().map(|s| PodStatus {
        phase: s.phase,
        pod_ip: s.pod_ip,
        pod_ips: s.pod_ips,
        ..PodStatus::default()
    });
}

/// Only addresses count; hints, topology and targets are most of a slice's
/// size in a large cluster.
fn trim_slice(o: &mut EndpointSlice) {
    trim(&mut o.metadata);
    for e in o.endpoints.iter_mut().flatten() {
        e.conditions = None;
        e.deprecated_topology = None;
        e.hints = None;
        e.hostname = None;
        e.node_name = None;
        e.target_ref = None;
        e.zone = None;
    }
}

/// One kind's watcher; every object is trimmed as it arrives, before the
/// initial list accumulates.
async fn watch<K>(
    api: Api<K>,
    kind: Kind,
    trim: fn(&mut K),
    wrap: fn(K) -> Object,
    tx: Sender<Batch>,
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default,
{
    let mut stream = std::pin::pin!(
        watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(trim)
    );
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
            Err(source) => vec![SourceEvent::Trouble(Trouble::Watch { kind, source })],
        };
        if tx.send(batch).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Index;

    /// A Pod as the API server sends it, with the weight the index ignores.
    fn heavy_pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "web-1", "namespace": "shop", "uid": "u-1",
                "labels": {"app": "web"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x".repeat(4000)},
                "managedFields": [{"manager": "kubelet", "operation": "Update", "fieldsType": "FieldsV1",
                                   "fieldsV1": {"f:status": {"f:conditions": {}}}}],
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "r"}],
                "finalizers": ["example.com/x"],
            },
            "spec": {
                "nodeName": "n1", "hostNetwork": false,
                "containers": [{
                    "name": "web", "image": "nginx",
                    "env": [{"name": "BIG", "value": "y".repeat(4000)}],
                    "ports": [{"name": "http", "containerPort": 80}, {"containerPort": 53, "protocol": "UDP"}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": 80}},
                }],
                "volumes": [{"name": "v", "emptyDir": {}}],
            },
            "status": {
                "phase": "Running", "podIP": "10.0.1.10",
                "podIPs": [{"ip": "10.0.1.10"}, {"ip": "fd00::10"}],
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "web", "image": "nginx", "imageID": "sha", "ready": true,
                                       "restartCount": 0}],
            },
        }))
        .expect("pod")
    }

    #[test]
    fn a_trimmed_pod_means_the_same_to_the_index_and_is_a_fraction_of_the_size() {
        let full = heavy_pod();
        let mut trimmed = full.clone();
        trim_pod(&mut trimmed);
        let size = |p: &Pod| serde_json::to_vec(p).expect("json").len();
        assert!(
            size(&trimmed) * 10 < size(&full),
            "{} of {} bytes kept",
            size(&trimmed),
            size(&full)
        );
        assert!(trimmed.metadata.managed_fields.is_none());
        let model = |p: Pod| {
            let mut index = Index::default();
            index.apply(&Object::Pod(Box::new(p))).expect("valid");
            index.model().pods.clone()
        };
        assert_eq!(model(trimmed), model(full));
    }
}
