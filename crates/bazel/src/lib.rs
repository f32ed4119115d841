//! Running Bazel: query invocations, feature detection, and the identity of the binary.

pub mod identity;
