//! Request and response bodies of the Firecracker API, named field for field and value for
//! value as in `firecracker-api.yaml` (swagger `1.17.0-dev`). Optional fields are left out of
//! the JSON when `None`, as Firecracker then applies its documented default. The fake server
//! checks every body these types produce against the swagger file, so a renamed field or
//! enum value fails the tests.
//!
//! Deprecated fields (`Vsock.vsock_id`, `SnapshotLoadParams.mem_file_path`) are left out on
//! purpose: `mem_backend` replaces the latter.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `BootSource`: `PUT /boot-source`, pre-boot only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BootSource {
    pub kernel_image_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// `Drive.cache_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    Unsafe,
    Writeback,
}

/// `Drive.io_engine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    Sync,
    Async,
}

/// `TokenBucket`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBucket {
    pub size: u64,
    pub refill_time: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
}

/// `RateLimiter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RateLimiter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

/// `Drive`: `PUT /drives/{drive_id}`, pre-boot only. The path id is `drive_id`.
///
/// `path_on_host` may be relative: Firecracker resolves it against its working directory
/// (the run directory, or the jail's root), and the vmstate records it as given, which is what
/// lets every restore reopen *its own* copy of the disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Drive {
    pub drive_id: String,
    pub is_root_device: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    /// vhost-user-block backend socket (then `path_on_host` and `is_read_only` are omitted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

impl Drive {
    /// A virtio-block drive backed by a file.
    pub fn file(
        drive_id: impl Into<String>,
        path_on_host: impl Into<String>,
        is_root_device: bool,
        is_read_only: bool,
    ) -> Drive {
        Drive {
            drive_id: drive_id.into(),
            is_root_device,
            is_read_only: Some(is_read_only),
            path_on_host: Some(path_on_host.into()),
            ..Drive::default()
        }
    }
}

/// `PartialDrive`: `PATCH /drives/{drive_id}`, post-boot only (swap a drive's backing file
/// before the guest mounts it, or change its rate limiter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PartialDrive {
    pub drive_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// `CpuTemplate` (deprecated upstream in favour of `/cpu-config`, still accepted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuTemplate {
    C3,
    T2,
    T2S,
    T2CL,
    T2A,
    V1N1,
    None,
}

/// `MachineConfiguration.huge_pages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    None,
    Transparent,
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// `MachineConfiguration`: `PUT /machine-config` (pre-boot), and `GET /machine-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfiguration {
    /// 1 to 32; with `smt`, 1 or even.
    pub vcpu_count: u32,
    pub mem_size_mib: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// Needed for `Diff` snapshots that carry only the pages dirtied since the last snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
}

impl MachineConfiguration {
    pub fn new(vcpu_count: u32, mem_size_mib: u64) -> MachineConfiguration {
        MachineConfiguration {
            vcpu_count,
            mem_size_mib,
            smt: None,
            track_dirty_pages: None,
            cpu_template: None,
            huge_pages: None,
        }
    }
}

/// `NetworkInterface`: `PUT /network-interfaces/{iface_id}`, pre-boot only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NetworkInterface {
    pub iface_id: String,
    pub host_dev_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// 68 to 65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// `PartialNetworkInterface`: `PATCH /network-interfaces/{iface_id}`, post-boot only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PartialNetworkInterface {
    pub iface_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// `Vsock`: `PUT /vsock`, pre-boot only. Firecracker binds `uds_path` itself (and fails if it
/// exists); host-initiated connections send `CONNECT <port>\n` on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vsock {
    /// 3 or more (2 is the host).
    pub guest_cid: u32,
    pub uds_path: String,
}

/// `EntropyDevice`: `PUT /entropy` (virtio-rng), pre-boot only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EntropyDevice {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// `Logger.level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    Error,
    Warning,
    Info,
    Debug,
    Trace,
    Off,
}

/// `Logger`: `PUT /logger`. Firecracker opens `log_path` without creating it: create the file
/// (or FIFO) first, as [`crate::RunDir::logger`] does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Logger {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// `Metrics`: `PUT /metrics`, once per process. `metrics_path` must exist already.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Metrics {
    pub metrics_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emit_id: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<BTreeMap<String, String>>,
}

/// `SerialDevice`: `PUT /serial`. Without it the serial console goes to Firecracker's stdout,
/// which [`crate::VmProcess`] captures into the run directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SerialDevice {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_out_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<TokenBucket>,
}

/// `Balloon`: `PUT /balloon` (pre-boot) and `GET /balloon`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Balloon {
    pub amount_mib: u64,
    pub deflate_on_oom: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats_polling_interval_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_page_hinting: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_page_reporting: Option<bool>,
}

/// `BalloonUpdate`: `PATCH /balloon`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonUpdate {
    pub amount_mib: u64,
}

/// `InstanceActionInfo.action_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    FlushMetrics,
    InstanceStart,
    /// x86_64 only; with `reboot=k` on the kernel command line the guest reboot makes
    /// Firecracker exit, which is the graceful shutdown.
    SendCtrlAltDel,
}

/// `InstanceActionInfo`: `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceActionInfo {
    pub action_type: ActionType,
}

/// `Vm.state`: `PATCH /vm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    Paused,
    Resumed,
}

/// `Vm`: `PATCH /vm`; repeated calls with the same state are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    pub state: VmState,
}

/// `SnapshotCreateParams.snapshot_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All guest memory; resumable on its own.
    Full,
    /// Only the pages dirtied since the last snapshot (or boot, or restore), in a sparse file.
    Diff,
}

/// `SnapshotCreateParams`: `PUT /snapshot/create`, VM must be `Paused`. Both files are
/// truncated and rewritten: always point them into a staging directory, never at a published
/// entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCreateParams {
    pub mem_file_path: String,
    pub snapshot_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_type: Option<SnapshotType>,
}

/// `MemoryBackend.backend_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendType {
    /// `backend_path` is the memory file, mapped `MAP_PRIVATE` (lazy, copy-on-write); it must
    /// stay unmodified while the VM lives.
    File,
    /// `backend_path` is the unix socket of a page-fault handler that receives the uffd.
    Uffd,
}

/// `MemoryBackend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryBackend {
    pub backend_type: BackendType,
    pub backend_path: String,
}

/// `NetworkOverride`: re-point a recorded interface at another host TAP on load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkOverride {
    pub iface_id: String,
    pub host_dev_name: String,
}

/// `VsockOverride`: bind the restored vsock device at another UDS path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VsockOverride {
    pub uds_path: String,
}

/// `SnapshotLoadParams.huge_pages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LoadHugePages {
    /// Whatever the snapshot recorded (the default).
    Snapshot,
    None,
    Transparent,
    /// Needs the `Uffd` backend.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// `SnapshotLoadParams`: `PUT /snapshot/load`, only on a fresh process (nothing configured but
/// logger and metrics). On failure Firecracker exits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotLoadParams {
    pub snapshot_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_backend: Option<MemoryBackend>,
    /// Dirty-page tracking for a later `Diff` snapshot; not persisted, pass it on every load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Deprecated (1.13) name of `track_dirty_pages`; kept for older Firecrackers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_diff_snapshots: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_vm: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_overrides: Vec<NetworkOverride>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
    /// x86_64 only: advance kvmclock by the wall time elapsed since the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_realtime: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<LoadHugePages>,
}

impl SnapshotLoadParams {
    /// Load with the given memory backend; everything else at Firecracker's defaults.
    pub fn new(
        snapshot_path: impl Into<String>,
        backend_type: BackendType,
        backend_path: impl Into<String>,
    ) -> SnapshotLoadParams {
        SnapshotLoadParams {
            snapshot_path: snapshot_path.into(),
            mem_backend: Some(MemoryBackend {
                backend_type,
                backend_path: backend_path.into(),
            }),
            track_dirty_pages: None,
            enable_diff_snapshots: None,
            resume_vm: None,
            network_overrides: Vec::new(),
            vsock_override: None,
            clock_realtime: None,
            huge_pages: None,
        }
    }
}

/// `InstanceInfo.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    #[serde(rename = "Not started")]
    NotStarted,
    Running,
    Paused,
}

/// `InstanceInfo`: `GET /`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub app_name: String,
    pub id: String,
    pub state: InstanceState,
    pub vmm_version: String,
}

/// `FirecrackerVersion`: `GET /version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirecrackerVersion {
    pub firecracker_version: String,
}

/// `FullVmConfiguration`: `GET /vm/config`. After a restore `boot-source` is absent. The parts
/// this crate has no types for are kept as raw JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct FullVmConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<Balloon>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drives: Vec<Drive>,
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSource>,
    #[serde(
        rename = "cpu-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu_config: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<Logger>,
    #[serde(
        rename = "machine-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub machine_config: Option<MachineConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    #[serde(
        rename = "memory-hotplug",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub memory_hotplug: Option<serde_json::Value>,
    #[serde(
        rename = "mmds-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub mmds_config: Option<serde_json::Value>,
    #[serde(
        rename = "network-interfaces",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pmem: Vec<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<EntropyDevice>,
}

/// `Error`: the body of every 4xx/5xx answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ApiFault {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_message: Option<String>,
}
