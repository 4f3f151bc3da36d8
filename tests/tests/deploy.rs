//! What `kubectl kustomize deploy` renders is what issue #20 asks of a
//! DaemonSet: privileges only in the bpffs init container, the agent
//! container neither privileged nor SYS_ADMIN, read-only RBAC, a generated
//! ConfigMap the pods mount (so edits roll out), probes on the metrics
//! port the agent serves, flows on loopback, a pinned image tag. Needs
//! kubectl (on the machine image); not privileged.

use std::{path::PathBuf, process::Command};

use serde_yaml::Value;

fn rendered() -> Vec<Value> {
    let deploy = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(&deploy)
        .output()
        .expect("kubectl kustomize: kubectl must be installed to check deploy/");
    assert!(
        out.status.success(),
        "kubectl kustomize deploy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    text.split("\n---\n")
        .map(|d| serde_yaml::from_str(d).expect("rendered YAML"))
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_rendered_daemonset_confines_privileges_to_the_bpffs_init_container() {
    let docs = rendered();
    let ds = of_kind(&docs, "DaemonSet");
    assert_eq!(ds.len(), 1);
    let spec = &ds[0]["spec"]["template"]["spec"];
    let agent = &spec["containers"][0];
    assert_eq!(agent["name"], "agent");
    let sc = &agent["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
    let caps = strs(&sc["capabilities"]["add"]);
    assert!(!caps.iter().any(|c| c.contains("SYS_ADMIN")), "{caps:?}");
    let mounts = agent["volumeMounts"].as_sequence().expect("mounts");
    let bpffs = mounts.iter().find(|m| m["name"] == "bpffs").expect("bpffs");
    assert_eq!(bpffs["mountPropagation"], "HostToContainer");

    let init = spec["initContainers"]
        .as_sequence()
        .expect("init containers");
    assert_eq!(init.len(), 1);
    assert_eq!(init[0]["securityContext"]["privileged"], true);
    let m = &init[0]["volumeMounts"][0];
    assert_eq!(
        (m["name"].as_str(), m["mountPropagation"].as_str()),
        (Some("bpffs"), Some("Bidirectional")),
        "the init container's mount must reach the host"
    );
    let script = strs(&init[0]["command"]).join(" ");
    assert!(script.contains("mount -t bpf"), "{script}");
}

#[test]
fn endpoints_probes_and_image_fit_the_agents_flags() {
    let docs = rendered();
    let ds = of_kind(&docs, "DaemonSet")[0];
    let spec = &ds["spec"]["template"]["spec"];
    let agent = &spec["containers"][0];
    let args = strs(&agent["args"]);
    let flag = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")))
            .unwrap_or_else(|| panic!("--{name} in {args:?}"))
            .to_string()
    };
    let listen: std::net::SocketAddr = flag("listen").parse().expect("--listen");
    assert!(
        listen.ip().is_loopback(),
        "flows and status on loopback only"
    );
    let metrics: std::net::SocketAddr = flag("metrics-listen").parse().expect("--metrics-listen");
    assert!(
        metrics.ip().is_unspecified() && metrics.is_ipv6(),
        "[::] takes IPv4 and IPv6"
    );
    assert_ne!(metrics.port(), 9965, "9965 is Hubble's metrics port");
    let port = &agent["ports"][0];
    assert_eq!(port["name"], "metrics");
    assert_eq!(
        port["containerPort"].as_u64(),
        Some(u64::from(metrics.port()))
    );
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(agent[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    assert_eq!(agent["readinessProbe"]["httpGet"]["path"], "/readyz");
    let annotations = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(metrics.port().to_string().as_str())
    );
    let svc = of_kind(&docs, "Service");
    assert_eq!(svc.len(), 1);
    assert_eq!(
        svc[0]["spec"]["ports"][0]["port"].as_u64(),
        Some(u64::from(metrics.port()))
    );

    for c in spec["containers"]
        .as_sequence()
        .into_iter()
        .chain(spec["initContainers"].as_sequence())
        .flatten()
    {
        let image = c["image"].as_str().expect("image");
        let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
        assert!(
            !tag.is_empty() && tag != "dev" && tag != "latest",
            "{image}: a pinned tag"
        );
    }
}

#[test]
fn the_configmap_is_generated_and_mounted_and_rbac_is_read_only() {
    let docs = rendered();
    let cms = of_kind(&docs, "ConfigMap");
    assert_eq!(cms.len(), 1);
    let name = cms[0]["metadata"]["name"].as_str().expect("name");
    assert!(
        name.starts_with("palisade-config-") && name.len() > "palisade-config-".len(),
        "hash suffix, so a change rolls the DaemonSet: {name}"
    );
    let shipped = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/config.yaml"),
    )
    .expect("config.yaml");
    assert_eq!(
        cms[0]["data"]["config.yaml"].as_str(),
        Some(shipped.as_str())
    );
    let cfg: palisade_agent::config::FileConfig =
        serde_yaml::from_str(&shipped).expect("the agent accepts the shipped config");
    assert!(
        cfg.interface_prefixes.is_empty(),
        "prefixes attach to every matching veth, uplinks included"
    );
    let ds = of_kind(&docs, "DaemonSet")[0];
    let volumes = ds["spec"]["template"]["spec"]["volumes"]
        .as_sequence()
        .expect("volumes");
    assert!(
        volumes
            .iter()
            .any(|v| v["configMap"]["name"].as_str() == Some(name)),
        "the pods mount the generated ConfigMap"
    );

    for role in of_kind(&docs, "ClusterRole")
        .into_iter()
        .chain(of_kind(&docs, "Role"))
    {
        for rule in role["rules"].as_sequence().expect("rules") {
            for verb in strs(&rule["verbs"]) {
                assert!(
                    ["get", "list", "watch"].contains(&verb.as_str()),
                    "{verb} in {rule:?}"
                );
            }
        }
    }
}

/// The stand-in CRDs `cargo xtask kind e2e` applies are valid
/// CustomResourceDefinitions, and the agent's ClusterRole may list and
/// watch each kind they define.
#[test]
fn the_kind_crds_are_valid_and_the_agent_may_watch_them() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kind/crds.yaml");
    let text = std::fs::read_to_string(&path).expect("deploy/kind/crds.yaml");
    let crds: Vec<CustomResourceDefinition> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("a CustomResourceDefinition"))
        .collect();
    let defined: Vec<(String, String, String, String)> = crds
        .iter()
        .map(|c| {
            let s = &c.spec;
            assert_eq!(
                c.metadata.name.as_deref(),
                Some(format!("{}.{}", s.names.plural, s.group).as_str()),
                "a CRD's name is plural.group"
            );
            assert_eq!(s.versions.len(), 1);
            (
                s.group.clone(),
                s.versions[0].name.clone(),
                s.names.kind.clone(),
                s.scope.clone(),
            )
        })
        .collect();
    let want = [
        (
            "policy.networking.k8s.io",
            "v1alpha2",
            "ClusterNetworkPolicy",
            "Cluster",
        ),
        ("projectcalico.org", "v3", "NetworkPolicy", "Namespaced"),
        ("projectcalico.org", "v3", "GlobalNetworkPolicy", "Cluster"),
        ("projectcalico.org", "v3", "Tier", "Cluster"),
    ]
    .map(|(g, v, k, s)| (g.into(), v.into(), k.into(), s.into()));
    assert_eq!(defined, want);

    let docs = rendered();
    let role = of_kind(&docs, "ClusterRole")[0];
    for c in &crds {
        let allowed = role["rules"].as_sequence().expect("rules").iter().any(|r| {
            strs(&r["apiGroups"]).contains(&c.spec.group)
                && strs(&r["resources"]).contains(&c.spec.names.plural)
                && ["list", "watch"]
                    .iter()
                    .all(|v| strs(&r["verbs"]).contains(&v.to_string()))
        });
        assert!(allowed, "the agent may not watch {}", c.spec.names.plural);
    }
}
