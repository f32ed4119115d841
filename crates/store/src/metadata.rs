//! `metadata.json`: what an entry is, written by the store at publication.
//!
//! It lists every file of the entry with its size and SHA-256, so that a reader can check
//! an entry before trusting it (finding F2: upstream had no digest for the memory image),
//! records the driver (F6) and the tool version (F30), and carries a free-form `extra`
//! object for the caller (fingerprint components, timings, driver state).
//!
//! `requires` names the entries this one cannot be used without (a Firecracker Diff
//! snapshot's parent): gc keeps them while this entry is kept, `verify` reports them missing,
//! and an object store fetches them along with this entry. The field is optional and absent
//! when empty, so metadata without it is read as before and [`FORMAT_VERSION`] is unchanged:
//! an older binary reading a new entry only misses the protection, which is how it already
//! treated Diff entries (their consume checks the parent itself and exits 2 without it).

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::contract::{FORMAT_VERSION, METADATA_FILE};
use crate::key::{EntryKey, InvalidKey};

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
    /// Entries this one cannot be used without (direct requirements only; theirs follow
    /// from their own metadata).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<Requirement>,
}

/// An entry another entry cannot be used without, e.g. the parent of a Diff snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    /// The required entry's fingerprint.
    pub fingerprint: String,
    /// The required entry's base commit.
    pub base_sha: String,
    /// Files of the required entry the dependent was built on, by path, with their SHA-256:
    /// an entry recorded again under the same key with other content does not satisfy it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub files: BTreeMap<String, String>,
}

impl Requirement {
    /// A requirement of the entry `key`, whatever its content.
    pub fn new(key: &EntryKey) -> Self {
        Self {
            fingerprint: key.fingerprint().to_owned(),
            base_sha: key.base_sha().to_owned(),
            files: BTreeMap::new(),
        }
    }

    /// Also requires the entry's file `path` to have this SHA-256.
    pub fn with_file(mut self, path: impl Into<String>, sha256: impl Into<String>) -> Self {
        self.files.insert(path.into(), sha256.into());
        self
    }

    /// The required entry's key.
    pub fn key(&self) -> Result<EntryKey, InvalidKey> {
        EntryKey::new(&self.fingerprint, &self.base_sha)
    }

    /// Why `found`, the required entry's metadata (`None`: there is no such entry), does not
    /// satisfy this requirement; `None` if it does.
    pub fn unmet(&self, found: Option<&Metadata>) -> Option<String> {
        let Some(found) = found else {
            return Some("the entry is missing".into());
        };
        self.files.iter().find_map(|(path, sha256)| {
            match found.files.get(path).map(|r| r.sha256.as_str()) {
                Some(actual) if actual == sha256 => None,
                Some(actual) => Some(format!(
                    "its {path} has SHA-256 {actual}, this entry was built on {sha256} (recorded again since?)"
                )),
                None => Some(format!("it has no file {path}")),
            }
        })
    }

    fn check(&self, dependent: &EntryKey) -> Result<(), String> {
        let key = self.key().map_err(|e| format!("a requirement names {e}"))?;
        if &key == dependent {
            return Err("the entry requires itself".into());
        }
        for (path, sha256) in &self.files {
            check_relative_path(path)?;
            check_sha256(path, sha256)?;
        }
        Ok(())
    }
}

impl Metadata {
    /// The keys of the entries this one requires (see [`Requirement`]).
    pub fn required_keys(&self) -> Vec<EntryKey> {
        // `check` rejected invalid keys; nothing is dropped from checked metadata.
        self.requires.iter().filter_map(|r| r.key().ok()).collect()
    }

    /// Checks that this metadata can describe the entry at `key`; the reason otherwise.
    pub fn check(&self, key: &EntryKey) -> Result<(), String> {
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
            check_sha256(path, &record.sha256)?;
            total = total.saturating_add(record.size);
        }
        if total != self.total_bytes {
            return Err(format!(
                "total_bytes is {} but the listed files add up to {total}",
                self.total_bytes
            ));
        }
        check_requires(&self.requires, key)
    }
}

/// Requirements are valid keys, not the entry itself, each named once.
pub(crate) fn check_requires(requires: &[Requirement], key: &EntryKey) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for requirement in requires {
        requirement.check(key)?;
        if !seen.insert((&requirement.fingerprint, &requirement.base_sha)) {
            return Err(format!(
                "requires {}/{} twice",
                requirement.fingerprint, requirement.base_sha
            ));
        }
    }
    Ok(())
}

fn check_sha256(path: &str, sha256: &str) -> Result<(), String> {
    if sha256.len() != 64
        || !sha256
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(format!("{path:?} has a malformed sha256 {sha256:?}"));
    }
    Ok(())
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
    /// Entries the new entry cannot be used without, stored as `requires`.
    pub requires: Vec<Requirement>,
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

    /// Adds a requirement: an entry the new one cannot be used without.
    pub fn with_requirement(mut self, requirement: Requirement) -> Self {
        self.requires.push(requirement);
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
            requires: Vec::new(),
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
    fn requirements_are_optional_checked_and_matched_by_digest() {
        // Metadata written before `requires` existed reads as requiring nothing, and
        // metadata without requirements is written exactly as before.
        let mut json = serde_json::to_value(sample()).expect("serialize");
        assert!(json.get("requires").is_none());
        json.as_object_mut().expect("object").remove("requires");
        let old: Metadata = serde_json::from_value(json).expect("parse");
        assert!(old.requires.is_empty());

        let parent = EntryKey::new(&"a".repeat(64), &"c".repeat(40)).expect("key");
        let mut m = sample();
        m.requires
            .push(Requirement::new(&parent).with_file("dir/f", "c".repeat(64)));
        assert_eq!(m.check(&key()), Ok(()));
        assert_eq!(m.required_keys(), vec![parent.clone()]);
        let back: Metadata =
            serde_json::from_str(&serde_json::to_string(&m).expect("serialize")).expect("parse");
        assert_eq!(back, m);

        // The parent's metadata satisfies it while the file digest matches.
        let found = sample();
        assert_eq!(m.requires[0].unmet(Some(&found)), None);
        assert!(m.requires[0]
            .unmet(None)
            .expect("missing")
            .contains("missing"));
        let mut other = sample();
        other.files.get_mut("dir/f").expect("file").sha256 = "d".repeat(64);
        assert!(m.requires[0]
            .unmet(Some(&other))
            .expect("changed")
            .contains("recorded again"));

        for bad in [
            Requirement::new(&key()),
            Requirement::new(&parent).with_file("../x", "c".repeat(64)),
            Requirement::new(&parent).with_file("f", "xyz"),
            Requirement {
                fingerprint: "nope".into(),
                ..Requirement::new(&parent)
            },
        ] {
            let mut m = sample();
            m.requires.push(bad.clone());
            assert!(m.check(&key()).is_err(), "{bad:?} accepted");
        }
        let mut m = sample();
        m.requires = vec![Requirement::new(&parent), Requirement::new(&parent)];
        assert!(m.check(&key()).expect_err("twice").contains("twice"));
    }

    #[test]
    fn input_requires_tool_and_driver() {
        assert!(MetadataInput::new("", "local").check().is_err());
        assert!(MetadataInput::new("v", " ").check().is_err());
        assert!(MetadataInput::new("v", "lo\ncal").check().is_err());
        assert!(MetadataInput::new("v", "local").check().is_ok());
    }
}
