//! cgroup_skb/egress: the metadata block for every IP packet a hostNetwork
//! pod's sockets send, whatever kind of socket made it. The sock_addr hooks
//! (sock.rs) only see TCP/UDP connect and sendmsg; a process with
//! CAP_NET_RAW can write whole IP packets (SOCK_RAW, IP_HDRINCL) of any
//! protocol, which no sock_addr hook sees. This hook runs in
//! ip_finish_output / ip6_finish_output for each packet of a full socket
//! of the cgroup, raw ones included, so it sees them.
//!
//! The decision is the sock hooks' (`metadata_blocks` on the destination's
//! ipcache flags, the protocol and the destination port, 0 where the
//! protocol has none), so the two cannot disagree: anything not to a
//! metadata address passes untouched.
//!
//! AF_PACKET sockets skip the IP stack and this hook: see the README's
//! threat model.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_skb_cgroup_id},
    macros::cgroup_skb,
    programs::SkBuffContext,
};
use palisade_common::{
    Addr, Counter, DIR_EGRESS, FlowEvent, PROTO_SCTP, PROTO_TCP, PROTO_UDP, Reason, ipcache_flags,
    metadata_blocks, v4_mapped,
};

use crate::datapath::{EVENTS, count, identity_of};

const PASS: i32 = 1;
const DROP: i32 = 0;
/// IPv6 extension headers followed before giving up on the port.
const MAX_EXT_HEADERS: usize = 8;

/// The fixed IPv4 header (the skb's data starts at the network header here).
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

const _: () = assert!(core::mem::size_of::<Ipv4Header>() == 20);
const _: () = assert!(core::mem::size_of::<Ipv6Header>() == 40);

#[cgroup_skb(egress)]
pub fn palisade_cgroup_egress(ctx: SkBuffContext) -> i32 {
    check(&ctx)
}

#[inline(always)]
fn load<T>(ctx: &SkBuffContext, off: usize) -> Option<T> {
    ctx.load::<T>(off).ok()
}

#[inline(always)]
fn check(ctx: &SkBuffContext) -> i32 {
    // The version nibble, not skb->protocol: a raw socket's packet is
    // whatever the process wrote.
    let Some(first) = load::<u8>(ctx, 0) else {
        // Not even one byte: no destination can be read, so there is no
        // metadata address to protect, and the stack drops such a packet.
        return PASS;
    };
    match first >> 4 {
        4 => check_v4(ctx),
        6 => check_v6(ctx),
        // Neither IPv4 nor IPv6 (the stack routes neither): no IP destination.
        _ => PASS,
    }
}

#[inline(always)]
fn check_v4(ctx: &SkBuffContext) -> i32 {
    // One load for the fixed header: a header too short to hold the
    // destination has no destination we could judge, and cannot be routed.
    let Some(h) = load::<Ipv4Header>(ctx, 0) else {
        return PASS;
    };
    let daddr = v4_mapped(h.daddr);
    let flags = identity_of(&daddr).flags;
    if flags & ipcache_flags::METADATA == 0 {
        // Not a metadata address: the common case, decided on one lookup.
        return PASS;
    }
    // From here on the destination is a metadata address: whatever cannot be
    // read counts as "no port", which the block holds (fail closed).
    let frag = u16::from_be_bytes(h.frag_be);
    let ihl = usize::from(h.ver_ihl & 0x0f) * 4;
    let ports = if frag & 0x1fff != 0 || ihl < 20 {
        // A later fragment (no L4 header) or a nonsensical header length.
        (0, 0)
    } else {
        ports(ctx, h.proto, ihl)
    };
    judge(ctx, v4_mapped(h.saddr), daddr, flags, h.proto, ports)
}

#[inline(always)]
fn check_v6(ctx: &SkBuffContext) -> i32 {
    let Some(h) = load::<Ipv6Header>(ctx, 0) else {
        return PASS;
    };
    // A v4-mapped destination is looked up as the IPv4 address it maps, as
    // the sock hooks do: `::ffff:169.254.169.254` is held like the address
    // it names (nothing legitimate sends IPv6 to it).
    let flags = identity_of(&h.daddr).flags;
    if flags & ipcache_flags::METADATA == 0 {
        return PASS;
    }
    let mut next = h.next;
    let mut off = 40usize;
    let mut port_known = false;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            // hop-by-hop, routing, destination options: length in 8-octet units
            0 | 43 | 60 => {
                let Some(hdr) = load::<[u8; 2]>(ctx, off) else {
                    break;
                };
                next = hdr[0];
                off += (usize::from(hdr[1]) + 1) * 8;
            }
            // fragment header: a later fragment has no L4 header
            44 => {
                let Some(hdr) = load::<[u8; 4]>(ctx, off) else {
                    break;
                };
                next = hdr[0];
                off += 8;
                if u16::from_be_bytes([hdr[2], hdr[3]]) >> 3 != 0 {
                    break;
                }
            }
            // authentication header: length in 4-octet units, minus 2
            51 => {
                let Some(hdr) = load::<[u8; 2]>(ctx, off) else {
                    break;
                };
                next = hdr[0];
                off += (usize::from(hdr[1]) + 2) * 4;
            }
            _ => {
                port_known = true;
                break;
            }
        }
    }
    // Too many or unreadable extension headers: "no port" (fail closed).
    let ports = if port_known {
        ports(ctx, next, off)
    } else {
        (0, 0)
    };
    judge(ctx, h.saddr, h.daddr, flags, next, ports)
}

/// The source and destination ports of a TCP, UDP or SCTP header at `l4`
/// (host order), 0 for other protocols or a header cut short.
#[inline(always)]
fn ports(ctx: &SkBuffContext, proto: u8, l4: usize) -> (u16, u16) {
    if proto != PROTO_TCP && proto != PROTO_UDP && proto != PROTO_SCTP {
        return (0, 0);
    }
    load::<[u8; 4]>(ctx, l4).map_or((0, 0), |p| {
        (
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
        )
    })
}

#[inline(always)]
fn judge(
    ctx: &SkBuffContext,
    saddr: Addr,
    daddr: Addr,
    flags: u32,
    proto: u8,
    (sport, port): (u16, u16),
) -> i32 {
    if !metadata_blocks(flags, proto, port) {
        return PASS;
    }
    count(Counter::Denied);
    count(Counter::DeniedEgress);
    count(Counter::MetadataBlocked);
    if let Some(mut entry) = EVENTS.reserve::<FlowEvent>(0) {
        // SAFETY: plain helper without preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        entry.write(FlowEvent {
            ts_ns: now,
            // The sending socket's cgroup (a retransmission may run in
            // softirq context, where the current task's would be wrong).
            // SAFETY: the context's skb is valid for the program's duration.
            cgroup: unsafe { bpf_skb_cgroup_id(ctx.skb.skb) },
            saddr,
            daddr,
            sport_be: sport.to_be_bytes(),
            dport_be: port.to_be_bytes(),
            endpoint: 0,
            identity: 0,
            proto,
            dir: DIR_EGRESS,
            reason: Reason::MetadataBlock as u8,
            from_cgroup: 1,
        });
        entry.submit(0);
    } else {
        count(Counter::EventLost);
    }
    DROP
}
