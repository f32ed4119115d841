//! The on-disk contract of the store: names, modes and versions, in one place.
//!
//! A store outlives the binary that wrote it (CI caches, shared runners), so everything
//! here is a compatibility promise. Changing the meaning of `metadata.json` means bumping
//! [`FORMAT_VERSION`]; readers treat entries with a newer version as corrupt rather than
//! guessing.

use std::time::Duration;

/// Version of `metadata.json` written by this crate; entries with another version are
/// reported as corrupt (a newer binary may add fields whose meaning we cannot check).
pub const FORMAT_VERSION: u32 = 1;

/// The file the store writes into every entry; a staging directory must not contain it.
pub const METADATA_FILE: &str = "metadata.json";

/// Internal directory holding entries being recorded: `<fp>-<sha>.<pid>.<random>`.
pub const STAGING_DIR: &str = ".staging";
/// Internal directory holding the lock files: `<fp>-<sha>.lock`, `<fp>-<sha>.record.lock`.
pub const LOCKS_DIR: &str = ".locks";
/// Internal directory entries are renamed into before they are deleted.
pub const TRASH_DIR: &str = ".trash";

/// Suffix of the entry lock (readers shared, deleters exclusive).
pub const ENTRY_LOCK_SUFFIX: &str = ".lock";
/// Suffix of the record lock (held exclusively by a recorder for its whole staging).
pub const RECORD_LOCK_SUFFIX: &str = ".record.lock";

/// Mode of every published file: a snapshot is immutable once published (finding F3).
pub const FILE_MODE: u32 = 0o444;
/// Mode of every published directory, the entry directory included.
pub const DIR_MODE: u32 = 0o555;

/// A staging or trash directory whose name cannot be attributed to a key and process is
/// considered abandoned once it is this old.
pub const STALE_AFTER: Duration = Duration::from_secs(3600);
