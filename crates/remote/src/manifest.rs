//! The manifest: what one entry is on the object store. Small JSON, uploaded last; it
//! carries the entry's `metadata.json` verbatim (so an entry materialized elsewhere is the
//! same entry) plus, per file, the chunks that make it up.
//!
//! ```json
//! {
//!   "format_version": 1,
//!   "fingerprint": "<64 hex>", "base_sha": "<40|64 hex>", "created_unix": 1700000000,
//!   "metadata": { "...": "the entry's metadata.json" },
//!   "files": {
//!     "base_hashes.json": {
//!       "size": 15, "sha256": "<64 hex>",
//!       "chunking": { "kind": "cdc", "min": 16384, "avg": 65536, "max": 262144 },
//!       "chunks": [ { "digest": "<blake3>", "size": 15, "stored": 24 } ]
//!     }
//!   },
//!   "logical_bytes": 15, "stored_bytes": 24, "uploaded_bytes": 24
//! }
//! ```

use std::collections::{BTreeMap, HashMap};

use bazel_diff_store::{EntryKey, Metadata, METADATA_FILE};
use serde::{Deserialize, Serialize};

use crate::chunk::{is_digest, Chunking};
use crate::contract::MANIFEST_FORMAT_VERSION;

/// One chunk of a file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// BLAKE3 of the uncompressed bytes: the chunk's name.
    pub digest: String,
    /// Uncompressed length.
    pub size: u64,
    /// Length of the stored (compressed) object.
    pub stored: u64,
}

/// One file of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileManifest {
    pub size: u64,
    /// SHA-256 of the whole file, as in `metadata.json`.
    pub sha256: String,
    pub chunking: Chunking,
    pub chunks: Vec<ChunkRef>,
}

impl FileManifest {
    /// Start offset of every chunk, plus the file size at the end.
    pub fn offsets(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.chunks.len() + 1);
        let mut at = 0;
        out.push(0);
        for chunk in &self.chunks {
            at += chunk.size;
            out.push(at);
        }
        out
    }
}

/// The manifest of one entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub fingerprint: String,
    pub base_sha: String,
    pub created_unix: i64,
    /// The entry's `metadata.json`.
    pub metadata: Metadata,
    /// Every file of the entry except `metadata.json`, by `/`-separated relative path.
    pub files: BTreeMap<String, FileManifest>,
    /// Sum of the file sizes.
    pub logical_bytes: u64,
    /// Stored size of the entry's distinct chunks (shared ones included).
    pub stored_bytes: u64,
    /// Stored bytes the record that published it actually uploaded (the rest was already
    /// there): the marginal cost of this entry.
    pub uploaded_bytes: u64,
}

impl Manifest {
    /// The entry's key, if the manifest's names are valid.
    pub fn key(&self) -> Result<EntryKey, String> {
        EntryKey::new(&self.fingerprint, &self.base_sha).map_err(|e| e.to_string())
    }

    /// Every distinct chunk with its stored size.
    pub fn distinct_chunks(&self) -> HashMap<&str, u64> {
        self.files
            .values()
            .flat_map(|f| &f.chunks)
            .map(|c| (c.digest.as_str(), c.stored))
            .collect()
    }

    /// Checks that the manifest is self-consistent and describes `key`; the reason otherwise.
    pub fn check(&self, key: &EntryKey) -> Result<(), String> {
        if self.format_version != MANIFEST_FORMAT_VERSION {
            return Err(format!(
                "format_version {} is not supported (this build reads {MANIFEST_FORMAT_VERSION})",
                self.format_version
            ));
        }
        if self.fingerprint != key.fingerprint() || self.base_sha != key.base_sha() {
            return Err(format!(
                "it describes {}/{}, not {key}",
                self.fingerprint, self.base_sha
            ));
        }
        if self.metadata.fingerprint != self.fingerprint || self.metadata.base_sha != self.base_sha
        {
            return Err("its metadata names another entry".into());
        }
        // The metadata is what a materialized copy publishes: the same rules (its
        // requirements included) apply.
        self.metadata
            .check(key)
            .map_err(|reason| format!("its metadata: {reason}"))?;
        let listed: Vec<(&String, u64, &String)> = self
            .metadata
            .files
            .iter()
            .map(|(path, record)| (path, record.size, &record.sha256))
            .collect();
        let chunked: Vec<(&String, u64, &String)> = self
            .files
            .iter()
            .map(|(path, file)| (path, file.size, &file.sha256))
            .collect();
        if listed != chunked {
            return Err("its files differ from its metadata's".into());
        }
        let mut logical = 0u64;
        for (path, file) in &self.files {
            check_relative_path(path)?;
            let mut sum = 0u64;
            for chunk in &file.chunks {
                if !is_digest(&chunk.digest) {
                    return Err(format!("{path}: {:?} is not a chunk digest", chunk.digest));
                }
                if chunk.size == 0 || chunk.size > file.chunking.max_chunk() as u64 {
                    return Err(format!(
                        "{path}: chunk {} has size {}",
                        chunk.digest, chunk.size
                    ));
                }
                sum = sum.saturating_add(chunk.size);
            }
            if sum != file.size {
                return Err(format!(
                    "{path}: chunks add up to {sum} bytes, the file has {}",
                    file.size
                ));
            }
            logical = logical.saturating_add(file.size);
        }
        if logical != self.logical_bytes || logical != self.metadata.total_bytes {
            return Err(format!(
                "logical_bytes {} does not add up ({logical})",
                self.logical_bytes
            ));
        }
        Ok(())
    }
}

/// A path inside an entry: relative, `/`-separated, no empty, `.` or `..` component, not the
/// store's own metadata file.
fn check_relative_path(path: &str) -> Result<(), String> {
    let bad = path.is_empty()
        || path == METADATA_FILE
        || path.starts_with('/')
        || path
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == ".." || part.contains('\0'));
    if bad {
        return Err(format!("{path:?} is not a path inside an entry"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bazel_diff_store::FileRecord;

    fn key() -> EntryKey {
        EntryKey::new(&"a".repeat(64), &"b".repeat(40)).expect("valid key")
    }

    pub(crate) fn sample() -> Manifest {
        let mut records = BTreeMap::new();
        records.insert(
            "base_hashes.json".to_owned(),
            FileRecord {
                size: 5,
                sha256: "c".repeat(64),
            },
        );
        let metadata = Metadata {
            format_version: bazel_diff_store::FORMAT_VERSION,
            tool_version: "t".into(),
            driver: "local".into(),
            fingerprint: "a".repeat(64),
            base_sha: "b".repeat(40),
            created_unix: 7,
            created_at: bazel_diff_store::rfc3339_utc(7),
            files: records,
            total_bytes: 5,
            extra: serde_json::Map::new(),
            requires: Vec::new(),
        };
        let mut files = BTreeMap::new();
        files.insert(
            "base_hashes.json".to_owned(),
            FileManifest {
                size: 5,
                sha256: "c".repeat(64),
                chunking: Chunking::CDC,
                chunks: vec![
                    ChunkRef {
                        digest: "d".repeat(64),
                        size: 2,
                        stored: 11,
                    },
                    ChunkRef {
                        digest: "e".repeat(64),
                        size: 3,
                        stored: 12,
                    },
                ],
            },
        );
        Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            fingerprint: "a".repeat(64),
            base_sha: "b".repeat(40),
            created_unix: 7,
            metadata,
            files,
            logical_bytes: 5,
            stored_bytes: 23,
            uploaded_bytes: 23,
        }
    }

    #[test]
    fn round_trips_through_json() {
        let manifest = sample();
        let json = serde_json::to_string_pretty(&manifest).expect("serialize");
        let back: Manifest = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, manifest);
        assert_eq!(back.check(&key()), Ok(()));
        assert_eq!(back.files["base_hashes.json"].offsets(), [0, 2, 5]);
        assert_eq!(back.distinct_chunks().len(), 2);
    }

    #[test]
    fn inconsistencies_are_rejected() {
        let other = EntryKey::new(&"a".repeat(64), &"f".repeat(40)).expect("key");
        assert!(sample().check(&other).is_err());
        let mut m = sample();
        m.files.get_mut("base_hashes.json").expect("file").chunks[0].size = 3;
        assert!(m.check(&key()).expect_err("sizes").contains("add up"));
        let mut m = sample();
        m.files.get_mut("base_hashes.json").expect("file").chunks[0].digest = "../x".into();
        assert!(m.check(&key()).is_err());
        let mut m = sample();
        let file = m.files.remove("base_hashes.json").expect("file");
        m.files.insert("../escape".into(), file);
        assert!(m.check(&key()).is_err());
        let mut m = sample();
        m.format_version += 1;
        assert!(m.check(&key()).is_err());
        let mut m = sample();
        m.metadata
            .requires
            .push(bazel_diff_store::Requirement::new(&key()));
        assert!(m
            .check(&key())
            .expect_err("self")
            .contains("requires itself"));
    }
}
