//! The file formats of bazel-diff, byte-compatible with upstream Tinder/bazel-diff.
//!
//! These formats are a versioned public contract: users keep hashes files from older
//! revisions, feed our files to upstream's tools and vice versa, and diff outputs across
//! tools. The names, separators and layout rules live in [`contract`]; any change to what is
//! written or accepted bumps [`contract::FORMAT_VERSION`].
//!
//! * Hashes file (spec 5.1): [`HashFile`], values are [`TargetHash`].
//! * Dep-edges file (5.2): [`read_dep_edges`], [`write_dep_edges`].
//! * Impacted targets, text (5.3) and JSON with distances (5.4): [`write_impacted_labels`],
//!   [`write_impacted_distances`]. Labels are ordered with [`cmp_utf16`].
//! * Content hash file (5.5): [`read_content_hashes`].
//!
//! Everything written uses Gson's pretty layout (two-space indent, `"key": value`, no HTML
//! escaping, no trailing newline) with map keys sorted, so outputs are deterministic.
//!
//! Output files are published with [`write_atomic`] / [`AtomicFile`]; [`Output`] is the
//! "file or stdout" destination of the CLIs.

mod atomic;
mod content_hashes;
pub mod contract;
mod error;
mod gson;
mod hashes;
mod impacted;
mod json_read;
mod label;
mod map;
mod target;

pub use atomic::{write_atomic, AtomicFile, Output, WriteError};
pub use content_hashes::{parse_content_hashes, read_content_hashes, ContentHashes};
pub use error::{ParseError, ReadError, ValueError};
pub use hashes::{
    format_hash_entries, parse_dep_edges, read_dep_edges, write_dep_edges, write_hash_entries,
    write_hash_entry_runs, DepEdges, HashEntry, HashFile,
};
pub use impacted::{write_impacted_distances, write_impacted_labels, ImpactedTarget};
pub use label::cmp_utf16;
pub use map::{Hashes, HashesIter};
pub use target::{TargetHash, TargetHashError, TargetType, TypeTag, UnknownTargetType};
