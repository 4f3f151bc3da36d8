//! Hostile pods, live: hand-made packets from a pod's namespace (raw
//! sockets, as any container may open) against the real agent and datapath
//! on network namespaces. Each attack is shown blocked and counted; each
//! section names the bypass it closes (README, "Threat model").
//! Privileged: root, netns, eBPF.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use palisade_agent::dataplane::PinPaths;
use palisade_common::Counter;
use palisade_tests::{
    agent::{AgentProcess, AgentSpec, agent_bin},
    fixtures, netns,
    raw::{self, Capture},
    sctp,
    topology::{Cluster, NODE_V4, NODE_V6},
};

const ACK: u8 = 0x10;
const SYN: u8 = 0x02;
const PSH_ACK: u8 = 0x18;

fn ns(name: &str) -> String {
    format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n")
}

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
    )
}

/// v and w: ingress closed, egress open. o: egress closed. r: open to a only
/// (until the step that revokes it). z/v2: open to namespace x only.
/// f: UDP 53 from a only.
fn policies(r_open_to_a: bool) -> String {
    let mut s = String::new();
    s += &policy(
        "x",
        "v-closed",
        "{podSelector: {matchLabels: {pod: v}}, policyTypes: [Ingress]}",
    );
    s += &policy(
        "x",
        "w-closed",
        "{podSelector: {matchLabels: {pod: w}}, policyTypes: [Ingress]}",
    );
    s += &policy(
        "x",
        "o-closed",
        "{podSelector: {matchLabels: {pod: o}}, policyTypes: [Egress]}",
    );
    let r_from = if r_open_to_a {
        "[{from: [{podSelector: {matchLabels: {pod: a}}}]}]"
    } else {
        "[]"
    };
    s += &policy(
        "x",
        "r-ingress",
        &format!("{{podSelector: {{matchLabels: {{pod: r}}}}, ingress: {r_from}}}"),
    );
    s += &policy(
        "z",
        "v2-from-x",
        "{podSelector: {}, ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}}]}]}",
    );
    s += &policy(
        "x",
        "f-dns",
        "{podSelector: {matchLabels: {pod: f}}, ingress: [{from: [{podSelector: {matchLabels: {pod: a}}}], ports: [{protocol: UDP, port: 53}]}]}",
    );
    s
}

/// A UDP server that answers each datagram with its length (as text).
fn udp_length_server(netns_name: &str, port: u16) -> anyhow::Result<()> {
    let s = netns::in_netns(netns_name, move || Ok(UdpSocket::bind(("0.0.0.0", port))?))?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 9000];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(n.to_string().as_bytes(), from);
        }
    });
    Ok(())
}

struct Lab {
    cluster: Cluster,
    agent: AgentProcess,
    source: PathBuf,
    pins: PinPaths,
    pods: Vec<(String, String, Ipv4Addr)>,
    dir: PathBuf,
}

impl Lab {
    fn write(&self, r_open_to_a: bool) -> anyhow::Result<()> {
        let mut text = ns("x") + &ns("y") + &ns("z");
        for (namespace, name, ip) in &self.pods {
            text += &fixtures::pod_yaml(namespace, name, ip);
        }
        text += &policies(r_open_to_a);
        fixtures::write_source(&self.source, &text)
    }

    fn programmed(&self) -> anyhow::Result<()> {
        self.agent
            .wait_programmed(&self.cluster.interfaces(), Duration::from_secs(20))?;
        Ok(())
    }

    fn netns(&self, name: &str) -> String {
        self.cluster.hosts[name].netns.clone().unwrap_or_default()
    }

    fn deny_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("deny.jsonl")).unwrap_or_default()
    }
}

/// Opens a connection from `netns` to an echo server and keeps it open
/// (the socket is leaked on purpose); returns its local port.
fn held_connection(netns: &str, to: SocketAddr) -> anyhow::Result<u16> {
    netns::in_netns(netns, move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(1))?;
        s.write_all(b"hello")?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf)?;
        let port = s.local_addr()?.port();
        std::mem::forget(s);
        Ok(port)
    })
}

/// Forged segments a hostile pod sends, watched for where they would go.
struct Forged<'a> {
    lab: &'a Lab,
    sender: &'a str,
    capture: &'a Capture,
}

impl Forged<'_> {
    /// One segment `from -> to` carrying `marker`: it must not arrive, and
    /// must be counted as spoofed.
    fn is_dropped(
        &self,
        from: SocketAddrV4,
        to: SocketAddrV4,
        flags: u8,
        marker: &[u8],
        what: &str,
    ) -> anyhow::Result<()> {
        let spoofed = fixtures::pinned_counter(&self.lab.pins, Counter::Spoofed);
        raw::send4(self.sender, vec![raw::tcp4(from, to, flags, 7, 1, marker)])?;
        assert!(
            !self
                .capture
                .saw(Duration::from_millis(300), |p| raw::carries(p, marker)),
            "{what} left the node"
        );
        assert!(
            fixtures::pinned_counter(&self.lab.pins, Counter::Spoofed) > spoofed,
            "{what} is not counted spoofed"
        );
        Ok(())
    }
}

fn v4(lab: &Lab, name: &str) -> Ipv4Addr {
    lab.cluster.hosts[name].v4.expect("IPv4 address")
}

#[test]
fn hostile_pods_cannot_open_what_policy_closes() -> anyhow::Result<()> {
    palisade_tests::fixtures::require_root();
    let run = format!("k{}", std::process::id() % 100_000);
    let mut cluster = Cluster::new(&run, palisade_tests::scenario::Family::Ipv4)?;
    let mut pods = Vec::new();
    for (i, (namespace, name)) in [
        ("x", "a"),
        ("x", "v"),
        ("x", "o"),
        ("x", "w"),
        ("x", "r"),
        ("x", "old"),
        ("z", "v2"),
        ("x", "f"),
    ]
    .into_iter()
    .enumerate()
    {
        let ip = Ipv4Addr::new(10, 9, 1, 10 + i as u8);
        cluster.add_wired(&format!("{namespace}/{name}"), Some(ip), None, Vec::new())?;
        pods.push((namespace.to_string(), name.to_string(), ip));
    }
    let ext_ip = Ipv4Addr::new(203, 0, 113, 20);
    cluster.add_wired("external:e", Some(ext_ip), None, Vec::new())?;

    let dir = std::env::temp_dir().join(format!("palisade-attacks-{run}"));
    let source = dir.join("source");
    std::fs::create_dir_all(&source)?;
    let pin_root = PathBuf::from(format!("/sys/fs/bpf/palisade-attacks-{run}"));
    let pins = PinPaths::new(&pin_root);
    let agent = AgentProcess::start(AgentSpec {
        extra: ["--poll-ms", "50", "--deny-idle-secs", "0.5"]
            .map(String::from)
            .to_vec(),
        ..AgentSpec::in_dir(agent_bin()?, &cluster.node_netns, &dir, pin_root)
    })?;
    let lab = Lab {
        cluster,
        agent,
        source,
        pins,
        pods,
        dir,
    };
    lab.write(true)?;
    lab.programmed()?;
    for server in ["x/v", "x/w", "x/r", "z/v2"] {
        fixtures::tcp_echo(&lab.netns(server), 80)?;
    }
    fixtures::tcp_echo(&lab.netns("external:e"), 9000)?;
    udp_length_server(&lab.netns("x/f"), 53)?;
    let (a, v, o, w) = (
        v4(&lab, "x/a"),
        v4(&lab, "x/v"),
        v4(&lab, "x/o"),
        v4(&lab, "x/w"),
    );
    let na = lab.netns("x/a");
    let t = Duration::from_millis(700);

    // 1. A forged ACK does not open a closed port. v's egress is open, so
    // the reverse of a -> v:80 would be allowed; the ACK is judged as what
    // it is (a -> v:80, denied), and the SYN that follows finds nothing.
    let denied = fixtures::pinned_counter(&lab.pins, Counter::Denied);
    raw::send4(
        &na,
        vec![raw::tcp4(
            SocketAddrV4::new(a, 40000),
            SocketAddrV4::new(v, 80),
            ACK,
            1,
            1,
            b"",
        )],
    )?;
    assert!(
        !raw::connect_from_port(&na, 40000, SocketAddrV4::new(v, 80), t)?,
        "a forged ACK opened v:80 to a"
    );
    assert!(
        fixtures::pinned_counter(&lab.pins, Counter::Denied) > denied,
        "denials counted"
    );
    // The same outwards: o may send nothing; a forged ACK o:80 -> e:9000
    // would have made o's connection from port 80 look like e's reply.
    let no = lab.netns("x/o");
    raw::send4(
        &no,
        vec![raw::tcp4(
            SocketAddrV4::new(o, 80),
            SocketAddrV4::new(ext_ip, 9000),
            ACK,
            1,
            1,
            b"",
        )],
    )?;
    assert!(
        !raw::connect_from_port(&no, 80, SocketAddrV4::new(ext_ip, 9000), t)?,
        "a forged ACK let egress-isolated o connect out"
    );

    // 2. No spoofed sources. a sends as w (egress open) to plant a flow
    // w:80 -> e:45000; then e connects from 45000 into w:80 (ingress closed).
    let ne = lab.netns("external:e");
    let cap_e = Capture::open(&ne)?;
    let forged = Forged {
        lab: &lab,
        sender: &na,
        capture: &cap_e,
    };
    forged.is_dropped(
        SocketAddrV4::new(w, 80),
        SocketAddrV4::new(ext_ip, 45000),
        SYN,
        b"SPOOFED-AS-W",
        "a packet with w's address sent by a",
    )?;
    assert!(
        !raw::connect_from_port(&ne, 45000, SocketAddrV4::new(w, 80), t)?,
        "a spoofed segment let an outside host into ingress-isolated w"
    );

    // 2b. Nor as a pod with a live flow: a tracked packet is decided on its
    // conntrack entry alone, but only on the veth the entry was made on.
    // w holds a connection to e:9000; a sends a segment of it as w.
    let w_port = held_connection(&lab.netns("x/w"), SocketAddr::from((ext_ip, 9000)))?;
    forged.is_dropped(
        SocketAddrV4::new(w, w_port),
        SocketAddrV4::new(ext_ip, 9000),
        ACK,
        b"SPOOFED-TRACKED",
        "a segment of w's live flow sent by a",
    )?;

    // 3. Later fragments of an allowed datagram arrive: a 3000-byte UDP
    // datagram to f:53 (allowed on that port only) is fragmented by a's stack.
    let f = v4(&lab, "x/f");
    let answer = netns::in_netns(&na, move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.send_to(&[7u8; 3000], (f, 53))?;
        let mut buf = [0u8; 64];
        let n = s.recv(&mut buf).unwrap_or(0);
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })?;
    assert_eq!(answer, "3000", "the fragmented datagram arrived whole");

    // 4. Conntrack does not outlive the pod. old (namespace x) holds a
    // connection to z/v2:80 (open to x only); old goes, its address is given
    // to y/new (namespace y, denied), which speaks on the old 4-tuple.
    let old_ip = v4(&lab, "x/old");
    let v2 = v4(&lab, "z/v2");
    let old_port = held_connection(&lab.netns("x/old"), SocketAddr::from((v2, 80)))?;
    let mut lab = lab;
    lab.cluster.remove_host("x/old");
    lab.pods.retain(|(_, n, _)| n != "old");
    lab.cluster
        .add_wired("y/new", Some(old_ip), None, Vec::new())?;
    lab.pods.push(("y".into(), "new".into(), old_ip));
    lab.write(true)?;
    lab.programmed()?;
    std::thread::sleep(Duration::from_millis(500));
    let cap_v2 = Capture::open(&lab.netns("z/v2"))?;
    raw::send4(
        &lab.netns("y/new"),
        vec![raw::tcp4(
            SocketAddrV4::new(old_ip, old_port),
            SocketAddrV4::new(v2, 80),
            PSH_ACK,
            1000,
            1000,
            b"HIJACK",
        )],
    )?;
    assert!(
        !cap_v2.saw(Duration::from_millis(300), |p| raw::carries(p, b"HIJACK")),
        "the new holder of an address inherited the old pod's connection"
    );

    // 5. A policy change reaches established connections: a's stream to r
    // is cut within a second of the change, and the deny log says why.
    let r = v4(&lab, "x/r");
    let mut stream = netns::in_netns(&na, move || {
        let s = TcpStream::connect_timeout(&SocketAddr::from((r, 80)), Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        Ok(s)
    })?;
    let round_trip = |s: &mut TcpStream| {
        let mut buf = [0u8; 4];
        s.write_all(b"ping").is_ok() && s.read_exact(&mut buf).is_ok()
    };
    assert!(round_trip(&mut stream), "allowed stream works");
    lab.write(false)?;
    lab.programmed()?;
    let changed = Instant::now();
    let mut cut = None;
    while changed.elapsed() < Duration::from_secs(3) {
        if !round_trip(&mut stream) {
            cut = Some(changed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let cut = cut.expect("the revoked connection kept flowing");
    assert!(cut < Duration::from_millis(1500), "cut after {cut:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lab.deny_log().contains("\"revoked\"") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        lab.deny_log().contains("\"revoked\""),
        "a deny record says the flow was revoked: {}",
        lab.deny_log()
    );
    let _ = std::fs::remove_dir_all(Path::new(&lab.dir));
    Ok(())
}

/// Sends IP packets (headers included, IPv4 or IPv6 by their version) from a
/// child process that first joins `cgroup` and then `netns`, as a
/// hostNetwork pod's process with CAP_NET_RAW would: its raw sockets belong
/// to the pod's cgroup. Everything is prepared before the fork; the child
/// makes only system calls.
fn send_raw_from_cgroup(cgroup: &Path, netns: &str, packets: Vec<Vec<u8>>) -> anyhow::Result<()> {
    use std::os::{fd::AsRawFd, unix::process::CommandExt};
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))?;
    let ns = std::fs::File::open(netns::netns_path(netns))?;
    let (procs_fd, ns_fd) = (procs.as_raw_fd(), ns.as_raw_fd());
    let mut cmd = std::process::Command::new("true");
    // SAFETY: the closure runs in the forked child before exec and makes only
    // system calls on memory prepared here (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || {
            let err = std::io::Error::last_os_error;
            // "0": the writing process itself.
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(err());
            }
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(err());
            }
            for p in &packets {
                let v6 = p[0] >> 4 == 6;
                let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
                // IPPROTO_RAW: the packet carries its own IP header.
                let fd = libc::socket(family, libc::SOCK_RAW, libc::IPPROTO_RAW);
                if fd < 0 {
                    return Err(err());
                }
                let n = if v6 {
                    let mut a: libc::sockaddr_in6 = std::mem::zeroed();
                    a.sin6_family = libc::AF_INET6 as u16;
                    a.sin6_addr.s6_addr.copy_from_slice(&p[24..40]);
                    libc::sendto(
                        fd,
                        p.as_ptr().cast(),
                        p.len(),
                        0,
                        (&raw const a).cast(),
                        size_of::<libc::sockaddr_in6>() as u32,
                    )
                } else {
                    let mut a: libc::sockaddr_in = std::mem::zeroed();
                    a.sin_family = libc::AF_INET as u16;
                    a.sin_addr.s_addr = u32::from_ne_bytes([p[16], p[17], p[18], p[19]]);
                    libc::sendto(
                        fd,
                        p.as_ptr().cast(),
                        p.len(),
                        0,
                        (&raw const a).cast(),
                        size_of::<libc::sockaddr_in>() as u32,
                    )
                };
                // EPERM is what the cgroup program's drop looks like to the
                // sender; the packet's absence is checked at the receiver.
                let _ = n;
                libc::close(fd);
            }
            Ok(())
        });
    }
    let status = cmd.status()?;
    drop((procs, ns));
    anyhow::ensure!(status.success(), "raw sender exited with {status}");
    Ok(())
}

/// One hand-made packet of each kind (TCP SYN, UDP, ICMP echo, SCTP INIT)
/// from `src` to `dst`, each carrying `tag` and its kind as a marker.
fn raw_kinds(src: IpAddr, dst: IpAddr, tag: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (kind, proto) in [("tcp", 6u8), ("udp", 17), ("icmp", 0), ("sctp", 132)] {
        let marker = format!("{tag}-{kind}");
        let v6 = dst.is_ipv6();
        let (proto, l4) = match kind {
            "icmp" => (
                if v6 { 58 } else { 1 },
                raw::icmp_echo(v6, 4242, marker.as_bytes()),
            ),
            "sctp" => {
                // INIT: initiate tag, a_rwnd, streams, initial TSN; the marker
                // rides in a parameter of an unrecognised type.
                let mut value = vec![0, 0, 0, 7, 0, 1, 0, 0, 0, 10, 0, 10, 0, 0, 0, 1];
                value.extend([0x80, 0x77]);
                value.extend(((4 + marker.len()) as u16).to_be_bytes());
                value.extend(marker.as_bytes());
                (proto, sctp::packet(40123, 80, 0, &[(1, 0, value)]))
            }
            _ => (proto, raw::l4_ports(proto, 40123, 80, marker.as_bytes())),
        };
        let packet = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => raw::ipv4(s, d, proto, &l4),
            (IpAddr::V6(s), IpAddr::V6(d)) => raw::ipv6(s, d, proto, &l4),
            _ => unreachable!("one family per packet"),
        };
        out.push((marker, packet));
    }
    out
}

/// hostNetwork pods with CAP_NET_RAW: the connect/sendmsg hooks never see a
/// raw socket's packets, so the metadata block also sits on the cgroup's
/// egress (cgroup_skb). Hand-made TCP, UDP, ICMP and SCTP packets to the
/// metadata addresses (IPv4 and IPv6) do not arrive and are counted and
/// logged; the same packets to another destination arrive.
#[test]
fn host_network_raw_packets_cannot_reach_metadata() -> anyhow::Result<()> {
    palisade_tests::fixtures::require_root();
    let run = format!("h{}", std::process::id() % 100_000);
    let mut cluster = Cluster::new(&run, palisade_tests::scenario::Family::Dual)?;
    let pod = cluster.add_host_network("monitoring/exporter", Vec::new())?;
    let cgroup = pod.cgroup.clone().expect("a hostNetwork pod's cgroup");
    let md4 = Ipv4Addr::new(169, 254, 169, 254);
    let md6: Ipv6Addr = "fd00:ec2::254".parse()?;
    let inet4 = Ipv4Addr::new(203, 0, 113, 10);
    let inet6: Ipv6Addr = "2001:db8:113::10".parse()?;
    cluster.add_wired("external:metadata", Some(md4), Some(md6), Vec::new())?;
    cluster.add_wired("external:internet", Some(inet4), Some(inet6), Vec::new())?;

    let dir = std::env::temp_dir().join(format!("palisade-attacks-{run}"));
    let source = dir.join("source");
    std::fs::create_dir_all(&source)?;
    let pin_root = PathBuf::from(format!("/sys/fs/bpf/palisade-attacks-{run}"));
    let pins = PinPaths::new(&pin_root);
    let agent = AgentProcess::start(AgentSpec {
        extra: ["--poll-ms", "50", "--deny-idle-secs", "0.5"]
            .map(String::from)
            .to_vec(),
        ..AgentSpec::in_dir(agent_bin()?, &cluster.node_netns, &dir, pin_root)
    })?;
    let text = ns("monitoring")
        + &format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: exporter, namespace: monitoring, uid: \"{}\", labels: {{app: exporter}}}}\n\
             spec: {{nodeName: {}, hostNetwork: true, containers: [{{name: c, image: i}}]}}\n\
             status: {{phase: Running, podIP: \"{NODE_V4}\", podIPs: [{{ip: \"{NODE_V4}\"}}, {{ip: \"{NODE_V6}\"}}]}}\n",
            pod.uid,
            palisade_tests::topology::NODE_NAME
        );
    fixtures::write_source(&source, &text)?;
    agent.wait_programmed(&cluster.interfaces(), Duration::from_secs(20))?;
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&cgroup)?);
    let egress_pin = pins.cgroup_link(ino, palisade_common::PROG_CGROUP_EGRESS);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !egress_pin.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(egress_pin.exists(), "the cgroup egress program is attached");

    let netns_of = |name: &str| cluster.hosts[name].netns.clone().unwrap_or_default();
    let node = cluster.node_netns.clone();
    let deny_log = || std::fs::read_to_string(dir.join("deny.jsonl")).unwrap_or_default();
    let (src4, src6) = (IpAddr::V4(NODE_V4), IpAddr::V6(NODE_V6));

    // Control: the same raw packets to a destination that is not metadata
    // leave the node (so an absence below is the block, not the harness).
    let cap_inet = Capture::open_any_ip(&netns_of("external:internet"))?;
    let mut control = raw_kinds(src4, IpAddr::V4(inet4), "PAL-INET4");
    control.extend(raw_kinds(src6, IpAddr::V6(inet6), "PAL-INET6"));
    send_raw_from_cgroup(
        &cgroup,
        &node,
        control.iter().map(|(_, p)| p.clone()).collect(),
    )?;
    for (marker, _) in &control {
        assert!(
            cap_inet.saw(Duration::from_millis(1500), |p| raw::carries(
                p,
                marker.as_bytes()
            )),
            "{marker}: a raw packet to a non-metadata external did not arrive"
        );
    }

    // The attack: the same to 169.254.169.254 and fd00:ec2::254.
    let blocked = fixtures::pinned_counter(&pins, Counter::MetadataBlocked);
    let md_netns = netns_of("external:metadata");
    let attack_arrives = |tag: &str| -> anyhow::Result<bool> {
        let cap_md = Capture::open_any_ip(&md_netns)?;
        let mut attack = raw_kinds(src4, IpAddr::V4(md4), &format!("{tag}4"));
        attack.extend(raw_kinds(src6, IpAddr::V6(md6), &format!("{tag}6")));
        send_raw_from_cgroup(
            &cgroup,
            &node,
            attack.iter().map(|(_, p)| p.clone()).collect(),
        )?;
        let markers: Vec<String> = attack.iter().map(|(m, _)| m.clone()).collect();
        Ok(cap_md.saw(Duration::from_millis(1000), |p| {
            markers.iter().any(|m| raw::carries(p, m.as_bytes()))
        }))
    };
    assert!(
        !attack_arrives("PAL-MD")?,
        "a hostNetwork pod's raw packet reached the metadata address"
    );
    // Eight packets: four kinds, two families.
    let after = fixtures::pinned_counter(&pins, Counter::MetadataBlocked);
    assert!(
        after >= blocked + 8,
        "each dropped raw packet is counted: {blocked} -> {after}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let logged = |log: &str| {
        log.contains("169.254.169.254")
            && log.contains("fd00:ec2::254")
            && log.contains("\"SCTP\"")
            && log.contains("\"ICMPv6\"")
    };
    while !logged(&deny_log()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        logged(&deny_log()),
        "deny records name both metadata addresses, raw SCTP and ICMPv6: {}",
        deny_log()
    );
    // The pinned link keeps enforcing while the agent is down, and a
    // restarted agent adopts it.
    let mut agent = agent;
    agent.stop(libc::SIGTERM)?;
    assert!(
        !attack_arrives("PAL-DOWN")?,
        "raw packets reached the metadata address while the agent was down"
    );
    agent.restart()?;
    agent.wait_programmed(&cluster.interfaces(), Duration::from_secs(20))?;
    assert!(
        egress_pin.exists(),
        "the restarted agent keeps the egress link"
    );
    assert!(
        !attack_arrives("PAL-AGAIN")?,
        "raw packets reached the metadata address after a restart"
    );
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
