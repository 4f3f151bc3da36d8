//! Hand-made packets sent from inside a pod's namespace, as a hostile pod
//! with the capabilities every container has (CAP_NET_RAW) would send them,
//! and a capture of what reaches a namespace's `eth0`.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::netns;

/// An IPv4 TCP segment with a valid TCP checksum (so a receiving stack
/// would take it), `payload` after the header.
pub fn tcp4(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    flags: u8,
    seq: u32,
    ack: u32,
    payload: &[u8],
) -> Vec<u8> {
    let tcp_len = 20 + payload.len();
    let mut tcp = Vec::with_capacity(tcp_len);
    tcp.extend(src.port().to_be_bytes());
    tcp.extend(dst.port().to_be_bytes());
    tcp.extend(seq.to_be_bytes());
    tcp.extend(ack.to_be_bytes());
    tcp.extend([0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    tcp.extend(payload);
    let mut pseudo = Vec::new();
    pseudo.extend(src.ip().octets());
    pseudo.extend(dst.ip().octets());
    pseudo.extend([0, 6]);
    pseudo.extend((tcp_len as u16).to_be_bytes());
    pseudo.extend(&tcp);
    let sum = checksum(&pseudo);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    ipv4(*src.ip(), *dst.ip(), 6, &tcp)
}

/// An IPv4 UDP datagram (checksum 0: none, which IPv4 allows).
pub fn udp4(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut udp = Vec::new();
    udp.extend(src.port().to_be_bytes());
    udp.extend(dst.port().to_be_bytes());
    udp.extend(((8 + payload.len()) as u16).to_be_bytes());
    udp.extend([0, 0]);
    udp.extend(payload);
    ipv4(*src.ip(), *dst.ip(), 17, &udp)
}

/// An IPv4 packet around `l4` (header checksum filled in, no options).
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut v = vec![0x45, 0];
    v.extend(((20 + l4.len()) as u16).to_be_bytes());
    v.extend([0x12, 0x34, 0x40, 0, 64, proto, 0, 0]);
    v.extend(src.octets());
    v.extend(dst.octets());
    let sum = checksum(&v);
    v[10..12].copy_from_slice(&sum.to_be_bytes());
    v.extend(l4);
    v
}

/// An IPv6 packet around `l4` (next header `next`, no extension headers).
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, l4: &[u8]) -> Vec<u8> {
    let mut v = vec![0x60, 0, 0, 0];
    v.extend((l4.len() as u16).to_be_bytes());
    v.extend([next, 64]);
    v.extend(src.octets());
    v.extend(dst.octets());
    v.extend(l4);
    v
}

/// An ICMP echo request (`v6`: ICMPv6 type 128, checksum left 0, which no
/// capture checks) carrying `payload`.
pub fn icmp_echo(v6: bool, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    m.extend(id.to_be_bytes());
    m.extend(1u16.to_be_bytes());
    m.extend(payload);
    if !v6 {
        let sum = checksum(&m);
        m[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    m
}

/// A bare L4 header with ports (TCP SYN, UDP) and `payload`, for wrapping
/// in [`ipv4`] or [`ipv6`]; checksums 0 (the captures here do not check).
pub fn l4_ports(proto: u8, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(sport.to_be_bytes());
    v.extend(dport.to_be_bytes());
    if proto == 6 {
        v.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        v.extend(((8 + payload.len()) as u16).to_be_bytes());
        v.extend([0, 0]);
    }
    v.extend(payload);
    v
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends IPv4 packets (headers included, any source address) from inside
/// `netns` through a raw socket.
pub fn send4(netns: &str, packets: Vec<Vec<u8>>) -> anyhow::Result<()> {
    netns::in_netns(netns, move || {
        // SAFETY: plain socket(2); the fd is closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("raw socket (CAP_NET_RAW)");
        }
        let mut result = Ok(());
        for p in &packets {
            let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(dst.octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: buffer and address are valid for the call.
            let n = unsafe {
                libc::sendto(
                    fd,
                    p.as_ptr().cast(),
                    p.len(),
                    0,
                    (&raw const addr).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                )
            };
            if n < 0 {
                result = Err(std::io::Error::last_os_error()).context("sendto");
                break;
            }
        }
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
        result
    })
}

/// Sends the packets `next` makes (IPv4, headers included), one after
/// another as fast as a raw socket takes them, from inside `netns` until
/// `until`; returns how many were sent. A full socket buffer (ENOBUFS) is
/// retried, not an error: the flood is meant to outrun the receiver.
pub fn flood4(
    netns: &str,
    until: Instant,
    mut next: impl FnMut(u64) -> Vec<u8> + Send + 'static,
) -> anyhow::Result<u64> {
    netns::in_netns(netns, move || {
        // SAFETY: plain socket(2); the fd is closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("raw socket (CAP_NET_RAW)");
        }
        let mut sent = 0u64;
        let mut result = Ok(());
        while Instant::now() < until {
            for _ in 0..256 {
                let p = next(sent);
                let addr = libc::sockaddr_in {
                    sin_family: libc::AF_INET as u16,
                    sin_port: 0,
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes([p[16], p[17], p[18], p[19]]),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: buffer and address are valid for the call.
                let n = unsafe {
                    libc::sendto(
                        fd,
                        p.as_ptr().cast(),
                        p.len(),
                        0,
                        (&raw const addr).cast(),
                        size_of::<libc::sockaddr_in>() as u32,
                    )
                };
                if n >= 0 {
                    sent += 1;
                    continue;
                }
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::ENOBUFS) {
                    result = Err(e).context("sendto");
                    break;
                }
            }
            if result.is_err() {
                break;
            }
        }
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
        result.map(|()| sent)
    })
}

/// A capture of IPv4 packets arriving on `eth0` of a namespace, opened
/// before the attack so nothing is missed.
pub struct Capture {
    fd: i32,
}

impl Capture {
    pub fn open(netns: &str) -> anyhow::Result<Self> {
        Self::open_ethertype(netns, libc::ETH_P_IP as u16)
    }

    /// A capture of IPv4 and IPv6 alike (`saw` then gets L3 bytes of either).
    pub fn open_any_ip(netns: &str) -> anyhow::Result<Self> {
        Self::open_ethertype(netns, libc::ETH_P_ALL as u16)
    }

    fn open_ethertype(netns: &str, ethertype: u16) -> anyhow::Result<Self> {
        let fd = netns::in_netns(netns, move || {
            let proto = ethertype.to_be();
            // SAFETY: plain socket(2).
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto)) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error()).context("packet socket");
            }
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 50_000,
            };
            // SAFETY: valid option buffer.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&raw const tv).cast(),
                    size_of::<libc::timeval>() as u32,
                )
            };
            Ok(fd)
        })?;
        Ok(Self { fd })
    }

    /// Whether a packet matching `want` (IPv4 bytes) arrives within `wait`.
    pub fn saw(&self, wait: Duration, want: impl Fn(&[u8]) -> bool) -> bool {
        let deadline = Instant::now() + wait;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            // SAFETY: buffer valid for its length.
            let n = unsafe { libc::recv(self.fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 && want(&buf[..n as usize]) {
                return true;
            }
        }
        false
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // SAFETY: our fd.
        unsafe { libc::close(self.fd) };
    }
}

/// Whether `ip` (IPv4 bytes) carries `payload` after its L4 header.
pub fn carries(ip: &[u8], payload: &[u8]) -> bool {
    ip.windows(payload.len()).any(|w| w == payload)
}

/// A TCP connection from `netns`, bound to local port `sport`, to `to`.
pub fn connect_from_port(
    netns: &str,
    sport: u16,
    to: SocketAddrV4,
    timeout: Duration,
) -> anyhow::Result<bool> {
    netns::in_netns(netns, move || {
        // SAFETY: plain socket calls on an fd we own and close.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            if fd < 0 {
                bail!("socket: {}", std::io::Error::last_os_error());
            }
            let one: i32 = 1;
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&raw const one).cast(),
                4,
            );
            let tv = libc::timeval {
                tv_sec: timeout.as_secs() as i64,
                tv_usec: i64::from(timeout.subsec_micros()),
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&raw const tv).cast(),
                size_of::<libc::timeval>() as u32,
            );
            let sa = |a: SocketAddrV4| libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            let local = sa(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, sport));
            let len = size_of::<libc::sockaddr_in>() as u32;
            if libc::bind(fd, (&raw const local).cast(), len) != 0 {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                bail!("bind to port {sport}: {e}");
            }
            let remote = sa(to);
            let ok = libc::connect(fd, (&raw const remote).cast(), len) == 0;
            libc::close(fd);
            Ok(ok)
        }
    })
}
