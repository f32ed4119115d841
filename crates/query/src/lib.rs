//! Decoding of `bazel query`/`cquery` protobuf output.
//!
//! Owns the subset of Bazel's `build.proto` and `analysis_v2.proto` that bazel-diff reads,
//! and the framing of the three output shapes Bazel produces:
//! `--output=streamed_proto` (varint-length-delimited `Target`s), `--output=proto` (one
//! `QueryResult`, i.e. a sequence of field-1 `Target`s) and cquery's `CqueryResult`.
//! Decoding is incremental: a [`TargetStream`] yields targets while Bazel is still writing;
//! a [`FrameReader`] yields the undecoded messages (zero-copy slices of what was read) so
//! they can be decoded on other threads.
//!
//! Rule attributes are kept as their raw wire bytes: upstream hashes each attribute's
//! protobuf serialisation, and Bazel already serialises canonically, so slicing the bytes
//! out is both exact (unknown fields included) and cheaper than re-encoding.

pub mod proto;
mod stream;
mod view;

pub use stream::{decode_target, FrameReader, Framing, TargetStream};
pub use view::RuleView;

/// Errors while reading query output.
#[derive(Debug, thiserror::Error)]
pub enum QueryDecodeError {
    #[error("reading query output: {0}")]
    Io(#[from] std::io::Error),
    #[error("query output is truncated: message {index} declares {declared} bytes, only {available} arrived")]
    Truncated {
        index: u64,
        declared: u64,
        available: u64,
    },
    #[error("query output message {index} is not valid protobuf: {source}")]
    Decode {
        index: u64,
        #[source]
        source: prost::DecodeError,
    },
    #[error("query output message {index}: unexpected wire data ({what})")]
    Framing { index: u64, what: &'static str },
}
