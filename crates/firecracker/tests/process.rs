//! The VM process wrapper end to end with the `fake-firecracker` binary: it starts the
//! process, finds its socket, captures its output, kills its whole group, runs VMs side by
//! side, and goes through the jailer's argument and directory conventions.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bazel_diff_firecracker::process::KillReason;
use bazel_diff_firecracker::*;

const FAKE: &str = env!("CARGO_BIN_EXE_fake-firecracker");

fn config() -> VmConfig {
    let mut config = VmConfig::new(FAKE);
    config.socket_wait = Duration::from_secs(10);
    config.timeouts = TimeoutPolicy::uniform(Duration::from_secs(10));
    config
}

fn run_dir(parent: &Path, name: &str) -> RunDir {
    RunDir::create_in(parent, name).unwrap()
}

/// Whether any process is left in the group (zombies count as gone).
fn group_alive(pgid: u32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    let rc = unsafe { libc::kill(-(pgid as libc::pid_t), 0) };
    if rc != 0 {
        return false;
    }
    // Members may be zombies waiting for init: look for a live one.
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .any(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // Fields after the parenthesised command: state, ppid, pgrp.
            let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string()
        })
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn spawns_finds_the_socket_captures_output_and_kills() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = config();
    config.id = Some("record-1".into());
    let vm = VmProcess::spawn(&config, run_dir(tmp.path(), "vm")).unwrap();
    let dir = vm.run_dir().path().to_path_buf();
    assert!(dir.starts_with(tmp.path()));
    assert_eq!(vm.api_socket(), dir.join("api.sock"));
    let client = vm.client();
    assert_eq!(client.describe_instance().unwrap().id, "record-1");
    assert_eq!(client.version().unwrap().firecracker_version, "1.17.0-dev");
    assert!(
        vm.stdout_tail().contains("serial console"),
        "{}",
        vm.stdout_tail()
    );
    wait_until("the call log on stderr", || {
        vm.stderr_tail().contains("GET /version -> 200")
    });
    assert!(vm.try_wait().unwrap().is_none());
    let pid = vm.pid();
    assert!(group_alive(pid));
    let status = vm.kill().unwrap();
    assert!(!status.success());
    assert_eq!(vm.kill_reason(), Some(KillReason::Requested));
    assert!(!group_alive(pid));
    drop(vm);
    assert!(!dir.exists(), "the run directory is removed with the VM");
}

#[test]
fn drop_kills_the_group_and_keep_preserves_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let vm = VmProcess::spawn(&config(), run_dir(tmp.path(), "vm")).unwrap();
    let pid = vm.pid();
    drop(vm);
    assert!(!group_alive(pid));

    let vm = VmProcess::spawn(&config(), run_dir(tmp.path(), "kept")).unwrap();
    let pid = vm.pid();
    let kept = vm.into_run_dir().keep();
    assert!(!group_alive(pid));
    assert!(kept.join(RunDir::STDOUT).is_file());
    assert!(std::fs::read_to_string(kept.join(RunDir::STDOUT))
        .unwrap()
        .contains("serial console"));
}

#[test]
fn two_vms_at_once_with_separate_sockets() {
    let tmp = tempfile::tempdir().unwrap();
    let mut a_config = config();
    a_config.id = Some("vm-a".into());
    let mut b_config = config();
    b_config.id = Some("vm-b".into());
    let a = VmProcess::spawn(&a_config, run_dir(tmp.path(), "vm")).unwrap();
    let b = VmProcess::spawn(&b_config, run_dir(tmp.path(), "vm")).unwrap();
    assert_ne!(a.api_socket(), b.api_socket());
    assert_ne!(a.run_dir().path(), b.run_dir().path());
    let (ca, cb) = (a.client(), b.client());
    for (client, dir) in [(&ca, a.run_dir()), (&cb, b.run_dir())] {
        std::fs::write(dir.join("vmlinux"), "k").unwrap();
        std::fs::write(dir.join("rootfs.ext4"), "r").unwrap();
        client
            .put_boot_source(&BootSource {
                kernel_image_path: "vmlinux".into(),
                ..BootSource::default()
            })
            .unwrap();
    }
    ca.instance_start().unwrap();
    assert_eq!(
        ca.describe_instance().unwrap().state,
        InstanceState::Running
    );
    assert_eq!(
        cb.describe_instance().unwrap().state,
        InstanceState::NotStarted
    );
    assert_eq!(ca.describe_instance().unwrap().id, "vm-a");
    assert_eq!(cb.describe_instance().unwrap().id, "vm-b");
    drop(a);
    // B is untouched by A's teardown.
    assert_eq!(
        cb.describe_instance().unwrap().state,
        InstanceState::NotStarted
    );
    assert!(b.api_socket().exists());
}

/// The orchestrator's record then consume, over real processes: relative disk paths resolve in
/// each VM's run directory, snapshot files land in a staging directory.
#[test]
fn record_then_consume_over_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let staging = tmp.path().join("staging");
    std::fs::create_dir(&staging).unwrap();

    let rec = VmProcess::spawn(&config(), run_dir(tmp.path(), "rec")).unwrap();
    std::fs::write(rec.run_dir().join("vmlinux"), "k").unwrap();
    std::fs::write(rec.run_dir().join("rootfs.ext4"), "disk").unwrap();
    let c = rec.client();
    c.put_logger(&rec.run_dir().logger(LogLevel::Info).unwrap())
        .unwrap();
    c.put_metrics(&rec.run_dir().metrics().unwrap()).unwrap();
    c.put_machine_config(&MachineConfiguration {
        track_dirty_pages: Some(true),
        ..MachineConfiguration::new(2, 2048)
    })
    .unwrap();
    c.put_boot_source(&BootSource {
        kernel_image_path: "vmlinux".into(),
        boot_args: Some("console=ttyS0 reboot=k panic=1 pci=off".into()),
        initrd_path: None,
    })
    .unwrap();
    c.put_drive(&Drive::file("rootfs", "rootfs.ext4", true, false))
        .unwrap();
    c.put_vsock(&Vsock {
        guest_cid: 3,
        uds_path: "v.sock".into(),
    })
    .unwrap();
    c.put_entropy(&EntropyDevice::default()).unwrap();
    c.instance_start().unwrap();
    c.pause().unwrap();
    let vmstate = staging.join("vmstate");
    let mem = staging.join("mem");
    c.create_snapshot(&SnapshotCreateParams {
        mem_file_path: mem.to_string_lossy().into_owned(),
        snapshot_path: vmstate.to_string_lossy().into_owned(),
        snapshot_type: Some(SnapshotType::Full),
    })
    .unwrap();
    assert_eq!(c.call_count(), 10);
    assert!(rec
        .run_dir()
        .join(RunDir::LOG)
        .metadata()
        .is_ok_and(|m| m.len() > 0));
    drop(rec);
    assert!(vmstate.is_file() && mem.is_file());

    // Consume: a fresh process whose run directory holds its own disk copy.
    let con = VmProcess::spawn(&config(), run_dir(tmp.path(), "con")).unwrap();
    std::fs::write(con.run_dir().join("rootfs.ext4"), "disk").unwrap();
    let c = con.client();
    c.set_memory_size_mib(2048);
    let mut load = SnapshotLoadParams::new(
        vmstate.to_string_lossy().into_owned(),
        BackendType::File,
        mem.to_string_lossy().into_owned(),
    );
    load.resume_vm = Some(true);
    c.load_snapshot(&load).unwrap();
    assert_eq!(c.call_count(), 1);
    assert_eq!(c.describe_instance().unwrap().state, InstanceState::Running);
    assert!(
        con.run_dir().join("v.sock").exists(),
        "vsock rebound in the new run dir"
    );

    // A consume whose run directory lacks the disk: the load fails and the process exits.
    let bad = VmProcess::spawn(&config(), run_dir(tmp.path(), "bad")).unwrap();
    let err = bad.client().load_snapshot(&load).unwrap_err();
    assert!(err
        .fault_message()
        .unwrap_or_default()
        .contains("Cannot restore block device rootfs"));
    let status = bad.wait_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(1));
    assert_eq!(bad.kill_reason(), None);
}

#[test]
fn ctrl_alt_del_ends_the_process_gracefully() {
    let tmp = tempfile::tempdir().unwrap();
    let vm = VmProcess::spawn(&config(), run_dir(tmp.path(), "vm")).unwrap();
    std::fs::write(vm.run_dir().join("vmlinux"), "k").unwrap();
    let c = vm.client();
    c.put_boot_source(&BootSource {
        kernel_image_path: "vmlinux".into(),
        ..BootSource::default()
    })
    .unwrap();
    c.instance_start().unwrap();
    c.send_ctrl_alt_del().unwrap();
    let status = vm.wait_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(status.and_then(|s| s.code()), Some(0));
}

#[test]
fn socket_wait_is_bounded_and_kills() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = config();
    config.extra_args = vec!["--fake-no-api".into()];
    config.socket_wait = Duration::from_millis(300);
    let started = Instant::now();
    let err = VmProcess::spawn(&config, run_dir(tmp.path(), "vm")).unwrap_err();
    assert!(matches!(err, ProcessError::SocketTimeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The run directory went with the failed VM; nothing of it is left running.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn early_exit_reports_status_and_stderr() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = config();
    config.extra_args = vec!["--fake-exit".into(), "3".into()];
    let err = VmProcess::spawn(&config, run_dir(tmp.path(), "vm")).unwrap_err();
    match &err {
        ProcessError::EarlyExit {
            status,
            stderr_tail,
            ..
        } => {
            assert!(status.contains('3'), "{status}");
            assert!(stderr_tail.contains("exiting at once"), "{stderr_tail}");
        }
        other => panic!("expected EarlyExit, got {other}"),
    }
    let missing = VmConfig::new(tmp.path().join("no-such-firecracker"));
    let err = VmProcess::spawn(&missing, run_dir(tmp.path(), "vm")).unwrap_err();
    assert!(matches!(err, ProcessError::Spawn { .. }), "{err}");
}

#[test]
fn never_touches_an_existing_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("callers-dir");
    std::fs::create_dir(&dir).unwrap();
    let foreign = dir.join(RunDir::API_SOCKET);
    std::fs::write(&foreign, "someone else's").unwrap();
    let err = VmProcess::spawn(&config(), RunDir::existing(&dir)).unwrap_err();
    assert!(matches!(err, ProcessError::SocketExists(_)), "{err}");
    assert_eq!(std::fs::read_to_string(&foreign).unwrap(), "someone else's");
    assert!(!dir.join(RunDir::STDOUT).exists(), "nothing was started");
}

#[test]
fn lifetime_watchdog_kills_the_group() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = config();
    config.lifetime = Some(Duration::from_millis(300));
    let vm = VmProcess::spawn(&config, run_dir(tmp.path(), "vm")).unwrap();
    let pid = vm.pid();
    let status = vm.wait_timeout(Duration::from_secs(10)).unwrap();
    assert!(status.is_some_and(|s| !s.success()));
    assert_eq!(vm.kill_reason(), Some(KillReason::Lifetime));
    assert!(!group_alive(pid));
    assert!(vm.client().version().is_err());
}

#[test]
fn terminate_escalates_to_sigkill() {
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let vm = VmProcess::spawn(&config(), run_dir(tmp.path(), "vm")).unwrap();
    let status = vm.terminate(Duration::from_secs(5)).unwrap();
    assert_eq!(status.signal(), Some(libc::SIGTERM));
    assert_eq!(vm.kill_reason(), None);

    let mut stubborn = config();
    stubborn.extra_args = vec!["--fake-ignore-sigterm".into()];
    let vm = VmProcess::spawn(&stubborn, run_dir(tmp.path(), "vm")).unwrap();
    let started = Instant::now();
    let status = vm.terminate(Duration::from_millis(200)).unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(vm.kill_reason(), Some(KillReason::Requested));
}

#[test]
fn jailer_mode_uses_the_jail_and_cleans_it() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("jail");
    let mut config = config();
    config.id = Some("jailed-1".into());
    // The fake binary plays both parts: the jailer and (by name) the Firecracker it execs.
    let mut jailer = JailerConfig::new(FAKE, 0, 0);
    jailer.chroot_base_dir = base.clone();
    config.jailer = Some(jailer.clone());
    let vm = VmProcess::spawn(&config, run_dir(tmp.path(), "vm")).unwrap();
    let root: PathBuf = jailer.jail_root(Path::new(FAKE), "jailed-1");
    assert_eq!(vm.jail_root(), Some(root.as_path()));
    assert_eq!(vm.api_socket(), root.join("run/firecracker.socket"));
    let c = vm.client();
    assert_eq!(c.describe_instance().unwrap().id, "jailed-1");
    // Jail-relative absolute paths resolve inside the jail.
    std::fs::write(root.join("vmlinux"), "k").unwrap();
    c.put_boot_source(&BootSource {
        kernel_image_path: "/vmlinux".into(),
        ..BootSource::default()
    })
    .unwrap();
    c.instance_start().unwrap();
    // A second VM with the same id is refused, not merged into the live jail.
    let err = VmProcess::spawn(&config, run_dir(tmp.path(), "vm")).unwrap_err();
    assert!(matches!(err, ProcessError::JailExists(_)), "{err}");
    assert!(root.exists(), "the refused spawn left the live jail alone");
    drop(vm);
    assert!(!jailer.jail_dir(Path::new(FAKE), "jailed-1").exists());
}
