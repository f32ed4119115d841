//! The `snapshot` benchmark: cold (fresh Bazel), warm (server already up) and snapshot
//! consume (`bazel-diff-snap`, local driver) on the same revisions, with every mode's
//! impacted set required to be byte-identical to cold's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use crate::measure::{self, bazel_shutdown, get_impacted_targets, run, secs};
use crate::{generate_repo, git, BenchError, GenConfig, Mutation, Result};

pub struct SnapshotBench {
    pub sizes: Vec<usize>,
    pub work_dir: PathBuf,
    pub bazel: PathBuf,
    pub bazel_diff: PathBuf,
    pub bazel_diff_snap: PathBuf,
    pub mutations: Vec<Mutation>,
}

/// Seconds per phase of one mode.
#[derive(Debug, Serialize, Default)]
pub struct ModeTimes {
    pub total_s: f64,
    pub phases: BTreeMap<String, f64>,
}

#[derive(Debug, Serialize)]
pub struct SnapshotReport {
    pub targets: usize,
    pub impacted_targets: usize,
    pub cold: ModeTimes,
    pub warm: ModeTimes,
    /// `record` is paid once per base revision, off the PR's critical path.
    pub record_s: f64,
    pub consume: ModeTimes,
    /// cold ÷ consume (goal ≥ 4 at 150k).
    pub cold_over_consume: f64,
    pub warm_over_consume: f64,
    /// Every mode's impacted set equals cold's (the run fails otherwise).
    pub identical: bool,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BenchError {
    let path = path.to_owned();
    move |e| BenchError::msg(format!("{what} {}: {e}", path.display()))
}

impl SnapshotBench {
    pub fn run_all(&self, mut progress: impl FnMut(&str)) -> Result<Vec<SnapshotReport>> {
        std::fs::create_dir_all(&self.work_dir).map_err(io("creating", &self.work_dir))?;
        self.sizes
            .iter()
            .map(|&size| self.run_size(size, &mut progress))
            .collect()
    }

    fn generate(&self, ws: &Path, root: &Path, out: &Path) -> Result<Duration> {
        let mut cmd = measure::generate_hashes(&self.bazel_diff, &self.bazel, ws, root);
        cmd.arg(out);
        run(cmd, None).map(|s| s.wall)
    }

    fn impacted(&self, ws: &Path, base: &Path, head: &Path, out: &Path) -> Result<Duration> {
        get_impacted_targets(&self.bazel_diff, ws, base, head, out)
    }

    /// base + head + diff on the server under `root`; returns the times and impacted file.
    #[allow(clippy::too_many_arguments)]
    fn full_diff(
        &self,
        ws: &Path,
        root: &Path,
        out: &Path,
        name: &str,
        base: &str,
        head: &str,
    ) -> Result<(ModeTimes, PathBuf)> {
        let (base_json, head_json) = (
            out.join(format!("{name}-base.json")),
            out.join(format!("{name}-head.json")),
        );
        let impacted = out.join(format!("{name}-impacted.txt"));
        git::output(ws, &["checkout", "--quiet", base])?;
        let b = self.generate(ws, root, &base_json)?;
        git::output(ws, &["checkout", "--quiet", head])?;
        let h = self.generate(ws, root, &head_json)?;
        let d = self.impacted(ws, &base_json, &head_json, &impacted)?;
        let mut times = ModeTimes {
            total_s: secs(b + h + d),
            ..ModeTimes::default()
        };
        times.phases.insert("generate_base_s".into(), secs(b));
        times.phases.insert("generate_head_s".into(), secs(h));
        times.phases.insert("impacted_s".into(), secs(d));
        Ok((times, impacted))
    }

    fn run_size(&self, size: usize, progress: &mut impl FnMut(&str)) -> Result<SnapshotReport> {
        let ws = self.work_dir.join(format!("snap-ws-{size}"));
        let out = self.work_dir.join(format!("snap-results-{size}"));
        let cold_root = self.work_dir.join(format!("snap-cold-{size}"));
        let store = self.work_dir.join(format!("snap-store-{size}"));
        for dir in [&ws, &out, &cold_root, &store] {
            if dir.exists() {
                std::fs::remove_dir_all(dir).map_err(io("removing", dir))?;
            }
        }
        std::fs::create_dir_all(&out).map_err(io("creating", &out))?;
        progress(&format!("generating ~{size} targets in {}", ws.display()));
        let mut cfg = GenConfig::default();
        cfg.packages = cfg.packages_for_targets(size);
        let (summary, commits) = generate_repo(&cfg, &ws, 2, &self.mutations)?;
        let (base, head) = (commits[0].sha.clone(), commits[1].sha.clone());

        progress("cold: fresh output root, base + head + diff");
        let (cold, cold_impacted) = self.full_diff(&ws, &cold_root, &out, "cold", &base, &head)?;
        progress("warm: same work on the server left running");
        let (warm, warm_impacted) = self.full_diff(&ws, &cold_root, &out, "warm", &base, &head)?;
        bazel_shutdown(&self.bazel, &ws, &cold_root);

        progress("snapshot: record the base once");
        let snap = |args: &[&str]| {
            let mut cmd = Command::new(&self.bazel_diff_snap);
            cmd.args(args)
                .arg("--workspace")
                .arg(&ws)
                .arg("--store")
                .arg(&store)
                .arg("--bazel")
                .arg(&self.bazel)
                .arg("--bazel-diff")
                .arg(&self.bazel_diff);
            cmd
        };
        let record = run(snap(&["record", "--base-sha", &base]), None)?;
        progress("snapshot: consume the head");
        let consume_impacted = out.join("consume-impacted.txt");
        let report_path = out.join("consume-report.json");
        let mut consume_cmd = snap(&["consume", "--target-sha", &head, "--base-sha", &base]);
        consume_cmd
            .arg("--out")
            .arg(&consume_impacted)
            .arg("--json")
            .arg(&report_path);
        let consumed = run(consume_cmd, None)?;
        let mut consume = ModeTimes {
            total_s: secs(consumed.wall),
            ..ModeTimes::default()
        };
        let report: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&report_path).map_err(io("reading", &report_path))?,
        )
        .map_err(|e| BenchError::msg(format!("consume report: {e}")))?;
        for phase in report["phases"].as_array().into_iter().flatten() {
            if let (Some(name), Some(s)) = (phase[0].as_str(), phase[1].as_f64()) {
                consume.phases.insert(format!("{name}_s"), s);
            }
        }
        // The local driver's server stays warm for the next consume; stop it here.
        if let Ok(roots) = std::fs::read_dir(store.join(".work")) {
            for repo in roots.flatten() {
                for fp in std::fs::read_dir(repo.path().join("bazel"))
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    bazel_shutdown(&self.bazel, &repo.path().join("worktree"), &fp.path());
                }
            }
        }

        let read = |p: &Path| std::fs::read(p).map_err(io("reading", p));
        let cold_bytes = read(&cold_impacted)?;
        let identical =
            read(&warm_impacted)? == cold_bytes && read(&consume_impacted)? == cold_bytes;
        if !identical {
            return Err(BenchError::msg(format!(
                "impacted sets differ from cold's: compare {} with {} and {}",
                cold_impacted.display(),
                warm_impacted.display(),
                consume_impacted.display()
            )));
        }
        let ratio = |a: f64, b: f64| (a / b * 100.0).round() / 100.0;
        Ok(SnapshotReport {
            targets: summary.targets,
            impacted_targets: cold_bytes.iter().filter(|&&b| b == b'\n').count(),
            cold_over_consume: ratio(cold.total_s, consume.total_s),
            warm_over_consume: ratio(warm.total_s, consume.total_s),
            cold,
            warm,
            record_s: secs(record.wall),
            consume,
            identical,
        })
    }
}
