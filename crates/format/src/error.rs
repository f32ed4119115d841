//! Errors of the readers.

use std::io;
use std::path::PathBuf;

use crate::target::TargetHashError;

/// Why a file could not be loaded. `Io` means the file could not be read at all (upstream
/// treats that as a usage error); `Parse` means its content is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {what} file {}: {source}", path.display())]
    Io {
        /// Which format was expected, e.g. "hashes".
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid {what} file {}: {source}", path.display())]
    Parse {
        /// Which format was expected, e.g. "hashes".
        what: &'static str,
        path: PathBuf,
        #[source]
        source: ParseError,
    },
}

/// Why some bytes are not a valid instance of a format.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("expected a JSON object at the top level, found {found}")]
    NotAnObject { found: &'static str },
    /// The value stored under `key` (a label, or a path for content hashes) is wrong.
    #[error("bad value for \"{key}\": {source}")]
    BadValue {
        key: String,
        #[source]
        source: ValueError,
    },
    /// A structural field of the metadata shape has the wrong type.
    #[error("\"{field}\" must be {expected}, found {found}")]
    BadField {
        field: &'static str,
        expected: &'static str,
        found: &'static str,
    },
}

/// What is wrong with one value.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    #[error("expected {expected}, found {found}")]
    WrongType {
        expected: &'static str,
        found: &'static str,
    },
    #[error(transparent)]
    TargetHash(#[from] TargetHashError),
}
