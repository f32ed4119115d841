//! Where the handler gets guest memory contents from.

use std::fmt;
use std::io;
use std::path::Path;

/// A memory image the handler serves pages from: the mapped [`MemoryFile`] (also a layered
/// Diff chain), or a lazily fetched one (a remote image whose chunks are downloaded on first
/// read). The server asks for a run of pages right before copying it into the guest, so a
/// lazy source fetches exactly what faults and prefetch need.
///
/// [`MemoryFile`]: crate::MemoryFile
pub trait PageSource: Send + Sync + fmt::Debug {
    /// What to name the image in messages (its path, or its URL).
    fn path(&self) -> &Path;

    /// The image's size in bytes.
    fn len(&self) -> u64;

    /// Whether the image is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes `[offset, offset + len)` (in bounds: the handler checks the guest regions
    /// against [`len`](Self::len)), made available first if need be. An error makes the
    /// handler fail the VM: a source must never hand out bytes it cannot vouch for.
    /// Called concurrently by the serving thread and the prefetchers, possibly for the same
    /// range.
    fn bytes(&self, offset: u64, len: u64) -> io::Result<&[u8]>;

    /// Whether `[offset, offset + len)` is known to read as zeros without reading it (a
    /// hole). `false` when unknown: the handler then checks the bytes.
    fn is_hole(&self, offset: u64, len: u64) -> bool {
        let _ = (offset, len);
        false
    }
}
