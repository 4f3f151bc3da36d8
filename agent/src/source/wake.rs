//! Wake-ups for the directory source: inotify (through `notify`) says when
//! something in the directory changed, so a change is read at once instead
//! of at the next poll. Polling stays as the safety net: a filesystem
//! without inotify, a full inotify watch limit, or a directory replaced
//! wholesale (its watch dies with it) only fall back to the poll interval.

use std::path::Path;

use notify::{
    Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher,
    event::{AccessKind, AccessMode, ModifyKind},
};
use tokio::sync::mpsc;

/// A live watch and the wake-ups it sends; dropping it ends the watch.
pub struct Wake {
    _watcher: RecommendedWatcher,
    rx: mpsc::Receiver<()>,
}

/// Whether an event means a change is complete and worth reading. Not raw
/// writes (the file may be half written: its close follows), and not opens
/// or read-closes, which the source's own reading causes: waking on those
/// would make it poll itself forever.
pub fn finished_change(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Create(_)
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    )
}

impl Wake {
    pub fn watch(root: &Path) -> notify::Result<Self> {
        // One pending wake-up is enough: a poll reads everything that changed.
        let (tx, rx) = mpsc::channel(1);
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<Event>| {
            if res.is_ok_and(|ev| finished_change(&ev.kind)) {
                let _ = tx.try_send(());
            }
        })?;
        watcher.watch(root, RecursiveMode::Recursive)?;
        Ok(Self {
            _watcher: watcher,
            rx,
        })
    }

    /// Waits for the next wake-up; never returns once the watch has ended.
    pub async fn changed(&mut self) {
        if self.rx.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, DataChange, RemoveKind, RenameMode};

    use super::*;

    #[test]
    fn only_finished_changes_wake_the_source() {
        let wakes = [
            EventKind::Create(CreateKind::File),
            EventKind::Remove(RemoveKind::File),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
        ];
        let quiet = [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
        ];
        for k in wakes {
            assert!(finished_change(&k), "{k:?}");
        }
        for k in quiet {
            assert!(!finished_change(&k), "{k:?}");
        }
    }
}
