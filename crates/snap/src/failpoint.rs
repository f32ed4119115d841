//! Fault injection for crash-safety tests: `BAZEL_DIFF_SNAP_FAILPOINT=<name>` makes the
//! process abort (as a `kill -9` would stop it) when it reaches that point.

pub const ENV: &str = "BAZEL_DIFF_SNAP_FAILPOINT";

pub fn hit(name: &str) {
    if std::env::var(ENV).is_ok_and(|v| v == name) {
        eprintln!("bazel-diff-snap: failpoint {name} reached, aborting");
        std::process::abort();
    }
}
