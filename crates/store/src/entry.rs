//! Reading entries: listing records, the locked reader, and verification.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rayon::prelude::*;
use serde::Serialize;

use crate::contract::METADATA_FILE;
use crate::error::{io_err, Result};
use crate::fsutil::age;
use crate::key::EntryKey;
use crate::lock::LockGuard;
use crate::metadata::{FileRecord, Metadata};
use crate::tree::{self, digest_file, kind_of, Kind};

/// One published entry as seen by a listing.
#[derive(Debug, Clone, Serialize)]
pub struct EntryInfo {
    #[serde(flatten)]
    pub key: EntryKey,
    /// The entry directory.
    pub path: PathBuf,
    /// Creation time from the metadata; the directory's mtime for a corrupt entry.
    pub created_unix: i64,
    /// Age at the time of the listing, in seconds.
    pub age_secs: u64,
    /// Bytes allocated on disk by the entry (blocks; sparse files count what they use).
    pub disk_bytes: u64,
    #[serde(flatten)]
    pub state: EntryState,
}

/// Whether an entry's metadata could be read.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum EntryState {
    /// The metadata parsed and describes this entry.
    Ok { metadata: Box<Metadata> },
    /// The entry cannot be used; `reason` says why. Remove it with `Store::remove` or
    /// `gc` with `remove_corrupt`.
    Corrupt { reason: String },
}

impl EntryInfo {
    /// The parsed metadata, `None` for a corrupt entry.
    pub fn metadata(&self) -> Option<&Metadata> {
        match &self.state {
            EntryState::Ok { metadata } => Some(metadata),
            EntryState::Corrupt { .. } => None,
        }
    }

    /// Why the entry is corrupt, `None` if it is not.
    pub fn corruption(&self) -> Option<&str> {
        match &self.state {
            EntryState::Ok { .. } => None,
            EntryState::Corrupt { reason } => Some(reason),
        }
    }

    /// Whether the entry is corrupt.
    pub fn is_corrupt(&self) -> bool {
        self.corruption().is_some()
    }

    /// Age at `now` (zero if created in the future).
    pub fn age(&self, now: SystemTime) -> Duration {
        age(self.created_unix, now)
    }
}

/// Result of reading an entry's metadata.
pub(crate) enum Load {
    Ok(Box<Metadata>),
    Corrupt(String),
    /// The entry disappeared (removed concurrently): not an entry any more.
    Vanished,
}

/// Reads and checks the metadata of the entry at `path`. Anything wrong with the entry
/// itself is `Corrupt`; only failures to look at the store are errors.
pub(crate) fn load_metadata(path: &Path, key: &EntryKey) -> Result<Load> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Load::Vanished),
        Err(e) => return Err(io_err("stat", path)(e)),
    };
    match kind_of(&meta) {
        Kind::Dir => {}
        Kind::File { .. } => {
            return Ok(Load::Corrupt("the entry is a file, not a directory".into()))
        }
        Kind::Other(kind) => {
            return Ok(Load::Corrupt(format!(
                "the entry is a {kind}, not a directory"
            )))
        }
    }
    let file = path.join(METADATA_FILE);
    let mut text = Vec::new();
    let read = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&file)
        .and_then(|mut f| f.read_to_end(&mut text));
    match read {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(if path.exists() {
                Load::Corrupt(format!(
                    "{METADATA_FILE} is missing (an unfinished or foreign directory)"
                ))
            } else {
                Load::Vanished
            });
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(Load::Corrupt(format!("{METADATA_FILE} is a symlink")));
        }
        Err(e) => {
            return Ok(Load::Corrupt(format!(
                "{METADATA_FILE} cannot be read: {e}"
            )))
        }
    }
    let metadata: Metadata = match serde_json::from_slice(&text) {
        Ok(metadata) => metadata,
        Err(e) => return Ok(Load::Corrupt(format!("{METADATA_FILE} is not valid: {e}"))),
    };
    Ok(match metadata.check(key) {
        Ok(()) => Load::Ok(Box::new(metadata)),
        Err(reason) => Load::Corrupt(format!("{METADATA_FILE}: {reason}")),
    })
}

/// A published entry opened for use. Holds the key's entry lock in shared mode, so `gc`
/// and `remove` leave the entry alone until this is dropped; any number of readers (and a
/// concurrent recorder of the same key) proceed in parallel.
#[derive(Debug)]
pub struct EntryReader {
    key: EntryKey,
    path: PathBuf,
    metadata: Box<Metadata>,
    _lock: LockGuard,
}

impl EntryReader {
    pub(crate) fn new(
        key: EntryKey,
        path: PathBuf,
        metadata: Box<Metadata>,
        lock: LockGuard,
    ) -> Self {
        Self {
            key,
            path,
            metadata,
            _lock: lock,
        }
    }

    /// The entry's key.
    pub fn key(&self) -> &EntryKey {
        &self.key
    }

    /// The entry directory. Everything in it is read-only; never open a file for writing
    /// (clone it, e.g. with a reflink, into a run directory instead).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The entry's metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Path of a file listed in the metadata (`/`-separated relative name), `None` if the
    /// entry does not list it.
    pub fn file(&self, rel: &str) -> Option<PathBuf> {
        self.metadata
            .files
            .contains_key(rel)
            .then(|| self.path.join(rel))
    }

    /// Full check: every listed file exists with its recorded size and SHA-256, and no
    /// unlisted file is present. Reads every byte (seconds per GiB of memory image), so
    /// use it after recording, in `verify` commands and periodic audits — not on the hot
    /// path of a consume.
    pub fn verify(&self) -> Result<Vec<Problem>> {
        verify_entry(&self.path, &self.metadata, true)
    }

    /// Cheap check for the hot path of a consume: every listed file exists, is a regular
    /// file and has its recorded size. Stat calls only; catches truncation and deletion,
    /// not flipped bytes or extra files.
    pub fn verify_quick(&self) -> Result<Vec<Problem>> {
        verify_entry(&self.path, &self.metadata, false)
    }
}

/// Something wrong with one file of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Problem {
    /// A listed file does not exist.
    Missing { path: String },
    /// A listed file is a directory, symlink or special file.
    NotAFile { path: String, kind: &'static str },
    /// A listed file has another length.
    SizeMismatch {
        path: String,
        expected: u64,
        actual: u64,
    },
    /// A listed file has other content.
    DigestMismatch {
        path: String,
        expected: String,
        actual: String,
    },
    /// A file (or symlink, or special file) that the metadata does not list.
    Unexpected { path: String },
    /// A listed file could not be read.
    Unreadable { path: String, error: String },
    /// An entry this one requires (`requires` in `metadata.json`) is missing, corrupt or
    /// other than the one this entry was built on: this entry cannot be used.
    Requirement { required: String, reason: String },
}

impl Problem {
    /// The entry-relative path the problem is about.
    pub fn path(&self) -> &str {
        match self {
            Problem::Missing { path }
            | Problem::NotAFile { path, .. }
            | Problem::SizeMismatch { path, .. }
            | Problem::DigestMismatch { path, .. }
            | Problem::Unexpected { path }
            | Problem::Unreadable { path, .. } => path,
            // Requirements are declared in the metadata.
            Problem::Requirement { .. } => METADATA_FILE,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing { path } => write!(f, "{path}: missing"),
            Problem::NotAFile { path, kind } => {
                write!(f, "{path}: is a {kind}, expected a regular file")
            }
            Problem::SizeMismatch {
                path,
                expected,
                actual,
            } => {
                write!(f, "{path}: size is {actual} bytes, expected {expected}")
            }
            Problem::DigestMismatch {
                path,
                expected,
                actual,
            } => {
                write!(f, "{path}: sha256 is {actual}, expected {expected}")
            }
            Problem::Unexpected { path } => write!(f, "{path}: not listed in {METADATA_FILE}"),
            Problem::Unreadable { path, error } => write!(f, "{path}: cannot be read: {error}"),
            Problem::Requirement { required, reason } => {
                write!(f, "requires the entry {required}: {reason}")
            }
        }
    }
}

/// Outcome of verifying one entry in [`Store::verify_all`](crate::Store::verify_all).
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    #[serde(flatten)]
    pub key: EntryKey,
    pub path: PathBuf,
    #[serde(flatten)]
    pub status: VerifyStatus,
}

/// See [`VerifyReport`].
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum VerifyStatus {
    /// Every file matches the metadata.
    Ok,
    /// The entry is readable but its files do not match.
    Problems { problems: Vec<Problem> },
    /// The metadata is missing or unusable.
    Corrupt { reason: String },
    /// The entry could not be examined (lock timeout, I/O error).
    Failed { error: String },
}

impl VerifyReport {
    /// Whether the entry verified cleanly.
    pub fn is_ok(&self) -> bool {
        matches!(self.status, VerifyStatus::Ok)
    }
}

pub(crate) fn verify_entry(path: &Path, metadata: &Metadata, full: bool) -> Result<Vec<Problem>> {
    let mut problems: Vec<Problem> = metadata
        .files
        .par_iter()
        .filter_map(|(rel, record)| check_file(path, rel, record, full))
        .collect();
    if full {
        let nodes = tree::walk(path).map_err(io_err("list the entry", path))?;
        for node in nodes {
            if node.kind == Kind::Dir {
                continue;
            }
            let rel = node.rel.to_string_lossy();
            if rel != METADATA_FILE && !metadata.files.contains_key(rel.as_ref()) {
                problems.push(Problem::Unexpected {
                    path: rel.into_owned(),
                });
            }
        }
    }
    problems.sort_by(|a, b| a.path().cmp(b.path()));
    Ok(problems)
}

fn check_file(entry: &Path, rel: &str, record: &FileRecord, full: bool) -> Option<Problem> {
    let abs = entry.join(rel);
    let path = || rel.to_owned();
    let meta = match fs::symlink_metadata(&abs) {
        Ok(meta) => meta,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return Some(Problem::Missing { path: path() });
        }
        Err(e) => {
            return Some(Problem::Unreadable {
                path: path(),
                error: e.to_string(),
            })
        }
    };
    let size = match kind_of(&meta) {
        Kind::File { size, .. } => size,
        Kind::Dir => {
            return Some(Problem::NotAFile {
                path: path(),
                kind: "directory",
            })
        }
        Kind::Other(kind) => return Some(Problem::NotAFile { path: path(), kind }),
    };
    if size != record.size {
        return Some(Problem::SizeMismatch {
            path: path(),
            expected: record.size,
            actual: size,
        });
    }
    if !full {
        return None;
    }
    match digest_file(&abs) {
        Ok((_, digest)) if digest == record.sha256 => None,
        Ok((_, digest)) => Some(Problem::DigestMismatch {
            path: path(),
            expected: record.sha256.clone(),
            actual: digest,
        }),
        Err(e) => Some(Problem::Unreadable {
            path: path(),
            error: e.to_string(),
        }),
    }
}
