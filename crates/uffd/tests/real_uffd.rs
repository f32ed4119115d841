//! The handler against a real userfaultfd: simulated guest memory (anonymous, registered in
//! missing mode) in a thread or in a child process, the handshake over a real unix socket
//! with `SCM_RIGHTS`, and every byte read back compared with the memory file.
//!
//! The child-process tests re-execute this test binary (see `child_entry_point`) so that
//! Firecracker's side lives in another address space, as it does in production.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on setup failures by design
#![allow(clippy::print_stdout)] // child processes report to the parent on stdout

mod support;

use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bazel_diff_uffd::sim::SimulatedVm;
use bazel_diff_uffd::{
    send_handshake, Error, ExitReason, Handler, MemoryFile, PageRun, Policy, UffdListener,
    WorkingSet,
};
use support::*;

fn policy(chunk_bytes: u64) -> Policy {
    Policy {
        chunk_bytes,
        ..Policy::default()
    }
}

#[test]
fn handshake_over_a_real_socket_carries_the_uffd_and_the_regions() {
    let fx = Fixture::new(4 * MIB);
    let sock = fx.socket("hs");
    let listener = UffdListener::bind(&sock).unwrap();
    let vm = SimulatedVm::new(&[3 * MIB, MIB]).unwrap();
    let _stream = vm.connect(&sock).unwrap();
    let hs = listener.accept(Duration::from_secs(5)).unwrap();

    assert_eq!(hs.mappings, vm.mappings());
    assert_eq!(hs.mappings[1].offset, 3 * MIB);
    assert_eq!(hs.peer.map(|p| p.pid as u32), Some(std::process::id()));
    let link = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&hs.uffd)
    ))
    .unwrap();
    assert_eq!(link.to_string_lossy(), "anon_inode:[userfaultfd]");

    drop(listener);
    assert!(!sock.exists(), "the listener unlinks the socket it created");
}

#[test]
fn handshake_with_hundreds_of_regions_spans_several_reads() {
    // Memory hotplug slots can make the JSON larger than one 64 KiB read.
    let fx = Fixture::new(700 * PAGE);
    let regions = vec![PAGE; 700];
    let run = start(&fx, &regions, policy(PAGE), None);
    let body = serde_json::to_vec(&run.vm.mappings()).unwrap();
    assert!(body.len() > 64 << 10, "{} bytes", body.len());
    for page in (0..fx.pages).step_by(7) {
        assert_page(&run.vm, page);
    }
    let out = run.finish();
    assert_eq!(out.stats.fault_events, fx.pages.div_ceil(7));
}

#[test]
fn single_page_mode_serves_every_page_and_zero_pages_with_zeropage() {
    let fx = Fixture::new(32 * MIB);
    let run = start(&fx, &[24 * MIB, 8 * MIB], policy(PAGE), None);
    for page in 0..fx.pages {
        assert_page(&run.vm, page);
    }
    let out = run.finish();
    let s = &out.stats;
    assert_eq!(out.reason, ExitReason::Stopped);
    assert_eq!(s.fault_events, fx.pages, "one fault per page");
    assert_eq!(s.demand_pages, fx.pages);
    assert_eq!(s.zero_pages, fx.zero_pages());
    assert_eq!(s.zeropage_ioctls, fx.zero_pages());
    assert_eq!(s.copied_bytes, (fx.pages - fx.zero_pages()) * PAGE);
    assert_eq!(s.prefetch_pages, 0);
}

#[test]
fn chunked_mode_takes_one_fault_per_chunk() {
    let fx = Fixture::new(32 * MIB);
    let run = start(&fx, &[24 * MIB, 8 * MIB], policy(MIB), None);
    for page in 0..fx.pages {
        assert_page(&run.vm, page);
    }
    let out = run.finish();
    assert_eq!(out.stats.fault_events, 32, "one fault per 1 MiB chunk");
    assert_eq!(out.stats.demand_pages, fx.pages);
    assert_eq!(out.stats.zero_pages, fx.zero_pages());
    // Runs of data pages between zero pages are copied with one ioctl each, not per page.
    assert!(out.stats.copy_ioctls < fx.pages / 2, "{:?}", out.stats);
}

#[test]
fn zero_page_detection_can_be_disabled() {
    let fx = Fixture::new(8 * MIB);
    let run = start(
        &fx,
        &[8 * MIB],
        Policy {
            zero_pages: false,
            ..policy(64 << 10)
        },
        None,
    );
    for page in 0..fx.pages {
        assert_page(&run.vm, page);
    }
    let out = run.finish();
    assert_eq!(out.stats.zero_pages, 0);
    assert_eq!(out.stats.copied_bytes, fx.len());
}

#[test]
fn random_reads_from_user_and_kernel_mode_match_the_file() {
    let fx = Fixture::new(32 * MIB);
    let run = start(&fx, &[20 * MIB, 12 * MIB], policy(64 << 10), None);
    let mut rng = Rng(7);
    let mut want = vec![0u8; PAGE as usize];
    for _ in 0..3000 {
        let page = rng.below(fx.pages);
        page_bytes(page, &mut want);
        let at = rng.below(PAGE - 8) as usize;
        let mut got = [0u8; 8];
        run.vm.read(page * PAGE + at as u64, &mut got);
        assert_eq!(&got[..], &want[at..at + 8], "page {page} at {at}");
    }
    // Kernel-mode faults (copy_from_user), the kind KVM takes on guest memory, on pages
    // not touched yet as well as on populated ones.
    for _ in 0..50 {
        let page = rng.below(fx.pages - 16);
        let got = run.vm.read_via_kernel(page * PAGE, 16 * PAGE).unwrap();
        for (i, chunk) in got.chunks(PAGE as usize).enumerate() {
            page_bytes(page + i as u64, &mut want);
            assert!(
                chunk == &want[..],
                "kernel read of page {}",
                page + i as u64
            );
        }
    }
    let out = run.finish();
    assert!(out.stats.fault_events > 0);
}

/// A Diff snapshot chain served without merging: the fixture's file as the Full base and
/// two sparse diffs layered over it; every guest page shows the newest layer holding it.
#[test]
fn layered_diff_chain_is_served_page_by_page_from_the_newest_layer() {
    use std::os::unix::fs::FileExt;
    let fx = Fixture::new(8 * MIB);
    let diff = |name: &str, every: u64, byte: u8| {
        let path = fx.dir.path().join(name);
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(fx.len()).unwrap();
        for page in (0..fx.pages).filter(|p| p % every == 0) {
            f.write_all_at(&[byte ^ page as u8 | 1; PAGE as usize], page * PAGE)
                .unwrap();
        }
        path
    };
    let (d1, d2) = (diff("d1", 3, 0xD1), diff("d2", 7, 0xD2));
    let mem = Arc::new(MemoryFile::layered(&fx.mem_path, &[&d1, &d2]).unwrap());
    let run = start_with(&fx, mem, &[5 * MIB, 3 * MIB], policy(256 << 10), None);
    let mut got = vec![0u8; PAGE as usize];
    let mut base = vec![0u8; PAGE as usize];
    for page in 0..fx.pages {
        run.vm.read(page * PAGE, &mut got);
        let want = match (page % 7 == 0, page % 3 == 0) {
            (true, _) => vec![0xD2 ^ page as u8 | 1; PAGE as usize],
            (false, true) => vec![0xD1 ^ page as u8 | 1; PAGE as usize],
            _ => {
                page_bytes(page, &mut base);
                base.clone()
            }
        };
        assert!(got == want, "guest page {page}");
    }
    let out = run.finish();
    assert!(out.stats.fault_events > 0);
}

#[test]
fn guest_writes_after_serving_stick() {
    let fx = Fixture::new(4 * MIB);
    let run = start(&fx, &[4 * MIB], policy(PAGE), None);
    // A write fault on a data page and on a zero page: both become private, writable pages.
    let data = (1..fx.pages).find(|&p| kind_of(p) == Kind::Data).unwrap();
    run.vm.write_byte(data * PAGE + 1, 0x5A);
    let zero = (0..fx.pages).find(|&p| kind_of(p) == Kind::Zeros).unwrap();
    run.vm.write_byte(zero * PAGE + 2, 0xA5);
    assert_eq!(run.vm.read_byte(data * PAGE + 1), 0x5A);
    assert_eq!(
        run.vm.read_byte(data * PAGE),
        data as u8,
        "rest of the page from the file"
    );
    assert_eq!(run.vm.read_byte(zero * PAGE + 2), 0xA5);
    assert_eq!(run.vm.read_byte(zero * PAGE + 3), 0);
    run.finish();
}

#[test]
fn balloon_remove_makes_later_faults_zero_pages() {
    let fx = Fixture::new(8 * MIB);
    let run = start(&fx, &[8 * MIB], policy(64 << 10), None);
    for page in 0..fx.pages {
        assert_page(&run.vm, page);
    }
    // Inflate the balloon over 256 KiB: MADV_DONTNEED sends UFFD_EVENT_REMOVE and blocks
    // until the handler has read it.
    let (first, n) = (512u64, 64u64);
    run.vm.discard(first * PAGE, n * PAGE).unwrap();
    let mut got = vec![0u8; (n * PAGE) as usize];
    run.vm.read(first * PAGE, &mut got);
    assert!(
        got.iter().all(|&b| b == 0),
        "removed pages come back as zeros, not file contents"
    );
    assert_page(&run.vm, first - 1);
    assert_page(&run.vm, first + n);
    // Removed pages are writable guest memory like any other.
    run.vm.write_byte(first * PAGE, 9);
    assert_eq!(run.vm.read_byte(first * PAGE), 9);

    let out = run.finish();
    assert_eq!(out.stats.remove_events, 1);
    assert_eq!(out.stats.removed_bytes, n * PAGE);
    let ws = out.working_set.unwrap();
    let recorded: Vec<u64> = ws
        .runs()
        .iter()
        .flat_map(|r| r.first_page..r.first_page + r.pages)
        .collect();
    assert_eq!(
        recorded.len() as u64,
        fx.pages - n,
        "removed pages are not in the working set"
    );
    assert!(!recorded.contains(&first));
}

/// Pages a "restore" of a build server would touch: a contiguous heap prefix, a scattered
/// middle, and a dense block near the end.
fn touched_pages(fx: &Fixture) -> Vec<u64> {
    let mut rng = Rng(42);
    let mut pages: Vec<u64> = (0..1024).collect();
    pages.extend((0..300).map(|_| 1024 + rng.below(fx.pages / 2)));
    pages.extend(fx.pages - 700..fx.pages - 100);
    pages
}

#[test]
fn recorded_working_set_prefetched_on_the_next_restore_leaves_no_faults() {
    let fx = Fixture::new(32 * MIB);
    let regions = [24 * MIB, 8 * MIB];
    let pages = touched_pages(&fx);

    // First restore: serve on demand and record.
    let run = start(&fx, &regions, policy(256 << 10), None);
    for &p in &pages {
        assert_page(&run.vm, p);
    }
    let first = run.finish();
    assert!(first.stats.fault_events > 0);
    let ws = first.working_set.unwrap();
    assert_eq!(ws.pages(), first.stats.demand_pages);
    let path = WorkingSet::sidecar_path(&fx.mem_path);
    ws.save(&path).unwrap();
    let ws = WorkingSet::load(&path).unwrap();

    // Second restore: prefetch everything the first one populated, then touch the same pages.
    let run = start(&fx, &regions, policy(256 << 10), Some(ws.clone()));
    assert!(run.monitor.wait_prefetch(Duration::from_secs(30)));
    for &p in &pages {
        assert_page(&run.vm, p);
    }
    let second = run.finish();
    assert_eq!(second.stats.fault_events, 0, "{:?}", second.stats);
    assert_eq!(second.stats.prefetch_pages, ws.pages());
    assert!(second.stats.prefetch_done_us.is_some());
    // The second run records the same set again (order aside), so it does not decay.
    assert_eq!(second.working_set.unwrap().pages(), ws.pages());
}

#[test]
fn prefetch_racing_with_faults_populates_every_page_exactly_once() {
    let fx = Fixture::new(32 * MIB);
    let all = WorkingSet::from_runs(
        PAGE,
        fx.len(),
        [PageRun {
            first_page: 0,
            pages: fx.pages,
        }],
    );
    let run = start(
        &fx,
        &[16 * MIB, 16 * MIB],
        Policy {
            prefetch_threads: 2,
            prefetch_batch_bytes: 128 << 10,
            ..policy(64 << 10)
        },
        Some(all),
    );
    // Walk backwards, against the prefetchers, so both sides meet in the middle.
    for page in (0..fx.pages).rev() {
        assert_page(&run.vm, page);
    }
    assert!(run.monitor.wait_prefetch(Duration::from_secs(30)));
    let out = run.finish();
    let s = &out.stats;
    assert_eq!(s.demand_pages + s.prefetch_pages, fx.pages, "{s:?}");
    assert!(s.prefetch_pages > 0 && s.fault_events < fx.pages, "{s:?}");
}

#[test]
fn removes_racing_with_prefetch_and_faults_never_fail() {
    let fx = Fixture::new(16 * MIB);
    let all = WorkingSet::from_runs(
        PAGE,
        fx.len(),
        [PageRun {
            first_page: 0,
            pages: fx.pages,
        }],
    );
    let run = start(
        &fx,
        &[16 * MIB],
        Policy {
            prefetch_threads: 2,
            prefetch_batch_bytes: 64 << 10,
            ..policy(16 << 10)
        },
        Some(all),
    );
    let mut rng = Rng(99);
    let mut want = vec![0u8; PAGE as usize];
    let mut got = vec![0u8; PAGE as usize];
    for _ in 0..400 {
        let first = rng.below(fx.pages - 32);
        let n = 1 + rng.below(32);
        run.vm.discard(first * PAGE, n * PAGE).unwrap();
        for p in first..first + n {
            run.vm.read(p * PAGE, &mut got);
            page_bytes(p, &mut want);
            // Zeros, as a removed page must read; the snapshot's page is tolerated only for
            // the documented window where a prefetch copy lands just after the zap.
            assert!(got.iter().all(|&b| b == 0) || got == want, "page {p}");
        }
        let probe = rng.below(fx.pages);
        run.vm.read(probe * PAGE, &mut got);
        page_bytes(probe, &mut want);
        assert!(got.iter().all(|&b| b == 0) || got == want, "page {probe}");
    }
    let out = run.finish();
    assert_eq!(out.stats.remove_events, 400);
}

#[test]
fn stop_handle_ends_an_idle_handler() {
    let fx = Fixture::new(MIB);
    let run = start(&fx, &[MIB], Policy::default(), None);
    let out = run.finish();
    assert_eq!(out.reason, ExitReason::Stopped);
    assert_eq!(out.stats.fault_events, 0);
    assert_eq!(out.working_set.unwrap().pages(), 0);
}

#[test]
fn socket_close_ends_the_handler_when_configured() {
    let fx = Fixture::new(MIB);
    let mut run = start(
        &fx,
        &[MIB],
        Policy {
            stop_on_socket_close: true,
            ..Policy::default()
        },
        None,
    );
    assert_page(&run.vm, 3);
    drop(run.stream.take());
    let out = run.handler.join().unwrap().unwrap();
    assert_eq!(out.reason, ExitReason::SocketClosed);
}

#[test]
fn accept_times_out_when_firecracker_never_connects() {
    let fx = Fixture::new(MIB);
    let listener = UffdListener::bind(fx.socket("idle")).unwrap();
    let err = listener.accept(Duration::from_millis(100)).unwrap_err();
    assert!(matches!(err, Error::HandshakeTimeout { .. }), "{err}");
}

#[test]
fn handshake_without_a_descriptor_is_rejected() {
    let fx = Fixture::new(MIB);
    let sock = fx.socket("nofd");
    let listener = UffdListener::bind(&sock).unwrap();
    let client = thread::spawn({
        let sock = sock.clone();
        move || {
            use std::io::Write;
            let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
            s.write_all(
                br#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}]"#,
            )
            .unwrap();
            s
        }
    });
    let err = listener.accept(Duration::from_secs(5)).unwrap_err();
    assert!(matches!(err, Error::NoUffd { .. }), "{err}");
    drop(client.join());
}

#[test]
fn regions_larger_than_the_memory_file_are_rejected() {
    let fx = Fixture::new(MIB);
    let sock = fx.socket("big");
    let listener = UffdListener::bind(&sock).unwrap();
    let vm = SimulatedVm::new(&[2 * MIB]).unwrap();
    let _stream = vm.connect(&sock).unwrap();
    let hs = listener.accept(Duration::from_secs(5)).unwrap();
    let mem = Arc::new(MemoryFile::open(&fx.mem_path).unwrap());
    let err = Handler::new(hs, mem, Policy::default()).unwrap_err();
    assert!(matches!(err, Error::MemoryFile { .. }), "{err}");
}

#[test]
fn working_set_of_another_memory_file_is_refused() {
    let fx = Fixture::new(MIB);
    let sock = fx.socket("ws");
    let listener = UffdListener::bind(&sock).unwrap();
    let vm = SimulatedVm::new(&[MIB]).unwrap();
    let _stream = vm.connect(&sock).unwrap();
    let hs = listener.accept(Duration::from_secs(5)).unwrap();
    let mem = Arc::new(MemoryFile::open(&fx.mem_path).unwrap());
    let h = Handler::new(hs, mem, Policy::default()).unwrap();
    let other = WorkingSet::from_runs(PAGE, 2 * MIB, []);
    assert!(matches!(
        h.with_prefetch(&other),
        Err(Error::WorkingSet { .. })
    ));
}

// ---------------------------------------------------------------------------------------
// Firecracker's side in another process.

const ROLE_ENV: &str = "BAZEL_DIFF_UFFD_TEST_ROLE";
const SOCKET_ENV: &str = "BAZEL_DIFF_UFFD_TEST_SOCKET";
const SIZE_ENV: &str = "BAZEL_DIFF_UFFD_TEST_SIZE";

/// Does nothing in a normal test run. In a child process, plays Firecracker: registers
/// guest memory, hands it over, and then:
/// * `touch-all`: reads every page, compares it with the expected pattern, prints
///   `CHECKED <pages> <mismatches>` and exits (without telling the handler anything);
/// * `wrong-mappings`: sends mappings shifted off the registered memory, prints `SENT`,
///   then touches a page, which the handler cannot serve; it should kill us.
#[test]
fn child_entry_point() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let sock = std::env::var(SOCKET_ENV).unwrap();
    let size: u64 = std::env::var(SIZE_ENV).unwrap().parse().unwrap();
    let vm = SimulatedVm::new(&[size / 2, size / 2]).unwrap();
    match role.as_str() {
        "touch-all" => {
            let _stream = vm.connect(std::path::Path::new(&sock)).unwrap();
            let mut want = vec![0u8; PAGE as usize];
            let mut got = vec![0u8; PAGE as usize];
            let mut bad = 0;
            for page in 0..size / PAGE {
                vm.read(page * PAGE, &mut got);
                page_bytes(page, &mut want);
                bad += u64::from(got != want);
            }
            println!("CHECKED {} {bad}", size / PAGE);
        }
        "wrong-mappings" => {
            let mut m = vm.mappings();
            for r in &mut m {
                r.base_host_virt_addr += 1 << 30;
            }
            let _stream = send_handshake(std::path::Path::new(&sock), &m, vm.uffd_fd()).unwrap();
            println!("SENT");
            vm.read_byte(0);
            println!("UNREACHABLE");
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

fn spawn_child(role: &str, sock: &std::path::Path, size: u64) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_entry_point",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE_ENV, role)
        .env(SOCKET_ENV, sock)
        .env(SIZE_ENV, size.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn vm_in_another_process_is_served_until_it_exits() {
    let _watchdog = Watchdog::arm(Duration::from_secs(120));
    let fx = Fixture::new(16 * MIB);
    let sock = fx.socket("child");
    let listener = UffdListener::bind(&sock).unwrap();
    let mut child = spawn_child("touch-all", &sock, fx.len());
    let hs = listener.accept(Duration::from_secs(30)).unwrap();
    assert_eq!(hs.peer.map(|p| p.pid as u32), Some(child.id()));
    let mem = Arc::new(MemoryFile::open(&fx.mem_path).unwrap());
    let out = Handler::new(hs, mem, policy(128 << 10))
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(
        out.reason,
        ExitReason::PeerExited,
        "the handler notices Firecracker exiting"
    );
    assert_eq!(out.stats.demand_pages, fx.pages);

    let stdout = BufReader::new(child.stdout.take().unwrap());
    // The harness may print "test child_entry_point ... " on the same line.
    let line = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.find("CHECKED").map(|i| l[i..].to_string()))
        .unwrap();
    assert_eq!(
        line,
        format!("CHECKED {} 0", fx.pages),
        "the child saw the file's bytes"
    );
    assert!(child.wait().unwrap().success());
}

#[test]
fn handler_failure_kills_firecracker_instead_of_leaving_it_hung() {
    let _watchdog = Watchdog::arm(Duration::from_secs(120));
    let fx = Fixture::new(4 * MIB);
    let sock = fx.socket("bad");
    let listener = UffdListener::bind(&sock).unwrap();
    let mut child = spawn_child("wrong-mappings", &sock, fx.len());
    let hs = listener.accept(Duration::from_secs(30)).unwrap();
    let mem = Arc::new(MemoryFile::open(&fx.mem_path).unwrap());
    let err = Handler::new(hs, mem, Policy::default())
        .unwrap()
        .run()
        .unwrap_err();
    assert!(matches!(err, Error::FaultOutsideRegions { .. }), "{err}");
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
}

#[test]
fn send_handshake_is_what_the_listener_parses() {
    // The Firecracker-side sender used by the simulation, against a raw descriptor.
    let fx = Fixture::new(MIB);
    let sock = fx.socket("raw");
    let listener = UffdListener::bind(&sock).unwrap();
    let vm = SimulatedVm::new(&[MIB]).unwrap();
    let uffd = bazel_diff_uffd::Uffd::create().unwrap();
    let _s = send_handshake(&sock, &vm.mappings(), uffd.as_fd()).unwrap();
    let hs = listener.accept(Duration::from_secs(5)).unwrap();
    assert_eq!(hs.mappings, vm.mappings());
}
