//! The deploy/ manifests validate against the Kubernetes API types (the
//! k8s-openapi schema, strictly: no unknown fields), the ConfigMap's file is
//! a valid agent config, and the DaemonSet's arguments are flags the agent
//! has. (`tests/tests/deploy.rs` checks what `kubectl kustomize` renders.)

use std::path::PathBuf;

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Namespace, Service, ServiceAccount},
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use palisade_agent::{config::FileConfig, index::unknown_fields};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

fn strict<T: DeserializeOwned + Serialize>(v: &Value) -> T {
    let t: T = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("{}: {e}", v["metadata"]["name"]));
    let unknown = unknown_fields(v, &serde_json::to_value(&t).expect("serialize"));
    assert!(
        unknown.is_empty(),
        "{} {}: unknown fields {unknown:?}",
        v["kind"],
        v["metadata"]["name"]
    );
    t
}

#[test]
fn manifests_validate_and_agree_with_the_agent() {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/base");
    let kustomization: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(base.join("kustomization.yaml")).expect("kustomization"),
    )
    .expect("kustomization YAML");
    // The ConfigMap is generated from files: each must be a valid config.
    let generated = kustomization["configMapGenerator"]
        .as_sequence()
        .expect("configMapGenerator");
    for file in generated
        .iter()
        .flat_map(|g| g["files"].as_sequence().cloned().unwrap_or_default())
    {
        let file = file.as_str().expect("file name");
        FileConfig::load(&base.join(file)).expect("the ConfigMap's file is a valid agent config");
    }
    let mut kinds = Vec::new();
    let mut daemonset = None;
    for line in kustomization["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .filter_map(|r| r.as_str())
    {
        let text =
            std::fs::read_to_string(base.join(line)).unwrap_or_else(|e| panic!("{line}: {e}"));
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde_json::to_value(
                <serde_yaml::Value as serde::Deserialize>::deserialize(doc).expect("yaml"),
            )
            .expect("json");
            if v.is_null() {
                continue;
            }
            let kind = v["kind"].as_str().unwrap_or_default().to_string();
            match kind.as_str() {
                "Namespace" => {
                    let ns: Namespace = strict(&v);
                    let labels = ns.metadata.labels.unwrap_or_default();
                    assert_eq!(
                        labels
                            .get("pod-security.kubernetes.io/enforce")
                            .map(String::as_str),
                        Some("privileged")
                    );
                }
                "ServiceAccount" => drop(strict::<ServiceAccount>(&v)),
                "ClusterRole" => {
                    let role: ClusterRole = strict(&v);
                    for rule in role.rules.unwrap_or_default() {
                        assert_eq!(rule.verbs, ["get", "list", "watch"], "read-only");
                    }
                }
                "ClusterRoleBinding" => drop(strict::<ClusterRoleBinding>(&v)),
                "Service" => drop(strict::<Service>(&v)),
                "DaemonSet" => daemonset = Some(strict::<DaemonSet>(&v)),
                other => panic!("unexpected kind {other}"),
            }
            kinds.push(kind);
        }
    }
    assert_eq!(kinds.len(), 6, "{kinds:?}");

    let ds = daemonset.expect("a DaemonSet");
    let pod = ds.spec.template.spec.expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    let c = &pod.containers[0];
    let sc = c.security_context.clone().expect("securityContext");
    assert_eq!(sc.privileged, Some(false), "not privileged");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.expect("capabilities");
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
    assert!(
        c.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .is_some(),
        "resource requests"
    );

    // Every flag the DaemonSet passes exists.
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["agent", "--help"])
        .output()
        .expect("palisade agent --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for arg in c.args.clone().unwrap_or_default().iter().skip(1) {
        let flag = arg.split('=').next().unwrap_or_default();
        assert!(help.contains(flag), "the agent has no flag {flag}");
    }
}
