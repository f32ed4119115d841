//! Memory files of firecracker entries: Diff snapshot chains, merging a chain into one file,
//! and dropping zero pages from a Full snapshot's memory.
//!
//! A Diff entry stores only the pages its VM dirtied since it was restored from its parent
//! entry (a sparse file: holes elsewhere) and names the parent by base commit plus the
//! SHA-256 of the parent's memory file (from the parent's metadata, so a parent removed and
//! recorded again is noticed). The guest memory is the root Full memory with every diff laid
//! over it, oldest first. A chain whose parent is gone, corrupt or different is unusable:
//! consume reports it as "no usable snapshot" (exit 2).

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use bazel_diff_store::{EntryKey, EntryReader, Requirement, Store};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The driver state file of an entry (also read by the driver).
pub const STATE_FILE: &str = "firecracker.json";
pub const MEM_FILE: &str = "mem";
/// A chain longer than this is refused even if every link is sound (a loop, or a store
/// written by something else).
const MAX_CHAIN_WALK: usize = 64;
const PAGE: u64 = 4096;

/// What a Diff entry applies to, stored in its `firecracker.json` as `parent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parent {
    /// The parent entry's base commit (same store key).
    pub base_sha: String,
    /// SHA-256 of the parent's `mem`, as its metadata lists it.
    pub mem_sha256: String,
    /// Diffs from the root Full entry to this one, this one included.
    pub chain: u32,
}

impl Parent {
    /// The `parent` field of an entry's state (`None`: a Full entry).
    pub fn of_state(state: &Value) -> Result<Option<Parent>> {
        match state.get("parent") {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone())
                .map(Some)
                .context("parsing the entry's parent (firecracker.json)"),
        }
    }
}

/// What an entry with driver state `state` under store key `key` requires: a Diff entry
/// its parent entry, pinned to the memory file it applies to; a Full entry nothing.
pub fn requirements(key: &str, state: &Value) -> Result<Vec<Requirement>> {
    let Some(parent) = Parent::of_state(state)? else {
        return Ok(Vec::new());
    };
    let parent_key = EntryKey::new(key, &parent.base_sha).context("the Diff entry's parent")?;
    Ok(vec![
        Requirement::new(&parent_key).with_file(MEM_FILE, parent.mem_sha256)
    ])
}

/// The memory layers of one entry, the root Full memory first, and the readers keeping the
/// parent entries from being removed (gc) while they are used.
pub struct MemoryChain {
    pub layers: Vec<PathBuf>,
    _parents: Vec<EntryReader>,
}

impl MemoryChain {
    pub fn is_diff(&self) -> bool {
        self.layers.len() > 1
    }
}

/// Follows `entry_dir`'s parents in the store under `key`, checking each is present,
/// verifies, and holds the memory the child was recorded on.
pub fn memory_chain(
    store: &Store,
    key: &str,
    entry_dir: &Path,
    state: &Value,
) -> Result<MemoryChain> {
    let mut layers = vec![entry_dir.join(MEM_FILE)];
    let mut parents = Vec::new();
    let mut child = entry_dir.to_path_buf();
    let mut next = Parent::of_state(state)?;
    while let Some(parent) = next {
        if parents.len() == MAX_CHAIN_WALK {
            bail!(
                "the Diff chain of {} is longer than {MAX_CHAIN_WALK} entries",
                entry_dir.display()
            );
        }
        let entry_key = EntryKey::new(key, &parent.base_sha)
            .with_context(|| format!("the parent named by {}", child.display()))?;
        let reader = store.open_entry(&entry_key).map_err(|e| {
            anyhow::anyhow!(
                "the Diff entry {} needs its parent entry {} (base {}), which is gone or \
                 unreadable: {e}",
                child.display(),
                store.entry_path(&entry_key).display(),
                parent.base_sha
            )
        })?;
        let problems = reader.verify()?;
        if !problems.is_empty() {
            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
            bail!(
                "the Diff entry {} needs its parent entry {}, which is corrupt: {}",
                child.display(),
                reader.path().display(),
                list.join("; ")
            );
        }
        let recorded = reader
            .metadata()
            .files
            .get(MEM_FILE)
            .map(|f| f.sha256.as_str());
        if recorded != Some(parent.mem_sha256.as_str()) {
            bail!(
                "the Diff entry {} applies to a parent memory with SHA-256 {}, but the parent \
                 entry {} now holds {} (recorded again since?)",
                child.display(),
                parent.mem_sha256,
                reader.path().display(),
                recorded.unwrap_or("no memory file")
            );
        }
        let parent_state: Value = serde_json::from_slice(
            &std::fs::read(reader.path().join(STATE_FILE))
                .with_context(|| format!("reading {}", reader.path().join(STATE_FILE).display()))?,
        )
        .with_context(|| format!("parsing {}", reader.path().join(STATE_FILE).display()))?;
        layers.push(reader.path().join(MEM_FILE));
        child = reader.path().to_path_buf();
        next = Parent::of_state(&parent_state)?;
        parents.push(reader);
    }
    layers.reverse();
    Ok(MemoryChain {
        layers,
        _parents: parents,
    })
}

/// Writes the guest memory of `layers` (root Full first) to the new file `dst`: a clone of
/// the root (reflink where the filesystem can) with every diff's data extents copied over.
pub fn merge_into(layers: &[PathBuf], dst: &Path) -> Result<&'static str> {
    let (root, diffs) = layers.split_first().context("an empty memory chain")?;
    let mode = crate::driver_fc::clone_file(root, dst)?;
    let out = OpenOptions::new()
        .write(true)
        .open(dst)
        .with_context(|| format!("opening {}", dst.display()))?;
    let len = out.metadata()?.len();
    let mut buf = vec![0u8; 1 << 20];
    for diff in diffs {
        let file = File::open(diff).with_context(|| format!("opening {}", diff.display()))?;
        let diff_len = file.metadata()?.len();
        if diff_len != len {
            bail!(
                "the diff memory {} is {diff_len} bytes, its parent's is {len}",
                diff.display()
            );
        }
        for (start, end) in data_extents(&file, len)
            .with_context(|| format!("finding the data of {}", diff.display()))?
        {
            let mut off = start;
            while off < end {
                let n = usize::try_from((end - off).min(buf.len() as u64)).unwrap_or(buf.len());
                file.read_exact_at(&mut buf[..n], off)
                    .with_context(|| format!("reading {}", diff.display()))?;
                out.write_all_at(&buf[..n], off)
                    .with_context(|| format!("writing {}", dst.display()))?;
                off += n as u64;
            }
        }
    }
    out.sync_all()?;
    Ok(mode)
}

/// Punches holes where a Full snapshot's memory has all-zero pages (Firecracker writes every
/// guest page, touched or not), so the entry stores only what the guest used and the uffd
/// handler serves those pages as zero pages. Returns the bytes freed. Never for a Diff: a
/// dirtied page that is now zero must stay data, or the parent's page would show through.
pub fn punch_zero_pages(path: &Path) -> Result<u64> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let len = file.metadata()?.len();
    let mut buf = vec![0u8; 1 << 20];
    let mut punched = 0u64;
    let mut run: Option<(u64, u64)> = None;
    let punch = |start: u64, end: u64| -> Result<()> {
        // SAFETY: fallocate on a descriptor we hold; it touches no memory of ours.
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                start as libc::off_t,
                (end - start) as libc::off_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("punching a hole in {}", path.display()));
        }
        Ok(())
    };
    for (start, end) in data_extents(&file, len)? {
        let mut off = start;
        while off < end {
            let n = usize::try_from((end - off).min(buf.len() as u64)).unwrap_or(buf.len());
            file.read_exact_at(&mut buf[..n], off)
                .with_context(|| format!("reading {}", path.display()))?;
            for (i, page) in buf[..n].chunks(PAGE as usize).enumerate() {
                let at = off + i as u64 * PAGE;
                let page_end = at + page.len() as u64;
                if page.iter().all(|b| *b == 0) {
                    run = match run {
                        Some((s, e)) if e == at => Some((s, page_end)),
                        Some((s, e)) => {
                            punch(s, e)?;
                            punched += e - s;
                            Some((at, page_end))
                        }
                        None => Some((at, page_end)),
                    };
                }
            }
            off += n as u64;
        }
    }
    if let Some((s, e)) = run {
        punch(s, e)?;
        punched += e - s;
    }
    file.sync_all()?;
    Ok(punched)
}

/// Apparent and allocated bytes of a file (allocated: what its blocks take on disk).
pub fn sizes(path: &Path) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((meta.len(), meta.blocks() * 512))
}

/// `[start, end)` byte ranges of `file` holding data (`SEEK_DATA`/`SEEK_HOLE`). A
/// filesystem without them is an error: a diff's holes are its meaning.
fn data_extents(file: &File, len: u64) -> Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut off: i64 = 0;
    let end = i64::try_from(len).unwrap_or(i64::MAX);
    while off < end {
        // SAFETY: lseek on a descriptor we hold.
        let data = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
        if data < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(err).context("SEEK_DATA (the filesystem must report holes)");
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { end } else { hole.min(end) };
        out.push((data as u64, hole as u64));
        off = hole;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sparse(dir: &Path, name: &str, pages: u64, fill: impl Fn(u64) -> Option<u8>) -> PathBuf {
        let path = dir.join(name);
        let f = File::create(&path).unwrap();
        f.set_len(pages * PAGE).unwrap();
        for p in 0..pages {
            if let Some(b) = fill(p) {
                f.write_all_at(&[b; PAGE as usize], p * PAGE).unwrap();
            }
        }
        path
    }

    #[test]
    fn merge_lays_every_diff_over_the_root_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = sparse(dir.path(), "root", 32, |p| Some(p as u8 + 1));
        let d1 = sparse(dir.path(), "d1", 32, |p| (p % 3 == 0).then_some(0xD1));
        // A dirtied page that became zero is data in the diff and must win over the root.
        let d2 = sparse(dir.path(), "d2", 32, |p| (p % 4 == 0).then_some(0));
        let out = dir.path().join("merged");
        merge_into(&[root, d1, d2], &out).unwrap();
        let merged = std::fs::read(&out).unwrap();
        for p in 0..32u64 {
            let want = if p % 4 == 0 {
                0
            } else if p % 3 == 0 {
                0xD1
            } else {
                p as u8 + 1
            };
            assert!(
                merged[(p * PAGE) as usize..((p + 1) * PAGE) as usize]
                    .iter()
                    .all(|b| *b == want),
                "page {p}"
            );
        }
        let short = sparse(dir.path(), "short", 4, |_| Some(1));
        let err = merge_into(&[out.clone(), short], &dir.path().join("m2")).unwrap_err();
        assert!(format!("{err:#}").contains("16384 bytes"), "{err:#}");
    }

    #[test]
    fn punch_zero_pages_frees_zero_pages_and_keeps_content() {
        let dir = tempfile::tempdir().unwrap();
        // Written zeros (as Firecracker writes untouched guest memory) on even pages.
        let path = sparse(dir.path(), "mem", 64, |p| {
            Some(if p % 2 == 0 { 0 } else { 7 })
        });
        let before = std::fs::read(&path).unwrap();
        let punched = punch_zero_pages(&path).unwrap();
        assert_eq!(punched, 32 * PAGE);
        assert_eq!(std::fs::read(&path).unwrap(), before);
        let (apparent, allocated) = sizes(&path).unwrap();
        assert_eq!(apparent, 64 * PAGE);
        assert!(allocated <= 33 * PAGE, "{allocated} bytes allocated");
    }

    #[test]
    fn parent_of_a_full_entry_is_none() {
        assert_eq!(Parent::of_state(&serde_json::json!({})).unwrap(), None);
        assert_eq!(
            Parent::of_state(&serde_json::json!({ "parent": null })).unwrap(),
            None
        );
        let p = Parent::of_state(&serde_json::json!({
            "parent": { "base_sha": "ab", "mem_sha256": "cd", "chain": 2 }
        }))
        .unwrap()
        .unwrap();
        assert_eq!(p.chain, 2);
        assert!(Parent::of_state(&serde_json::json!({ "parent": 3 })).is_err());
    }
}
