//! Benchmark support for bazel-diff: a generator of large synthetic Bazel workspaces
//! ([`gen`]), the mutations that turn one revision into the next ([`mutate`]), and committing
//! them reproducibly ([`git`]). The `bazel-diff-bench` binary is a thin CLI over this.

pub mod error;
pub mod fc_store;
pub mod gen;
pub mod git;
pub mod hashing;
pub mod incremental;
pub mod measure;
pub mod mutate;
pub mod repo;
pub mod rng;
pub mod snapshot;

pub use error::{BenchError, Result};
pub use gen::{generate, GenConfig, GenSummary};
pub use mutate::{apply_mutation, Mutation, MutationReport};
pub use repo::{generate_repo, CommitInfo};
pub use rng::Rng;
