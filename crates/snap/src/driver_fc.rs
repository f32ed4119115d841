//! The `firecracker` driver: the warm Bazel server lives in a microVM snapshot.
//!
//! Record boots a VM from `--kernel` and a private copy-on-write copy of `--rootfs`, waits for
//! the guest agent (vsock, no NIC), brings the base commit in as a `git bundle`, runs
//! `bazel-diff warmup` in the guest, pauses, snapshots (Full) into the staging entry and adds
//! the VM's disk (`rootfs.ext4`) beside it. Consume restores that snapshot into a fresh run
//! directory holding its own clone of the disk under the recorded *relative* name (finding
//! F1: the entry's disk is never opened read-write), resyncs the guest clock and entropy,
//! checks the Bazel server survived, brings base and target in as a bundle and hashes them
//! in the guest. Every failure is an error, which consume reports as exit 2 (cold fallback).
//!
//! `record --diff-from REV|auto` restores an existing entry instead of booting (a warm start:
//! the server re-analyses only what changed), with dirty page tracking, and takes a Diff
//! snapshot: the entry stores only the dirtied pages and names its parent (see
//! `driver_fc_mem`). Restores lay the chain's memory files over each other (uffd backend,
//! no copy) or merge them into the run directory (file backend). With the uffd backend the
//! pages a restore touched are saved beside the store and prefetched by the next restore.
//! With `--jailer`, every VM runs in its own chroot (see `driver_fc_jail`).
//!
//! Test-only: `BAZEL_DIFF_SNAP_FC_SKIP_KVM_CHECK=1` skips the `/dev/kvm` check so the
//! `fake-firecracker` binary can stand in for Firecracker on hosts without KVM. Nothing else
//! changes; never set it in production.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use bazel_diff_agent::protocol::WriteFileRequest;
use bazel_diff_agent::{Client as Agent, Endpoint, ExecRequest};
use bazel_diff_firecracker::RunDir;
use bazel_diff_firecracker::{
    BackendType, BootSource, Client, Drive, EntropyDevice, JailerConfig, LogLevel, Logger,
    MachineConfiguration, Metrics, SnapshotCreateParams, SnapshotLoadParams, SnapshotType,
    VmConfig, VmProcess, Vsock,
};
use bazel_diff_remote::LazyPages;
use bazel_diff_uffd::PageSource;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::context::Context as Ctx;
use crate::driver::{ConsumeHashes, ConsumePlan, Driver, Unavailable};
use crate::driver_fc_jail::{JailOptions, VmFiles};
use crate::driver_fc_mem::{self, Parent, MEM_FILE, STATE_FILE};

/// Bumped whenever what an entry holds or how it is restored changes (part of the key).
const LAYOUT: &str = "bazel-diff-snap firecracker layout 1";
/// No `root=`: Firecracker adds it for the root device (finding F28).
const BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off";
const GUEST_CID: u32 = 3;
const VSOCK_UDS: &str = "v.sock";
const ROOTFS: &str = "rootfs.ext4";
/// Test-only override of the `/dev/kvm` check (see the module docs).
pub const SKIP_KVM_ENV: &str = "BAZEL_DIFF_SNAP_FC_SKIP_KVM_CHECK";

const BOOT_READY: Duration = Duration::from_secs(120);
const RESTORE_READY: Duration = Duration::from_secs(30);
const GIT_TIMEOUT: Duration = Duration::from_secs(600);
const INFO_TIMEOUT: Duration = Duration::from_secs(300);
const HASH_TIMEOUT: Duration = Duration::from_secs(3 * 3600);
const MAX_HASH_FILE: u64 = 4 << 30;
/// `--diff-from auto` looks this far back for a parent (consume's default reach).
const AUTO_PARENT_MAX_DISTANCE: u64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MemoryBackend {
    /// Firecracker maps the entry's memory file privately (lazy, page cache backed).
    File,
    /// A userfaultfd handler (bazel-diff-uffd) serves the memory file, with working-set
    /// prefetch when the entry has one.
    Uffd,
}

/// Everything the driver needs from the command line.
#[derive(Debug, Clone)]
pub struct FcOptions {
    pub firecracker: PathBuf,
    pub kernel: Option<PathBuf>,
    pub rootfs: Option<PathBuf>,
    pub vcpus: u32,
    pub mem_mib: u64,
    /// Run every VM through the jailer, in its own chroot.
    pub jail: Option<JailOptions>,
    pub guest_workspace: String,
    pub guest_bazel: String,
    pub guest_bazel_diff: String,
    pub agent_port: u32,
    pub memory_backend: MemoryBackend,
    /// The store root (for the digest cache, which key_material needs before a Context).
    pub store: PathBuf,
    /// Flags for every bazel-diff hashing call in the guest.
    pub flags: Vec<String>,
    /// Record: restore this entry (a base commit, or `auto` for the nearest recorded
    /// ancestor) and snapshot only the pages dirtied since (a Diff entry).
    pub diff_from: Option<String>,
    /// Record: a Diff that would make a chain longer than this is recorded Full instead.
    pub max_diff_chain: u32,
}

pub struct FirecrackerDriver {
    opts: FcOptions,
}

impl FirecrackerDriver {
    pub fn new(opts: FcOptions) -> Self {
        FirecrackerDriver { opts }
    }

    fn kernel(&self) -> Result<PathBuf, Unavailable> {
        let kernel =
            self.opts.kernel.as_ref().ok_or_else(|| {
                Unavailable("--kernel is required by the firecracker driver".into())
            })?;
        std::path::absolute(kernel)
            .map_err(|e| Unavailable(format!("resolving {}: {e}", kernel.display())))
    }

    fn rootfs(&self) -> Result<PathBuf, Unavailable> {
        let path = match &self.opts.rootfs {
            Some(p) => p.clone(),
            // Upstream's convention: rootfs.base.ext4 beside the kernel.
            None => self
                .kernel()?
                .parent()
                .map(|d| d.join("rootfs.base.ext4"))
                .ok_or_else(|| Unavailable("--kernel has no directory".into()))?,
        };
        std::path::absolute(&path)
            .map_err(|e| Unavailable(format!("resolving {}: {e}", path.display())))
    }

    fn firecracker_version(&self) -> Result<String, Unavailable> {
        let out = Command::new(&self.opts.firecracker)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                Unavailable(format!(
                    "cannot run {} --version: {e}",
                    self.opts.firecracker.display()
                ))
            })?;
        if !out.status.success() {
            return Err(Unavailable(format!(
                "{} --version failed with {}",
                self.opts.firecracker.display(),
                out.status
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn vm_config(&self, id: &str, lifetime: Duration) -> VmConfig {
        let mut config = VmConfig::new(&self.opts.firecracker);
        config.id = Some(id.to_owned());
        config.lifetime = Some(lifetime);
        config.jailer = self.opts.jail.as_ref().map(|jail| {
            let mut jailer = JailerConfig::new(&jail.jailer, jail.uid, jail.gid);
            jailer.chroot_base_dir = jail.chroot_base.clone();
            jailer
        });
        config
    }

    /// Starts Firecracker (through the jailer with `--jailer`) and configures its logger and
    /// metrics; returns the process, its client and where its files go.
    fn spawn(
        &self,
        run: RunDir,
        id: &str,
        lifetime: Duration,
    ) -> Result<(VmProcess, Client, VmFiles)> {
        let process = VmProcess::spawn(&self.vm_config(id, lifetime), run)
            .with_context(|| format!("starting firecracker (VM {id})"))?;
        let files = match (process.jail_root(), &self.opts.jail) {
            (Some(root), Some(jail)) => VmFiles::Jail {
                root: root.to_path_buf(),
                uid: jail.uid,
                gid: jail.gid,
            },
            _ => VmFiles::Direct {
                run: process.run_dir().path().to_path_buf(),
            },
        };
        // sun_path holds 108 bytes with the NUL; uffd.sock is the longest name we bind.
        let longest = files.host("uffd.sock");
        if longest.as_os_str().len() > 107 {
            bail!(
                "{} is too long for a unix socket path (108 bytes): use a shorter store or \
                 --chroot-base",
                longest.display()
            );
        }
        let api = process.client();
        api.put_logger(&Logger {
            level: Some(LogLevel::Info),
            log_path: Some(files.touch(RunDir::LOG)?),
            show_level: Some(true),
            show_log_origin: Some(false),
            module: None,
        })
        .with_context(|| format!("PUT /logger (VM {id})"))?;
        api.put_metrics(&Metrics {
            metrics_path: files.touch(RunDir::METRICS)?,
            emit_id: None,
            properties: None,
        })
        .with_context(|| format!("PUT /metrics (VM {id})"))?;
        Ok((process, api, files))
    }

    fn endpoint(&self, files: &VmFiles) -> Endpoint {
        Endpoint::HybridVsock {
            uds_path: files.host(VSOCK_UDS),
            port: self.opts.agent_port,
        }
    }

    fn hashing_argv(&self, sub: &str) -> Vec<String> {
        let mut argv = vec![
            self.opts.guest_bazel_diff.clone(),
            sub.to_owned(),
            "-w".into(),
            self.opts.guest_workspace.clone(),
            "-b".into(),
            self.opts.guest_bazel.clone(),
        ];
        argv.extend(self.opts.flags.iter().cloned());
        argv
    }

    fn server_pid(&self, agent: &mut Agent) -> Result<String> {
        let out = guest_run(
            agent,
            vec![
                self.opts.guest_bazel.clone(),
                "info".into(),
                "server_pid".into(),
            ],
            Some(&self.opts.guest_workspace),
            INFO_TIMEOUT,
            "bazel info server_pid",
        )?;
        Ok(String::from_utf8_lossy(&out).trim().to_owned())
    }

    /// Brings `commits` into the guest repository through a bundle (no network), excluding
    /// what `known` (a commit the guest has) already covers.
    fn sync_commits(
        &self,
        ctx: &Ctx,
        agent: &mut Agent,
        gtmp: &str,
        commits: &[&str],
        known: Option<&str>,
    ) -> Result<Value> {
        let nonce = nonce();
        let mut wanted = Vec::new();
        for commit in commits {
            let covered = match known {
                Some(k) => ctx.repo.is_ancestor(commit, k).unwrap_or(false),
                None => false,
            };
            if !covered && !wanted.contains(commit) {
                wanted.push(*commit);
            }
        }
        if wanted.is_empty() {
            return Ok(json!({ "bundle_bytes": 0 }));
        }
        let prefix = format!("refs/bazel-diff-snap/{nonce}");
        let refs = TempRefs::create(&ctx.worktree, &prefix, &wanted)?;
        let bundle = ctx.work.join(format!("bundle-{nonce}.bundle"));
        let _remove = RemoveOnDrop(bundle.clone());
        let mut args: Vec<String> = vec!["bundle".into(), "create".into(), "--quiet".into()];
        args.push(bundle.to_string_lossy().into_owned());
        args.extend(refs.names.iter().cloned());
        if let Some(k) = known {
            args.push("--not".into());
            args.push(k.to_owned());
        }
        host_git(&ctx.worktree, &args)?;
        drop(refs);
        let bytes = std::fs::metadata(&bundle)?.len();
        let guest_bundle = format!("{gtmp}/commits.bundle");
        let mut file =
            File::open(&bundle).with_context(|| format!("opening {}", bundle.display()))?;
        agent
            .write_file_from(
                &WriteFileRequest {
                    path: guest_bundle.clone(),
                    mode: 0o600,
                    create_dirs: true,
                },
                &mut file,
            )
            .context("writing the git bundle into the guest")?;
        guest_run(
            agent,
            vec![
                "git".into(),
                "fetch".into(),
                "--quiet".into(),
                "--no-tags".into(),
                guest_bundle,
                format!("+{prefix}/*:{prefix}/*"),
            ],
            Some(&self.opts.guest_workspace),
            GIT_TIMEOUT,
            "git fetch of the bundle",
        )?;
        Ok(json!({ "bundle_bytes": bytes, "commits": wanted }))
    }

    fn guest_checkout(&self, agent: &mut Agent, commit: &str) -> Result<()> {
        let ws = Some(self.opts.guest_workspace.as_str());
        guest_run(
            agent,
            argv(&["git", "checkout", "--quiet", "--force", "--detach", commit]),
            ws,
            GIT_TIMEOUT,
            "git checkout",
        )?;
        guest_run(
            agent,
            argv(&["git", "clean", "-ffdxq", "-e", "/bazel-*"]),
            ws,
            GIT_TIMEOUT,
            "git clean",
        )?;
        Ok(())
    }

    /// Runs generate-hashes in the guest and copies the result to `out`.
    fn guest_hashes(&self, agent: &mut Agent, gtmp: &str, name: &str, out: &Path) -> Result<()> {
        let guest_out = format!("{gtmp}/{name}");
        let mut argv = self.hashing_argv("generate-hashes");
        argv.push(guest_out.clone());
        guest_run(
            agent,
            argv,
            None,
            HASH_TIMEOUT,
            "bazel-diff generate-hashes",
        )?;
        copy_out(agent, &guest_out, out)
    }
}

impl Driver for FirecrackerDriver {
    fn kind(&self) -> &'static str {
        "firecracker"
    }

    /// With the uffd backend, guest memory from an object store is fetched on first fault.
    fn lazy_files(&self) -> &'static [&'static str] {
        match self.opts.memory_backend {
            MemoryBackend::Uffd => &[MEM_FILE],
            MemoryBackend::File => &[],
        }
    }

    fn check_available(&self) -> Result<(), Unavailable> {
        if std::env::var(SKIP_KVM_ENV).as_deref() != Ok("1") {
            let kvm = c"/dev/kvm";
            // SAFETY: access(2) on a valid NUL-terminated path.
            let ok = unsafe { libc::access(kvm.as_ptr(), libc::R_OK | libc::W_OK) } == 0;
            if !ok {
                return Err(Unavailable(format!(
                    "/dev/kvm is not readable and writable by this user: {}",
                    std::io::Error::last_os_error()
                )));
            }
        }
        self.firecracker_version()?;
        for (what, path) in [("kernel", self.kernel()?), ("rootfs", self.rootfs()?)] {
            if !path.is_file() {
                return Err(Unavailable(format!(
                    "the {what} {} does not exist",
                    path.display()
                )));
            }
        }
        Ok(())
    }

    fn requirements(&self, key: &str, state: &Value) -> Result<Vec<bazel_diff_store::Requirement>> {
        driver_fc_mem::requirements(key, state)
    }

    fn key_material(&self) -> Result<Option<String>> {
        let version = self.firecracker_version().map_err(anyhow::Error::new)?;
        let kernel = self.kernel().map_err(anyhow::Error::new)?;
        let rootfs = self.rootfs().map_err(anyhow::Error::new)?;
        let cache = self
            .opts
            .store
            .join(".work")
            .join("firecracker-digests.json");
        let mut components = BTreeMap::new();
        components.insert("layout", LAYOUT.to_owned());
        components.insert("firecracker_version", version);
        components.insert("kernel_sha256", cached_digest(&cache, &kernel)?);
        components.insert("rootfs_sha256", cached_digest(&cache, &rootfs)?);
        components.insert("vcpus", self.opts.vcpus.to_string());
        components.insert("mem_size_mib", self.opts.mem_mib.to_string());
        components.insert("boot_args", BOOT_ARGS.to_owned());
        components.insert("host_cpu", host_cpu());
        components.insert("host_kernel", host_kernel());
        let mut h = Sha256::new();
        for (name, value) in &components {
            for part in [name.as_bytes(), value.as_bytes()] {
                h.update((part.len() as u64).to_be_bytes());
                h.update(part);
            }
        }
        let material = json!({
            "driver": "firecracker",
            "digest": hex::encode(h.finalize()),
            "components": components,
        });
        Ok(Some(material.to_string()))
    }

    fn record(&self, ctx: &Ctx, key: &str, base: &str, staging: &Path) -> Result<Value> {
        let started = Instant::now();
        let (_, host_fp) = crate::record::fingerprint_of_worktree(ctx)?;
        let version = self.firecracker_version().map_err(anyhow::Error::new)?;
        let kernel = self.kernel().map_err(anyhow::Error::new)?;
        let rootfs = self.rootfs().map_err(anyhow::Error::new)?;
        let parent = self.diff_parent(ctx, key, base)?;
        let (mut vm, mut agent, agent_version, known) = match &parent {
            None => {
                let (vm, agent, hello) = self.boot(ctx, &kernel, &rootfs)?;
                (vm, agent, hello.agent_version, None)
            }
            Some(p) => {
                let (vm, agent, hello) = self.restore(
                    ctx,
                    key,
                    &p.dir,
                    None,
                    &p.state,
                    p.snapshot_type == SnapshotType::Diff,
                )?;
                (
                    vm,
                    agent,
                    hello.agent_version,
                    Some(p.parent.base_sha.clone()),
                )
            }
        };
        let gtmp = format!("/tmp/bazel-diff-snap-{}", nonce());
        let bundle = self.sync_commits(ctx, &mut agent, &gtmp, &[base], known.as_deref())?;
        self.guest_checkout(&mut agent, base)?;
        let warm_started = Instant::now();
        let mut warmup = self.hashing_argv("warmup");
        warmup.extend([
            "--base-hashes".into(),
            format!("{gtmp}/base_hashes.json"),
            "--fingerprint-output".into(),
            format!("{gtmp}/fingerprint.json"),
        ]);
        guest_run(&mut agent, warmup, None, HASH_TIMEOUT, "bazel-diff warmup")?;
        let warmup_s = warm_started.elapsed().as_secs_f64();
        copy_out(
            &mut agent,
            &format!("{gtmp}/base_hashes.json"),
            &staging.join("base_hashes.json"),
        )?;
        let guest_fp_json = agent
            .read_file(&format!("{gtmp}/fingerprint.json"), 16 << 20)
            .context("reading the guest's fingerprint.json")?;
        let guest_fp = bazel_diff_fingerprint::Fingerprint::from_json(&String::from_utf8_lossy(
            &guest_fp_json.data,
        ))
        .context("parsing the guest's fingerprint.json")?;
        if guest_fp.fingerprint != host_fp.fingerprint {
            let why = bazel_diff_fingerprint::explain_mismatch(&host_fp, &guest_fp);
            bail!(
                "the guest's bazel-diff fingerprint {} differs from the host's {} ({}): the \
                 image's Bazel setup does not match this checkout's, so the entry's key would \
                 not describe it (finding F5)",
                guest_fp.fingerprint,
                host_fp.fingerprint,
                why.join("; ")
            );
        }
        let server_pid = self.server_pid(&mut agent)?;
        guest_run(
            &mut agent,
            argv(&["rm", "-rf", &gtmp]),
            None,
            GIT_TIMEOUT,
            "removing the guest scratch directory",
        )?;
        drop(agent);
        let snap_started = Instant::now();
        let snapshot_type = parent
            .as_ref()
            .map_or(SnapshotType::Full, |p| p.snapshot_type);
        vm.api.pause().context("pausing the VM")?;
        // Straight into the staging entry, or into the jail and moved there (under names
        // unlike the hard-linked parent files of a restore: Firecracker truncates its output).
        let jailed = matches!(vm.files, VmFiles::Jail { .. });
        let out = |name: &str| match jailed {
            false => staging.join(name).to_string_lossy().into_owned(),
            true => vm.files.api(&format!("new.{name}")),
        };
        vm.api
            .create_snapshot(&SnapshotCreateParams {
                mem_file_path: out(MEM_FILE),
                snapshot_path: out("vmstate"),
                snapshot_type: Some(snapshot_type),
            })
            .with_context(|| format!("PUT /snapshot/create (VM {})", vm.id))?;
        let api_calls = vm.api.call_count();
        vm.process
            .kill()
            .context("stopping the VM after the snapshot")?;
        if jailed {
            vm.files.take("new.mem", &staging.join(MEM_FILE))?;
            vm.files.take("new.vmstate", &staging.join("vmstate"))?;
        }
        clone_file(&vm.files.host(ROOTFS), &staging.join(ROOTFS))?;
        let zero_bytes_punched = match snapshot_type {
            SnapshotType::Full => driver_fc_mem::punch_zero_pages(&staging.join(MEM_FILE))?,
            SnapshotType::Diff => 0,
        };
        let snapshot_s = snap_started.elapsed().as_secs_f64();
        let uffd_notes = vm.finish();
        let (mem_apparent, mem_allocated) = driver_fc_mem::sizes(&staging.join(MEM_FILE))?;
        let state = json!({
            "server_pid": server_pid,
            "vcpus": self.opts.vcpus,
            "mem_size_mib": self.opts.mem_mib,
            "boot_args": BOOT_ARGS,
            "firecracker_version": version,
            "kernel": kernel,
            "rootfs": rootfs,
            "guest_workspace": self.opts.guest_workspace,
            "agent_port": self.opts.agent_port,
            "agent_version": agent_version,
            "guest_fingerprint": guest_fp.fingerprint,
            "api_calls": api_calls,
            "rootfs_copy": vm.copy_mode,
            "bundle": bundle,
            "snapshot_type": format!("{snapshot_type:?}"),
            "parent": parent.as_ref().filter(|p| p.snapshot_type == SnapshotType::Diff).map(|p| &p.parent),
            "warm_start_from": parent.as_ref().map(|p| &p.parent.base_sha),
            "uffd": uffd_notes,
            "mem_bytes": {
                "apparent": mem_apparent,
                "allocated": mem_allocated,
                "zero_pages_punched": zero_bytes_punched,
            },
            "timings": {
                "start_to_agent_s": vm.ready_s,
                "warmup_s": warmup_s,
                "snapshot_s": snapshot_s,
                "total_s": started.elapsed().as_secs_f64(),
            },
        });
        std::fs::write(staging.join(STATE_FILE), serde_json::to_vec_pretty(&state)?)
            .context("writing firecracker.json into the staging entry")?;
        Ok(state)
    }

    fn consume(&self, ctx: &Ctx, plan: &ConsumePlan<'_>) -> Result<ConsumeHashes> {
        let state = read_state(plan.entry_dir)?;
        let (mut vm, mut agent, _) = self.restore(
            ctx,
            plan.fingerprint,
            plan.entry_dir,
            plan.lazy,
            &state,
            false,
        )?;
        let recorded_pid = state["server_pid"].as_str().unwrap_or_default().to_owned();
        let server_pid = self.server_pid(&mut agent)?;
        let warm_state_lost = server_pid != recorded_pid;
        if warm_state_lost {
            eprintln!(
                "bazel-diff-snap: warm state lost: the guest's Bazel server is {server_pid}, the snapshot recorded {recorded_pid}"
            );
        }
        let gtmp = format!("/tmp/bazel-diff-snap-{}", nonce());
        let hash_started = Instant::now();
        let bundle = self.sync_commits(
            ctx,
            &mut agent,
            &gtmp,
            &[plan.target, plan.base],
            Some(plan.entry_base),
        )?;
        let base = if plan.base == plan.entry_base {
            plan.entry_dir.join("base_hashes.json")
        } else {
            self.guest_checkout(&mut agent, plan.base)?;
            let path = plan.scratch.join("base_hashes.json");
            self.guest_hashes(&mut agent, &gtmp, "base_hashes.json", &path)
                .context("hashing the requested base in the guest")?;
            path
        };
        self.guest_checkout(&mut agent, plan.target)?;
        let target = plan.scratch.join("target_hashes.json");
        self.guest_hashes(&mut agent, &gtmp, "target_hashes.json", &target)
            .context("hashing the target in the guest")?;
        let hash_s = hash_started.elapsed().as_secs_f64();
        // The VM is thrown away, but a guest that outlives it (tests) should not fill up.
        let _ = guest_run(
            &mut agent,
            argv(&["rm", "-rf", &gtmp]),
            None,
            GIT_TIMEOUT,
            "removing the guest scratch directory",
        );
        drop(agent);
        let api_calls = vm.api.call_count();
        let _ = vm.process.kill();
        let uffd_notes = vm.finish();
        Ok(ConsumeHashes {
            base,
            target,
            notes: json!({
                "base_hashes_from": if plan.base == plan.entry_base { "entry" } else { "guest" },
                "warm_state_lost": warm_state_lost,
                "vm_id": vm.id,
                "run_dir": vm.process.run_dir().path(),
                "jailed": matches!(vm.files, VmFiles::Jail { .. }),
                "server_pid": server_pid,
                "recorded_server_pid": recorded_pid,
                "clock_step_ns": vm.clock_step_ns,
                "clock_dry_run": vm.clock_dry_run,
                "api_calls": api_calls,
                "rootfs_copy": vm.copy_mode,
                "memory_backend": format!("{:?}", self.opts.memory_backend).to_lowercase(),
                "memory": vm.memory,
                "uffd": uffd_notes,
                "bundle": bundle,
                "timings": {
                    "prepare_s": vm.prepare_s,
                    "load_s": vm.load_s,
                    "agent_ready_s": vm.ready_s,
                    "hash_s": hash_s,
                },
            }),
        })
    }
}

/// The entry's `firecracker.json`.
fn read_state(entry_dir: &Path) -> Result<Value> {
    serde_json::from_slice(
        &std::fs::read(entry_dir.join(STATE_FILE))
            .context("reading the entry's firecracker.json")?,
    )
    .context("parsing the entry's firecracker.json")
}

/// A running VM of this driver, and what starting it cost.
struct RunningVm {
    /// Firecracker's `--id`, unique per VM (pid and time).
    id: String,
    process: VmProcess,
    api: Client,
    files: VmFiles,
    uffd: Option<UffdServer>,
    copy_mode: &'static str,
    /// How the guest memory was provided (restores).
    memory: Value,
    prepare_s: f64,
    load_s: f64,
    ready_s: f64,
    clock_step_ns: String,
    clock_dry_run: bool,
}

impl RunningVm {
    /// Ends the VM (if still running), then waits for the uffd handler, which stops when
    /// Firecracker is gone; the handler's report.
    fn finish(&mut self) -> Value {
        let _ = self.process.kill();
        self.uffd.take().map_or(Value::Null, UffdServer::finish)
    }
}

/// The entry a `--diff-from` record restores, and what it records on top of it.
struct DiffParent {
    dir: PathBuf,
    state: Value,
    parent: Parent,
    /// Diff, or Full when the chain would grow past `--max-diff-chain` (a rebase).
    snapshot_type: SnapshotType,
    _reader: bazel_diff_store::EntryReader,
}

impl FirecrackerDriver {
    /// The entry `--diff-from` names (`auto`: the nearest recorded ancestor of `base`).
    fn diff_parent(&self, ctx: &Ctx, key: &str, base: &str) -> Result<Option<DiffParent>> {
        let Some(from) = self.opts.diff_from.as_deref() else {
            return Ok(None);
        };
        let parent_base = if from == "auto" {
            // Through the backend: on an object store, the parent may be on another host.
            let candidates: Vec<String> = ctx
                .backend
                .entries_for(key)?
                .iter()
                .filter_map(|e| e.metadata())
                .filter(|m| m.driver == "firecracker" && m.base_sha != base)
                .map(|m| m.base_sha.clone())
                .collect();
            match crate::resolve::resolve(&ctx.repo, &candidates, base, AUTO_PARENT_MAX_DISTANCE)?
                .choice
            {
                Some(choice) => choice.entry_base,
                None => {
                    eprintln!(
                        "bazel-diff-snap: --diff-from auto: no entry of this key is an ancestor of {base}; recording a Full snapshot"
                    );
                    return Ok(None);
                }
            }
        } else {
            ctx.repo.commit(from)?
        };
        let entry_key = bazel_diff_store::EntryKey::new(key, &parent_base)?;
        // Fetched (with its own parents) when the store is an object store.
        let (reader, _) = ctx.backend.open_entry(&entry_key).with_context(|| {
            format!("--diff-from {from}: no usable entry for {parent_base} under this key")
        })?;
        let problems = reader.verify()?;
        if !problems.is_empty() {
            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
            bail!(
                "--diff-from {from}: the entry {} is corrupt: {}",
                reader.path().display(),
                list.join("; ")
            );
        }
        let state = read_state(reader.path())?;
        let mem_sha256 = reader
            .metadata()
            .files
            .get(MEM_FILE)
            .map(|f| f.sha256.clone())
            .context("the parent entry lists no memory file")?;
        let chain = Parent::of_state(&state)?.map_or(0, |p| p.chain) + 1;
        let snapshot_type = if chain > self.opts.max_diff_chain {
            eprintln!(
                "bazel-diff-snap: the Diff chain would be {chain} long (--max-diff-chain {}): recording a Full snapshot from the restored VM",
                self.opts.max_diff_chain
            );
            SnapshotType::Full
        } else {
            SnapshotType::Diff
        };
        Ok(Some(DiffParent {
            dir: reader.path().to_path_buf(),
            state,
            parent: Parent {
                base_sha: parent_base,
                mem_sha256,
                chain,
            },
            snapshot_type,
            _reader: reader,
        }))
    }

    /// Boots a fresh VM on a private copy of `rootfs` and waits for the agent.
    fn boot(
        &self,
        ctx: &Ctx,
        kernel: &Path,
        rootfs: &Path,
    ) -> Result<(RunningVm, Agent, bazel_diff_agent::protocol::Hello)> {
        let id = format!("bds-rec-{}", nonce());
        let (process, api, files) =
            self.spawn(new_run_dir(ctx, "rec")?, &id, Duration::from_secs(6 * 3600))?;
        let prepare_started = Instant::now();
        let copy_mode = clone_file(rootfs, &files.host(ROOTFS))?;
        files.own(&files.host(ROOTFS))?;
        let kernel_path = files.expose(kernel, "vmlinux")?;
        let prepare_s = prepare_started.elapsed().as_secs_f64();
        api.set_memory_size_mib(self.opts.mem_mib);
        api.put_machine_config(&MachineConfiguration::new(
            self.opts.vcpus,
            self.opts.mem_mib,
        ))
        .context("PUT /machine-config")?;
        api.put_boot_source(&BootSource {
            kernel_image_path: kernel_path,
            boot_args: Some(BOOT_ARGS.to_owned()),
            initrd_path: None,
        })
        .context("PUT /boot-source")?;
        // Relative: every restore reopens the clone in its own run directory or jail (F1).
        api.put_drive(&Drive::file("rootfs", ROOTFS, true, false))
            .context("PUT /drives/rootfs")?;
        api.put_vsock(&Vsock {
            guest_cid: GUEST_CID,
            uds_path: VSOCK_UDS.to_owned(),
        })
        .context("PUT /vsock")?;
        api.put_entropy(&EntropyDevice::default())
            .context("PUT /entropy")?;
        api.instance_start().context("InstanceStart")?;
        let boot_started = Instant::now();
        let (agent, hello) = Agent::wait_ready(&self.endpoint(&files), Instant::now() + BOOT_READY)
            .with_context(|| format!("waiting for the guest agent after boot (VM {id})"))?;
        let vm = RunningVm {
            id,
            process,
            api,
            files,
            uffd: None,
            copy_mode,
            memory: Value::Null,
            prepare_s,
            load_s: 0.0,
            ready_s: boot_started.elapsed().as_secs_f64(),
            clock_step_ns: "0".into(),
            clock_dry_run: false,
        };
        Ok((vm, agent, hello))
    }

    /// Restores the entry at `entry_dir` (and its Diff parents) into a fresh VM with its own
    /// clone of the disk, resumes it, and resyncs the guest's clock and entropy. With
    /// `lazy`, `entry_dir` lacks the memory file, which the uffd handler serves from the
    /// object store. With `track_dirty`, the VM tracks dirty pages for a Diff snapshot on
    /// top of this entry.
    fn restore(
        &self,
        ctx: &Ctx,
        key: &str,
        entry_dir: &Path,
        lazy: Option<&bazel_diff_remote::LazyEntry>,
        state: &Value,
        track_dirty: bool,
    ) -> Result<(RunningVm, Agent, bazel_diff_agent::protocol::Hello)> {
        let mem_mib = state["mem_size_mib"].as_u64().unwrap_or(self.opts.mem_mib);
        let chain = driver_fc_mem::memory_chain(&ctx.store, key, entry_dir, state)?;
        // A Diff entry's memory is layered over its parents' files: download it after all.
        let lazy = match lazy {
            Some(lazy) if chain.is_diff() => {
                lazy.fetch(MEM_FILE)
                    .context("downloading the Diff entry's memory file")?;
                None
            }
            other => other,
        };
        let ws_path = self.working_set_path(ctx, key, entry_dir)?;
        let id = format!("bds-con-{}", nonce());
        let (process, api, files) =
            self.spawn(new_run_dir(ctx, "con")?, &id, Duration::from_secs(4 * 3600))?;
        let prepare_started = Instant::now();
        // Never opened read-write: the VM writes to its own clone (F1).
        let copy_mode = clone_file(&entry_dir.join(ROOTFS), &files.host(ROOTFS))?;
        files.own(&files.host(ROOTFS))?;
        let (backend, backend_path, uffd, memory) = match self.opts.memory_backend {
            MemoryBackend::File if !chain.is_diff() => (
                BackendType::File,
                files.expose(&chain.layers[0], MEM_FILE)?,
                None,
                json!({ "layers": 1 }),
            ),
            MemoryBackend::File => {
                let merged = files.host("mem.merged");
                let mode = driver_fc_mem::merge_into(&chain.layers, &merged)?;
                files.own(&merged)?;
                let memory = json!({ "layers": chain.layers.len(), "merged": mode });
                (BackendType::File, files.api("mem.merged"), None, memory)
            }
            MemoryBackend::Uffd => {
                let (mem, memory, lazy) = match lazy {
                    Some(lazy) => {
                        let pages = Arc::new(
                            lazy.pages(MEM_FILE, &lazy.dir)
                                .context("opening the memory file on the object store")?,
                        );
                        let memory = json!({ "layers": 1, "lazy": true });
                        (pages.clone() as Arc<dyn PageSource>, memory, Some(pages))
                    }
                    None => {
                        let (mem, memory) = uffd_memory(&chain, &files)?;
                        (mem as Arc<dyn PageSource>, memory, None)
                    }
                };
                let socket = files.host("uffd.sock");
                let server = UffdServer::start(&socket, mem, lazy, ws_path)?;
                // The jailed Firecracker must be able to connect.
                files.own(&socket)?;
                (
                    BackendType::Uffd,
                    files.api("uffd.sock"),
                    Some(server),
                    memory,
                )
            }
        };
        let vmstate = files.expose(&entry_dir.join("vmstate"), "vmstate")?;
        let prepare_s = prepare_started.elapsed().as_secs_f64();
        api.set_memory_size_mib(mem_mib);
        let mut load = SnapshotLoadParams::new(vmstate, backend, backend_path);
        load.resume_vm = Some(true);
        if track_dirty {
            // Firecracker < 1.13 rejects `track_dirty_pages` (400, unknown field) and knows
            // only `enable_diff_snapshots`, which later ones still take.
            let version = self.firecracker_version().map_err(anyhow::Error::new)?;
            if takes_track_dirty_pages(&version) {
                load.track_dirty_pages = Some(true);
            } else {
                load.enable_diff_snapshots = Some(true);
            }
        }
        let load_started = Instant::now();
        let mut vm = RunningVm {
            id,
            process,
            api,
            files,
            uffd,
            copy_mode,
            memory,
            prepare_s,
            load_s: 0.0,
            ready_s: 0.0,
            clock_step_ns: String::new(),
            clock_dry_run: false,
        };
        vm.api
            .load_snapshot(&load)
            .with_context(|| format!("PUT /snapshot/load (VM {})", vm.id))?;
        vm.load_s = load_started.elapsed().as_secs_f64();
        let ready_started = Instant::now();
        let (mut agent, hello) =
            Agent::wait_ready(&self.endpoint(&vm.files), Instant::now() + RESTORE_READY)
                .with_context(|| {
                    format!(
                        "waiting for the guest agent after the restore (VM {})",
                        vm.id
                    )
                })?;
        vm.ready_s = ready_started.elapsed().as_secs_f64();
        let clock = agent
            .sync_clock()
            .context("setting the guest clock after the restore")?;
        vm.clock_step_ns = clock.step_nanos().to_string();
        vm.clock_dry_run = clock.dry_run;
        let mut seed = [0u8; 64];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .context("reading host entropy")?;
        agent
            .reseed(&seed)
            .context("reseeding the guest after the restore")?;
        Ok((vm, agent, hello))
    }

    /// Where the pages a restore of this entry touched are kept for the next one's prefetch:
    /// outside the entry (whose file list is fixed at publication), named by the entry's
    /// memory digest so a re-recorded entry never gets a stale set.
    fn working_set_path(&self, ctx: &Ctx, key: &str, entry_dir: &Path) -> Result<PathBuf> {
        let meta: bazel_diff_store::Metadata = serde_json::from_slice(
            &std::fs::read(entry_dir.join(bazel_diff_store::METADATA_FILE))
                .context("reading the entry's metadata")?,
        )
        .context("parsing the entry's metadata")?;
        let digest = meta
            .files
            .get(MEM_FILE)
            .map(|f| f.sha256.clone())
            .context("the entry lists no memory file")?;
        Ok(ctx
            .store
            .root()
            .join(".work")
            .join("firecracker-workingsets")
            .join(key)
            .join(format!("{}-{}.workingset", meta.base_sha, &digest[..16])))
    }
}

/// The guest memory a uffd handler serves: the entry's file, or a Diff chain layered in one
/// mapping (merged into a file in the run directory when it has too many extents for that).
fn uffd_memory(
    chain: &driver_fc_mem::MemoryChain,
    files: &VmFiles,
) -> Result<(Arc<bazel_diff_uffd::MemoryFile>, Value)> {
    use bazel_diff_uffd::MemoryFile;
    let Some((root, diffs)) = chain.layers.split_first() else {
        bail!("an empty memory chain");
    };
    if diffs.is_empty() {
        let mem = MemoryFile::open(root).context("opening the memory file")?;
        return Ok((Arc::new(mem), json!({ "layers": 1 })));
    }
    match MemoryFile::layered(root, diffs) {
        Ok(mem) => Ok((
            Arc::new(mem),
            json!({ "layers": chain.layers.len(), "merged": false }),
        )),
        Err(e) => {
            tracing::info!("layering the Diff chain failed ({e}); merging it into one file");
            let merged = files.host("mem.merged");
            let mode = driver_fc_mem::merge_into(&chain.layers, &merged)?;
            let mem = MemoryFile::open(&merged).context("opening the merged memory file")?;
            Ok((
                Arc::new(mem),
                json!({ "layers": chain.layers.len(), "merged": mode, "why": e.to_string() }),
            ))
        }
    }
}

/// A uffd handler serving guest memory to one restore; it prefetches the working set the
/// previous restore of the entry saved and saves this one's when the VM is gone.
struct UffdServer {
    thread: std::thread::JoinHandle<Result<Value, String>>,
    /// Set once the handshake is accepted.
    stop: std::sync::mpsc::Receiver<bazel_diff_uffd::StopHandle>,
    /// The memory file when it is fetched on first fault, for what that cost.
    lazy: Option<Arc<LazyPages>>,
}

/// How long [`UffdServer::finish`] waits for the handler to notice Firecracker's exit
/// (through its pidfd, normally at once) before stopping it.
const UFFD_EXIT_GRACE: Duration = Duration::from_secs(5);

impl UffdServer {
    fn start(
        socket: &Path,
        mem: Arc<dyn PageSource>,
        lazy: Option<Arc<LazyPages>>,
        ws_path: PathBuf,
    ) -> Result<UffdServer> {
        use bazel_diff_uffd::{Handler, Policy, UffdListener, WorkingSet};
        let listener = UffdListener::bind(socket).context("binding the uffd socket")?;
        if let Some(dir) = ws_path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let (stop_tx, stop) = std::sync::mpsc::channel();
        let lazy_chunk = lazy.as_ref().map(|pages| pages.chunk_bytes());
        let thread = std::thread::spawn(move || {
            let run = || -> bazel_diff_uffd::Result<Value> {
                let handshake = listener.accept(Duration::from_secs(60))?;
                let mut policy = Policy::default();
                if let Some(chunk) = lazy_chunk {
                    // One remote chunk per fault: a vCPU waits for one download, not eight.
                    policy.chunk_bytes = chunk;
                }
                let mut handler = Handler::new(handshake, mem, policy)?;
                let _ = stop_tx.send(handler.stop_handle());
                let prefetched = match WorkingSet::load(&ws_path) {
                    Ok(ws) => {
                        handler = handler.with_prefetch(&ws)?;
                        Some(ws.bytes())
                    }
                    Err(_) => None,
                };
                let outcome = handler.run()?;
                let saved = match &outcome.working_set {
                    Some(ws) if ws.pages() > 0 => {
                        ws.save(&ws_path)?;
                        Some(ws.bytes())
                    }
                    _ => None,
                };
                Ok(json!({
                    "stats": format!("{:?}", outcome.stats),
                    "prefetched_bytes": prefetched,
                    "working_set_saved_bytes": saved,
                    "working_set": ws_path,
                }))
            };
            run().map_err(|e| e.to_string())
        });
        Ok(UffdServer { thread, stop, lazy })
    }

    /// Waits for the handler (call once the VM is gone) and returns its report.
    fn finish(self) -> Value {
        self.finish_within(UFFD_EXIT_GRACE)
    }

    fn finish_within(self, grace: Duration) -> Value {
        let deadline = Instant::now() + grace;
        while !self.thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !self.thread.is_finished() {
            if let Ok(stop) = self.stop.try_recv() {
                tracing::warn!("the uffd handler did not see the VM exit; stopping it");
                stop.stop();
            }
        }
        let mut report = match self.thread.join() {
            Ok(Ok(report)) => report,
            Ok(Err(e)) => json!({ "error": e }),
            Err(_) => json!({ "error": "the uffd handler panicked" }),
        };
        if let (Some(pages), Some(fields)) = (&self.lazy, report.as_object_mut()) {
            let stats = pages.stats();
            fields.insert(
                "lazy_memory".into(),
                json!({
                    "file_bytes": pages.len(),
                    "fetched_chunks": stats.fetched,
                    "fetched_bytes": stats.fetched_bytes,
                    "cached_chunks": stats.from_cache,
                    "served_bytes": stats.logical_bytes,
                }),
            );
        }
        report
    }
}

fn argv(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

/// Runs a command in the guest; a non-zero exit is an error quoting its stderr.
fn guest_run(
    agent: &mut Agent,
    argv: Vec<String>,
    cwd: Option<&str>,
    timeout: Duration,
    what: &str,
) -> Result<Vec<u8>> {
    let mut req = ExecRequest::new(argv);
    if let Some(cwd) = cwd {
        req = req.cwd(cwd);
    }
    tracing::debug!("guest: {:?}", req.argv);
    let out = agent
        .exec(&req, Some(Instant::now() + timeout))
        .with_context(|| format!("running {what} in the guest"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        bail!(
            "{what} failed in the guest ({}{}):\n{}",
            match (out.status.code, out.status.signal) {
                (Some(code), _) => format!("exit {code}"),
                (_, Some(sig)) => format!("signal {sig}"),
                _ => "unknown status".into(),
            },
            if out.status.timed_out {
                ", timed out"
            } else {
                ""
            },
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(out.stdout)
}

fn copy_out(agent: &mut Agent, guest: &str, host: &Path) -> Result<()> {
    let file = agent
        .read_file(guest, MAX_HASH_FILE)
        .with_context(|| format!("reading {guest} from the guest"))?;
    if file.truncated {
        bail!("{guest} in the guest is larger than {MAX_HASH_FILE} bytes");
    }
    std::fs::write(host, &file.data).with_context(|| format!("writing {}", host.display()))
}

fn host_git(dir: &Path, args: &[String]) -> Result<()> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running git {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Temporary refs (a bundle needs refs, not bare shas); deleted on drop.
struct TempRefs {
    dir: PathBuf,
    names: Vec<String>,
}

impl TempRefs {
    fn create(dir: &Path, prefix: &str, commits: &[&str]) -> Result<TempRefs> {
        let mut refs = TempRefs {
            dir: dir.to_path_buf(),
            names: Vec::new(),
        };
        for commit in commits {
            let name = format!("{prefix}/{commit}");
            host_git(
                dir,
                &["update-ref".into(), name.clone(), (*commit).to_owned()],
            )?;
            refs.names.push(name);
        }
        Ok(refs)
    }
}

impl Drop for TempRefs {
    fn drop(&mut self) {
        for name in &self.names {
            if let Err(e) = host_git(&self.dir, &["update-ref".into(), "-d".into(), name.clone()]) {
                tracing::warn!("could not delete the temporary ref {name}: {e:#}");
            }
        }
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn nonce() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{nanos:08x}", std::process::id())
}

fn new_run_dir(ctx: &Ctx, name: &str) -> Result<RunDir> {
    let parent = ctx.work.join("vm");
    std::fs::create_dir_all(&parent).with_context(|| format!("creating {}", parent.display()))?;
    RunDir::create_in(&parent, name)
        .with_context(|| format!("creating a run directory in {}", parent.display()))
}

/// Linux `FICLONE` (`_IOW(0x94, 9, int)`).
const FICLONE: libc::c_ulong = 0x4004_9409;

/// Copies `src` to the new file `dst` (mode 0600): a reflink when the filesystem can,
/// otherwise a sparse copy (holes stay holes). Returns which one it did.
pub fn clone_file(src: &Path, dst: &Path) -> Result<&'static str> {
    use std::os::fd::AsRawFd;
    let from = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)
        .with_context(|| format!("creating {}", dst.display()))?;
    // SAFETY: FICLONE takes the source descriptor as its argument; both are open files.
    let rc = unsafe { libc::ioctl(to.as_raw_fd(), FICLONE as _, from.as_raw_fd()) };
    if rc == 0 {
        return Ok("reflink");
    }
    let len = from.metadata()?.len();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos: i64 = 0;
    let end = i64::try_from(len).unwrap_or(i64::MAX);
    while pos < end {
        // SAFETY: lseek on an open descriptor.
        let data = unsafe { libc::lseek(from.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: only a hole is left
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(from.as_raw_fd(), data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { end } else { hole.min(end) };
        let mut off = data;
        while off < hole {
            let want = usize::try_from((hole - off).min(buf.len() as i64)).unwrap_or(buf.len());
            let offset = u64::try_from(off).unwrap_or(0);
            let n = from.read_at(&mut buf[..want], offset)?;
            if n == 0 {
                break;
            }
            // Zero blocks inside data extents are left as holes too.
            if buf[..n].iter().any(|b| *b != 0) {
                to.write_all_at(&buf[..n], offset)?;
            }
            off += n as i64;
        }
        pos = hole;
    }
    to.set_len(len)?;
    to.sync_all()?;
    Ok("sparse-copy")
}

/// SHA-256 of a big file, cached by path, size, mtime and inode.
fn cached_digest(cache: &Path, path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let key = format!(
        "{}\0{}\0{}.{}\0{}",
        path.display(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ino()
    );
    let mut map: BTreeMap<String, String> = std::fs::read(cache)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if let Some(hex) = map.get(&key) {
        return Ok(hex.clone());
    }
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let digest = hex::encode(h.finalize());
    map.retain(|k, _| !k.starts_with(&format!("{}\0", path.display())));
    map.insert(key, digest.clone());
    if let Some(parent) = cache.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    if let Err(e) = bazel_diff_format::write_atomic(cache, &serde_json::to_vec(&map)?) {
        tracing::warn!("could not update the digest cache {}: {e}", cache.display());
    }
    Ok(digest)
}

/// `vendor/family/model` from /proc/cpuinfo (implementer/part on arm64).
fn host_cpu() -> String {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default()
    };
    let x86 = [field("vendor_id"), field("cpu family"), field("model")];
    if x86.iter().any(|f| !f.is_empty()) {
        return x86.join("/");
    }
    [
        field("CPU implementer"),
        field("CPU architecture"),
        field("CPU part"),
    ]
    .join("/")
}

/// `major.minor` of the host kernel.
fn host_kernel() -> String {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    release
        .trim()
        .split('.')
        .take(2)
        .collect::<Vec<_>>()
        .join(".")
}

/// Whether the Firecracker of this `--version` output (`Firecracker v1.12.1`) takes
/// `track_dirty_pages` on `PUT /snapshot/load` (1.13 and later); unparsable: assume it does.
fn takes_track_dirty_pages(version: &str) -> bool {
    let Some(v) = version
        .split_whitespace()
        .filter_map(|w| w.strip_prefix('v'))
        .find(|v| v.starts_with(|c: char| c.is_ascii_digit()))
    else {
        return true;
    };
    let mut parts = v
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= (1, 13),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn clone_file_keeps_content_and_holes() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let f = File::create(&src).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(b"hello", 3 << 20).unwrap();
        f.write_all_at(b"end", (8 << 20) - 3).unwrap();
        drop(f);
        let dst = dir.path().join("dst");
        let mode = clone_file(&src, &dst).unwrap();
        assert_eq!(
            std::fs::read(&src).unwrap(),
            std::fs::read(&dst).unwrap(),
            "{mode}"
        );
        assert!(clone_file(&src, &dst).is_err(), "never overwrites");
    }

    /// The working set a restore touched is saved and prefetched by the next restore: a
    /// simulated VM (real userfaultfd, in this process) stands in for Firecracker.
    #[test]
    fn uffd_server_saves_the_working_set_and_the_next_restore_prefetches_it() {
        use bazel_diff_uffd::sim::SimulatedVm;
        let dir = tempfile::tempdir().unwrap();
        let mem_path = dir.path().join("mem");
        let f = File::create(&mem_path).unwrap();
        f.set_len(4 << 20).unwrap();
        f.write_all_at(&[7u8; 1 << 20], 1 << 20).unwrap();
        drop(f);
        let mem = Arc::new(bazel_diff_uffd::MemoryFile::open(&mem_path).unwrap());
        let ws = dir.path().join("ws").join("entry.workingset");
        let restore = |name: &str| {
            let socket = dir.path().join(name);
            let server = UffdServer::start(&socket, mem.clone(), None, ws.clone()).unwrap();
            let vm = SimulatedVm::new(&[4 << 20]).unwrap();
            let _stream = vm.connect(&socket).unwrap();
            assert_eq!(vm.read_byte((1 << 20) + 5), 7);
            assert_eq!(vm.read_byte(3 << 20), 0);
            // The "VM" is this process, which never exits: the grace runs out, then stop.
            server.finish_within(Duration::from_millis(50))
        };
        let first = restore("a.sock");
        assert!(first["prefetched_bytes"].is_null(), "{first:#}");
        assert!(
            first["working_set_saved_bytes"].as_u64().unwrap() > 0,
            "{first:#}"
        );
        assert!(ws.is_file());
        let second = restore("b.sock");
        assert!(
            second["prefetched_bytes"].as_u64().unwrap() > 0,
            "{second:#}"
        );
    }

    #[test]
    fn dirty_tracking_field_follows_the_firecracker_version() {
        assert!(!takes_track_dirty_pages("Firecracker v1.12.1"));
        assert!(!takes_track_dirty_pages("Firecracker v1.7.0\n"));
        assert!(takes_track_dirty_pages("Firecracker v1.13.0"));
        assert!(takes_track_dirty_pages("Firecracker v1.17.0-dev (fake)"));
        assert!(takes_track_dirty_pages("Firecracker v2.0.0"));
        assert!(takes_track_dirty_pages("something else"));
    }

    #[test]
    fn host_facts_are_present() {
        assert!(host_kernel().contains('.'));
        assert!(host_cpu().contains('/'));
    }
}
