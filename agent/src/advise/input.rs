//! The flows `palisade advise` reads: JSON lines (what `palisade flows
//! --allowed --json` prints and `GET /flows/allowed` serves) or one JSON
//! array, from files, stdin or agents.

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpStream,
};

use crate::flows::observed::ObservedFlow;

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{origin}: line {line}: not an observed flow")]
    Line {
        origin: String,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("{origin}: not a JSON array of observed flows")]
    Array {
        origin: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The records in `text`: a JSON array, or one record per line (blank
/// lines skipped).
pub fn parse_flows(origin: &str, text: &str) -> Result<Vec<ObservedFlow>, InputError> {
    if text.trim_start().starts_with('[') {
        return serde_json::from_str(text).map_err(|source| InputError::Array {
            origin: origin.to_string(),
            source,
        });
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|source| InputError::Line {
                origin: origin.to_string(),
                line: i + 1,
                source,
            })
        })
        .collect()
}

/// The body of `GET /flows/allowed` from the agent listening on `addr`.
pub async fn fetch_allowed(addr: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr).await.with_context(|| {
        format!("connecting to the agent at {addr} (is it running with --listen {addr}?)")
    })?;
    // HTTP/1.0: the body ends when the agent closes, no chunking to undo.
    let req = format!("GET /flows/allowed HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).await?;
    if !status.contains(" 200 ") {
        bail!(
            "the agent at {addr} answered {:?} to GET /flows/allowed",
            status.trim_end()
        );
    }
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).await? == 0 || header.trim_end().is_empty() {
            break;
        }
    }
    let mut body = String::new();
    reader
        .read_to_string(&mut body)
        .await
        .with_context(|| format!("reading the flows of the agent at {addr}"))?;
    Ok(body)
}
