//! Standalone mode: a directory of YAML files is the cluster.
//!
//! The directory is polled (file names, sizes and modification times);
//! changed files are read and parsed again, and the whole set is handed
//! over as a relist. Polling needs no inotify limits and behaves the
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

pub struct DirSource {
    root: PathBuf,
    cache: BTreeMap<PathBuf, CachedFile>,
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

/// One file as last read: its stamp, and what it held.
struct CachedFile {
    stamp: (u64, Option<SystemTime>),
    rel: String,
    bytes: Vec<u8>,
    objects: Vec<Object>,
    errors: Vec<String>,
}

impl DirSource {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            cache: BTreeMap::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A new snapshot if the directory changed since the last call (always
    /// on the first). Only files whose size or modification time changed are
    /// read and parsed again.
    pub fn poll(&mut self) -> Result<Option<Snapshot>, DirError> {
        let mut changed = false;
        let present = files(&self.root)?;
        let before = self.cache.len();
        self.cache.retain(|path, _| present.contains(path));
        changed |= self.cache.len() != before;
        for f in present {
            let meta = std::fs::metadata(&f).map_err(|source| DirError::Read {
                path: f.clone(),
                source,
            })?;
            let stamp = (meta.len(), meta.modified().ok());
            if self.cache.get(&f).is_some_and(|c| c.stamp == stamp) {
                continue;
            }
            let bytes = std::fs::read(&f).map_err(|source| DirError::Read {
                path: f.clone(),
                source,
            })?;
            let rel = f
                .strip_prefix(&self.root)
                .unwrap_or(&f)
                .to_string_lossy()
                .into_owned();
            if self.cache.get(&f).is_some_and(|c| c.bytes == bytes) {
                // Touched, not changed.
                if let Some(c) = self.cache.get_mut(&f) {
                    c.stamp = stamp;
                }
                continue;
            }
            let (mut objects, mut errors) = (Vec::new(), Vec::new());
            for r in parse_objects(&rel, &String::from_utf8_lossy(&bytes)) {
                match r {
                    Ok(o) => objects.push(o),
                    Err(e @ (ParseError::Yaml { .. } | ParseError::Object { .. })) => {
                        errors.push(e.to_string())
                    }
                }
            }
            self.cache.insert(
                f,
                CachedFile {
                    stamp,
                    rel,
                    bytes,
                    objects,
                    errors,
                },
            );
            changed = true;
        }
        if !changed {
            return Ok(None);
        }
        let mut snapshot = Snapshot {
            digest: digest(
                self.cache
                    .values()
                    .map(|c| (c.rel.as_str(), c.bytes.as_slice())),
            ),
            ..Default::default()
        };
        for c in self.cache.values() {
            snapshot.objects.extend(c.objects.iter().cloned());
            snapshot.errors.extend(c.errors.iter().cloned());
        }
        Ok(Some(snapshot))
    }

    /// Everything in the directory now (no cache).
    pub fn read(&self) -> Result<Snapshot, DirError> {
        Ok(DirSource::new(&self.root).poll()?.unwrap_or_default())
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

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n";

    #[test]
    fn changes_are_noticed_errors_reported_and_recovered_from() {
        let root = std::env::temp_dir().join(format!("palisade-dir-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("dir");
        std::fs::write(root.join("a.yaml"), NS).expect("write");
        let mut src = DirSource::new(&root);
        let first = src.poll().expect("readable").expect("first poll delivers");
        assert_eq!(first.objects.len(), 1);
        assert!(src.poll().expect("readable").is_none(), "nothing changed");

        // The directory disappears (a ConfigMap volume being swapped, a bad
        // mount): an error, and the caller keeps its last good state.
        let aside = root.with_extension("aside");
        std::fs::rename(&root, &aside).expect("rename");
        assert!(src.poll().is_err());

        // It comes back, changed: a fresh snapshot with both files.
        std::fs::rename(&aside, &root).expect("rename back");
        std::fs::write(root.join("b.yaml"), NS.replace("name: x", "name: y")).expect("write");
        let back = src.poll().expect("readable").expect("changed");
        assert_eq!(back.objects.len(), 2);
        assert_ne!(back.digest, first.digest);
        assert_eq!(
            back.digest,
            src.read().expect("read").digest,
            "poll and read agree"
        );

        // A file with a syntax error is reported, the other files still count.
        std::fs::write(root.join("b.yaml"), "kind: [unclosed").expect("write");
        let bad = src.poll().expect("readable").expect("changed");
        assert_eq!(bad.objects.len(), 1);
        assert_eq!(bad.errors.len(), 1, "{:?}", bad.errors);
        let _ = std::fs::remove_dir_all(&root);
    }
}
