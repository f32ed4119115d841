//! Store size of firecracker entries: what one entry costs on disk, Full vs Diff.
//!
//! `--entry DIR` reports a real entry (each file's apparent and allocated bytes, and the
//! entries of its Diff chain, found through `firecracker.json`'s `parent` beside it).
//! Without it, synthetic memory files are measured on the filesystem of `--work-dir`:
//! a guest of `--mem-gib` whose warm server touched `--touched` of its memory, in clustered
//! runs, stored Full (as Firecracker writes it: every page; and as the driver keeps it: zero
//! pages punched out), then `--diffs` Diff snapshots each dirtying `--dirty` of the memory.
//! The data extents per diff are printed too: the uffd backend layers a chain without a
//! copy only up to 16384 extents in all (beyond that it merges the chain into one file).

#![allow(clippy::print_stdout)] // `fc-store` is a report command: the table is its output.

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::rng::Rng;

const PAGE: u64 = 4096;
/// Mean length, in pages, of a run of touched or dirtied pages (heaps and page tables
/// are dirtied in clusters, not uniformly).
const MEAN_RUN_PAGES: u64 = 32;

/// `bazel-diff-bench fc-store`.
#[derive(clap::Args)]
pub struct FcStoreArgs {
    /// Report this firecracker entry (and its Diff parents) instead of synthetic files.
    #[arg(long, value_name = "DIR")]
    entry: Option<PathBuf>,
    /// Where the synthetic files are written (its filesystem is the one measured).
    #[arg(long, default_value = "bench-work", value_name = "DIR")]
    work_dir: PathBuf,
    /// Guest memory size.
    #[arg(long, default_value_t = 4)]
    mem_gib: u64,
    /// Fraction of guest memory the warm server touched.
    #[arg(long, default_value_t = 0.5)]
    touched: f64,
    /// Fraction of guest memory each Diff dirtied.
    #[arg(long, default_value_t = 0.03)]
    dirty: f64,
    /// Diffs in the chain.
    #[arg(long, default_value_t = 4)]
    diffs: u32,
    /// Write the JSON report here too.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

pub fn run(a: FcStoreArgs) -> Result<()> {
    let report = match &a.entry {
        Some(dir) => entry(dir)?,
        None => synthetic(&Synthetic {
            work_dir: a.work_dir.clone(),
            mem_gib: a.mem_gib,
            touched: a.touched,
            dirty: a.dirty,
            diffs: a.diffs,
            seed: 42,
        })?,
    };
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Synthetic measurement parameters.
pub struct Synthetic {
    pub work_dir: PathBuf,
    pub mem_gib: u64,
    pub touched: f64,
    pub dirty: f64,
    pub diffs: u32,
    pub seed: u64,
}

/// Apparent and allocated bytes of a file.
fn sizes(path: &Path) -> Result<(u64, u64)> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((meta.len(), meta.blocks() * 512))
}

fn extents(file: &File, len: u64) -> u64 {
    use std::os::fd::AsRawFd;
    let (fd, mut off, mut n) = (file.as_raw_fd(), 0i64, 0u64);
    let end = i64::try_from(len).unwrap_or(i64::MAX);
    while off < end {
        // SAFETY: lseek on a descriptor we hold.
        let data = unsafe { libc::lseek(fd, off, libc::SEEK_DATA) };
        if data < 0 {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        n += 1;
        off = if hole < 0 { end } else { hole };
    }
    n
}

/// Writes `fraction` of the pages of a `len`-byte file as data, in clustered runs; with
/// `zeros_elsewhere` the other pages are written as zeros (what Firecracker's Full snapshot
/// writes for memory the guest never touched). Returns (data pages, extents).
fn write_pages(
    path: &Path,
    len: u64,
    fraction: f64,
    zeros_elsewhere: bool,
    rng: &mut Rng,
) -> Result<(u64, u64)> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.set_len(len)?;
    let pages = len / PAGE;
    let want = (pages as f64 * fraction.clamp(0.0, 1.0)) as u64;
    let mut marked = vec![false; pages as usize];
    let mut count = 0u64;
    while count < want {
        let start = rng.below(pages as usize) as u64;
        let run = 1 + rng.below((2 * MEAN_RUN_PAGES) as usize) as u64;
        for p in start..(start + run).min(pages) {
            if !marked[p as usize] && count < want {
                marked[p as usize] = true;
                count += 1;
            }
        }
    }
    let chunk = 256u64; // pages per write
    let mut buf = vec![0u8; (chunk * PAGE) as usize];
    for first in (0..pages).step_by(chunk as usize) {
        let last = (first + chunk).min(pages);
        let mut any = false;
        for p in first..last {
            let at = ((p - first) * PAGE) as usize;
            let page = &mut buf[at..at + PAGE as usize];
            if marked[p as usize] {
                page.fill((rng.next_u64() | 1) as u8);
                any = true;
            } else {
                page.fill(0);
            }
        }
        if !(any || zeros_elsewhere) {
            continue;
        }
        // Untouched pages inside a written chunk stay holes unless zeros are wanted.
        let mut p = first;
        while p < last {
            let data = marked[p as usize] || zeros_elsewhere;
            let mut q = p;
            while q < last && (marked[q as usize] || zeros_elsewhere) == data {
                q += 1;
            }
            if data {
                let at = ((p - first) * PAGE) as usize;
                let end = ((q - first) * PAGE) as usize;
                file.write_all_at(&buf[at..end], p * PAGE)?;
            }
            p = q;
        }
    }
    file.sync_all()?;
    Ok((count, extents(&file, len)))
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// GiB from 1 GiB up, MiB below (real entries of small test VMs).
fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        gib(bytes)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

/// Runs the synthetic measurement; prints a table and returns the JSON.
pub fn synthetic(s: &Synthetic) -> Result<Value> {
    let dir = tempfile_in(&s.work_dir)?;
    let len = s.mem_gib << 30;
    let mut rng = Rng::new(s.seed);
    let mut rows = Vec::new();
    let as_written = dir.join("full-as-firecracker-writes");
    write_pages(&as_written, len, s.touched, true, &mut rng)?;
    let (apparent, allocated) = sizes(&as_written)?;
    std::fs::remove_file(&as_written)?;
    rows.push(json!({ "file": "Full mem, as Firecracker writes it", "apparent": apparent, "allocated": allocated }));
    let stored = dir.join("full-stored");
    let (pages, ext) = write_pages(&stored, len, s.touched, false, &mut Rng::new(s.seed))?;
    let (apparent, allocated) = sizes(&stored)?;
    rows.push(json!({ "file": "Full mem, stored (zero pages punched)", "apparent": apparent, "allocated": allocated, "data_pages": pages, "extents": ext }));
    let mut chain_bytes = allocated;
    for i in 1..=s.diffs {
        let diff = dir.join(format!("diff-{i}"));
        let (pages, ext) = write_pages(&diff, len, s.dirty, false, &mut rng)?;
        let (apparent, allocated) = sizes(&diff)?;
        chain_bytes += allocated;
        rows.push(json!({ "file": format!("Diff {i} mem"), "apparent": apparent, "allocated": allocated, "data_pages": pages, "extents": ext }));
    }
    println!(
        "{:<40} {:>12} {:>12} {:>10}",
        "memory file", "apparent", "allocated", "extents"
    );
    for row in &rows {
        println!(
            "{:<40} {:>12} {:>12} {:>10}",
            row["file"].as_str().unwrap_or_default(),
            gib(row["apparent"].as_u64().unwrap_or(0)),
            gib(row["allocated"].as_u64().unwrap_or(0)),
            row["extents"]
                .as_u64()
                .map_or("-".into(), |e| e.to_string()),
        );
    }
    println!(
        "chain of 1 Full + {} Diffs: {} on disk, vs {} as {} Full entries",
        s.diffs,
        gib(chain_bytes),
        gib(allocated_of(&rows, 1) * (u64::from(s.diffs) + 1)),
        s.diffs + 1
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(json!({
        "mem_gib": s.mem_gib,
        "touched": s.touched,
        "dirty": s.dirty,
        "rows": rows,
        "chain_allocated": chain_bytes,
    }))
}

fn allocated_of(rows: &[Value], i: usize) -> u64 {
    rows.get(i)
        .and_then(|r| r["allocated"].as_u64())
        .unwrap_or(0)
}

fn tempfile_in(parent: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(parent)?;
    let dir = parent.join(format!("fc-store-{}", std::process::id()));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Reports the files of a firecracker entry and of its Diff parents.
pub fn entry(dir: &Path) -> Result<Value> {
    let mut out = Vec::new();
    let mut next = Some(dir.to_path_buf());
    while let Some(entry) = next.take() {
        let state: Value = serde_json::from_slice(
            &std::fs::read(entry.join("firecracker.json"))
                .with_context(|| format!("{} is not a firecracker entry", entry.display()))?,
        )?;
        let mut files = Vec::new();
        let mut total = (0u64, 0u64);
        for name in ["mem", "vmstate", "rootfs.ext4", "base_hashes.json"] {
            let path = entry.join(name);
            if path.is_file() {
                let (apparent, allocated) = sizes(&path)?;
                total = (total.0 + apparent, total.1 + allocated);
                println!(
                    "{:<60} {:<18} {:>12} apparent {:>12} allocated",
                    entry.display().to_string(),
                    name,
                    human(apparent),
                    human(allocated)
                );
                files.push(json!({ "file": name, "apparent": apparent, "allocated": allocated }));
            }
        }
        let kind = state["snapshot_type"].as_str().unwrap_or("Full").to_owned();
        println!("{:<60} {kind} entry: {} allocated", "", human(total.1));
        if out.len() > 64 {
            bail!("the chain of {} is longer than 64", dir.display());
        }
        if let Some(parent) = state["parent"]["base_sha"].as_str() {
            next = entry.parent().map(|p| p.join(parent));
        }
        out.push(
            json!({ "dir": entry, "snapshot_type": kind, "files": files, "allocated": total.1 }),
        );
    }
    Ok(json!({ "chain": out }))
}
