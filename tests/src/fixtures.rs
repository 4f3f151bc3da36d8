//! Shared pieces of the privileged tests: a datapath loaded with a model's
//! maps (for BPF_PROG_TEST_RUN), and YAML builders.

use std::sync::atomic::{AtomicU32, Ordering};

use aya::programs::{TestRun, TestRunOptions};
use palisade_agent::{
    dataplane::{Datapath, KernelMaps, MapSizes, PinPaths, UnknownEndpoint, paths::Hook},
    index::Index,
    model::Node,
    policy::{Maps, Profile},
    source::yaml::parse_objects,
    sync::Syncer,
};

/// A pin tree of its own, removed when dropped.
pub struct Pins(pub PinPaths);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = Datapath::uninstall(&self.0);
    }
}

/// The programs loaded under a fresh pin tree, their maps holding `model`
/// compiled for node `n1` (whose address is 172.31.0.1).
pub fn load(
    model: &str,
    profile: &Profile,
    unknown: UnknownEndpoint,
) -> (Pins, Datapath, Syncer<KernelMaps>) {
    let (pins, dp, syncer, failed) = load_sized(model, profile, unknown, MapSizes::default());
    assert_eq!(failed, 0, "map writes failed");
    (pins, dp, syncer)
}

/// [`load`] with map capacities of the test's choosing; returns how many map
/// writes of the first sync failed.
pub fn load_sized(
    model: &str,
    profile: &Profile,
    unknown: UnknownEndpoint,
    sizes: MapSizes,
) -> (Pins, Datapath, Syncer<KernelMaps>, usize) {
    load_with(model, profile, unknown, sizes, false)
}

/// [`load_sized`], with every endpoint observing its allowed flows when
/// `observe` (as the agent's `--observe-flows`).
pub fn load_with(
    model: &str,
    profile: &Profile,
    unknown: UnknownEndpoint,
    sizes: MapSizes,
    observe: bool,
) -> (Pins, Datapath, Syncer<KernelMaps>, usize) {
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "privileged test: run as root (cargo xtask test)"
    );
    static N: AtomicU32 = AtomicU32::new(0);
    let pins = Pins(PinPaths::new(format!(
        "/sys/fs/bpf/palisade-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )));
    let mut dp = Datapath::open_sized(pins.0.clone(), unknown, sizes)
        .expect("load the programs (the verifier must accept them)");
    let model = parse_model(model);
    let mut syncer =
        Syncer::new(dp.kernel_maps().expect("maps"), Maps::default()).with_observation(observe);
    let r = syncer.sync(&model, &node(&model), profile);
    (pins, dp, syncer, r.failed)
}

/// `BPF_PROG_TEST_RUN` runs a frame on the loopback device.
pub const TEST_RUN_IFINDEX: u32 = 1;

/// The node the fixtures compile for, with every local pod bound to the
/// interface test runs use.
pub fn node(model: &palisade_agent::model::Model) -> Node {
    Node {
        name: "n1".into(),
        addresses: vec!["172.31.0.1".parse().expect("ip")],
        interfaces: model
            .pods
            .values()
            .filter(|p| p.node == "n1" && !p.host_network)
            .flat_map(|p| p.ips.iter().map(|ip| (*ip, TEST_RUN_IFINDEX)))
            .collect(),
    }
}

/// A model from YAML; panics on a rejected object.
pub fn parse_model(yaml: &str) -> palisade_agent::model::Model {
    let mut index = Index::default();
    for o in parse_objects("test", yaml) {
        index
            .apply(&o.expect("valid object"))
            .expect("valid object");
    }
    index.model().clone()
}

/// Runs one frame through a tc program; the verdict, or the kernel's refusal.
pub fn test_run(
    dp: &mut Datapath,
    hook: Hook,
    pkt: &[u8],
) -> Result<u32, aya::programs::ProgramError> {
    let prog = dp.classifier(hook).expect("program");
    prog.test_run(TestRunOptions {
        data_in: Some(pkt),
        ..TestRunOptions::new()
    })
    .map(|r| r.return_value)
}

/// A running pod in namespace `ns` labelled `pod: NAME`, on the harness's node.
pub fn pod_yaml(ns: &str, name: &str, ip: impl std::fmt::Display) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{pod: {name}}}}}\n\
         spec: {{nodeName: {}, containers: [{{name: c, image: i}}]}}\nstatus: {{podIP: \"{ip}\"}}\n",
        crate::topology::NODE_NAME
    )
}

/// Whether a TCP connection from inside `netns` to `to` succeeds in time.
pub fn connects(netns: &str, to: std::net::SocketAddr, timeout: std::time::Duration) -> bool {
    crate::netns::in_netns(netns, move || {
        Ok(std::net::TcpStream::connect_timeout(&to, timeout).is_ok())
    })
    .unwrap_or(false)
}

/// A TCP echo server inside `netns` on `port`, one thread per connection,
/// for as long as the test process runs.
pub fn tcp_echo(netns: &str, port: u16) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    let l = crate::netns::in_netns(netns, move || {
        Ok(std::net::TcpListener::bind(("0.0.0.0", port))?)
    })?;
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(())
}

/// One datapath counter, summed over CPUs, read from the pinned map of the
/// agent whose pin tree is `pins`.
pub fn pinned_counter(pins: &PinPaths, c: palisade_common::Counter) -> u64 {
    use aya::maps::{Map, MapData, PerCpuArray};
    let data = MapData::from_pin(pins.maps().join(palisade_common::MAP_COUNTERS))
        .expect("pinned counters");
    let map: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).expect("counters map");
    palisade_agent::dataplane::counters::read(&map)
        .into_iter()
        .find(|(k, _)| *k == c)
        .map_or(0, |(_, v)| v)
}

/// Writes `text` as the source directory's one file, atomically (the agent
/// must never read half of it).
pub fn write_source(source: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let tmp = source.join("cluster.yaml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, source.join("cluster.yaml"))?;
    Ok(())
}

/// Privileged tests fail, never pass silently, when not run as root.
pub fn require_root() {
    // SAFETY: no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "privileged test: run as root (cargo xtask test)");
}
