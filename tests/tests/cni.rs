//! No unjudged window for new pods (issue #14, item 6): a pod wired while the
//! agent is stopped, by the real CNI chain ptp (+ host-local) then
//! `palisade-cni`, is judged from its first packet (dropped as an unknown
//! endpoint, counted) and by its policy once the agent is back; a pod wired
//! by ptp alone is reachable meanwhile (so the test can fail). And the
//! agent attaches to a new veth on the rtnetlink notification, long before
//! its poll. Privileged: root, netns, eBPF.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use palisade_agent::dataplane::{PinPaths, paths::Hook};
use palisade_common::{Counter, PROG_FROM_POD, PROG_TO_POD};
use palisade_tests::{
    agent::{AgentProcess, AgentSpec, agent_bin},
    cni_calls::{self as cni, CniPath, Invocation},
    fixtures, netns,
    topology::{Cluster, Created, forget, remember},
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 10);
const NEW: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 20);
const BARE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 21);
const SUBNET: &str = "10.77.0.0/24";

/// Pods `new` and `bare` take no ingress; their egress is open.
const SOURCE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: new-closed, namespace: x}
spec:
  podSelector: {matchExpressions: [{key: pod, operator: In, values: [new, bare]}]}
  policyTypes: [Ingress]
"#;

fn require_root() {
    palisade_tests::fixtures::require_root();
}

/// A pod's network namespace that the CNI chain wires; removed when dropped.
struct PodNetns(String);

impl PodNetns {
    fn new(name: String) -> anyhow::Result<Self> {
        palisade_tests::exec::run(Command::new("ip").args(["netns", "add", &name]))?;
        remember(Created::Netns(name.clone()));
        Ok(Self(name))
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
        forget(&Created::Netns(self.0.clone()));
    }
}

fn write_source(source: &Path, pods: &[(&str, Ipv4Addr)]) -> anyhow::Result<()> {
    let mut text = SOURCE.to_string();
    for (name, ip) in pods {
        text += &fixtures::pod_yaml("x", name, ip);
    }
    fixtures::write_source(source, &text)
}

/// Whether both link pins of the interface named `ifname` exist.
fn links_pinned(pins: &PinPaths, ifname: &str) -> bool {
    let names: Vec<String> = std::fs::read_dir(pins.links())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    [Hook::FromPod, Hook::ToPod].iter().all(|h| {
        names
            .iter()
            .any(|n| n.ends_with(&format!("-{}-{ifname}", h.name())))
    })
}

#[test]
fn pods_wired_while_the_agent_is_down_are_judged_from_the_first_packet() -> anyhow::Result<()> {
    require_root();
    let bin = agent_bin()?;
    let run = format!("c{}", std::process::id() % 100_000);
    let mut cluster = Cluster::new(&run, palisade_tests::scenario::Family::Ipv4)?;
    let client = cluster.add_wired("x/client", Some(CLIENT), None, Vec::new())?;
    let client_ns = client.netns.clone().unwrap_or_default();
    fixtures::tcp_echo(&client_ns, 80)?;

    let dir = std::env::temp_dir().join(format!("palisade-cni-{run}"));
    let source = dir.join("source");
    std::fs::create_dir_all(&source)?;
    write_source(&source, &[("client", CLIENT)])?;
    let pin_root = PathBuf::from(format!("/sys/fs/bpf/palisade-cni-{run}"));
    let pins = PinPaths::new(&pin_root);
    let mut agent = AgentProcess::start(AgentSpec {
        // ptp names host veths veth…; the harness's own are pl….
        extra: ["--poll-ms", "100", "--interface-prefix", "veth"]
            .map(String::from)
            .to_vec(),
        ..AgentSpec::in_dir(bin.clone(), &cluster.node_netns, &dir, pin_root.clone())
    })?;
    agent.wait_programmed(&cluster.interfaces(), Duration::from_secs(20))?;
    for p in [PROG_FROM_POD, PROG_TO_POD] {
        assert!(pins.program(p).exists(), "agent pinned {p}");
    }

    // The agent stops; the pinned state keeps enforcing (--on-exit keep).
    agent.stop(libc::SIGTERM)?;

    let path = CniPath::new(&dir.join("cni-bin"), &bin)?;
    let ipam = dir.join("ipam");
    let new_ns = PodNetns::new(format!("pal{run}-new"))?;
    let bare_ns = PodNetns::new(format!("pal{run}-bare"))?;
    let pod = |ns: &PodNetns, id: &str| Invocation {
        path: &path,
        node_netns: &cluster.node_netns,
        pod_netns: netns::netns_path(&ns.0),
        container_id: format!("{run}-{id}"),
        ifname: "eth0".into(),
    };
    let with_plugin = [
        cni::ptp(SUBNET, NEW, &ipam),
        serde_json::json!({"type": "palisade-cni", "pinRoot": pin_root}),
    ];
    let new_pod = pod(&new_ns, "new");
    let new_result = new_pod.add("palisade", &with_plugin)?;
    let ptp_alone = [cni::ptp(SUBNET, BARE, &ipam)];
    let bare_result = pod(&bare_ns, "bare").add("ptp-only", &ptp_alone)?;
    let new_veth = cni::host_interface(&new_result).expect("ptp names its host veth");
    let bare_veth = cni::host_interface(&bare_result).expect("ptp names its host veth");
    assert!(new_veth.starts_with("veth") && bare_veth.starts_with("veth"));
    assert!(
        new_result["ips"][0]["address"]
            .as_str()
            .is_some_and(|a| a.starts_with(&format!("{NEW}/"))),
        "prevResult passed through unchanged: {new_result}"
    );
    assert!(links_pinned(&pins, &new_veth), "plugin pinned the links");
    assert!(!links_pinned(&pins, &bare_veth));
    fixtures::tcp_echo(&new_ns.0, 80)?;
    fixtures::tcp_echo(&bare_ns.0, 80)?;

    // Agent down: the plugin's pod neither receives nor sends, and the
    // drops are counted; the pod without the plugin is wide open.
    let t = Duration::from_millis(700);
    let unknown_before = fixtures::pinned_counter(&pins, Counter::NotEndpoint);
    assert!(
        !fixtures::connects(&client_ns, SocketAddr::from((NEW, 80)), t),
        "client reached the new pod while the agent was down"
    );
    let unknown_in = fixtures::pinned_counter(&pins, Counter::NotEndpoint);
    assert!(unknown_in > unknown_before, "ingress drop counted");
    assert!(
        !fixtures::connects(&new_ns.0, SocketAddr::from((CLIENT, 80)), t),
        "the new pod sent while the agent was down"
    );
    assert!(
        fixtures::pinned_counter(&pins, Counter::NotEndpoint) > unknown_in,
        "egress drop counted"
    );
    assert!(
        fixtures::connects(&client_ns, SocketAddr::from((BARE, 80)), t),
        "without the plugin the pod is reachable (or the test proves nothing)"
    );
    assert!(fixtures::connects(
        &bare_ns.0,
        SocketAddr::from((CLIENT, 80)),
        t
    ));

    // The agent comes back and learns the pods: their policy applies.
    write_source(&source, &[("client", CLIENT), ("new", NEW), ("bare", BARE)])?;
    agent.restart()?;
    let mut ifaces = cluster.interfaces();
    ifaces.extend([new_veth.clone(), bare_veth.clone()]);
    agent.wait_programmed(&ifaces, Duration::from_secs(20))?;
    assert!(
        links_pinned(&pins, &new_veth),
        "agent adopted the plugin's links"
    );
    let denied_before = fixtures::pinned_counter(&pins, Counter::Denied);
    assert!(
        !fixtures::connects(&client_ns, SocketAddr::from((NEW, 80)), t),
        "ingress of the new pod is denied by its policy"
    );
    assert!(fixtures::pinned_counter(&pins, Counter::Denied) > denied_before);
    assert!(
        fixtures::connects(&new_ns.0, SocketAddr::from((CLIENT, 80)), t),
        "egress of the new pod is open"
    );
    assert!(
        !fixtures::connects(&client_ns, SocketAddr::from((BARE, 80)), t),
        "the agent enforces the ptp-only pod once it is back"
    );

    // DEL succeeds through the chain; the pins go with the veth.
    new_pod.del("palisade", &with_plugin, &new_result)?;
    drop(new_ns);
    let deadline = Instant::now() + Duration::from_secs(10);
    while links_pinned(&pins, &new_veth) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !links_pinned(&pins, &new_veth),
        "the agent removed the pins of the deleted veth"
    );
    agent.stop(libc::SIGTERM)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn plugin_fails_closed_before_the_agent_ever_ran() -> anyhow::Result<()> {
    require_root();
    let bin = agent_bin()?;
    let run = format!("d{}", std::process::id() % 100_000);
    let cluster = Cluster::new(&run, palisade_tests::scenario::Family::Ipv4)?;
    let dir = std::env::temp_dir().join(format!("palisade-cni-{run}"));
    let path = CniPath::new(&dir.join("cni-bin"), &bin)?;
    let pin_root = format!("/sys/fs/bpf/palisade-cni-{run}-never");
    let pod_ns = PodNetns::new(format!("pal{run}-p"))?;
    let pod = Invocation {
        path: &path,
        node_netns: &cluster.node_netns,
        pod_netns: netns::netns_path(&pod_ns.0),
        container_id: format!("{run}-p"),
        ifname: "eth0".into(),
    };
    let mut ptp = cni::ptp(SUBNET, NEW, &dir.join("ipam"));
    ptp["cniVersion"] = "1.0.0".into();
    ptp["name"] = "palisade".into();
    let prev = pod.call("ADD", &ptp)?.expect("ptp prints its result");
    let mut conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "palisade", "type": "palisade-cni",
        "pinRoot": pin_root, "prevResult": prev,
    });
    let err = pod
        .call("ADD", &conf)
        .expect_err("no pinned programs: ADD fails");
    let text = format!("{err:#}");
    assert!(
        text.contains("\"code\":11") && text.contains("has not run on this node"),
        "{text}"
    );
    // failOpen lets the pod start (unjudged until the agent attaches).
    conf["failOpen"] = true.into();
    assert_eq!(pod.call("ADD", &conf)?, Some(prev));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn agent_attaches_a_new_veth_on_the_netlink_notification() -> anyhow::Result<()> {
    require_root();
    let bin = agent_bin()?;
    let run = format!("n{}", std::process::id() % 100_000);
    let mut cluster = Cluster::new(&run, palisade_tests::scenario::Family::Ipv4)?;
    let dir = std::env::temp_dir().join(format!("palisade-cni-{run}"));
    let source = dir.join("source");
    std::fs::create_dir_all(&source)?;
    let late = Ipv4Addr::new(10, 9, 0, 30);
    write_source(&source, &[("late", late)])?;
    let pin_root = PathBuf::from(format!("/sys/fs/bpf/palisade-cni-{run}"));
    // A poll far longer than the test: only a notification can wake the loop.
    let agent = AgentProcess::start(AgentSpec {
        extra: ["--poll-ms", "60000"].map(String::from).to_vec(),
        ..AgentSpec::in_dir(bin, &cluster.node_netns, &dir, pin_root)
    })?;
    agent.wait_programmed(&[], Duration::from_secs(20))?;
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    cluster.add_wired("x/late", Some(late), None, Vec::new())?;
    agent.wait_programmed(&cluster.interfaces(), Duration::from_secs(5))?;
    eprintln!("attached {:?} after the veth appeared", started.elapsed());
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
