//! The git operations the orchestrator needs, each one `git` process with a clear error.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// One changed file between two commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `M`odified, `A`dded, `D`eleted, `T`ype changed (renames are split into D + A).
    pub status: char,
    pub old_mode: String,
    pub new_mode: String,
    pub path: PathBuf,
}

/// A git repository (the user's checkout; never modified by us).
#[derive(Debug, Clone)]
pub struct Repo {
    pub dir: PathBuf,
}

fn run(dir: &Path, args: &[&str]) -> Result<std::process::Output> {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running git {}", args.join(" ")))
}

fn stdout_of(dir: &Path, args: &[&str]) -> Result<String> {
    let out = run(dir, args)?;
    if !out.status.success() {
        bail!(
            "`git -C {} {}` failed: {}",
            dir.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

impl Repo {
    /// Opens the repository containing `dir`, at its top level.
    pub fn open(dir: &Path) -> Result<Repo> {
        let top = stdout_of(dir, &["rev-parse", "--show-toplevel"])
            .with_context(|| format!("{} is not inside a git repository", dir.display()))?;
        Ok(Repo {
            dir: PathBuf::from(top),
        })
    }

    /// The full commit id `rev` names, or `None` when git does not know it (unknown sha,
    /// commit missing from a shallow clone).
    pub fn resolve_commit(&self, rev: &str) -> Result<Option<String>> {
        if rev.starts_with('-') {
            return Ok(None);
        }
        let spec = format!("{rev}^{{commit}}");
        let out = run(&self.dir, &["rev-parse", "--verify", "--quiet", &spec])?;
        Ok(out
            .status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned()))
    }

    /// Like [`Repo::resolve_commit`] but an unknown revision is an error naming it.
    pub fn commit(&self, rev: &str) -> Result<String> {
        self.resolve_commit(rev)?.with_context(|| {
            format!(
                "git does not know the revision {rev:?} in {} (unknown, or missing from a shallow clone)",
                self.dir.display()
            )
        })
    }

    /// Whether `ancestor` is an ancestor of (or equal to) `descendant`.
    pub fn is_ancestor(&self, ancestor: &str, descendant: &str) -> Result<bool> {
        let out = run(
            &self.dir,
            &["merge-base", "--is-ancestor", ancestor, descendant],
        )?;
        match out.status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => bail!(
                "git merge-base --is-ancestor {ancestor} {descendant}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
    }

    /// The first `limit` commits reachable from `head` (itself first), in one walk; a
    /// shallow clone simply ends early.
    pub fn ancestors(&self, head: &str, limit: usize) -> Result<Vec<String>> {
        let max = format!("--max-count={limit}");
        Ok(stdout_of(&self.dir, &["rev-list", &max, head])?
            .lines()
            .map(str::to_owned)
            .collect())
    }

    /// `git rev-list --count from..to`: commits in `to` not in `from`.
    pub fn distance(&self, from: &str, to: &str) -> Result<u64> {
        let range = format!("{from}..{to}");
        let text = stdout_of(&self.dir, &["rev-list", "--count", &range])?;
        text.parse()
            .with_context(|| format!("git rev-list --count {range} printed {text:?}"))
    }

    /// Where `dir` (a directory inside this repository) is, relative to the top level.
    pub fn relative_path(&self, dir: &Path) -> Result<PathBuf> {
        let top = self
            .dir
            .canonicalize()
            .with_context(|| format!("resolving {}", self.dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        Ok(dir
            .strip_prefix(&top)
            .map(Path::to_path_buf)
            .unwrap_or_default())
    }

    /// Files that differ between two commits, as `(status, old mode, new mode, path)` from
    /// `git diff --raw --no-renames`; paths are relative to the repository's top level.
    pub fn changed_files(&self, from: &str, to: &str) -> Result<Vec<Change>> {
        let out = run(
            &self.dir,
            &[
                "diff",
                "--raw",
                "-z",
                "--no-renames",
                "--no-abbrev",
                from,
                to,
            ],
        )?;
        if !out.status.success() {
            bail!(
                "git diff {from} {to}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // Records are `:<old mode> <new mode> <old sha> <new sha> <status>\0<path>\0`.
        let text = String::from_utf8_lossy(&out.stdout);
        let mut fields = text.split('\0');
        let mut changes = Vec::new();
        while let Some(meta) = fields.next().filter(|m| !m.is_empty()) {
            let path = fields
                .next()
                .context("git diff --raw: record without a path")?;
            let parts: Vec<&str> = meta.trim_start_matches(':').split(' ').collect();
            let [old_mode, new_mode, _, _, status] = parts[..] else {
                bail!("git diff --raw: unexpected record {meta:?}");
            };
            changes.push(Change {
                status: status.chars().next().unwrap_or('?'),
                old_mode: old_mode.to_owned(),
                new_mode: new_mode.to_owned(),
                path: PathBuf::from(path),
            });
        }
        Ok(changes)
    }

    /// Git's common directory, which identifies the repository across its worktrees.
    pub fn common_dir(&self) -> Result<PathBuf> {
        let dir = stdout_of(&self.dir, &["rev-parse", "--git-common-dir"])?;
        let path = PathBuf::from(dir);
        let path = if path.is_relative() {
            self.dir.join(path)
        } else {
            path
        };
        path.canonicalize()
            .with_context(|| format!("resolving {}", path.display()))
    }

    /// Makes sure `path` is a detached worktree of this repository checked out at `commit`,
    /// with no untracked or modified files (Bazel's convenience symlinks excepted).
    pub fn checkout_worktree(&self, path: &Path, commit: &str) -> Result<()> {
        let valid = path.join(".git").exists()
            && Repo::open(path)
                .and_then(|w| w.common_dir())
                .ok()
                .zip(self.common_dir().ok())
                .is_some_and(|(a, b)| a == b);
        if !valid {
            if path.exists() {
                std::fs::remove_dir_all(path)
                    .with_context(|| format!("removing stale worktree {}", path.display()))?;
            }
            // --force also reuses a registration whose directory is gone; no `worktree prune`,
            // which would drop the user's own stale registrations too.
            let target = path.to_string_lossy();
            stdout_of(
                &self.dir,
                &["worktree", "add", "--detach", "--force", &target, commit],
            )?;
            return Ok(());
        }
        stdout_of(
            path,
            &["checkout", "--detach", "--force", "--quiet", commit],
        )?;
        // Bazel's output symlinks (bazel-*) are kept: removing them would not change results
        // and recreating them is Bazel's job.
        stdout_of(path, &["clean", "-ffdxq", "-e", "/bazel-*"])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) -> String {
        stdout_of(dir, args).unwrap()
    }

    fn repo_with_commits(n: usize) -> (tempfile::TempDir, Vec<String>) {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q"]);
        git(dir.path(), &["config", "user.email", "t@example.com"]);
        git(dir.path(), &["config", "user.name", "t"]);
        let mut shas = Vec::new();
        for i in 0..n {
            std::fs::write(dir.path().join("f.txt"), i.to_string()).unwrap();
            git(dir.path(), &["add", "."]);
            git(dir.path(), &["commit", "-qm", &format!("c{i}")]);
            shas.push(git(dir.path(), &["rev-parse", "HEAD"]));
        }
        (dir, shas)
    }

    #[test]
    fn canonicalizes_and_rejects_unknown() {
        let (dir, shas) = repo_with_commits(3);
        let repo = Repo::open(dir.path()).unwrap();
        assert_eq!(
            repo.resolve_commit("HEAD").unwrap().as_deref(),
            Some(&*shas[2])
        );
        assert_eq!(
            repo.resolve_commit(&shas[0][..8]).unwrap().as_deref(),
            Some(&*shas[0])
        );
        assert_eq!(
            repo.resolve_commit("0000000000000000000000000000000000000000")
                .unwrap(),
            None
        );
        assert_eq!(repo.resolve_commit("--output=x").unwrap(), None);
        assert!(repo
            .commit("nope")
            .unwrap_err()
            .to_string()
            .contains("nope"));
    }

    #[test]
    fn ancestry_and_distance() {
        let (dir, shas) = repo_with_commits(4);
        let repo = Repo::open(dir.path()).unwrap();
        assert!(repo.is_ancestor(&shas[0], &shas[3]).unwrap());
        assert!(!repo.is_ancestor(&shas[3], &shas[0]).unwrap());
        assert_eq!(repo.distance(&shas[1], &shas[3]).unwrap(), 2);
        assert_eq!(
            repo.ancestors(&shas[3], 2).unwrap(),
            vec![shas[3].clone(), shas[2].clone()]
        );
    }

    #[test]
    fn worktree_is_created_then_reused_and_cleaned() {
        let (dir, shas) = repo_with_commits(2);
        let repo = Repo::open(dir.path()).unwrap();
        let wt = tempfile::tempdir().unwrap();
        let path = wt.path().join("wt");
        repo.checkout_worktree(&path, &shas[0]).unwrap();
        assert_eq!(std::fs::read_to_string(path.join("f.txt")).unwrap(), "0");
        std::fs::write(path.join("junk"), "x").unwrap();
        std::fs::write(path.join("f.txt"), "dirty").unwrap();
        repo.checkout_worktree(&path, &shas[1]).unwrap();
        assert_eq!(std::fs::read_to_string(path.join("f.txt")).unwrap(), "1");
        assert!(!path.join("junk").exists());
        // The user's checkout is untouched.
        assert_eq!(git(dir.path(), &["rev-parse", "HEAD"]), shas[1]);
    }
}
