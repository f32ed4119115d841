//! The remote store's error type: every variant names the object, file or URL involved.

use std::io;
use std::path::PathBuf;

/// Why a remote store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// `--store` is not a URL this build can open.
    #[error("invalid store URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// The object store client refused its configuration.
    #[error("cannot open the object store {url}: {source}")]
    Open {
        url: String,
        #[source]
        source: Box<object_store::Error>,
    },
    /// A request to the object store failed (after the client's retries).
    #[error("cannot {op} {key} in {url}: {source}")]
    Request {
        op: &'static str,
        key: String,
        url: String,
        // Boxed: object_store's error is large and every result here carries this type.
        #[source]
        source: Box<object_store::Error>,
    },
    /// A local file operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A manifest names a chunk the store does not have.
    #[error("chunk {digest} (of {file}) is missing from {url}")]
    MissingChunk {
        digest: String,
        file: String,
        url: String,
    },
    /// A chunk's content does not match its name or its recorded length.
    #[error("chunk {digest} (of {file}) is corrupt: {reason}")]
    BadChunk {
        digest: String,
        file: String,
        reason: String,
    },
    /// A manifest cannot be parsed or does not describe its key.
    #[error("manifest {key} is unusable: {reason}")]
    BadManifest { key: String, reason: String },
    /// An entry requires another (a Diff snapshot its parent) that is missing, unusable or
    /// not the one it was built on.
    #[error("entry {key} requires {required}, which is unusable: {reason}")]
    UnmetRequirement {
        key: String,
        required: String,
        reason: String,
    },
    /// No manifest has this key.
    #[error("no entry {key} in {url}")]
    NotFound { key: String, url: String },
    /// A read asked for bytes past the end of a file.
    #[error("cannot read {len} bytes at {offset} of {file}: the file has {size} bytes")]
    OutOfRange {
        file: String,
        offset: u64,
        len: u64,
        size: u64,
    },
    /// A record took longer than [`RECORD_WINDOW`](crate::RECORD_WINDOW) to upload its
    /// chunks; publishing now could race a gc.
    #[error("the upload of {key} took {secs} s, longer than the record window; not publishing (run record again)")]
    RecordWindowExceeded { key: String, secs: u64 },
    /// The local copy of an entry must be replaced but a consume on this host is using it.
    #[error("the local copy {} of {key} is stale and in use; try again when its consume is done", path.display())]
    LocalCopyInUse { key: String, path: PathBuf },
    /// The local snapshot store failed (materializing an entry, reading one to push).
    #[error(transparent)]
    Store(#[from] bazel_diff_store::StoreError),
    /// The async runtime could not be started.
    #[error("cannot start the I/O runtime: {0}")]
    Runtime(#[source] io::Error),
}

impl RemoteError {
    /// Whether the entry itself is broken (missing/corrupt chunk, bad manifest) rather than
    /// the store being unreachable: consume maps both to "no usable snapshot", verify only
    /// reports the former as corruption.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            RemoteError::MissingChunk { .. }
                | RemoteError::BadChunk { .. }
                | RemoteError::BadManifest { .. }
                | RemoteError::UnmetRequirement { .. }
        )
    }
}

/// Shorthand for results of remote store operations.
pub type Result<T, E = RemoteError> = std::result::Result<T, E>;

/// `map_err` adapter for local I/O: `.map_err(io_err("read", &path))`.
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> RemoteError {
    let path = path.into();
    move |source| RemoteError::Io { op, path, source }
}
