//! The shipped configuration never black-holes what is not a pod (issue
//! #20): a node with an uplink veth `eth0` (as a kind node has) and a
//! non-pod veth (as Docker's containers or a VM's tap make) keeps their
//! traffic with the agent running on `deploy/base/config.yaml` exactly
//! (read here, so the test follows the file), while its pods stay
//! enforced, also for traffic that comes in over the uplink, and a pod the
//! API has not named yet is judged from its first packet. Then the same
//! node with an agent told to attach to every veth loses the uplink, which
//! is what the shipped file must never do (and shows this test can fail).
//! Privileged: root, netns, eBPF.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use palisade_agent::{config::FileConfig, dataplane::PinPaths};
use palisade_common::Counter;
use palisade_tests::{
    agent::{AgentProcess, AgentSpec, agent_bin},
    exec::run,
    fixtures,
    topology::{Cluster, Created, forget, remember},
};

const WEB: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 11);
/// A pod the CNI has wired but the API has not told the agent of yet.
const NEWCOMER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 12);
/// Another node's pod, routed over the uplink (as the harness's nodes do).
const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 9, 9, 9);
/// The node's uplink (kind: the node container's eth0 on Docker's bridge).
const UPLINK_NODE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const UPSTREAM: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// A Docker container on the node's docker0 subnet: a veth, but no pod.
const DOCKER_GW: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 1);
const DOCKER: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 2);
const DOCKER_IF: &str = "vethdock0";

/// `web` takes no ingress; everyone's egress is open.
const SOURCE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-closed, namespace: x}
spec:
  podSelector: {matchLabels: {pod: web}}
  policyTypes: [Ingress]
"#;

/// A network namespace of this test; removed when dropped.
struct Netns(String);

impl Netns {
    fn new(name: String) -> anyhow::Result<Self> {
        run(Command::new("ip").args(["netns", "add", &name]))?;
        remember(Created::Netns(name.clone()));
        Ok(Self(name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
        forget(&Created::Netns(self.0.clone()));
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args)).map(|_| ())
}

/// The shipped agent settings, as the ConfigMap generator takes them.
fn shipped_config() -> anyhow::Result<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/config.yaml");
    let text = std::fs::read_to_string(&path)?;
    let kustomization = std::fs::read_to_string(path.with_file_name("kustomization.yaml"))?;
    assert!(
        kustomization.contains("files: [config.yaml]"),
        "deploy/base/kustomization.yaml no longer makes the ConfigMap from config.yaml; \
         point this test at what it ships"
    );
    Ok(text)
}

#[test]
fn shipped_config_leaves_the_uplink_and_other_veths_alone_and_enforces_pods() -> anyhow::Result<()>
{
    palisade_tests::fixtures::require_root();
    let bin = agent_bin()?;
    let run_id = format!("i{}", std::process::id() % 100_000);
    let mut cluster = Cluster::new(&run_id, palisade_tests::scenario::Family::Ipv4)?;
    let node = cluster.node_netns.clone();
    let web = cluster.add_wired("x/web", Some(WEB), None, Vec::new())?;
    let client = cluster.add_wired("x/client", Some(CLIENT), None, Vec::new())?;
    let (web_ns, client_ns) = (
        web.netns.unwrap_or_default(),
        client.netns.unwrap_or_default(),
    );
    let newcomer = cluster.add_wired("x/newcomer", Some(NEWCOMER), None, Vec::new())?;
    let newcomer_ns = newcomer.netns.unwrap_or_default();

    // The uplink: eth0, the node's default route, with routes back to the
    // pods and the docker subnet through it.
    let upstream = Netns::new(format!("pal{run_id}-up"))?;
    let up = upstream.0.as_str();
    ip(&[
        "-n", &node, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", up,
    ])?;
    for (ns, addr) in [(node.as_str(), UPLINK_NODE), (up, UPSTREAM)] {
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    ip(&[
        "-n",
        &node,
        "route",
        "add",
        "default",
        "via",
        &UPSTREAM.to_string(),
    ])?;
    for net in ["10.9.0.0/16", "172.17.0.0/16", "172.31.0.1/32"] {
        ip(&[
            "-n",
            up,
            "route",
            "add",
            net,
            "via",
            &UPLINK_NODE.to_string(),
        ])?;
    }
    // A host route, but via a gateway: another node's pod, not one of ours.
    ip(&[
        "-n",
        &node,
        "route",
        "add",
        &format!("{REMOTE_POD}/32"),
        "via",
        &UPSTREAM.to_string(),
    ])?;
    // A Docker container behind a veth: a subnet route, no host route.
    let docker = Netns::new(format!("pal{run_id}-dk"))?;
    let dk = docker.0.as_str();
    ip(&[
        "-n", &node, "link", "add", DOCKER_IF, "type", "veth", "peer", "name", "eth0", "netns", dk,
    ])?;
    ip(&[
        "-n",
        &node,
        "addr",
        "add",
        &format!("{DOCKER_GW}/16"),
        "dev",
        DOCKER_IF,
    ])?;
    ip(&["-n", &node, "link", "set", DOCKER_IF, "up"])?;
    ip(&[
        "-n",
        dk,
        "addr",
        "add",
        &format!("{DOCKER}/16"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", dk, "link", "set", "eth0", "up"])?;
    ip(&["-n", dk, "link", "set", "lo", "up"])?;
    ip(&[
        "-n",
        dk,
        "route",
        "add",
        "default",
        "via",
        &DOCKER_GW.to_string(),
    ])?;
    for ns in [up, dk, &web_ns, &client_ns, &newcomer_ns] {
        fixtures::tcp_echo(ns, 80)?;
    }

    let dir = std::env::temp_dir().join(format!("palisade-ifsel-{run_id}"));
    let source = dir.join("source");
    std::fs::create_dir_all(&source)?;
    let mut text = SOURCE.to_string();
    for (name, addr) in [("web", WEB), ("client", CLIENT)] {
        text += &fixtures::pod_yaml("x", name, addr);
    }
    fixtures::write_source(&source, &text)?;
    let shipped = shipped_config()?;
    let cfg: FileConfig = serde_yaml::from_str(&shipped)?;
    let config = dir.join("config.yaml");
    std::fs::write(&config, &shipped)?;
    let pin_root = PathBuf::from(format!("/sys/fs/bpf/palisade-ifsel-{run_id}"));
    let pins = PinPaths::new(&pin_root);
    let mut agent = AgentProcess::start(AgentSpec {
        config: Some(config.clone()),
        // Nothing on the command line: the shipped settings decide.
        interface_prefixes: Vec::new(),
        ..AgentSpec::in_dir(bin, &node, &dir, pin_root)
    })?;
    let mut pod_ifs = cluster.interfaces();
    pod_ifs.sort();
    let status = agent.wait_programmed(&pod_ifs, Duration::from_secs(20))?;
    let mut attached = status.attached.clone();
    attached.sort();
    assert_eq!(
        attached, pod_ifs,
        "with {:?} / unknownPodTraffic {:?} the agent attaches to the pods' veths only",
        cfg.interface_prefixes, cfg.unknown_pod_traffic
    );

    let t = Duration::from_millis(700);
    let to = |a: Ipv4Addr| SocketAddr::from((a, 80));
    let reach = [
        (
            node.as_str(),
            UPSTREAM,
            "the node reaches the outside over its uplink",
        ),
        (dk, UPSTREAM, "the docker container reaches the outside"),
        (
            node.as_str(),
            DOCKER,
            "the node reaches the docker container",
        ),
        (up, DOCKER, "the outside reaches the docker container"),
        (
            web_ns.as_str(),
            UPSTREAM,
            "a pod with open egress reaches the outside",
        ),
        (up, CLIENT, "the outside reaches an unisolated pod"),
        (web_ns.as_str(), CLIENT, "pod to pod, both open"),
    ];
    for (from, dst, what) in reach {
        assert!(fixtures::connects(from, to(dst), t), "{what}");
    }
    let denied = fixtures::pinned_counter(&pins, Counter::Denied);
    assert!(
        !fixtures::connects(&client_ns, to(WEB), t),
        "web's ingress is closed to pods"
    );
    assert!(
        !fixtures::connects(up, to(WEB), t),
        "web's ingress is closed over the uplink too"
    );
    assert!(
        fixtures::pinned_counter(&pins, Counter::Denied) > denied,
        "the denials are the agent's"
    );
    // The start-up race stays closed: a veth with a pod's host route is
    // judged before the API names its pod (unknownPodTraffic: deny).
    let unknown = fixtures::pinned_counter(&pins, Counter::NotEndpoint);
    assert!(!fixtures::connects(&newcomer_ns, to(UPSTREAM), t));
    assert!(!fixtures::connects(up, to(NEWCOMER), t));
    assert!(
        fixtures::pinned_counter(&pins, Counter::NotEndpoint) > unknown,
        "the unknown pod's packets are dropped and counted"
    );

    // The configuration the issue measured: every veth attached, unknown
    // traffic denied. The node and the docker container lose the outside.
    agent.stop(libc::SIGTERM)?;
    let mut every: serde_yaml::Value = serde_yaml::from_str(&shipped)?;
    every["interfacePrefixes"] = serde_yaml::to_value(["eth", "vethdock", "pl"])?;
    every["unknownPodTraffic"] = "deny".into();
    std::fs::write(&config, serde_yaml::to_string(&every)?)?;
    agent.restart()?;
    let mut all_ifs = pod_ifs.clone();
    all_ifs.extend(["eth0".to_string(), DOCKER_IF.to_string()]);
    agent.wait_programmed(&all_ifs, Duration::from_secs(20))?;
    assert!(
        !fixtures::connects(&node, to(UPSTREAM), t),
        "attached to every veth, the uplink is black-holed (else this test proves nothing)"
    );
    assert!(!fixtures::connects(dk, to(UPSTREAM), t));
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
