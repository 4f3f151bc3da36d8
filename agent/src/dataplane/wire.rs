//! Logical map entries (engine types) to and from the kernel's layouts.

use aya::maps::lpm_trie::Key;
use ipnet::IpNet;
use palisade_common::{
    Addr, EndpointValue, IpcacheValue, POLICY_PREFIX_NO_PORT, PolicyKeyData, PolicyValue,
};

use crate::policy::{
    addr::{from_wire_prefix, wire_prefix},
    state::{Direction, EndpointEntry, IpcacheEntry, PolicyKey},
};

pub use crate::policy::addr::{from_wire_addr as ip, wire_addr as addr};

pub fn ipcache_key(net: &IpNet) -> Key<Addr> {
    let (len, a) = wire_prefix(net);
    Key::new(u32::from(len), a)
}

/// A prefix inside `::ffff:0:0/96` comes back as IPv4.
pub fn ipcache_net(key: &Key<Addr>) -> Option<IpNet> {
    let len = u8::try_from(key.prefix_len()).ok()?;
    from_wire_prefix(len, &key.data())
}

pub fn policy_key(k: &PolicyKey) -> Key<PolicyKeyData> {
    Key::new(
        POLICY_PREFIX_NO_PORT + u32::from(k.port_bits),
        PolicyKeyData::new(k.endpoint, k.dir.wire(), k.proto, k.identity, k.port),
    )
}

/// `None` for a key with a direction no agent writes.
pub fn policy_key_back(k: &Key<PolicyKeyData>) -> Option<PolicyKey> {
    let d = k.data();
    Some(PolicyKey {
        endpoint: u32::from_be_bytes(d.endpoint_be),
        dir: Direction::from_wire(d.dir)?,
        proto: d.proto,
        identity: u32::from_be_bytes(d.identity_be),
        port: u16::from_be_bytes(d.port_be),
        port_bits: k.prefix_len().saturating_sub(POLICY_PREFIX_NO_PORT) as u8,
    })
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
        assert_eq!(policy_key_back(&policy_key(&k)), Some(k));
        assert_eq!(policy_key(&k).prefix_len(), 93);
        let a = std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(ip(&addr(a)), a);
    }
}
