//! The one error type of the bench library: every variant names the file or command it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`git {args}` in {dir} failed: {detail}")]
    Git {
        args: String,
        dir: PathBuf,
        detail: String,
    },
    #[error("invalid mutation `{spec}`: {reason}")]
    InvalidMutation { spec: String, reason: String },
    #[error("invalid generator config: {0}")]
    InvalidConfig(String),
    #[error("{dir} does not look like a generated bench workspace: {reason}")]
    NotAWorkspace { dir: PathBuf, reason: String },
    #[error("{0}")]
    Measure(String),
}

impl BenchError {
    pub fn msg(text: impl Into<String>) -> Self {
        BenchError::Measure(text.into())
    }
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;

/// Attach the operation and path to an I/O error.
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> BenchError {
    let path = path.into();
    move |source| BenchError::Io { op, path, source }
}
