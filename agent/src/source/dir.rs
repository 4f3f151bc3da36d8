//! Standalone mode: a directory of YAML files is the cluster.
//!
//! The directory is polled (file names, sizes and modification times);
//! when anything changes, every file is read again and the whole set is
//! handed over as a relist. Polling needs no inotify limits and behaves the
//! same on every filesystem, including ConfigMap volumes' symlink swaps.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use super::{
    Batch, SourceEvent,
    yaml::{ParseError, parse_objects},
};
use crate::index::{Kind, Object};

/// Everything read from the directory at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub objects: Vec<Object>,
    pub errors: Vec<String>,
    /// FNV-1a over (relative path, contents) of every file, in name order:
    /// tells which version of the directory a programmed state came from.
    pub digest: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("reading source directory {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Stamp = BTreeMap<PathBuf, (u64, Option<SystemTime>)>;

pub struct DirSource {
    root: PathBuf,
    last: Option<Stamp>,
}

fn is_object_file(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    ) && !p
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn files(root: &Path) -> Result<Vec<PathBuf>, DirError> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|source| DirError::Read {
            path: dir.clone(),
            source,
        })?;
        for entry in rd {
            let entry = entry.map_err(|source| DirError::Read {
                path: dir.clone(),
                source,
            })?;
            let path = entry.path();
            // Follow symlinks (ConfigMap volumes are made of them), skip dot dirs.
            if path.is_dir() {
                if !path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
                {
                    stack.push(path);
                }
            } else if is_object_file(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

pub fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// The digest [`Snapshot::digest`] holds, from (relative path, contents) pairs.
pub fn digest<'a>(files: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> u64 {
    files.into_iter().fold(FNV_OFFSET, |h, (name, bytes)| {
        let h = fnv1a(h, name.as_bytes());
        let h = fnv1a(h, &[0]);
        let h = fnv1a(h, bytes);
        fnv1a(h, &[0])
    })
}

impl DirSource {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            last: None,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn stamp(&self) -> Result<Stamp, DirError> {
        let mut stamp = Stamp::new();
        for f in files(&self.root)? {
            let meta = std::fs::metadata(&f).map_err(|source| DirError::Read {
                path: f.clone(),
                source,
            })?;
            stamp.insert(f, (meta.len(), meta.modified().ok()));
        }
        Ok(stamp)
    }

    /// A new snapshot if the directory changed since the last call (always on the first).
    pub fn poll(&mut self) -> Result<Option<Snapshot>, DirError> {
        let stamp = self.stamp()?;
        if self.last.as_ref() == Some(&stamp) {
            return Ok(None);
        }
        let snapshot = self.read()?;
        self.last = Some(stamp);
        Ok(Some(snapshot))
    }

    pub fn read(&self) -> Result<Snapshot, DirError> {
        let mut snapshot = Snapshot::default();
        let mut contents = Vec::new();
        for f in files(&self.root)? {
            let bytes = std::fs::read(&f).map_err(|source| DirError::Read {
                path: f.clone(),
                source,
            })?;
            let rel = f
                .strip_prefix(&self.root)
                .unwrap_or(&f)
                .to_string_lossy()
                .into_owned();
            contents.push((rel, bytes));
        }
        snapshot.digest = digest(contents.iter().map(|(n, b)| (n.as_str(), b.as_slice())));
        for (name, bytes) in &contents {
            let text = String::from_utf8_lossy(bytes);
            for r in parse_objects(name, &text) {
                match r {
                    Ok(o) => snapshot.objects.push(o),
                    Err(e @ (ParseError::Yaml { .. } | ParseError::Object { .. })) => {
                        snapshot.errors.push(e.to_string())
                    }
                }
            }
        }
        Ok(snapshot)
    }
}

/// Polls the directory every `every` and sends a relist of every kind when
/// it changed. Runs until the receiver is gone.
pub async fn run(
    mut source: DirSource,
    every: std::time::Duration,
    tx: tokio::sync::mpsc::Sender<Batch>,
) {
    let mut tick = tokio::time::interval(every);
    let mut troubled = false;
    loop {
        tick.tick().await;
        let batch = match source.poll() {
            Ok(None) => continue,
            Ok(Some(snapshot)) => {
                troubled = false;
                let mut batch: Batch = snapshot
                    .errors
                    .into_iter()
                    .map(SourceEvent::Rejected)
                    .collect();
                for kind in [Kind::Namespace, Kind::Pod, Kind::NetworkPolicy] {
                    let objects = snapshot
                        .objects
                        .iter()
                        .filter(|o| o.key().kind == kind)
                        .cloned()
                        .collect();
                    batch.push(SourceEvent::Reset { kind, objects });
                }
                batch.push(SourceEvent::Version(format!("{:016x}", snapshot.digest)));
                batch
            }
            // Report once per outage; the last good state stays in force.
            Err(e) if !troubled => {
                troubled = true;
                vec![SourceEvent::Trouble(e.to_string())]
            }
            Err(_) => continue,
        };
        if tx.send(batch).await.is_err() {
            return;
        }
    }
}
