//! The `incremental` benchmark (issue 6): for each kind of change from one base, the full
//! query on a warm server against `generate-hashes --incremental-from` (plus the diff), with
//! the incremental hash file required to be byte-identical to the full one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::measure::{self, bazel_shutdown, get_impacted_targets, run, secs};
use crate::mutate::add_partial_bzl;
use crate::repo::mutate_round;
use crate::{generate, git, BenchError, GenConfig, Mutation, Result};

pub struct IncrementalBench {
    pub size: usize,
    pub work_dir: PathBuf,
    pub bazel: PathBuf,
    pub bazel_diff: PathBuf,
    /// One scenario per entry, each applied to the base on its own.
    pub scenarios: Vec<Vec<Mutation>>,
}

#[derive(Debug, Serialize)]
pub struct IncrementalRow {
    pub scenario: String,
    pub changed_files: usize,
    /// Warm-server generate-hashes + get-impacted-targets.
    pub full_s: f64,
    /// generate-hashes --incremental-from + get-impacted-targets.
    pub incremental_s: f64,
    /// `graph-stable path`, `package-local path` or `full query: <reason>`, as bazel-diff
    /// said.
    pub path: String,
    pub speedup: f64,
    pub impacted_targets: usize,
    pub identical: bool,
}

#[derive(Debug, Serialize)]
pub struct IncrementalReport {
    pub targets: usize,
    pub rows: Vec<IncrementalRow>,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| BenchError::msg(format!("reading {}: {e}", path.display())))
}

impl IncrementalBench {
    fn bazel_diff(&self, ws: &Path, root: &Path, args: &[&Path]) -> Command {
        let mut cmd = measure::generate_hashes(&self.bazel_diff, &self.bazel, ws, root);
        cmd.args(args);
        cmd
    }

    fn impacted(&self, ws: &Path, base: &Path, head: &Path, out: &Path) -> Result<Duration> {
        get_impacted_targets(&self.bazel_diff, ws, base, head, out)
    }

    pub fn run(&self, mut progress: impl FnMut(&str)) -> Result<IncrementalReport> {
        let ws = self.work_dir.join(format!("inc-ws-{}", self.size));
        let root = self.work_dir.join(format!("inc-out-{}", self.size));
        let out = self.work_dir.join(format!("inc-results-{}", self.size));
        for dir in [&ws, &root, &out] {
            if dir.exists() {
                std::fs::remove_dir_all(dir)
                    .map_err(|e| BenchError::msg(format!("removing {}: {e}", dir.display())))?;
            }
        }
        std::fs::create_dir_all(&out)
            .map_err(|e| BenchError::msg(format!("creating {}: {e}", out.display())))?;
        progress(&format!(
            "generating ~{} targets in {}",
            self.size,
            ws.display()
        ));
        let mut cfg = GenConfig::default();
        cfg.packages = cfg.packages_for_targets(self.size);
        let mut summary = generate(&cfg, &ws)?;
        let partial = self
            .scenarios
            .iter()
            .flatten()
            .any(|m| *m == Mutation::PartialBzlEdit);
        if partial {
            let loaders = add_partial_bzl(&ws, 10)?;
            // Each loader gains the macro's rule and its output.
            summary.targets += loaders * 2;
            progress(&format!(
                "{loaders} packages load tools/partial.bzl (partial-bzl-edit)"
            ));
        }
        git::init(&ws)?;
        let base = git::commit_initial_fast(&ws, "base", 0)?;

        progress("base: full query with --write-graph-state (starts the server)");
        let (base_json, state) = (out.join("base.json"), out.join("graph_state.bin"));
        run(
            self.bazel_diff(
                &ws,
                &root,
                &[Path::new("--write-graph-state"), &state, &base_json],
            ),
            None,
        )?;
        let mut rows = Vec::new();
        for (i, scenario) in self.scenarios.iter().enumerate() {
            let name: Vec<String> = scenario.iter().map(ToString::to_string).collect();
            let name = name.join(" ");
            progress(&format!("scenario {name}"));
            git::output(&ws, &["checkout", "--quiet", "--force", &base])?;
            git::output(&ws, &["clean", "-fdxq", "-e", "/bazel-*"])?;
            mutate_round(&ws, cfg.seed, i as u64 + 1, scenario)?;
            git::commit_all(&ws, &name, i as u64 + 1)?;
            let changed = git::output(&ws, &["diff", "--name-only", &base, "HEAD"])?;
            let list = out.join(format!("changed-{i}.txt"));
            std::fs::write(&list, format!("{changed}\n"))
                .map_err(|e| BenchError::msg(format!("writing {}: {e}", list.display())))?;

            let (full_json, inc_json) = (
                out.join(format!("full-{i}.json")),
                out.join(format!("inc-{i}.json")),
            );
            let (full_imp, inc_imp) = (
                out.join(format!("full-{i}.txt")),
                out.join(format!("inc-{i}.txt")),
            );
            let full = run(self.bazel_diff(&ws, &root, &[&full_json]), None)?.wall
                + self.impacted(&ws, &base_json, &full_json, &full_imp)?;
            let stderr_path = out.join(format!("inc-{i}.stderr"));
            let started = Instant::now();
            let mut cmd = self.bazel_diff(
                &ws,
                &root,
                &[
                    Path::new("--incremental-from"),
                    &state,
                    Path::new("--incremental-changed"),
                    &list,
                    &inc_json,
                ],
            );
            let stderr_file = std::fs::File::create(&stderr_path)
                .map_err(|e| BenchError::msg(format!("creating {}: {e}", stderr_path.display())))?;
            cmd.stderr(stderr_file).stdout(std::process::Stdio::null());
            let status = cmd
                .status()
                .map_err(|e| BenchError::msg(format!("running bazel-diff: {e}")))?;
            if !status.success() {
                return Err(BenchError::msg(format!(
                    "incremental generate-hashes failed; see {}",
                    stderr_path.display()
                )));
            }
            let incremental =
                started.elapsed() + self.impacted(&ws, &base_json, &inc_json, &inc_imp)?;
            let said = String::from_utf8_lossy(&read(&stderr_path)?).into_owned();
            let path = said
                .lines()
                .find_map(|l| l.strip_prefix("bazel-diff: incremental: "))
                .map(|l| l.split(',').next().unwrap_or(l).trim().to_owned())
                .unwrap_or_else(|| "unknown".into());
            let identical =
                read(&full_json)? == read(&inc_json)? && read(&full_imp)? == read(&inc_imp)?;
            if !identical {
                return Err(BenchError::msg(format!(
                    "scenario {name}: incremental output differs from the full query ({} vs {})",
                    inc_json.display(),
                    full_json.display()
                )));
            }
            rows.push(IncrementalRow {
                scenario: name,
                changed_files: changed.lines().count(),
                full_s: secs(full),
                incremental_s: secs(incremental),
                path,
                speedup: (full.as_secs_f64() / incremental.as_secs_f64() * 10.0).round() / 10.0,
                impacted_targets: read(&inc_imp)?.iter().filter(|&&b| b == b'\n').count(),
                identical,
            });
        }
        bazel_shutdown(&self.bazel, &ws, &root);
        Ok(IncrementalReport {
            targets: summary.targets,
            rows,
        })
    }
}
