//! A generated workspace as a git history: commit "base", then one commit per round of
//! mutations. This is what `bazel-diff-bench gen --git` and the benchmark harness both use.

use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::gen::{generate, GenConfig, GenSummary};
use crate::git;
use crate::mutate::{apply_mutation, Mutation, MutationReport};
use crate::rng::Rng;

/// Mutation rounds draw from `Rng::new(seed).fork(MUTATION_STREAM + round)`, a stream the
/// generator itself never uses (it forks by package index, far below this).
const MUTATION_STREAM: u64 = 1 << 40;

#[derive(Debug, Clone, Serialize)]
pub struct CommitInfo {
    pub sha: String,
    pub message: String,
    pub mutations: Vec<MutationReport>,
}

/// The mutation rng of round `round` (1 = the first commit after "base").
pub fn mutation_rng(seed: u64, round: u64) -> Rng {
    Rng::new(seed).fork(MUTATION_STREAM + round)
}

/// Applies every mutation of `mutations`, in order, as round `round`.
pub fn mutate_round(
    dir: &Path,
    seed: u64,
    round: u64,
    mutations: &[Mutation],
) -> Result<Vec<MutationReport>> {
    let mut rng = mutation_rng(seed, round);
    mutations
        .iter()
        .map(|m| apply_mutation(dir, m, &mut rng))
        .collect()
}

/// Generates `cfg` into `dir`, commits it as "base", then makes `commits - 1` more commits,
/// each applying all of `mutations`. Returns the commits oldest first.
pub fn generate_repo(
    cfg: &GenConfig,
    dir: &Path,
    commits: usize,
    mutations: &[Mutation],
) -> Result<(GenSummary, Vec<CommitInfo>)> {
    let summary = generate(cfg, dir)?;
    Ok((summary, commit_history(dir, cfg.seed, commits, mutations)?))
}

/// Turns a freshly generated tree into a git history: see [`generate_repo`].
pub fn commit_history(
    dir: &Path,
    seed: u64,
    commits: usize,
    mutations: &[Mutation],
) -> Result<Vec<CommitInfo>> {
    git::init(dir)?;
    let mut out = vec![CommitInfo {
        sha: git::commit_initial_fast(dir, "base", 0)?,
        message: "base".into(),
        mutations: vec![],
    }];
    for round in 1..commits.max(1) as u64 {
        let reports = mutate_round(dir, seed, round, mutations)?;
        let names: Vec<String> = mutations.iter().map(ToString::to_string).collect();
        let message = format!("mutation {round}: {}", names.join(" "));
        let sha = git::commit_all(dir, &message, round)?;
        out.push(CommitInfo {
            sha,
            message,
            mutations: reports,
        });
    }
    Ok(out)
}
