//! Which interfaces carry pod traffic: every veth in the agent's network
//! namespace (the host side of a pod's pair, as point-to-point CNIs make
//! them), optionally narrowed by name prefixes. The programs judge only
//! addresses that are local endpoints, so a veth that is not a pod's costs a
//! lookup and passes everything.

use futures_util::TryStreamExt;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Interface {
    pub index: u32,
    pub name: String,
}

/// The veth interfaces, via an rtnetlink link dump.
pub async fn veths(
    handle: &rtnetlink::Handle,
    prefixes: &[String],
) -> Result<Vec<Interface>, rtnetlink::Error> {
    let mut out = Vec::new();
    let mut links = handle.link().get().execute();
    while let Some(msg) = links.try_next().await? {
        let mut name = None;
        let mut is_veth = false;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = Some(n.clone()),
                LinkAttribute::LinkInfo(infos) => {
                    is_veth = infos
                        .iter()
                        .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)));
                }
                _ => {}
            }
        }
        if let Some(name) = name
            && is_veth
            && (prefixes.is_empty() || prefixes.iter().any(|p| name.starts_with(p.as_str())))
        {
            out.push(Interface {
                index: msg.header.index,
                name,
            });
        }
    }
    out.sort();
    Ok(out)
}

/// Addresses of this network namespace (the node's own addresses).
pub async fn local_addresses(
    handle: &rtnetlink::Handle,
) -> Result<Vec<std::net::IpAddr>, rtnetlink::Error> {
    use netlink_packet_route::address::AddressAttribute;
    let mut out = Vec::new();
    let mut addrs = handle.address().get().execute();
    while let Some(msg) = addrs.try_next().await? {
        for attr in &msg.attributes {
            if let AddressAttribute::Address(ip) = attr
                && !ip.is_loopback()
                && !matches!(ip, std::net::IpAddr::V6(v6) if v6.is_unicast_link_local())
                && !out.contains(ip)
            {
                out.push(*ip);
            }
        }
    }
    out.sort();
    Ok(out)
}
