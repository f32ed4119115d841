//! The snapshot store of `bazel-diff-snap`: a local directory tree of immutable entries,
//! published crash-safely, read under locks, verifiable, and garbage-collected.
//!
//! ```text
//! <store>/<fingerprint>/<base-sha>/   one entry: the driver's files + metadata.json
//! <store>/.staging/<fp>-<sha>.<pid>.<random>/   entries being recorded
//! <store>/.locks/<fp>-<sha>.lock          entry lock
//! <store>/.locks/<fp>-<sha>.record.lock   record lock
//! <store>/.trash/                         entries being deleted
//! ```
//!
//! Guarantees, against the upstream findings (spec section 5):
//!
//! * **Atomic publication (F2).** An entry appears by a single `rename` of a fully written,
//!   digested, read-only and fsynced staging directory; `kill -9` or a power cut at any
//!   point leaves either no entry or a complete one. See [`Staging::publish`].
//! * **No in-place overwrite (F3).** A published entry is never modified: a second
//!   recorder of the same key gets [`Published::AlreadyExisted`]. Files are 0444 and
//!   directories 0555 to catch accidental writers (e.g. a VM opening its disk
//!   read-write, F1).
//! * **Strict keys (F9).** Keys are fixed-length lowercase hex, so they are plain path
//!   components; see [`EntryKey`].
//! * **Integrity and management (F30).** `metadata.json` records every file's size and
//!   SHA-256, the driver and the tool version; [`EntryReader::verify`], [`Store::gc`] and
//!   [`Store::remove`] provide verify, retention and deletion.
//! * **Dependencies.** An entry may require others (`requires` in its metadata, e.g. the
//!   parent of a Firecracker Diff snapshot, pinned by file digests): [`Store::gc`] never
//!   removes an entry that an entry it keeps requires, [`Store::verify_all`] reports an
//!   entry whose requirement is missing or different, and an object store fetches required
//!   entries along with their dependent. [`Store::remove`] does not check dependents.
//!
//! # Locking
//!
//! All locks are `flock(2)` locks on files in `.locks/`, released by the kernel when the
//! holder dies.
//!
//! | lock | shared by | exclusive by |
//! | --- | --- | --- |
//! | entry `<fp>-<sha>.lock` | [`EntryReader`] (for its lifetime); a publisher while it checks and renames | [`Store::remove`] and [`Store::gc`], *try-lock only*, while they rename the entry into `.trash/` |
//! | record `<fp>-<sha>.record.lock` | — | [`Staging`] (for its lifetime, blocking in [`Store::begin`]); `gc`, try-lock only, to prove a staging directory stale |
//!
//! So readers never wait for recorders, recorders of one key run one after the other,
//! deleters never wait at all, and an entry in use is never deleted. Deleting renames the
//! entry out of sight before removing any file, so a reader that opens the key afterwards
//! gets [`StoreError::NotFound`], never a half-deleted entry.

mod contract;
mod deps;
mod entry;
mod error;
mod fsutil;
mod gc;
mod key;
mod lock;
mod metadata;
mod staging;
mod store;
mod time;
mod tree;
mod units;

pub use contract::{
    DIR_MODE, ENTRY_LOCK_SUFFIX, FILE_MODE, FORMAT_VERSION, LOCKS_DIR, METADATA_FILE,
    RECORD_LOCK_SUFFIX, STAGING_DIR, STALE_AFTER, TRASH_DIR,
};
pub use deps::Dependencies;
pub use entry::{EntryInfo, EntryReader, EntryState, Problem, VerifyReport, VerifyStatus};
pub use error::{Result, StoreError};
pub use gc::{GcEntry, GcFailure, GcPath, GcPolicy, GcReason, GcReport};
pub use key::{validate_commit_sha, validate_fingerprint, EntryKey, InvalidKey, KeyPart};
pub use lock::FileLock;
pub use metadata::{FileRecord, Metadata, MetadataInput, Requirement};
pub use staging::{Published, Staging};
pub use store::{Removed, Store};
pub use time::rfc3339_utc;
pub use units::{
    format_duration, format_size, parse_duration, parse_size, ParseDurationError, ParseSizeError,
};
