//! Names and time limits of the object-store layout, in one place: a bucket outlives the
//! binary that wrote it, so these are compatibility promises.

use std::time::Duration;

/// Version of the manifest JSON; manifests of another version are unusable (not guessed at).
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// Directory of the chunks under the store prefix.
pub(crate) const CHUNKS_DIR: &str = "chunks";
/// Directory of the live manifests.
pub(crate) const ENTRIES_DIR: &str = "entries";
/// Directory of manifests removed by gc, kept for one grace period.
pub(crate) const TRASH_DIR: &str = "trash";

/// A record re-uploads a chunk it reuses when the stored copy is older than this, so gc's
/// grace period counts from the record's use of it.
pub const REFRESH_AFTER: Duration = Duration::from_secs(6 * 3600);
/// Longest time between a record's first chunk check and its manifest upload; past it the
/// record fails instead of publishing (a concurrent gc may have swept its chunks).
pub const RECORD_WINDOW: Duration = Duration::from_secs(6 * 3600);
/// gc stops deleting chunks this long after it started (its listing is getting stale).
pub const GC_WINDOW: Duration = Duration::from_secs(6 * 3600);
/// Default grace period of gc: longer than `REFRESH_AFTER + RECORD_WINDOW + GC_WINDOW`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Requests in flight at once (chunk uploads, downloads, existence checks): object stores
/// answer each request in tens of milliseconds, so throughput comes from parallelism.
pub(crate) const CONCURRENCY: usize = 16;
