//! `bazel-diff-bench`: synthetic workspaces for benchmarking and differential testing of
//! bazel-diff. Subcommands parse flags and call the library; `gen` writes a workspace (and
//! optionally its git history). The measuring `run` subcommand is to come.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use bazel_diff_bench::gen::{self, GenConfig, WORKSPACE};
use bazel_diff_bench::repo::commit_history as history;
use bazel_diff_bench::Mutation;

#[derive(Parser)]
#[command(
    name = "bazel-diff-bench",
    version,
    about = "Synthetic Bazel workspaces for benchmarking bazel-diff"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a layered genrule workspace (WORKSPACE mode, builds offline); prints a JSON summary.
    Gen(GenArgs),
    /// Measure generate-hashes against the bare query it runs on one warm server, its peak
    /// RSS, and get-impacted-targets, at each size; prints a table and JSON.
    Hashing(HashingArgs),
    /// Cold vs warm vs snapshot consume (local driver) on the same revisions; fails unless
    /// every mode's impacted set is byte-identical to cold's. Prints a table and JSON.
    Snapshot(SnapshotArgs),
    /// Full query (warm server) vs `generate-hashes --incremental-from` for several kinds of
    /// change from one base; fails unless both give byte-identical hashes.
    Incremental(IncrementalArgs),
    /// Store size of firecracker entries (a real entry, or synthetic Full vs Diff memory).
    FcStore(bazel_diff_bench::fc_store::FcStoreArgs),
}

#[derive(Args)]
struct IncrementalArgs {
    /// Workspace size (approximate target count).
    #[arg(long, default_value_t = 150_000)]
    size: usize,
    /// Scenarios, each applied to the base on its own; mutations of one scenario are
    /// joined with `+` (e.g. `content:1`, `content:50`, `build-edit:1+content:1`).
    #[arg(
        long = "scenario",
        value_delimiter = ',',
        default_value = "content:1,content:50,build-edit:1,build-edit:5,partial-bzl-edit,bzl-edit"
    )]
    scenarios: Vec<String>,
    #[command(flatten)]
    common: BenchCommon,
}

#[derive(Args)]
struct SnapshotArgs {
    /// Workspace sizes (approximate target counts), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "15000,150000")]
    sizes: Vec<usize>,
    #[command(flatten)]
    common: BenchCommon,
    #[arg(long, default_value = "target/release/bazel-diff-snap")]
    bazel_diff_snap: PathBuf,
    /// The change between base and head (repeatable), e.g. content:1, build-edit:2.
    #[arg(
        long = "mutation",
        value_name = "KIND[:K]",
        default_value = "content:1"
    )]
    mutations: Vec<Mutation>,
}

#[derive(Args)]
struct HashingArgs {
    /// Workspace sizes (approximate target counts), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "15000,150000")]
    sizes: Vec<usize>,
    /// Measured runs per size (medians are reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[command(flatten)]
    common: BenchCommon,
}

/// Flags every measuring subcommand takes.
#[derive(Args)]
struct BenchCommon {
    /// Scratch directory for workspaces, output roots and results (several GB at 150k).
    #[arg(long, default_value = "/tmp/bazel-diff-bench")]
    work_dir: PathBuf,
    /// Bazel binary.
    #[arg(long, default_value = "bazel")]
    bazel: PathBuf,
    /// bazel-diff binary (build it with `cargo build --release -p bazel-diff`).
    #[arg(long, default_value = "target/release/bazel-diff")]
    bazel_diff: PathBuf,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct GenArgs {
    /// Output directory (created; must be empty unless --force).
    dir: PathBuf,
    /// Approximate number of targets of `bazel query '//...:all-targets'` [default: 1500].
    #[arg(long, conflicts_with = "packages")]
    targets: Option<usize>,
    /// Exact number of packages (instead of --targets).
    #[arg(long)]
    packages: Option<usize>,
    /// Number of layers; bounds the dependency depth.
    #[arg(long, default_value_t = 40)]
    layers: usize,
    /// Outputs of the previous layer each rule consumes (at most).
    #[arg(long, default_value_t = 4)]
    fan_in: usize,
    /// Rules (bench_genrule, one output each) per package.
    #[arg(long, default_value_t = 4)]
    targets_per_package: usize,
    /// .txt source files per package.
    #[arg(long, default_value_t = 3)]
    sources_per_package: usize,
    /// Half-width (in packages) of the previous-layer window deps are drawn from; 0 = anywhere.
    #[arg(long, default_value_t = 2)]
    locality: usize,
    /// Every N-th package gets an exports_files'd data.md; 0 = none.
    #[arg(long, default_value_t = 8)]
    export_every: usize,
    /// PRNG seed: same arguments and seed give a byte-identical tree (and identical SHAs).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Make the output a git repository with a first commit "base".
    #[arg(long)]
    git: bool,
    /// Total commits including "base"; each one after it applies all --mutation specs.
    #[arg(long, default_value_t = 2, requires = "git")]
    commits: usize,
    /// Mutation per further commit, repeatable: content[:K] (edit K sources in low layers),
    /// build-edit[:K], add-file[:K], delete-file[:K], new-target[:K], bzl-edit.
    #[arg(
        long = "mutation",
        value_name = "KIND[:K]",
        default_value = "content:1"
    )]
    mutations: Vec<Mutation>,
    /// Replace DIR if it holds a workspace generated earlier by this tool.
    #[arg(long)]
    force: bool,
    /// Writer threads (does not change the output).
    #[arg(long, hide = true)]
    jobs: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Gen(args) => cmd_gen(args),
        Command::Hashing(args) => cmd_hashing(args),
        Command::Snapshot(args) => cmd_snapshot(args),
        Command::Incremental(args) => cmd_incremental(args),
        Command::FcStore(args) => bazel_diff_bench::fc_store::run(args),
    }
}

/// Only ever delete a directory this tool generated: a typo in DIR must not wipe a real tree.
fn clear_previous(dir: &Path) -> anyhow::Result<()> {
    if !dir.exists() || dir.read_dir()?.next().is_none() {
        return Ok(());
    }
    let ws = std::fs::read_to_string(dir.join("WORKSPACE")).unwrap_or_default();
    if ws != WORKSPACE {
        bail!(
            "refusing to delete {}: it is not a workspace generated by bazel-diff-bench",
            dir.display()
        );
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

fn cmd_gen(a: GenArgs) -> anyhow::Result<()> {
    let mut cfg = GenConfig {
        layers: a.layers,
        fan_in: a.fan_in,
        targets_per_package: a.targets_per_package,
        sources_per_package: a.sources_per_package,
        packages: 1,
        locality: a.locality,
        export_every: a.export_every,
        seed: a.seed,
    };
    cfg.packages = match a.packages {
        Some(p) => p,
        None => cfg.packages_for_targets(a.targets.unwrap_or(1500)),
    };
    if a.force {
        clear_previous(&a.dir)?;
    }
    let start = Instant::now();
    let jobs = a.jobs.unwrap_or_else(gen::default_write_threads);
    let summary = gen::generate_with_threads(&cfg, &a.dir, jobs)?;
    let generated = start.elapsed();
    let commits = if a.git {
        Some(history(&a.dir, cfg.seed, a.commits, &a.mutations)?)
    } else {
        None
    };
    let elapsed = start.elapsed();
    let dir = a.dir.canonicalize().unwrap_or(a.dir.clone());
    let mut report = json!({
        "dir": dir,
        "config": cfg,
        "packages": summary.packages,
        "layers": summary.layers,
        "targets": summary.targets,
        "rules": summary.rules,
        "files": summary.files_written,
        "generate_ms": generated.as_millis() as u64,
        "elapsed_ms": elapsed.as_millis() as u64,
    });
    if let Some(commits) = commits {
        report["shas"] = json!(commits.iter().map(|c| c.sha.clone()).collect::<Vec<_>>());
        report["commits"] = json!(commits);
    }
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, &report)?;
    writeln!(out)?;
    Ok(())
}

/// Writes a report as pretty JSON when `--json` was given.
fn write_json(path: Option<&Path>, report: &impl serde::Serialize) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Makes a relative path with a directory part absolute (a bare name is looked up on PATH).
fn absolute(p: PathBuf) -> anyhow::Result<PathBuf> {
    Ok(if p.components().count() > 1 && p.is_relative() {
        std::env::current_dir()?.join(p)
    } else {
        p
    })
}

fn cmd_incremental(a: IncrementalArgs) -> anyhow::Result<()> {
    let scenarios = a
        .scenarios
        .iter()
        .map(|s| {
            s.split('+')
                .map(str::parse)
                .collect::<Result<Vec<Mutation>, _>>()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bench = bazel_diff_bench::incremental::IncrementalBench {
        size: a.size,
        work_dir: absolute(a.common.work_dir)?,
        bazel: a.common.bazel,
        bazel_diff: absolute(a.common.bazel_diff)?,
        scenarios,
    };
    let report = bench.run(|msg| eprintln!("[bench] {msg}"))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{} targets", report.targets)?;
    writeln!(
        out,
        "{:<24} {:>7} {:>9} {:>12} {:>8} {:>9}  path",
        "scenario", "files", "full", "incremental", "speedup", "impacted"
    )?;
    for r in &report.rows {
        writeln!(
            out,
            "{:<24} {:>7} {:>8.3}s {:>11.3}s {:>7.1}x {:>9}  {}",
            r.scenario,
            r.changed_files,
            r.full_s,
            r.incremental_s,
            r.speedup,
            r.impacted_targets,
            r.path
        )?;
    }
    write_json(a.common.json.as_deref(), &report)
}

fn cmd_snapshot(a: SnapshotArgs) -> anyhow::Result<()> {
    let bench = bazel_diff_bench::snapshot::SnapshotBench {
        sizes: a.sizes,
        work_dir: absolute(a.common.work_dir)?,
        bazel: a.common.bazel,
        bazel_diff: absolute(a.common.bazel_diff)?,
        bazel_diff_snap: absolute(a.bazel_diff_snap)?,
        mutations: a.mutations,
    };
    let reports = bench.run_all(|msg| eprintln!("[bench] {msg}"))?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:>8} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10}",
        "targets", "impacted", "cold", "warm", "consume", "record", "cold/cons", "identical"
    )?;
    for r in &reports {
        writeln!(
            out,
            "{:>8} {:>9} {:>8.2}s {:>8.2}s {:>8.2}s {:>9.2}s {:>9.1}x {:>10}",
            r.targets,
            r.impacted_targets,
            r.cold.total_s,
            r.warm.total_s,
            r.consume.total_s,
            r.record_s,
            r.cold_over_consume,
            r.identical
        )?;
    }
    write_json(a.common.json.as_deref(), &reports)
}

fn cmd_hashing(a: HashingArgs) -> anyhow::Result<()> {
    let bench = bazel_diff_bench::hashing::HashingBench {
        sizes: a.sizes,
        runs: a.runs.max(1),
        work_dir: absolute(a.common.work_dir)?,
        bazel: a.common.bazel,
        bazel_diff: absolute(a.common.bazel_diff)?,
    };
    let reports = bench.run_all(|msg| eprintln!("[bench] {msg}"))?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{:>8} {:>12} {:>15} {:>8} {:>12} {:>18} {:>9}",
        "targets", "bare query", "generate-hashes", "ratio", "max RSS", "get-impacted", "impacted"
    )?;
    for r in &reports {
        writeln!(
            out,
            "{:>8} {:>11.3}s {:>14.3}s {:>8.3} {:>8.1} MiB {:>17.3}s {:>9}",
            r.targets,
            r.bare_query_s,
            r.generate_hashes_s,
            r.ratio,
            r.generate_hashes_max_rss_mib,
            r.get_impacted_targets_s,
            r.impacted_targets
        )?;
    }
    write_json(a.common.json.as_deref(), &reports)
}
