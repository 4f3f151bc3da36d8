//! Where deny records go: stdout (the product's log format, JSON or text),
//! the `/flows` endpoint and metrics, and optionally a rotated file.

use std::{path::Path, sync::Arc};

use tracing::warn;

use crate::flows::{file::RotatingFile, log::Record};

/// Who else sees each record as it goes out (the HTTP API's `/flows` and
/// metrics): a trait here, so that flows does not depend on the API.
pub trait Publish: Send + Sync {
    fn publish(&self, r: &Record);
}

/// Rotated files kept next to `--deny-log-file`.
const KEEP_FILES: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, thiserror::Error)]
#[error("opening {}", path.display())]
pub struct OpenError {
    path: std::path::PathBuf,
    source: std::io::Error,
}

pub struct Sink {
    format: LogFormat,
    file: Option<RotatingFile>,
    shared: Arc<dyn Publish>,
}

impl Sink {
    /// `file`: deny records also go there (JSON lines), rotated at `max_bytes`.
    pub fn open(
        format: LogFormat,
        file: Option<&Path>,
        max_bytes: u64,
        shared: Arc<dyn Publish>,
    ) -> Result<Self, OpenError> {
        let file = file
            .map(|p| {
                RotatingFile::open(p, max_bytes, KEEP_FILES).map_err(|source| OpenError {
                    path: p.to_path_buf(),
                    source,
                })
            })
            .transpose()?;
        Ok(Self {
            format,
            file,
            shared,
        })
    }

    pub fn emit(&mut self, records: Vec<Record>) {
        for r in records {
            self.shared.publish(&r);
            if let Some(f) = self.file.as_mut()
                && let Err(e) = serde_json::to_string(&r)
                    .map_err(std::io::Error::other)
                    .and_then(|l| f.write_line(&l))
            {
                warn!(error = %e, "writing the deny log file");
            }
            match self.format {
                LogFormat::Json => match serde_json::to_string(&r) {
                    Ok(line) => println!("{line}"),
                    Err(e) => warn!(error = %e, "deny record not serializable"),
                },
                LogFormat::Text => println!("{}", r.human()),
            }
        }
    }
}
