//! Standalone mode: a directory of YAML files is the cluster.
//!
//! The directory is scanned (file names, sizes and modification times);
//! changed files are read and parsed again, and what changed in them is
//! handed over as applies and deletes (the first delivery, and the first
//! after an error, as a relist). A scan runs as soon as inotify reports a finished
//! change ([`super::wake`]) and at every poll interval besides: polling
//! needs no inotify limits and behaves the same on every filesystem,
//! including ConfigMap volumes' symlink swaps.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use tracing::{debug, warn};

use super::{
    Batch, SourceEvent,
    wake::Wake,
    yaml::{ParseError, parse_objects},
};
use crate::index::{Kind, Object, ObjectKey};

/// What changed since the last poll. Objects are compared with what the
/// last poll delivered, so editing one file costs the objects it changed,
/// not a relist of the whole directory.
#[derive(Debug, Default)]
pub struct Update {
    /// Objects that are new or differ from their last delivered version.
    pub applied: Vec<Object>,
    /// Objects that no file holds any more.
    pub deleted: Vec<ObjectKey>,
    /// Every file's errors (not only the changed files').
    pub errors: Vec<Arc<ParseError>>,
    pub digest: u64,
}

/// Everything read from the directory at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub objects: Vec<Object>,
    pub errors: Vec<Arc<ParseError>>,
    /// FNV-1a over (relative path, contents) of every file, in name order:
    /// tells which version of the directory a programmed state came from.
    pub digest: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("reading source directory {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub struct DirSource {
    root: PathBuf,
    cache: BTreeMap<PathBuf, CachedFile>,
    /// Which file each delivered object came from: of two files naming one
    /// object, the later in name order wins, as in a relist.
    origin: BTreeMap<ObjectKey, PathBuf>,
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
    objects: Vec<(ObjectKey, Object)>,
    errors: Vec<Arc<ParseError>>,
}

impl DirSource {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            cache: BTreeMap::new(),
            origin: BTreeMap::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What changed since the last call (on the first, everything), or
    /// `None` if nothing did. Only files whose size or modification time
    /// changed are read and parsed again.
    pub fn poll(&mut self) -> Result<Option<Update>, DirError> {
        let present = files(&self.root)?;
        let before = self.cache.len();
        self.cache.retain(|path, _| present.contains(path));
        let mut changed = self.cache.len() != before;
        // Objects of re-read files that differ from their previous version.
        let mut dirty: BTreeSet<ObjectKey> = BTreeSet::new();
        for f in present {
            changed |= self.reread(f, &mut dirty)?;
        }
        if !changed {
            return Ok(None);
        }
        Ok(Some(self.update(&dirty)))
    }

    /// Reads `f` again if its size or modification time changed; whether
    /// its content did (the objects that differ go into `dirty`).
    fn reread(&mut self, f: PathBuf, dirty: &mut BTreeSet<ObjectKey>) -> Result<bool, DirError> {
        let meta = std::fs::metadata(&f).map_err(|source| DirError::Read {
            path: f.clone(),
            source,
        })?;
        let stamp = (meta.len(), meta.modified().ok());
        if self.cache.get(&f).is_some_and(|c| c.stamp == stamp) {
            return Ok(false);
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
            return Ok(false);
        }
        let (mut objects, mut errors) = (Vec::new(), Vec::new());
        for r in parse_objects(&rel, &String::from_utf8_lossy(&bytes)) {
            match r {
                Ok(o) => objects.push((o.key(), o)),
                Err(e) => errors.push(Arc::new(e)),
            }
        }
        let previous: BTreeMap<&ObjectKey, &Object> = self
            .cache
            .get(&f)
            .map(|c| c.objects.iter().map(|(k, o)| (k, o)).collect())
            .unwrap_or_default();
        dirty.extend(
            objects
                .iter()
                .filter(|(k, o)| previous.get(k) != Some(&o))
                .map(|(k, _)| k.clone()),
        );
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
        Ok(true)
    }

    /// From the last update to what the cache holds now; `dirty`: objects
    /// whose content changed.
    fn update(&mut self, dirty: &BTreeSet<ObjectKey>) -> Update {
        let mut origin: BTreeMap<&ObjectKey, (&PathBuf, &Object)> = BTreeMap::new();
        for (path, c) in &self.cache {
            for (k, o) in &c.objects {
                origin.insert(k, (path, o));
            }
        }
        let mut update = Update {
            digest: self.digest(),
            errors: self.cache.values().flat_map(|c| c.errors.clone()).collect(),
            deleted: self
                .origin
                .keys()
                .filter(|k| !origin.contains_key(k))
                .cloned()
                .collect(),
            applied: Vec::new(),
        };
        for (k, (path, o)) in &origin {
            if dirty.contains(*k) || self.origin.get(*k) != Some(*path) {
                update.applied.push((*o).clone());
            }
        }
        self.origin = origin
            .into_iter()
            .map(|(k, (path, _))| (k.clone(), path.clone()))
            .collect();
        update
    }

    fn digest(&self) -> u64 {
        digest(
            self.cache
                .values()
                .map(|c| (c.rel.as_str(), c.bytes.as_slice())),
        )
    }

    /// Everything the last poll saw.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot {
            digest: self.digest(),
            ..Default::default()
        };
        for c in self.cache.values() {
            snapshot
                .objects
                .extend(c.objects.iter().map(|(_, o)| o.clone()));
            snapshot.errors.extend(c.errors.iter().cloned());
        }
        snapshot
    }

    /// Everything in the directory now (no cache).
    pub fn read(&self) -> Result<Snapshot, DirError> {
        let mut fresh = DirSource::new(&self.root);
        fresh.poll()?;
        Ok(fresh.snapshot())
    }
}

/// Scans the directory when inotify reports a change and every `every`,
/// and sends what changed: a relist of every kind first (and after any
/// error, when what was delivered is in doubt), then applies and deletes.
/// Runs until the receiver is gone.
pub async fn run(
    mut source: DirSource,
    every: std::time::Duration,
    tx: tokio::sync::mpsc::Sender<Batch>,
) {
    let mut tick = tokio::time::interval(every);
    let mut wake = watch(&source.root);
    let mut relist = true;
    let mut troubled = false;
    loop {
        match wake.as_mut() {
            Some(w) => tokio::select! {
                _ = tick.tick() => {}
                () = w.changed() => {}
            },
            None => {
                tick.tick().await;
            }
        }
        let scan = std::time::Instant::now();
        let polled = source.poll();
        debug!(
            us = scan.elapsed().as_micros() as u64,
            changed = matches!(polled, Ok(Some(_))),
            "scanned"
        );
        let batch = match polled {
            Ok(None) => continue,
            Ok(Some(update)) => {
                if std::mem::take(&mut troubled) {
                    // The directory may have been replaced: its watch with it.
                    wake = watch(&source.root);
                }
                let mut batch: Batch = update
                    .errors
                    .into_iter()
                    .map(SourceEvent::Rejected)
                    .collect();
                if std::mem::take(&mut relist) {
                    // Every kind gets its relist, even an empty one.
                    let mut by_kind: BTreeMap<Kind, Vec<Object>> =
                        Kind::ALL.map(|k| (k, Vec::new())).into();
                    for o in source.snapshot().objects {
                        by_kind.entry(o.key().kind).or_default().push(o);
                    }
                    batch.extend(
                        by_kind
                            .into_iter()
                            .map(|(kind, objects)| SourceEvent::Reset { kind, objects }),
                    );
                } else {
                    batch.extend(update.deleted.into_iter().map(SourceEvent::Delete));
                    batch.extend(update.applied.into_iter().map(SourceEvent::Apply));
                }
                batch.push(SourceEvent::Version(format!("{:016x}", update.digest)));
                batch
            }
            // Report once per outage; the last good state stays in force.
            Err(e) => {
                relist = true;
                if std::mem::replace(&mut troubled, true) {
                    continue;
                }
                vec![SourceEvent::Trouble(e.into())]
            }
        };
        if tx.send(batch).await.is_err() {
            return;
        }
    }
}

fn watch(root: &Path) -> Option<Wake> {
    Wake::watch(root)
        .inspect_err(|e| {
            warn!(dir = %root.display(), error = %e, "no inotify watch; changes are seen at the poll interval")
        })
        .ok()
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
        assert_eq!(first.applied.len(), 1);
        assert!(src.poll().expect("readable").is_none(), "nothing changed");

        // The directory disappears (a ConfigMap volume being swapped, a bad
        // mount): an error, and the caller keeps its last good state.
        let aside = root.with_extension("aside");
        std::fs::rename(&root, &aside).expect("rename");
        assert!(src.poll().is_err());

        // It comes back, changed: only the new file's object is delivered.
        std::fs::rename(&aside, &root).expect("rename back");
        std::fs::write(root.join("b.yaml"), NS.replace("name: x", "name: y")).expect("write");
        let back = src.poll().expect("readable").expect("changed");
        assert_eq!(back.applied.len(), 1);
        assert_eq!(src.snapshot().objects.len(), 2);
        assert_ne!(back.digest, first.digest);
        assert_eq!(
            back.digest,
            src.read().expect("read").digest,
            "poll and read agree"
        );

        // A file with a syntax error is reported, the other files still count.
        std::fs::write(root.join("b.yaml"), "kind: [unclosed").expect("write");
        let bad = src.poll().expect("readable").expect("changed");
        assert_eq!(src.snapshot().objects.len(), 1);
        assert_eq!(bad.errors.len(), 1, "{:?}", bad.errors);
        let _ = std::fs::remove_dir_all(&root);
    }

    fn pod(name: &str, app: &str) -> String {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: {app}}}}}\n\
             spec: {{nodeName: n1, containers: [{{name: c, image: i}}]}}\nstatus: {{podIP: 10.0.0.1}}\n"
        )
    }

    /// Applying each poll's update to an index gives what a relist of the
    /// whole directory gives, and an edit delivers only what it changed.
    #[test]
    fn updates_amount_to_a_relist() {
        let root = std::env::temp_dir().join(format!("palisade-dir-upd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("dir");
        let many: String = (0..50).map(|i| pod(&format!("p{i}"), "a")).collect();
        let mut src = DirSource::new(&root);
        let mut index = crate::index::Index::default();
        let mut step = |name: &str, files: &[(&str, Option<String>)]| -> Update {
            for (f, content) in files {
                match content {
                    Some(c) => std::fs::write(root.join(f), c).expect("write"),
                    None => std::fs::remove_file(root.join(f)).expect("remove"),
                }
            }
            let update = src.poll().expect("readable").expect("changed");
            for k in &update.deleted {
                index.delete(k);
            }
            for o in &update.applied {
                let _ = index.apply(o);
            }
            let mut relisted = crate::index::Index::default();
            for kind in Kind::ALL {
                let objects: Vec<Object> = src
                    .read()
                    .expect("read")
                    .objects
                    .into_iter()
                    .filter(|o| o.key().kind == kind)
                    .collect();
                relisted.reset(kind, &objects);
            }
            assert_eq!(index.model(), relisted.model(), "{name}");
            update
        };
        let first = step("start", &[("a.yaml", Some(format!("{NS}{many}")))]);
        assert_eq!(first.applied.len(), 51);
        let edit = step(
            "one pod relabelled in a file of 51 objects",
            &[(
                "a.yaml",
                Some(format!("{NS}{many}").replace(
                    "name: p7, namespace: x, labels: {app: a}",
                    "name: p7, namespace: x, labels: {app: b}",
                )),
            )],
        );
        assert_eq!((edit.applied.len(), edit.deleted.len()), (1, 0));
        // The same pod in a later file wins over the earlier one.
        let dup = step("p8 also in b.yaml", &[("b.yaml", Some(pod("p8", "c")))]);
        assert_eq!((dup.applied.len(), dup.deleted.len()), (1, 0));
        let back = step("b.yaml removed: a.yaml's p8 again", &[("b.yaml", None)]);
        assert_eq!((back.applied.len(), back.deleted.len()), (1, 0));
        let moved = step(
            "p9 moves from a.yaml to c.yaml, unchanged",
            &[
                (
                    "a.yaml",
                    Some(format!("{NS}{many}").replace(&pod("p9", "a"), "")),
                ),
                ("c.yaml", Some(pod("p9", "a"))),
            ],
        );
        assert_eq!(moved.deleted.len(), 0, "p9 never vanished");
        let gone = step("a.yaml removed", &[("a.yaml", None)]);
        assert_eq!((gone.applied.len(), gone.deleted.len()), (0, 50));
        let _ = std::fs::remove_dir_all(&root);
    }

    async fn next(rx: &mut tokio::sync::mpsc::Receiver<Batch>) -> Batch {
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .expect("a batch within 5 s")
            .expect("source running")
    }

    /// With a poll interval of an hour, only the inotify wake-up can deliver
    /// a change; an atomic replace (write aside, rename) and an in-place
    /// write are both seen, and nothing is sent while nothing changes.
    #[tokio::test]
    async fn a_change_is_read_when_inotify_reports_it() {
        use std::time::Duration;

        let root = std::env::temp_dir().join(format!("palisade-wake-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("dir");
        std::fs::write(root.join("a.yaml"), NS).expect("write");
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let task = tokio::spawn(run(DirSource::new(&root), Duration::from_secs(3600), tx));
        // Objects delivered: a relist's, or single applies.
        let objects = |b: &Batch| {
            b.iter()
                .map(|e| match e {
                    SourceEvent::Reset { objects, .. } => objects.len(),
                    SourceEvent::Apply(_) => 1,
                    _ => 0,
                })
                .sum::<usize>()
        };
        assert_eq!(objects(&next(&mut rx).await), 1, "the first scan relists");

        let tmp = root.join(".b.yaml.tmp");
        std::fs::write(&tmp, NS.replace("name: x", "name: y")).expect("write");
        std::fs::rename(&tmp, root.join("b.yaml")).expect("rename");
        assert_eq!(objects(&next(&mut rx).await), 1, "renamed into place");

        std::fs::write(root.join("b.yaml"), NS.replace("name: x", "name: z")).expect("write");
        let batch = next(&mut rx).await;
        assert_eq!(objects(&batch), 1, "written in place");

        assert!(
            tokio::time::timeout(Duration::from_millis(300), rx.recv())
                .await
                .is_err(),
            "no batch without a change"
        );
        task.abort();
        let _ = std::fs::remove_dir_all(&root);
    }
}
