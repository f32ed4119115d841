//! consume's incremental paths (issue 6) against real git and Bazel: a change that adds a
//! package and edits a source takes the package-local path (only the affected packages are
//! queried on the warm server), `--verify` confirms it against the full query, and the
//! answer equals a cold `bazel-diff` run.

#![allow(clippy::unwrap_used)]

mod support;

use std::fs;

use support::{read_json, require_bazel, Lab};

#[test]
fn package_local_consume_matches_cold_and_verifies() {
    let Some(bazel) = require_bazel() else { return };
    let lab = Lab::new(&bazel);
    let (c3, c4) = (lab.sha("c3"), lab.sha("c4"));
    lab.record(&c3, &[]).success();

    // c4 edits app/main.txt and adds the package //extra.
    let out = lab.out("impacted.txt");
    let json = lab.out("report.json");
    let report_arg = json.display().to_string();
    let run = lab
        .consume(
            &c4,
            &out,
            &["--base-sha", &c3, "--verify", "--json", &report_arg],
        )
        .success();
    let report = read_json(&json);
    let notes = &report["driver_notes"];
    assert!(
        notes["incremental"]
            .as_str()
            .unwrap()
            .contains("1 modified, 2 added, 0 deleted"),
        "{report:#}"
    );
    assert_eq!(notes["verified"], true, "{report:#}");
    assert!(run.stderr.contains("package-local path"), "{run}");
    let cold = lab.cold_impacted(&bazel, &c3, &c4, &[]);
    assert_eq!(
        String::from_utf8_lossy(&fs::read(&out).unwrap()),
        String::from_utf8_lossy(&cold),
        "consume differs from cold bazel-diff"
    );
    let impacted = String::from_utf8_lossy(&cold).into_owned();
    assert!(impacted.contains("//extra:extra"), "{impacted}");
}
