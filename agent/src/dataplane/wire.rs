//! Logical map entries (engine types) to and from the kernel's layouts.

use std::net::{IpAddr, Ipv6Addr};

use aya::maps::lpm_trie::Key;
use ipnet::IpNet;
use palisade_common::{
    Addr, EndpointValue, IpcacheValue, POLICY_PREFIX_NO_PORT, PolicyKeyData, PolicyValue,
};

use crate::policy::state::{Direction, EndpointEntry, IpcacheEntry, PolicyKey};

/// IPv6 as is; IPv4 as `::ffff:a.b.c.d`.
pub fn addr(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub fn ip(addr: &Addr) -> IpAddr {
    let v6 = Ipv6Addr::from(*addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

pub fn ipcache_key(net: &IpNet) -> Key<Addr> {
    let extra = if net.addr().is_ipv4() { 96 } else { 0 };
    Key::new(u32::from(net.prefix_len()) + extra, addr(net.addr()))
}

pub fn ipcache_net(key: &Key<Addr>) -> Option<IpNet> {
    let a = ip(&key.data());
    let len = key.prefix_len();
    match a {
        IpAddr::V4(v4) => len
            .checked_sub(96)
            .and_then(|l| IpNet::new(IpAddr::V4(v4), l as u8).ok()),
        IpAddr::V6(_) => IpNet::new(a, len as u8).ok(),
    }
}

pub fn policy_key(k: &PolicyKey) -> Key<PolicyKeyData> {
    Key::new(
        POLICY_PREFIX_NO_PORT + u32::from(k.port_bits),
        PolicyKeyData::new(k.endpoint, k.dir.wire(), k.proto, k.identity, k.port),
    )
}

pub fn policy_key_back(k: &Key<PolicyKeyData>) -> PolicyKey {
    let d = k.data();
    PolicyKey {
        endpoint: u32::from_be_bytes(d.endpoint_be),
        dir: Direction::from_wire(d.dir),
        proto: d.proto,
        identity: u32::from_be_bytes(d.identity_be),
        port: u16::from_be_bytes(d.port_be),
        port_bits: k.prefix_len().saturating_sub(POLICY_PREFIX_NO_PORT) as u8,
    }
}

pub fn endpoint_value(e: &EndpointEntry) -> EndpointValue {
    EndpointValue {
        id: e.id,
        flags: e.flags,
        ifindex: e.ifindex,
    }
}

pub fn ipcache_value(e: &IpcacheEntry) -> IpcacheValue {
    IpcacheValue {
        identity: e.identity,
        flags: e.flags,
    }
}

pub fn policy_value(rule: u32) -> PolicyValue {
    PolicyValue { rule }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        for net in [
            "10.1.0.0/16",
            "0.0.0.0/0",
            "169.254.169.254/32",
            "fd00::/8",
            "::/0",
        ] {
            let net: IpNet = net.parse().expect("valid");
            assert_eq!(ipcache_net(&ipcache_key(&net)), Some(net));
        }
        let k = PolicyKey {
            endpoint: 7,
            dir: Direction::Egress,
            proto: 6,
            identity: 300,
            port: 8080,
            port_bits: 13,
        };
        assert_eq!(policy_key_back(&policy_key(&k)), k);
        assert_eq!(policy_key(&k).prefix_len(), 93);
        let a = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(ip(&addr(a)), a);
    }
}
