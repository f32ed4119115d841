//! Drivers: where the warm Bazel server lives. `local` keeps it on this host; `firecracker`
//! (its own module) keeps it in a microVM snapshot. Both sit behind [`Driver`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bazel_diff_store::Requirement;
use serde_json::{json, Value};

use crate::context::Context as Ctx;

/// Why a driver cannot serve a snapshot on this host (maps to exit 2, cold fallback).
#[derive(Debug)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "driver unavailable: {}", self.0)
    }
}

impl std::error::Error for Unavailable {}

/// The hash files a consume produced, in a scratch directory of the run.
pub struct ConsumeHashes {
    pub base: PathBuf,
    pub target: PathBuf,
    /// Driver observations for the report (e.g. whether the server was still warm).
    pub notes: Value,
}

/// What a consume needs hashed.
pub struct ConsumePlan<'a> {
    pub fingerprint: &'a str,
    /// The entry's directory (read-only) and base commit.
    pub entry_dir: &'a Path,
    /// Set when the entry came from an object store without the driver's
    /// [`Driver::lazy_files`]: `entry_dir` lacks them, read them through this.
    pub lazy: Option<&'a bazel_diff_remote::LazyEntry>,
    pub entry_base: &'a str,
    /// The base to diff against; stored base hashes are used only when it equals the entry's.
    pub base: &'a str,
    pub target: &'a str,
    /// Where to put the hash files.
    pub scratch: &'a Path,
    /// May the target be hashed incrementally from the entry's graph (issue 6)?
    pub incremental: bool,
    /// `--verify`: when the target was hashed incrementally, hash it with the full query too
    /// and fail with [`VerifyMismatch`] unless both hash files are identical.
    pub verify: bool,
}

/// `consume --verify` found the incremental hashes differ from the full query's: a bug to
/// report, never a reason to fall back silently (exit 1).
#[derive(Debug)]
pub struct VerifyMismatch(pub String);

impl std::fmt::Display for VerifyMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--verify: the incremental hashes differ from the full query's: {}",
            self.0
        )
    }
}

impl std::error::Error for VerifyMismatch {}

pub trait Driver {
    fn kind(&self) -> &'static str;

    /// Checks the host can run this driver at all.
    fn check_available(&self) -> Result<(), Unavailable>;

    /// Digest of everything besides the bazel-diff fingerprint that must match for an entry
    /// to be usable (VM config, images...); `None` when nothing does (local driver).
    fn key_material(&self) -> Result<Option<String>>;

    /// Records `base` into `staging` (`base_hashes.json` and driver state); returns the
    /// driver's metadata. The worktree is checked out at `base` and locked by the caller.
    fn record(&self, ctx: &Ctx, fingerprint: &str, base: &str, staging: &Path) -> Result<Value>;

    /// The entries an entry recorded with driver metadata `state` under store key
    /// `fingerprint` cannot be used without (stored as the entry's `requires`, so gc keeps
    /// them and an object store fetches them along). None by default.
    fn requirements(&self, _fingerprint: &str, _state: &Value) -> Result<Vec<Requirement>> {
        Ok(Vec::new())
    }

    /// Computes head (and, when needed, base) hashes for a consume.
    fn consume(&self, ctx: &Ctx, plan: &ConsumePlan<'_>) -> Result<ConsumeHashes>;

    /// Entry files this consume reads on demand: from an object store they are not
    /// downloaded up front (see [`ConsumePlan::lazy`]).
    fn lazy_files(&self) -> &'static [&'static str] {
        &[]
    }
}

/// The entry file holding the base graph for incremental consumes (issue 6).
pub const GRAPH_STATE: &str = "graph_state.bin";

/// Flags that let generate-hashes take the graph-stable path, and why (not).
struct Incremental {
    args: Vec<std::ffi::OsString>,
    note: String,
}

/// bazel-diff updates the stored graph from the list of changed paths (no query when only
/// contents changed; a query of the affected packages for BUILD, `.bzl`, added and deleted
/// files). It re-checks every path itself and falls back to the full query; here we only
/// rule out what it cannot see: type changes, symlinks and submodules, files outside the
/// Bazel workspace, and a base other than the entry's.
fn incremental_args(ctx: &Ctx, plan: &ConsumePlan<'_>) -> Result<Incremental> {
    let full = |why: &str| Incremental {
        args: Vec::new(),
        note: format!("full query: {why}"),
    };
    if !plan.incremental {
        return Ok(full("--no-incremental"));
    }
    if plan.base != plan.entry_base {
        return Ok(full("the diff base is not the entry's base"));
    }
    let state = plan.entry_dir.join(GRAPH_STATE);
    if !state.is_file() {
        return Ok(full("the entry has no graph state"));
    }
    let relative = &ctx.workspace_relative;
    let mut paths = Vec::new();
    let (mut modified, mut added, mut deleted) = (0, 0, 0);
    for change in ctx.repo.changed_files(plan.entry_base, plan.target)? {
        let plain_file = |mode: &str| mode == "100644" || mode == "100755";
        let absent = |mode: &str| mode == "000000";
        let plain = match change.status {
            'M' => plain_file(&change.old_mode) && plain_file(&change.new_mode),
            'A' => absent(&change.old_mode) && plain_file(&change.new_mode),
            'D' => plain_file(&change.old_mode) && absent(&change.new_mode),
            _ => false,
        };
        if !plain {
            return Ok(full(&format!(
                "{} is {} (mode {} -> {})",
                change.path.display(),
                match change.status {
                    'T' => "a type change",
                    _ => "not a plain file change",
                },
                change.old_mode,
                change.new_mode
            )));
        }
        match change.status {
            'A' => added += 1,
            'D' => deleted += 1,
            _ => modified += 1,
        }
        match change.path.strip_prefix(relative) {
            Ok(inside) => paths.push(inside.to_string_lossy().into_owned()),
            Err(_) => {
                return Ok(full(&format!(
                    "{} is outside the Bazel workspace",
                    change.path.display()
                )))
            }
        }
    }
    let list = plan.scratch.join("changed_files.txt");
    let mut text = paths.join("\n");
    text.push('\n');
    std::fs::write(&list, text).with_context(|| format!("writing {}", list.display()))?;
    Ok(Incremental {
        args: vec![
            "--incremental-from".into(),
            state.into_os_string(),
            "--incremental-changed".into(),
            list.into_os_string(),
        ],
        note: format!("candidate: {modified} modified, {added} added, {deleted} deleted files"),
    })
}

/// No VM: the warm server is a Bazel server on this host with its own output root per
/// fingerprint (`<store>/.work/<repo>/bazel/<fingerprint>`), working on the store's
/// worktree, so consume reuses the server (or at least its on-disk state) left by record.
pub struct LocalDriver;

impl LocalDriver {
    fn startup(ctx: &Ctx, fingerprint: &str) -> Vec<String> {
        vec![format!(
            "--output_user_root={}",
            ctx.work.join("bazel").join(fingerprint).display()
        )]
    }
}

impl Driver for LocalDriver {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn check_available(&self) -> Result<(), Unavailable> {
        Ok(())
    }

    fn key_material(&self) -> Result<Option<String>> {
        Ok(None)
    }

    fn record(&self, ctx: &Ctx, fingerprint: &str, _base: &str, staging: &Path) -> Result<Value> {
        let startup = Self::startup(ctx, fingerprint);
        // warmup's own fingerprint includes our output root; the entry keeps the key's.
        let scratch_fingerprint = ctx.work.join("warmup-fingerprint.json");
        ctx.tool.warmup(
            &ctx.bazel_workspace,
            &startup,
            &staging.join("base_hashes.json"),
            &scratch_fingerprint,
            &[
                "--write-graph-state".into(),
                staging.join(GRAPH_STATE).into_os_string(),
            ],
        )?;
        crate::failpoint::hit("after-warmup");
        Ok(json!({ "output_user_root": startup[0].trim_start_matches("--output_user_root=") }))
    }

    fn consume(&self, ctx: &Ctx, plan: &ConsumePlan<'_>) -> Result<ConsumeHashes> {
        let startup = Self::startup(ctx, plan.fingerprint);
        let base_hashes = if plan.base == plan.entry_base {
            plan.entry_dir.join("base_hashes.json")
        } else {
            // The entry is an older ancestor: its stored hashes are not the requested base's.
            ctx.checkout(plan.base)?;
            let path = plan.scratch.join("base_hashes.json");
            ctx.tool
                .generate_hashes(&ctx.bazel_workspace, &startup, &path, &[])
                .context("hashing the requested base on the warm server")?;
            path
        };
        ctx.checkout(plan.target)?;
        let target = plan.scratch.join("target_hashes.json");
        let incremental = incremental_args(ctx, plan)?;
        ctx.tool
            .generate_hashes(&ctx.bazel_workspace, &startup, &target, &incremental.args)
            .context("hashing the target on the warm server")?;
        let verified = if plan.verify && !incremental.args.is_empty() {
            let full = plan.scratch.join("target_hashes_full.json");
            ctx.tool
                .generate_hashes(&ctx.bazel_workspace, &startup, &full, &[])
                .context("hashing the target with the full query (--verify)")?;
            if let Some(difference) = first_difference(&target, &full)? {
                return Err(VerifyMismatch(difference).into());
            }
            Some(true)
        } else {
            None
        };
        Ok(ConsumeHashes {
            base: base_hashes,
            target,
            notes: json!({
                "base_hashes_from": if plan.base == plan.entry_base { "entry" } else { "warm server" },
                "incremental": incremental.note,
                "verified": verified,
            }),
        })
    }
}

/// How two hash files differ: the first label whose entry differs (`None`: byte-identical).
fn first_difference(incremental: &Path, full: &Path) -> Result<Option<String>> {
    let read =
        |path: &Path| std::fs::read(path).with_context(|| format!("reading {}", path.display()));
    let (a, b) = (read(incremental)?, read(full)?);
    if a == b {
        return Ok(None);
    }
    let parse = |bytes: &[u8], path: &Path| -> Result<serde_json::Map<String, Value>> {
        serde_json::from_slice(bytes).with_context(|| format!("parsing {}", path.display()))
    };
    let (a, b) = (parse(&a, incremental)?, parse(&b, full)?);
    let labels: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let first = labels.into_iter().find_map(|label| {
        let (x, y) = (a.get(label), b.get(label));
        (x != y).then(|| match (x, y) {
            (Some(x), Some(y)) => format!("{label}: incremental {x}, full query {y}"),
            (Some(_), None) => format!("{label} is only in the incremental hashes"),
            _ => format!("{label} is only in the full query's hashes"),
        })
    });
    Ok(Some(first.unwrap_or_else(|| {
        "same entries, different bytes (formatting)".to_owned()
    })))
}

#[cfg(test)]
mod tests {
    use super::first_difference;

    #[test]
    fn first_difference_names_the_first_differing_label() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let a = write("a.json", "{\"//a:x\": \"1~1\", \"//b:y\": \"2~2\"}");
        let same = write("same.json", "{\"//a:x\": \"1~1\", \"//b:y\": \"2~2\"}");
        let changed = write("b.json", "{\"//a:x\": \"1~1\", \"//b:y\": \"3~2\"}");
        let missing = write("c.json", "{\"//b:y\": \"2~2\"}");
        assert_eq!(first_difference(&a, &same).unwrap(), None);
        let diff = first_difference(&a, &changed).unwrap().unwrap();
        assert!(diff.starts_with("//b:y: incremental"), "{diff}");
        let diff = first_difference(&a, &missing).unwrap().unwrap();
        assert_eq!(diff, "//a:x is only in the incremental hashes");
    }
}
