//! The crate's error type. Every variant says what failed and with which input (path,
//! address, region), so a driver can log it as is.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Why the handshake, the memory file, the working-set file or the serving loop failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket or file system call failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "bind the uffd socket".
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Firecracker did not connect, or did not send its handshake, in time.
    #[error("timed out after {:.1}s waiting for {what} on {}", waited.as_secs_f64(), path.display())]
    HandshakeTimeout {
        what: &'static str,
        path: PathBuf,
        waited: Duration,
    },
    /// The handshake message arrived without a userfaultfd.
    #[error("the handshake on {} carried no userfaultfd (body: {body:?})", path.display())]
    NoUffd { path: PathBuf, body: String },
    /// Firecracker passed more than one descriptor: the guest_memfd ("secret-free")
    /// variant of the protocol, which this handler does not implement.
    #[error(
        "the handshake on {} carried {count} file descriptors (guest_memfd / secret-free \
         mode); only the classic single-userfaultfd handshake is supported",
        path.display()
    )]
    UnsupportedFds { path: PathBuf, count: usize },
    /// The handshake body is not the JSON array of guest region mappings.
    #[error("cannot parse the guest region mappings {body:?}: {source}")]
    Mappings {
        body: String,
        #[source]
        source: serde_json::Error,
    },
    /// A region mapping is inconsistent (with itself, the others or the memory file).
    #[error("guest region {index} ({mapping}) is invalid: {reason}")]
    InvalidMapping {
        index: usize,
        mapping: String,
        reason: String,
    },
    /// The memory file cannot serve the regions.
    #[error("memory file {}: {reason}", path.display())]
    MemoryFile { path: PathBuf, reason: String },
    /// The page source could not provide guest memory contents (for a lazily fetched
    /// memory file: a chunk missing, corrupt or unreachable). The handler stops rather than
    /// serve bytes the source could not vouch for.
    #[error("cannot read {len:#x} bytes at offset {offset:#x} of {}: {source}", path.display())]
    Source {
        path: PathBuf,
        offset: u64,
        len: u64,
        #[source]
        source: io::Error,
    },
    /// A userfaultfd ioctl failed in a way that cannot be retried.
    #[error("{op} of {len:#x} bytes at {addr:#x} failed: {source}")]
    Ioctl {
        op: &'static str,
        addr: u64,
        len: u64,
        #[source]
        source: io::Error,
    },
    /// Reading or polling the userfaultfd failed.
    #[error("cannot {op} the userfaultfd: {source}")]
    Uffd {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel reported a fault at an address no region covers: the mappings Firecracker
    /// sent do not describe the memory it registered.
    #[error("page fault at {addr:#x} lies outside every guest region")]
    FaultOutsideRegions { addr: u64 },
    /// A working-set file is unreadable, corrupt, or recorded for another memory file.
    #[error("working set {}: {reason}", path.display())]
    WorkingSet { path: PathBuf, reason: String },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
