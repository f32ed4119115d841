//! Git histories of generated workspaces: reproducible SHAs and clean work trees.

mod common;

use std::process::Command;

use bazel_diff_bench::{generate, generate_repo, git, Mutation};
use common::small_config;

fn git_out(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn history_is_reproducible_and_clean() -> anyhow::Result<()> {
    let muts: Vec<Mutation> = vec![
        "content:2".parse()?,
        "add-file".parse()?,
        "bzl-edit".parse()?,
    ];
    let a = tempfile::tempdir()?;
    let b = tempfile::tempdir()?;
    let (_, ca) = generate_repo(&small_config(), a.path(), 3, &muts)?;
    let (_, cb) = generate_repo(&small_config(), b.path(), 3, &muts)?;
    assert_eq!(ca.len(), 3);
    let shas: Vec<&str> = ca.iter().map(|c| c.sha.as_str()).collect();
    assert_eq!(shas, cb.iter().map(|c| c.sha.as_str()).collect::<Vec<_>>());
    assert_eq!(git_out(a.path(), &["status", "--porcelain"]), "");
    let log = git_out(a.path(), &["log", "--format=%H %s"]);
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[2], format!("{} base", shas[0]));
    assert!(lines[0].starts_with(shas[2]) && lines[0].ends_with("content:2 add-file:1 bzl-edit"));
    // The second commit touched exactly the files the report names.
    let touched = git_out(a.path(), &["diff", "--name-only", shas[0], shas[1]]);
    let mut reported: Vec<String> = ca[1]
        .mutations
        .iter()
        .flat_map(|m| m.modified.iter().chain(&m.added).chain(&m.deleted).cloned())
        .collect();
    reported.sort();
    assert_eq!(touched.lines().collect::<Vec<_>>(), reported);
    Ok(())
}

#[test]
fn fast_initial_commit_matches_git_add() -> anyhow::Result<()> {
    let fast = tempfile::tempdir()?;
    let slow = tempfile::tempdir()?;
    for d in [&fast, &slow] {
        generate(&small_config(), d.path())?;
        git::init(d.path())?;
    }
    let a = git::commit_initial_fast(fast.path(), "base", 0)?;
    let b = git::commit_all(slow.path(), "base", 0)?;
    assert_eq!(a, b);
    assert_eq!(git_out(fast.path(), &["status", "--porcelain"]), "");
    Ok(())
}
