//! Choosing the snapshot entry for a requested base: the same commit, or its nearest stored
//! ancestor within `--max-distance` (upstream #381 resolution, made safe: shas are
//! canonicalized, unknown ones skipped, the walk is bounded).

use anyhow::Result;
use serde::Serialize;

use crate::git::Repo;

/// The chosen entry.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Choice {
    /// The entry's base commit.
    pub entry_base: String,
    /// Commits between the entry's base and the requested base (0: the same commit).
    pub distance: u64,
}

/// A candidate that was not chosen, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub sha: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Resolution {
    pub choice: Option<Choice>,
    pub skipped: Vec<Skipped>,
}

/// Picks, among `candidates` (entry base shas), the one equal to `want` or its nearest
/// ancestor no more than `max_distance` commits away; ties go to the smaller sha.
pub fn resolve(
    repo: &Repo,
    candidates: &[String],
    want: &str,
    max_distance: u64,
) -> Result<Resolution> {
    let mut skipped = Vec::new();
    let mut known = Vec::new();
    for sha in candidates {
        match repo.resolve_commit(sha)? {
            Some(full) if full == *sha => known.push(sha.clone()),
            Some(_) => skipped.push(Skipped {
                sha: sha.clone(),
                reason: "not a canonical commit id".into(),
            }),
            None => skipped.push(Skipped {
                sha: sha.clone(),
                reason: "git does not know this commit (other repository or shallow clone)".into(),
            }),
        }
    }
    if known.iter().any(|sha| sha == want) {
        return Ok(Resolution {
            choice: Some(Choice {
                entry_base: want.to_owned(),
                distance: 0,
            }),
            skipped,
        });
    }
    // One bounded walk finds which candidates are recent ancestors; exact distances are then
    // computed only for those.
    let limit = usize::try_from(max_distance.saturating_add(1)).unwrap_or(usize::MAX);
    let walk: std::collections::HashSet<String> =
        repo.ancestors(want, limit)?.into_iter().collect();
    let mut best: Option<Choice> = None;
    for sha in known {
        if !walk.contains(&sha) {
            let reason = if repo.is_ancestor(&sha, want)? {
                format!("ancestor farther than --max-distance {max_distance}")
            } else {
                "not an ancestor of the requested base".into()
            };
            skipped.push(Skipped { sha, reason });
            continue;
        }
        let distance = repo.distance(&sha, want)?;
        if distance > max_distance {
            skipped.push(Skipped {
                sha,
                reason: format!("{distance} commits away, over --max-distance {max_distance}"),
            });
            continue;
        }
        let better = best
            .as_ref()
            .is_none_or(|b| (distance, sha.as_str()) < (b.distance, b.entry_base.as_str()));
        if better {
            if let Some(previous) = best.take() {
                skipped.push(Skipped {
                    reason: format!("a nearer ancestor exists ({} commits away)", distance),
                    sha: previous.entry_base,
                });
            }
            best = Some(Choice {
                entry_base: sha,
                distance,
            });
        } else {
            skipped.push(Skipped {
                sha,
                reason: "a nearer ancestor exists".into(),
            });
        }
    }
    Ok(Resolution {
        choice: best,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// main: c0 - c1 - c2 - c3 ; branch from c1: b1
    fn history() -> (tempfile::TempDir, Vec<String>, String) {
        let dir = tempfile::tempdir().unwrap();
        git(dir.path(), &["init", "-q", "-b", "main"]);
        git(dir.path(), &["config", "user.email", "t@example.com"]);
        git(dir.path(), &["config", "user.name", "t"]);
        let mut shas = Vec::new();
        for i in 0..4 {
            std::fs::write(dir.path().join("f"), i.to_string()).unwrap();
            git(dir.path(), &["add", "."]);
            git(dir.path(), &["commit", "-qm", &format!("c{i}")]);
            shas.push(git(dir.path(), &["rev-parse", "HEAD"]));
        }
        git(dir.path(), &["checkout", "-q", "-b", "side", &shas[1]]);
        std::fs::write(dir.path().join("g"), "side").unwrap();
        git(dir.path(), &["add", "."]);
        git(dir.path(), &["commit", "-qm", "b1"]);
        let side = git(dir.path(), &["rev-parse", "HEAD"]);
        (dir, shas, side)
    }

    #[test]
    fn exact_match_wins() {
        let (dir, shas, _) = history();
        let repo = Repo::open(dir.path()).unwrap();
        let r = resolve(&repo, &[shas[0].clone(), shas[3].clone()], &shas[3], 100).unwrap();
        assert_eq!(
            r.choice,
            Some(Choice {
                entry_base: shas[3].clone(),
                distance: 0
            })
        );
    }

    #[test]
    fn nearest_ancestor_is_chosen_and_non_ancestors_skipped() {
        let (dir, shas, side) = history();
        let repo = Repo::open(dir.path()).unwrap();
        let candidates = vec![shas[0].clone(), shas[1].clone(), side.clone()];
        let r = resolve(&repo, &candidates, &shas[3], 100).unwrap();
        assert_eq!(
            r.choice,
            Some(Choice {
                entry_base: shas[1].clone(),
                distance: 2
            })
        );
        assert!(r
            .skipped
            .iter()
            .any(|s| s.sha == side && s.reason.contains("not an ancestor")));
    }

    #[test]
    fn max_distance_and_unknown_commits() {
        let (dir, shas, _) = history();
        let repo = Repo::open(dir.path()).unwrap();
        let unknown = "1".repeat(40);
        let r = resolve(&repo, &[shas[0].clone(), unknown.clone()], &shas[3], 2).unwrap();
        assert_eq!(r.choice, None);
        assert!(r
            .skipped
            .iter()
            .any(|s| s.sha == unknown && s.reason.contains("does not know")));
        assert!(r
            .skipped
            .iter()
            .any(|s| s.sha == shas[0] && s.reason.contains("max-distance")));
    }

    #[test]
    fn shallow_clone_does_not_crash() {
        let (dir, shas, _) = history();
        let shallow = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let out = Command::new("git")
            .args(["clone", "-q", "--depth", "1", "--branch", "main", &url])
            .arg(shallow.path().join("c"))
            .output()
            .unwrap();
        assert!(out.status.success());
        let repo = Repo::open(&shallow.path().join("c")).unwrap();
        let r = resolve(&repo, &[shas[0].clone(), shas[3].clone()], &shas[3], 100).unwrap();
        assert_eq!(r.choice.unwrap().entry_base, shas[3]);
        let r = resolve(&repo, &[shas[0].clone()], &shas[3], 100).unwrap();
        assert_eq!(r.choice, None);
    }
}
