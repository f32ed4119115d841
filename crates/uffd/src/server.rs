//! The page server: the fault-serving loop, the prefetchers, and the policy that drives
//! them.
//!
//! One thread (the caller of [`Handler::run`]) reads userfaultfd events and serves faults;
//! `prefetch_threads` scoped threads copy a recorded working set in at the same time. Both
//! fill the guest with the same routine: walk a page range, *claim* the pages no one has
//! (an atomic bitmap, so the server and the prefetchers never copy the same page), group
//! them into runs of data or zero pages, and issue one `UFFDIO_COPY` or `UFFDIO_ZEROPAGE`
//! per run. A fault on a page another thread has claimed waits for that thread's copy,
//! which wakes it. The kernel has the last word on races (`EEXIST`).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::bitmap::AtomicBitmap;
use crate::error::{Error, Result};
use crate::handshake::{GuestRegionUffdMapping, Handshake, PeerCred};
use crate::memfile::all_zero;
use crate::source::PageSource;
use crate::sys::{FillError, Uffd, UffdMsg, UFFD_EVENT_PAGEFAULT, UFFD_EVENT_REMOVE};
use crate::workingset::{PageRun, WorkingSet};

/// How the handler populates guest memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// On a fault, populate the whole aligned block of this many bytes around it (only its
    /// pages not yet present, from the faulting page to the block's end first). The
    /// region's page size means one page per fault. Rounded down to a multiple of the page
    /// size. Bigger chunks mean fewer faults but a longer wait for the faulting vCPU
    /// (about 0.3–0.6 ms for 2 MiB on the bench machine, see the README).
    pub chunk_bytes: u64,
    /// Serve pages that read as zeros (holes in the memory file, or all-zero data) with
    /// `UFFDIO_ZEROPAGE`: nothing is copied and no memory is used until the guest writes.
    pub zero_pages: bool,
    /// Threads copying the working set in (0 disables prefetch even when one is given).
    /// They run at nice 10, so on a contended CPU the serving thread, on which vCPUs wait,
    /// goes first.
    pub prefetch_threads: usize,
    /// Bytes per prefetch ioctl (at most): between two, a prefetcher yields the CPU if a
    /// fault is waiting.
    pub prefetch_batch_bytes: u64,
    /// Log the populated pages, to return them as [`Outcome::working_set`].
    pub record_working_set: bool,
    /// Stop when Firecracker closes the uffd socket. Only correct for Firecracker releases
    /// that keep the socket open until they exit; older ones close it right after the
    /// handshake. The peer's exit is detected regardless (through a pidfd).
    pub stop_on_socket_close: bool,
    /// If the handler fails, SIGKILL the peer (Firecracker), which would otherwise hang
    /// forever on its next fault. Never applies to the handler's own process.
    pub kill_peer_on_error: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            chunk_bytes: 2 << 20,
            zero_pages: true,
            prefetch_threads: 2,
            prefetch_batch_bytes: 2 << 20,
            record_working_set: true,
            stop_on_socket_close: false,
            kill_peer_on_error: true,
        }
    }
}

/// Why [`Handler::run`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// [`StopHandle::stop`] was called.
    Stopped,
    /// The peer process (Firecracker) exited.
    PeerExited,
    /// The peer closed the uffd socket and [`Policy::stop_on_socket_close`] is set.
    SocketClosed,
    /// The guest memory's address space is gone (`ESRCH` from an ioctl).
    MemoryGone,
}

/// Counters, readable at any time through a [`Monitor`] and returned in the [`Outcome`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// `UFFD_EVENT_PAGEFAULT` messages read.
    pub fault_events: u64,
    /// Faults on pages already present by the time they were served (they raced with a
    /// chunk or a prefetch copy); settled with a one-page fill the kernel refuses with
    /// `EEXIST`, then a wake-up.
    pub faults_already_present: u64,
    /// Pages populated to serve faults (including the rest of their chunks).
    pub demand_pages: u64,
    /// Pages populated by the prefetchers.
    pub prefetch_pages: u64,
    /// Of the populated pages, those mapped to the zero page.
    pub zero_pages: u64,
    /// Bytes copied with `UFFDIO_COPY`.
    pub copied_bytes: u64,
    pub copy_ioctls: u64,
    pub zeropage_ioctls: u64,
    /// Pages found already present by the kernel (`EEXIST`).
    pub eexist: u64,
    /// Fills deferred because a `remove` event was pending (`EAGAIN`).
    pub eagain: u64,
    /// `UFFD_EVENT_REMOVE` messages (balloon inflation) and the bytes they covered.
    pub remove_events: u64,
    pub removed_bytes: u64,
    /// Microseconds from handler creation to the first fault, and to the end of prefetch.
    pub first_fault_us: Option<u64>,
    pub prefetch_done_us: Option<u64>,
    /// Microseconds from handler creation to now (or to the end of `run`).
    pub elapsed_us: u64,
}

/// What [`Handler::run`] returns when the VM goes away or the handler is stopped.
#[derive(Debug)]
pub struct Outcome {
    pub reason: ExitReason,
    pub stats: Stats,
    /// The pages this restore populated from the memory file, in the order it populated them
    /// (pages the balloon later removed left out); `None` unless
    /// [`Policy::record_working_set`]. Save it with [`WorkingSet::save`] and give it to
    /// [`Handler::with_prefetch`] next time.
    pub working_set: Option<WorkingSet>,
}

/// Stops a running [`Handler`] from another thread.
#[derive(Debug, Clone)]
pub struct StopHandle {
    fd: Arc<OwnedFd>,
}

impl StopHandle {
    /// Makes [`Handler::run`] return [`ExitReason::Stopped`] promptly. Stop only once the VM
    /// is gone: faults after that are never served.
    pub fn stop(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: an 8-byte write to an eventfd we own.
        unsafe {
            libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), one.len());
        }
    }
}

/// Watches a [`Handler`] from another thread: counters and prefetch progress.
#[derive(Debug, Clone)]
pub struct Monitor {
    progress: Arc<Progress>,
}

impl Monitor {
    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.progress.stats()
    }

    /// Waits until prefetch has finished (immediately true without prefetch); `false` on
    /// timeout.
    pub fn wait_prefetch(&self, timeout: Duration) -> bool {
        let guard = lock(&self.progress.prefetch_done);
        let (guard, _) = self
            .progress
            .prefetch_cv
            .wait_timeout_while(guard, timeout, |done| done.is_none())
            .unwrap_or_else(|e| e.into_inner());
        guard.is_some()
    }
}

/// A userfaultfd page server for one restored VM. See the crate documentation.
#[derive(Debug)]
pub struct Handler {
    shared: Shared,
    stream: UnixStream,
    peer: Option<PeerCred>,
    pidfd: Option<OwnedFd>,
    peer_gone: bool,
    stop: StopHandle,
    prefetch: Vec<Batch>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Data,
    Zero,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    Demand,
    Prefetch,
}

/// How a fault stands after an attempt to serve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    /// Its page is present: the faulting thread has been (or is being) woken.
    Done,
    /// Another thread has claimed its page and will wake the faulting thread when its copy
    /// lands; check again shortly (it may also give the claim back).
    InFlight,
}

/// Why a fill stopped early.
enum Fail {
    /// `EAGAIN` with nothing done: a non-cooperative event (`remove`) is pending; read
    /// events, then retry.
    Again,
    /// `ESRCH`: the address space is gone.
    Gone,
    Fatal(Error),
}

/// A guest region in page units: pages `first_page..first_page + pages` of the memory file
/// live at host addresses `base..base + pages * page_size`.
#[derive(Debug, Clone, Copy)]
struct Region {
    base: u64,
    first_page: u64,
    pages: u64,
}

/// A prefetch unit: `pages` pages from `first_page`, all in region `region`.
#[derive(Debug, Clone, Copy)]
struct Batch {
    region: usize,
    first_page: u64,
    pages: u64,
}

#[derive(Debug)]
struct Shared {
    uffd: Uffd,
    mem: Arc<dyn PageSource>,
    policy: Policy,
    /// Sorted by `base`.
    regions: Vec<Region>,
    /// Indices into `regions`, sorted by `first_page`.
    by_page: Vec<usize>,
    page_size: u64,
    page_shift: u32,
    chunk_pages: u64,
    /// False for hugetlbfs regions: `UFFDIO_ZEROPAGE` only handles base pages, so zero
    /// pages are copied from `zero_page` instead.
    zeropage_ok: bool,
    zero_page: Vec<u8>,
    /// Pages mapped in the guest by us (cleared again by `remove`).
    present: AtomicBitmap,
    /// Pages some thread has taken on to populate (a superset of `present`): whoever sets
    /// the bit copies the page, so the server and the prefetchers never race on one.
    claimed: AtomicBitmap,
    /// Pages the balloon removed: zeros from now on.
    removed: AtomicBitmap,
    log: Mutex<Vec<PageRun>>,
    progress: Arc<Progress>,
    /// Set when `run` ends; prefetchers stop at their next batch.
    stop: AtomicBool,
    /// Faults read but not yet served; prefetchers yield while it is non-zero.
    demand_pending: AtomicUsize,
    prefetch_abort: AtomicBool,
}

#[derive(Debug)]
struct Progress {
    started: Instant,
    fault_events: AtomicU64,
    faults_already_present: AtomicU64,
    demand_pages: AtomicU64,
    prefetch_pages: AtomicU64,
    zero_pages: AtomicU64,
    copied_bytes: AtomicU64,
    copy_ioctls: AtomicU64,
    zeropage_ioctls: AtomicU64,
    eexist: AtomicU64,
    eagain: AtomicU64,
    remove_events: AtomicU64,
    removed_bytes: AtomicU64,
    first_fault_us: AtomicU64,
    ended_us: AtomicU64,
    prefetch_done: Mutex<Option<u64>>,
    prefetch_cv: Condvar,
}

const UNSET: u64 = u64::MAX;

/// Nice value of the prefetch threads (the serving thread keeps the process's).
const PREFETCH_NICE: libc::c_int = 10;

impl Progress {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            fault_events: AtomicU64::new(0),
            faults_already_present: AtomicU64::new(0),
            demand_pages: AtomicU64::new(0),
            prefetch_pages: AtomicU64::new(0),
            zero_pages: AtomicU64::new(0),
            copied_bytes: AtomicU64::new(0),
            copy_ioctls: AtomicU64::new(0),
            zeropage_ioctls: AtomicU64::new(0),
            eexist: AtomicU64::new(0),
            eagain: AtomicU64::new(0),
            remove_events: AtomicU64::new(0),
            removed_bytes: AtomicU64::new(0),
            first_fault_us: AtomicU64::new(UNSET),
            ended_us: AtomicU64::new(UNSET),
            prefetch_done: Mutex::new(Some(0)),
            prefetch_cv: Condvar::new(),
        }
    }

    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    fn finish_prefetch(&self) {
        let mut done = lock(&self.prefetch_done);
        if done.is_none() {
            *done = Some(self.now_us());
        }
        self.prefetch_cv.notify_all();
    }

    fn stats(&self) -> Stats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let opt = |v: u64| (v != UNSET).then_some(v);
        Stats {
            fault_events: get(&self.fault_events),
            faults_already_present: get(&self.faults_already_present),
            demand_pages: get(&self.demand_pages),
            prefetch_pages: get(&self.prefetch_pages),
            zero_pages: get(&self.zero_pages),
            copied_bytes: get(&self.copied_bytes),
            copy_ioctls: get(&self.copy_ioctls),
            zeropage_ioctls: get(&self.zeropage_ioctls),
            eexist: get(&self.eexist),
            eagain: get(&self.eagain),
            remove_events: get(&self.remove_events),
            removed_bytes: get(&self.removed_bytes),
            first_fault_us: opt(get(&self.first_fault_us)),
            prefetch_done_us: *lock(&self.prefetch_done),
            elapsed_us: opt(get(&self.ended_us)).unwrap_or_else(|| self.now_us()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn bump(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

impl Handler {
    /// Validates Firecracker's region mappings against the memory image and prepares to
    /// serve them. Nothing is served until [`Handler::run`].
    pub fn new(handshake: Handshake, mem: Arc<dyn PageSource>, policy: Policy) -> Result<Self> {
        let Handshake {
            uffd,
            mappings,
            peer,
            stream,
        } = handshake;
        let page_size = validate_mappings(&mappings, &*mem)?;
        let mut regions: Vec<Region> = mappings
            .iter()
            .map(|m| Region {
                base: m.base_host_virt_addr,
                first_page: m.offset / page_size,
                pages: m.size / page_size,
            })
            .collect();
        regions.sort_by_key(|r| r.base);
        let mut by_page: Vec<usize> = (0..regions.len()).collect();
        by_page.sort_by_key(|&i| regions[i].first_page);
        let total_pages = mem.len() / page_size;
        let host_page = host_page_size();
        let zeropage_ok = page_size == host_page;
        let stop_fd = eventfd().map_err(|source| Error::Uffd {
            op: "create the stop eventfd for",
            source,
        })?;
        let (pidfd, peer_gone) = open_peer_pidfd(peer);
        let shared = Shared {
            uffd,
            chunk_pages: (policy.chunk_bytes / page_size).max(1),
            policy,
            regions,
            by_page,
            page_size,
            page_shift: page_size.trailing_zeros(),
            zeropage_ok,
            zero_page: if zeropage_ok {
                Vec::new()
            } else {
                vec![0; page_size as usize]
            },
            present: AtomicBitmap::new(total_pages),
            claimed: AtomicBitmap::new(total_pages),
            removed: AtomicBitmap::new(total_pages),
            log: Mutex::new(Vec::new()),
            progress: Arc::new(Progress::new()),
            stop: AtomicBool::new(false),
            demand_pending: AtomicUsize::new(0),
            prefetch_abort: AtomicBool::new(false),
            mem,
        };
        debug!(
            regions = shared.regions.len(),
            page_size,
            chunk_pages = shared.chunk_pages,
            peer = ?peer,
            "uffd handler ready"
        );
        Ok(Self {
            shared,
            stream,
            peer,
            pidfd,
            peer_gone,
            stop: StopHandle {
                fd: Arc::new(stop_fd),
            },
            prefetch: Vec::new(),
        })
    }

    /// Populates `ws`'s pages eagerly once [`Handler::run`] starts, in `ws`'s order, in
    /// parallel with fault serving (faults go first). Fails if `ws` was recorded against a
    /// memory file of another size or page size; pages outside every region are ignored.
    pub fn with_prefetch(mut self, ws: &WorkingSet) -> Result<Self> {
        let s = &self.shared;
        if ws.page_size() != s.page_size || ws.file_len() != s.mem.len() {
            return Err(Error::WorkingSet {
                path: s.mem.path().to_path_buf(),
                reason: format!(
                    "recorded for a {}-byte memory file with {}-byte pages, but this one has \
                     {} bytes and {}-byte pages",
                    ws.file_len(),
                    ws.page_size(),
                    s.mem.len(),
                    s.page_size
                ),
            });
        }
        let batch_pages = (s.policy.prefetch_batch_bytes / s.page_size).max(1);
        let mut batches = Vec::new();
        for run in ws.runs() {
            let mut p = run.first_page;
            let end = run.first_page + run.pages;
            while p < end {
                let Some(ri) = s.region_index_of_page(p) else {
                    p += 1;
                    continue;
                };
                let r = s.regions[ri];
                let stop = end.min(r.first_page + r.pages).min(p + batch_pages);
                batches.push(Batch {
                    region: ri,
                    first_page: p,
                    pages: stop - p,
                });
                p = stop;
            }
        }
        if !batches.is_empty() && s.policy.prefetch_threads > 0 {
            *lock(&s.progress.prefetch_done) = None;
            self.prefetch = batches;
        }
        Ok(self)
    }

    /// A handle that stops [`Handler::run`] from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// A handle to watch counters and prefetch progress from another thread.
    pub fn monitor(&self) -> Monitor {
        Monitor {
            progress: self.shared.progress.clone(),
        }
    }

    /// Who connected (Firecracker), if the kernel could tell.
    pub fn peer(&self) -> Option<PeerCred> {
        self.peer
    }

    /// The guest regions' page size in bytes.
    pub fn page_size(&self) -> u64 {
        self.shared.page_size
    }

    /// Serves faults (and prefetches) until the VM goes away or [`StopHandle::stop`]. On an
    /// error the guest can no longer make progress; with [`Policy::kill_peer_on_error`] the
    /// peer is killed before the error is returned.
    pub fn run(self) -> Result<Outcome> {
        let Handler {
            shared,
            stream,
            peer,
            pidfd,
            peer_gone,
            stop,
            prefetch,
        } = self;
        let workers = if prefetch.is_empty() {
            0
        } else {
            shared.policy.prefetch_threads
        };
        let cursor = AtomicUsize::new(0);
        let running = AtomicUsize::new(workers);
        let worker_done = || {
            if running.fetch_sub(1, Ordering::AcqRel) == 1 {
                shared.progress.finish_prefetch();
            }
        };
        let result = thread::scope(|scope| {
            for i in 0..workers {
                let spawned = thread::Builder::new()
                    .name(format!("uffd-prefetch-{i}"))
                    .spawn_scoped(scope, || {
                        shared.prefetch_worker(&prefetch, &cursor);
                        worker_done();
                    });
                if let Err(e) = spawned {
                    warn!("cannot start prefetch thread {i}: {e}");
                    worker_done();
                }
            }
            let r = if peer_gone {
                Ok(ExitReason::PeerExited)
            } else {
                shared.serve_loop(&stream, pidfd.as_ref(), &stop)
            };
            shared.stop.store(true, Ordering::Release);
            r
        });
        shared.progress.finish_prefetch();
        let progress = &shared.progress;
        progress
            .ended_us
            .store(progress.now_us(), Ordering::Relaxed);
        match result {
            Ok(reason) => {
                let stats = progress.stats();
                info!(?reason, ?stats, "uffd handler finished");
                let working_set = shared
                    .policy
                    .record_working_set
                    .then(|| shared.recorded_working_set());
                Ok(Outcome {
                    reason,
                    stats,
                    working_set,
                })
            }
            Err(e) => {
                if shared.policy.kill_peer_on_error {
                    kill_peer(peer, pidfd.as_ref());
                }
                Err(e)
            }
        }
    }
}

impl Shared {
    fn region_of_addr(&self, addr: u64) -> Option<&Region> {
        let i = self.regions.partition_point(|r| r.base <= addr);
        let r = self.regions.get(i.checked_sub(1)?)?;
        ((addr - r.base) >> self.page_shift < r.pages).then_some(r)
    }

    fn region_index_of_page(&self, page: u64) -> Option<usize> {
        let i = self
            .by_page
            .partition_point(|&ri| self.regions[ri].first_page <= page);
        let ri = *self.by_page.get(i.checked_sub(1)?)?;
        let r = &self.regions[ri];
        (page - r.first_page < r.pages).then_some(ri)
    }

    fn addr_of(&self, r: &Region, page: u64) -> u64 {
        r.base + ((page - r.first_page) << self.page_shift)
    }

    fn class_of(&self, page: u64) -> Result<Class, Fail> {
        if self.removed.get(page) {
            return Ok(Class::Zero);
        }
        if !self.policy.zero_pages {
            return Ok(Class::Data);
        }
        let (off, len) = (page << self.page_shift, self.page_size);
        let zero = self.mem.is_hole(off, len)
            || all_zero(
                self.mem
                    .bytes(off, len)
                    .map_err(|e| self.source_failed(off, len, e))?,
            );
        Ok(if zero { Class::Zero } else { Class::Data })
    }

    fn source_failed(&self, offset: u64, len: u64, source: io::Error) -> Fail {
        Fail::Fatal(Error::Source {
            path: self.mem.path().to_path_buf(),
            offset,
            len,
            source,
        })
    }

    /// The serving loop: poll, drain every pending event (so a `remove` queued behind a
    /// fault is applied before the fault is served), apply removes, serve faults in arrival
    /// order. A fill that meets `EAGAIN` keeps its fault queued and the loop polls again
    /// with a short timeout: the kernel clears the condition only after the thread that
    /// queued the `remove` resumes.
    fn serve_loop(
        &self,
        stream: &UnixStream,
        pidfd: Option<&OwnedFd>,
        stop: &StopHandle,
    ) -> Result<ExitReason> {
        let mut pending: VecDeque<u64> = VecDeque::new();
        let mut msgs = vec![UffdMsg::default(); 256];
        let mut removes: Vec<(u64, u64)> = Vec::new();
        let mut watch_stream = true;
        let progress = &self.progress;
        loop {
            let mut fds = [
                pollfd(self.uffd.as_raw_fd(), libc::POLLIN),
                pollfd(stop.fd.as_raw_fd(), libc::POLLIN),
                pollfd(pidfd.map_or(-1, |f| f.as_raw_fd()), libc::POLLIN),
                pollfd(
                    if watch_stream { stream.as_raw_fd() } else { -1 },
                    libc::POLLRDHUP,
                ),
            ];
            let retry = libc::timespec {
                tv_sec: 0,
                tv_nsec: 50_000,
            };
            let timeout = if pending.is_empty() {
                std::ptr::null()
            } else {
                &retry as *const libc::timespec
            };
            // SAFETY: four pollfds we own; `timeout` is null or points at a live timespec.
            let r = unsafe {
                libc::ppoll(
                    fds.as_mut_ptr(),
                    fds.len() as libc::nfds_t,
                    timeout,
                    std::ptr::null(),
                )
            };
            if r < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::Uffd {
                    op: "poll",
                    source: err,
                });
            }
            if fds[1].revents != 0 {
                return Ok(ExitReason::Stopped);
            }
            if fds[2].revents != 0 {
                return Ok(ExitReason::PeerExited);
            }
            if fds[3].revents != 0 {
                if self.policy.stop_on_socket_close {
                    return Ok(ExitReason::SocketClosed);
                }
                debug!("Firecracker closed the uffd socket; serving until it exits");
                watch_stream = false;
            }
            if fds[0].revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
                return Err(Error::Uffd {
                    op: "poll",
                    source: io::Error::other(format!("revents {:#x}", fds[0].revents)),
                });
            }

            loop {
                let n = self
                    .uffd
                    .read_events(&mut msgs)
                    .map_err(|source| Error::Uffd {
                        op: "read events from",
                        source,
                    })?;
                for m in &msgs[..n] {
                    match m.event {
                        UFFD_EVENT_PAGEFAULT => {
                            if progress.fault_events.fetch_add(1, Ordering::Relaxed) == 0 {
                                progress
                                    .first_fault_us
                                    .store(progress.now_us(), Ordering::Relaxed);
                            }
                            pending.push_back(m.arg[1]);
                        }
                        UFFD_EVENT_REMOVE => removes.push((m.arg[0], m.arg[1])),
                        other => warn!("ignoring unexpected userfaultfd event {other:#x}"),
                    }
                }
                if n < msgs.len() {
                    break;
                }
            }
            for (start, end) in removes.drain(..) {
                self.apply_remove(start, end);
            }

            self.demand_pending.store(pending.len(), Ordering::Release);
            let mut i = 0;
            while i < pending.len() {
                match self.serve_fault(pending[i]) {
                    Ok(Served::Done) => {
                        pending.remove(i);
                    }
                    Ok(Served::InFlight) => i += 1,
                    Err(Fail::Again) => break,
                    Err(Fail::Gone) => return Ok(ExitReason::MemoryGone),
                    Err(Fail::Fatal(e)) => return Err(e),
                }
            }
            self.demand_pending.store(pending.len(), Ordering::Release);
        }
    }

    fn serve_fault(&self, addr: u64) -> Result<Served, Fail> {
        let addr = addr & !(self.page_size - 1);
        let r = *self
            .region_of_addr(addr)
            .ok_or(Fail::Fatal(Error::FaultOutsideRegions { addr }))?;
        let page = r.first_page + ((addr - r.base) >> self.page_shift);
        if self.present.get(page) {
            // Usually a fault queued while another thread's copy of the page was landing.
            // But a `remove` can zap a page just after a copy whose bits were set after the
            // `remove` cleared them; merely waking would then loop the guest on the fault
            // forever. A one-page fill settles it: the kernel answers EEXIST (then we wake)
            // if the page is there, and maps it if not.
            bump(&self.progress.faults_already_present, 1);
            self.populate(&r, page, 1, self.class_of(page)?, Cause::Demand)?;
            return Ok(Served::Done);
        }
        let rel = page - r.first_page;
        let chunk_start = page - rel % self.chunk_pages;
        let chunk_end = (chunk_start + self.chunk_pages).min(r.first_page + r.pages);
        self.fill(&r, page, chunk_end, Cause::Demand)?;
        // The faulting page is in (or claimed by a prefetcher); the rest of the chunk is a
        // bonus that may wait.
        match self.fill(&r, chunk_start, page, Cause::Demand) {
            Ok(()) | Err(Fail::Again) => {}
            Err(e) => return Err(e),
        }
        Ok(if self.present.get(page) {
            Served::Done
        } else {
            Served::InFlight
        })
    }

    /// Takes page `p` on for population unless it is present, claimed by another thread,
    /// or (for prefetch) removed by the balloon: a fault will zero it if it is ever touched.
    fn claim(&self, p: u64, cause: Cause) -> bool {
        if self.present.get(p) || (cause == Cause::Prefetch && self.removed.get(p)) {
            return false;
        }
        !self.claimed.test_and_set(p)
    }

    /// Populates the pages of `[start, end)` (region `r`) that no one else has: claims
    /// them page by page, in runs of one class, and populates each run.
    fn fill(&self, r: &Region, start: u64, end: u64, cause: Cause) -> Result<(), Fail> {
        let mut p = start;
        while p < end {
            if !self.claim(p, cause) {
                p += 1;
                continue;
            }
            let class = match self.class_of(p) {
                Ok(class) => class,
                Err(e) => {
                    self.claimed.clear_range(p, 1);
                    return Err(e);
                }
            };
            let mut q = p + 1;
            // A page the source cannot read ends the run; claiming it next fails the fill.
            while q < end && self.class_of(q).ok() == Some(class) && self.claim(q, cause) {
                q += 1;
            }
            self.populate(r, p, q - p, class, cause)?;
            p = q;
        }
        Ok(())
    }

    /// One run of pages of one class: one ioctl, or more when the kernel stops part way.
    fn populate(
        &self,
        r: &Region,
        page: u64,
        n: u64,
        class: Class,
        cause: Cause,
    ) -> Result<(), Fail> {
        let ps = self.page_size;
        let progress = &self.progress;
        let mut done = 0;
        while done < n {
            let p = page + done;
            let dst = self.addr_of(r, p);
            let (op, pages, res) = match class {
                Class::Data => {
                    let pages = n - done;
                    let (off, len) = (p << self.page_shift, pages * ps);
                    let src = match self.mem.bytes(off, len) {
                        Ok(src) => src,
                        Err(e) => {
                            self.claimed.clear_range(p, n - done);
                            return Err(self.source_failed(off, len, e));
                        }
                    };
                    bump(&progress.copy_ioctls, 1);
                    // SAFETY: `src` is `len` readable bytes, borrowed for the ioctl.
                    let res = unsafe { self.uffd.copy(dst, src.as_ptr(), len, true) };
                    ("UFFDIO_COPY", pages, res)
                }
                Class::Zero if self.zeropage_ok => {
                    let pages = n - done;
                    bump(&progress.zeropage_ioctls, 1);
                    (
                        "UFFDIO_ZEROPAGE",
                        pages,
                        self.uffd.zeropage(dst, pages * ps, true),
                    )
                }
                Class::Zero => {
                    bump(&progress.copy_ioctls, 1);
                    // SAFETY: `zero_page` is one readable page.
                    let res = unsafe { self.uffd.copy(dst, self.zero_page.as_ptr(), ps, true) };
                    ("UFFDIO_COPY", 1, res)
                }
            };
            match res {
                Ok(()) => {
                    self.mark(p, pages, class, cause);
                    done += pages;
                }
                Err(FillError { done: bytes, errno }) => {
                    let k = bytes / ps;
                    if k > 0 {
                        // Partial: retry from where it stopped to learn why.
                        self.mark(p, k, class, cause);
                        done += k;
                        continue;
                    }
                    if errno == libc::EEXIST {
                        // Mapped behind our back (a prefetch copy landing just after a
                        // `remove` cleared its bits): it is present all the same.
                        bump(&progress.eexist, 1);
                        self.present.set_range(p, 1);
                        let _ = self.uffd.wake(dst, ps);
                        done += 1;
                        continue;
                    }
                    // Give the rest of the run back so that a retry (or another thread) can
                    // take it.
                    self.claimed.clear_range(p, n - done);
                    match errno {
                        libc::EAGAIN => {
                            bump(&progress.eagain, 1);
                            return Err(Fail::Again);
                        }
                        libc::ESRCH => return Err(Fail::Gone),
                        libc::ENOENT => {
                            // The range is no longer registered or mapped (Firecracker is
                            // tearing the VM down); its waiters were woken by the kernel.
                            debug!("{op} at {dst:#x}: range no longer registered");
                            return Ok(());
                        }
                        _ => {
                            return Err(Fail::Fatal(Error::Ioctl {
                                op,
                                addr: dst,
                                len: pages * ps,
                                source: io::Error::from_raw_os_error(errno),
                            }))
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn mark(&self, page: u64, n: u64, class: Class, cause: Cause) {
        self.present.set_range(page, n);
        let progress = &self.progress;
        match cause {
            Cause::Demand => bump(&progress.demand_pages, n),
            Cause::Prefetch => bump(&progress.prefetch_pages, n),
        }
        match class {
            Class::Zero => bump(&progress.zero_pages, n),
            Class::Data => bump(&progress.copied_bytes, n * self.page_size),
        }
        if self.policy.record_working_set {
            lock(&self.log).push(PageRun {
                first_page: page,
                pages: n,
            });
        }
    }

    /// `UFFD_EVENT_REMOVE` for host range `[start, end)`: the pages are gone from the guest
    /// and must come back as zeros, not as snapshot contents.
    fn apply_remove(&self, start: u64, end: u64) {
        bump(&self.progress.remove_events, 1);
        bump(&self.progress.removed_bytes, end.saturating_sub(start));
        let ps = self.page_size;
        for r in &self.regions {
            let r_end = r.base + (r.pages << self.page_shift);
            let s = start.max(r.base);
            let e = end.min(r_end);
            if s >= e {
                continue;
            }
            let first = r.first_page + ((s - r.base) >> self.page_shift);
            let last = r.first_page + ((e - r.base + ps - 1) >> self.page_shift);
            self.removed.set_range(first, last - first);
            self.present.clear_range(first, last - first);
            self.claimed.clear_range(first, last - first);
            debug!(
                start,
                end,
                pages = last - first,
                "balloon removed guest pages"
            );
        }
    }

    fn prefetch_worker(&self, batches: &[Batch], cursor: &AtomicUsize) {
        // Faults first: a vCPU is blocked on each of them, while prefetch only saves future
        // faults. With spare cores both run at full speed; on a contended one the serving
        // thread (nice 0) wins.
        // SAFETY: setpriority on our own thread id has no memory effects.
        unsafe {
            libc::setpriority(
                libc::PRIO_PROCESS,
                libc::gettid() as libc::id_t,
                PREFETCH_NICE,
            );
        }
        loop {
            if self.stop.load(Ordering::Acquire) || self.prefetch_abort.load(Ordering::Acquire) {
                return;
            }
            let Some(b) = batches.get(cursor.fetch_add(1, Ordering::Relaxed)) else {
                return;
            };
            let r = self.regions[b.region];
            if self.demand_pending.load(Ordering::Acquire) > 0 {
                // The nice value already lets the serving thread preempt us; yielding
                // between batches hands it the CPU at once when both share one.
                thread::yield_now();
            }
            loop {
                match self.fill(&r, b.first_page, b.first_page + b.pages, Cause::Prefetch) {
                    Ok(()) => break,
                    Err(Fail::Again) => {
                        if self.stop.load(Ordering::Acquire) {
                            return;
                        }
                        thread::sleep(Duration::from_micros(20));
                    }
                    Err(Fail::Gone) => return,
                    Err(Fail::Fatal(e)) => {
                        // Prefetch is an optimisation: faults are still served on demand.
                        warn!("prefetch stopped: {e}");
                        self.prefetch_abort.store(true, Ordering::Release);
                        return;
                    }
                }
            }
        }
    }

    fn recorded_working_set(&self) -> WorkingSet {
        let log = std::mem::take(&mut *lock(&self.log));
        let removed = &self.removed;
        let runs = log.into_iter().flat_map(|run| {
            (run.first_page..run.first_page + run.pages)
                .filter(|&p| !removed.get(p))
                .map(|p| PageRun {
                    first_page: p,
                    pages: 1,
                })
        });
        WorkingSet::from_runs(self.page_size, self.mem.len(), runs)
    }
}

/// Checks Firecracker's mappings against themselves and the memory file; returns the page
/// size they share.
fn validate_mappings(mappings: &[GuestRegionUffdMapping], mem: &dyn PageSource) -> Result<u64> {
    let invalid = |index: usize, reason: String| Error::InvalidMapping {
        index,
        mapping: format!("{:?}", mappings[index]),
        reason,
    };
    let Some(first) = mappings.first() else {
        return Err(Error::MemoryFile {
            path: mem.path().to_path_buf(),
            reason: "Firecracker sent no guest regions".into(),
        });
    };
    let ps = first.page_size;
    if ps < host_page_size() {
        return Err(invalid(0, format!("page size {ps} is below the host's")));
    }
    for (i, m) in mappings.iter().enumerate() {
        if m.page_size != ps {
            return Err(invalid(
                i,
                format!("page size {} differs from region 0's {ps}", m.page_size),
            ));
        }
        if m.size == 0 || m.size % ps != 0 || m.base_host_virt_addr % ps != 0 || m.offset % ps != 0
        {
            return Err(invalid(
                i,
                format!(
                    "size, address and offset must be non-zero multiples of the {ps}-byte page"
                ),
            ));
        }
        if m.base_host_virt_addr.checked_add(m.size).is_none() {
            return Err(invalid(i, "address range overflows".into()));
        }
        match m.offset.checked_add(m.size) {
            Some(end) if end <= mem.len() => {}
            _ => {
                return Err(Error::MemoryFile {
                    path: mem.path().to_path_buf(),
                    reason: format!(
                        "{} bytes long, too short for guest region {i} at offset {} of size {}",
                        mem.len(),
                        m.offset,
                        m.size
                    ),
                })
            }
        }
    }
    for (what, key) in [
        ("host address range", HOST_RANGE),
        ("memory file range", FILE_RANGE),
    ] {
        if let Some((a, b)) = first_overlap(mappings, key) {
            return Err(invalid(b, format!("its {what} overlaps region {a}'s")));
        }
    }
    Ok(ps)
}

type RangeOf = fn(&GuestRegionUffdMapping) -> (u64, u64);
const HOST_RANGE: RangeOf = |m| (m.base_host_virt_addr, m.size);
const FILE_RANGE: RangeOf = |m| (m.offset, m.size);

/// The first pair of regions (by start) whose `range`s overlap.
fn first_overlap(mappings: &[GuestRegionUffdMapping], range: RangeOf) -> Option<(usize, usize)> {
    let mut order: Vec<usize> = (0..mappings.len()).collect();
    order.sort_by_key(|&i| range(&mappings[i]).0);
    order.windows(2).find_map(|w| {
        let (s0, l0) = range(&mappings[w[0]]);
        let (s1, _) = range(&mappings[w[1]]);
        (s0 + l0 > s1).then_some((w[0], w[1]))
    })
}

fn host_page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let ps = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if ps > 0 {
        ps as u64
    } else {
        4096
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall wrapper.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A pidfd for the peer, so its exit wakes the serving loop whatever Firecracker does with
/// the socket. `(None, true)` when the peer is already gone; `(None, false)` when there is
/// no separate peer to watch (it is us, or unknown) or pidfds are unavailable.
fn open_peer_pidfd(peer: Option<PeerCred>) -> (Option<OwnedFd>, bool) {
    let Some(peer) = peer else {
        return (None, false);
    };
    if peer.pid as u32 == std::process::id() {
        return (None, false);
    }
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, peer.pid, 0) };
    if fd < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            return (None, true);
        }
        warn!(
            "cannot watch peer pid {}: {err}; relying on the socket and ESRCH",
            peer.pid
        );
        return (None, false);
    }
    // SAFETY: the kernel just gave us this descriptor.
    (Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }), false)
}

fn kill_peer(peer: Option<PeerCred>, pidfd: Option<&OwnedFd>) {
    let (Some(peer), Some(pidfd)) = (peer, pidfd) else {
        return;
    };
    warn!(
        pid = peer.pid,
        "killing the peer: its memory can no longer be served"
    );
    // SAFETY: pidfd_send_signal on a pidfd we own; a pidfd cannot name a recycled pid.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
}
