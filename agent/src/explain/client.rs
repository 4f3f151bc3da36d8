//! `palisade explain` against the agent on this node: `GET /explain` on its
//! local endpoint (`--listen`), which answers from its current model and
//! checks its pinned kernel maps.

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use super::Query;

/// The query string of `GET /explain`.
pub fn query_string(q: &Query, json: bool) -> String {
    let enc = |s: String| {
        s.replace('%', "%25")
            .replace('/', "%2F")
            .replace(':', "%3A")
    };
    format!(
        "from={}&to={}&port={}&format={}",
        enc(q.from.to_string()),
        enc(q.to.to_string()),
        enc(q.port.to_string()),
        if json { "json" } else { "text" }
    )
}

/// Asks the agent at `addr` and returns its answer (text or JSON).
pub async fn fetch(addr: &str, q: &Query, json: bool) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr).await.with_context(|| {
        format!("connecting to the agent at {addr} (is it running with --listen {addr}?); or explain offline with --source DIR")
    })?;
    let req = format!(
        "GET /explain?{} HTTP/1.0\r\nHost: {addr}\r\n\r\n",
        query_string(q, json)
    );
    stream.write_all(req.as_bytes()).await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw.as_str(), ""));
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        bail!("the agent answered {status:?}: {}", body.trim());
    }
    Ok(body.to_string())
}
