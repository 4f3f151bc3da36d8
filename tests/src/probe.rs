//! Listeners (TCP accept, UDP echo, SCTP association setup) inside host
//! namespaces, and probes: one connection attempt from a source namespace,
//! bounded in time. SCTP uses the kernel's sockets where it has them, else
//! the harness speaks it itself over raw sockets (see [`crate::sctp`]).

use std::{
    io::ErrorKind,
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;

use crate::{netns, scenario::PortSpec, sctp};

const PAYLOAD: &[u8] = b"palisade-probe";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// The API spelling: `TCP`, `UDP`, `SCTP`.
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        match s {
            "TCP" => Ok(Proto::Tcp),
            "UDP" => Ok(Proto::Udp),
            "SCTP" => Ok(Proto::Sctp),
            other => anyhow::bail!("the harness probes TCP, UDP and SCTP only, not {other:?}"),
        }
    }

    /// Lower case, as nft, agnhost and the `__probe` child take it.
    pub fn lower(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }

    pub fn from_lower(s: &str) -> anyhow::Result<Self> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            "sctp" => Ok(Proto::Sctp),
            other => anyhow::bail!("unknown protocol {other:?} (tcp, udp or sctp)"),
        }
    }
}

/// Sockets served by one thread in one namespace until dropped.
pub struct Listeners {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

enum Sock {
    Tcp(TcpListener),
    Udp(UdpSocket),
    Sctp(sctp::Responder),
    SctpKernel(std::os::fd::OwnedFd),
}

/// Binds every port on `[::]` (dual-stack) in `netns` (the caller's own
/// namespace when `None`) and serves them on a thread of their own.
pub fn listen(netns: Option<&str>, ports: &[PortSpec]) -> anyhow::Result<Listeners> {
    listen_at(netns, ports, &[])
}

/// As [`listen`], bound to each of `addrs` instead (empty: `[::]`). A UDP
/// socket bound to an address answers from it, which matters in a
/// namespace with many addresses (a node): conntrack matches the answer to
/// a translated request only when it comes from the address asked.
pub fn listen_at(
    netns: Option<&str>,
    ports: &[PortSpec],
    addrs: &[IpAddr],
) -> anyhow::Result<Listeners> {
    let (tx, rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let netns = netns.map(str::to_string);
    let ports = ports.to_vec();
    let addrs: Vec<IpAddr> = if addrs.is_empty() {
        vec![IpAddr::V6(Ipv6Addr::UNSPECIFIED)]
    } else {
        addrs.to_vec()
    };
    let thread = std::thread::spawn(move || {
        let setup = (|| -> anyhow::Result<Vec<Sock>> {
            if let Some(n) = &netns {
                netns::enter(n)?;
            }
            let mut socks = Vec::new();
            let mut sctp_ports: Vec<u16> = Vec::new();
            for (p, ip) in ports
                .iter()
                .flat_map(|p| addrs.iter().map(move |a| (p, *a)))
            {
                let addr = SocketAddr::new(ip, p.port);
                match Proto::parse(&p.protocol)? {
                    Proto::Tcp => {
                        let l = TcpListener::bind(addr)
                            .with_context(|| format!("listening on TCP {}", p.port))?;
                        l.set_nonblocking(true)?;
                        socks.push(Sock::Tcp(l));
                    }
                    Proto::Udp => {
                        let s = UdpSocket::bind(addr)
                            .with_context(|| format!("listening on UDP {}", p.port))?;
                        s.set_nonblocking(true)?;
                        socks.push(Sock::Udp(s));
                    }
                    Proto::Sctp if sctp::kernel_has_sctp() => {
                        let l = sctp::kernel_listener(addr)
                            .with_context(|| format!("listening on SCTP {}", p.port))?;
                        socks.push(Sock::SctpKernel(l));
                    }
                    // One raw socket per address serves every SCTP port.
                    Proto::Sctp => {
                        if !sctp_ports.contains(&p.port) {
                            sctp_ports.push(p.port);
                        }
                    }
                }
            }
            if !sctp_ports.is_empty() {
                for ip in &addrs {
                    let bound = (!ip.is_unspecified()).then_some(*ip);
                    // [::] stands for both families, as a dual-stack socket would.
                    let families: &[bool] = match bound {
                        Some(a) => &[a.is_ipv6()][..],
                        None => &[false, true][..],
                    };
                    for &v6 in families {
                        let r = sctp::Responder::new(v6, bound, sctp_ports.clone())
                            .with_context(|| format!("listening on SCTP {sctp_ports:?}"))?;
                        socks.push(Sock::Sctp(r));
                    }
                }
            }
            Ok(socks)
        })();
        let socks = match setup {
            Ok(s) => {
                let _ = tx.send(Ok(()));
                s
            }
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
        serve(&socks, &stop2);
    });
    rx.recv().context("listener thread died")??;
    Ok(Listeners {
        stop,
        thread: Some(thread),
    })
}

fn serve(socks: &[Sock], stop: &AtomicBool) {
    let mut fds: Vec<libc::pollfd> = socks
        .iter()
        .map(|s| libc::pollfd {
            fd: match s {
                Sock::Tcp(l) => l.as_raw_fd(),
                Sock::Udp(u) => u.as_raw_fd(),
                Sock::Sctp(r) => r.fd(),
                Sock::SctpKernel(l) => l.as_raw_fd(),
            },
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: fds is a valid array of pollfd for its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        if n <= 0 {
            continue;
        }
        for (i, s) in socks.iter().enumerate() {
            if fds[i].revents == 0 {
                continue;
            }
            fds[i].revents = 0;
            match s {
                // Accepting is the answer; the connection is closed at once.
                Sock::Tcp(l) => while l.accept().is_ok() {},
                Sock::Udp(u) => {
                    while let Ok((len, from)) = u.recv_from(&mut buf) {
                        let _ = u.send_to(&buf[..len], from);
                    }
                }
                Sock::Sctp(r) => r.serve(&mut buf),
                Sock::SctpKernel(l) => sctp::kernel_accept_all(l.as_raw_fd()),
            }
        }
    }
}

/// One connection attempt from the caller's current namespace.
pub fn attempt(to: SocketAddr, proto: Proto, timeout: Duration) -> bool {
    match proto {
        Proto::Tcp => TcpStream::connect_timeout(&to, timeout).is_ok(),
        Proto::Sctp => sctp::attempt(to, timeout),
        Proto::Udp => {
            let bind: SocketAddr = if to.is_ipv4() {
                "0.0.0.0:0".parse().expect("addr")
            } else {
                "[::]:0".parse().expect("addr")
            };
            let Ok(s) = UdpSocket::bind(bind) else {
                return false;
            };
            if s.connect(to).is_err() || s.set_read_timeout(Some(timeout)).is_err() {
                return false;
            }
            if s.send(PAYLOAD).is_err() {
                return false;
            }
            let mut buf = [0u8; 64];
            loop {
                match s.recv(&mut buf) {
                    Ok(n) => return &buf[..n] == PAYLOAD,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => return false,
                }
            }
        }
    }
}

/// Where a probe starts.
#[derive(Clone, Debug)]
pub struct Origin {
    pub netns: String,
    /// For hostNetwork pods: the probe runs as a child process in this cgroup.
    pub cgroup: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct Probe {
    pub origin: Origin,
    pub to: SocketAddr,
    pub proto: Proto,
}

/// Runs probes in parallel (bounded), each on a thread of its own in its
/// source namespace, or in a child process when it needs a cgroup.
pub fn run_all(probes: &[Probe], timeout: Duration, parallel: usize) -> Vec<bool> {
    let mut results = vec![false; probes.len()];
    for (chunk_i, chunk) in probes.chunks(parallel.max(1)).enumerate() {
        let handles: Vec<JoinHandle<bool>> = chunk
            .iter()
            .cloned()
            .map(|p| {
                std::thread::spawn(move || match &p.origin.cgroup {
                    Some(cg) => probe_in_cgroup(&p, cg, timeout).unwrap_or(false),
                    None => {
                        netns::enter(&p.origin.netns).is_ok() && attempt(p.to, p.proto, timeout)
                    }
                })
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            results[chunk_i * parallel.max(1) + i] = h.join().unwrap_or(false);
        }
    }
    results
}

fn probe_in_cgroup(p: &Probe, cgroup: &std::path::Path, timeout: Duration) -> anyhow::Result<bool> {
    let exe = std::env::current_exe()?;
    let status = Command::new(exe)
        .args([
            "__probe",
            "--netns",
            &p.origin.netns,
            "--cgroup",
            &cgroup.to_string_lossy(),
            "--to",
            &p.to.to_string(),
            "--proto",
            p.proto.lower(),
            "--timeout-ms",
            &timeout.as_millis().to_string(),
        ])
        .status()?;
    Ok(status.success())
}

/// The child side of [`probe_in_cgroup`]: join the cgroup, enter the
/// namespace, try once. Exit status 0 means connected.
pub fn child_probe(
    netns_name: &str,
    cgroup: &str,
    to: SocketAddr,
    proto: Proto,
    timeout: Duration,
) -> anyhow::Result<bool> {
    std::fs::write(
        format!("{cgroup}/cgroup.procs"),
        std::process::id().to_string(),
    )
    .with_context(|| format!("joining cgroup {cgroup}"))?;
    netns::enter(netns_name)?;
    Ok(attempt(to, proto, timeout))
}
