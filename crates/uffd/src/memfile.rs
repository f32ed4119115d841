//! The snapshot memory file, mapped read-only, with its holes found once at open.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use crate::error::{Error, Result};
use crate::source::PageSource;

/// A guest memory file (Firecracker's `mem_file_path` output) mapped read-only. Several
/// handlers (several restores of one snapshot) can share one through an `Arc`.
///
/// The file must not change while mapped: like Firecracker's `File` backend, a handler
/// serves whatever the mapping shows at fault time.
#[derive(Debug)]
pub struct MemoryFile {
    path: PathBuf,
    _file: File,
    ptr: NonNull<u8>,
    len: u64,
    /// Sorted, disjoint `[start, end)` byte ranges holding data; everything else is a hole
    /// (reads as zeros). From `SEEK_DATA`/`SEEK_HOLE`, so cheap even for a huge sparse file.
    data: Vec<(u64, u64)>,
}

// SAFETY: the mapping is read-only and lives as long as the value; sharing `&[u8]` views of
// it between threads is sound.
unsafe impl Send for MemoryFile {}
// SAFETY: as above.
unsafe impl Sync for MemoryFile {}

impl MemoryFile {
    /// Opens and maps `path` read-only and finds its holes.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io("open the memory file", &path, e))?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("stat the memory file", &path, e))?
            .len();
        if len == 0 {
            return Err(Error::MemoryFile {
                path,
                reason: "the file is empty".into(),
            });
        }
        // SAFETY: a fresh read-only private mapping of a file we hold open; the kernel
        // chooses the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_NORESERVE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::io(
                "mmap the memory file",
                &path,
                std::io::Error::last_os_error(),
            ));
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| Error::MemoryFile {
            path: path.clone(),
            reason: "mmap returned a null mapping".into(),
        })?;
        // No SEEK_DATA support: treat the whole file as data.
        let data = data_extents(&file, len).unwrap_or_else(|| vec![(0, len)]);
        Ok(Self {
            path,
            _file: file,
            ptr,
            len,
            data,
        })
    }

    /// The guest memory of a Diff snapshot chain without copying it: `base` (a Full
    /// snapshot's memory file) mapped read-only, and over it the data extents of each of
    /// `diffs` (Diff snapshots' sparse memory files of the same length, oldest first) mapped
    /// at the same offsets with `MAP_FIXED`. A page a diff holds shows the diff; a hole in a
    /// diff shows the layer below, as Firecracker's `snapshot-editor edit-memory rebase`
    /// would merge them. Fails when a diff's length differs, its extents are not
    /// page-aligned, the filesystem cannot tell holes from data, or the diffs have more than
    /// [`MAX_LAYER_EXTENTS`] extents (then merge them into one file instead).
    pub fn layered(base: impl AsRef<Path>, diffs: &[impl AsRef<Path>]) -> Result<Self> {
        let mut mem = Self::open(base)?;
        let page = page_size();
        let mut total = 0usize;
        let mut all = std::mem::take(&mut mem.data);
        for diff in diffs {
            let path = diff.as_ref().to_path_buf();
            let bad = |reason: String| Error::MemoryFile {
                path: path.clone(),
                reason,
            };
            let file =
                File::open(&path).map_err(|e| Error::io("open the diff memory file", &path, e))?;
            let len = file
                .metadata()
                .map_err(|e| Error::io("stat the diff memory file", &path, e))?
                .len();
            if len != mem.len {
                return Err(bad(format!(
                    "the diff is {len} bytes, the memory it applies to is {}",
                    mem.len
                )));
            }
            let extents = data_extents(&file, len).ok_or_else(|| {
                bad("the filesystem cannot tell the diff's holes (SEEK_DATA)".into())
            })?;
            total += extents.len();
            if total > MAX_LAYER_EXTENTS {
                return Err(bad(format!(
                    "the diffs have more than {MAX_LAYER_EXTENTS} data extents: too many \
                     mappings; merge the chain into one file instead"
                )));
            }
            for &(start, end) in &extents {
                let end = end.next_multiple_of(page).min(len);
                if start % page != 0 {
                    return Err(bad(format!(
                        "data extent [{start}, {end}) does not start on a page boundary"
                    )));
                }
                // SAFETY: replaces pages [start, end) of our own live mapping (in bounds: both
                // files are `len` bytes) with a read-only private mapping of the same range of
                // the diff; no reference into that range is held while we do.
                let ptr = unsafe {
                    libc::mmap(
                        mem.ptr.as_ptr().add(start as usize).cast(),
                        (end - start) as usize,
                        libc::PROT_READ,
                        libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                        file.as_raw_fd(),
                        start as libc::off_t,
                    )
                };
                if ptr == libc::MAP_FAILED {
                    return Err(Error::io(
                        "mmap a diff extent over the base memory",
                        &path,
                        std::io::Error::last_os_error(),
                    ));
                }
                all.push((start, end));
            }
            mem.path = path;
        }
        mem.data = merge_extents(all);
        Ok(mem)
    }

    /// The file's path (the newest layer's for [`MemoryFile::layered`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty (never true for an opened `MemoryFile`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of the file holding data (not holes).
    pub fn data_bytes(&self) -> u64 {
        self.data.iter().map(|(s, e)| e - s).sum()
    }

    /// The bytes `[offset, offset + len)`. Panics when out of bounds.
    pub fn bytes(&self, offset: u64, len: u64) -> &[u8] {
        assert!(offset.checked_add(len).is_some_and(|end| end <= self.len));
        // SAFETY: in bounds of a live read-only mapping.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(offset as usize), len as usize) }
    }

    /// Whether `[offset, offset + len)` lies entirely in a hole.
    pub fn is_hole(&self, offset: u64, len: u64) -> bool {
        let end = offset + len;
        // First extent ending after `offset`.
        let i = self.data.partition_point(|&(_, e)| e <= offset);
        match self.data.get(i) {
            Some(&(s, _)) => s >= end,
            None => true,
        }
    }

    /// Whether `[offset, offset + len)` is a hole or reads as all zeros.
    pub fn is_zero(&self, offset: u64, len: u64) -> bool {
        self.is_hole(offset, len) || all_zero(self.bytes(offset, len))
    }
}

impl PageSource for MemoryFile {
    fn path(&self) -> &Path {
        &self.path
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn bytes(&self, offset: u64, len: u64) -> io::Result<&[u8]> {
        if offset.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("range beyond the {}-byte file", self.len),
            ));
        }
        Ok(MemoryFile::bytes(self, offset, len))
    }

    fn is_hole(&self, offset: u64, len: u64) -> bool {
        MemoryFile::is_hole(self, offset, len)
    }
}

impl Drop for MemoryFile {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `open`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len as usize);
        }
    }
}

/// Whether every byte is zero; word-at-a-time with an early exit every 256 bytes, so a data
/// page costs a few loads and a zero page one pass at memory bandwidth.
pub(crate) fn all_zero(bytes: &[u8]) -> bool {
    // SAFETY: reinterpreting initialised bytes as u64 words is sound for any bit pattern.
    let (head, words, tail) = unsafe { bytes.align_to::<u64>() };
    head.iter().all(|&b| b == 0)
        && tail.iter().all(|&b| b == 0)
        && words
            .chunks(32)
            .all(|c| c.iter().fold(0u64, |acc, &w| acc | w) == 0)
}

/// Most diff extents [`MemoryFile::layered`] maps: each may split the base mapping in two
/// more VMAs, and the kernel's default `vm.max_map_count` is 65530.
pub const MAX_LAYER_EXTENTS: usize = 16_384;

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

/// Sorted, disjoint union of `[start, end)` ranges.
fn merge_extents(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

/// The data extents of `file`, or `None` when the filesystem has no `SEEK_DATA`.
fn data_extents(file: &File, len: u64) -> Option<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut off: i64 = 0;
    while (off as u64) < len {
        // SAFETY: lseek on a descriptor we hold; it does not touch memory.
        let data = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
        if data < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole remains
            }
            return None;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { len as i64 } else { hole };
        out.push((data as u64, (hole as u64).min(len)));
        off = hole;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn finds_holes_and_zero_pages() -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("mem");
        let mut f = File::create(&path)?;
        f.set_len(1 << 20)?;
        // Data at [64 KiB, 128 KiB): one page of pattern, then explicit zeros.
        f.seek(SeekFrom::Start(64 << 10))?;
        f.write_all(&[0xAB; 4096])?;
        f.write_all(&vec![0; 60 << 10])?;
        f.sync_all()?;
        drop(f);

        let m = MemoryFile::open(&path)?;
        assert_eq!(m.len(), 1 << 20);
        assert!(m.is_hole(0, 4096));
        assert!(m.is_hole(512 << 10, 4096));
        assert!(!m.is_hole(64 << 10, 4096));
        assert!(!m.is_zero(64 << 10, 4096));
        assert!(m.is_zero((64 << 10) + 4096, 4096), "explicit zeros");
        assert!(m.is_zero(0, 4096), "hole");
        assert_eq!(m.bytes(64 << 10, 2), &[0xAB, 0xAB]);
        Ok(())
    }

    #[test]
    fn layered_shows_the_newest_layer_holding_each_page(
    ) -> std::result::Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir()?;
        let pages = 64u64;
        let write = |name: &str, fill: &dyn Fn(u64) -> Option<u8>| -> std::io::Result<PathBuf> {
            let path = dir.path().join(name);
            let f = File::create(&path)?;
            f.set_len(pages * 4096)?;
            for p in 0..pages {
                if let Some(b) = fill(p) {
                    f.write_all_at(&[b; 4096], p * 4096)?;
                }
            }
            Ok(path)
        };
        let base = write("base", &|p| (p % 2 == 0).then_some(0xB0))?;
        let d1 = write("d1", &|p| (p % 3 == 0).then_some(0xD1))?;
        let d2 = write("d2", &|p| (p % 5 == 0).then_some(0xD2))?;
        let m = MemoryFile::layered(&base, &[&d1, &d2])?;
        for p in 0..pages {
            let want = if p % 5 == 0 {
                0xD2
            } else if p % 3 == 0 {
                0xD1
            } else if p % 2 == 0 {
                0xB0
            } else {
                0
            };
            assert_eq!(m.bytes(p * 4096, 4096), &[want; 4096][..], "page {p}");
            assert_eq!(m.is_hole(p * 4096, 4096), want == 0, "page {p}");
        }
        assert_eq!(m.path(), d2.as_path());
        // A diff of another length is refused.
        let short = dir.path().join("short");
        File::create(&short)?.set_len(4096)?;
        let err = MemoryFile::layered(&base, &[&short])
            .unwrap_err()
            .to_string();
        assert!(err.contains("4096 bytes"), "{err}");
        Ok(())
    }

    #[test]
    fn all_zero_checks_every_byte() {
        let mut page = vec![0u8; 4096];
        assert!(all_zero(&page));
        page[4095] = 1;
        assert!(!all_zero(&page));
        page[4095] = 0;
        page[1] = 1;
        assert!(!all_zero(&page[1..]));
    }
}
