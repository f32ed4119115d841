//! The store's error type. Every variant names the path (or key) and the operation.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::key::{EntryKey, InvalidKey};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem call failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "rename the staging directory into place".
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A fingerprint or base SHA was rejected.
    #[error(transparent)]
    InvalidKey(#[from] InvalidKey),
    /// A lock was not granted within the store's lock timeout.
    #[error("timed out after {:.1}s waiting for the {mode} lock {}", waited.as_secs_f64(), path.display())]
    LockTimeout {
        path: PathBuf,
        mode: &'static str,
        waited: Duration,
    },
    /// No published entry has this key.
    #[error("no snapshot entry {key} in store {}", store.display())]
    NotFound { key: EntryKey, store: PathBuf },
    /// The entry exists but cannot be used: its metadata is missing, unparsable or does not
    /// describe it.
    #[error("snapshot entry {} is corrupt: {reason}", path.display())]
    Corrupt {
        key: EntryKey,
        path: PathBuf,
        reason: String,
    },
    /// The staging directory holds something an entry must not contain (a symlink, a
    /// device, a socket...). Entries are self-contained trees of regular files.
    #[error("cannot publish {}: it is a {kind}; entries may hold only regular files and directories", path.display())]
    UnsupportedFileType { path: PathBuf, kind: &'static str },
    /// A name in the staging directory is not UTF-8, so it cannot be listed in metadata.
    #[error("cannot publish {}: the name is not valid UTF-8", path.display())]
    NonUtf8Name { path: PathBuf },
    /// The staging directory contains the file the store itself writes.
    #[error("cannot publish {}: this name is reserved for the store's own metadata", path.display())]
    ReservedName { path: PathBuf },
    /// A file changed, appeared or disappeared while it was being digested and frozen:
    /// the caller did not finish writing before publishing.
    #[error("cannot publish {}: it was modified during publication; finish writing every file before publishing", path.display())]
    ModifiedDuringPublish { path: PathBuf },
    /// The caller's [`MetadataInput`](crate::MetadataInput) is unusable.
    #[error("invalid snapshot metadata: {reason}")]
    InvalidMetadata { reason: String },
    /// The metadata could not be serialized.
    #[error("cannot serialize {}: {source}", path.display())]
    Serialize {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Shorthand for results of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// `map_err` adapter: `.map_err(io_err("read", &path))`.
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.into();
    move |source| StoreError::Io { op, path, source }
}
