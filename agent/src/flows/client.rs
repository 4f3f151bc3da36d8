//! `palisade flows`: reads the agent's deny stream from its local endpoint
//! (`GET /flows` on `--listen`, default 127.0.0.1:9965) and prints it.
//! In a cluster: `kubectl -n palisade-system exec ds/palisade -- palisade flows --follow`.

use std::fmt::Write as _;

use anyhow::{Context as _, bail};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpStream,
};

/// One deny record (as the agent writes it) in a line for people.
pub fn human(v: &Value) -> String {
    let side = |s: &Value| {
        let who = s["pod"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| s["ip"].as_str().unwrap_or("?").to_string());
        match s["port"].as_u64() {
            Some(p) => format!("{who}:{p}"),
            None => who,
        }
    };
    match v["type"].as_str() {
        Some("deny") => {
            let why = match v["policies"].as_array() {
                Some(p) if !p.is_empty() => {
                    format!(
                        "isolated by {}",
                        p.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
                _ => v["reason"].as_str().unwrap_or("?").to_string(),
            };
            let mut out = String::new();
            let _ = write!(
                out,
                "{} {} {} {} -> {}  ({why})",
                v["time"].as_str().unwrap_or(""),
                v["direction"].as_str().unwrap_or("?"),
                v["protocol"].as_str().unwrap_or("?"),
                side(&v["src"]),
                side(&v["dst"])
            );
            if let Some(n) = v["count"].as_u64().filter(|n| *n > 1) {
                let _ = write!(out, " x{n}");
            }
            out
        }
        Some("suppressed") => format!(
            "{} {} deny records suppressed (rate limit)",
            v["time"].as_str().unwrap_or(""),
            v["suppressed"].as_u64().unwrap_or(0)
        ),
        Some("would-deny" | "log") => {
            let mut out = format!(
                "{} {} {} {} {} -> {}  ({})",
                v["time"].as_str().unwrap_or(""),
                v["type"].as_str().unwrap_or("?").to_uppercase(),
                v["direction"].as_str().unwrap_or("?"),
                v["protocol"].as_str().unwrap_or("?"),
                side(&v["src"]),
                side(&v["dst"]),
                names(&v["policies"]),
            );
            if let Some(n) = v["count"].as_u64().filter(|n| *n > 1) {
                let _ = write!(out, " x{n}");
            }
            out
        }
        None if v.get("first_seen").is_some() => observed(v),
        _ => v.to_string(),
    }
}

fn names(v: &Value) -> String {
    v.as_array()
        .map(|p| {
            p.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// An observed allowed connection (see `flows::observed`) in a line.
fn observed(v: &Value) -> String {
    let peer = |p: &Value| {
        let who = match (p["namespace"].as_str(), p["workload"].is_object()) {
            (Some(ns), true) => format!(
                "{ns}/{} ({})",
                p["workload"]["name"].as_str().unwrap_or("?"),
                p["workload"]["kind"].as_str().unwrap_or("?")
            ),
            (Some(ns), false) => format!("{ns}/{}", p["pod"].as_str().unwrap_or("?")),
            (None, _) => format!(
                "{} [{}]",
                p["ip"].as_str().unwrap_or("?"),
                p["kind"].as_str().unwrap_or("?")
            ),
        };
        match p["service"].as_str() {
            Some(svc) => format!("{who} via service {svc}"),
            None => who,
        }
    };
    let port = match (v["port"].as_u64(), v["named_port"].as_str()) {
        (Some(p), Some(n)) => format!(":{p} ({n})"),
        (Some(p), None) => format!(":{p}"),
        _ => String::new(),
    };
    format!(
        "{} ALLOW {} {} {} -> {}{port} x{} (last {})",
        v["first_seen"].as_str().unwrap_or(""),
        v["direction"].as_str().unwrap_or("?"),
        v["protocol"].as_str().unwrap_or("?"),
        peer(&v["src"]),
        peer(&v["dst"]),
        v["count"].as_u64().unwrap_or(0),
        v["last_seen"].as_str().unwrap_or("")
    )
}

fn query(follow: bool, namespace: Option<&str>, pod: Option<&str>) -> String {
    let mut q = vec![format!("follow={follow}")];
    if let Some(ns) = namespace {
        q.push(format!("namespace={ns}"));
    }
    if let Some(p) = pod {
        q.push(format!("pod={}", p.replace('/', "%2F")));
    }
    q.join("&")
}

/// Which records `palisade flows` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// Deny records (and would-deny and log records).
    Denied,
    /// The observed allowed connections.
    Allowed,
    /// Both: the allowed connections, then the denied.
    All,
}

/// Streams records to stdout until the agent closes (or forever with `follow`).
pub async fn run(
    addr: &str,
    which: Which,
    follow: bool,
    namespace: Option<&str>,
    pod: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    if which != Which::Denied {
        get_lines(
            addr,
            &format!("/flows/allowed?{}", query(false, namespace, pod)),
            |l| print_line(l, json),
        )
        .await?;
    }
    if which != Which::Allowed {
        get_lines(
            addr,
            &format!("/flows?{}", query(follow, namespace, pod)),
            |l| print_line(l, json),
        )
        .await?;
    }
    Ok(())
}

fn print_line(l: &str, json: bool) {
    if json {
        println!("{l}");
    } else if let Ok(v) = serde_json::from_str::<Value>(l) {
        println!("{}", human(&v));
    }
}

/// `GET path` on the agent's local endpoint, each body line to `each`.
pub async fn get_lines(addr: &str, path: &str, mut each: impl FnMut(&str)) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(addr).await.with_context(|| {
        format!("connecting to the agent at {addr} (is it running with --listen {addr}?)")
    })?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut lines = BufReader::new(stream).lines();
    let status = lines.next_line().await?.unwrap_or_default();
    if !status.contains(" 200 ") {
        bail!("the agent answered {status:?} to GET {path}");
    }
    // Headers end at the first empty line.
    while let Some(l) = lines.next_line().await? {
        if l.is_empty() {
            break;
        }
    }
    while let Some(l) = lines.next_line().await? {
        each(&l);
    }
    Ok(())
}
