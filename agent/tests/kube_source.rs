//! The API-server source against the in-memory API server (axum,
//! `source::fake_apiserver`): list + watch of Namespaces, Pods, NetworkPolicies, Services and
//! EndpointSlices through kube-rs's
//! watcher, applied to the index, give exactly the state standalone mode
//! gives for the same objects; watch events apply incrementally; a watch
//! that expires (410 Gone) leads to a relist that drops what disappeared.

mod support;

use std::{collections::BTreeSet, time::Duration};

use palisade_agent::{
    daemon::apply_batch,
    index::{Index, Kind},
    policy::{Profile, compile},
    source::{
        Batch,
        fake_apiserver::{self, FakeApiServer},
        kube as kube_source,
    },
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const THREE_TIER: &str = include_str!("golden/three-tier.yaml");

/// The kube-dns Service in front of coredns.
const KUBE_DNS: &str = "---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec: {clusterIP: 10.96.0.10, ports: [{name: dns, port: 53, protocol: UDP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: kube-dns-x1, namespace: kube-system, labels: {kubernetes.io/service-name: kube-dns}}
addressType: IPv4
endpoints: [{addresses: [10.0.3.10], conditions: {ready: true}, nodeName: other-node}]
ports: [{name: dns, port: 53, protocol: UDP}]
";

fn objects_text() -> String {
    format!("{THREE_TIER}{KUBE_DNS}")
}

fn yaml_objects() -> Vec<Value> {
    fake_apiserver::served_objects(&objects_text(), 1).expect("yaml")
}

/// Applies batches until `done` says so (or times out).
async fn pump(
    rx: &mut mpsc::Receiver<Batch>,
    index: &mut Index,
    listed: &mut BTreeSet<Kind>,
    done: impl Fn(&Index, &BTreeSet<Kind>) -> bool,
) {
    let mut version = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done(index, listed) {
        let batch = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("source events in time")
            .expect("source alive");
        apply_batch(index, listed, &mut version, batch);
    }
}

#[tokio::test]
async fn the_api_source_gives_what_standalone_gives_and_follows_changes() {
    let objects = yaml_objects();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let fake = FakeApiServer::serve(listener, objects.clone()).expect("fake API server");

    let config = kube::Config::new(fake.url().parse().expect("url"));
    let client = kube::Client::try_from(config).expect("client");
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(kube_source::run(client, tx));

    let mut index = Index::default();
    let mut listed = BTreeSet::new();
    pump(&mut rx, &mut index, &mut listed, |_, l| {
        Kind::all_required(l)
    })
    .await;

    // Standalone mode for the same objects.
    let standalone = support::model(&objects_text());
    assert_eq!(standalone.services.len(), 1);
    assert_eq!(standalone.endpoint_slices.len(), 1);
    let mut api_model = index.model().clone();
    // uids come from the API server; standalone YAML has none.
    for p in api_model.pods.values_mut() {
        p.uid.clear();
    }
    assert_eq!(api_model, standalone, "same model from both sources");
    assert_eq!(
        compile(&api_model, &support::node(), &Profile::default()),
        compile(&standalone, &support::node(), &Profile::default()),
        "same desired state"
    );

    // A watch event: a policy is deleted (once every watch is open).
    // The fake serves no CRD kinds: only the required kinds' watches open.
    while fake.watches() < Kind::REQUIRED.len() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let np = objects
        .iter()
        .find(|o| o["metadata"]["name"] == "deny-all")
        .cloned()
        .expect("deny-all");
    fake.push("NetworkPolicy", "DELETED", np);
    pump(&mut rx, &mut index, &mut listed, |i, _| {
        i.model().policies.keys().all(|k| k.name != "deny-all")
    })
    .await;

    // An EndpointSlice changes its backends.
    let mut slice = objects
        .iter()
        .find(|o| o["kind"] == "EndpointSlice")
        .cloned()
        .expect("slice");
    slice["endpoints"][0]["addresses"] = json!(["10.0.3.11"]);
    fake.push("EndpointSlice", "MODIFIED", slice);
    let moved: std::net::IpAddr = "10.0.3.11".parse().expect("ip");
    pump(&mut rx, &mut index, &mut listed, |i, _| {
        i.model()
            .endpoint_slices
            .values()
            .all(|s| s.addresses == [moved])
    })
    .await;

    // The API server loses the watch (410 Gone) while a pod disappears: the
    // relist replaces the pods, and the vanished one is deleted.
    fake.edit(|objects| objects.retain(|o| o["metadata"]["name"] != "coredns"));
    fake.expire_next_watch("Pod");
    // End the current pod watch so the watcher reconnects.
    fake.push(
        "Pod",
        "ERROR",
        json!({"kind": "Status", "apiVersion": "v1", "code": 410, "reason": "Expired", "message": "gone", "status": "Failure"}),
    );
    pump(&mut rx, &mut index, &mut listed, |i, _| {
        i.model().pods.keys().all(|k| k.name != "coredns")
    })
    .await;
    assert_eq!(index.model().pods.len(), 2);
}
