//! One address space, as the kernel keys it: every address is 16 bytes,
//! IPv4 as v4-mapped `::ffff:a.b.c.d`, and an IPv4 /n is the 128-bit prefix
//! 96+n. Logical keys are kept canonical (a v4-mapped address is written as
//! IPv4) so that two of them never name one kernel entry.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use palisade_common::Addr;

/// Where IPv4 lives in the kernel's address space: `::ffff:0:0/96`.
pub const V4_MAPPED: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96);

/// `0.0.0.0/0`: every IPv4 address.
pub const IPV4_ROOT: IpNet = IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 0));

/// The prefix length an IPv4 /0 has in the kernel.
const V4_PREFIX_BASE: u8 = 96;

/// The kernel's 16 bytes for an address.
pub fn wire_addr(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => palisade_common::v4_mapped(v4.octets()),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The logical (canonical) address for the kernel's 16 bytes.
pub fn from_wire_addr(addr: &Addr) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(*addr)).to_canonical()
}

/// The kernel's (prefix length over 128 bits, address) for a network.
pub fn wire_prefix(net: &IpNet) -> (u8, Addr) {
    let extra = if net.addr().is_ipv4() {
        V4_PREFIX_BASE
    } else {
        0
    };
    (net.prefix_len() + extra, wire_addr(net.addr()))
}

/// The logical (canonical) network for a kernel prefix; `None` for a length over 128.
pub fn from_wire_prefix(len: u8, addr: &Addr) -> Option<IpNet> {
    let net = Ipv6Net::new(Ipv6Addr::from(*addr), len).ok()?;
    Some(canonical_net(IpNet::V6(net)))
}

/// Whether the kernel's prefix `(len, key)` contains the address `addr`.
pub fn wire_prefix_contains(len: u8, key: &Addr, addr: &Addr) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from_be_bytes(*key) & mask == u128::from_be_bytes(*addr) & mask
}

/// A v4-mapped address as IPv4; any other as it is.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// A network the kernel stores as v4-mapped (inside `::ffff:0:0/96`) as the
/// IPv4 network it is; any other as it is.
pub fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if is_v4_mapped(&v6) => {
            let v4 = v6.addr().to_ipv4_mapped().expect("inside ::ffff:0:0/96");
            IpNet::new(IpAddr::V4(v4), v6.prefix_len() - V4_PREFIX_BASE).expect("at most 32")
        }
        other => other,
    }
}

/// Whether an IPv6 network lies inside `::ffff:0:0/96`, where the kernel keeps IPv4.
pub fn is_v4_mapped(net: &Ipv6Net) -> bool {
    V4_MAPPED.contains(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().expect("net")
    }

    #[test]
    fn prefixes_round_trip_canonically() {
        for n in [
            "10.1.0.0/16",
            "0.0.0.0/0",
            "169.254.169.254/32",
            "fd00::/8",
            "::/0",
        ] {
            let (len, a) = wire_prefix(&net(n));
            assert_eq!(from_wire_prefix(len, &a), Some(net(n)));
        }
        let (len, a) = wire_prefix(&net("::ffff:169.254.169.254/128"));
        assert_eq!(from_wire_prefix(len, &a), Some(net("169.254.169.254/32")));
    }

    #[test]
    fn v4_mapped_networks_are_ipv4() {
        assert_eq!(canonical_net(net("::ffff:10.0.0.0/104")), net("10.0.0.0/8"));
        assert_eq!(canonical_net(net("::ffff:0:0/96")), net("0.0.0.0/0"));
        assert_eq!(canonical_net(net("::/0")), net("::/0"));
        assert_eq!(canonical_net(net("::ffff:0:0/95")), net("::ffff:0:0/95"));
        assert_eq!(
            wire_prefix(&net("::ffff:10.0.0.0/104")),
            wire_prefix(&net("10.0.0.0/8"))
        );
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("ip");
        assert_eq!(canonical_ip(mapped), IpAddr::from([10, 0, 0, 1]));
    }

    #[test]
    fn an_ipv6_prefix_shorter_than_96_covers_ipv4_in_the_kernel() {
        let v4 = wire_addr(IpAddr::from([10, 0, 0, 1]));
        let (len, key) = wire_prefix(&net("::/0"));
        assert!(wire_prefix_contains(len, &key, &v4));
        let (len, key) = wire_prefix(&net("0.0.0.0/0"));
        assert!(wire_prefix_contains(len, &key, &v4));
        let (len, key) = wire_prefix(&net("fd00::/8"));
        assert!(!wire_prefix_contains(len, &key, &v4));
    }
}
