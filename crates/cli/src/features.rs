//! Feature gates by Bazel version (spec 3.3). A Bazel that reports no version (Debian's
//! build) gets the conservative choices instead of a failure.

use bazel_diff_bazel::{identity, Bazel};

pub struct CqueryFeatures {
    pub streamed_proto: bool,
    pub consistent_labels: bool,
}

pub fn cquery_features(bazel: &Bazel) -> CqueryFeatures {
    let version = match identity::bazel_identity(&bazel.binary, &bazel.workspace) {
        Ok(v) => v.version,
        Err(e) => {
            tracing::info!("Bazel reports no version ({e}); using cquery --output=proto");
            None
        }
    };
    CqueryFeatures {
        streamed_proto: version.is_some_and(|v| v >= (7, 0, 0)),
        consistent_labels: version.is_some_and(|v| v >= (7, 1, 0)),
    }
}
