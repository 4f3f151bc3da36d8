//! Which interfaces carry pod traffic: the veths of this network namespace,
//! listed here; the daemon keeps those a local pod's host route points at
//! (point-to-point CNIs), or, with name prefixes (bridge CNIs), those the
//! prefixes name. The node's uplink (a veth on kind) and other software's
//! veths are no pod's: attached under `unknownPodTraffic: deny` they would
//! lose all their traffic (tests/tests/interface_selection.rs).

use futures_util::TryStreamExt;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Interface {
    pub index: u32,
    pub name: String,
}

/// Whether `name` starts with one of `prefixes` (any name when there are none).
pub fn has_prefix(name: &str, prefixes: &[String]) -> bool {
    prefixes.is_empty() || prefixes.iter().any(|p| name.starts_with(p.as_str()))
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
            && has_prefix(&name, prefixes)
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

/// Every directly connected host route (`ip/32` or `ip/128 dev vethX`, no
/// gateway) with its interface, which is how point-to-point CNIs (kindnet's
/// ptp, Calico, Cilium) wire a pod: the pod's veth is the one its address
/// is routed to. A node's uplink carries subnet routes and routes via a
/// gateway (other nodes' pods), Docker's veths none: never these.
pub async fn host_routes(
    handle: &rtnetlink::Handle,
) -> Result<std::collections::BTreeMap<std::net::IpAddr, u32>, rtnetlink::Error> {
    use netlink_packet_route::route::{RouteAddress, RouteAttribute};
    use rtnetlink::RouteMessageBuilder;
    let mut out = std::collections::BTreeMap::new();
    for request in [
        RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
        RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
    ] {
        let mut routes = handle.route().get(request).execute();
        while let Some(msg) = routes.try_next().await? {
            let full = match msg.header.address_family {
                netlink_packet_route::AddressFamily::Inet => 32,
                _ => 128,
            };
            // Unicast only: the local table's /32 entries for the node's own
            // addresses (a Docker bridge's gateway, say) are no pods'.
            if msg.header.destination_prefix_length != full
                || msg.header.kind != netlink_packet_route::route::RouteType::Unicast
            {
                continue;
            }
            let mut dst = None;
            let mut oif = None;
            for attr in &msg.attributes {
                match attr {
                    RouteAttribute::Gateway(_) | RouteAttribute::Via(_) => {
                        oif = None;
                        break;
                    }
                    RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some((*a).into()),
                    RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some((*a).into()),
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            if let (Some(dst), Some(oif)) = (dst, oif) {
                out.insert(dst, oif);
            }
        }
    }
    Ok(out)
}
