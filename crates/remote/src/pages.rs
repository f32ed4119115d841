//! Guest memory fetched on first fault: a [`PageSource`] over one file of a remote entry,
//! for the userfaultfd handler (`bazel-diff-uffd`).
//!
//! A page run the handler asks for is served from a local *backing file* (sparse, unlinked,
//! mapped shared and read-only); the chunks covering it are fetched first if they are not
//! there yet, from the chunk cache or the object store, verified against their digest, and
//! written in. Each chunk is fetched at most once: a per-chunk once-cell makes a vCPU fault
//! and a prefetcher asking for the same chunk wait for one download. A chunk that cannot be
//! fetched or verified fails the read, and with it the handler and the VM; the failure is
//! remembered, so no later read serves around it. Chunks whose digest is that of zeros are
//! holes: never fetched, served as zero pages.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{Mutex, OnceLock};

use bazel_diff_uffd::PageSource;

use crate::cache::ChunkCache;
use crate::chunk::chunk_digest;
use crate::error::{io_err, RemoteError, Result};
use crate::manifest::{FileManifest, Manifest};
use crate::remote::{FetchStats, Remote};

/// An entry opened for a restore without its lazily served files
/// ([`SharedStore::open_lazily`](crate::SharedStore::open_lazily)): every other file is in
/// `dir`, the lazy ones are read with [`pages`](Self::pages).
#[derive(Debug)]
pub struct LazyEntry {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// What pulling the other files cost.
    pub stats: FetchStats,
    pub(crate) url: String,
    pub(crate) cache: ChunkCache,
}

impl LazyEntry {
    /// `file` of the entry, served on first read; its backing file goes in `scratch`. Opens
    /// its own connection to the object store (from the environment, as the CLI's).
    pub fn pages(&self, file: &str, scratch: &Path) -> Result<LazyPages> {
        let remote = Remote::open(&self.url)?;
        LazyPages::new(remote, self.cache.clone(), &self.manifest, file, scratch)
    }

    /// Downloads `file` into `dir` after all, for a restore that cannot serve it lazily.
    pub fn fetch(&self, file: &str) -> Result<FetchStats> {
        let others: Vec<&str> = self
            .manifest
            .files
            .keys()
            .map(String::as_str)
            .filter(|f| *f != file)
            .collect();
        Remote::open(&self.url)?.pull_except(&self.manifest, &self.cache, &self.dir, &others)
    }
}

/// One file of a remote entry served to a userfaultfd handler, chunk by chunk on first
/// read. See the module docs.
pub struct LazyPages {
    remote: Remote,
    cache: ChunkCache,
    /// The file's name in the manifest, and its URL for messages.
    name: String,
    url: PathBuf,
    file: FileManifest,
    /// Start of every chunk, plus the file size at the end.
    offsets: Vec<u64>,
    /// Chunks of all zeros: holes, never fetched.
    zero: Vec<bool>,
    /// Per chunk: set once it is in the backing file, or why it never will be.
    ready: Vec<OnceLock<std::result::Result<(), String>>>,
    backing: File,
    map: NonNull<u8>,
    stats: Mutex<FetchStats>,
}

// SAFETY: `map` is a read-only shared mapping owned by the value; concurrent `&[u8]` views
// of it are sound, and the bytes of a chunk are written (through the file, not the mapping)
// before its once-cell is set, which happens-before any view of them.
unsafe impl Send for LazyPages {}
// SAFETY: as above.
unsafe impl Sync for LazyPages {}

impl std::fmt::Debug for LazyPages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyPages")
            .field("url", &self.url)
            .field("size", &self.file.size)
            .finish()
    }
}

impl LazyPages {
    /// Serves `file` of `manifest` from `remote` through `cache`; the backing file is
    /// created (and unlinked at once) in `scratch`, and only fetched chunks take space in it.
    pub fn new(
        remote: Remote,
        cache: ChunkCache,
        manifest: &Manifest,
        file: &str,
        scratch: &Path,
    ) -> Result<LazyPages> {
        let url = PathBuf::from(format!(
            "{}/{}/{}/{file}",
            remote.url(),
            manifest.fingerprint,
            manifest.base_sha
        ));
        let Some(chunks) = manifest.files.get(file) else {
            return Err(RemoteError::NotFound {
                key: format!("{}/{}/{file}", manifest.fingerprint, manifest.base_sha),
                url: remote.url().to_owned(),
            });
        };
        let size = chunks.size;
        let len = usize::try_from(size)
            .ok()
            .filter(|&len| len > 0)
            .ok_or_else(|| RemoteError::BadManifest {
                key: format!("{}/{}", manifest.fingerprint, manifest.base_sha),
                reason: format!("{file} is {size} bytes: nothing to map"),
            })?;
        let backing = tempfile::tempfile_in(scratch)
            .map_err(io_err("create the lazy memory backing file in", scratch))?;
        backing
            .set_len(size)
            .map_err(io_err("size the lazy memory backing file in", scratch))?;
        // SAFETY: a fresh read-only shared mapping of a file we hold open, at a
        // kernel-chosen address; the file is never shrunk while mapped.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                backing.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io_err("map the lazy memory backing file in", scratch)(
                io::Error::last_os_error(),
            ));
        }
        let map = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| {
            io_err("map the lazy memory backing file in", scratch)(io::Error::other(
                "mmap returned a null mapping",
            ))
        })?;
        // Zero chunks are named by the digest of their size in zeros; memory images use one
        // chunk size, so this hashes a handful of buffers at most.
        let mut zero_digests: HashMap<u64, String> = HashMap::new();
        let zero = chunks
            .chunks
            .iter()
            .map(|c| {
                let digest = zero_digests
                    .entry(c.size)
                    .or_insert_with(|| chunk_digest(&vec![0; c.size as usize]));
                *digest == c.digest
            })
            .collect();
        Ok(LazyPages {
            remote,
            cache,
            name: file.to_owned(),
            url,
            offsets: chunks.offsets(),
            zero,
            ready: (0..chunks.chunks.len()).map(|_| OnceLock::new()).collect(),
            file: chunks.clone(),
            backing,
            map,
            stats: Mutex::default(),
        })
    }

    /// What the reads so far cost: `fetched`/`fetched_bytes` from the object store,
    /// `from_cache` from the local chunk cache, `logical_bytes` made available in all
    /// (zero chunks excluded).
    pub fn stats(&self) -> FetchStats {
        lock(&self.stats).clone()
    }

    /// The image's chunk size (its first chunk's; memory images use a fixed grid): a fault
    /// that populates this much waits for one download.
    pub fn chunk_bytes(&self) -> u64 {
        self.file.chunks.first().map_or(0, |c| c.size)
    }

    /// The chunks covering `[offset, end)` (non-empty, in bounds).
    fn chunk_range(&self, offset: u64, end: u64) -> std::ops::Range<usize> {
        let first = self.offsets.partition_point(|&start| start <= offset) - 1;
        let last = self.offsets.partition_point(|&start| start < end) - 1;
        first..last + 1
    }

    /// Makes chunk `index` readable through the mapping (fetching it once).
    fn ensure(&self, index: usize) -> io::Result<()> {
        if self.zero[index] {
            return Ok(()); // the backing file is sparse: a hole reads as zeros
        }
        self.ready[index]
            .get_or_init(|| self.fetch(index).map_err(|e| e.to_string()))
            .clone()
            .map_err(io::Error::other)
    }

    fn fetch(&self, index: usize) -> Result<()> {
        let chunk = &self.file.chunks[index];
        let data =
            self.remote.block_on(
                self.remote
                    .chunk(&self.cache, &self.name, chunk, &self.stats),
            )?;
        self.backing
            .write_all_at(&data, self.offsets[index])
            .map_err(io_err(
                "write a fetched chunk to the backing file of",
                &self.url,
            ))?;
        lock(&self.stats).logical_bytes += chunk.size;
        Ok(())
    }
}

impl PageSource for LazyPages {
    fn path(&self) -> &Path {
        &self.url
    }

    fn len(&self) -> u64 {
        self.file.size
    }

    fn bytes(&self, offset: u64, len: u64) -> io::Result<&[u8]> {
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= self.file.size)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("range beyond the {}-byte file", self.file.size),
                )
            })?;
        if len > 0 {
            for index in self.chunk_range(offset, end) {
                self.ensure(index)?;
            }
        }
        // SAFETY: in bounds of the live mapping (checked above), and every chunk under it is
        // in the backing file (a page cache shared with the mapping) or a hole.
        Ok(unsafe {
            std::slice::from_raw_parts(self.map.as_ptr().add(offset as usize), len as usize)
        })
    }

    fn is_hole(&self, offset: u64, len: u64) -> bool {
        let Some(end) = offset
            .checked_add(len)
            .filter(|&e| e <= self.file.size && len > 0)
        else {
            return false;
        };
        self.chunk_range(offset, end).all(|index| self.zero[index])
    }
}

impl Drop for LazyPages {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `new`.
        unsafe {
            libc::munmap(self.map.as_ptr().cast(), self.file.size as usize);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
