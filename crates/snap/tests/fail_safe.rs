//! Fail-safety: a snapshot that does not fit (fingerprint mismatch, corruption, history the
//! clone lacks) is exit 2 with nothing written, or the cold path with `--fallback cold`; an
//! unknown revision is a real error (exit 1). `--out` never exists after a non-zero exit.

#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::path::Path;

use serde_json::Value;
use support::{overwrite_entry_file, read_json, require_bazel, Lab};

/// The `fallback_reason` of a consume report, checked to be an exit-2 `no-snapshot` report.
#[track_caller]
fn no_snapshot_reason(report: &Value) -> String {
    assert_eq!(report["outcome"], "no-snapshot", "{report:#}");
    assert_eq!(report["exit_code"], 2, "{report:#}");
    report["fallback_reason"]
        .as_str()
        .unwrap_or_else(|| panic!("no fallback_reason: {report:#}"))
        .to_owned()
}

/// Scenario 3: the key covers `--flag`s and `.bazelrc`; a mismatch is exit 2 naming the
/// component, and `--fallback cold --base-sha` answers like a cold run.
#[test]
fn fingerprint_mismatch_is_exit_2_and_fallback_cold_equals_cold() {
    let Some(bazel) = require_bazel() else { return };
    let lab = Lab::new(&bazel);
    let (c0, c1, rc) = (lab.sha("c0"), lab.sha("c1"), lab.sha("rc"));
    lab.record(&c0, &[]).success();
    let out = lab.out("impacted.txt");
    let json = lab.out("report.json");
    let json_arg = json.display().to_string();

    // A flag the entry was not recorded with.
    let run = lab
        .consume(
            &c1,
            &out,
            &[
                "--flag=--includeTargetType",
                "--base-sha",
                &c0,
                "--json",
                &json_arg,
            ],
        )
        .exit(2);
    let reason = no_snapshot_reason(&read_json(&json));
    assert!(reason.contains("`flags`"), "{reason}");
    assert!(reason.contains("includeTargetType"), "{reason}");
    assert!(run.stderr.contains("no usable snapshot"), "{run}");
    let choice = lab.resolve(&c1, &["--flag=--includeTargetType"]);
    assert_eq!(choice["usable"], false, "{choice:#}");
    assert!(
        choice["reason"].as_str().unwrap().contains("`flags`"),
        "{choice:#}"
    );

    // A target commit whose .bazelrc differs.
    lab.consume(&rc, &out, &["--base-sha", &c0, "--json", &json_arg])
        .exit(2);
    let reason = no_snapshot_reason(&read_json(&json));
    assert!(reason.contains("`bazelrc`"), "{reason}");
    assert!(!reason.contains("`flags`"), "{reason}");

    // The cold fallback answers exactly like cold bazel-diff.
    let run = lab
        .consume(
            &rc,
            &out,
            &["--base-sha", &c0, "--fallback", "cold", "--json", &json_arg],
        )
        .success();
    assert!(run.stderr.contains("cold path"), "{run}");
    let report = read_json(&json);
    assert_eq!(report["outcome"], "cold-fallback", "{report:#}");
    assert_eq!(report["exit_code"], 0);
    assert!(
        report["fallback_reason"]
            .as_str()
            .unwrap()
            .contains("`bazelrc`"),
        "{report:#}"
    );
    assert_eq!(report["base_sha"], c0.as_str());
    assert_eq!(
        fs::read(&out).unwrap(),
        lab.cold_impacted(&bazel, &c0, &rc, &[])
    );

    lab.consume(
        &c1,
        &out,
        &[
            "--flag=--includeTargetType",
            "--base-sha",
            &c0,
            "--fallback=cold",
        ],
    )
    .success();
    let cold = lab.cold_impacted(&bazel, &c0, &c1, &["--includeTargetType"]);
    assert_eq!(
        String::from_utf8_lossy(&fs::read(&out).unwrap()),
        String::from_utf8_lossy(&cold)
    );

    // The cold path needs a base: without one it is a usage error, not a silent exit 2.
    lab.consume(&rc, &out, &["--fallback", "cold"])
        .exit(1)
        .stderr_has("--base-sha");

    // The cold path shut its own servers down and removed its scratch directories.
    for work in lab.work_dirs() {
        let runs: Vec<_> = support::read_dir_paths(&work)
            .into_iter()
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("run-"))
            .collect();
        assert!(runs.is_empty(), "scratch left behind: {runs:?}");
        assert!(
            Lab::processes_mentioning(&work.join("run-")).is_empty(),
            "a cold-path Bazel server is still running"
        );
    }
    // Fallbacks never write entries.
    assert_eq!(lab.listed_bases(), vec![c0.clone()]);

    // Recorded with the flag, the entry is a second fingerprint (its own output root and
    // server); `--flag` reaches warmup and generate-hashes and `--impacted-flag`
    // get-impacted-targets, so the warm answer equals cold with the same flags.
    lab.record(&c0, &["--flag=--includeTargetType"]).success();
    let listed = lab.list();
    assert_eq!(listed.len(), 2);
    assert_ne!(listed[0]["fingerprint"], listed[1]["fingerprint"]);
    assert_eq!(lab.output_roots().len(), 2, "{:?}", lab.output_roots());
    lab.consume(
        &c1,
        &out,
        &[
            "--flag=--includeTargetType",
            "--base-sha",
            &c0,
            "--impacted-flag=-tt=Rule",
            "--json",
            &json_arg,
        ],
    )
    .success();
    assert_eq!(read_json(&json)["outcome"], "snapshot");
    let rules = fs::read(&out).unwrap();
    let cold = lab.cold_impacted_with(&bazel, &c0, &c1, &["--includeTargetType"], &["-tt=Rule"]);
    assert_eq!(
        String::from_utf8_lossy(&rules),
        String::from_utf8_lossy(&cold)
    );
    let rules = support::lines(&rules);
    assert!(rules.contains(&"//lib:gen".to_owned()), "{rules:?}");
    assert!(
        !rules.contains(&"//lib:in.txt".to_owned()),
        "only rules: {rules:?}"
    );
}

/// Truncates (or, with `flip`, changes one byte of) a published file.
fn damage(path: &Path, flip: bool) {
    let mut bytes = fs::read(path).unwrap();
    assert!(
        bytes.len() > 20,
        "{} is too small to damage",
        path.display()
    );
    if flip {
        // A hex digit inside the JSON becomes another one: still valid JSON, same size,
        // wrong content (the silent kind of corruption).
        let at = bytes
            .iter()
            .rposition(|b| b.is_ascii_hexdigit() && b.is_ascii_digit())
            .expect("a digit to flip");
        bytes[at] = if bytes[at] == b'0' { b'1' } else { b'0' };
    } else {
        bytes.truncate(bytes.len() / 2);
    }
    overwrite_entry_file(path, &bytes);
}

/// Scenario 4: truncated, flipped and unreadable-metadata entries are refused by consume
/// (exit 2), reported by verify (exit 1, naming the file) and removed by verify --fix.
#[test]
fn corrupt_entries_are_refused_reported_and_removed() {
    let Some(bazel) = require_bazel() else { return };
    let lab = Lab::new(&bazel);
    let (c0, c1) = (lab.sha("c0"), lab.sha("c1"));
    let out = lab.out("impacted.txt");
    let json = lab.out("report.json");
    let json_arg = json.display().to_string();

    for (how, file) in [
        ("truncated", "base_hashes.json"),
        ("flipped", "base_hashes.json"),
        ("truncated", "metadata.json"),
    ] {
        eprintln!("--- {file} {how}");
        lab.record(&c0, &[]).success();
        lab.verify(&[]).success();
        let entry = lab.entry_dir(&c0);
        damage(&entry.join(file), how == "flipped");

        let run = lab
            .consume(&c1, &out, &["--base-sha", &c0, "--json", &json_arg])
            .exit(2);
        let report = read_json(&json);
        let reason = no_snapshot_reason(&report);
        if file == "base_hashes.json" {
            // The entry is chosen, then refused by its digests.
            assert!(reason.contains("corrupt"), "{how} {file}: {reason}\n{run}");
            assert!(reason.contains("base_hashes.json"), "{reason}");
        } else {
            // Unreadable metadata: the entry is skipped while choosing, and the report's
            // `skipped` says why (the reason itself only says no entry fits).
            let skipped = report["skipped"].to_string();
            assert!(
                skipped.contains(&c0) && skipped.contains("corrupt"),
                "{how} {file}: {report:#}"
            );
        }

        let run = lab.verify(&[]).exit(1);
        assert!(run.stdout.contains(file), "verify names {file}:\n{run}");
        let run = lab.verify(&["--json"]).exit(1);
        let report = run.json();
        let entries = report["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 1, "{report:#}");
        assert_ne!(entries[0]["status"], "ok", "{report:#}");
        assert!(entries[0].to_string().contains(file), "{report:#}");
        assert_eq!(
            report["removed"].as_array().unwrap().len(),
            0,
            "no --fix, no removal"
        );
        assert!(entry.exists());

        let run = lab.verify(&["--fix"]).success();
        assert!(run.stdout.contains("removed"), "{run}");
        assert!(!entry.exists(), "verify --fix removed {}", entry.display());
        assert!(lab.list().is_empty());
        lab.verify(&[]).success();

        let run = lab
            .consume(&c1, &out, &["--base-sha", &c0, "--json", &json_arg])
            .exit(2);
        let reason = no_snapshot_reason(&read_json(&json));
        assert!(reason.contains("no snapshot"), "{reason}\n{run}");
    }
}

/// Scenario 7: unknown revisions are exit 1 naming them (even with `--fallback cold`); a
/// shallow clone whose history lacks the entry's base is exit 2, not a crash.
#[test]
fn unknown_revisions_fail_and_shallow_clones_fall_back() {
    let Some(bazel) = require_bazel() else { return };
    let lab = Lab::new(&bazel);
    let (c0, c4) = (lab.sha("c0"), lab.sha("c4"));
    let zeros = "0".repeat(40);
    let out = lab.out("impacted.txt");
    let json = lab.out("report.json");
    let json_arg = json.display().to_string();

    lab.consume(&zeros, &out, &["--base-sha", &c0])
        .exit(1)
        .stderr_has(&zeros);
    lab.consume(
        &zeros,
        &out,
        &["--base-sha", &c0, "--fallback", "cold", "--json", &json_arg],
    )
    .exit(1)
    .stderr_has(&zeros);
    let report = read_json(&json);
    assert_eq!(report["outcome"], "error", "{report:#}");
    assert!(report["error"].as_str().unwrap().contains(&zeros));
    lab.consume(&c4, &out, &["--base-sha", "no-such-branch"])
        .exit(1)
        .stderr_has("no-such-branch");
    let mut resolve = vec!["resolve".to_owned()];
    resolve.extend(lab.common());
    resolve.extend(["--target-sha".to_owned(), zeros.clone()]);
    lab.snap(&resolve).exit(1).stderr_has(&zeros);
    lab.record(&zeros, &[]).exit(1).stderr_has(&zeros);
    lab.record("no-such-branch", &[])
        .exit(1)
        .stderr_has("no-such-branch");
    assert!(lab.list().is_empty());

    lab.record(&c0, &[]).success();

    // A depth-1 clone of main: it has c4 but not c0.
    let shallow = lab.out("shallow");
    let status = std::process::Command::new("git")
        .args(["clone", "-q", "--depth", "1", "--branch", "main"])
        .arg(format!("file://{}", lab.ws.display()))
        .arg(&shallow)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(support::git_in(&shallow, &["rev-parse", "HEAD"]), c4);

    let run = lab
        .consume_in(&shallow, "HEAD", &out, &["--json", &json_arg])
        .exit(2);
    let report = read_json(&json);
    assert_eq!(report["outcome"], "no-snapshot", "{report:#}\n{run}");
    let skipped = report["skipped"].to_string();
    assert!(
        skipped.contains(&c0),
        "the unknown base is reported as skipped: {report:#}"
    );
    lab.consume_in(&shallow, &c4, &out, &["--base-sha", &c4])
        .exit(2);
    // The full clone still finds it, and so does another full clone of the repository
    // (its own worktree and output root in the store, the same entry).
    lab.consume(&c4, &out, &["--base-sha", &c0]).success();
    let answer = fs::read(&out).unwrap();
    let clone = lab.out("clone");
    support::git_in(
        &lab.root,
        &["clone", "-q", lab.ws.to_str().unwrap(), "clone"],
    );
    lab.consume_in(&clone, &c4, &out, &["--base-sha", &c0, "--json", &json_arg])
        .success();
    assert_eq!(fs::read(&out).unwrap(), answer);
    assert_eq!(read_json(&json)["entry"]["base_sha"], c0.as_str());
    assert_eq!(
        lab.work_dirs().len(),
        3,
        "ws, shallow and clone each get a work dir"
    );
}

/// Bug: when writing the `--json` report fails after the impacted targets were written,
/// consume exits 1 but leaves `--out` behind, so a script that checks for the file after a
/// failure (or ignores the exit code) uses an answer the tool called failed.
#[test]
fn a_failing_report_write_leaves_no_out_file() {
    let Some(bazel) = require_bazel() else { return };
    let lab = Lab::new(&bazel);
    let (c0, c1) = (lab.sha("c0"), lab.sha("c1"));
    lab.record(&c0, &[]).success();
    let out = lab.out("impacted.txt");
    let report = lab.out("no-such-dir/report.json");
    // consume() checks that --out is absent after a non-zero exit.
    lab.consume(
        &c1,
        &out,
        &["--base-sha", &c0, "--json", report.to_str().unwrap()],
    )
    .exit(1);
}

/// Bug: `record` of a base whose entry exists but is corrupt says "already recorded; nothing
/// to do" and exits 0, so the base stays unusable (every consume exits 2) until someone runs
/// `verify --fix`. Either re-recording it or failing loudly would be right.
#[test]
fn record_over_a_corrupt_entry_repairs_it_or_fails() {
    let Some(bazel) = require_bazel() else { return };
    let lab = Lab::new(&bazel);
    let (c0, c1) = (lab.sha("c0"), lab.sha("c1"));
    lab.record(&c0, &[]).success();
    damage(&lab.entry_dir(&c0).join("base_hashes.json"), false);
    let run = lab.record(&c0, &[]);
    if run.code() == Some(0) {
        lab.verify(&[]).success();
        lab.consume(&c1, &lab.out("impacted.txt"), &["--base-sha", &c0])
            .success();
    } else {
        let run = run.exit(1);
        assert!(run.stderr.contains("corrupt"), "{run}");
    }
}

/// Bug (upstream finding F10, second half): when the snapshot is selected but the warm
/// server then fails (crashed JVM, broken output base...), consume exits 1 — "real error,
/// fail CI" — although a cold run works, and `--fallback cold` does not fall back either
/// (it only catches "no usable snapshot"). main.rs documents exit 2 for a snapshot consume
/// "could not use" (spec §8.1 suggests 3); with `--fallback cold` the answer should be the
/// cold one.
#[test]
fn a_failing_warm_server_is_a_fallback_not_an_error() {
    let Some(bazel) = require_bazel() else { return };
    let lab = Lab::new(&bazel);
    let wrapped = lab.wrapped_bazel();
    let (c0, c1) = (lab.sha("c0"), lab.sha("c1"));
    let mut record = vec!["record".to_owned()];
    record.extend(lab.common_with(&lab.ws, &wrapped));
    record.extend(["--base-sha".to_owned(), c0.clone()]);
    lab.snap(&record).success();

    let out = lab.out("impacted.txt");
    let consume = |extra: &[&str]| {
        let _ = fs::remove_file(&out);
        let mut args = vec!["consume".to_owned()];
        args.extend(lab.common_with(&lab.ws, &wrapped));
        args.extend(
            [
                "--target-sha",
                &c1,
                "--base-sha",
                &c0,
                "--out",
                out.to_str().unwrap(),
                // A content-only change would skip Bazel altogether (incremental path).
                "--no-incremental",
            ]
            .map(str::to_owned),
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        let run = lab.snap_env(&args, &[("SNAP_TEST_FAIL_WARM", "1")]);
        support::check_out_file(&run, &out);
        run
    };
    let run = consume(&[]);
    assert!(
        matches!(run.code(), Some(2 | 3)),
        "a snapshot that cannot be used must not be exit 1:\n{run}"
    );
    consume(&["--fallback", "cold"]).success();
    assert_eq!(
        fs::read(&out).unwrap(),
        lab.cold_impacted(&wrapped, &c0, &c1, &[])
    );
}
