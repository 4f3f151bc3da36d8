//! Header parsing into a flow tuple. Each header is read whole, straight
//! from the packet's linear data, pulled in first where it is not there
//! (bpf_skb_pull_data); every read is bounds-checked.

use aya_ebpf::programs::TcContext;
use palisade_common::{
    Addr, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, is_v4_mapped, v4_mapped,
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
/// IPv6 extension headers followed before giving up (counted as malformed).
const MAX_EXT_HEADERS: usize = 8;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// What the parser found.
pub enum Parsed {
    /// Not IPv4/IPv6: ARP and friends are none of our business.
    NotIp,
    /// Headers that are truncated or inconsistent.
    Malformed,
    Flow(Flow),
}

#[derive(Clone, Copy)]
pub struct Flow {
    pub saddr: Addr,
    pub daddr: Addr,
    /// Host byte order. For ICMP echo: the identifier as sport (request) or
    /// dport (reply), so that a reply is the reverse of its request.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    /// A non-first fragment: no L4 header, ports unknown.
    pub later_fragment: bool,
    /// The first fragment of a fragmented datagram (more follow).
    pub first_fragment: bool,
    /// The datagram's fragment id (IPv4 identification or IPv6 fragment id).
    pub frag_id: u32,
    /// TTL or hop limit.
    pub ttl: u8,
    pub icmp: Icmp,
    /// For ICMP errors: the offset of the embedded IP header.
    pub inner_l3: usize,
    pub ipv6: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Icmp {
    None,
    Echo,
    /// Destination unreachable, time exceeded, packet too big, parameter problem.
    Error,
    /// Neighbour discovery and multicast listener messages (ICMPv6) that
    /// cannot leave the link (hop limit 255 or 1, link-local or multicast
    /// addresses): passed, as the stack needs them.
    Control,
    /// Neighbour discovery with hop limit 255 to a unicast address that is
    /// not link-local: the node's answer to a pod that solicited from its
    /// global address. Link control only on the way to the pod (a forwarded
    /// packet never has hop limit 255 there); from a pod it would be routed.
    ControlToPod,
    Other,
}

#[inline(always)]
fn is_link_local(a: &Addr) -> bool {
    a[0] == 0xfe && a[1] & 0xc0 == 0x80
}

#[inline(always)]
fn is_multicast(a: &Addr) -> bool {
    a[0] == 0xff
}

/// The fixed IPv4 header (options follow; IHL says how many).
#[repr(C)]
struct Ipv4Header {
    ver_ihl: u8,
    tos: u8,
    total_len_be: [u8; 2],
    id_be: [u8; 2],
    frag_be: [u8; 2],
    ttl: u8,
    proto: u8,
    check_be: [u8; 2],
    saddr: [u8; 4],
    daddr: [u8; 4],
}

#[repr(C)]
struct Ipv6Header {
    ver_class_label: [u8; 4],
    payload_len_be: [u8; 2],
    next: u8,
    hop_limit: u8,
    saddr: Addr,
    daddr: Addr,
}

/// The TCP header up to its flags byte.
#[repr(C)]
struct TcpPrefix {
    sport_be: [u8; 2],
    dport_be: [u8; 2],
    seq_be: [u8; 4],
    ack_be: [u8; 4],
    offset: u8,
    flags: u8,
}

const _: () = assert!(core::mem::size_of::<Ipv4Header>() == 20);
const _: () = assert!(core::mem::size_of::<Ipv6Header>() == 40);
const _: () = assert!(core::mem::size_of::<TcpPrefix>() == 14);

/// Where the linear part of the packet ends within reach of a header read:
/// bounds the offsets the verifier has to reason about.
const MAX_DIRECT_OFFSET: usize = 0xffff;

/// A header at `off`, read straight from the packet's linear data.
#[inline(always)]
fn direct<T>(ctx: &TcContext, off: usize) -> Option<T> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if off > MAX_DIRECT_OFFSET || start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    // SAFETY: the bytes lie within the linear packet data (checked just
    // above); headers have no alignment, hence the unaligned read.
    Some(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
}

/// A header at `off`: read in place where it lies in the linear data (the
/// common case: no helper call). Where it does not, it is pulled in first:
/// paged data may be pages the sender can still write (a packet socket's
/// zero-copy ring), and the pulled copy is what the stack reads after us,
/// so what is judged is what is delivered. Fails where the packet is too
/// short.
#[inline(always)]
fn load<T>(ctx: &TcContext, off: usize) -> Result<T, ()> {
    if let Some(v) = direct(ctx, off) {
        return Ok(v);
    }
    let want = (off + core::mem::size_of::<T>()) as u32;
    ctx.pull_data(want).map_err(|_| ())?;
    // Copied by the helper from the now linear (private) data: a second
    // direct read after the pull would need packet pointers rederived,
    // which the verifier does not always follow through the compiler's code.
    ctx.load::<T>(off).map_err(|_| ())
}

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Parsed {
    let Ok(ethertype) = load::<[u8; 2]>(ctx, 12) else {
        return Parsed::Malformed;
    };
    match u16::from_be_bytes(ethertype) {
        ETH_P_IP => parse_v4(ctx, ETH_HLEN).map_or(Parsed::Malformed, Parsed::Flow),
        ETH_P_IPV6 => parse_v6(ctx, ETH_HLEN).map_or(Parsed::Malformed, Parsed::Flow),
        _ => Parsed::NotIp,
    }
}

/// Addresses, protocol and L4 offset of an IPv4 header at `off`.
/// Returns (flow without ports, l4 offset).
#[inline(always)]
fn ipv4_header(ctx: &TcContext, off: usize) -> Result<(Flow, usize), ()> {
    // One helper call for the whole fixed header: a header cut short fails
    // here, exactly where one of its fields would have.
    let h: Ipv4Header = load(ctx, off)?;
    if h.ver_ihl >> 4 != 4 {
        return Err(());
    }
    let ihl = ((h.ver_ihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(());
    }
    let frag = u16::from_be_bytes(h.frag_be);
    Ok((
        Flow {
            saddr: v4_mapped(h.saddr),
            daddr: v4_mapped(h.daddr),
            sport: 0,
            dport: 0,
            proto: h.proto,
            tcp_flags: 0,
            later_fragment: frag & 0x1fff != 0,
            // More fragments (MF) at offset 0.
            first_fragment: frag & 0x3fff == 0x2000,
            frag_id: u32::from(u16::from_be_bytes(h.id_be)),
            ttl: h.ttl,
            icmp: Icmp::None,
            inner_l3: 0,
            ipv6: false,
        },
        off + ihl,
    ))
}

#[inline(always)]
fn parse_v4(ctx: &TcContext, off: usize) -> Result<Flow, ()> {
    let (mut flow, l4) = ipv4_header(ctx, off)?;
    if flow.later_fragment {
        return Ok(flow);
    }
    l4_ports(ctx, &mut flow, l4)?;
    Ok(flow)
}

#[inline(always)]
fn ipv6_header(ctx: &TcContext, off: usize) -> Result<(Flow, u8), ()> {
    let h: Ipv6Header = load(ctx, off)?;
    // `::ffff:0:0/96` holds IPv4 in our keys, so an IPv6 packet may not use
    // it: on the wire it is invalid, and here it would alias an IPv4 address.
    if h.ver_class_label[0] >> 4 != 6 || is_v4_mapped(&h.saddr) || is_v4_mapped(&h.daddr) {
        return Err(());
    }
    Ok((
        Flow {
            saddr: h.saddr,
            daddr: h.daddr,
            sport: 0,
            dport: 0,
            proto: h.next,
            tcp_flags: 0,
            later_fragment: false,
            first_fragment: false,
            frag_id: 0,
            ttl: h.hop_limit,
            icmp: Icmp::None,
            inner_l3: 0,
            ipv6: true,
        },
        h.next,
    ))
}

#[inline(always)]
fn parse_v6(ctx: &TcContext, off: usize) -> Result<Flow, ()> {
    let (mut flow, mut next) = ipv6_header(ctx, off)?;
    let mut l4 = off + 40;
    let mut done = false;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            // hop-by-hop, routing, destination options: length in 8-octet units
            0 | 43 | 60 => {
                let hdr: [u8; 2] = load(ctx, l4)?;
                next = hdr[0];
                l4 += (hdr[1] as usize + 1) * 8;
            }
            // fragment header: fixed 8 octets
            44 => {
                let hdr: [u8; 8] = load(ctx, l4)?;
                next = hdr[0];
                let frag = u16::from_be_bytes([hdr[2], hdr[3]]);
                flow.frag_id = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
                l4 += 8;
                if frag >> 3 != 0 {
                    flow.proto = next;
                    flow.later_fragment = true;
                    return Ok(flow);
                }
                flow.first_fragment = frag & 1 != 0;
            }
            // authentication header: length in 4-octet units, minus 2
            51 => {
                let hdr: [u8; 2] = load(ctx, l4)?;
                next = hdr[0];
                l4 += (hdr[1] as usize + 2) * 4;
            }
            _ => {
                done = true;
                break;
            }
        }
    }
    if !done {
        return Err(());
    }
    flow.proto = next;
    l4_ports(ctx, &mut flow, l4)?;
    Ok(flow)
}

/// Fill ports (or the ICMP equivalent) from the L4 header at `l4`.
#[inline(always)]
fn l4_ports(ctx: &TcContext, flow: &mut Flow, l4: usize) -> Result<(), ()> {
    match flow.proto {
        // Ports and flags in one helper call (the flags are byte 13).
        PROTO_TCP => {
            let h: TcpPrefix = load(ctx, l4)?;
            flow.sport = u16::from_be_bytes(h.sport_be);
            flow.dport = u16::from_be_bytes(h.dport_be);
            flow.tcp_flags = h.flags;
        }
        PROTO_UDP | PROTO_SCTP => {
            let ports: [u8; 4] = load(ctx, l4)?;
            flow.sport = u16::from_be_bytes([ports[0], ports[1]]);
            flow.dport = u16::from_be_bytes([ports[2], ports[3]]);
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let hdr: [u8; 8] = load(ctx, l4)?;
            let id = u16::from_be_bytes([hdr[4], hdr[5]]);
            let (request, reply, error, control) = if flow.proto == PROTO_ICMP {
                (
                    hdr[0] == 8,
                    hdr[0] == 0,
                    matches!(hdr[0], 3 | 11 | 12),
                    false,
                )
            } else {
                (
                    hdr[0] == 128,
                    hdr[0] == 129,
                    matches!(hdr[0], 1..=4),
                    link_control(flow, hdr[0]),
                )
            };
            if request {
                flow.icmp = Icmp::Echo;
                flow.sport = id;
            } else if reply {
                flow.icmp = Icmp::Echo;
                flow.dport = id;
            } else if error {
                flow.icmp = Icmp::Error;
                flow.inner_l3 = l4 + 8;
            } else if control {
                flow.icmp = Icmp::Control;
            } else if matches!(hdr[0], 133..=137) && flow.ttl == 255 {
                flow.icmp = Icmp::ControlToPod;
            } else {
                flow.icmp = Icmp::Other;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Neighbour discovery (RFC 4861: hop limit 255) and multicast listener
/// messages (RFC 2710/3810: hop limit 1, link-local source), only in the
/// form the stack accepts, which no router forwards: anything else with
/// these types is judged like any other packet.
#[inline(always)]
fn link_control(flow: &Flow, icmp_type: u8) -> bool {
    match icmp_type {
        133..=137 => flow.ttl == 255 && (is_link_local(&flow.daddr) || is_multicast(&flow.daddr)),
        130..=132 | 143 => {
            flow.ttl == 1
                && is_multicast(&flow.daddr)
                && (is_link_local(&flow.saddr) || flow.saddr == [0; 16])
        }
        _ => false,
    }
}

/// The flow embedded in an ICMP error: the packet that caused it, as it was sent.
#[inline(always)]
pub fn inner_flow(ctx: &TcContext, outer: &Flow) -> Result<Flow, ()> {
    let (mut inner, l4) = if outer.ipv6 {
        let (flow, next) = ipv6_header(ctx, outer.inner_l3)?;
        let mut f = flow;
        f.proto = next;
        (f, outer.inner_l3 + 40)
    } else {
        ipv4_header(ctx, outer.inner_l3)?
    };
    if matches!(inner.proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP) {
        let ports: [u8; 4] = load(ctx, l4)?;
        inner.sport = u16::from_be_bytes([ports[0], ports[1]]);
        inner.dport = u16::from_be_bytes([ports[2], ports[3]]);
    } else if matches!(inner.proto, PROTO_ICMP | PROTO_ICMPV6) {
        // Only echo requests get errors back; their key uses the id as sport.
        let hdr: [u8; 8] = load(ctx, l4)?;
        inner.sport = u16::from_be_bytes([hdr[4], hdr[5]]);
    }
    Ok(inner)
}
