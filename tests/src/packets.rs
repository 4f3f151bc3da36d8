//! Hand-built Ethernet frames for `BPF_PROG_TEST_RUN`.

use std::net::IpAddr;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

fn eth(ethertype: u16) -> Vec<u8> {
    let mut v = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    v.extend(ethertype.to_be_bytes());
    v
}

fn l4(proto: u8, sport: u16, dport: u16, tcp_flags: u8) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(sport.to_be_bytes());
    v.extend(dport.to_be_bytes());
    if proto == TCP {
        v.extend([
            0, 0, 0, 1, 0, 0, 0, 0, 0x50, tcp_flags, 0xff, 0xff, 0, 0, 0, 0,
        ]);
    } else {
        v.extend([0, 8, 0, 0]);
    }
    v
}

/// An IPv4 or IPv6 packet (by the addresses' family) with a TCP or UDP header.
pub fn packet(
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
) -> Vec<u8> {
    let payload = l4(proto, sport, dport, tcp_flags);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut v = eth(0x0800);
            let total = (20 + payload.len()) as u16;
            v.extend([0x45, 0]);
            v.extend(total.to_be_bytes());
            v.extend([0, 1, 0x40, 0, 64, proto, 0, 0]);
            v.extend(s.octets());
            v.extend(d.octets());
            v.extend(payload);
            v
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => ipv6(s.octets(), d.octets(), proto, &[], &payload),
        _ => panic!("mixed address families"),
    }
}

/// IPv6 with extension headers (each: next header written for you, 8 bytes).
pub fn ipv6(src: [u8; 16], dst: [u8; 16], proto: u8, ext: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut v = eth(0x86DD);
    let first = ext.first().copied().unwrap_or(proto);
    let mut body = Vec::new();
    for (i, kind) in ext.iter().enumerate() {
        let next = ext.get(i + 1).copied().unwrap_or(proto);
        let _ = kind;
        body.extend([next, 0, 0, 0, 0, 0, 0, 0]);
    }
    body.extend(payload);
    v.extend([0x60, 0, 0, 0]);
    v.extend((body.len() as u16).to_be_bytes());
    v.extend([first, 64]);
    v.extend(src);
    v.extend(dst);
    v.extend(body);
    v
}

/// An IPv4 fragment that is not the first (offset 8 units), no L4 header.
pub fn later_fragment(src: [u8; 4], dst: [u8; 4], proto: u8) -> Vec<u8> {
    let mut v = eth(0x0800);
    v.extend([0x45, 0, 0, 28, 0, 1, 0x00, 0x08, 64, proto, 0, 0]);
    v.extend(src);
    v.extend(dst);
    v.extend([0u8; 8]);
    v
}

/// An IPv4 header claiming an IHL of 3 words (less than the minimum 5).
pub fn bad_ihl(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut v = eth(0x0800);
    v.extend([0x43, 0, 0, 40, 0, 1, 0x40, 0, 64, TCP, 0, 0]);
    v.extend(src);
    v.extend(dst);
    v.extend([0u8; 20]);
    v
}

/// The first fragment of an IPv4 datagram (more fragments follow), with
/// identification `id` and a UDP header.
pub fn first_fragment_udp(src: [u8; 4], dst: [u8; 4], id: u16, sport: u16, dport: u16) -> Vec<u8> {
    let mut v = eth(0x0800);
    v.extend([0x45, 0, 0, 36]);
    v.extend(id.to_be_bytes());
    v.extend([0x20, 0x00, 64, UDP, 0, 0]);
    v.extend(src);
    v.extend(dst);
    v.extend(sport.to_be_bytes());
    v.extend(dport.to_be_bytes());
    v.extend([0x0b, 0xb8, 0, 0]);
    v.extend([0u8; 8]);
    v
}

/// A later IPv4 fragment (offset 16 bytes) of datagram `id`, no L4 header.
pub fn later_fragment_id(src: [u8; 4], dst: [u8; 4], proto: u8, id: u16) -> Vec<u8> {
    let mut v = eth(0x0800);
    v.extend([0x45, 0, 0, 28]);
    v.extend(id.to_be_bytes());
    v.extend([0x00, 0x02, 64, proto, 0, 0]);
    v.extend(src);
    v.extend(dst);
    v.extend([0u8; 8]);
    v
}

/// An ICMPv4 destination-unreachable from `src` to `dst` quoting the IPv4
/// header and ports of a packet `inner_src:inner_sport -> inner_dst:inner_dport`.
pub fn icmp4_unreachable(
    src: [u8; 4],
    dst: [u8; 4],
    inner_src: [u8; 4],
    inner_dst: [u8; 4],
    proto: u8,
    inner_sport: u16,
    inner_dport: u16,
) -> Vec<u8> {
    let mut inner = vec![0x45, 0, 0, 48, 0, 1, 0x40, 0, 64, proto, 0, 0];
    inner.extend(inner_src);
    inner.extend(inner_dst);
    inner.extend(inner_sport.to_be_bytes());
    inner.extend(inner_dport.to_be_bytes());
    inner.extend([0u8; 4]);
    let mut v = eth(0x0800);
    let total = (20 + 8 + inner.len()) as u16;
    v.extend([0x45, 0]);
    v.extend(total.to_be_bytes());
    v.extend([0, 1, 0x40, 0, 64, 1, 0, 0]);
    v.extend(src);
    v.extend(dst);
    v.extend([3, 3, 0, 0, 0, 0, 0, 0]);
    v.extend(inner);
    v
}

/// An ICMPv6 message of `icmp_type` with the given hop limit.
pub fn icmp6(src: [u8; 16], dst: [u8; 16], icmp_type: u8, hop_limit: u8) -> Vec<u8> {
    let mut v = ipv6(
        src,
        dst,
        58,
        &[],
        &[icmp_type, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    // The hop limit is byte 7 of the IPv6 header, after 14 of Ethernet.
    v[14 + 7] = hop_limit;
    v
}
