//! What every subcommand works with: the user's repository (read-only to us), the store, the
//! bazel-diff binary, and the store's worktree where checkouts and Bazel runs happen.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use bazel_diff_store::{FileLock, Store};
use sha2::{Digest, Sha256};

use crate::git::Repo;
use crate::tool::BazelDiff;

pub struct Context {
    pub repo: Repo,
    pub store: Store,
    pub tool: BazelDiff,
    /// Where entries are listed, opened and published: `store` itself, or the object store
    /// `--store` names with `store` as its local cache (see `shared.rs`).
    pub backend: Box<dyn bazel_diff_remote::Backend>,
    /// `<store>/.work/<repo id>`: worktree, Bazel output roots, scratch files.
    pub work: PathBuf,
    /// A detached worktree of the user's repository; the user's checkout is never touched.
    pub worktree: PathBuf,
    /// The Bazel workspace inside the worktree (the worktree itself, or the subdirectory
    /// `--workspace` names within the repository).
    pub bazel_workspace: PathBuf,
    /// Where the Bazel workspace is relative to the repository's top level.
    pub workspace_relative: PathBuf,
    /// The commit this process last checked out (and cleaned) in the worktree.
    checked_out: std::cell::RefCell<Option<String>>,
}

impl Context {
    pub fn new(common: &crate::Common, tool: BazelDiff) -> Result<Self> {
        let workspace = common.workspace.as_path();
        let store = &crate::shared::local_store_path(&common.store, common.cache.as_deref())?;
        let repo = Repo::open(workspace)?;
        // Bazel refuses workspaces and output roots whose paths contain whitespace, and both
        // live inside the store: refuse before any Bazel runs.
        let absolute = std::path::absolute(store)
            .with_context(|| format!("resolving the store path {}", store.display()))?;
        if absolute.to_string_lossy().chars().any(char::is_whitespace) {
            anyhow::bail!(
                "the store path {:?} contains a space: Bazel cannot work in paths with spaces \
                 (the store holds the worktree and Bazel's output roots); choose another --store",
                absolute
            );
        }
        let store = Store::open(store)?;
        let backend = crate::shared::backend(common, &store)?;
        let id = Sha256::digest(repo.common_dir()?.to_string_lossy().as_bytes());
        let work = store.root().join(".work").join(&hex::encode(id)[..16]);
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let relative = repo.relative_path(workspace)?;
        let worktree = work.join("worktree");
        Ok(Context {
            bazel_workspace: worktree.join(&relative),
            workspace_relative: relative,
            checked_out: Default::default(),
            worktree,
            repo,
            store,
            tool,
            backend,
            work,
        })
    }

    /// Checks `commit` out in the worktree, cleanly. Skipped when this process already did
    /// (under the worktree lock nothing else touches it; at 150k files a checkout plus clean
    /// costs ~0.2 s).
    pub fn checkout(&self, commit: &str) -> Result<()> {
        if self.checked_out.borrow().as_deref() == Some(commit) {
            return Ok(());
        }
        self.checked_out.replace(None);
        self.repo.checkout_worktree(&self.worktree, commit)?;
        self.checked_out.replace(Some(commit.to_owned()));
        Ok(())
    }

    /// Serializes use of the worktree (checkouts and the Bazel servers working on it).
    pub fn lock_worktree(&self) -> Result<FileLock> {
        FileLock::exclusive(&self.work.join("worktree.lock"), None)
            .context("locking the store's worktree")
    }

    /// A fresh scratch directory for one run, removed when dropped.
    pub fn scratch(&self) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(&self.work)
            .with_context(|| format!("creating a scratch directory in {}", self.work.display()))
    }
}
