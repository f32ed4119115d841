//! The `hashing` benchmark (issue: "faster than the query it waits on"): on one warm Bazel
//! server, `bazel-diff generate-hashes` against the bare query it runs, its peak RSS, and
//! `get-impacted-targets` on two hash files of the same size.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

use crate::measure::{self, bazel_shutdown, median, run, secs, Sample};
use crate::{generate_repo, git, BenchError, GenConfig, Mutation, Result};

/// What to measure.
pub struct HashingBench {
    pub sizes: Vec<usize>,
    pub runs: usize,
    pub work_dir: PathBuf,
    pub bazel: PathBuf,
    pub bazel_diff: PathBuf,
}

/// Figures for one workspace size.
#[derive(Debug, Serialize)]
pub struct HashingReport {
    pub targets: usize,
    pub runs: usize,
    pub bare_query_s: f64,
    pub generate_hashes_s: f64,
    /// generate-hashes ÷ bare query (goal ≤ 1.10 at 150k).
    pub ratio: f64,
    pub generate_hashes_max_rss_mib: f64,
    pub get_impacted_targets_s: f64,
    pub impacted_targets: usize,
}

/// The query the tool runs in its default mode, written as it writes it.
const EXPRESSION: &str = "'//external:all-targets' + '//...:all-targets'";

impl HashingBench {
    pub fn run_all(&self, mut progress: impl FnMut(&str)) -> Result<Vec<HashingReport>> {
        std::fs::create_dir_all(&self.work_dir)
            .map_err(|e| BenchError::msg(format!("creating {}: {e}", self.work_dir.display())))?;
        let mut reports = Vec::new();
        for &size in &self.sizes {
            reports.push(self.run_size(size, &mut progress)?);
        }
        Ok(reports)
    }

    fn run_size(&self, size: usize, progress: &mut impl FnMut(&str)) -> Result<HashingReport> {
        let ws = self.work_dir.join(format!("ws-{size}"));
        let user_root = self.work_dir.join(format!("out-{size}"));
        let out = self.work_dir.join(format!("results-{size}"));
        for dir in [&ws, &out] {
            if dir.exists() {
                std::fs::remove_dir_all(dir)
                    .map_err(|e| BenchError::msg(format!("removing {}: {e}", dir.display())))?;
            }
        }
        std::fs::create_dir_all(&out)
            .map_err(|e| BenchError::msg(format!("creating {}: {e}", out.display())))?;
        progress(&format!("generating ~{size} targets in {}", ws.display()));
        let mut cfg = GenConfig::default();
        cfg.packages = cfg.packages_for_targets(size);
        let (summary, commits) = generate_repo(&cfg, &ws, 2, &["content:1".parse::<Mutation>()?])?;
        let (base, head) = (&commits[0].sha, &commits[1].sha);
        let startup = format!("--output_user_root={}", user_root.display());
        let query_file = out.join("query.txt");
        std::fs::write(&query_file, EXPRESSION)
            .map_err(|e| BenchError::msg(format!("writing {}: {e}", query_file.display())))?;

        let bare = || {
            let mut cmd = Command::new(&self.bazel);
            cmd.current_dir(&ws)
                .arg(&startup)
                .args(["query", "--output", "streamed_proto"])
                .args(["--proto:instantiation_stack", "--order_output=no"])
                .arg("--query_file")
                .arg(&query_file);
            run(cmd, None)
        };
        let generate = |output: &Path| {
            let mut cmd = measure::generate_hashes(&self.bazel_diff, &self.bazel, &ws, &user_root);
            cmd.arg(output);
            run(cmd, None)
        };

        git::output(&ws, &["checkout", "--quiet", base])?;
        progress("warming the Bazel server");
        let base_hashes = out.join("base.json");
        generate(&base_hashes)?;
        bare()?;
        let (mut bare_times, mut gen_times, mut rss) = (Vec::new(), Vec::new(), 0);
        for i in 0..self.runs {
            progress(&format!("run {}/{}", i + 1, self.runs));
            // Interleaved so drift in machine load hits both sides alike.
            let b: Sample = bare()?;
            let g = generate(&base_hashes)?;
            bare_times.push(b.wall);
            gen_times.push(g.wall);
            rss = rss.max(g.max_rss_kib);
        }
        git::output(&ws, &["checkout", "--quiet", head])?;
        let head_hashes = out.join("head.json");
        generate(&head_hashes)?;
        let impacted_file = out.join("impacted.txt");
        let mut impacted_times = Vec::new();
        for _ in 0..self.runs {
            let mut cmd = Command::new(&self.bazel_diff);
            cmd.arg("get-impacted-targets")
                .arg("-w")
                .arg(&ws)
                .arg("-b")
                .arg(&self.bazel)
                .arg("-sh")
                .arg(&base_hashes)
                .arg("-fh")
                .arg(&head_hashes)
                .arg("-o")
                .arg(&impacted_file);
            impacted_times.push(run(cmd, None)?.wall);
        }
        let impacted = std::fs::read_to_string(&impacted_file)
            .map_err(|e| BenchError::msg(format!("reading {}: {e}", impacted_file.display())))?
            .lines()
            .count();
        bazel_shutdown(&self.bazel, &ws, &user_root);

        let bare_s = secs(median(bare_times));
        let gen_s = secs(median(gen_times));
        Ok(HashingReport {
            targets: summary.targets,
            runs: self.runs,
            bare_query_s: bare_s,
            generate_hashes_s: gen_s,
            ratio: (gen_s / bare_s * 1000.0).round() / 1000.0,
            generate_hashes_max_rss_mib: (rss as f64 / 1024.0 * 10.0).round() / 10.0,
            get_impacted_targets_s: secs(median(impacted_times)),
            impacted_targets: impacted,
        })
    }
}
