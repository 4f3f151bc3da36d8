//! Service translation on a node, shaped like kube-proxy's nftables mode:
//! per family a table whose `nat-prerouting` (traffic from pods, priority
//! dstnat) and `nat-output` (the node's own traffic, priority -100) chains
//! look up (daddr . l4proto . dport) in a verdict map that jumps to a
//! chain per Service port; that chain picks a backend with `numgen random`
//! and DNATs to it. Conntrack translates replies back. Service ports
//! without backends are rejected, as kube-proxy does.
//!
//! The whole table is replaced in one `nft -f` transaction, so a change of
//! endpoints is atomic for packets.

use std::{
    fmt::Write as _,
    io::Write as _,
    net::{IpAddr, SocketAddr},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

pub const TABLE: &str = "kube-proxy";

/// One Service port of one family, with the backends it sends to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// `NS/NAME`, for chain names and comments.
    pub service: String,
    pub addr: IpAddr,
    /// `tcp`, `udp` or `sctp` (nft's names; `th dport` reads the ports of
    /// all three, and conntrack and NAT handle SCTP as they do the others).
    pub proto: &'static str,
    pub port: u16,
    /// Backend address and target port, in the order the harness listed them.
    pub backends: Vec<SocketAddr>,
}

/// The ruleset text for one family (`v6`): the tables of that family only.
pub fn ruleset(ports: &[ServicePort], v6: bool) -> String {
    let (family, daddr, addr_type) = if v6 {
        ("ip6", "ip6 daddr", "ipv6_addr")
    } else {
        ("ip", "ip daddr", "ipv4_addr")
    };
    let ports: Vec<&ServicePort> = ports.iter().filter(|p| p.addr.is_ipv6() == v6).collect();
    let mut s = String::new();
    // Declaring then deleting makes the delete succeed on the first run;
    // both and the new table are one transaction.
    let _ = writeln!(s, "add table {family} {TABLE}");
    let _ = writeln!(s, "delete table {family} {TABLE}");
    let _ = writeln!(s, "table {family} {TABLE} {{");
    let key = format!("{addr_type} . inet_proto . inet_service");
    let elems = |with_backends: bool| -> Vec<String> {
        ports
            .iter()
            .filter(|p| p.backends.is_empty() != with_backends)
            .map(|p| {
                let target = if with_backends {
                    format!("goto {}", chain_name(p))
                } else {
                    "goto reject-chain".into()
                };
                format!("{} . {} . {} : {target}", p.addr, p.proto, p.port)
            })
            .collect()
    };
    for (map, with_backends) in [("service-ips", true), ("no-endpoint-services", false)] {
        let _ = writeln!(s, "  map {map} {{\n    type {key} : verdict");
        let e = elems(with_backends);
        if !e.is_empty() {
            let _ = writeln!(s, "    elements = {{ {} }}", e.join(", "));
        }
        s.push_str("  }\n");
    }
    let lookup = format!("{daddr} . meta l4proto . th dport");
    for (chain, hook) in [
        ("nat-prerouting", "type nat hook prerouting priority dstnat"),
        ("nat-output", "type nat hook output priority -100"),
    ] {
        let _ = writeln!(
            s,
            "  chain {chain} {{\n    {hook}; policy accept;\n    {lookup} vmap @service-ips\n  }}"
        );
    }
    for (chain, hook) in [
        ("filter-forward", "type filter hook forward priority -110"),
        ("filter-output", "type filter hook output priority -110"),
    ] {
        let _ = writeln!(
            s,
            "  chain {chain} {{\n    {hook}; policy accept;\n    {lookup} vmap @no-endpoint-services\n  }}"
        );
    }
    s.push_str("  chain reject-chain {\n    reject\n  }\n");
    for p in ports.iter().filter(|p| !p.backends.is_empty()) {
        let chain = chain_name(p);
        let _ = writeln!(s, "  chain {chain} {{\n    comment \"{}\"", p.service);
        let arms: Vec<String> = (0..p.backends.len())
            .map(|i| format!("{i} : goto {chain}-ep{i}"))
            .collect();
        let _ = writeln!(
            s,
            "    numgen random mod {} vmap {{ {} }}\n  }}",
            p.backends.len(),
            arms.join(", ")
        );
        for (i, b) in p.backends.iter().enumerate() {
            // SocketAddr prints IPv6 as [addr]:port, the form nft wants.
            let _ = writeln!(
                s,
                "  chain {chain}-ep{i} {{\n    meta l4proto {} dnat to {b}\n  }}",
                p.proto
            );
        }
    }
    s.push_str("}\n");
    s
}

/// `svc-NS-NAME-PROTO-PORT`, in the characters nft takes in a chain name.
fn chain_name(p: &ServicePort) -> String {
    let raw = format!("svc-{}-{}-{}", p.service.replace('/', "-"), p.proto, p.port);
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Replaces the tables of both families in `netns` (one `nft -f` each).
pub fn apply(netns: &str, ports: &[ServicePort]) -> anyhow::Result<()> {
    for v6 in [false, true] {
        let text = ruleset(ports, v6);
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft (Debian nftables: cargo xtask setup)")?;
        child
            .stdin
            .take()
            .context("nft stdin")?
            .write_all(text.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "nft -f in {netns} failed: {}\nruleset:\n{text}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_port_picks_among_its_backends_and_one_without_is_rejected() {
        let ports = vec![
            ServicePort {
                service: "x/web".into(),
                addr: "10.96.0.10".parse().expect("addr"),
                proto: "tcp",
                port: 8080,
                backends: vec![
                    "10.244.1.10:80".parse().expect("addr"),
                    "10.244.1.11:80".parse().expect("addr"),
                ],
            },
            ServicePort {
                service: "x/empty".into(),
                addr: "10.96.0.11".parse().expect("addr"),
                proto: "udp",
                port: 53,
                backends: vec![],
            },
            ServicePort {
                service: "x/assoc".into(),
                addr: "10.96.0.12".parse().expect("addr"),
                proto: "sctp",
                port: 9000,
                backends: vec!["10.244.1.12:80".parse().expect("addr")],
            },
            ServicePort {
                service: "x/web".into(),
                addr: "fd00:10:96::a".parse().expect("addr"),
                proto: "tcp",
                port: 8080,
                backends: vec!["[fd00:10:244:1::10]:80".parse().expect("addr")],
            },
        ];
        let v4 = ruleset(&ports, false);
        assert!(v4.contains("elements = { 10.96.0.10 . tcp . 8080 : goto svc-x-web-tcp-8080, 10.96.0.12 . sctp . 9000 : goto svc-x-assoc-sctp-9000 }"));
        assert!(v4.contains("meta l4proto sctp dnat to 10.244.1.12:80"));
        assert!(v4.contains("elements = { 10.96.0.11 . udp . 53 : goto reject-chain }"));
        assert!(v4.contains("numgen random mod 2 vmap { 0 : goto svc-x-web-tcp-8080-ep0, 1 : goto svc-x-web-tcp-8080-ep1 }"));
        assert!(v4.contains("meta l4proto tcp dnat to 10.244.1.11:80"));
        assert!(!v4.contains("fd00"));
        let v6 = ruleset(&ports, true);
        assert!(v6.starts_with("add table ip6 kube-proxy\ndelete table ip6 kube-proxy\n"));
        assert!(v6.contains("ip6 daddr . meta l4proto . th dport vmap @service-ips"));
        assert!(v6.contains("dnat to [fd00:10:244:1::10]:80"));
    }
}
