//! record → consume against real git and Bazel: the answer equals a cold `bazel-diff` run,
//! the `--json` report describes it, and the user's checkout is never touched.

#![allow(clippy::unwrap_used)]

mod support;

use std::fs;

use support::{lines, phase_names, read_json, require_bazel, Lab};

/// Everything about the user's checkout that record/consume must leave alone.
#[derive(Debug, PartialEq, Eq)]
struct CheckoutState {
    head: String,
    branch: String,
    status: String,
    staged: String,
    unstaged: String,
    refs: String,
    files: Vec<(String, String)>,
}

fn checkout_state(lab: &Lab) -> CheckoutState {
    let mut files = Vec::new();
    collect_files(&lab.ws, &lab.ws, &mut files);
    CheckoutState {
        head: lab.git(&["rev-parse", "HEAD"]),
        branch: lab.git(&["symbolic-ref", "HEAD"]),
        status: lab.git(&["status", "--porcelain=v1", "--untracked-files=all"]),
        staged: lab.git(&["diff", "--cached"]),
        unstaged: lab.git(&["diff"]),
        refs: lab.git(&["for-each-ref", "--format=%(refname) %(objectname)"]),
        files,
    }
}

/// Every file of the working tree (not `.git`) with its content, or the target of a symlink
/// (Bazel's convenience symlinks would show up here).
fn collect_files(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<(String, String)>) {
    for path in support::read_dir_paths(dir) {
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        if rel == ".git" {
            continue;
        }
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.file_type().is_symlink() {
            out.push((
                rel,
                format!("-> {}", fs::read_link(&path).unwrap().display()),
            ));
        } else if meta.is_dir() {
            collect_files(root, &path, out);
        } else {
            out.push((rel, fs::read_to_string(&path).unwrap()));
        }
    }
}

/// Scenarios 1 and 10: one record and a few consumes on one warm server, each answer
/// byte-identical to a cold run; the user's checkout (on a branch, with staged, unstaged and
/// untracked changes) is exactly as it was.
#[test]
fn round_trip_matches_cold_and_leaves_the_checkout_alone() {
    let Some(bazel) = require_bazel() else { return };
    let lab = Lab::new(&bazel);
    let (c0, c1, c2) = (lab.sha("c0"), lab.sha("c1"), lab.sha("c2"));

    // The user works on a branch at c1 with local changes of every kind.
    lab.git(&["checkout", "-q", "-b", "feature", &c1]);
    lab.write("lib/in.txt", "uncommitted edit\n");
    lab.write("app/main.txt", "staged edit\n");
    lab.git(&["add", "app/main.txt"]);
    lab.write("notes.txt", "untracked\n");
    let before = checkout_state(&lab);

    lab.record(&c0, &[]).success().stderr_has("recorded");
    let entry = lab.entry_dir(&c0);
    assert!(entry.join("base_hashes.json").is_file());
    assert!(entry.join("metadata.json").is_file());
    // The worktree lives in the store, never in the user's checkout.
    let work = lab.work_dirs();
    assert_eq!(work.len(), 1, "one work dir per repository: {work:?}");
    assert_eq!(
        support::git_in(&work[0].join("worktree"), &["rev-parse", "HEAD"]),
        c0
    );

    let cold = lab.cold_impacted(&bazel, &c0, &c2, &[]);
    let impacted = lines(&cold);
    // The fixture diff is not trivial: c1 changed //lib:in.txt, c2 //app:README.md.
    for label in [
        "//lib:gen",
        "//app:app",
        "//lib:files",
        "//app:docs",
        "//app:all",
    ] {
        assert!(
            impacted.contains(&label.to_owned()),
            "{label} in {impacted:?}"
        );
    }
    assert!(
        !impacted.contains(&"//lib:extra.txt".to_owned()),
        "{impacted:?}"
    );

    // Explicit base equal to the entry's base: the stored base hashes are used.
    let out = lab.out("impacted.txt");
    let json = lab.out("report.json");
    let report_arg = json.display().to_string();
    lab.consume(&c2, &out, &["--base-sha", &c0, "--json", &report_arg])
        .success();
    assert_eq!(
        String::from_utf8_lossy(&fs::read(&out).unwrap()),
        String::from_utf8_lossy(&cold),
        "consume differs from cold bazel-diff"
    );
    let report = read_json(&json);
    assert_eq!(report["outcome"], "snapshot", "{report:#}");
    assert_eq!(report["exit_code"], 0);
    assert_eq!(report["distance"], 0);
    assert_eq!(report["base_source"], "explicit");
    assert_eq!(report["base_sha"], c0.as_str());
    assert_eq!(report["target_sha"], c2.as_str());
    assert_eq!(report["driver"], "local");
    assert_eq!(report["entry"]["base_sha"], c0.as_str());
    assert_eq!(report["driver_notes"]["base_hashes_from"], "entry");
    assert_eq!(report["fallback_reason"], serde_json::Value::Null);
    let phases = phase_names(&report);
    for phase in ["fingerprint", "resolve", "verify", "hash", "impacted"] {
        assert!(phases.contains(&phase.to_owned()), "{phase} in {phases:?}");
    }

    // No --base-sha: upstream behaviour, the entry's base, and the report says so.
    lab.consume(&c2, &out, &["--json", &report_arg])
        .success()
        .stderr_has("no --base-sha given");
    assert_eq!(fs::read(&out).unwrap(), cold);
    let report = read_json(&json);
    assert_eq!(report["outcome"], "snapshot");
    assert_eq!(report["base_source"], "entry");
    assert_eq!(report["base_sha"], c0.as_str());
    assert_eq!(
        report["distance"], 2,
        "c0 is two commits behind c2: {report:#}"
    );

    // Same commit on both sides: nothing impacted. Short and symbolic revisions are
    // canonicalized.
    lab.consume(&c0[..10], &out, &["--base-sha", "main~4"])
        .success();
    assert_eq!(fs::read_to_string(&out).unwrap(), "");

    // The warm server is gone (reboot, idle timeout): the entry still gives the right
    // answer, on a server started afresh in the same output root.
    // Even the store's whole work area (worktree, output roots) may go: it is rebuilt.
    lab.shutdown_servers();
    support::make_writable(&lab.store.join(".work"));
    fs::remove_dir_all(lab.store.join(".work")).unwrap();
    lab.consume(&c2, &out, &["--base-sha", &c0]).success();
    assert_eq!(fs::read(&out).unwrap(), cold);
    let worktrees = lab.git(&["worktree", "list", "--porcelain"]);
    assert_eq!(
        worktrees.matches("worktree ").count(),
        2,
        "the user's checkout plus one store worktree, stale ones pruned:\n{worktrees}"
    );

    assert_eq!(checkout_state(&lab), before, "the user's checkout changed");
}
