//! An [`Explanation`] in a few lines for people, like `kubectl describe`.

use std::fmt::Write as _;

use super::{Explanation, MapsCheck, Party, Side};

/// The explanation as text, one finding per line.
pub fn human(e: &Explanation) -> String {
    let mut out = String::new();
    write_explanation(&mut out, e, "");
    match e.maps_agree {
        Some(true) => out.push_str("kernel maps: agree\n"),
        Some(false) => out.push_str("kernel maps: MISMATCH (see the maps lines above)\n"),
        None => out.push_str("kernel maps: not checked\n"),
    }
    out
}

fn party(p: &Party) -> String {
    let mut s = p.name.clone();
    let mut extra = Vec::new();
    if let Some(ip) = p.ip
        && p.name != ip.to_string()
    {
        extra.push(ip.to_string());
    }
    if let Some(n) = &p.node
        && !p.name.starts_with("node/")
    {
        extra.push(n.clone());
    }
    if p.host_network {
        extra.push("hostNetwork".into());
    }
    if !extra.is_empty() {
        let _ = write!(s, " ({})", extra.join(", "));
    }
    s
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "allowed" } else { "denied" }
}

fn write_explanation(out: &mut String, e: &Explanation, indent: &str) {
    let _ = writeln!(
        out,
        "{indent}{} -> {} on {}/{}: {}",
        party(&e.from),
        party(&e.to),
        e.port,
        e.protocol,
        if e.allowed { "ALLOWED" } else { "DENIED" }
    );
    let inner = format!("{indent}  ");
    if let Some(n) = &e.named_port {
        let _ = writeln!(
            out,
            "{inner}named port {:?} is {} on {}",
            n.name, n.port, n.pod
        );
    }
    if e.egress.is_none() && e.service.is_none() {
        let _ = writeln!(out, "{inner}egress: not a pod, nothing judged");
    }
    if let Some(s) = &e.egress {
        write_side(out, s, &inner, "");
    }
    if let Some(s) = &e.ingress {
        write_side(out, s, &inner, "");
    } else if e.service.is_none() {
        let _ = writeln!(out, "{inner}ingress: not a pod, nothing judged");
    }
    if let Some(svc) = &e.service {
        let _ = writeln!(
            out,
            "{inner}Service {} frontend {} port {}: {} backend(s){}",
            svc.service,
            svc.frontend,
            svc.port,
            svc.backends.len(),
            if svc.mixed {
                " with mixed verdicts: fails closed"
            } else {
                ""
            }
        );
        if let Some(s) = &svc.egress {
            write_side(out, s, &inner, " to the frontend");
        }
        let deeper = format!("{inner}  ");
        for b in &svc.backends {
            write_explanation(out, b, &deeper);
        }
    }
}

fn write_side(out: &mut String, s: &Side, indent: &str, what: &str) {
    let _ = writeln!(
        out,
        "{indent}{} of {}{what}: {}: {}",
        s.direction,
        s.pod,
        verdict(s.allowed),
        s.decided_by
    );
    let deeper = format!("{indent}  ");
    if !s.selected_by.is_empty() {
        let _ = writeln!(out, "{deeper}selected by: {}", s.selected_by.join(", "));
    }
    let p = &s.profile;
    let mut profile = Vec::new();
    if p.default_deny {
        profile.push("default deny isolates it");
    }
    if p.allow_dns {
        profile.push("the DNS allowance decided");
    }
    if p.metadata_blocked {
        profile.push("the peer is under the metadata block");
    }
    if p.metadata_opted_out {
        profile.push("opted out of the metadata block");
    }
    if !profile.is_empty() {
        let _ = writeln!(out, "{deeper}profile: {}", profile.join("; "));
    }
    if !s.logged.is_empty() {
        let _ = writeln!(out, "{deeper}logged by: {}", s.logged.join(", "));
    }
    match &s.maps {
        Some(m) => write_maps(out, m, &deeper),
        None => {
            let _ = writeln!(out, "{deeper}maps on {}: not checked here", s.node);
        }
    }
}

fn write_maps(out: &mut String, m: &MapsCheck, indent: &str) {
    let _ = writeln!(
        out,
        "{indent}maps on {}: {} ({}), {}",
        m.node,
        m.verdict,
        verdict(m.allowed),
        if m.agrees { "agrees" } else { "MISMATCH" }
    );
}
