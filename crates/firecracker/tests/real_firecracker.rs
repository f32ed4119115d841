//! This crate's client and process control, and `bazel-diff-uffd`'s page server, against a
//! real Firecracker binary. It needs no guest userspace: the VM runs a bare kernel for a
//! moment and is then only paused, snapshotted and restored.
//!
//! The test is gated. It runs only when `BAZEL_DIFF_FC_BIN` (a firecracker binary) and
//! `BAZEL_DIFF_FC_KERNEL` (an uncompressed ELF vmlinux) are set and /dev/kvm opens
//! read-write. Otherwise it prints why it did not run and passes. `BAZEL_DIFF_FC_BOOT_ARGS`
//! replaces the kernel command line.
//!
//! The flow:
//! 1. Boot: configure (1 vCPU, 128 MiB, a sparse scratch drive, vsock, entropy), start,
//!    pause, take a Full snapshot.
//! 2. Restore it with the File backend and resume.
//! 3. Restore it with the Uffd backend, served by [`bazel_diff_uffd::Handler`], and resume.
//! 4. Restore with dirty-page tracking and take a Diff snapshot. The field is
//!    `enable_diff_snapshots` before Firecracker 1.13 and `track_dirty_pages` from 1.13 on.
//! 5. Restore the Diff with the Uffd backend, serving the chain
//!    ([`MemoryFile::layered`] of the Full and the Diff memory) and prefetching the working
//!    set step 3 recorded.
//!
//! Every Firecracker runs in its own run directory (API socket, logs) under one temp dir.
//! Run it with `-- --nocapture` to see the timings.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bazel_diff_firecracker::process::tail;
use bazel_diff_firecracker::*;
use bazel_diff_uffd::{
    GuestRegionUffdMapping, Handler, MemoryFile, Monitor, Outcome, PageSource, Policy, Stats,
    StopHandle, UffdListener, WorkingSet,
};

const MEM_MIB: u64 = 128;
/// `panic=0`: with no root filesystem, a kernel on hardware KVM panics at mount-root within
/// a second or two; it must then sit in the panic loop, not reboot (which would end
/// Firecracker in the middle of the test).
const BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=0 pci=off earlyprintk=ttyS0";
/// How long the guest runs before the pause.
const BOOT_RUN: Duration = Duration::from_millis(1500);
/// How long a restored guest runs before the next step.
const RESTORED_RUN: Duration = Duration::from_millis(500);

struct Setup {
    firecracker: PathBuf,
    kernel: PathBuf,
    boot_args: String,
}

fn setup() -> Option<Setup> {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let kvm_ok = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let missing: Vec<&str> = [
        ("/dev/kvm (read-write)", kvm_ok),
        ("BAZEL_DIFF_FC_BIN", env("BAZEL_DIFF_FC_BIN").is_some()),
        (
            "BAZEL_DIFF_FC_KERNEL",
            env("BAZEL_DIFF_FC_KERNEL").is_some(),
        ),
    ]
    .into_iter()
    .filter_map(|(what, ok)| (!ok).then_some(what))
    .collect();
    if !missing.is_empty() {
        eprintln!(
            "note: the real-Firecracker API test did NOT run: missing {}",
            missing.join(", ")
        );
        return None;
    }
    let firecracker = PathBuf::from(env("BAZEL_DIFF_FC_BIN").unwrap());
    let kernel = PathBuf::from(env("BAZEL_DIFF_FC_KERNEL").unwrap());
    assert!(
        firecracker.is_file(),
        "BAZEL_DIFF_FC_BIN={} is not a file",
        firecracker.display()
    );
    let magic = fs::read(&kernel)
        .map(|b| b.get(..4) == Some(b"\x7fELF"))
        .unwrap_or_else(|e| panic!("reading BAZEL_DIFF_FC_KERNEL={}: {e}", kernel.display()));
    assert!(
        magic,
        "BAZEL_DIFF_FC_KERNEL={} is not an ELF vmlinux (Firecracker on x86_64 loads an \
         uncompressed ELF kernel, not a bzImage)",
        kernel.display()
    );
    if Path::new("/sys/module/kvm_pvm").exists() {
        eprintln!(
            "note: /dev/kvm is PVM (kvm_pvm): the API flow runs, but a non-PVM guest crawls and \
             later dies with KVM_EXIT_INTERNAL_ERROR"
        );
    }
    let boot_args = std::env::var("BAZEL_DIFF_FC_BOOT_ARGS")
        .ok()
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| BOOT_ARGS.to_owned());
    Some(Setup {
        firecracker,
        kernel,
        boot_args,
    })
}

/// One Firecracker process and its client.
struct Vm {
    process: VmProcess,
    api: Client,
}

impl Vm {
    fn spawn(setup: &Setup, root: &Path, name: &str) -> Vm {
        let run = RunDir::create_in(root, name).unwrap();
        let mut config = VmConfig::new(&setup.firecracker);
        config.id = Some(name.to_owned());
        let process = VmProcess::spawn(&config, run)
            .unwrap_or_else(|e| panic!("spawning firecracker for {name}: {e}"));
        let api = process.client();
        api.set_memory_size_mib(MEM_MIB);
        let vm = Vm { process, api };
        let logger = vm.process.run_dir().logger(LogLevel::Info).unwrap();
        vm.ok("PUT /logger", vm.api.put_logger(&logger));
        let metrics = vm.process.run_dir().metrics().unwrap();
        vm.ok("PUT /metrics", vm.api.put_metrics(&metrics));
        vm
    }

    fn ok<T>(&self, what: &str, result: Result<T, ApiError>) -> T {
        result.unwrap_or_else(|e| panic!("{what} failed: {e}\n{}", self.diagnostics()))
    }

    fn diagnostics(&self) -> String {
        format!(
            "--- firecracker log ---\n{}\n--- stderr ---\n{}\n--- serial ---\n{}",
            tail(&self.process.run_dir().join(RunDir::LOG), 15),
            self.process.stderr_tail(),
            self.process.stdout_tail()
        )
    }

    /// Fails the test if Firecracker has exited, or is not in `state`.
    fn expect_state(&self, state: InstanceState) {
        if let Some(status) = self.process.try_wait().unwrap() {
            panic!(
                "firecracker exited ({status}), expected it {state:?}\n{}",
                self.diagnostics()
            );
        }
        let info = self.ok("GET /", self.api.describe_instance());
        assert_eq!(info.state, state, "{}", self.diagnostics());
    }

    fn load(&self, params: &SnapshotLoadParams) -> Duration {
        let started = Instant::now();
        self.ok("PUT /snapshot/load", self.api.load_snapshot(params));
        started.elapsed()
    }

    fn snapshot(&self, kind: SnapshotType, mem: &Path, vmstate: &Path) -> Duration {
        let started = Instant::now();
        let params = SnapshotCreateParams {
            mem_file_path: mem.display().to_string(),
            snapshot_path: vmstate.display().to_string(),
            snapshot_type: Some(kind),
        };
        self.ok("PUT /snapshot/create", self.api.create_snapshot(&params));
        started.elapsed()
    }

    /// The kernel's console lines so far (`[    0.000000] ...`; Firecracker's own log lines
    /// before `PUT /logger` share its stdout).
    fn console(&self) -> (usize, String) {
        let out = fs::read(self.process.run_dir().stdout_path()).unwrap_or_default();
        let out = String::from_utf8_lossy(&out);
        let lines: Vec<&str> = out.lines().filter(|l| l.starts_with('[')).collect();
        (lines.len(), lines.last().copied().unwrap_or("").to_owned())
    }
}

fn load_params(vmstate: &Path, backend: BackendType, path: &Path) -> SnapshotLoadParams {
    let mut params = SnapshotLoadParams::new(
        vmstate.display().to_string(),
        backend,
        path.display().to_string(),
    );
    params.resume_vm = Some(true);
    params
}

/// `track_dirty_pages` replaced `enable_diff_snapshots` on `PUT /snapshot/load` in 1.13;
/// older Firecrackers reject the new name with a 400.
fn takes_track_dirty_pages(version: &str) -> bool {
    let mut parts = version.trim().trim_start_matches('v').split('.');
    let mut next = || parts.next().and_then(|p| p.parse::<u32>().ok());
    match (next(), next()) {
        (Some(major), Some(minor)) => (major, minor) >= (1, 13),
        _ => true,
    }
}

/// The project's page server for one Uffd restore, on its own thread.
struct Served {
    mappings: Vec<GuestRegionUffdMapping>,
    monitor: Monitor,
    stop: StopHandle,
    thread: JoinHandle<bazel_diff_uffd::Result<Outcome>>,
}

/// Listens on `socket` and, once Firecracker connects, serves `mem` (prefetching
/// `prefetch`). Returns at once; [`Served`] arrives on the receiver after the handshake.
fn serve(
    socket: &Path,
    mem: Arc<dyn PageSource>,
    prefetch: Option<WorkingSet>,
) -> mpsc::Receiver<bazel_diff_uffd::Result<Served>> {
    let listener = UffdListener::bind(socket).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let setup = || -> bazel_diff_uffd::Result<(Handler, Vec<GuestRegionUffdMapping>)> {
            let handshake = listener.accept(Duration::from_secs(30))?;
            let mappings = handshake.mappings.clone();
            let mut handler = Handler::new(handshake, mem, Policy::default())?;
            if let Some(ws) = &prefetch {
                handler = handler.with_prefetch(ws)?;
            }
            Ok((handler, mappings))
        };
        let served = setup().map(|(handler, mappings)| {
            let (monitor, stop) = (handler.monitor(), handler.stop_handle());
            let thread = std::thread::spawn(move || handler.run());
            Served {
                mappings,
                monitor,
                stop,
                thread,
            }
        });
        let _ = tx.send(served);
    });
    rx
}

/// Waits until the handler has served a fault (and finished prefetching, if it prefetches).
fn wait_for_faults(vm: &Vm, served: &Served, prefetching: bool) -> Stats {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stats = served.monitor.stats();
        let prefetch_done = !prefetching || stats.prefetch_done_us.is_some();
        if stats.fault_events > 0 && prefetch_done {
            return stats;
        }
        if Instant::now() >= deadline {
            panic!(
                "the uffd handler served no fault (or did not finish prefetching) within 20 s \
                 of the resume: {stats:?}\n{}",
                vm.diagnostics()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills the VM, then collects the handler's outcome (it should see Firecracker exit).
fn finish(vm: Vm, served: Served) -> Outcome {
    drop(vm);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !served.thread.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !served.thread.is_finished() {
        eprintln!("note: the uffd handler did not notice Firecracker exit within 5 s; stopping it");
        served.stop.stop();
    }
    served.thread.join().unwrap().unwrap()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn us(v: Option<u64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{:.1} ms", v as f64 / 1e3))
}

#[test]
fn real_firecracker_boot_snapshot_and_restore_file_and_uffd() {
    let Some(setup) = setup() else { return };
    let tmp = tempfile::Builder::new().prefix("bd-fc").tempdir().unwrap();
    let root = tmp.path();
    let snap = root.join("snap");
    fs::create_dir(&snap).unwrap();
    let ram = MEM_MIB << 20;
    let mut timings: Vec<(&str, String)> = Vec::new();

    // 1. Boot, pause, Full snapshot.
    let scratch = root.join("scratch.raw");
    fs::File::create(&scratch)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let vm = Vm::spawn(&setup, root, "boot");
    let version = vm.ok("GET /version", vm.api.version()).firecracker_version;
    eprintln!(
        "firecracker {version} ({}), kernel {}, boot args {:?}",
        setup.firecracker.display(),
        setup.kernel.display(),
        setup.boot_args
    );
    vm.ok(
        "PUT /machine-config",
        vm.api
            .put_machine_config(&MachineConfiguration::new(1, MEM_MIB)),
    );
    vm.ok(
        "PUT /boot-source",
        vm.api.put_boot_source(&BootSource {
            kernel_image_path: setup.kernel.display().to_string(),
            boot_args: Some(setup.boot_args.clone()),
            initrd_path: None,
        }),
    );
    vm.ok(
        "PUT /drives/scratch",
        vm.api.put_drive(&Drive::file(
            "scratch",
            scratch.display().to_string(),
            false,
            true,
        )),
    );
    vm.ok(
        "PUT /vsock",
        vm.api.put_vsock(&Vsock {
            guest_cid: 3,
            uds_path: "v.sock".to_owned(),
        }),
    );
    vm.ok(
        "PUT /entropy",
        vm.api.put_entropy(&EntropyDevice::default()),
    );
    let started = Instant::now();
    vm.ok("InstanceStart", vm.api.instance_start());
    timings.push(("InstanceStart", ms(started.elapsed())));
    std::thread::sleep(BOOT_RUN);
    vm.expect_state(InstanceState::Running);
    let (lines, last) = vm.console();
    eprintln!(
        "booted for {}: {lines} kernel console lines, last: {last:?}",
        ms(BOOT_RUN)
    );
    let started = Instant::now();
    vm.ok("PATCH /vm Paused", vm.api.pause());
    timings.push(("pause", ms(started.elapsed())));
    vm.expect_state(InstanceState::Paused);
    let (full_mem, full_state) = (snap.join("full.mem"), snap.join("full.vmstate"));
    let took = vm.snapshot(SnapshotType::Full, &full_mem, &full_state);
    timings.push(("snapshot/create Full", ms(took)));
    let (mem_len, state_len) = (
        fs::metadata(&full_mem).unwrap().len(),
        fs::metadata(&full_state).unwrap().len(),
    );
    eprintln!("Full snapshot: mem {mem_len} B, vmstate {state_len} B");
    assert_eq!(mem_len, ram, "the Full memory file is not the guest's RAM");
    assert!(state_len > 0, "empty vmstate");
    drop(vm);

    // 2. Restore, File backend.
    let vm = Vm::spawn(&setup, root, "restore-file");
    let took = vm.load(&load_params(&full_state, BackendType::File, &full_mem));
    timings.push(("load+resume, File", ms(took)));
    vm.expect_state(InstanceState::Running);
    std::thread::sleep(RESTORED_RUN);
    vm.expect_state(InstanceState::Running);
    drop(vm);

    // 3. Restore, Uffd backend served by the project's handler.
    let vm = Vm::spawn(&setup, root, "restore-uffd");
    let socket = vm.process.run_dir().join("uffd.sock");
    let mem: Arc<dyn PageSource> = Arc::new(MemoryFile::open(&full_mem).unwrap());
    let handshake = serve(&socket, mem, None);
    let took = vm.load(&load_params(&full_state, BackendType::Uffd, &socket));
    timings.push(("load+resume, Uffd", ms(took)));
    let served = handshake
        .recv_timeout(Duration::from_secs(30))
        .unwrap()
        .unwrap();
    eprintln!(
        "uffd handshake: Firecracker's regions {:?}",
        served.mappings
    );
    let mapped: u64 = served.mappings.iter().map(|m| m.size).sum();
    assert_eq!(mapped, ram, "the uffd regions do not cover the guest's RAM");
    assert_eq!(
        served.mappings.first().map(|m| m.offset),
        Some(0),
        "the first region does not start at offset 0 of the memory file"
    );
    let stats = wait_for_faults(&vm, &served, false);
    timings.push((
        "first fault, Uffd (from handler start)",
        us(stats.first_fault_us),
    ));
    vm.expect_state(InstanceState::Running);
    std::thread::sleep(RESTORED_RUN);
    vm.expect_state(InstanceState::Running);
    let outcome = finish(vm, served);
    eprintln!("uffd outcome: {:?} {:?}", outcome.reason, outcome.stats);
    assert!(outcome.stats.fault_events > 0);
    let working_set = outcome.working_set.unwrap();

    // 4. Restore with dirty-page tracking, Diff snapshot.
    let vm = Vm::spawn(&setup, root, "restore-dirty");
    let mut params = load_params(&full_state, BackendType::File, &full_mem);
    if takes_track_dirty_pages(&version) {
        params.track_dirty_pages = Some(true);
    } else {
        params.enable_diff_snapshots = Some(true);
    }
    let took = vm.load(&params);
    timings.push(("load+resume, File, dirty tracking", ms(took)));
    std::thread::sleep(RESTORED_RUN);
    vm.expect_state(InstanceState::Running);
    vm.ok("PATCH /vm Paused", vm.api.pause());
    let (diff_mem, diff_state) = (snap.join("diff.mem"), snap.join("diff.vmstate"));
    let took = vm.snapshot(SnapshotType::Diff, &diff_mem, &diff_state);
    timings.push(("snapshot/create Diff", ms(took)));
    let diff_meta = fs::metadata(&diff_mem).unwrap();
    eprintln!(
        "Diff snapshot: mem {} B apparent, {} B allocated; vmstate {} B",
        diff_meta.len(),
        diff_meta.blocks() * 512,
        fs::metadata(&diff_state).unwrap().len()
    );
    assert_eq!(
        diff_meta.len(),
        ram,
        "the Diff memory file is not RAM-sized"
    );
    drop(vm);

    // 5. Restore the Diff over the Full, Uffd backend, prefetching step 3's working set.
    let vm = Vm::spawn(&setup, root, "restore-chain");
    let socket = vm.process.run_dir().join("uffd.sock");
    let chain: Arc<dyn PageSource> =
        Arc::new(MemoryFile::layered(&full_mem, &[&diff_mem]).unwrap());
    let handshake = serve(&socket, chain, Some(working_set));
    let took = vm.load(&load_params(&diff_state, BackendType::Uffd, &socket));
    timings.push(("load+resume, Uffd, Full+Diff chain, prefetch", ms(took)));
    let served = handshake
        .recv_timeout(Duration::from_secs(30))
        .unwrap()
        .unwrap();
    let stats = wait_for_faults(&vm, &served, true);
    timings.push((
        "first fault, chain (from handler start)",
        us(stats.first_fault_us),
    ));
    timings.push((
        "prefetch done, chain (from handler start)",
        us(stats.prefetch_done_us),
    ));
    std::thread::sleep(RESTORED_RUN);
    vm.expect_state(InstanceState::Running);
    let outcome = finish(vm, served);
    eprintln!(
        "uffd chain outcome: {:?} {:?}",
        outcome.reason, outcome.stats
    );

    eprintln!("timings (Firecracker {version}, {MEM_MIB} MiB, 1 vCPU):");
    for (what, value) in &timings {
        eprintln!("  {what:<48} {value}");
    }
}
