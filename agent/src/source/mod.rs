//! Where objects come from: a directory of YAML (standalone mode) or the
//! API server. Sources only produce typed events; the daemon applies them to
//! the index. Events come in batches that are applied together, so no sync
//! ever sees half of a relist.

pub mod dir;
#[cfg(feature = "test-support")]
pub mod fake_apiserver;
pub mod kube;
pub mod wake;
pub mod yaml;

use std::sync::Arc;

use crate::index::{Kind, Object, ObjectKey};

/// Why a source cannot deliver right now.
#[derive(Debug, thiserror::Error)]
pub enum Trouble {
    #[error("{kind} watch")]
    Watch {
        kind: Kind,
        #[source]
        source: ::kube::runtime::watcher::Error,
    },
    #[error(transparent)]
    Dir(#[from] dir::DirError),
}

#[derive(Debug)]
pub enum SourceEvent {
    /// Everything of one kind (initial list or relist): what is missing is deleted.
    Reset {
        kind: Kind,
        objects: Vec<Object>,
    },
    Apply(Object),
    Delete(ObjectKey),
    /// Input the source could not turn into an object, with why (named).
    Rejected(Arc<yaml::ParseError>),
    /// The version of the source now delivered (directory digest).
    Version(String),
    /// The source is in trouble (API unreachable, directory unreadable);
    /// enforcement continues unchanged and the source retries.
    Trouble(Trouble),
}

pub type Batch = Vec<SourceEvent>;
