//! Every client call against the in-process fake Firecracker, which validates each request
//! against firecracker-api.yaml: valid calls pass, invalid bodies come back as 400 with the
//! swagger's reason, state-machine violations surface as typed errors with Firecracker's
//! fault_message, and deadlines fire.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bazel_diff_firecracker::fake::{FakeConfig, FakeFirecracker, Stall};
use bazel_diff_firecracker::*;
use serde_json::{json, Value};

/// A fake VM in a temporary directory that holds a kernel, a root disk and a bundle disk.
struct Fixture {
    // Dropped in this order: the fake stops before its directory goes.
    fake: FakeFirecracker,
    client: Client,
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with(
            FakeConfig::default(),
            TimeoutPolicy::uniform(Duration::from_secs(10)),
        )
    }

    fn with(mut config: FakeConfig, timeouts: TimeoutPolicy) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        for file in ["vmlinux", "rootfs.ext4", "bundle.img"] {
            std::fs::write(dir.path().join(file), file).unwrap();
        }
        config.root = Some(dir.path().to_path_buf());
        let socket = dir.path().join("api.sock");
        let fake = FakeFirecracker::start(&socket, config)
            .unwrap_or_else(|e| panic!("starting the fake Firecracker: {e}"));
        let client = Client::new(&socket).with_timeouts(timeouts);
        Fixture { dir, fake, client }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }

    /// The minimal pre-boot configuration and InstanceStart.
    fn boot(&self) {
        self.client
            .put_machine_config(&MachineConfiguration::new(2, 256))
            .unwrap();
        self.client
            .put_boot_source(&BootSource {
                kernel_image_path: "vmlinux".into(),
                boot_args: Some("console=ttyS0 reboot=k panic=1 pci=off".into()),
                initrd_path: None,
            })
            .unwrap();
        self.client
            .put_drive(&Drive::file("rootfs", "rootfs.ext4", true, false))
            .unwrap();
        self.client.instance_start().unwrap();
    }

    fn raw(&self, method: Method, path: &str, body: Value) -> ApiError {
        self.client
            .request(method, path, Some(&body), Duration::from_secs(5))
            .expect_err("the fake should refuse this request")
    }
}

fn full_bucket() -> TokenBucket {
    TokenBucket {
        size: 1 << 20,
        refill_time: 100,
        one_time_burst: Some(1 << 21),
    }
}

fn full_limiter() -> RateLimiter {
    RateLimiter {
        bandwidth: Some(full_bucket()),
        ops: Some(TokenBucket {
            size: 1000,
            refill_time: 1000,
            one_time_burst: None,
        }),
    }
}

fn assert_fault(err: &ApiError, status: u16, needle: &str) {
    assert_eq!(err.status(), Some(status), "{err}");
    let fault = err.fault_message().unwrap_or_default();
    assert!(
        fault.contains(needle),
        "fault_message {fault:?} lacks {needle:?}"
    );
    assert!(err.to_string().contains(&format!("HTTP {status}")), "{err}");
    assert!(err.to_string().contains(needle), "{err}");
}

#[test]
fn record_sequence_every_call_valid() {
    let f = Fixture::new();
    let c = &f.client;
    std::fs::write(f.path("fc.log"), "").unwrap();
    std::fs::write(f.path("fc.metrics"), "").unwrap();

    assert_eq!(c.version().unwrap().firecracker_version, "1.17.0-dev");
    let info = c.describe_instance().unwrap();
    assert_eq!(info.state, InstanceState::NotStarted);
    assert_eq!(info.app_name, "Firecracker");
    let defaults = c.machine_config().unwrap();
    assert_eq!((defaults.vcpu_count, defaults.mem_size_mib), (1, 128));

    c.put_logger(&Logger {
        level: Some(LogLevel::Debug),
        log_path: Some(f.p("fc.log")),
        show_level: Some(true),
        show_log_origin: Some(true),
        module: Some("api_server::request".into()),
    })
    .unwrap();
    c.put_metrics(&Metrics {
        metrics_path: f.p("fc.metrics"),
        emit_id: Some(true),
        properties: Some(BTreeMap::from([("run".to_owned(), "record".to_owned())])),
    })
    .unwrap();
    c.put_machine_config(&MachineConfiguration {
        vcpu_count: 4,
        mem_size_mib: 8192,
        smt: Some(false),
        track_dirty_pages: Some(true),
        cpu_template: Some(CpuTemplate::None),
        huge_pages: Some(HugePages::None),
    })
    .unwrap();
    assert_eq!(c.memory_size_mib(), Some(8192));
    c.put_boot_source(&BootSource {
        kernel_image_path: f.p("vmlinux"),
        boot_args: Some("console=ttyS0 reboot=k panic=1 pci=off".into()),
        initrd_path: None,
    })
    .unwrap();
    c.put_drive(&Drive {
        drive_id: "rootfs".into(),
        is_root_device: true,
        partuuid: None,
        cache_type: Some(CacheType::Writeback),
        is_read_only: Some(false),
        path_on_host: Some("rootfs.ext4".into()),
        rate_limiter: Some(full_limiter()),
        io_engine: Some(IoEngine::Sync),
        socket: None,
    })
    .unwrap();
    c.put_drive(&Drive::file("git_bundle", "bundle.img", false, true))
        .unwrap();
    c.put_network_interface(&NetworkInterface {
        iface_id: "eth0".into(),
        host_dev_name: "fc-tap0".into(),
        guest_mac: Some("06:00:AC:10:00:02".into()),
        mtu: Some(1500),
        rx_rate_limiter: Some(full_limiter()),
        tx_rate_limiter: None,
    })
    .unwrap();
    c.put_vsock(&Vsock {
        guest_cid: 3,
        uds_path: "v.sock".into(),
    })
    .unwrap();
    assert!(
        f.path("v.sock").exists(),
        "Firecracker binds the vsock UDS itself"
    );
    c.put_entropy(&EntropyDevice {
        rate_limiter: Some(full_limiter()),
    })
    .unwrap();
    c.put_balloon(&Balloon {
        amount_mib: 0,
        deflate_on_oom: true,
        stats_polling_interval_s: Some(1),
        free_page_hinting: Some(false),
        free_page_reporting: Some(true),
    })
    .unwrap();
    c.put_serial(&SerialDevice {
        serial_out_path: Some("serial.out".into()),
        rate_limiter: Some(full_bucket()),
    })
    .unwrap();
    c.instance_start().unwrap();
    assert_eq!(f.fake.state(), InstanceState::Running);
    assert_eq!(c.describe_instance().unwrap().state, InstanceState::Running);

    let config = c.vm_config().unwrap();
    assert_eq!(config.drives.len(), 2);
    assert_eq!(config.machine_config.as_ref().unwrap().mem_size_mib, 8192);
    assert_eq!(config.vsock.as_ref().unwrap().uds_path, "v.sock");
    assert_eq!(c.balloon().unwrap().amount_mib, 0);

    c.flush_metrics().unwrap();
    let metrics = std::fs::read_to_string(f.path("fc.metrics")).unwrap();
    assert_eq!(metrics.lines().count(), 2, "{metrics}");
    assert!(std::fs::read_to_string(f.path("fc.log"))
        .unwrap()
        .contains("logger configured"));

    // Post-boot updates.
    c.patch_drive(&PartialDrive {
        drive_id: "git_bundle".into(),
        path_on_host: Some(f.p("bundle.img")),
        rate_limiter: Some(full_limiter()),
    })
    .unwrap();
    c.patch_network_interface(&PartialNetworkInterface {
        iface_id: "eth0".into(),
        rx_rate_limiter: None,
        tx_rate_limiter: Some(full_limiter()),
    })
    .unwrap();
    c.patch_balloon(&BalloonUpdate { amount_mib: 64 }).unwrap();

    c.pause().unwrap();
    c.pause().unwrap(); // idempotent
    assert_eq!(f.fake.state(), InstanceState::Paused);
    std::fs::create_dir(f.path("staging")).unwrap();
    c.create_snapshot(&SnapshotCreateParams {
        mem_file_path: f.p("staging/mem"),
        snapshot_path: f.p("staging/vmstate"),
        snapshot_type: Some(SnapshotType::Full),
    })
    .unwrap();
    c.create_snapshot(&SnapshotCreateParams {
        mem_file_path: f.p("staging/mem.diff"),
        snapshot_path: f.p("staging/vmstate.diff"),
        snapshot_type: Some(SnapshotType::Diff),
    })
    .unwrap();
    c.create_snapshot(&SnapshotCreateParams {
        mem_file_path: "staging/mem.default".into(),
        snapshot_path: "staging/vmstate.default".into(),
        snapshot_type: None,
    })
    .unwrap();
    for file in ["mem", "vmstate", "mem.diff", "vmstate.diff", "mem.default"] {
        let len = std::fs::metadata(f.path("staging").join(file))
            .unwrap()
            .len();
        assert!(len > 0, "{file} is empty");
    }
    c.resume().unwrap();
    assert_eq!(f.fake.state(), InstanceState::Running);
    c.send_ctrl_alt_del().unwrap();
    assert_eq!(f.fake.wait_exit(Some(Duration::from_secs(5))), Some(0));

    // Every call reached the fake, passed the swagger validator and succeeded.
    let calls = f.fake.calls();
    assert_eq!(calls.len(), c.call_count());
    for call in &calls {
        assert!(
            (200..300).contains(&call.status),
            "{} {} -> {} {:?}",
            call.method,
            call.path,
            call.status,
            call.fault_message
        );
        assert!(call.operation_id.is_some());
    }
    assert!(c.calls().iter().all(|r| r.status.is_some_and(|s| s < 300)));
}

#[test]
fn consume_with_file_backend_and_overrides() {
    let rec = Fixture::new();
    rec.client
        .put_machine_config(&MachineConfiguration::new(2, 1024))
        .unwrap();
    rec.client
        .put_boot_source(&BootSource {
            kernel_image_path: "vmlinux".into(),
            ..BootSource::default()
        })
        .unwrap();
    rec.client
        .put_drive(&Drive::file("rootfs", "rootfs.ext4", true, false))
        .unwrap();
    rec.client
        .put_network_interface(&NetworkInterface {
            iface_id: "eth0".into(),
            host_dev_name: "tap0".into(),
            ..NetworkInterface::default()
        })
        .unwrap();
    rec.client
        .put_vsock(&Vsock {
            guest_cid: 3,
            uds_path: "v.sock".into(),
        })
        .unwrap();
    rec.client.instance_start().unwrap();
    rec.client.pause().unwrap();
    rec.client
        .create_snapshot(&SnapshotCreateParams {
            mem_file_path: rec.p("mem"),
            snapshot_path: rec.p("vmstate"),
            snapshot_type: None,
        })
        .unwrap();
    // record: machine-config, boot-source, drive, nic, vsock, start, pause, create.
    assert_eq!(rec.client.call_count(), 8);

    // A fresh process in another run directory with its own copy of the disk under the
    // recorded relative name.
    let con = Fixture::new();
    std::fs::write(con.path("fc.log"), "").unwrap();
    std::fs::write(con.path("fc.metrics"), "").unwrap();
    con.client.set_memory_size_mib(1024);
    con.client
        .put_logger(&Logger {
            log_path: Some(con.p("fc.log")),
            ..Logger::default()
        })
        .unwrap();
    con.client
        .put_metrics(&Metrics {
            metrics_path: con.p("fc.metrics"),
            ..Metrics::default()
        })
        .unwrap();
    let mut load = SnapshotLoadParams::new(rec.p("vmstate"), BackendType::File, rec.p("mem"));
    load.resume_vm = Some(true);
    load.track_dirty_pages = Some(true);
    load.enable_diff_snapshots = Some(true);
    load.clock_realtime = Some(true);
    load.huge_pages = Some(LoadHugePages::Snapshot);
    load.network_overrides = vec![NetworkOverride {
        iface_id: "eth0".into(),
        host_dev_name: "tap7".into(),
    }];
    load.vsock_override = Some(VsockOverride {
        uds_path: "consume.vsock".into(),
    });
    con.client.load_snapshot(&load).unwrap();
    assert_eq!(con.fake.state(), InstanceState::Running);
    assert!(con.path("consume.vsock").exists());
    let config = con.client.vm_config().unwrap();
    assert!(config.boot_source.is_none(), "not restored from a snapshot");
    assert_eq!(config.network_interfaces[0].host_dev_name, "tap7");
    assert_eq!(config.machine_config.unwrap().track_dirty_pages, Some(true));
    // consume: logger, metrics, load (+ the GET above).
    assert_eq!(con.client.call_count(), 4);
    // A restored VM can be paused and snapshotted again (Diff re-record).
    con.client.pause().unwrap();
    con.client
        .create_snapshot(&SnapshotCreateParams {
            mem_file_path: con.p("mem.diff"),
            snapshot_path: con.p("vmstate.diff"),
            snapshot_type: Some(SnapshotType::Diff),
        })
        .unwrap();
    // With dirty tracking the diff holds only the dirtied pages, at their offsets.
    let full = std::fs::read(rec.path("mem")).unwrap();
    let diff = std::fs::read(con.path("mem.diff")).unwrap();
    assert_eq!(full.len(), diff.len());
    let data_pages = |mem: &[u8]| {
        mem.chunks(4096)
            .filter(|p| p.iter().any(|b| *b != 0))
            .count()
    };
    assert_eq!(data_pages(&full), full.len() / 4096);
    let dirty = data_pages(&diff);
    assert!(
        dirty >= 1 && dirty < full.len() / 4096,
        "{dirty} dirty pages"
    );
    // Loading the diff's memory alone is refused (a real guest would crash on the holes).
    let alone = Fixture::new();
    let load = SnapshotLoadParams::new(con.p("vmstate.diff"), BackendType::File, con.p("mem.diff"));
    let err = alone.client.load_snapshot(&load).unwrap_err().to_string();
    assert!(err.contains("without its parent"), "{err}");
}

/// Records a small snapshot in `f` and returns (vmstate, mem) paths.
fn record(f: &Fixture) -> (String, String) {
    f.boot();
    f.client.pause().unwrap();
    f.client
        .create_snapshot(&SnapshotCreateParams {
            mem_file_path: f.p("mem"),
            snapshot_path: f.p("vmstate"),
            snapshot_type: Some(SnapshotType::Full),
        })
        .unwrap();
    (f.p("vmstate"), f.p("mem"))
}

#[test]
fn consume_with_uffd_backend_sends_the_handshake() {
    let rec = Fixture::new();
    let (vmstate, _) = record(&rec);
    let con = Fixture::new();
    let handler_path = con.path("uffd.sock");
    let handler = UnixListener::bind(&handler_path).unwrap();
    let reader = std::thread::spawn(move || {
        let (mut stream, _) = handler.accept().unwrap();
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        // One message; the fake keeps the connection open, as Firecracker does.
        let n = stream.read(&mut buf).unwrap();
        text.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        text
    });
    let load = SnapshotLoadParams::new(
        vmstate,
        BackendType::Uffd,
        handler_path.to_string_lossy().into_owned(),
    );
    con.client.load_snapshot(&load).unwrap();
    let handshake: Value = serde_json::from_str(&reader.join().unwrap()).unwrap();
    let region = &handshake[0];
    for key in [
        "base_host_virt_addr",
        "size",
        "offset",
        "page_size",
        "page_size_kib",
    ] {
        assert!(region.get(key).is_some(), "{key} missing in {handshake}");
    }
    // Without resume_vm the restored VM waits paused.
    assert_eq!(con.fake.state(), InstanceState::Paused);
    con.client.resume().unwrap();
    assert_eq!(con.fake.state(), InstanceState::Running);
}

#[test]
fn state_machine_errors_are_typed_with_fault_message() {
    let f = Fixture::new();
    // Before boot.
    assert_fault(&f.client.pause().unwrap_err(), 400, "before starting");
    assert_fault(
        &f.client
            .create_snapshot(&SnapshotCreateParams {
                mem_file_path: f.p("m"),
                snapshot_path: f.p("s"),
                snapshot_type: None,
            })
            .unwrap_err(),
        400,
        "before starting",
    );
    assert_fault(
        &f.client
            .patch_drive(&PartialDrive {
                drive_id: "rootfs".into(),
                ..PartialDrive::default()
            })
            .unwrap_err(),
        400,
        "before starting",
    );
    assert_fault(
        &f.client.instance_start().unwrap_err(),
        400,
        "without kernel configuration",
    );
    assert_fault(
        &f.client
            .put_drive(&Drive::file("data", "missing.img", false, true))
            .unwrap_err(),
        400,
        "No such file",
    );
    assert_fault(
        &f.client
            .put_logger(&Logger {
                log_path: Some(f.p("not-created.log")),
                ..Logger::default()
            })
            .unwrap_err(),
        400,
        "Failed to open target file",
    );
    f.boot();
    // InstanceStart twice, pre-boot config after boot.
    assert_fault(
        &f.client.instance_start().unwrap_err(),
        400,
        "after starting",
    );
    assert_fault(
        &f.client
            .put_machine_config(&MachineConfiguration::new(1, 128))
            .unwrap_err(),
        400,
        "after starting",
    );
    // Snapshot while running.
    let err = f
        .client
        .create_snapshot(&SnapshotCreateParams {
            mem_file_path: f.p("m"),
            snapshot_path: f.p("s"),
            snapshot_type: None,
        })
        .unwrap_err();
    assert_fault(&err, 400, "not paused");
    assert!(!f.path("s").exists());
    // Load after boot.
    let err = f
        .client
        .load_snapshot(&SnapshotLoadParams::new(
            f.p("s"),
            BackendType::File,
            f.p("m"),
        ))
        .unwrap_err();
    assert_fault(&err, 400, "Loading a microVM snapshot not allowed");
    // Patching an unknown drive.
    assert_fault(
        &f.client
            .patch_drive(&PartialDrive {
                drive_id: "nope".into(),
                ..PartialDrive::default()
            })
            .unwrap_err(),
        400,
        "Invalid block device ID",
    );
    // Metrics twice.
    std::fs::write(f.path("m1"), "").unwrap();
    let metrics = Metrics {
        metrics_path: f.p("m1"),
        ..Metrics::default()
    };
    f.client.put_metrics(&metrics).unwrap();
    assert_fault(
        &f.client.put_metrics(&metrics).unwrap_err(),
        400,
        "Reinitialization of metrics",
    );
    // Ctrl+Alt+Del on a paused VM.
    f.client.pause().unwrap();
    assert_fault(&f.client.send_ctrl_alt_del().unwrap_err(), 400, "paused");
}

#[test]
fn load_after_configuring_is_refused_but_logger_and_metrics_are_fine() {
    let rec = Fixture::new();
    let (vmstate, mem) = record(&rec);
    let f = Fixture::new();
    f.client
        .put_machine_config(&MachineConfiguration::new(1, 128))
        .unwrap();
    let err = f
        .client
        .load_snapshot(&SnapshotLoadParams::new(vmstate, BackendType::File, mem))
        .unwrap_err();
    assert_fault(&err, 400, "after configuring boot-specific resources");
}

#[test]
fn failed_load_ends_the_process() {
    let rec = Fixture::new();
    let (vmstate, _mem) = record(&rec);
    // Consume in a directory where the recorded relative disk does not exist.
    let con = Fixture::new();
    std::fs::remove_file(con.path("rootfs.ext4")).unwrap();
    let mem = con.path("mem");
    std::fs::copy(rec.path("mem"), &mem).unwrap();
    let err = con
        .client
        .load_snapshot(&SnapshotLoadParams::new(
            vmstate,
            BackendType::File,
            mem.to_string_lossy().into_owned(),
        ))
        .unwrap_err();
    assert_fault(&err, 400, "Cannot restore block device rootfs");
    assert_eq!(con.fake.wait_exit(Some(Duration::from_secs(5))), Some(1));
    // The "process" is gone: nothing answers any more (refused, or reset while it dies).
    let err = con.client.version().unwrap_err();
    assert!(
        matches!(err, ApiError::Connect { .. } | ApiError::Io { .. }),
        "{err}"
    );
}

#[test]
fn load_checks_memory_file_and_vmstate() {
    let rec = Fixture::new();
    let (vmstate, mem) = record(&rec);
    // A truncated memory file.
    let con = Fixture::new();
    let short = con.path("mem");
    std::fs::write(&short, b"short").unwrap();
    let err = con
        .client
        .load_snapshot(&SnapshotLoadParams::new(
            vmstate.clone(),
            BackendType::File,
            short.to_string_lossy().into_owned(),
        ))
        .unwrap_err();
    assert_fault(&err, 400, "the snapshot expects");
    // Not a vmstate.
    let con = Fixture::new();
    std::fs::write(con.path("junk"), b"junk").unwrap();
    let err = con
        .client
        .load_snapshot(&SnapshotLoadParams::new(
            con.p("junk"),
            BackendType::File,
            mem.clone(),
        ))
        .unwrap_err();
    assert_fault(&err, 400, "not a snapshot state file");
    // 2M huge pages need Uffd.
    let con = Fixture::new();
    let mut load = SnapshotLoadParams::new(vmstate, BackendType::File, mem);
    load.huge_pages = Some(LoadHugePages::Hugetlbfs2M);
    assert_fault(&con.client.load_snapshot(&load).unwrap_err(), 400, "Uffd");
}

#[test]
fn invalid_bodies_are_rejected_with_the_swagger_reason() {
    let f = Fixture::new();
    let cases: Vec<(Method, &str, Value, &str)> = vec![
        (
            Method::Put,
            "/machine-config",
            json!({"vcpu_count": 2, "mem_size_mib": 256, "track_dirty": true}),
            "unknown property `track_dirty`",
        ),
        (
            Method::Put,
            "/machine-config",
            json!({"vcpu_count": 2}),
            "missing required property `mem_size_mib`",
        ),
        (
            Method::Put,
            "/machine-config",
            json!({"vcpu_count": 33, "mem_size_mib": 256}),
            "maximum 32",
        ),
        (
            Method::Put,
            "/machine-config",
            json!({"vcpu_count": "2", "mem_size_mib": 256}),
            "expected an integer",
        ),
        (
            Method::Put,
            "/machine-config",
            json!({"vcpu_count": 2.5, "mem_size_mib": 256}),
            "expected an integer",
        ),
        (
            Method::Put,
            "/machine-config",
            json!({"vcpu_count": 2, "mem_size_mib": 256, "huge_pages": "1G"}),
            "is not one of",
        ),
        (
            Method::Put,
            "/actions",
            json!({"action_type": "Pause"}),
            "body.action_type: \"Pause\" is not one of",
        ),
        (
            Method::Patch,
            "/vm",
            json!({"state": "Running"}),
            "is not one of [\"Paused\", \"Resumed\"]",
        ),
        (
            Method::Put,
            "/snapshot/create",
            json!({"snapshot_path": "s", "mem_file_path": "m", "snapshot_type": "Incremental"}),
            "SnapshotCreateParams",
        ),
        (
            Method::Put,
            "/snapshot/load",
            json!({"snapshot_path": "s", "mem_backend": {"backend_type": "Memfd", "backend_path": "m"}}),
            "body.mem_backend.backend_type",
        ),
        (
            Method::Put,
            "/snapshot/load",
            json!({"snapshot_path": "s", "mem_backend": {"backend_type": "File"}}),
            "missing required property `backend_path`",
        ),
        (
            Method::Put,
            "/snapshot/load",
            json!({"snapshot_path": "s", "network_overrides": [{"iface_id": "eth0"}]}),
            "body.network_overrides[0]: missing required property `host_dev_name`",
        ),
        (
            Method::Put,
            "/snapshot/load",
            json!({"snapshot_path": "s", "resume_vm": "yes"}),
            "expected a boolean",
        ),
        (
            Method::Put,
            "/vsock",
            json!({"guest_cid": 2, "uds_path": "v.sock"}),
            "less than the minimum 3",
        ),
        (
            Method::Put,
            "/network-interfaces/eth0",
            json!({"iface_id": "eth0", "host_dev_name": "tap0", "mtu": 10}),
            "less than the minimum 68",
        ),
        (
            Method::Put,
            "/drives/rootfs",
            json!({"drive_id": "rootfs", "is_root_device": true, "path_on_host": "r", "is_read_only": false, "rate_limiter": {"bandwidth": {"size": 1}}}),
            "body.rate_limiter.bandwidth: missing required property `refill_time`",
        ),
        (
            Method::Put,
            "/drives/rootfs",
            json!({"drive_id": "rootfs", "is_root_device": null}),
            "expected a boolean, got null",
        ),
        (
            Method::Put,
            "/drives/rootfs",
            json!({"drive_id": "rootfs", "is_root_device": true, "cache_type": "WriteBack"}),
            "is not one of [\"Unsafe\", \"Writeback\"]",
        ),
        (
            Method::Put,
            "/metrics",
            json!({"metrics_path": "m", "properties": {"run": 7}}),
            "body.properties.run: expected a string",
        ),
        (
            Method::Put,
            "/logger",
            json!({"level": "Verbose"}),
            "is not one of",
        ),
        (
            Method::Put,
            "/boot-source",
            json!(["vmlinux"]),
            "expected an object, got an array",
        ),
        (
            Method::Put,
            "/drives/a",
            json!({"drive_id": "b", "is_root_device": false, "path_on_host": "rootfs.ext4", "is_read_only": true}),
            "The id from the path does not match the id from the body!",
        ),
        (
            Method::Put,
            "/snapshot/delete",
            json!({}),
            "Invalid request method and/or path",
        ),
        (
            Method::Patch,
            "/actions",
            json!({"action_type": "InstanceStart"}),
            "Invalid request method and/or path",
        ),
        (Method::Get, "/", json!({}), "takes no body"),
    ];
    for (method, path, body, reason) in &cases {
        let err = f.raw(*method, path, body.clone());
        assert_eq!(err.status(), Some(400), "{method} {path} {body}: {err}");
        let fault = err.fault_message().unwrap_or_default();
        assert!(
            fault.contains(reason),
            "{method} {path} {body}: fault_message {fault:?} lacks {reason:?}"
        );
    }
    assert_eq!(f.fake.calls().len(), cases.len());
    assert_eq!(f.client.call_count(), cases.len());
    // None of it changed the VM.
    assert_eq!(f.fake.state(), InstanceState::NotStarted);
    assert_eq!(f.client.machine_config().unwrap().vcpu_count, 1);
}

fn raw_exchange(socket: &Path, request: &[u8]) -> String {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.write_all(request).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // The fake keeps the connection open: read until the body is complete.
    loop {
        let n = stream.read(&mut buf).unwrap();
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).into_owned();
        if n == 0 || text.contains("\"}") || text.starts_with("HTTP/1.1 204") {
            return text;
        }
    }
}

#[test]
fn malformed_and_missing_bodies() {
    let f = Fixture::new();
    let socket = f.fake.socket().to_path_buf();
    let not_json =
        b"PUT /actions HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n{\"action\"";
    let answer = raw_exchange(&socket, not_json);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("not valid JSON"), "{answer}");
    let no_body = b"PUT /actions HTTP/1.1\r\n\r\n";
    let answer = raw_exchange(&socket, no_body);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("requires a JSON body (InstanceActionInfo)"),
        "{answer}"
    );
}

#[test]
fn bad_ids_never_reach_the_socket() {
    let f = Fixture::new();
    let err = f
        .client
        .put_drive(&Drive::file("../../actions", "rootfs.ext4", true, false))
        .unwrap_err();
    assert!(matches!(err, ApiError::InvalidId { .. }), "{err}");
    assert_eq!(f.client.call_count(), 0);
    assert!(f.fake.calls().is_empty());
}

#[test]
fn config_call_deadline_fires() {
    let config = FakeConfig {
        stalls: vec![Stall {
            method: Some("PUT".into()),
            path: "/machine-config".into(),
            delay: Duration::from_secs(3),
        }],
        ..FakeConfig::default()
    };
    let timeouts = TimeoutPolicy {
        config: Duration::from_millis(200),
        ..TimeoutPolicy::DEFAULT
    };
    let f = Fixture::with(config, timeouts);
    let started = Instant::now();
    let err = f
        .client
        .put_machine_config(&MachineConfiguration::new(1, 128))
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("PUT /machine-config"), "{err}");
    let record = &f.client.calls()[0];
    assert_eq!(record.status, None);
    // Other calls are unaffected.
    assert_eq!(
        f.client.version().unwrap().firecracker_version,
        "1.17.0-dev"
    );
}

#[test]
fn snapshot_deadline_scales_with_memory() {
    let config = FakeConfig {
        stalls: vec![Stall {
            method: None,
            path: "/snapshot/create".into(),
            delay: Duration::from_millis(700),
        }],
        ..FakeConfig::default()
    };
    // Config calls get 200 ms; snapshots max(300 ms, 150 ms per GiB).
    let timeouts = TimeoutPolicy {
        config: Duration::from_millis(2000),
        start: Duration::from_millis(2000),
        snapshot_min: Duration::from_millis(300),
        snapshot_per_gib: Duration::from_millis(150),
        unknown_memory_mib: 1024,
    };
    let f = Fixture::with(config, timeouts);
    f.boot(); // 256 MiB: deadline 300 ms
    f.client.pause().unwrap();
    let params = SnapshotCreateParams {
        mem_file_path: f.p("mem"),
        snapshot_path: f.p("vmstate"),
        snapshot_type: None,
    };
    let err = f.client.create_snapshot(&params).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // 16 GiB: 2.4 s, enough for the 700 ms stall.
    f.client.set_memory_size_mib(16 * 1024);
    f.client.create_snapshot(&params).unwrap();
}
