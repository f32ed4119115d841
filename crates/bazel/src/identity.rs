//! Identity of the Bazel binary (version, or a digest where Bazel reports none).
