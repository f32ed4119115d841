//! A userfaultfd page-fault handler for Firecracker's `Uffd` memory backend: it serves a
//! snapshot memory file to a restoring VM on demand, in chunks, and prefetches the pages
//! the previous restore touched.
//!
//! # Protocol
//!
//! The handler listens on a unix socket ([`UffdListener`]); `PUT /snapshot/load` with
//! `"mem_backend": {"backend_type": "Uffd", "backend_path": <socket>}` makes Firecracker
//! map anonymous guest memory, register it with a userfaultfd (missing mode, with
//! `UFFD_FEATURE_EVENT_REMOVE`), connect, and send in one `sendmsg` the JSON array of
//! [`GuestRegionUffdMapping`] plus the userfaultfd as `SCM_RIGHTS`. From then on the kernel
//! queues `UFFD_EVENT_PAGEFAULT` for every first touch of a guest page (vCPUs through KVM,
//! and Firecracker's own device emulation), and `UFFD_EVENT_REMOVE` when the balloon
//! `madvise(MADV_DONTNEED)`s a range.
//!
//! # Serving
//!
//! * A fault at host address `A` in region `R` is served from file offset
//!   `R.offset + (A - R.base_host_virt_addr)` of the memory image, a [`PageSource`]: the
//!   read-only mapped [`MemoryFile`] (or a Diff chain layered over its base), or a source
//!   that fetches the image's chunks on first read (`bazel-diff-remote`'s `LazyPages`).
//! * **Chunks**: the whole aligned [`Policy::chunk_bytes`] block around the fault is
//!   populated (its pages not yet present, the faulting page's run first), so a sequential
//!   working set costs one fault per chunk instead of one per 4 KiB page.
//! * **Zero pages**: pages that are holes in the file (`SEEK_DATA`/`SEEK_HOLE`, once at
//!   open) or read as zeros are mapped with `UFFDIO_ZEROPAGE`; they use no memory until the
//!   guest writes them.
//! * **Races**: `EEXIST` (another thread got there first) marks the page present and wakes
//!   its waiters; `EAGAIN` (a `remove` event is pending) defers the fault until the events
//!   are drained. Every poll drains all pending events and applies removes before faults.
//! * **Balloon**: a removed range is served as zero pages from then on, and never
//!   prefetched.
//! * **Prefetch**: [`Handler::with_prefetch`] takes the [`WorkingSet`] a previous run
//!   returned ([`Outcome::working_set`]) and copies it in, in the order it was first
//!   needed, with large ioctls on [`Policy::prefetch_threads`] threads while faults are
//!   served. Faults go first: prefetchers run at nice 10 and yield between batches while a
//!   fault waits; pages are claimed in a shared bitmap so the two never copy the same page.
//! * **End**: [`Handler::run`] returns when Firecracker exits (watched through a pidfd of
//!   the `SO_PEERCRED` pid), when the address space is gone (`ESRCH`), or on
//!   [`StopHandle::stop`]. If the handler itself fails it SIGKILLs Firecracker
//!   ([`Policy::kill_peer_on_error`]), which would otherwise hang on its next fault.
//!
//! # Use from a driver
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use bazel_diff_uffd::{Handler, MemoryFile, Policy, UffdListener, WorkingSet};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let run_dir = std::path::Path::new("/run/bazel-diff-snap/vm-1");
//! let mem_path = std::path::Path::new("/store/entry/vm/mem_file");
//! // 1. Before PUT /snapshot/load: open the memory file and listen.
//! let mem = Arc::new(MemoryFile::open(mem_path)?);
//! let listener = UffdListener::bind(run_dir.join("uffd.sock"))?;
//! // 2. Spawn Firecracker, send PUT /snapshot/load with backend_path = that socket
//! //    (from another thread: the load blocks until the handshake is accepted).
//! // 3. Accept the handshake and serve until Firecracker exits.
//! let handshake = listener.accept(Duration::from_secs(10))?;
//! let mut handler = Handler::new(handshake, mem, Policy::default())?;
//! let ws_path = WorkingSet::sidecar_path(mem_path);
//! if let Ok(ws) = WorkingSet::load(&ws_path) {
//!     handler = handler.with_prefetch(&ws)?;
//! }
//! let outcome = handler.run()?;
//! if let Some(ws) = outcome.working_set {
//!     ws.save(&ws_path)?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Benchmark
//!
//! `cargo run --release -p bazel-diff-uffd --example uffd_bench -- --size-mib 1024`
//! restores a simulated VM ([`sim::SimulatedVm`], a child process registering anonymous
//! memory with a real userfaultfd) that touches every page of a 1 GiB memory file, in four
//! modes: 4 KiB single-page serving, chunked serving, chunked plus prefetch of the working
//! set the chunked run recorded (the guest racing the prefetchers), and the same with the
//! guest resumed only once prefetch is done. It prints faults served per second, MB/s and
//! the time to serve the whole working set for each; `--help` lists the flags. The crate
//! README keeps the figures measured so far (≈ 0.25–0.35 s for 1 GiB chunked, ≈ 0.2 s
//! with prefetch, 2–8 s page by page on a 2-vCPU machine).

mod bitmap;
mod error;
mod handshake;
mod memfile;
mod server;
pub mod sim;
mod source;
pub mod sys;
mod workingset;

pub use error::{Error, Result};
pub use handshake::{
    parse_mappings, receive_handshake, send_handshake, GuestRegionUffdMapping, Handshake, PeerCred,
    UffdListener,
};
pub use memfile::{MemoryFile, MAX_LAYER_EXTENTS};
pub use server::{ExitReason, Handler, Monitor, Outcome, Policy, Stats, StopHandle};
pub use source::PageSource;
pub use sys::Uffd;
pub use workingset::{PageRun, WorkingSet};
