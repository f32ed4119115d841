//! Helpers shared by the end-to-end test suites: finding the Bazel to test against, and the
//! project rule that tests needing Bazel fail (never skip) on CI.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Where to look for Bazel: `$BAZEL_DIFF_TEST_BAZEL`, else `bazel` on PATH.
pub fn find_bazel() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("BAZEL_DIFF_TEST_BAZEL").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("bazel"))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The Bazel to test against. When there is none (or it cannot even print its version), a
/// test that needs it FAILS on CI (`CI=true`) and is skipped elsewhere; call it as
/// `let Some(bazel) = require_bazel() else { return };`.
pub fn require_bazel() -> Option<PathBuf> {
    let found = find_bazel().filter(|bazel| {
        // `--version` is answered by the client alone: no server is started.
        Command::new(bazel)
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    match found {
        Some(bazel) => Some(bazel),
        None if std::env::var("CI").as_deref() == Ok("true") => panic!(
            "CI=true but no working Bazel was found (set BAZEL_DIFF_TEST_BAZEL or put `bazel` \
             on PATH); tests that need Bazel must not be skipped on CI"
        ),
        None => {
            eprintln!(
                "note: skipping this test: no working `bazel` on PATH (set \
                 BAZEL_DIFF_TEST_BAZEL to run it; on CI=true this is a failure)"
            );
            None
        }
    }
}

mod s3;
pub use s3::{require_moto, S3Server};

/// Gives the owner full rights on `path` and, recursively, on everything below it: Bazel
/// leaves read-only trees (output bases, install dirs) that a temp dir cannot be removed with.
/// Symlinks are not followed; errors are ignored (best-effort cleanup).
pub fn make_writable(path: &std::path::Path) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.file_type().is_symlink() {
        return;
    }
    let _ = std::fs::set_permissions(
        path,
        std::fs::Permissions::from_mode(meta.permissions().mode() | 0o700),
    );
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
            make_writable(&entry.path());
        }
    }
}
