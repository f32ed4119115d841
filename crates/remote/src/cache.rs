//! The local chunk cache in front of the object store: verified, uncompressed chunks in
//! `<dir>/<aa>/<digest>`, written atomically (temp file + rename), evicted least recently
//! used first (a hit refreshes the file's mtime) when the cache grows past its limit.
//!
//! Chunks are stored uncompressed so that a range read (a page fault) is one `pread`.
//! Files are not fsynced: every read re-checks the digest, so a chunk torn by a crash is a
//! miss (deleted and fetched again), never bad data.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use crate::chunk::{check, is_digest};
use crate::error::{io_err, Result};

/// Where temporary files are written before they are renamed into place.
const TMP_DIR: &str = ".tmp";

/// A directory of verified chunks with a size limit. Safe to share between processes:
/// writes are atomic renames and a racing eviction only causes a re-fetch.
#[derive(Debug, Clone)]
pub struct ChunkCache {
    dir: PathBuf,
    limit: u64,
}

/// What an eviction pass found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    pub chunks: u64,
    pub bytes: u64,
    pub evicted_chunks: u64,
    pub evicted_bytes: u64,
}

impl ChunkCache {
    /// Opens (creating) the cache at `dir`, holding at most `limit` bytes after each
    /// [`evict`](Self::evict).
    pub fn open(dir: impl AsRef<Path>, limit: u64) -> Result<ChunkCache> {
        let dir = dir.as_ref().to_path_buf();
        let tmp = dir.join(TMP_DIR);
        fs::create_dir_all(&tmp).map_err(io_err("create the chunk cache", &tmp))?;
        Ok(ChunkCache { dir, limit })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(&digest[..2]).join(digest)
    }

    /// The chunk `digest` of `size` bytes, if cached and intact. A cached copy that fails
    /// the check is deleted. A hit counts as a use for eviction.
    pub fn get(&self, digest: &str, size: u64) -> Option<Vec<u8>> {
        if !is_digest(digest) {
            return None;
        }
        let path = self.path(digest);
        let data = fs::read(&path).ok()?;
        if let Err(reason) = check(&data, digest, size) {
            tracing::warn!(path = %path.display(), reason, "dropping a corrupt cached chunk");
            let _ = fs::remove_file(&path);
            return None;
        }
        // LRU-ish: eviction goes by mtime. Failing to touch only makes eviction less fair.
        if let Ok(file) = File::open(&path) {
            let _ = file.set_modified(SystemTime::now());
        }
        Some(data)
    }

    /// Adds a chunk the caller has verified.
    pub fn put(&self, digest: &str, data: &[u8]) -> Result<()> {
        if !is_digest(digest) {
            return Err(io_err("cache", &self.dir)(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{digest:?} is not a chunk digest"),
            )));
        }
        let path = self.path(digest);
        let parent = self.dir.join(&digest[..2]);
        fs::create_dir_all(&parent).map_err(io_err("create", &parent))?;
        let tmp_dir = self.dir.join(TMP_DIR);
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir)
            .map_err(io_err("create a temporary file in", &tmp_dir))?;
        tmp.write_all(data)
            .map_err(io_err("write", tmp.path().to_path_buf()))?;
        tmp.persist(&path)
            .map_err(|e| io_err("rename a cached chunk to", &path)(e.error))?;
        Ok(())
    }

    /// Deletes least recently used chunks until the cache holds at most its limit, never
    /// one in `keep` (the chunks the caller is using). Also clears stale temporary files.
    pub fn evict(&self, keep: &HashSet<String>) -> Result<CacheStats> {
        let mut chunks: Vec<(SystemTime, u64, PathBuf, bool)> = Vec::new();
        let mut stats = CacheStats::default();
        for shard in read_dir(&self.dir)? {
            let name = shard.file_name();
            if name == TMP_DIR {
                continue;
            }
            for chunk in read_dir(&shard.path())? {
                let Ok(meta) = chunk.metadata() else { continue };
                let kept = keep.contains(chunk.file_name().to_string_lossy().as_ref());
                stats.chunks += 1;
                stats.bytes += meta.len();
                chunks.push((
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    meta.len(),
                    chunk.path(),
                    kept,
                ));
            }
        }
        chunks.sort_by_key(|c| c.0);
        for (_, len, path, kept) in chunks {
            if stats.bytes <= self.limit {
                break;
            }
            if kept {
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("evict", &path)(e)),
            }
            stats.bytes -= len;
            stats.chunks -= 1;
            stats.evicted_bytes += len;
            stats.evicted_chunks += 1;
        }
        // Temporary files of writers that died; live writers rename theirs within moments.
        for tmp in read_dir(&self.dir.join(TMP_DIR))? {
            let old = tmp
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 3600);
            if old {
                let _ = fs::remove_file(tmp.path());
            }
        }
        Ok(stats)
    }
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    match fs::read_dir(dir) {
        Ok(entries) => Ok(entries.flatten().collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err("list", dir)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::chunk_digest;
    use std::time::Duration;

    fn chunk(i: u8) -> (String, Vec<u8>) {
        let data = vec![i; 1000];
        (chunk_digest(&data), data)
    }

    #[test]
    fn hits_are_verified_and_corrupt_copies_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ChunkCache::open(dir.path(), 1 << 20).expect("open");
        let (digest, data) = chunk(1);
        assert_eq!(cache.get(&digest, 1000), None);
        cache.put(&digest, &data).expect("put");
        assert_eq!(cache.get(&digest, 1000).as_deref(), Some(&data[..]));
        assert_eq!(cache.get(&digest, 999), None, "size is part of the check");
        // Flip a byte behind the cache's back: a miss, and the copy is gone.
        let path = cache.path(&digest);
        let mut bad = data.clone();
        bad[0] ^= 1;
        fs::write(&path, &bad).expect("write");
        assert_eq!(cache.get(&digest, 1000), None);
        assert!(!path.exists());
        assert!(cache.put("../../etc", b"x").is_err());
    }

    #[test]
    fn eviction_drops_least_recently_used_and_spares_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = ChunkCache::open(dir.path(), 2500).expect("open");
        let chunks: Vec<_> = (0..5).map(chunk).collect();
        let old = SystemTime::now() - Duration::from_secs(1000);
        for (i, (digest, data)) in chunks.iter().enumerate() {
            cache.put(digest, data).expect("put");
            let file = File::open(cache.path(digest)).expect("open");
            file.set_modified(old + Duration::from_secs(i as u64))
                .expect("set mtime");
        }
        // Chunk 0 is the oldest but used now; chunk 1 is pinned by the caller.
        assert!(cache.get(&chunks[0].0, 1000).is_some());
        let keep: HashSet<String> = [chunks[1].0.clone()].into();
        let stats = cache.evict(&keep).expect("evict");
        assert_eq!(stats.evicted_chunks, 3);
        assert_eq!(stats.bytes, 2000);
        let left: Vec<bool> = chunks.iter().map(|(d, _)| cache.path(d).exists()).collect();
        assert_eq!(left, [true, true, false, false, false]);
    }
}
