//! The shared snapshot store: entries of `bazel-diff-snap` on object storage (S3 and
//! S3-compatible servers), as content-addressed chunks plus one small manifest per entry,
//! with a local chunk cache in front and lazy, verified reads.
//!
//! ```text
//! <prefix>/chunks/<aa>/<blake3>            zstd-compressed chunk; <aa> = first two hex digits
//! <prefix>/entries/<fingerprint>/<sha>.json  manifest of one entry (published last)
//! <prefix>/trash/<fingerprint>/<sha>.json    manifest removed by gc, kept one grace period
//! ```
//!
//! `bazel-diff-snap` works through [`Backend`]: the local directory store, or
//! [`ObjectBackend`] (an object store with a local store as its cache), so the rest of the
//! tool only ever opens local, locked, verified entries.
//!
//! # Chunking
//!
//! Two chunkers, chosen per file by [`Chunking::for_file`]:
//!
//! * **Fixed 256 KiB chunks** for memory and disk images (any file of at least 64 MiB whose
//!   size is a whole number of 4 KiB pages). Guest memory and block devices change in place,
//!   page by page: nothing is ever inserted, so offsets never shift and content-defined cut
//!   points would buy nothing while costing a rolling hash over gigabytes. A fixed grid also
//!   lets a userfaultfd handler map a faulting address to its chunk with one division. The
//!   size is measured (`examples/remote_bench.rs`, 1 GiB image, 3% of pages rewritten in
//!   runs of 1-64 pages): 256 KiB chunks share 91% of the next image, 1 MiB 77%, 4 MiB 39%;
//!   smaller chunks also fetch less on a lazy restore. The cost is objects: 4096 per GiB.
//! * **Content-defined chunks** (FastCDC, 16 KiB min / 64 KiB average / 256 KiB max) for
//!   everything else: hash files and graph state are sorted JSON and serialized graphs, where
//!   one new target inserts bytes and shifts everything after it; CDC cut points
//!   re-synchronize right after the edit, so only the chunks around it change.
//!
//! Chunks are named by their BLAKE3 digest (of the uncompressed bytes), compressed with zstd
//! and stored once, whichever entry or file they come from.
//!
//! # Publication and reading
//!
//! A record uploads every chunk first and the manifest last, as one `PUT` (atomic on S3):
//! a manifest is never visible before all its chunks are. A reader checks every chunk against
//! its digest (and length) on every read, from the server or the cache; a missing or bad
//! chunk makes the entry unusable ([`RemoteError::BadChunk`], [`RemoteError::MissingChunk`]),
//! never a wrong answer.
//!
//! # Lazy guest memory
//!
//! [`LazyPages`] serves one file of an entry to the userfaultfd handler of `bazel-diff-uffd`
//! (it implements its `PageSource`): a chunk is fetched on the first fault or prefetch that
//! needs it, once, verified like any read, and kept in a local backing file the handler
//! copies from. [`SharedStore::open_lazily`] fetches the rest of the entry for such a
//! restore.
//!
//! # Required entries
//!
//! An entry's metadata may name entries it cannot be used without (a Firecracker Diff
//! snapshot's parent). [`SharedStore::push`] uploads those first when the store lacks them,
//! and [`SharedStore::materialize`] fetches them along with the entry, after checking each
//! required manifest against the requirement (key and pinned file digests), roots first.
//!
//! # Garbage collection: mark and sweep with a grace period
//!
//! [`Remote::gc`] (1) lists chunks with their modification times, (2) applies the retention
//! rules to manifests, keeping every entry a kept entry requires (`requires` in its
//! metadata: a Diff snapshot's parents), moving removed ones to `trash/`, (3) marks every chunk named by a live
//! manifest or by a trash manifest younger than the grace period (so a consume that read a
//! manifest just before gc removed it can still fetch its chunks), and (4) deletes the
//! unmarked chunks whose modification time, checked again right before the delete, is older
//! than the grace period.
//!
//! The grace period protects a record running concurrently, whose chunks are up but whose
//! manifest is not. A record re-uploads (refreshes) any chunk it reuses that is older than
//! [`REFRESH_AFTER`], and refuses to publish a manifest more than [`RECORD_WINDOW`] after it
//! started checking chunks; gc stops deleting [`GC_WINDOW`] after it started. So a chunk a
//! record relies on is at most `REFRESH_AFTER + RECORD_WINDOW + GC_WINDOW` (18 h) old when
//! a gc that missed the manifest could delete it, and the default grace
//! ([`DEFAULT_GRACE`], 24 h) is longer. A shorter `--grace` is only safe when no record is
//! running (tests use `0s` to sweep after a killed upload).

mod backend;
mod cache;
mod chunk;
mod contract;
mod error;
mod gc;
mod manifest;
mod pages;
mod progress;
mod remote;
mod runtime;

pub use backend::{Backend, ObjectBackend};
pub use cache::{CacheStats, ChunkCache};
pub use chunk::{chunk_digest, split, ChunkSpan, Chunking};
pub use contract::{
    DEFAULT_GRACE, GC_WINDOW, MANIFEST_FORMAT_VERSION, RECORD_WINDOW, REFRESH_AFTER,
};
pub use error::{RemoteError, Result};
pub use gc::{RemoteGcPolicy, RemoteGcReport};
pub use manifest::{ChunkRef, FileManifest, Manifest};
pub use pages::{LazyEntry, LazyPages};
pub use remote::{
    is_object_store_url, EntryListing, FetchStats, LazyFile, PushReport, Remote, SharedStore,
};
