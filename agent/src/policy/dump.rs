//! A stable text rendering of a compiled state, for `palisade compile`, the
//! golden files, and comparing what the kernel holds with what was wanted.

use std::fmt::Write as _;

use super::state::{DesiredState, Direction, IdentityInfo};

fn identity_name(state: &DesiredState, id: u32) -> String {
    match id {
        palisade_common::IDENTITY_ANY => "any".into(),
        palisade_common::IDENTITY_WORLD => "world".into(),
        _ => match state.identities.get(&id) {
            Some(IdentityInfo::Pods { namespace, labels }) => {
                let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("{id}(pods {namespace} {{{}}})", l.join(","))
            }
            Some(IdentityInfo::Cidr(net)) => format!("{id}(cidr {net})"),
            Some(IdentityInfo::Host) => format!("{id}(host)"),
            Some(IdentityInfo::Metadata) => format!("{id}(metadata)"),
            Some(IdentityInfo::Service { namespace, name }) => {
                format!("{id}(service {namespace}/{name})")
            }
            None => format!("{id}(?)"),
        },
    }
}

fn proto_name(p: u8) -> String {
    match p {
        0 => "any".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

pub fn render(state: &DesiredState) -> String {
    let mut out = String::new();
    for (id, info) in &state.endpoint_info {
        let pod = info
            .pod
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let ips: Vec<String> = state
            .maps
            .endpoints
            .iter()
            .filter(|(_, e)| e.id == *id)
            .map(|(ip, e)| format!("{ip} flags={:#x}", e.flags))
            .collect();
        let _ = writeln!(out, "endpoint {id} {pod} [{}]", ips.join(", "));
        for dir in Direction::BOTH {
            let by: Vec<String> = info
                .isolated_by(dir)
                .iter()
                .map(ToString::to_string)
                .collect();
            if by.is_empty() {
                let _ = writeln!(out, "  {dir}: not isolated");
            } else {
                let _ = writeln!(out, "  {dir}: isolated by {}", by.join(", "));
            }
            for (k, rule) in state
                .maps
                .policy
                .iter()
                .filter(|(k, _)| k.endpoint == *id && k.dir == dir)
            {
                let r = state
                    .rules
                    .get(rule)
                    .map(ToString::to_string)
                    .unwrap_or_else(|| format!("rule {rule}"));
                let port = if k.port_bits == 0 {
                    "*".to_string()
                } else {
                    format!("{}/{}", k.port, k.port_bits)
                };
                let _ = writeln!(
                    out,
                    "    allow {} {} port {port} <- {r}",
                    identity_name(state, k.identity),
                    proto_name(k.proto)
                );
            }
        }
    }
    out.push_str("ipcache:\n");
    for (net, e) in &state.maps.ipcache {
        let _ = writeln!(
            out,
            "  {net} -> {} flags={:#x}",
            identity_name(state, e.identity),
            e.flags
        );
    }
    out
}
