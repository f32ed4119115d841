//! The working-set file: which pages of a memory file a restore populated, in the order it
//! populated them, so the next restore can copy them in eagerly.
//!
//! Format (version 1), little-endian:
//!
//! ```text
//! magic        8 bytes  "BDUFFDWS"
//! version      u32      1
//! page_size    u32      bytes per page (4096, or 2 MiB for hugetlbfs)
//! file_len     u64      size of the memory file the set was recorded against
//! run_count    u64
//! runs         run_count × (zigzag-LEB128 delta of first_page from the previous run's
//!                           first_page, LEB128 page count ≥ 1)
//! checksum     u64      FNV-1a 64 of every byte before it
//! ```
//!
//! Runs are in priority order (first populated first), disjoint, and within `file_len`.
//! A 1 GiB working set in 2 MiB chunks is 512 runs: a few kilobytes.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"BDUFFDWS";
const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 4 + 8 + 8;

/// `pages` consecutive pages starting at page `first_page` of the memory file (page index =
/// file offset / page size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    pub first_page: u64,
    pub pages: u64,
}

/// A recorded working set. See the module documentation for the file format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkingSet {
    page_size: u64,
    file_len: u64,
    runs: Vec<PageRun>,
}

impl WorkingSet {
    /// Builds a set from runs in priority order: empty runs are dropped, pages already
    /// listed by an earlier run are dropped, pages past `file_len` are clipped, and
    /// adjacent runs are merged.
    pub fn from_runs(
        page_size: u64,
        file_len: u64,
        runs: impl IntoIterator<Item = PageRun>,
    ) -> Self {
        assert!(page_size.is_power_of_two(), "page size {page_size}");
        let total_pages = file_len / page_size;
        let mut seen = vec![0u64; total_pages.div_ceil(64) as usize];
        let mut out: Vec<PageRun> = Vec::new();
        for run in runs {
            let end = run.first_page.saturating_add(run.pages).min(total_pages);
            for p in run.first_page..end {
                let (w, b) = ((p / 64) as usize, p % 64);
                if seen[w] & (1 << b) != 0 {
                    continue;
                }
                seen[w] |= 1 << b;
                match out.last_mut() {
                    Some(last) if last.first_page + last.pages == p => last.pages += 1,
                    _ => out.push(PageRun {
                        first_page: p,
                        pages: 1,
                    }),
                }
            }
        }
        Self {
            page_size,
            file_len,
            runs: out,
        }
    }

    /// Where the working set of memory file `mem_file` lives by convention: beside it, as
    /// `<name>.workingset`.
    pub fn sidecar_path(mem_file: &Path) -> PathBuf {
        let mut name = mem_file.file_name().unwrap_or_default().to_os_string();
        name.push(".workingset");
        mem_file.with_file_name(name)
    }

    /// Page size in bytes.
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// Size of the memory file the set was recorded against.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The runs, in priority order.
    pub fn runs(&self) -> &[PageRun] {
        &self.runs
    }

    /// Number of pages in the set.
    pub fn pages(&self) -> u64 {
        self.runs.iter().map(|r| r.pages).sum()
    }

    /// Number of bytes in the set.
    pub fn bytes(&self) -> u64 {
        self.pages() * self.page_size
    }

    /// Encodes the set in the file format.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.runs.len() * 4 + 8);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.page_size as u32).to_le_bytes());
        out.extend_from_slice(&self.file_len.to_le_bytes());
        out.extend_from_slice(&(self.runs.len() as u64).to_le_bytes());
        let mut prev = 0u64;
        for r in &self.runs {
            let delta = r.first_page.wrapping_sub(prev) as i64;
            put_varint(&mut out, ((delta << 1) ^ (delta >> 63)) as u64);
            put_varint(&mut out, r.pages);
            prev = r.first_page;
        }
        let sum = fnv1a(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Decodes the file format; `path` only names the source in errors.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Self> {
        let bad = |reason: String| Error::WorkingSet {
            path: path.to_path_buf(),
            reason,
        };
        if bytes.len() < HEADER + 8 || &bytes[..8] != MAGIC {
            return Err(bad("not a working-set file (bad magic or too short)".into()));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 8);
        let sum = u64::from_le_bytes(sum.try_into().map_err(|_| bad("truncated".into()))?);
        if fnv1a(body) != sum {
            return Err(bad("checksum mismatch (truncated or corrupt)".into()));
        }
        let u32_at =
            |at: usize| u32::from_le_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&body[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let version = u32_at(8);
        if version != VERSION {
            return Err(bad(format!(
                "unsupported version {version} (this build reads {VERSION})"
            )));
        }
        let page_size = u64::from(u32_at(12));
        if !page_size.is_power_of_two() || page_size < 4096 {
            return Err(bad(format!("invalid page size {page_size}")));
        }
        let file_len = u64_at(16);
        let count = u64_at(24);
        let total_pages = file_len / page_size;
        let mut pos = HEADER;
        let mut prev = 0u64;
        let mut runs = Vec::with_capacity(count.min(1 << 20) as usize);
        for i in 0..count {
            let zz =
                get_varint(body, &mut pos).ok_or_else(|| bad(format!("run {i} is truncated")))?;
            let pages =
                get_varint(body, &mut pos).ok_or_else(|| bad(format!("run {i} is truncated")))?;
            let delta = ((zz >> 1) as i64) ^ -((zz & 1) as i64);
            let first_page = prev.wrapping_add(delta as u64);
            if pages == 0
                || first_page
                    .checked_add(pages)
                    .is_none_or(|end| end > total_pages)
            {
                return Err(bad(format!(
                    "run {i} ({pages} pages at page {first_page}) is empty or past the end of a {file_len}-byte file"
                )));
            }
            runs.push(PageRun { first_page, pages });
            prev = first_page;
        }
        if pos != body.len() {
            return Err(bad(format!("{} trailing bytes", body.len() - pos)));
        }
        // Normalise (drops overlaps a foreign writer might have produced).
        Ok(Self::from_runs(page_size, file_len, runs))
    }

    /// Reads and decodes `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = fs::read(path).map_err(|e| Error::io("read the working set", path, e))?;
        Self::decode(&bytes, path)
    }

    /// Writes the set to `path` atomically: a temporary file in the same directory, fsynced,
    /// renamed over `path`, and the directory fsynced.
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(format!(".tmp.{}", std::process::id()));
        let tmp = dir.join(tmp_name);
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&self.encode())?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            File::open(dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io("write the working set", path, e)
        })
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(first_page: u64, pages: u64) -> PageRun {
        PageRun { first_page, pages }
    }

    #[test]
    fn from_runs_dedupes_clips_and_merges() {
        let ws = WorkingSet::from_runs(
            4096,
            100 * 4096,
            [run(10, 5), run(12, 6), run(0, 0), run(95, 10), run(3, 2)],
        );
        assert_eq!(ws.runs(), &[run(10, 8), run(95, 5), run(3, 2)]);
        assert_eq!(ws.pages(), 15);
        assert_eq!(ws.bytes(), 15 * 4096);
    }

    #[test]
    fn encode_decode_round_trip_keeps_priority_order() -> Result<()> {
        let ws = WorkingSet::from_runs(
            4096,
            1 << 30,
            [run(1000, 512), run(5, 1), run(200_000, 3), run(7, 9)],
        );
        let bytes = ws.encode();
        assert_eq!(WorkingSet::decode(&bytes, Path::new("x"))?, ws);

        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", "/tmp", e))?;
        let mem = dir.path().join("memory.bin");
        let path = WorkingSet::sidecar_path(&mem);
        assert_eq!(path, dir.path().join("memory.bin.workingset"));
        ws.save(&path)?;
        assert_eq!(WorkingSet::load(&path)?, ws);
        Ok(())
    }

    #[test]
    fn corrupt_files_are_rejected() {
        let ws = WorkingSet::from_runs(4096, 1 << 20, [run(1, 2)]);
        let good = ws.encode();
        let p = Path::new("ws");
        let mut flipped = good.clone();
        flipped[HEADER] ^= 1;
        assert!(WorkingSet::decode(&flipped, p).is_err(), "checksum");
        assert!(
            WorkingSet::decode(&good[..good.len() - 1], p).is_err(),
            "truncated"
        );
        assert!(
            WorkingSet::decode(b"not a working set at all, nope", p).is_err(),
            "magic"
        );
        // A run past the end of the file, with a valid checksum.
        let mut forged = WorkingSet::from_runs(4096, 1 << 30, [run(1000, 10)]).encode();
        forged[16..24].copy_from_slice(&(1u64 << 20).to_le_bytes());
        let n = forged.len() - 8;
        let sum = fnv1a(&forged[..n]);
        forged[n..].copy_from_slice(&sum.to_le_bytes());
        assert!(WorkingSet::decode(&forged, p).is_err(), "out of bounds");
    }
}
