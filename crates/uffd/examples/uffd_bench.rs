//! Benchmark of the userfaultfd handler: a simulated VM (a child process registering
//! anonymous memory with a real userfaultfd, exactly as Firecracker does on
//! `PUT /snapshot/load`) touches every page of its memory once, and the handler serves it
//! from a memory file. Four modes:
//!
//! * `single`: 4 KiB per fault, no prefetch (what a naive handler does);
//! * `chunked`: `--chunk-kib` per fault; this run records the working set;
//! * `prefetch`: chunked, plus the recorded working set copied in at start while the
//!   guest runs (it starts touching right after the handshake, as a resumed VM would);
//! * `prefetch-wait`: the same, but the guest starts only once prefetch has finished
//!   (a driver loading with `resume_vm: false` and resuming after prefetch); its serve
//!   time includes the wait.
//!
//! ```text
//! cargo run --release -p bazel-diff-uffd --example uffd_bench -- [--size-mib 1024]
//!     [--chunk-kib 2048] [--prefetch-threads 2] [--batch-kib 2048] [--zero-percent 0]
//!     [--pattern seq|random] [--modes single,chunked,prefetch,prefetch-wait]
//!     [--repeat 3] [--dir /tmp]
//! ```
//!
//! "serve time" is measured by the guest: from the end of its handshake to its last page
//! touched. faults/s = page-fault events / serve time; MB/s = touched bytes / serve time.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bazel_diff_uffd::sim::SimulatedVm;
use bazel_diff_uffd::{Handler, MemoryFile, Policy, UffdListener, WorkingSet};
use clap::Parser;

const PAGE: u64 = 4096;
const MODES: [&str; 4] = ["single", "chunked", "prefetch", "prefetch-wait"];

#[derive(Parser, Debug)]
#[command(about = "Benchmark the userfaultfd page server (single-page vs chunked vs prefetch)")]
struct Args {
    /// Guest memory and touched working set, in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Chunk populated per fault in the chunked and prefetch modes, in KiB.
    #[arg(long, default_value_t = 2048)]
    chunk_kib: u64,
    /// Prefetch threads.
    #[arg(long, default_value_t = 2)]
    prefetch_threads: usize,
    /// Bytes per prefetch ioctl, in KiB.
    #[arg(long, default_value_t = 2048)]
    batch_kib: u64,
    /// Percentage of the memory file's pages that are zero (served with UFFDIO_ZEROPAGE).
    #[arg(long, default_value_t = 0)]
    zero_percent: u64,
    /// Order in which the guest touches its pages.
    #[arg(long, default_value = "seq", value_parser = ["seq", "random"])]
    pattern: String,
    /// Modes to run, comma-separated.
    #[arg(
        long,
        default_value = "single,chunked,prefetch,prefetch-wait",
        value_delimiter = ','
    )]
    modes: Vec<String>,
    /// Runs per mode; the table shows the median run (by serve time) and the best.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Directory for the memory file and the socket.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Internal: as the simulated VM, wait for a line on stdin before touching.
    #[arg(long, hide = true)]
    wait_go: bool,
    /// Internal: run as the simulated VM on this socket.
    #[arg(long, hide = true, num_args = 1)]
    guest: Option<PathBuf>,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn is_zero_page(page: u64, zero_percent: u64) -> bool {
    splitmix(page ^ 0x5EED) % 100 < zero_percent
}

/// Word 0 of every data page is its index with a tag, so the guest can check what it got.
fn tag(page: u64) -> u64 {
    0xB0D1u64 << 48 | page
}

fn write_memory_file(path: &Path, bytes: u64, zero_percent: u64) {
    let f = File::create(path).unwrap();
    f.set_len(bytes).unwrap();
    let chunk = 1u64 << 20;
    let mut buf = vec![0u8; chunk as usize];
    for base in (0..bytes).step_by(chunk as usize) {
        for (i, page) in buf.chunks_exact_mut(PAGE as usize).enumerate() {
            let p = base / PAGE + i as u64;
            if is_zero_page(p, zero_percent) {
                page.fill(0);
                continue;
            }
            for (w, word) in page.chunks_exact_mut(8).enumerate() {
                let v = if w == 0 {
                    tag(p)
                } else {
                    splitmix(p << 9 | w as u64)
                };
                word.copy_from_slice(&v.to_le_bytes());
            }
        }
        f.write_all_at(&buf, base).unwrap();
    }
    f.sync_all().unwrap();
}

fn touch_order(pages: u64, pattern: &str) -> Vec<u64> {
    let mut order: Vec<u64> = (0..pages).collect();
    if pattern == "random" {
        let mut s = 12345u64;
        for i in (1..order.len()).rev() {
            s = splitmix(s);
            order.swap(i, (s % (i as u64 + 1)) as usize);
        }
    }
    order
}

/// The simulated VM: register, hand over, touch every page, report.
fn guest(args: &Args, sock: &Path) {
    let size = args.size_mib << 20;
    let vm = SimulatedVm::new(&[size]).unwrap();
    let order = touch_order(size / PAGE, &args.pattern);
    let _stream = vm.connect(sock).unwrap();
    let t = Instant::now();
    if args.wait_go {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
    }
    let mut bad = 0u64;
    for &p in &order {
        let mut word = [0u8; 8];
        vm.read(p * PAGE, &mut word);
        let want = if is_zero_page(p, args.zero_percent) {
            0
        } else {
            tag(p)
        };
        bad += u64::from(u64::from_le_bytes(word) != want);
    }
    let us = t.elapsed().as_micros();
    println!("TOUCHED {us} {bad}");
    std::io::stdout().flush().unwrap();
}

struct Row {
    mode: &'static str,
    serve: Duration,
    faults: u64,
    prefetch_pages: u64,
    prefetch_done: Option<Duration>,
    copy_ioctls: u64,
}

fn run_mode(
    args: &Args,
    dir: &Path,
    mem: &Arc<MemoryFile>,
    mode: &'static str,
    policy: Policy,
    prefetch: Option<&WorkingSet>,
    resume_after_prefetch: bool,
) -> (Row, Option<WorkingSet>) {
    let sock = dir.join(format!("{mode}.sock"));
    let listener = UffdListener::bind(&sock).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--size-mib", &args.size_mib.to_string()])
        .args(["--zero-percent", &args.zero_percent.to_string()])
        .args(["--pattern", &args.pattern])
        .args(resume_after_prefetch.then_some("--wait-go"))
        .arg("--guest")
        .arg(&sock)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let hs = listener.accept(Duration::from_secs(60)).unwrap();
    let mut handler = Handler::new(hs, mem.clone(), policy).unwrap();
    if let Some(ws) = prefetch {
        handler = handler.with_prefetch(ws).unwrap();
    }
    let monitor = handler.monitor();
    let out = std::thread::scope(|s| {
        let serving = s.spawn(|| handler.run().unwrap());
        if resume_after_prefetch {
            // What a driver does with `resume_vm: false`: PATCH /vm Resumed once prefetched.
            assert!(monitor.wait_prefetch(Duration::from_secs(600)));
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(b"GO\n").unwrap();
        }
        serving.join().unwrap()
    });
    let line = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("TOUCHED"))
        .expect("the guest reports its touch time");
    assert!(child.wait().unwrap().success());
    let mut f = line.split_whitespace().skip(1);
    let us: u64 = f.next().unwrap().parse().unwrap();
    let bad: u64 = f.next().unwrap().parse().unwrap();
    assert_eq!(bad, 0, "{mode}: the guest read wrong bytes");
    let s = out.stats;
    (
        Row {
            mode,
            serve: Duration::from_micros(us),
            faults: s.fault_events,
            prefetch_pages: s.prefetch_pages,
            prefetch_done: s
                .prefetch_done_us
                .filter(|_| s.prefetch_pages > 0)
                .map(Duration::from_micros),
            copy_ioctls: s.copy_ioctls,
        },
        out.working_set,
    )
}

fn main() {
    let args = Args::parse();
    if let Some(sock) = &args.guest {
        guest(&args, sock);
        return;
    }
    let size = args.size_mib << 20;
    let tmp = tempfile::tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir)).unwrap();
    let mem_path = tmp.path().join("memory.bin");
    let t = Instant::now();
    write_memory_file(&mem_path, size, args.zero_percent);
    let mem = Arc::new(MemoryFile::open(&mem_path).unwrap());
    println!(
        "memory file: {} MiB ({}% zero pages), written in {:.2}s and page-cache hot; guest touches every page ({}), {} CPUs",
        args.size_mib,
        args.zero_percent,
        t.elapsed().as_secs_f64(),
        args.pattern,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );

    let chunked = Policy {
        chunk_bytes: args.chunk_kib << 10,
        prefetch_threads: args.prefetch_threads,
        prefetch_batch_bytes: args.batch_kib << 10,
        ..Policy::default()
    };
    let mut rows = Vec::new();
    let mut recorded: Option<WorkingSet> = None;
    for mode in MODES {
        if !args.modes.iter().any(|m| m == mode) {
            continue;
        }
        let mut runs = Vec::new();
        for _ in 0..args.repeat.max(1) {
            // The working set the chunked run recorded (or, without one, every page).
            let ws = recorded.clone().unwrap_or_else(|| {
                WorkingSet::from_runs(
                    PAGE,
                    size,
                    [bazel_diff_uffd::PageRun {
                        first_page: 0,
                        pages: size / PAGE,
                    }],
                )
            });
            let single = Policy {
                chunk_bytes: PAGE,
                ..chunked.clone()
            };
            let (row, ws) = match mode {
                "single" => run_mode(&args, tmp.path(), &mem, mode, single, None, false),
                "chunked" => run_mode(&args, tmp.path(), &mem, mode, chunked.clone(), None, false),
                "prefetch" => run_mode(
                    &args,
                    tmp.path(),
                    &mem,
                    mode,
                    chunked.clone(),
                    Some(&ws),
                    false,
                ),
                _ => run_mode(
                    &args,
                    tmp.path(),
                    &mem,
                    mode,
                    chunked.clone(),
                    Some(&ws),
                    true,
                ),
            };
            if mode == "chunked" && recorded.is_none() {
                recorded = ws;
            }
            runs.push(row);
        }
        runs.sort_by_key(|r| r.serve);
        let best = runs[0].serve;
        let median = runs.swap_remove(runs.len() / 2);
        rows.push((median, best));
    }

    println!();
    println!(
        "{:<13} {:>8} {:>10} {:>8} {:>11} {:>10} {:>7} {:>20}",
        "mode",
        "faults",
        "faults/s",
        "MB/s",
        "serve time",
        "(best)",
        "ioctls",
        "prefetched (done at)"
    );
    for (r, best) in &rows {
        let secs = r.serve.as_secs_f64();
        let prefetched = match r.prefetch_done {
            Some(d) => format!(
                "{} MiB ({:.3}s)",
                (r.prefetch_pages * PAGE) >> 20,
                d.as_secs_f64()
            ),
            None => "-".into(),
        };
        println!(
            "{:<13} {:>8} {:>10.0} {:>8.0} {:>10.3}s {:>9.3}s {:>7} {:>20}",
            r.mode,
            r.faults,
            r.faults as f64 / secs,
            size as f64 / 1e6 / secs,
            secs,
            best.as_secs_f64(),
            r.copy_ioctls,
            prefetched
        );
    }
    println!(
        "(median of {} runs per mode; MB = 10^6 bytes)",
        args.repeat.max(1)
    );
}
