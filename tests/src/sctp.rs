//! SCTP for the probes, made by hand over raw sockets.
//!
//! The harness cannot count on the kernel's SCTP stack: the machines it
//! runs on may be built without it (`CONFIG_IP_SCTP` unset and no modules,
//! as on the CI kernel), and a netns-per-pod harness cannot load it. What
//! the datapath judges is packets, so both ends speak SCTP themselves over
//! raw `IPPROTO_SCTP` sockets (the kernel delivers a protocol it has no
//! handler for to raw sockets, and stays silent when one took it):
//!
//! - a listener answers an INIT to one of its ports with an INIT ACK whose
//!   state cookie carries the association (stateless, as RFC 9260 5.1.3
//!   suggests), and a COOKIE ECHO of such a cookie with a COOKIE ACK;
//! - a probe sends INIT (again every [`RESEND`]), then COOKIE ECHO, and
//!   counts as connected on the COOKIE ACK: the four packets of a real
//!   association setup, both directions, with valid CRC32c checksums and
//!   verification tags, so that conntrack (and the Service DNAT) take them
//!   as the kernel's own would be taken. It ends with an ABORT.
//!
//! A kernel that does have SCTP would answer these hand-made packets
//! itself (ABORT: no such association), and conntrack would close the flow
//! under the harness. So where `socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP)`
//! works, the harness uses the kernel's SCTP instead: one-to-one sockets,
//! a listener per port that accepts and closes, and a non-blocking connect
//! bounded like TCP's ([`kernel_has_sctp`] decides, once per process).

use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
    io,
    mem::{size_of, zeroed},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

pub const IPPROTO_SCTP: libc::c_int = 132;

const INIT: u8 = 1;
const INIT_ACK: u8 = 2;
const ABORT: u8 = 6;
const COOKIE_ECHO: u8 = 10;
const COOKIE_ACK: u8 = 11;
const STATE_COOKIE: u16 = 7;
const COOKIE_MAGIC: &[u8; 4] = b"PLSD";
/// How often a probe sends its INIT again while nothing answers.
pub const RESEND: Duration = Duration::from_millis(250);

/// CRC32c (Castagnoli), as SCTP's checksum uses it.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// One SCTP packet: common header and the chunks, checksum filled in.
pub fn packet(sport: u16, dport: u16, vtag: u32, chunks: &[(u8, u8, Vec<u8>)]) -> Vec<u8> {
    let mut p = Vec::with_capacity(64);
    p.extend(sport.to_be_bytes());
    p.extend(dport.to_be_bytes());
    p.extend(vtag.to_be_bytes());
    p.extend([0; 4]);
    for (kind, flags, value) in chunks {
        p.push(*kind);
        p.push(*flags);
        p.extend(((4 + value.len()) as u16).to_be_bytes());
        p.extend(value);
        while p.len() % 4 != 0 {
            p.push(0);
        }
    }
    // The CRC goes in as the kernel puts it: least significant byte first.
    let sum = crc32c(&p);
    p[8..12].copy_from_slice(&sum.to_le_bytes());
    p
}

/// A parsed SCTP packet (first chunk only: the ones used here come alone).
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed<'a> {
    pub sport: u16,
    pub dport: u16,
    pub vtag: u32,
    pub chunk: u8,
    pub value: &'a [u8],
}

pub fn parse(p: &[u8]) -> Option<Parsed<'_>> {
    if p.len() < 16 {
        return None;
    }
    let mut zeroed = p.to_vec();
    zeroed[8..12].fill(0);
    if crc32c(&zeroed).to_le_bytes() != p[8..12] {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([p[14], p[15]]));
    if len < 4 || 12 + len > p.len() {
        return None;
    }
    Some(Parsed {
        sport: u16::from_be_bytes([p[0], p[1]]),
        dport: u16::from_be_bytes([p[2], p[3]]),
        vtag: u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
        chunk: p[12],
        value: &p[16..12 + len],
    })
}

/// INIT and INIT ACK values: initiate tag, a_rwnd, streams, initial TSN.
fn init_value(tag: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend(tag.to_be_bytes());
    v.extend(65536u32.to_be_bytes());
    v.extend(1u16.to_be_bytes());
    v.extend(1u16.to_be_bytes());
    v.extend(tag.to_be_bytes());
    v
}

fn random_u32() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u32(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    h.finish() as u32
}

/// A raw SCTP socket of the family of `addr`.
fn raw_socket(v6: bool) -> io::Result<OwnedFd> {
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, IPPROTO_SCTP) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(addr: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = a.octets();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn from_sockaddr(ss: &libc::sockaddr_storage) -> Option<IpAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in.
            let sin = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            Some(IpAddr::V4(Ipv4Addr::from(
                sin.sin_addr.s_addr.to_ne_bytes(),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it is a sockaddr_in6.
            let sin6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn send_to(fd: RawFd, to: IpAddr, data: &[u8]) -> io::Result<()> {
    let (ss, len) = sockaddr(to);
    // SAFETY: data and ss are valid for the lengths given.
    let n = unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            0,
            &ss as *const _ as *const libc::sockaddr,
            len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One datagram: the SCTP packet (past the IPv4 header, which IPv4 raw
/// sockets include) and the address it came from.
fn recv_from(fd: RawFd, v6: bool, buf: &mut [u8]) -> io::Result<(usize, usize, IpAddr)> {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: buf and ss are valid for the lengths given.
    let n = unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
            &mut ss as *mut _ as *mut libc::sockaddr,
            &mut len,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    let start = if v6 {
        0
    } else {
        usize::from(buf.first().copied().unwrap_or(0) & 0x0f) * 4
    };
    let from = from_sockaddr(&ss).ok_or_else(|| io::Error::other("unknown address family"))?;
    Ok((start.min(n), n, from))
}

/// Waits until `fd` is readable or `deadline` passes.
fn wait_readable(fd: RawFd, deadline: Instant) -> bool {
    let left = deadline.saturating_duration_since(Instant::now());
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, left.as_millis().min(i32::MAX as u128) as i32) };
    n > 0
}

/// The raw sockets answering SCTP for a set of ports on one address (or
/// all of one family's, when unbound).
pub struct Responder {
    fd: OwnedFd,
    v6: bool,
    ports: Vec<u16>,
    /// Makes this responder's tags, so that a COOKIE ECHO can be checked.
    secret: u32,
}

impl Responder {
    /// `addr`: the local address to answer for, or `None` for every
    /// address of the family `v6`.
    pub fn new(v6: bool, addr: Option<IpAddr>, ports: Vec<u16>) -> anyhow::Result<Self> {
        let fd = raw_socket(v6)
            .map_err(|e| anyhow::anyhow!("raw SCTP socket (the harness needs CAP_NET_RAW): {e}"))?;
        if let Some(a) = addr {
            let (ss, len) = sockaddr(a);
            // SAFETY: ss is a valid sockaddr of len bytes.
            check(unsafe { libc::bind(fd.as_raw_fd(), &ss as *const _ as *const _, len) })
                .map_err(|e| anyhow::anyhow!("binding a raw SCTP socket to {a}: {e}"))?;
        }
        Ok(Self {
            fd,
            v6,
            ports,
            secret: random_u32(),
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn tag_for(&self, peer_tag: u32, sport: u16, dport: u16) -> u32 {
        let t = (peer_tag ^ self.secret ^ (u32::from(sport) << 16 | u32::from(dport)))
            .rotate_left(7)
            .wrapping_mul(0x9e37_79b9);
        t.max(1)
    }

    /// Answers every packet waiting on the socket.
    pub fn serve(&self, buf: &mut [u8]) {
        while let Ok((start, n, from)) = recv_from(self.fd(), self.v6, buf) {
            let Some(p) = parse(&buf[start..n]) else {
                continue;
            };
            if !self.ports.contains(&p.dport) {
                continue;
            }
            let reply = match p.chunk {
                INIT if p.vtag == 0 && p.value.len() >= 16 => {
                    let peer_tag =
                        u32::from_be_bytes([p.value[0], p.value[1], p.value[2], p.value[3]]);
                    if peer_tag == 0 {
                        continue;
                    }
                    let tag = self.tag_for(peer_tag, p.sport, p.dport);
                    let mut value = init_value(tag);
                    let mut cookie = COOKIE_MAGIC.to_vec();
                    cookie.extend(peer_tag.to_be_bytes());
                    value.extend(STATE_COOKIE.to_be_bytes());
                    value.extend(((4 + cookie.len()) as u16).to_be_bytes());
                    value.extend(cookie);
                    packet(p.dport, p.sport, peer_tag, &[(INIT_ACK, 0, value)])
                }
                COOKIE_ECHO if p.value.len() >= 8 && &p.value[..4] == COOKIE_MAGIC => {
                    let peer_tag =
                        u32::from_be_bytes([p.value[4], p.value[5], p.value[6], p.value[7]]);
                    if p.vtag != self.tag_for(peer_tag, p.sport, p.dport) {
                        continue;
                    }
                    packet(p.dport, p.sport, peer_tag, &[(COOKIE_ACK, 0, Vec::new())])
                }
                _ => continue,
            };
            let _ = send_to(self.fd(), from, &reply);
        }
    }
}

/// Sets up an association with `to` from the calling thread's namespace
/// within `timeout`: with the kernel's SCTP where there is one, else by
/// hand (true when the COOKIE ACK came back).
pub fn attempt(to: SocketAddr, timeout: Duration) -> bool {
    if kernel_has_sctp() {
        kernel_attempt(to, timeout).unwrap_or(false)
    } else {
        attempt_inner(to, timeout).unwrap_or(false)
    }
}

/// Whether this kernel has SCTP sockets (`CONFIG_IP_SCTP`, the `sctp`
/// module loaded). Asked once: it is the same in every namespace.
pub fn kernel_has_sctp() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| stream_socket(false).is_ok())
}

/// A one-to-one (`SOCK_STREAM`) kernel SCTP socket.
fn stream_socket(v6: bool) -> io::Result<OwnedFd> {
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            IPPROTO_SCTP,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_int_opt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: value lives across the call and its size is given.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const _ as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
}

fn sockaddr_port(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let (mut ss, len) = sockaddr(addr.ip());
    let port = addr.port().to_be();
    if addr.is_ipv4() {
        // SAFETY: sockaddr() filled a sockaddr_in.
        unsafe { (*(&mut ss as *mut _ as *mut libc::sockaddr_in)).sin_port = port };
    } else {
        // SAFETY: sockaddr() filled a sockaddr_in6.
        unsafe { (*(&mut ss as *mut _ as *mut libc::sockaddr_in6)).sin6_port = port };
    }
    (ss, len)
}

/// A kernel SCTP listener on `addr` (`[::]`: both families), non-blocking.
pub fn kernel_listener(addr: SocketAddr) -> io::Result<OwnedFd> {
    let fd = stream_socket(addr.is_ipv6())?;
    let raw = fd.as_raw_fd();
    set_int_opt(raw, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        set_int_opt(raw, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 0)?;
    }
    let (ss, len) = sockaddr_port(addr);
    // SAFETY: ss is a valid sockaddr of len bytes.
    check(unsafe { libc::bind(raw, &ss as *const _ as *const _, len) })?;
    // SAFETY: plain listen(2) on our socket.
    check(unsafe { libc::listen(raw, 128) })?;
    Ok(fd)
}

/// Accepts (and so closes) every association waiting on a listener.
pub fn kernel_accept_all(listener: RawFd) {
    loop {
        // SAFETY: accept4(2) without an address; the fd is owned below.
        let fd = unsafe {
            libc::accept4(
                listener,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return;
        }
        // SAFETY: a fresh descriptor; dropping it closes the association.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
}

/// A non-blocking connect, then a wait for it to finish, as
/// `TcpStream::connect_timeout` does for TCP.
fn kernel_attempt(to: SocketAddr, timeout: Duration) -> io::Result<bool> {
    let fd = stream_socket(to.is_ipv6())?;
    let raw = fd.as_raw_fd();
    let (ss, len) = sockaddr_port(to);
    // SAFETY: ss is a valid sockaddr of len bytes.
    let rc = unsafe { libc::connect(raw, &ss as *const _ as *const _, len) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Ok(false);
        }
    }
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let mut p = libc::pollfd {
            fd: raw,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe {
            libc::poll(
                &mut p,
                1,
                left.as_millis().clamp(1, i32::MAX as u128) as i32,
            )
        };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            return Ok(false);
        }
        let mut err: libc::c_int = 0;
        let mut len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: err and len are valid for getsockopt's output.
        check(unsafe {
            libc::getsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                &mut err as *mut _ as *mut libc::c_void,
                &mut len,
            )
        })?;
        return Ok(err == 0 && p.revents & (libc::POLLERR | libc::POLLHUP) == 0);
    }
}

fn attempt_inner(to: SocketAddr, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    let v6 = to.is_ipv6();
    let fd = raw_socket(v6)?;
    let fd = fd.as_raw_fd();
    // Connected: the socket only gets packets from `to`'s address.
    let (ss, len) = sockaddr(to.ip());
    // SAFETY: ss is a valid sockaddr of len bytes.
    check(unsafe { libc::connect(fd, &ss as *const _ as *const _, len) })?;
    let sport = 49152 + (random_u32() % 16384) as u16;
    let tag = random_u32().max(1);
    let init = packet(sport, to.port(), 0, &[(INIT, 0, init_value(tag))]);
    let mut buf = [0u8; 2048];
    let mut peer: Option<(u32, Vec<u8>)> = None;
    let mut next_send = Instant::now();
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        if now >= next_send {
            let msg = match &peer {
                None => init.clone(),
                Some((peer_tag, cookie)) => packet(
                    sport,
                    to.port(),
                    *peer_tag,
                    &[(COOKIE_ECHO, 0, cookie.clone())],
                ),
            };
            send_to(fd, to.ip(), &msg)?;
            next_send = now + RESEND;
        }
        if !wait_readable(fd, next_send.min(deadline)) {
            continue;
        }
        while let Ok((start, n, _)) = recv_from(fd, v6, &mut buf) {
            let Some(p) = parse(&buf[start..n]) else {
                continue;
            };
            if p.sport != to.port() || p.dport != sport || p.vtag != tag {
                continue;
            }
            match p.chunk {
                INIT_ACK if peer.is_none() && p.value.len() >= 16 => {
                    let peer_tag =
                        u32::from_be_bytes([p.value[0], p.value[1], p.value[2], p.value[3]]);
                    let Some(cookie) = find_cookie(&p.value[16..]) else {
                        continue;
                    };
                    peer = Some((peer_tag, cookie.to_vec()));
                    next_send = Instant::now();
                }
                COOKIE_ACK => {
                    if let Some((peer_tag, _)) = &peer {
                        let abort = packet(sport, to.port(), *peer_tag, &[(ABORT, 0, Vec::new())]);
                        let _ = send_to(fd, to.ip(), &abort);
                    }
                    return Ok(true);
                }
                _ => {}
            }
        }
    }
}

/// The State Cookie among an INIT ACK's parameters.
fn find_cookie(mut params: &[u8]) -> Option<&[u8]> {
    while params.len() >= 4 {
        let kind = u16::from_be_bytes([params[0], params[1]]);
        let len = usize::from(u16::from_be_bytes([params[2], params[3]]));
        if len < 4 || len > params.len() {
            return None;
        }
        if kind == STATE_COOKIE {
            return Some(&params[4..len]);
        }
        let padded = len.div_ceil(4) * 4;
        params = params.get(padded..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn packets_parse_back_and_a_bad_checksum_is_refused() {
        let p = packet(40000, 80, 0, &[(INIT, 0, init_value(7))]);
        assert_eq!(p.len(), 12 + 20);
        let parsed = parse(&p).expect("valid");
        assert_eq!((parsed.sport, parsed.dport, parsed.vtag), (40000, 80, 0));
        assert_eq!(parsed.chunk, INIT);
        assert_eq!(&parsed.value[..4], &7u32.to_be_bytes());
        let mut bad = p.clone();
        bad[20] ^= 1;
        assert!(parse(&bad).is_none());
    }

    #[test]
    fn cookie_is_found_among_parameters() {
        let mut params = vec![0x80, 0x00, 0x00, 0x05, 0xaa, 0, 0, 0];
        params.extend([0x00, 0x07, 0x00, 0x08, 1, 2, 3, 4]);
        assert_eq!(find_cookie(&params), Some(&[1u8, 2, 3, 4][..]));
        assert_eq!(find_cookie(&params[..8]), None);
    }
}
