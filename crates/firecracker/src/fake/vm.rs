//! The fake's microVM: Firecracker's API state machine (Not started → Running ⇄ Paused, or a
//! snapshot load straight to Paused/Running) with its pre-boot/post-boot rules, and the files
//! Firecracker touches (disks and kernel must exist, log and metrics files must exist, snapshot
//! create writes a vmstate and a memory file, load reads them back and reopens the recorded
//! disks). Bodies reaching here already passed the swagger validator.

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::swagger::MatchedRequest;
use super::FakeConfig;
use crate::models::*;

/// Marker and version of the fake's placeholder vmstate format.
pub(crate) const VMSTATE_MAGIC: &str = "bazel-diff fake-firecracker vmstate";
pub(crate) const VMSTATE_VERSION: u32 = 1;

const POST_BOOT: &str = "The requested operation is not supported after starting the microVM.";
const PRE_BOOT: &str = "The requested operation is not supported before starting the microVM.";
const LOAD_AFTER_CONFIG: &str =
    "Loading a microVM snapshot not allowed after configuring boot-specific resources.";
const ID_MISMATCH: &str = "The id from the path does not match the id from the body!";

/// What the fake answers, and whether the "process" exits after answering.
pub(crate) struct Reply {
    pub status: u16,
    pub body: Option<Value>,
    pub exit: Option<i32>,
}

impl Reply {
    fn no_content() -> Reply {
        Reply {
            status: 204,
            body: None,
            exit: None,
        }
    }

    fn json(body: Value) -> Reply {
        Reply {
            status: 200,
            body: Some(body),
            exit: None,
        }
    }

    pub(crate) fn fault(status: u16, message: impl Into<String>) -> Reply {
        Reply {
            status,
            body: Some(json!({ "fault_message": message.into() })),
            exit: None,
        }
    }
}

type Handled = Result<Reply, Reply>;

fn bad(message: impl Into<String>) -> Reply {
    Reply::fault(400, message)
}

/// The placeholder vmstate: the configuration a restore brings back, so that load can check
/// and reopen what a real restore would.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FakeVmState {
    magic: String,
    version: u32,
    firecracker_version: String,
    snapshot_type: SnapshotType,
    machine_config: MachineConfiguration,
    drives: Vec<Drive>,
    network_interfaces: Vec<NetworkInterface>,
    vsock: Option<Vsock>,
    entropy: Option<EntropyDevice>,
    balloon: Option<Balloon>,
    mem_file_len: u64,
}

/// A listener on the vsock UDS, as Firecracker binds one. Without a proxy, connections are
/// accepted and closed (nothing listens in the fake guest). With
/// [`FakeConfig::vsock_proxy`], a host-initiated `CONNECT <port>\n` is answered `OK <n>\n`
/// and the stream is then piped to that unix socket (a guest agent running as a local
/// process), as Firecracker's hybrid vsock pipes it to the guest port; when the proxy socket
/// does not accept, the connection is closed, as Firecracker does when nothing listens.
/// Removes the socket file it created.
struct VsockListener {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl VsockListener {
    fn bind(path: PathBuf, proxy: Option<PathBuf>) -> std::io::Result<VsockListener> {
        let listener = UnixListener::bind(&path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut next_port = 1_073_741_824u32;
            super::accept_until(&listener, &stopping, |stream| match &proxy {
                None => drop(stream),
                Some(target) => {
                    next_port = next_port.wrapping_add(1);
                    let (target, port) = (target.clone(), next_port);
                    std::thread::spawn(move || proxy_vsock(stream, &target, port));
                }
            });
        });
        Ok(VsockListener {
            path,
            stop,
            thread: Some(thread),
        })
    }
}

/// Serves one hybrid-vsock connection through the proxy (see [`VsockListener`]).
fn proxy_vsock(mut host: UnixStream, target: &Path, host_port: u32) {
    use std::io::{BufRead, BufReader};
    let _ = host.set_read_timeout(Some(std::time::Duration::from_secs(5)));
    let mut line = String::new();
    {
        let Ok(clone) = host.try_clone() else { return };
        let mut reader = BufReader::new(clone);
        // Byte by byte is not needed: the host sends nothing before our OK.
        if reader.read_line(&mut line).is_err() || !reader.buffer().is_empty() {
            return;
        }
    }
    let valid = line
        .strip_prefix("CONNECT ")
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some();
    if !valid {
        return;
    }
    let Ok(guest) = UnixStream::connect(target) else {
        return;
    };
    let _ = host.set_read_timeout(None);
    if host
        .write_all(format!("OK {host_port}\n").as_bytes())
        .is_err()
    {
        return;
    }
    let (Ok(mut host_r), Ok(mut guest_w)) = (host.try_clone(), guest.try_clone()) else {
        return;
    };
    let upstream = std::thread::spawn(move || {
        let _ = std::io::copy(&mut host_r, &mut guest_w);
        let _ = guest_w.shutdown(std::net::Shutdown::Write);
    });
    let (mut guest_r, mut host_w) = (guest, host);
    let _ = std::io::copy(&mut guest_r, &mut host_w);
    let _ = host_w.shutdown(std::net::Shutdown::Write);
    let _ = upstream.join();
}

impl Drop for VsockListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

pub(crate) struct FakeVm {
    config: Arc<FakeConfig>,
    version: String,
    state: InstanceState,
    /// Anything but logger and metrics configured: a snapshot load is refused.
    boot_configured: bool,
    loaded: bool,
    boot_source: Option<BootSource>,
    machine: MachineConfiguration,
    drives: Vec<Drive>,
    nets: Vec<NetworkInterface>,
    vsock: Option<Vsock>,
    vsock_listener: Option<VsockListener>,
    entropy: Option<EntropyDevice>,
    balloon: Option<Balloon>,
    serial: Option<SerialDevice>,
    logger: Option<Logger>,
    metrics: Option<Metrics>,
    /// The connection to the page-fault handler after a `Uffd` load, held as Firecracker does.
    uffd: Option<UnixStream>,
    /// Snapshots created by this process: the fake guest "dirties" a different set of pages
    /// between two of them, and writes the count into the pages it dirtied.
    snapshots: u64,
}

fn default_machine() -> MachineConfiguration {
    MachineConfiguration {
        vcpu_count: 1,
        mem_size_mib: 128,
        smt: Some(false),
        track_dirty_pages: Some(false),
        cpu_template: None,
        huge_pages: Some(HugePages::None),
    }
}

impl FakeVm {
    pub(crate) fn new(config: Arc<FakeConfig>, version: String) -> FakeVm {
        FakeVm {
            config,
            version,
            state: InstanceState::NotStarted,
            boot_configured: false,
            loaded: false,
            boot_source: None,
            machine: default_machine(),
            drives: Vec::new(),
            nets: Vec::new(),
            vsock: None,
            vsock_listener: None,
            entropy: None,
            balloon: None,
            serial: None,
            logger: None,
            metrics: None,
            uffd: None,
            snapshots: 0,
        }
    }

    pub(crate) fn state(&self) -> InstanceState {
        self.state
    }

    pub(crate) fn handle(&mut self, req: &MatchedRequest) -> Reply {
        let result = match req.operation_id.as_str() {
            "describeInstance" => Ok(self.describe()),
            "getFirecrackerVersion" => {
                Ok(Reply::json(json!({ "firecracker_version": self.version })))
            }
            "getMachineConfiguration" => to_json(&self.machine).map(Reply::json),
            "getExportVmConfig" => self.export_config(),
            "describeBalloonConfig" => match &self.balloon {
                Some(balloon) => to_json(balloon).map(Reply::json),
                None => Err(bad("Balloon device not configured.")),
            },
            "putGuestBootSource" => self.put_boot_source(req),
            "putMachineConfiguration" => self.put_machine_config(req),
            "putGuestDriveByID" => self.put_drive(req),
            "patchGuestDriveByID" => self.patch_drive(req),
            "putGuestNetworkInterfaceByID" => self.put_net(req),
            "patchGuestNetworkInterfaceByID" => self.patch_net(req),
            "putGuestVsock" => self.put_vsock(req),
            "putEntropyDevice" => self.pre_boot().and_then(|()| {
                self.entropy = Some(body(req)?);
                self.boot_configured = true;
                Ok(Reply::no_content())
            }),
            "putBalloon" => self.pre_boot().and_then(|()| {
                self.balloon = Some(body(req)?);
                self.boot_configured = true;
                Ok(Reply::no_content())
            }),
            "patchBalloon" => self.patch_balloon(req),
            "putSerialDevice" => self.put_serial(req),
            "putLogger" => self.put_logger(req),
            "putMetrics" => self.put_metrics(req),
            "createSyncAction" => self.action(req),
            "patchVm" => self.patch_vm(req),
            "createSnapshot" => self.create_snapshot(req),
            "loadSnapshot" => self.load_snapshot(req),
            other => Err(bad(format!(
                "fake-firecracker does not emulate {other} ({})",
                req.template
            ))),
        };
        result.unwrap_or_else(|reply| reply)
    }

    fn describe(&self) -> Reply {
        Reply::json(json!({
            "app_name": "Firecracker",
            "id": self.config.instance_id,
            "state": self.state,
            "vmm_version": self.version,
        }))
    }

    fn export_config(&self) -> Handled {
        let config = FullVmConfiguration {
            balloon: self.balloon.clone(),
            drives: self.drives.clone(),
            boot_source: self.boot_source.clone(),
            logger: self.logger.clone(),
            machine_config: Some(self.machine.clone()),
            metrics: self.metrics.clone(),
            network_interfaces: self.nets.clone(),
            vsock: self.vsock.clone(),
            entropy: self.entropy,
            ..FullVmConfiguration::default()
        };
        to_json(&config).map(Reply::json)
    }

    fn pre_boot(&self) -> Result<(), Reply> {
        if self.state == InstanceState::NotStarted && !self.loaded {
            Ok(())
        } else {
            Err(bad(POST_BOOT))
        }
    }

    fn post_boot(&self) -> Result<(), Reply> {
        if self.state == InstanceState::NotStarted {
            Err(bad(PRE_BOOT))
        } else {
            Ok(())
        }
    }

    /// A path from a request body, as the fake's "process" would open it.
    fn resolve(&self, path: &str) -> PathBuf {
        resolve(&self.config, path)
    }

    fn put_boot_source(&mut self, req: &MatchedRequest) -> Handled {
        self.pre_boot()?;
        self.boot_source = Some(body(req)?);
        self.boot_configured = true;
        Ok(Reply::no_content())
    }

    fn put_machine_config(&mut self, req: &MatchedRequest) -> Handled {
        self.pre_boot()?;
        let config: MachineConfiguration = body(req)?;
        if config.smt == Some(true) && config.vcpu_count > 1 && config.vcpu_count % 2 == 1 {
            return Err(bad(
                "The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.",
            ));
        }
        if config.mem_size_mib == 0 {
            return Err(bad("The memory size (MiB) is invalid."));
        }
        if config.huge_pages == Some(HugePages::Hugetlbfs2M) && config.mem_size_mib % 2 != 0 {
            return Err(bad(
                "The memory size (MiB) is either 0, or not a multiple of the configured page size.",
            ));
        }
        // Unspecified optional fields go back to their defaults (swagger description).
        let defaults = default_machine();
        self.machine = MachineConfiguration {
            smt: config.smt.or(defaults.smt),
            track_dirty_pages: config.track_dirty_pages.or(defaults.track_dirty_pages),
            huge_pages: config.huge_pages.or(defaults.huge_pages),
            ..config
        };
        self.boot_configured = true;
        Ok(Reply::no_content())
    }

    fn put_drive(&mut self, req: &MatchedRequest) -> Handled {
        self.pre_boot()?;
        let drive: Drive = body(req)?;
        check_path_id(req, "drive_id", &drive.drive_id)?;
        match (&drive.path_on_host, &drive.socket) {
            (Some(path), None) => {
                if drive.is_read_only.is_none() {
                    return Err(bad(
                        "Unable to create the virtio block device: is_read_only is required for a virtio-block drive",
                    ));
                }
                let resolved = self.resolve(path);
                if !resolved.is_file() {
                    return Err(bad(format!(
                        "Unable to create the virtio block device: BackingFile(Os {{ code: 2, kind: NotFound, message: \"No such file or directory\" }}, \"{path}\")"
                    )));
                }
            }
            (None, Some(_)) => {}
            _ => {
                return Err(bad(
                    "Unable to create the block device: exactly one of path_on_host (virtio-block) and socket (vhost-user-block) is required",
                ))
            }
        }
        if drive.is_root_device
            && self
                .drives
                .iter()
                .any(|d| d.is_root_device && d.drive_id != drive.drive_id)
        {
            return Err(bad("A root block device already exists!"));
        }
        match self
            .drives
            .iter_mut()
            .find(|d| d.drive_id == drive.drive_id)
        {
            Some(existing) => *existing = drive,
            None => self.drives.push(drive),
        }
        self.boot_configured = true;
        Ok(Reply::no_content())
    }

    fn patch_drive(&mut self, req: &MatchedRequest) -> Handled {
        self.post_boot()?;
        let update: PartialDrive = body(req)?;
        check_path_id(req, "drive_id", &update.drive_id)?;
        if let Some(path) = &update.path_on_host {
            if !self.resolve(path).is_file() {
                return Err(bad(format!(
                    "Unable to patch the block device: BackingFile(Os {{ code: 2, kind: NotFound, message: \"No such file or directory\" }}, \"{path}\")"
                )));
            }
        }
        let drive = self
            .drives
            .iter_mut()
            .find(|d| d.drive_id == update.drive_id)
            .ok_or_else(|| bad(format!("Invalid block device ID: {}", update.drive_id)))?;
        if let Some(path) = update.path_on_host {
            drive.path_on_host = Some(path);
        }
        if let Some(limiter) = update.rate_limiter {
            drive.rate_limiter = Some(limiter);
        }
        Ok(Reply::no_content())
    }

    fn put_net(&mut self, req: &MatchedRequest) -> Handled {
        self.pre_boot()?;
        let iface: NetworkInterface = body(req)?;
        check_path_id(req, "iface_id", &iface.iface_id)?;
        if self
            .nets
            .iter()
            .any(|n| n.host_dev_name == iface.host_dev_name && n.iface_id != iface.iface_id)
        {
            return Err(bad(format!(
                "The host device name {} is already in use.",
                iface.host_dev_name
            )));
        }
        match self.nets.iter_mut().find(|n| n.iface_id == iface.iface_id) {
            Some(existing) => *existing = iface,
            None => self.nets.push(iface),
        }
        self.boot_configured = true;
        Ok(Reply::no_content())
    }

    fn patch_net(&mut self, req: &MatchedRequest) -> Handled {
        self.post_boot()?;
        let update: PartialNetworkInterface = body(req)?;
        check_path_id(req, "iface_id", &update.iface_id)?;
        let iface = self
            .nets
            .iter_mut()
            .find(|n| n.iface_id == update.iface_id)
            .ok_or_else(|| bad(format!("Invalid network interface ID: {}", update.iface_id)))?;
        if update.rx_rate_limiter.is_some() {
            iface.rx_rate_limiter = update.rx_rate_limiter;
        }
        if update.tx_rate_limiter.is_some() {
            iface.tx_rate_limiter = update.tx_rate_limiter;
        }
        Ok(Reply::no_content())
    }

    fn bind_vsock(&self, uds_path: &str) -> Result<VsockListener, Reply> {
        VsockListener::bind(self.resolve(uds_path), self.config.vsock_proxy.clone()).map_err(|e| {
            bad(format!(
                "Cannot create backend for vsock device: UnixBind({e}) at {uds_path}"
            ))
        })
    }

    fn put_vsock(&mut self, req: &MatchedRequest) -> Handled {
        self.pre_boot()?;
        let vsock: Vsock = body(req)?;
        // Re-configuring replaces the device: release the old socket before binding again.
        self.vsock_listener = None;
        self.vsock_listener = Some(self.bind_vsock(&vsock.uds_path)?);
        self.vsock = Some(vsock);
        self.boot_configured = true;
        Ok(Reply::no_content())
    }

    fn patch_balloon(&mut self, req: &MatchedRequest) -> Handled {
        self.post_boot()?;
        let update: BalloonUpdate = body(req)?;
        let balloon = self
            .balloon
            .as_mut()
            .ok_or_else(|| bad("Balloon device not configured."))?;
        if update.amount_mib > self.machine.mem_size_mib {
            return Err(bad("Amount of pages requested is too large."));
        }
        balloon.amount_mib = update.amount_mib;
        Ok(Reply::no_content())
    }

    fn put_serial(&mut self, req: &MatchedRequest) -> Handled {
        self.pre_boot()?;
        let serial: SerialDevice = body(req)?;
        if let Some(path) = &serial.serial_out_path {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.resolve(path))
                .map_err(|e| bad(format!("Failed to open serial output file {path}: {e}")))?;
        }
        self.serial = Some(serial);
        Ok(Reply::no_content())
    }

    fn append_line(&self, path: &str, line: &str) -> Result<(), Reply> {
        // Like Firecracker: the target must exist already (a file or FIFO made by the caller).
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.resolve(path))
            .map_err(|e| bad(format!("Failed to open target file {path}: {e}")))?;
        writeln!(file, "{line}").map_err(|e| bad(format!("Failed to write to {path}: {e}")))
    }

    fn put_logger(&mut self, req: &MatchedRequest) -> Handled {
        let logger: Logger = body(req)?;
        if let Some(path) = &logger.log_path {
            self.append_line(path, "fake-firecracker: logger configured")?;
        }
        self.logger = Some(logger);
        Ok(Reply::no_content())
    }

    fn put_metrics(&mut self, req: &MatchedRequest) -> Handled {
        if self.metrics.is_some() {
            return Err(bad("Reinitialization of metrics not allowed."));
        }
        let metrics: Metrics = body(req)?;
        self.append_line(
            &metrics.metrics_path,
            r#"{"fake_firecracker":"metrics configured"}"#,
        )?;
        self.metrics = Some(metrics);
        Ok(Reply::no_content())
    }

    fn action(&mut self, req: &MatchedRequest) -> Handled {
        let action: InstanceActionInfo = body(req)?;
        match action.action_type {
            ActionType::InstanceStart => {
                self.pre_boot()?;
                let boot = self
                    .boot_source
                    .as_ref()
                    .ok_or_else(|| bad("Cannot start microvm without kernel configuration."))?;
                if !self.resolve(&boot.kernel_image_path).is_file() {
                    return Err(bad(format!(
                        "Cannot start microvm: invalid kernel path {}",
                        boot.kernel_image_path
                    )));
                }
                if let Some(initrd) = &boot.initrd_path {
                    if !self.resolve(initrd).is_file() {
                        return Err(bad(format!(
                            "Cannot start microvm: invalid initrd path {initrd}"
                        )));
                    }
                }
                self.state = InstanceState::Running;
                Ok(Reply::no_content())
            }
            ActionType::FlushMetrics => {
                if let Some(metrics) = &self.metrics {
                    let line = json!({ "fake_firecracker": "metrics", "state": self.state });
                    self.append_line(&metrics.metrics_path, &line.to_string())?;
                }
                Ok(Reply::no_content())
            }
            ActionType::SendCtrlAltDel => {
                self.post_boot()?;
                if self.state != InstanceState::Running {
                    return Err(bad("Cannot send Ctrl+Alt+Del: the microVM is paused."));
                }
                let mut reply = Reply::no_content();
                // The guest reboots (`reboot=k`) and Firecracker exits.
                if self.config.exit_on_ctrl_alt_del {
                    reply.exit = Some(0);
                }
                Ok(reply)
            }
        }
    }

    fn patch_vm(&mut self, req: &MatchedRequest) -> Handled {
        self.post_boot()?;
        let vm: Vm = body(req)?;
        self.state = match vm.state {
            VmState::Paused => InstanceState::Paused,
            VmState::Resumed => InstanceState::Running,
        };
        Ok(Reply::no_content())
    }

    fn create_snapshot(&mut self, req: &MatchedRequest) -> Handled {
        self.post_boot()?;
        let params: SnapshotCreateParams = body(req)?;
        if self.state != InstanceState::Paused {
            return Err(bad(
                "Create snapshot error: Cannot save the microVM state: the microVM is not paused (PATCH /vm Paused first).",
            ));
        }
        let snapshot_type = params.snapshot_type.unwrap_or(SnapshotType::Full);
        let vmstate = FakeVmState {
            magic: VMSTATE_MAGIC.to_owned(),
            version: VMSTATE_VERSION,
            firecracker_version: self.version.clone(),
            snapshot_type,
            machine_config: self.machine.clone(),
            drives: self.drives.clone(),
            network_interfaces: self.nets.clone(),
            vsock: self.vsock.clone(),
            entropy: self.entropy,
            balloon: self.balloon.clone(),
            mem_file_len: self.config.mem_file_len,
        };
        let state_bytes = serde_json::to_vec_pretty(&vmstate)
            .map_err(|e| Reply::fault(500, format!("fake-firecracker: {e}")))?;
        std::fs::write(self.resolve(&params.snapshot_path), state_bytes).map_err(|e| {
            bad(format!(
                "Create snapshot error: Cannot write the microVM state to {}: {e}",
                params.snapshot_path
            ))
        })?;
        self.snapshots += 1;
        // Firecracker >= 1.13 takes a Diff without dirty tracking too, writing every resident
        // page (mincore): all of them here.
        let only_dirty =
            snapshot_type == SnapshotType::Diff && self.machine.track_dirty_pages == Some(true);
        write_memory(
            &self.resolve(&params.mem_file_path),
            self.config.mem_file_len,
            only_dirty,
            self.snapshots,
        )
        .map_err(|e| {
            bad(format!(
                "Create snapshot error: Cannot write the memory file {}: {e}",
                params.mem_file_path
            ))
        })?;
        Ok(Reply::no_content())
    }

    fn load_snapshot(&mut self, req: &MatchedRequest) -> Handled {
        if self.state != InstanceState::NotStarted || self.loaded || self.boot_configured {
            return Err(bad(LOAD_AFTER_CONFIG));
        }
        let params: SnapshotLoadParams = body(req)?;
        let raw = req.body.as_ref().and_then(Value::as_object);
        let has_mem_file_path = raw.is_some_and(|b| b.contains_key("mem_file_path"));
        // From here on a failure ends the process, as a failed load does in Firecracker.
        let failed = |message: String| {
            let mut reply = bad(format!("Load snapshot error: {message}"));
            if self.config.exit_on_failed_load {
                reply.exit = Some(1);
            }
            reply
        };
        let backend = match (&params.mem_backend, has_mem_file_path) {
            (Some(backend), false) => backend.clone(),
            (None, true) => MemoryBackend {
                backend_type: BackendType::File,
                backend_path: raw
                    .and_then(|b| b.get("mem_file_path"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            },
            _ => {
                return Err(failed(
                    "exactly one of mem_backend and mem_file_path must be given".into(),
                ))
            }
        };
        if params.huge_pages == Some(LoadHugePages::Hugetlbfs2M)
            && backend.backend_type != BackendType::Uffd
        {
            return Err(failed(
                "huge_pages 2M requires the Uffd memory backend".into(),
            ));
        }
        let bytes = std::fs::read(self.resolve(&params.snapshot_path)).map_err(|e| {
            failed(format!(
                "Cannot open the snapshot file {}: {e}",
                params.snapshot_path
            ))
        })?;
        let vmstate: FakeVmState = serde_json::from_slice(&bytes)
            .ok()
            .filter(|s: &FakeVmState| s.magic == VMSTATE_MAGIC)
            .ok_or_else(|| {
                failed(format!(
                    "{} is not a snapshot state file (bad magic or CRC)",
                    params.snapshot_path
                ))
            })?;
        if vmstate.version != VMSTATE_VERSION || vmstate.firecracker_version != self.version {
            return Err(failed(format!(
                "snapshot version mismatch: the file was made by Firecracker {} (format {}), this is {} (format {VMSTATE_VERSION})",
                vmstate.firecracker_version, vmstate.version, self.version
            )));
        }
        match backend.backend_type {
            BackendType::File => {
                let len = std::fs::metadata(self.resolve(&backend.backend_path))
                    .map_err(|e| {
                        failed(format!(
                            "Cannot open the memory file {}: {e}",
                            backend.backend_path
                        ))
                    })?
                    .len();
                if len != vmstate.mem_file_len {
                    return Err(failed(format!(
                        "the memory file {} is {len} bytes, the snapshot expects {}",
                        backend.backend_path, vmstate.mem_file_len
                    )));
                }
                // A real guest would crash on a Diff's holes; the fake says why instead.
                if let Some(page) = first_hole(&self.resolve(&backend.backend_path), len) {
                    return Err(failed(format!(
                        "the memory file {} has no data at page {page}: not a full guest memory \
                         image (a Diff snapshot's memory loaded without its parent?)",
                        backend.backend_path
                    )));
                }
            }
            BackendType::Uffd => {
                // Firecracker connects and sends the region mappings with the uffd
                // (SCM_RIGHTS); the fake sends the JSON only: it has no userfaultfd.
                let mut stream =
                    UnixStream::connect(self.resolve(&backend.backend_path)).map_err(|e| {
                        failed(format!(
                            "Cannot connect to the UFFD handler socket {}: {e}",
                            backend.backend_path
                        ))
                    })?;
                let mappings = json!([{
                    "base_host_virt_addr": 0x7f00_0000_0000_u64,
                    "size": vmstate.mem_file_len,
                    "offset": 0,
                    "page_size": 4096,
                    "page_size_kib": 4096,
                }]);
                stream
                    .write_all(mappings.to_string().as_bytes())
                    .map_err(|e| failed(format!("Cannot send the UFFD handshake: {e}")))?;
                self.uffd = Some(stream);
            }
        }
        // Disks are reopened at their recorded paths, relative ones against the new process.
        for drive in &vmstate.drives {
            if let Some(path) = &drive.path_on_host {
                if !self.resolve(path).is_file() {
                    return Err(failed(format!(
                        "Cannot restore block device {}: {path} does not exist",
                        drive.drive_id
                    )));
                }
            }
        }
        let mut nets = vmstate.network_interfaces.clone();
        for over in &params.network_overrides {
            let iface = nets
                .iter_mut()
                .find(|n| n.iface_id == over.iface_id)
                .ok_or_else(|| {
                    failed(format!(
                        "Invalid network override: the snapshot has no interface {}",
                        over.iface_id
                    ))
                })?;
            iface.host_dev_name = over.host_dev_name.clone();
        }
        let mut vsock = vmstate.vsock.clone();
        if let Some(over) = &params.vsock_override {
            match vsock.as_mut() {
                Some(v) => v.uds_path = over.uds_path.clone(),
                None => {
                    return Err(failed(
                        "vsock_override given but the snapshot has no vsock device".into(),
                    ))
                }
            }
        }
        if let Some(v) = &vsock {
            self.vsock_listener = Some(self.bind_vsock(&v.uds_path).map_err(|reply| {
                let message = reply
                    .body
                    .as_ref()
                    .and_then(|b| b.get("fault_message"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                failed(message)
            })?);
        }
        let track = params.track_dirty_pages.or(params.enable_diff_snapshots);
        self.machine = MachineConfiguration {
            track_dirty_pages: Some(track.unwrap_or(false)),
            // Not restored (swagger: empty after a restore).
            smt: None,
            cpu_template: None,
            ..vmstate.machine_config
        };
        self.drives = vmstate.drives;
        self.nets = nets;
        self.vsock = vsock;
        self.entropy = vmstate.entropy;
        self.balloon = vmstate.balloon;
        self.loaded = true;
        self.state = if params.resume_vm == Some(true) {
            InstanceState::Running
        } else {
            InstanceState::Paused
        };
        Ok(Reply::no_content())
    }
}

pub(crate) fn resolve(config: &FakeConfig, path: &str) -> PathBuf {
    let path = Path::new(path);
    match &config.root {
        Some(root) if path.is_absolute() && config.chroot => {
            root.join(path.strip_prefix("/").unwrap_or(path))
        }
        Some(root) if path.is_relative() => root.join(path),
        _ => path.to_path_buf(),
    }
}

const PAGE: u64 = 4096;

/// Whether the fake guest dirtied `page` before snapshot number `snapshot`: about a quarter
/// of the pages, a different quarter each time, and always page 0.
fn dirtied(page: u64, snapshot: u64) -> bool {
    page == 0 || (page.wrapping_mul(2_654_435_761) ^ snapshot.wrapping_mul(97)) % 4 == 0
}

/// Placeholder guest memory, one labelled page at a time: every page for a Full snapshot
/// (and an untracked Diff); for a tracked Diff only the pages dirtied since the last
/// snapshot, the rest left as holes, as Firecracker writes a diff memory file.
fn write_memory(path: &Path, len: u64, only_dirty: bool, snapshot: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::create(path)?;
    file.set_len(len)?;
    let mut page = vec![0u8; PAGE as usize];
    for index in 0..len.div_ceil(PAGE) {
        if only_dirty && !dirtied(index, snapshot) {
            continue;
        }
        let label = format!("fake-firecracker guest memory: snapshot {snapshot}, page {index}\n");
        for (i, byte) in page.iter_mut().enumerate() {
            *byte = label.as_bytes()[i % label.len()];
        }
        let at = index * PAGE;
        let n = usize::try_from((len - at).min(PAGE)).unwrap_or(0);
        file.write_all_at(&page[..n], at)?;
    }
    file.sync_all()
}

/// The first all-zero page of a memory file the fake could have written (64 MiB at most;
/// bigger files are not checked), if any.
fn first_hole(path: &Path, len: u64) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    if len > 64 << 20 {
        return None;
    }
    let file = std::fs::File::open(path).ok()?;
    let mut page = vec![0u8; PAGE as usize];
    for index in 0..len.div_ceil(PAGE) {
        let n = usize::try_from((len - index * PAGE).min(PAGE)).unwrap_or(0);
        file.read_exact_at(&mut page[..n], index * PAGE).ok()?;
        if page[..n].iter().all(|b| *b == 0) {
            return Some(index);
        }
    }
    None
}

fn body<T: DeserializeOwned>(req: &MatchedRequest) -> Result<T, Reply> {
    let value = req
        .body
        .clone()
        .ok_or_else(|| bad("The body of the request is empty."))?;
    serde_json::from_value(value).map_err(|e| {
        bad(format!(
            "An error occurred when deserializing the json body of a request: {e}."
        ))
    })
}

fn to_json<T: Serialize>(value: &T) -> Result<Value, Reply> {
    serde_json::to_value(value).map_err(|e| Reply::fault(500, format!("fake-firecracker: {e}")))
}

fn check_path_id(req: &MatchedRequest, param: &str, body_id: &str) -> Result<(), Reply> {
    match req.path_params.get(param) {
        Some(id) if id == body_id => Ok(()),
        _ => Err(bad(ID_MISMATCH)),
    }
}
