//! Crash safety (scenario 5: a record aborted at each failpoint leaves no entry) and real
//! concurrency (scenario 6: simultaneous records of one base publish one entry; gc running
//! while a consume uses an entry leaves that entry alone).

#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::{lines, next_second, read_dir_paths, require_bazel, wait_for, Lab};

const FAILPOINTS: [&str; 3] = ["after-begin", "after-warmup", "before-publish"];
const SIGABRT: i32 = 6;

fn record_args(lab: &Lab, bazel: &Path, rev: &str) -> Vec<String> {
    let mut args = vec!["record".to_owned()];
    args.extend(lab.common_with(&lab.ws, bazel));
    args.extend(["--base-sha".to_owned(), rev.to_owned()]);
    args
}

fn bases_of(items: &Value) -> Vec<String> {
    let mut bases: Vec<String> = items
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["base_sha"].as_str().unwrap().to_owned())
        .collect();
    bases.sort();
    bases
}

#[test]
fn a_record_killed_at_any_failpoint_leaves_no_entry_and_can_be_redone() {
    let Some(bazel) = require_bazel() else { return };
    let lab = Lab::new(&bazel);
    let (c0, c1) = (lab.sha("c0"), lab.sha("c1"));
    let out = lab.out("impacted.txt");

    for failpoint in FAILPOINTS {
        let run = lab.snap_env(
            &record_args(&lab, &bazel, &c0),
            &[("BAZEL_DIFF_SNAP_FAILPOINT", failpoint)],
        );
        assert!(!run.status.success(), "{run}");
        assert_eq!(
            run.signal(),
            Some(SIGABRT),
            "aborted like a kill -9:\n{run}"
        );
        assert!(
            run.stderr
                .contains(&format!("failpoint {failpoint} reached")),
            "{run}"
        );

        assert!(lab.list().is_empty(), "after {failpoint}");
        assert!(
            lab.entry_dirs().is_empty(),
            "a half entry is visible after {failpoint}: {:?}",
            lab.entry_dirs()
        );
        assert!(read_dir_paths(&lab.store.join(".trash")).is_empty());
        lab.verify(&[]).success();
        assert_eq!(lab.resolve(&c1, &["--base-sha", &c0])["usable"], false);
        lab.consume(&c1, &out, &["--base-sha", &c0]).exit(2);
    }
    // What the aborted runs left is out of sight, in .staging.
    let staged = read_dir_paths(&lab.store.join(".staging"));
    assert_eq!(staged.len(), FAILPOINTS.len(), "{staged:?}");

    lab.record(&c0, &[]).success().stderr_has("recorded");
    assert_eq!(lab.listed_bases(), vec![c0.clone()]);
    lab.verify(&[]).success();
    lab.consume(&c1, &out, &["--base-sha", &c0]).success();
    let impacted = lines(&fs::read(&out).unwrap());
    assert!(impacted.contains(&"//lib:gen".to_owned()), "{impacted:?}");

    // gc collects the abandoned staging directories (their recorders are dead), and
    // nothing else.
    let report = lab.gc(&[]);
    assert_eq!(
        report["stale_staging"].as_array().unwrap().len(),
        FAILPOINTS.len(),
        "{report:#}"
    );
    assert!(read_dir_paths(&lab.store.join(".staging")).is_empty());
    assert_eq!(lab.listed_bases(), vec![c0]);
}

#[test]
fn concurrent_records_publish_once_and_gc_spares_the_entry_a_consume_uses() {
    let Some(bazel) = require_bazel() else { return };
    let lab = Lab::new(&bazel);
    // Every run of this test goes through a wrapper that can be told to be slow.
    let slow = lab.wrapped_bazel();
    let (c0, c1, c2) = (lab.sha("c0"), lab.sha("c1"), lab.sha("c2"));

    // Three records at once: two of c0, one of c2. gc runs while one of them is staging.
    let recorders = [
        lab.spawn(&record_args(&lab, &slow, &c0)),
        lab.spawn(&record_args(&lab, &slow, &c0)),
        lab.spawn(&record_args(&lab, &slow, &c2)),
    ];
    let staging = lab.store.join(".staging");
    wait_for(
        "a recorder's staging directory",
        Duration::from_secs(120),
        || !read_dir_paths(&staging).is_empty(),
    );
    let report = lab.gc(&[]);
    assert!(
        report["stale_staging"].as_array().unwrap().is_empty(),
        "gc took a live recorder's staging directory: {report:#}"
    );
    let runs: Vec<_> = recorders.into_iter().map(|r| r.wait().success()).collect();
    let skipped = runs
        .iter()
        .filter(|r| r.stderr.contains("already recorded") || r.stderr.contains("published"))
        .count();
    assert!(
        skipped >= 1,
        "one c0 record saw the other's entry:\n{}\n{}",
        runs[0],
        runs[1]
    );
    let mut expected = vec![c0.clone(), c2.clone()];
    expected.sort();
    assert_eq!(lab.listed_bases(), expected);
    assert_eq!(lab.entry_dirs().len(), 2, "{:?}", lab.entry_dirs());
    assert!(read_dir_paths(&staging).is_empty(), "staging left behind");
    let verify = lab.verify(&["--json"]).success().json();
    assert_eq!(verify["entries"].as_array().unwrap().len(), 2);

    // Two consumes at once share the store's worktree and warm server: each still answers
    // for its own commits (c0→c1 and c2→c3), as a run on its own does.
    let consume_args = |target: &str, base: &str, out: &Path| -> Vec<String> {
        let mut args = vec!["consume".to_owned()];
        args.extend(lab.common_with(&lab.ws, &slow));
        args.extend(
            [
                "--target-sha",
                target,
                "--base-sha",
                base,
                "--out",
                out.to_str().unwrap(),
            ]
            .map(str::to_owned),
        );
        args
    };
    let (out1, out2) = (lab.out("first.txt"), lab.out("second.txt"));
    let c3 = lab.sha("c3");
    let consumers = [
        lab.spawn(&consume_args(&c1, &c0, &out1)),
        lab.spawn(&consume_args(&c3, &c2, &out2)),
    ];
    for consumer in consumers {
        consumer.wait().success();
    }
    let (first, second) = (fs::read(&out1).unwrap(), fs::read(&out2).unwrap());
    lab.snap(&consume_args(&c1, &c0, &out1)).success();
    lab.snap(&consume_args(&c3, &c2, &out2)).success();
    assert_eq!(first, fs::read(&out1).unwrap());
    assert_eq!(second, fs::read(&out2).unwrap());
    assert_ne!(first, second);

    // A consume held in its hashing phase (the wrapper sleeps before each Bazel call) while
    // gc --max-age 0s runs: gc removes the idle c2 entry and skips c0, which is in use.
    next_second(); // both entries are now older than 0s
    let out = lab.out("impacted.txt");
    let mut consume = vec!["consume".to_owned()];
    consume.extend(lab.common_with(&lab.ws, &slow));
    consume.extend(
        [
            "--target-sha",
            &c1,
            "--base-sha",
            &c0,
            "--out",
            out.to_str().unwrap(),
            // The hold relies on Bazel calls; a content-only change would skip them.
            "--no-incremental",
        ]
        .map(str::to_owned),
    );
    let mut consumer = lab.spawn_env(&consume, &[("SNAP_TEST_SLOW_BAZEL", "2")]);
    let work = lab.work_dirs();
    assert_eq!(work.len(), 1);
    // The scratch directory appears after the entry is opened (and its lock taken).
    wait_for(
        "the consume's scratch directory",
        Duration::from_secs(60),
        || {
            read_dir_paths(&work[0])
                .iter()
                .any(|p| p.file_name().unwrap().to_string_lossy().starts_with("run-"))
        },
    );
    assert!(
        consumer.running(),
        "the consume must still be running for this test"
    );
    let report = lab.gc(&["--max-age", "0s"]);
    assert_eq!(
        bases_of(&report["skipped_in_use"]),
        vec![c0.clone()],
        "{report:#}"
    );
    assert_eq!(bases_of(&report["removed"]), vec![c2.clone()], "{report:#}");
    let run = consumer.wait();
    support::check_out_file(&run, &out);
    run.success();
    assert_eq!(
        String::from_utf8_lossy(&fs::read(&out).unwrap()),
        String::from_utf8_lossy(&lab.cold_impacted(&slow, &c0, &c1, &[]))
    );
    assert_eq!(lab.listed_bases(), vec![c0.clone()]);

    // Once the consume is done, the same gc removes c0 too; the fingerprint has no entry
    // left, so its warm server is shut down and its output root deleted.
    assert_eq!(lab.output_roots().len(), 1);
    let report = lab.gc(&["--max-age", "0s"]);
    assert_eq!(bases_of(&report["removed"]), vec![c0], "{report:#}");
    assert!(lab.list().is_empty());
    lab.verify(&[]).success();
    assert!(lab.output_roots().is_empty(), "{:?}", lab.output_roots());
    assert!(
        Lab::processes_mentioning(&lab.store.join(".work")).is_empty(),
        "the retired server is still running"
    );
}

/// Bug: `gc` decides which fingerprints are dead (no entry) before it waits for the worktree
/// lock. When the first record of a new fingerprint holds that lock (warming up, entry not
/// yet published), gc waits, the record publishes, and gc then retires the fingerprint it
/// saw as dead: it shuts down the server the record just warmed and deletes its output root.
/// The entry is published and valid, but its warm state is gone, so the next consume is cold.
#[test]
fn gc_during_the_first_record_of_a_fingerprint_keeps_its_warm_server() {
    let Some(bazel) = require_bazel() else { return };
    let lab = Lab::new(&bazel);
    let slow = lab.wrapped_bazel();
    let c0 = lab.sha("c0");
    let recorder = lab.spawn_env(
        &record_args(&lab, &slow, &c0),
        &[("SNAP_TEST_SLOW_BAZEL", "1")],
    );
    // The record holds the worktree lock, and its output root exists, before it publishes.
    wait_for("the record's output root", Duration::from_secs(120), || {
        !lab.output_roots().is_empty()
    });
    assert!(lab.list().is_empty(), "the entry must not be published yet");
    let gc = lab.spawn(&lab.gc_args(&[]));
    recorder.wait().success();
    gc.wait().success();
    assert_eq!(lab.listed_bases(), vec![c0]);
    let roots = lab.output_roots();
    assert_eq!(
        roots.len(),
        1,
        "the output root of a live fingerprint was deleted"
    );
    assert!(
        !Lab::processes_mentioning(&roots[0]).is_empty(),
        "the warm server of a live fingerprint was shut down"
    );
}
