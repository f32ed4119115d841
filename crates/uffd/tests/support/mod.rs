//! Shared fixtures: a memory file with a recognisable pattern, explicit zero pages and
//! holes; a handler running on a thread against a [`SimulatedVm`]; a watchdog that turns a
//! hang (a fault nobody serves) into a failed run instead of a stuck one.

#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bazel_diff_uffd::sim::SimulatedVm;
use bazel_diff_uffd::{
    Handler, MemoryFile, Monitor, Outcome, Policy, StopHandle, UffdListener, WorkingSet,
};

pub const PAGE: u64 = 4096;
pub const MIB: u64 = 1 << 20;

/// What page `i` of the fixture file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Never written: a hole.
    Hole,
    /// Written with zeros.
    Zeros,
    /// Pattern: word 0 is `0xB0D1 << 48 | i`, the rest a hash of (page, word).
    Data,
}

pub fn kind_of(page: u64) -> Kind {
    if page % 13 == 5 {
        Kind::Hole
    } else if page % 7 == 3 {
        Kind::Zeros
    } else {
        Kind::Data
    }
}

pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The expected contents of page `i`.
pub fn page_bytes(page: u64, out: &mut [u8]) {
    match kind_of(page) {
        Kind::Hole | Kind::Zeros => out.fill(0),
        Kind::Data => {
            for (w, chunk) in out.chunks_exact_mut(8).enumerate() {
                let v = if w == 0 {
                    0xB0D1u64 << 48 | page
                } else {
                    splitmix(page << 9 | w as u64)
                };
                chunk.copy_from_slice(&v.to_le_bytes());
            }
        }
    }
}

/// A temporary directory holding `memory.bin` of `pages` pages.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub mem_path: PathBuf,
    pub pages: u64,
}

impl Fixture {
    pub fn new(bytes: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mem_path = dir.path().join("memory.bin");
        write_memory_file(&mem_path, bytes);
        Self {
            dir,
            mem_path,
            pages: bytes / PAGE,
        }
    }

    pub fn len(&self) -> u64 {
        self.pages * PAGE
    }

    pub fn zero_pages(&self) -> u64 {
        (0..self.pages)
            .filter(|&p| kind_of(p) != Kind::Data)
            .count() as u64
    }

    pub fn socket(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.sock"))
    }
}

pub fn write_memory_file(path: &std::path::Path, bytes: u64) {
    let f = File::create(path).unwrap();
    f.set_len(bytes).unwrap();
    let mut buf = vec![0u8; PAGE as usize];
    for page in 0..bytes / PAGE {
        if kind_of(page) == Kind::Hole {
            continue;
        }
        page_bytes(page, &mut buf);
        f.write_all_at(&buf, page * PAGE).unwrap();
    }
}

/// Asserts guest page `page` holds what the file does.
pub fn assert_page(vm: &SimulatedVm, page: u64) {
    let mut got = vec![0u8; PAGE as usize];
    let mut want = vec![0u8; PAGE as usize];
    vm.read(page * PAGE, &mut got);
    page_bytes(page, &mut want);
    assert!(
        got == want,
        "guest page {page} ({:?}) differs from the memory file",
        kind_of(page)
    );
}

/// A handler serving `fixture` on a thread, and the simulated VM it serves.
pub struct Running {
    pub vm: SimulatedVm,
    pub stream: Option<UnixStream>,
    pub stop: StopHandle,
    pub monitor: Monitor,
    pub handler: JoinHandle<bazel_diff_uffd::Result<Outcome>>,
    _watchdog: Watchdog,
}

static SOCKETS: AtomicU64 = AtomicU64::new(0);

pub fn start(
    fx: &Fixture,
    regions: &[u64],
    policy: Policy,
    prefetch: Option<WorkingSet>,
) -> Running {
    let mem = Arc::new(MemoryFile::open(&fx.mem_path).unwrap());
    start_with(fx, mem, regions, policy, prefetch)
}

/// [`start`] serving `mem` (e.g. a layered memory) instead of the fixture's file.
pub fn start_with(
    fx: &Fixture,
    mem: Arc<MemoryFile>,
    regions: &[u64],
    policy: Policy,
    prefetch: Option<WorkingSet>,
) -> Running {
    let sock = fx.socket(&format!("uffd-{}", SOCKETS.fetch_add(1, Ordering::Relaxed)));
    let listener = UffdListener::bind(&sock).unwrap();
    let (tx, rx) = mpsc::channel();
    let handler = thread::spawn(move || {
        let hs = listener.accept(Duration::from_secs(10))?;
        let mut h = Handler::new(hs, mem, policy)?;
        if let Some(ws) = prefetch {
            h = h.with_prefetch(&ws)?;
        }
        let _ = tx.send((h.stop_handle(), h.monitor()));
        h.run()
    });
    let vm = SimulatedVm::new(regions).unwrap();
    let stream = vm.connect(&sock).unwrap();
    let (stop, monitor) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    Running {
        vm,
        stream: Some(stream),
        stop,
        monitor,
        handler,
        _watchdog: Watchdog::arm(Duration::from_secs(120)),
    }
}

impl Running {
    /// Stops the handler and returns its outcome.
    pub fn finish(self) -> Outcome {
        self.stop.stop();
        self.handler.join().unwrap().unwrap()
    }
}

/// Aborts the test process if not dropped within the deadline: a fault nobody serves blocks
/// its thread forever, and a stuck `cargo test` tells nobody anything.
pub struct Watchdog {
    done: mpsc::Sender<()>,
}

impl Watchdog {
    pub fn arm(deadline: Duration) -> Self {
        let (done, rx) = mpsc::channel::<()>();
        let started = Instant::now();
        thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(deadline) {
                eprintln!(
                    "watchdog: a test is still blocked after {:?} (unserved page fault?)",
                    started.elapsed()
                );
                std::process::abort();
            }
        });
        Self { done }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.done.send(());
    }
}

/// A small deterministic PRNG for test access patterns.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = splitmix(self.0);
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
