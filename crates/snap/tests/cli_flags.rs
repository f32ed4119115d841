//! Scenario 8: argument handling. A bad flag is exit 1 with usage (never 2, which CI reads as
//! "run the cold path"), help is exit 0 on stdout, and upstream's Go-style `-flag` spellings
//! work.

#![allow(clippy::unwrap_used)]

mod support;

use support::{require_bazel, Lab};

/// Runs the binary without a lab (no Bazel, no store).
fn snap(args: &[&str]) -> support::Run {
    let started = std::time::Instant::now();
    let output = std::process::Command::new(support::snap_bin())
        .args(args)
        .stdin(std::process::Stdio::null())
        .env_remove("BAZEL_DIFF_SNAP_FAILPOINT")
        .output()
        .unwrap();
    support::Run {
        command: format!("bazel-diff-snap {}", args.join(" ")),
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

#[test]
fn help_and_version_are_exit_0_on_stdout() {
    for args in [
        &["--help"][..],
        &["-h"],
        &["help"],
        &["consume", "--help"],
        &["record", "-h"],
        &["resolve", "--help"],
        &["gc", "--help"],
        &["help", "consume"],
    ] {
        let run = snap(args).exit(0);
        assert!(run.stdout.contains("Usage:"), "{run}");
        assert!(run.stderr.is_empty(), "help goes to stdout only:\n{run}");
    }
    let run = snap(&["--help"]).exit(0);
    assert!(
        run.stdout.contains("Exit codes"),
        "the long help documents exit codes:\n{run}"
    );
    for sub in ["record", "consume", "resolve", "list", "verify", "gc"] {
        assert!(run.stdout.contains(sub), "{sub} in\n{run}");
    }
    let run = snap(&["consume", "--help"]).exit(0);
    for flag in [
        "--target-sha",
        "--base-sha",
        "--out",
        "--json",
        "--fallback",
        "--max-distance",
        "--flag",
        "--impacted-flag",
    ] {
        assert!(run.stdout.contains(flag), "{flag} in\n{run}");
    }
    let run = snap(&["--version"]).exit(0);
    assert!(run.stdout.contains(env!("CARGO_PKG_VERSION")), "{run}");
}

#[test]
fn bad_arguments_are_exit_1_with_usage_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("impacted.txt");
    let out_arg = out.to_str().unwrap();
    let ws = dir.path().to_str().unwrap();
    let store = dir.path().join("store");
    let store_arg = store.to_str().unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec![],
        vec!["no-such-command"],
        vec!["--no-such-flag"],
        vec![
            "consume",
            "--workspace",
            ws,
            "--store",
            store_arg,
            "--target-sha",
            "HEAD",
            "--out",
            out_arg,
            "--no-such-flag",
        ],
        // Missing required flags.
        vec![
            "consume",
            "--workspace",
            ws,
            "--store",
            store_arg,
            "--out",
            out_arg,
        ],
        vec![
            "consume",
            "--workspace",
            ws,
            "--store",
            store_arg,
            "--target-sha",
            "HEAD",
        ],
        vec!["record", "--workspace", ws, "--store", store_arg],
        vec!["list"],
        // Bad values.
        vec![
            "consume",
            "--workspace",
            ws,
            "--store",
            store_arg,
            "--target-sha",
            "HEAD",
            "--out",
            out_arg,
            "--fallback",
            "warm",
        ],
        vec![
            "consume",
            "--workspace",
            ws,
            "--store",
            store_arg,
            "--target-sha",
            "HEAD",
            "--out",
            out_arg,
            "--max-distance",
            "-3",
        ],
        vec![
            "consume",
            "--workspace",
            ws,
            "--store",
            store_arg,
            "--target-sha",
            "HEAD",
            "--out",
            out_arg,
            "--driver",
            "qemu",
        ],
        vec!["gc", "--store", store_arg, "--keep-per-fingerprint", "many"],
        // A Go-style flag that does not exist either.
        vec![
            "consume",
            "-workspace",
            ws,
            "-store",
            store_arg,
            "-target-sha",
            "HEAD",
            "-out",
            out_arg,
            "-no-such-flag",
        ],
    ];
    for args in cases {
        let unknown_flag = args.iter().any(|a| a.contains("no-such"));
        let run = snap(&args).exit(1);
        // Unknown flags and missing ones print the usage line; a bad value points to --help.
        assert!(
            run.stderr.contains("Usage:") || (!unknown_flag && run.stderr.contains("--help")),
            "usage on stderr:\n{run}"
        );
        assert!(run.stdout.is_empty(), "{run}");
        assert!(!out.exists(), "--out written by a failed run:\n{run}");
    }
    // Parse errors never touch the store either.
    assert!(!store.exists());

    // Values that parse but mean nothing: exit 1 with a message, not 2.
    for args in [
        vec!["gc", "--store", ws, "--max-age", "7 fortnights"],
        vec!["gc", "--store", ws, "--max-bytes", "lots"],
        vec!["list", "--store", store_arg],
        vec!["verify", "--store", store_arg],
    ] {
        let run = snap(&args).exit(1);
        assert!(run.stderr.contains("error"), "{run}");
    }
    // Outside a git repository.
    let run = snap(&[
        "consume",
        "--workspace",
        ws,
        "--store",
        store_arg,
        "--target-sha",
        "HEAD",
        "--out",
        out_arg,
    ])
    .exit(1);
    assert!(run.stderr.contains("git"), "{run}");
    assert!(!out.exists());
}

/// Upstream's Go `flag` spellings (`-workspace x`, `-flag=v`, `-json`) are accepted by every
/// subcommand that upstream or the store has.
#[test]
fn go_style_single_dash_flags_are_accepted() {
    let Some(bazel) = require_bazel() else { return };
    let lab = Lab::new(&bazel);
    let ws = lab.ws.to_str().unwrap().to_owned();
    let store = lab.store.to_str().unwrap().to_owned();
    let bazel = bazel.to_str().unwrap().to_owned();
    let bazel_diff = lab.bazel_diff.to_str().unwrap().to_owned();
    let c4 = lab.sha("c4");
    let out = lab.out("impacted.txt");
    let out_arg = out.to_str().unwrap().to_owned();

    // resolve parses them and answers (no entry yet, so usable: false); no server starts.
    let run = lab
        .snap(&[
            "resolve",
            "-workspace",
            &ws,
            "-store",
            &store,
            "-bazel",
            &bazel,
            "-bazel-diff",
            &bazel_diff,
            "-target-sha",
            &c4,
            "-max-distance=5",
            "-flag=--keep_going",
        ])
        .success();
    let choice = run.json();
    assert_eq!(choice["usable"], false, "{run}");
    assert_eq!(choice["target_sha"], c4.as_str());

    // consume: exit 2 (no snapshot), which proves every flag was understood.
    let json = lab.out("report.json");
    let run = lab.snap(&[
        "consume",
        "-workspace",
        &ws,
        "-store",
        &store,
        "-bazel",
        &bazel,
        "-bazel-diff",
        &bazel_diff,
        "-target-sha",
        &c4,
        "-base-sha",
        "main~1",
        "-out",
        &out_arg,
        "-json",
        json.to_str().unwrap(),
        "-fallback",
        "none",
        "-driver=local",
    ]);
    support::check_out_file(&run, &out);
    let run = run.exit(2);
    assert!(run.stderr.contains("no usable snapshot"), "{run}");
    assert_eq!(support::read_json(&json)["outcome"], "no-snapshot");

    // The store subcommands.
    let run = lab.snap(&["list", "-store", &store, "-json"]).success();
    assert_eq!(run.json(), serde_json::json!([]));
    let run = lab
        .snap(&["verify", "-store", &store, "-fix", "-json"])
        .success();
    assert!(
        run.json()["entries"].as_array().unwrap().is_empty(),
        "{run}"
    );
    let run = lab
        .snap(&["gc", "-store", &store, "-dry-run", "-json"])
        .success();
    assert_eq!(run.json()["dry_run"], true, "{run}");
    // Single-dash short flags keep their meaning.
    lab.snap(&["-v", "list", "-store", &store]).success();
}
