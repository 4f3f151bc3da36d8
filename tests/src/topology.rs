//! The one-node cluster of the privileged tests and benchmarks: one network
//! namespace for the node, one per pod and per external, each wired to the
//! node with a veth and host routes the way a point-to-point CNI does it
//! (Calico style: the pod's default route goes to a link-local gateway on
//! the node side of its veth). Scenarios run on `nodes.rs` instead (many
//! nodes, CNI, Services). Also: what any run created, for an interrupt.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::Command,
    sync::Mutex,
};

use anyhow::Context as _;

use crate::{
    exec::run,
    scenario::{Family, PortSpec},
};

pub const NODE_NAME: &str = "palisade-node";
const GATEWAY_V4: &str = "169.254.1.1";
const GATEWAY_V6: &str = "fe80::1";
/// The node's own addresses (on its loopback): the source of node-to-pod traffic.
pub const NODE_V4: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 1);
pub const NODE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x31, 0, 0, 0, 0, 0, 1);
/// Node-side veths of pods start with this (the agent attaches to these);
/// externals get `EXTERNAL_IF_PREFIX`, since they are not pods.
pub const IF_PREFIX: &str = "pl";
pub const EXTERNAL_IF_PREFIX: &str = "px";

/// Everything a run created, so an interrupt can remove it.
static CREATED: Mutex<Vec<Created>> = Mutex::new(Vec::new());

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Created {
    Netns(String),
    Cgroup(PathBuf),
    /// A pin tree under /sys/fs/bpf.
    Pins(PathBuf),
    /// A child process (the agent).
    Process(u32),
    /// A directory of the harness's own (e.g. CNI leases).
    Dir(PathBuf),
}

pub fn remember(c: Created) {
    CREATED.lock().unwrap_or_else(|e| e.into_inner()).push(c);
}

/// Forgets something that was cleaned up normally.
pub fn forget(c: &Created) {
    CREATED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|x| x != c);
}

/// Removes everything any cluster of this process created (interrupt handler).
pub fn cleanup_all() {
    let items: Vec<Created> =
        std::mem::take(&mut *CREATED.lock().unwrap_or_else(|e| e.into_inner()));
    for c in items.into_iter().rev() {
        remove(&c);
    }
}

pub(crate) fn remove(c: &Created) {
    match c {
        Created::Netns(n) => {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
        Created::Pins(p) | Created::Dir(p) => {
            let _ = std::fs::remove_dir_all(p);
        }
        Created::Process(pid) => {
            // SAFETY: kill(2) of a child we started.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
        Created::Cgroup(p) => {
            // Deepest first; only empty cgroups can go.
            for dir in p.ancestors().take(4) {
                if dir
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("palisade-e2e"))
                {
                    let _ = std::fs::remove_dir(dir);
                    break;
                }
                let _ = std::fs::remove_dir(dir);
            }
        }
    }
}

pub(crate) fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args)).map(|_| ())
}

/// A pod or external as the harness sees it.
#[derive(Clone, Debug)]
pub struct Host {
    /// `ns/pod` or `external:NAME`.
    pub name: String,
    /// Own network namespace; `None` for hostNetwork pods (they live in the node's).
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
    pub ports: Vec<PortSpec>,
    /// Cgroup of a hostNetwork pod's processes.
    pub cgroup: Option<PathBuf>,
    pub uid: String,
    /// The node it runs on (index); `None` for externals.
    pub node: Option<usize>,
}

impl Host {
    pub fn addr(&self, v6: bool) -> Option<IpAddr> {
        if v6 {
            self.v6.map(IpAddr::V6)
        } else {
            self.v4.map(IpAddr::V4)
        }
    }
}

pub struct Cluster {
    pub run: String,
    pub node_netns: String,
    pub family: Family,
    pub hosts: BTreeMap<String, Host>,
    next_if: u32,
    cgroup_root: PathBuf,
}

impl Cluster {
    pub fn new(run_id: &str, family: Family) -> anyhow::Result<Self> {
        let node_netns = format!("pal{run_id}-node");
        ip(&["netns", "add", &node_netns])?;
        remember(Created::Netns(node_netns.clone()));
        ip(&["-n", &node_netns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &node_netns,
            "addr",
            "add",
            &format!("{NODE_V4}/32"),
            "dev",
            "lo",
        ])?;
        ip(&[
            "-n",
            &node_netns,
            "addr",
            "add",
            &format!("{NODE_V6}/128"),
            "dev",
            "lo",
            "nodad",
        ])?;
        for sysctl in ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"] {
            run(Command::new("ip").args(["netns", "exec", &node_netns, "sysctl", "-qw", sysctl]))?;
        }
        let cgroup_root = PathBuf::from(cgroup2_mount()?).join(format!("palisade-e2e-{run_id}"));
        Ok(Self {
            run: run_id.to_string(),
            node_netns,
            family,
            hosts: BTreeMap::new(),
            next_if: 0,
            cgroup_root,
        })
    }

    pub fn cgroup_root(&self) -> &PathBuf {
        &self.cgroup_root
    }

    /// Adds a host in its own namespace with the given addresses.
    pub fn add_wired(
        &mut self,
        name: &str,
        v4: Option<Ipv4Addr>,
        v6: Option<Ipv6Addr>,
        ports: Vec<PortSpec>,
    ) -> anyhow::Result<Host> {
        let idx = self.next_if;
        self.next_if += 1;
        let netns = format!("pal{}-{idx}", self.run);
        let prefix = if name.starts_with("external:") {
            EXTERNAL_IF_PREFIX
        } else {
            IF_PREFIX
        };
        let ifname = format!("{prefix}{idx}");
        let node = self.node_netns.clone();
        ip(&["netns", "add", &netns])?;
        remember(Created::Netns(netns.clone()));
        ip(&[
            "-n", &node, "link", "add", &ifname, "type", "veth", "peer", "name", "eth0", "netns",
            &netns,
        ])?;
        ip(&["-n", &node, "link", "set", &ifname, "up"])?;
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        if let Some(a) = v4 {
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{a}/32"),
                "dev",
                "eth0",
            ])?;
            ip(&[
                "-n",
                &node,
                "addr",
                "add",
                &format!("{GATEWAY_V4}/32"),
                "dev",
                &ifname,
            ])?;
            ip(&[
                "-n", &netns, "route", "add", GATEWAY_V4, "dev", "eth0", "scope", "link",
            ])?;
            ip(&[
                "-n", &netns, "route", "add", "default", "via", GATEWAY_V4, "dev", "eth0",
            ])?;
            ip(&[
                "-n",
                &node,
                "route",
                "add",
                &format!("{a}/32"),
                "dev",
                &ifname,
                "src",
                &NODE_V4.to_string(),
            ])?;
        }
        if let Some(a) = v6 {
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{a}/128"),
                "dev",
                "eth0",
                "nodad",
            ])?;
            ip(&[
                "-n",
                &node,
                "addr",
                "add",
                &format!("{GATEWAY_V6}/64"),
                "dev",
                &ifname,
                "nodad",
            ])?;
            ip(&[
                "-n", &netns, "-6", "route", "add", "default", "via", GATEWAY_V6, "dev", "eth0",
            ])?;
            ip(&[
                "-n",
                &node,
                "-6",
                "route",
                "add",
                &format!("{a}/128"),
                "dev",
                &ifname,
                "src",
                &NODE_V6.to_string(),
            ])?;
        }
        let host = Host {
            name: name.to_string(),
            netns: Some(netns),
            ifname: Some(ifname),
            v4,
            v6,
            ports,
            cgroup: None,
            uid: format!("{:08x}-0000-4000-8000-{:012x}", idx, idx),
            node: (!name.starts_with("external:")).then_some(0),
        };
        self.hosts.insert(name.to_string(), host.clone());
        Ok(host)
    }

    /// A hostNetwork pod: the node's addresses, a cgroup of its own laid out
    /// the way the kubelet's cgroupfs driver does it.
    pub fn add_host_network(&mut self, name: &str, ports: Vec<PortSpec>) -> anyhow::Result<Host> {
        let idx = self.next_if;
        self.next_if += 1;
        let uid = format!("{:08x}-0000-4000-8000-{:012x}", idx, idx);
        let cgroup = self
            .cgroup_root
            .join("kubepods")
            .join("besteffort")
            .join(format!("pod{uid}"));
        std::fs::create_dir_all(&cgroup)
            .with_context(|| format!("creating cgroup {}", cgroup.display()))?;
        remember(Created::Cgroup(cgroup.clone()));
        let host = Host {
            name: name.to_string(),
            netns: None,
            ifname: None,
            v4: self.family.v4().then_some(NODE_V4),
            v6: self.family.v6().then_some(NODE_V6),
            ports,
            cgroup: Some(cgroup),
            uid,
            node: Some(0),
        };
        self.hosts.insert(name.to_string(), host.clone());
        Ok(host)
    }

    pub fn remove_host(&mut self, name: &str) {
        if let Some(h) = self.hosts.remove(name) {
            // Deleting the namespace takes its veth away only eventually;
            // the node side goes now, with its routes.
            if let Some(i) = &h.ifname {
                let _ = Command::new("ip")
                    .args(["-n", &self.node_netns, "link", "del", i])
                    .output();
            }
            if let Some(n) = &h.netns {
                remove(&Created::Netns(n.clone()));
            }
            if let Some(c) = &h.cgroup {
                let _ = std::fs::remove_dir(c);
            }
        }
    }

    /// Node-side interfaces that must carry the programs (the pods').
    pub fn interfaces(&self) -> Vec<String> {
        self.hosts
            .values()
            .filter_map(|h| h.ifname.clone())
            .filter(|i| i.starts_with(IF_PREFIX))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let names: Vec<String> = self.hosts.keys().cloned().collect();
        for n in names {
            self.remove_host(&n);
        }
        remove(&Created::Netns(self.node_netns.clone()));
        for d in [
            self.cgroup_root.join("kubepods/besteffort"),
            self.cgroup_root.join("kubepods"),
            self.cgroup_root.clone(),
        ] {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Where cgroup v2 is mounted (/sys/fs/cgroup/unified on hybrid hosts).
pub fn cgroup2_mount() -> anyhow::Result<String> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_string())
        })
        .next()
        .context("no cgroup2 filesystem mounted; the hostNetwork metadata block needs cgroup v2")
}
