//! The bazel-diff hashing engine.
//!
//! Turns decoded query targets into per-target digests exactly as upstream bazel-diff does
//! (spec section 4), so hash files from either tool can be compared. The engine is fed
//! incrementally ([`GraphBuilder::add`]) while Bazel is still streaming, pushes the
//! expensive per-target work (file reads, attribute digests) onto the rayon pool right away,
//! and finishes the graph-wide part (seeds, recursion over rule inputs) in
//! [`GraphBuilder::finish`].
//!
//! Knowing departures from upstream (documented in the README):
//! * `package_group` targets are hashed as synthetic `package_group` rules, and a rule whose
//!   `visibility` names a package group depends on it, so visibility changes are noticed
//!   (upstream 37.0.0 drops package groups: issue #441).

mod graph;
mod rule;
mod source;
mod splice;
mod state;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

pub use graph::{keep_until_exit, GraphBuilder, HashedTarget, TargetKind};
pub use source::{exec_byte, file_digest_key, SourceHasher};
pub use splice::package_of_label;
pub use state::{GraphState, Refusal, StateError, FORMAT_VERSION as GRAPH_STATE_VERSION};

/// Bumped whenever a change here can change any hash value: it is part of the tool version
/// the snapshot fingerprint covers, so snapshots recorded by an older engine are never reused.
pub const ALGORITHM_VERSION: u32 = 1;

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// SHA-256 of the empty string, upstream's value for "nothing hashed".
pub const EMPTY_DIGEST: Digest = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// Finds the on-disk root of an external repository (only needed for fine-grained repos).
pub trait RepoRoots: Send + Sync {
    fn root(&self, repo: &str) -> PathBuf;
}

/// Everything that influences hashes besides the query output itself.
pub struct HashConfig {
    /// Workspace root; source labels resolve against it by string join (spec 4.4).
    pub workspace: PathBuf,
    /// The global seed `S` (spec 4.2).
    pub seed: Digest,
    /// Fine-grained external repos, exactly as given (with `@`), in set order.
    pub fine_grained_repos: Vec<String>,
    /// `--contentHashPath`: lookup key to a content hash string used instead of file bytes.
    pub content_hashes: HashMap<String, String>,
    /// `--modified-filepaths`: when non-empty, only these files' contents are read.
    pub modified_files: HashSet<PathBuf>,
    /// Attribute names excluded from rule digests besides `generator_location`.
    pub ignored_attributes: HashSet<String>,
    /// Rules carrying one of these tags get `salt` mixed into their direct hash.
    pub always_affected_tags: HashSet<String>,
    /// Per-run salt for always-affected rules (a random UUID upstream).
    pub salt: String,
    /// Inputs are `configured_rule_input` (cquery) rather than `rule_input`.
    pub use_cquery: bool,
    /// Record dependency edges for `--depEdgesFile`.
    pub track_deps: bool,
    /// Resolves fine-grained repo roots.
    pub repo_roots: Option<Box<dyn RepoRoots>>,
}

impl HashConfig {
    /// A configuration with upstream's defaults for the given workspace.
    pub fn new(workspace: impl Into<PathBuf>) -> Self {
        HashConfig {
            workspace: workspace.into(),
            seed: EMPTY_DIGEST,
            fine_grained_repos: Vec::new(),
            content_hashes: HashMap::new(),
            modified_files: HashSet::new(),
            ignored_attributes: HashSet::new(),
            always_affected_tags: HashSet::new(),
            salt: String::new(),
            use_cquery: false,
            track_deps: false,
            repo_roots: None,
        }
    }
}

/// Failures of the hashing engine.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("Circular dependency detected: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    #[error("Unexpected generating rule {rule} for {file}: the rule is not in the query result (Not possible to traverse the build graph)")]
    MissingGeneratingRule { file: String, rule: String },
    #[error("reading source file {path} (target {label}): {source}")]
    SourceRead {
        label: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("target {label}: attribute is not valid protobuf")]
    BadAttribute { label: String },
    /// A target message decoded on the pool (see [`GraphBuilder::add_message`]).
    #[error("decoding the query output: {0}")]
    Decode(#[source] bazel_diff_query::QueryDecodeError),
}

/// Java's `String.compareTo` order (UTF-16 code units), upstream's order for labels, paths
/// and attribute names; one implementation for the whole project.
pub use bazel_diff_format::cmp_utf16 as java_cmp;

/// Lowercase hex of a digest.
pub fn to_hex(digest: &Digest) -> String {
    hex::encode(digest)
}
