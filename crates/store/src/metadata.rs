//! `metadata.json`: what an entry is, written by the store at publication.
//!
//! It lists every file of the entry with its size and SHA-256, so that a reader can check
//! an entry before trusting it (finding F2: upstream had no digest for the memory image),
//! records the driver (F6) and the tool version (F30), and carries a free-form `extra`
//! object for the caller (fingerprint components, timings, driver state).

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::contract::{FORMAT_VERSION, METADATA_FILE};
use crate::key::EntryKey;

/// Size and digest of one file of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Length in bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
}

/// The parsed `metadata.json` of a published entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// Version of the tool that recorded the entry (e.g. `bazel-diff-snap 0.1.0`).
    pub tool_version: String,
    /// Driver that recorded the entry (e.g. `local`, `firecracker`).
    pub driver: String,
    /// The key's fingerprint; must match the entry's directory.
    pub fingerprint: String,
    /// The key's base commit; must match the entry's directory.
    pub base_sha: String,
    /// Creation time, Unix seconds. Authoritative for ordering and age.
    pub created_unix: i64,
    /// The same instant as RFC 3339 UTC, for humans.
    pub created_at: String,
    /// Every regular file of the entry except `metadata.json`, by `/`-separated path
    /// relative to the entry directory.
    pub files: BTreeMap<String, FileRecord>,
    /// Sum of the sizes in `files`.
    pub total_bytes: u64,
    /// Caller-supplied data, opaque to the store.
    #[serde(default)]
    pub extra: Map<String, Value>,
}

impl Metadata {
    /// Checks that this metadata can describe the entry at `key`; the reason otherwise.
    pub(crate) fn check(&self, key: &EntryKey) -> Result<(), String> {
        if self.format_version != FORMAT_VERSION {
            return Err(format!(
                "format_version {} is not supported (this build reads version {FORMAT_VERSION})",
                self.format_version
            ));
        }
        if self.fingerprint != key.fingerprint() || self.base_sha != key.base_sha() {
            return Err(format!(
                "metadata describes {}/{}, not the entry's key {key}",
                self.fingerprint, self.base_sha
            ));
        }
        let mut total: u64 = 0;
        for (path, record) in &self.files {
            check_relative_path(path)?;
            if path == METADATA_FILE {
                return Err(format!("{METADATA_FILE} lists itself"));
            }
            if record.sha256.len() != 64
                || !record
                    .sha256
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            {
                return Err(format!(
                    "{path:?} has a malformed sha256 {:?}",
                    record.sha256
                ));
            }
            total = total.saturating_add(record.size);
        }
        if total != self.total_bytes {
            return Err(format!(
                "total_bytes is {} but the listed files add up to {total}",
                self.total_bytes
            ));
        }
        Ok(())
    }
}

/// A listed path must stay inside the entry: relative, `/`-separated, no empty, `.` or
/// `..` components. Without this a crafted metadata file could make `verify` read (and
/// report on) any file on the host.
fn check_relative_path(path: &str) -> Result<(), String> {
    let bad = path.is_empty()
        || path.contains('\0')
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(format!("file path {path:?} is not a plain relative path"));
    }
    Ok(())
}

/// What the caller provides when publishing; the store adds the key, time and file list.
#[derive(Debug, Clone, Default)]
pub struct MetadataInput {
    /// Version of the recording tool; required (upstream left it empty, finding F30).
    pub tool_version: String,
    /// Driver kind; required (finding F6).
    pub driver: String,
    /// Free-form data stored as `extra`.
    pub extra: Map<String, Value>,
    /// Creation time to record; `None` means the time of publication. Set it only when
    /// importing an entry recorded elsewhere (or in tests).
    pub created: Option<SystemTime>,
}

impl MetadataInput {
    /// Input with the two required fields and nothing else.
    pub fn new(tool_version: impl Into<String>, driver: impl Into<String>) -> Self {
        Self {
            tool_version: tool_version.into(),
            driver: driver.into(),
            ..Self::default()
        }
    }

    /// Adds one `extra` field.
    pub fn with_extra(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    /// Records `created` instead of the time of publication.
    pub fn with_created(mut self, created: SystemTime) -> Self {
        self.created = Some(created);
        self
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        for (name, value) in [
            ("tool_version", &self.tool_version),
            ("driver", &self.driver),
        ] {
            if value.trim().is_empty() {
                return Err(format!("{name} must not be empty"));
            }
            if value.chars().any(char::is_control) {
                return Err(format!("{name} {value:?} contains control characters"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> EntryKey {
        EntryKey::new(&"a".repeat(64), &"b".repeat(40)).expect("key")
    }

    fn sample() -> Metadata {
        let mut files = BTreeMap::new();
        files.insert(
            "dir/f".to_owned(),
            FileRecord {
                size: 3,
                sha256: "c".repeat(64),
            },
        );
        Metadata {
            format_version: FORMAT_VERSION,
            tool_version: "t".into(),
            driver: "local".into(),
            fingerprint: "a".repeat(64),
            base_sha: "b".repeat(40),
            created_unix: 0,
            created_at: "1970-01-01T00:00:00Z".into(),
            files,
            total_bytes: 3,
            extra: Map::new(),
        }
    }

    #[test]
    fn accepts_consistent_metadata() {
        assert_eq!(sample().check(&key()), Ok(()));
    }

    #[test]
    fn rejects_paths_leaving_the_entry() {
        for path in [
            "../x",
            "/etc/passwd",
            "a//b",
            "a/./b",
            "",
            "a/..",
            METADATA_FILE,
        ] {
            let mut m = sample();
            let record = m.files.remove("dir/f").expect("present");
            m.files.insert(path.to_owned(), record);
            assert!(m.check(&key()).is_err(), "{path:?} accepted");
        }
    }

    #[test]
    fn rejects_wrong_key_version_and_totals() {
        let other = EntryKey::new(&"a".repeat(64), &"c".repeat(40)).expect("key");
        assert!(sample()
            .check(&other)
            .expect_err("key")
            .contains("not the entry's key"));
        let mut m = sample();
        m.format_version = FORMAT_VERSION + 1;
        assert!(m
            .check(&key())
            .expect_err("version")
            .contains("format_version"));
        let mut m = sample();
        m.total_bytes = 4;
        assert!(m.check(&key()).expect_err("total").contains("total_bytes"));
    }

    #[test]
    fn input_requires_tool_and_driver() {
        assert!(MetadataInput::new("", "local").check().is_err());
        assert!(MetadataInput::new("v", " ").check().is_err());
        assert!(MetadataInput::new("v", "lo\ncal").check().is_err());
        assert!(MetadataInput::new("v", "local").check().is_ok());
    }
}
