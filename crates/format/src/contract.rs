//! The names, separators and layout rules of the file formats, in one place.
//!
//! Everything here is observable in files that users keep, diff and feed to upstream
//! bazel-diff, so changing any of it is a breaking change of the format contract: bump
//! [`FORMAT_VERSION`] and say so in the changelog.

/// Version of the file-format contract implemented by this crate. Bumped on any change to
/// the bytes written or to what is accepted on read.
pub const FORMAT_VERSION: u32 = 1;

/// The upstream bazel-diff release whose formats these are byte-compatible with.
pub const UPSTREAM_VERSION: &str = "37.0.0";

/// Separates the optional target type from the digests in a hash value (`Rule#...`).
pub const TYPE_SEPARATOR: char = '#';

/// Separates the overall digest from the direct digest in a hash value (`<overall>~<direct>`).
pub const HASH_SEPARATOR: char = '~';

/// Type names as they appear in hash values and in `--targetType`.
pub const RULE: &str = "Rule";
/// See [`RULE`].
pub const SOURCE_FILE: &str = "SourceFile";
/// See [`RULE`].
pub const GENERATED_FILE: &str = "GeneratedFile";

/// Top-level key of the label-to-hash map in the metadata shape of a hashes file.
pub const HASHES_KEY: &str = "hashes";
/// Top-level key of the metadata object in the metadata shape of a hashes file.
pub const METADATA_KEY: &str = "metadata";
/// Metadata key holding the raw `bazel mod graph --output=json` text.
pub const MODULE_GRAPH_JSON_KEY: &str = "moduleGraphJson";
/// Metadata key holding dependency edges (written by upstream's `serve`).
pub const DEP_EDGES_KEY: &str = "depEdges";

/// Field names of one entry of the impacted-targets JSON, in their written order.
pub const LABEL_KEY: &str = "label";
/// See [`LABEL_KEY`].
pub const TARGET_DISTANCE_KEY: &str = "targetDistance";
/// See [`LABEL_KEY`].
pub const PACKAGE_DISTANCE_KEY: &str = "packageDistance";

/// One level of indentation in written JSON (Gson's pretty printing).
pub const INDENT: &str = "  ";

/// Output path argument that means "standard output".
pub const STDOUT_ARG: &str = "-";
