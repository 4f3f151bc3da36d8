//! The local cluster of several nodes, laid out like a kind cluster:
//!
//! * a "switch" namespace holding a bridge, the fabric between nodes;
//! * per node a namespace whose uplink is a veth `eth0` on the bridge, with
//!   the node's addresses 172.31.0.(i+1)/24 and fd00:31::(i+1)/64;
//! * per pod a namespace wired to its node by the CNI plugins (kindnet's
//!   `ptp` + `host-local`, through the CNI protocol, see `cni.rs`), and on
//!   every other node a route to the pod's addresses via its node (plain
//!   routing, as kindnet does it: no tunnel);
//! * per external a namespace on the fabric, with routes to it on every
//!   node and routes back to every pod via the pod's node;
//! * hostNetwork pods in their node's namespace, with a cgroup of their own.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::{
    cni::{self, Attachment, Conflist},
    exec::{ip_batch_in, run},
    scenario::{Family, PortSpec},
    topology::{Created, Host, cgroup2_mount, forget, ip, remember, remove},
};

const BRIDGE: &str = "br0";
/// Service ClusterIP ranges: the node routes them to its uplink so that its
/// own connections get a route before the output hook translates them.
const SERVICE_CIDRS: [&str; 2] = ["10.96.0.0/16", "fd00:10:96::/112"];

pub struct Node {
    pub name: String,
    pub netns: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    cni: Conflist,
}

impl Node {
    pub fn addr(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.v6)
        } else {
            IpAddr::V4(self.v4)
        }
    }
}

/// An external's own address on the fabric, the next hop towards it.
struct External {
    netns: String,
    /// Its address in the scenario.
    addr: IpAddr,
    hop_v4: Ipv4Addr,
    hop_v6: Ipv6Addr,
}

pub struct LocalCluster {
    pub run: String,
    pub family: Family,
    switch: String,
    pub nodes: Vec<Node>,
    pub hosts: BTreeMap<String, Host>,
    attachments: BTreeMap<String, Attachment>,
    externals: Vec<External>,
    next: u32,
    cgroup_root: PathBuf,
    lease_root: PathBuf,
}

impl LocalCluster {
    /// `nodes` nodes on one fabric; CNI leases under `work`; `extra_cni`:
    /// plugins chained after kindnet's.
    pub fn new(
        run_id: &str,
        family: Family,
        nodes: usize,
        work: &Path,
        extra_cni: &[String],
    ) -> anyhow::Result<Self> {
        let switch = format!("pal{run_id}-sw");
        ip(&["netns", "add", &switch])?;
        remember(Created::Netns(switch.clone()));
        ip(&["-n", &switch, "link", "set", "lo", "up"])?;
        // No MLD querier on this segment: flood multicast (NDP) instead of snooping.
        ip(&[
            "-n",
            &switch,
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        ip(&["-n", &switch, "link", "set", BRIDGE, "up"])?;
        let lease_root = work.join("cni-leases");
        std::fs::create_dir_all(&lease_root)?;
        remember(Created::Dir(lease_root.clone()));
        let mut c = Self {
            run: run_id.to_string(),
            family,
            switch,
            nodes: Vec::new(),
            hosts: BTreeMap::new(),
            attachments: BTreeMap::new(),
            externals: Vec::new(),
            next: 0,
            cgroup_root: PathBuf::from(cgroup2_mount()?).join(format!("palisade-e2e-{run_id}")),
            lease_root,
        };
        for i in 0..nodes {
            c.add_node(i, extra_cni)?;
        }
        Ok(c)
    }

    fn add_node(&mut self, i: usize, extra_cni: &[String]) -> anyhow::Result<()> {
        let name = format!("node-{i}");
        let netns = format!("pal{}-n{i}", self.run);
        let (v4, v6) = node_addresses(i)?;
        ip(&["netns", "add", &netns])?;
        remember(Created::Netns(netns.clone()));
        for sysctl in [
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            // Pod gateways (the host side of ptp veths) are usable at once.
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ] {
            run(Command::new("ip").args(["netns", "exec", &netns, "sysctl", "-qw", sysctl]))?;
        }
        let port = format!("n{i}");
        self.uplink(&netns, &port)?;
        ip_batch_in(
            Some(&netns),
            &[
                "link set lo up".into(),
                format!("addr add {v4}/24 dev eth0"),
                format!("addr add {v6}/64 dev eth0 nodad"),
                format!("route add {} dev eth0", SERVICE_CIDRS[0]),
                format!("route add {} dev eth0", SERVICE_CIDRS[1]),
            ],
        )?;
        let data_dir = self.lease_root.join(&name);
        self.nodes.push(Node {
            name,
            netns,
            v4,
            v6,
            cni: Conflist::kindnet(&data_dir, self.family, extra_cni),
        });
        Ok(())
    }

    /// A veth `eth0` in `netns` whose peer `port` is on the fabric's bridge.
    fn uplink(&self, netns: &str, port: &str) -> anyhow::Result<()> {
        let sw = self.switch.as_str();
        ip(&[
            "-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns,
        ])?;
        ip(&["-n", sw, "link", "set", port, "master", BRIDGE, "up"])?;
        ip(&["-n", netns, "link", "set", "eth0", "up"])
    }

    pub fn cgroup_root(&self) -> &PathBuf {
        &self.cgroup_root
    }

    /// The namespace a host's processes run in (its own, or its node's).
    pub fn netns_of(&self, h: &Host) -> Option<String> {
        h.netns
            .clone()
            .or_else(|| h.node.map(|n| self.nodes[n].netns.clone()))
    }

    fn uid(&mut self) -> (u32, String) {
        let idx = self.next;
        self.next += 1;
        (idx, format!("{idx:08x}-0000-4000-8000-{idx:012x}"))
    }

    /// A pod on `node` in its own namespace, wired by the CNI chain with these addresses.
    pub fn add_pod(
        &mut self,
        name: &str,
        node: usize,
        v4: Option<Ipv4Addr>,
        v6: Option<Ipv6Addr>,
        ports: Vec<PortSpec>,
    ) -> anyhow::Result<Host> {
        let (idx, uid) = self.uid();
        let netns = format!("pal{}-p{idx}", self.run);
        ip(&["netns", "add", &netns])?;
        remember(Created::Netns(netns.clone()));
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        if v6.is_some() {
            // ptp waits for the pod's address to leave DAD (a second or two
            // per pod); the pod is alone on its link, so skip DAD.
            run(Command::new("ip").args([
                "netns",
                "exec",
                &netns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.default.accept_dad=0",
            ]))?;
        }
        let ips: Vec<IpAddr> = v4
            .map(IpAddr::V4)
            .into_iter()
            .chain(v6.map(IpAddr::V6))
            .collect();
        let n = &self.nodes[node];
        let container_id = format!("pal{}p{idx}", self.run);
        let att = cni::add(&n.cni, &n.netns, &container_id, &netns, &ips)
            .with_context(|| format!("wiring pod {name} on {}", n.name))?;
        let host = Host {
            name: name.to_string(),
            netns: Some(netns),
            ifname: att.host_ifname(),
            v4,
            v6,
            ports,
            cgroup: None,
            uid,
            node: Some(node),
        };
        self.attachments.insert(name.to_string(), att);
        self.routes_to(&host, "replace")?;
        self.hosts.insert(name.to_string(), host.clone());
        Ok(host)
    }

    /// Routes to a pod's addresses via its node, on every other node and
    /// every external (`op`: replace or del).
    fn routes_to(&self, h: &Host, op: &str) -> anyhow::Result<()> {
        let Some(node) = h.node else { return Ok(()) };
        for (_, n) in self.nodes.iter().enumerate().filter(|(i, _)| *i != node) {
            ip_batch_in(Some(&n.netns), &self.pod_routes(h, op, None))?;
        }
        for e in &self.externals {
            ip_batch_in(Some(&e.netns), &self.pod_routes(h, op, Some(e.addr)))?;
        }
        Ok(())
    }

    /// `ip route` lines to a pod via its node; `src`: an external's own
    /// address, so that its answers come from the address the pod asked
    /// (not from its address on the fabric).
    fn pod_routes(&self, h: &Host, op: &str, src: Option<IpAddr>) -> Vec<String> {
        let Some(n) = h.node.map(|n| &self.nodes[n]) else {
            return Vec::new();
        };
        let src_of = |v6: bool| match src {
            Some(a) if a.is_ipv6() == v6 && op != "del" => format!(" src {a}"),
            _ => String::new(),
        };
        let mut lines = Vec::new();
        if let Some(a) = h.v4 {
            lines.push(format!(
                "route {op} {a}/32 via {} dev eth0{}",
                n.v4,
                src_of(false)
            ));
        }
        if let Some(a) = h.v6 {
            lines.push(format!(
                "route {op} {a}/128 via {} dev eth0{}",
                n.v6,
                src_of(true)
            ));
        }
        lines
    }

    /// A hostNetwork pod on `node`: the node's addresses, a cgroup of its
    /// own laid out the way the kubelet's cgroupfs driver does it.
    pub fn add_host_network(
        &mut self,
        name: &str,
        node: usize,
        ports: Vec<PortSpec>,
    ) -> anyhow::Result<Host> {
        let (_, uid) = self.uid();
        let cgroup = self
            .cgroup_root
            .join("kubepods")
            .join("besteffort")
            .join(format!("pod{uid}"));
        std::fs::create_dir_all(&cgroup)
            .with_context(|| format!("creating cgroup {}", cgroup.display()))?;
        remember(Created::Cgroup(cgroup.clone()));
        let n = &self.nodes[node];
        let host = Host {
            name: name.to_string(),
            netns: None,
            ifname: None,
            v4: self.family.v4().then_some(n.v4),
            v6: self.family.v6().then_some(n.v6),
            ports,
            cgroup: Some(cgroup),
            uid,
            node: Some(node),
        };
        self.hosts.insert(name.to_string(), host.clone());
        Ok(host)
    }

    /// A host outside the cluster on the fabric, reachable from every node
    /// and able to answer every pod.
    pub fn add_external(
        &mut self,
        name: &str,
        addr: IpAddr,
        ports: Vec<PortSpec>,
    ) -> anyhow::Result<Host> {
        let (idx, uid) = self.uid();
        let k = u8::try_from(200 + self.externals.len()).context("at most 55 externals")?;
        let netns = format!("pal{}-x{idx}", self.run);
        ip(&["netns", "add", &netns])?;
        remember(Created::Netns(netns.clone()));
        self.uplink(&netns, &format!("x{idx}"))?;
        let ext = External {
            netns: netns.clone(),
            addr,
            hop_v4: Ipv4Addr::new(172, 31, 0, k),
            hop_v6: Ipv6Addr::new(0xfd00, 0x31, 0, 0, 0, 0, 0, k.into()),
        };
        let len = if addr.is_ipv4() { 32 } else { 128 };
        let fabric = if addr.is_ipv4() {
            "172.31.0.0/24"
        } else {
            "fd00:31::/64"
        };
        let mut lines = vec![
            "link set lo up".to_string(),
            format!("addr add {}/24 dev eth0", ext.hop_v4),
            format!("addr add {}/64 dev eth0 nodad", ext.hop_v6),
            format!("addr add {addr}/{len} dev eth0 nodad"),
            // Answers to hostNetwork pods (node addresses) come from `addr` too.
            format!("route replace {fabric} dev eth0 src {addr}"),
        ];
        // Back to the pods already there.
        for h in self.hosts.values().filter(|h| h.netns.is_some()) {
            lines.extend(self.pod_routes(h, "replace", Some(addr)));
        }
        ip_batch_in(Some(&netns), &lines)?;
        let hop = if addr.is_ipv4() {
            ext.hop_v4.to_string()
        } else {
            ext.hop_v6.to_string()
        };
        for n in &self.nodes {
            ip_batch_in(
                Some(&n.netns),
                &[format!("route replace {addr}/{len} via {hop} dev eth0")],
            )?;
        }
        self.externals.push(ext);
        let (v4, v6) = match addr {
            IpAddr::V4(a) => (Some(a), None),
            IpAddr::V6(a) => (None, Some(a)),
        };
        let host = Host {
            name: name.to_string(),
            netns: Some(netns),
            ifname: None,
            v4,
            v6,
            ports,
            cgroup: None,
            uid,
            node: None,
        };
        self.hosts.insert(name.to_string(), host.clone());
        Ok(host)
    }

    /// Deletes a pod: CNI DEL through the chain, its namespace, the routes to it.
    pub fn remove_host(&mut self, name: &str) -> anyhow::Result<()> {
        self.remove(name, true)
    }

    fn remove(&mut self, name: &str, routes: bool) -> anyhow::Result<()> {
        let Some(h) = self.hosts.remove(name) else {
            return Ok(());
        };
        let mut result = Ok(());
        if let (Some(att), Some(node)) = (self.attachments.remove(name), h.node) {
            result = cni::del(&self.nodes[node].cni, &att)
                .with_context(|| format!("unwiring pod {name}"));
            if routes && let Err(e) = self.routes_to(&h, "del") {
                result = result.and(Err(e));
            }
        }
        if let Some(n) = &h.netns {
            undo(&Created::Netns(n.clone()));
        }
        if let Some(c) = &h.cgroup {
            let _ = std::fs::remove_dir(c);
            forget(&Created::Cgroup(c.clone()));
        }
        result
    }

    /// Host-side pod veths on each node (what its agent must attach to).
    pub fn interfaces(&self, node: usize) -> Vec<String> {
        self.hosts
            .values()
            .filter(|h| h.node == Some(node))
            .filter_map(|h| h.ifname.clone())
            .collect()
    }
}

/// Removes something made here and takes it off the interrupt list.
fn undo(c: &Created) {
    remove(c);
    forget(c);
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let names: Vec<String> = self.hosts.keys().cloned().collect();
        // The other nodes go too, so routes to these pods need no removal.
        for n in names {
            let _ = self.remove(&n, false);
        }
        for e in &self.externals {
            undo(&Created::Netns(e.netns.clone()));
        }
        for n in &self.nodes {
            undo(&Created::Netns(n.netns.clone()));
        }
        undo(&Created::Netns(self.switch.clone()));
        undo(&Created::Dir(self.lease_root.clone()));
        for d in [
            self.cgroup_root.join("kubepods/besteffort"),
            self.cgroup_root.join("kubepods"),
            self.cgroup_root.clone(),
        ] {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Node `i`'s uplink addresses: 172.31.0.(i + 1) and fd00:31::(i + 1).
pub fn node_addresses(i: usize) -> anyhow::Result<(Ipv4Addr, Ipv6Addr)> {
    let k = u8::try_from(i + 1).context("at most 199 nodes")?;
    Ok((
        Ipv4Addr::new(172, 31, 0, k),
        Ipv6Addr::new(0xfd00, 0x31, 0, 0, 0, 0, 0, k.into()),
    ))
}
