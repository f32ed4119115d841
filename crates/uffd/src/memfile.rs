//! The snapshot memory file, mapped read-only, with its holes found once at open.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use crate::error::{Error, Result};

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
        let data = data_extents(&file, len);
        Ok(Self {
            path,
            _file: file,
            ptr,
            len,
            data,
        })
    }

    /// The file's path.
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

    pub(crate) fn ptr_at(&self, offset: u64) -> *const u8 {
        debug_assert!(offset < self.len);
        // SAFETY: in bounds of the mapping (checked by the caller's region validation).
        unsafe { self.ptr.as_ptr().add(offset as usize) }
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

fn data_extents(file: &File, len: u64) -> Vec<(u64, u64)> {
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
            // No SEEK_DATA support: treat the whole file as data.
            return vec![(0, len)];
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { len as i64 } else { hole };
        out.push((data as u64, (hole as u64).min(len)));
        off = hole;
    }
    out
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
