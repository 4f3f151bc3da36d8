//! The API server as the source: one kube-rs watcher per kind (Namespaces,
//! Pods, NetworkPolicies, Services, EndpointSlices, all namespaces; and the
//! CRD kinds ClusterNetworkPolicy and Calico's NetworkPolicy,
//! GlobalNetworkPolicy and Tier, which a cluster may lack: see
//! [`watch_crd`]). A watcher's initial list (and
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
    api::{ApiResource, DynamicObject, GroupVersionKind},
    runtime::{WatchStreamExt as _, watcher},
};
use serde_json::Value;
use std::{sync::Arc, time::Duration};
use tokio::sync::mpsc::Sender;
use tracing::{Instrument as _, info, info_span, warn};

use super::{Batch, SourceEvent, Trouble, yaml::ParseError};
use crate::{
    index::{Kind, Object, ObjectKey, from_value_strict},
    model::ObjectRef,
};

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
            Api::<EndpointSlice>::all(client.clone()),
            Kind::EndpointSlice,
            trim_slice,
            |o| Object::EndpointSlice(Box::new(o)),
            tx.clone(),
        )
        .instrument(info_span!("watch", kind = "EndpointSlice")),
    );
    let crds: Vec<_> = CRDS
        .iter()
        .map(|crd| {
            tokio::spawn(
                watch_crd(client.clone(), crd, tx.clone())
                    .instrument(info_span!("watch", kind = crd.kind)),
            )
        })
        .collect();
    drop(tx);
    let _ = tokio::join!(ns, pods, nps, services, slices);
    for crd in crds {
        let _ = crd.await;
    }
}

/// A kind defined by a CustomResourceDefinition that a cluster may not have.
struct Crd {
    kind: &'static str,
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    index_kind: Kind,
    parse: fn(&Value) -> Result<Object, String>,
}

impl Crd {
    fn resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }
}

/// The ordered policy kinds, read through the same strict serde path as
/// the directory source.
const CRDS: [Crd; 4] = [
    Crd {
        kind: "ClusterNetworkPolicy",
        group: "policy.networking.k8s.io",
        version: "v1alpha2",
        plural: "clusternetworkpolicies",
        index_kind: Kind::ClusterNetworkPolicy,
        parse: |v| from_value_strict(v).map(|o| Object::ClusterNetworkPolicy(Box::new(o))),
    },
    Crd {
        kind: "NetworkPolicy",
        group: "projectcalico.org",
        version: "v3",
        plural: "networkpolicies",
        index_kind: Kind::CalicoNetworkPolicy,
        parse: |v| from_value_strict(v).map(|o| Object::CalicoNetworkPolicy(Box::new(o))),
    },
    Crd {
        kind: "GlobalNetworkPolicy",
        group: "projectcalico.org",
        version: "v3",
        plural: "globalnetworkpolicies",
        index_kind: Kind::CalicoGlobalNetworkPolicy,
        parse: |v| from_value_strict(v).map(|o| Object::CalicoGlobalNetworkPolicy(Box::new(o))),
    },
    Crd {
        kind: "Tier",
        group: "projectcalico.org",
        version: "v3",
        plural: "tiers",
        index_kind: Kind::CalicoTier,
        parse: |v| from_value_strict(v).map(|o| Object::CalicoTier(Box::new(o))),
    },
];

/// How long a watcher waits before it looks again for a CRD the API
/// server does not serve.
const MISSING_CRD_RETRY: Duration = Duration::from_secs(60);

/// Whether a watcher error means the API server does not serve the kind.
fn is_missing(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => {
            s.is_not_found() || s.code == 404
        }
        watcher::Error::WatchError(s) => s.is_not_found() || s.code == 404,
        _ => false,
    }
}

/// A CRD kind's watcher. While the API server does not serve the kind
/// (404), that is logged once, the kind is delivered as empty (objects of
/// a deleted CRD are gone with it) and the watcher looks again every
/// [`MISSING_CRD_RETRY`]; other kinds are not held up. An object that
/// does not parse is reported as rejected and leaves the index as it was.
async fn watch_crd(client: Client, crd: &'static Crd, tx: Sender<Batch>) {
    let api = Api::<DynamicObject>::all_with(client, &crd.resource());
    let origin = format!("api-server {}.{}", crd.plural, crd.group);
    let mut stream = std::pin::pin!(watcher(api, watcher::Config::default()).modify(|o| {
        o.metadata.managed_fields = None;
        o.metadata.annotations = None;
    }));
    let parse = |o: DynamicObject| parse_crd_object(crd, &origin, o);
    let mut initial: Vec<Object> = Vec::new();
    let mut rejected: Batch = Vec::new();
    let mut missing = false;
    let mut failures: u32 = 0;
    while let Some(event) = stream.next().await {
        let batch = match event {
            Ok(watcher::Event::Init) => {
                initial.clear();
                rejected.clear();
                continue;
            }
            Ok(watcher::Event::InitApply(o)) => {
                match parse(o) {
                    Ok(o) => initial.push(o),
                    Err(e) => rejected.push(e),
                }
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                if std::mem::take(&mut missing) {
                    info!("the API server serves this kind now");
                }
                failures = 0;
                info!(objects = initial.len(), "listed");
                let mut batch = std::mem::take(&mut rejected);
                batch.push(SourceEvent::Reset {
                    kind: crd.index_kind,
                    objects: std::mem::take(&mut initial),
                });
                batch
            }
            Ok(watcher::Event::Apply(o)) => vec![match parse(o) {
                Ok(o) => SourceEvent::Apply(o),
                Err(e) => e,
            }],
            // Only the name counts: an object that did not parse is still deleted.
            Ok(watcher::Event::Delete(o)) => vec![delete_event(crd, o)],
            Err(e) if is_missing(&e) => {
                if !std::mem::replace(&mut missing, true) && !report_missing(crd, &tx).await {
                    return;
                }
                tokio::time::sleep(MISSING_CRD_RETRY).await;
                continue;
            }
            Err(source) => {
                failures = failures.saturating_add(1);
                let batch = vec![SourceEvent::Trouble(Trouble::Watch {
                    kind: crd.index_kind,
                    source,
                })];
                if tx.send(batch).await.is_err() {
                    return;
                }
                // 1 s, doubling, at most a minute.
                let wait = Duration::from_secs(1u64 << failures.min(6)).min(MISSING_CRD_RETRY);
                tokio::time::sleep(wait).await;
                continue;
            }
        };
        if tx.send(batch).await.is_err() {
            return;
        }
    }
}

/// A watched object through the kind's strict parse; a rejection names it.
fn parse_crd_object(crd: &Crd, origin: &str, o: DynamicObject) -> Result<Object, SourceEvent> {
    let name = o.metadata.name.clone().unwrap_or_default();
    let what = match &o.metadata.namespace {
        Some(ns) => format!("{} {ns}/{name}", crd.kind),
        None => format!("{} {name}", crd.kind),
    };
    serde_json::to_value(&o)
        .map_err(|e| e.to_string())
        .and_then(|v| (crd.parse)(&v))
        .map_err(|message| {
            SourceEvent::Rejected(Arc::new(ParseError::Object {
                origin: origin.to_string(),
                doc: 0,
                what,
                message,
            }))
        })
}

/// Only the name counts: an object that did not parse is still deleted.
fn delete_event(crd: &Crd, o: DynamicObject) -> SourceEvent {
    let namespace = match crd.index_kind {
        Kind::CalicoNetworkPolicy => o.metadata.namespace.unwrap_or_default(),
        _ => String::new(),
    };
    SourceEvent::Delete(ObjectKey {
        kind: crd.index_kind,
        object: ObjectRef::new(namespace, o.metadata.name.unwrap_or_default()),
    })
}

/// Says once that the kind is not served and counts it as empty; false
/// when the agent stopped listening.
async fn report_missing(crd: &Crd, tx: &Sender<Batch>) -> bool {
    warn!(
        retry = ?MISSING_CRD_RETRY,
        "the API server does not serve this kind (CRD not installed?); it counts as empty and is looked for again"
    );
    tx.send(vec![SourceEvent::Reset {
        kind: crd.index_kind,
        objects: Vec::new(),
    }])
    .await
    .is_ok()
}

/// Drops the metadata the index never reads (managed fields and
/// annotations are most of many objects' size): of annotations, Palisade's
/// own are kept (`palisade.dev/mode`), of owners the controller.
fn trim(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    if let Some(a) = meta.annotations.as_mut() {
        a.retain(|k, _| k.starts_with(crate::index::ANNOTATION_PREFIX));
    }
    if meta.annotations.as_ref().is_some_and(|a| a.is_empty()) {
        meta.annotations = None;
    }
    meta.managed_fields = None;
    if let Some(o) = meta.owner_references.as_mut() {
        o.retain(|r| r.controller == Some(true));
        for r in o.iter_mut() {
            r.uid = String::new();
        }
    }
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

    #[test]
    fn crd_objects_parse_strictly_and_a_missing_crd_is_recognized() {
        let tier = CRDS.iter().find(|c| c.kind == "Tier").expect("tier");
        let object = |spec: serde_json::Value| {
            let v = serde_json::json!({
                "apiVersion": "projectcalico.org/v3", "kind": "Tier",
                "metadata": {"name": "t", "resourceVersion": "1", "uid": "u"},
                "spec": spec,
            });
            let o: DynamicObject = serde_json::from_value(v).expect("dynamic");
            serde_json::to_value(&o).expect("json")
        };
        assert!(matches!(
            (tier.parse)(&object(serde_json::json!({"order": 5}))),
            Ok(Object::CalicoTier(_))
        ));
        let e = (tier.parse)(&object(serde_json::json!({"ordr": 5}))).expect_err("unknown field");
        assert!(e.contains("spec.ordr") || e.contains("ordr"), "{e}");
        for crd in &CRDS {
            assert_eq!(crd.resource().plural, crd.plural);
        }

        // A bare 404 (no Status body) and a proper NotFound both mean "not served".
        let bare = kube::core::Status::failure("404 page not found", "Failed to parse error data")
            .with_code(404);
        assert!(is_missing(&watcher::Error::InitialListFailed(
            kube::Error::Api(bare.boxed())
        )));
        let forbidden = kube::core::Status::failure("no", "Forbidden").with_code(403);
        assert!(!is_missing(&watcher::Error::InitialListFailed(
            kube::Error::Api(forbidden.boxed())
        )));
        assert!(!is_missing(&watcher::Error::NoResourceVersion));
    }

    /// A Pod as the API server sends it, with the weight the index ignores.
    fn heavy_pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "web-1", "namespace": "shop", "uid": "u-1",
                "labels": {"app": "web", "pod-template-hash": "5d8f9c"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x".repeat(4000)},
                "managedFields": [{"manager": "kubelet", "operation": "Update", "fieldsType": "FieldsV1",
                                   "fieldsV1": {"f:status": {"f:conditions": {}}}}],
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f9c", "uid": "r", "controller": true}],
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
        let pods = model(trimmed);
        assert_eq!(pods, model(full));
        let workload = pods.values().next().and_then(|p| p.workload.clone());
        assert_eq!(
            workload,
            Some(crate::model::Workload {
                kind: "Deployment".into(),
                name: "web".into()
            }),
            "a ReplicaSet's pods are its Deployment's"
        );
    }
}
