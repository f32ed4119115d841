//! Where things live: the Bazel workspace in a subdirectory of the git repository (upstream
//! passed `--workspace` to both git and `bazel-diff -w`, so that worked), and a store path
//! with a space in it.

#![allow(clippy::unwrap_used)]

mod support;

use std::fs;

use support::{lines, require_bazel, Lab};

/// Bug: the store's worktree is checked out at the repository's top level and bazel-diff is
/// run there (`-w <worktree>`), not in the subdirectory `--workspace` names. A Bazel
/// workspace below the repository root (a monorepo's `bazel/`) therefore fails: warmup
/// runs `bazel query` outside any WORKSPACE and record exits 1 ("The 'query' command is only
/// supported from within a workspace").
#[test]
fn a_workspace_below_the_repository_root_works() {
    let Some(bazel) = require_bazel() else { return };
    let lab = Lab::new(&bazel);
    // Move the whole workspace into proj/ and add a file outside it.
    fs::create_dir_all(lab.ws.join("proj")).unwrap();
    for name in ["WORKSPACE", "tools", "lib", "app", "extra"] {
        lab.git(&["mv", name, "proj/"]);
    }
    lab.write("README", "a repository with a Bazel workspace in proj/\n");
    lab.git(&["add", "-A"]);
    lab.git(&["commit", "-q", "-m", "move into proj/"]);
    let base = lab.git(&["rev-parse", "HEAD"]);
    lab.write("proj/lib/in.txt", "changed below the root\n");
    lab.git(&["commit", "-q", "-am", "change"]);
    let target = lab.git(&["rev-parse", "HEAD"]);

    let proj = lab.ws.join("proj");
    let mut record = vec!["record".to_owned()];
    record.extend(lab.common_for(&proj));
    record.extend(["--base-sha".to_owned(), base.clone()]);
    lab.snap(&record).success();
    let out = lab.out("impacted.txt");
    lab.consume_in(&proj, &target, &out, &["--base-sha", &base])
        .success();
    let impacted = lines(&fs::read(&out).unwrap());
    assert!(impacted.contains(&"//lib:gen".to_owned()), "{impacted:?}");
}

/// Regression: the local driver once passed its output root through `-so`, which bazel-diff
/// splits on spaces, so a store path with a space started a Bazel server OUTSIDE the store
/// (at the path cut at the space). Bazel itself refuses workspaces and output roots whose
/// paths contain spaces, so such a store is now refused up front with a clear message,
/// before any Bazel runs.
#[test]
fn a_store_path_with_a_space_is_refused_before_bazel_runs() {
    let Some(bazel) = require_bazel() else { return };
    let mut lab = Lab::new(&bazel);
    lab.store = lab.root.join("my store");
    // Where the cut path puts the stray server, so the lab shuts it down.
    lab.register_output_root(&lab.root.join("my"));
    let (c0, c1) = (lab.sha("c0"), lab.sha("c1"));
    let run = lab.record(&c0, &[]);
    assert!(
        !lab.root.join("my").exists(),
        "Bazel state was written outside the store:\n{run}"
    );
    let run = run.exit(1);
    assert!(run.stderr.contains("space"), "{run}");
    lab.consume(&c1, &lab.out("impacted.txt"), &["--base-sha", &c0])
        .exit(1);
}
