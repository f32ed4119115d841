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
    BackendType, BootSource, Drive, EntropyDevice, LogLevel, MachineConfiguration,
    SnapshotCreateParams, SnapshotLoadParams, SnapshotType, VmConfig, VmProcess, Vsock,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::context::Context as Ctx;
use crate::driver::{ConsumeHashes, ConsumePlan, Driver, Unavailable};

/// Bumped whenever what an entry holds or how it is restored changes (part of the key).
const LAYOUT: &str = "bazel-diff-snap firecracker layout 1";
/// No `root=`: Firecracker adds it for the root device (finding F28).
const BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off";
const GUEST_CID: u32 = 3;
const VSOCK_UDS: &str = "v.sock";
const ROOTFS: &str = "rootfs.ext4";
const STATE_FILE: &str = "firecracker.json";
/// Test-only override of the `/dev/kvm` check (see the module docs).
pub const SKIP_KVM_ENV: &str = "BAZEL_DIFF_SNAP_FC_SKIP_KVM_CHECK";

const BOOT_READY: Duration = Duration::from_secs(120);
const RESTORE_READY: Duration = Duration::from_secs(30);
const GIT_TIMEOUT: Duration = Duration::from_secs(600);
const INFO_TIMEOUT: Duration = Duration::from_secs(300);
const HASH_TIMEOUT: Duration = Duration::from_secs(3 * 3600);
const MAX_HASH_FILE: u64 = 4 << 30;

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
    pub jailer: Option<PathBuf>,
    pub guest_workspace: String,
    pub guest_bazel: String,
    pub guest_bazel_diff: String,
    pub agent_port: u32,
    pub memory_backend: MemoryBackend,
    /// The store root (for the digest cache, which key_material needs before a Context).
    pub store: PathBuf,
    /// Flags for every bazel-diff hashing call in the guest.
    pub flags: Vec<String>,
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

    fn vm_config(&self, id: &str, lifetime: Duration) -> Result<VmConfig> {
        if self.opts.jailer.is_some() {
            bail!("--jailer is not supported by this build of the firecracker driver yet");
        }
        let mut config = VmConfig::new(&self.opts.firecracker);
        config.id = Some(id.to_owned());
        config.lifetime = Some(lifetime);
        Ok(config)
    }

    fn endpoint(&self, run: &Path) -> Endpoint {
        Endpoint::HybridVsock {
            uds_path: run.join(VSOCK_UDS),
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

    fn record(&self, ctx: &Ctx, _key: &str, base: &str, staging: &Path) -> Result<Value> {
        let started = Instant::now();
        let (_, host_fp) = crate::record::fingerprint_of_worktree(ctx)?;
        let version = self.firecracker_version().map_err(anyhow::Error::new)?;
        let kernel = self.kernel().map_err(anyhow::Error::new)?;
        let rootfs = self.rootfs().map_err(anyhow::Error::new)?;
        let run = new_run_dir(ctx, "rec")?;
        let copy_mode = clone_file(&rootfs, &run.join(ROOTFS))?;
        let id = format!("bds-rec-{}", nonce());
        let vm = VmProcess::spawn(&self.vm_config(&id, Duration::from_secs(6 * 3600))?, run)
            .context("starting firecracker")?;
        let run_path = vm.run_dir().path().to_path_buf();
        let api = vm.client();
        api.set_memory_size_mib(self.opts.mem_mib);
        let logger = vm.run_dir().logger(LogLevel::Info)?;
        api.put_logger(&logger).context("PUT /logger")?;
        api.put_metrics(&vm.run_dir().metrics()?)
            .context("PUT /metrics")?;
        api.put_machine_config(&MachineConfiguration::new(
            self.opts.vcpus,
            self.opts.mem_mib,
        ))
        .context("PUT /machine-config")?;
        api.put_boot_source(&BootSource {
            kernel_image_path: kernel.to_string_lossy().into_owned(),
            boot_args: Some(BOOT_ARGS.to_owned()),
            initrd_path: None,
        })
        .context("PUT /boot-source")?;
        // Relative: every restore reopens the clone in its own run directory (F1).
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
        let (mut agent, hello) =
            Agent::wait_ready(&self.endpoint(&run_path), Instant::now() + BOOT_READY)
                .context("waiting for the guest agent after boot")?;
        let boot_s = boot_started.elapsed().as_secs_f64();
        let gtmp = format!("/tmp/bazel-diff-snap-{}", nonce());
        let bundle = self.sync_commits(ctx, &mut agent, &gtmp, &[base], None)?;
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
        api.pause().context("pausing the VM")?;
        api.create_snapshot(&SnapshotCreateParams {
            mem_file_path: staging.join("mem").to_string_lossy().into_owned(),
            snapshot_path: staging.join("vmstate").to_string_lossy().into_owned(),
            snapshot_type: Some(SnapshotType::Full),
        })
        .context("PUT /snapshot/create")?;
        let api_calls = api.call_count();
        vm.kill().context("stopping the VM after the snapshot")?;
        clone_file(&run_path.join(ROOTFS), &staging.join(ROOTFS))?;
        let snapshot_s = snap_started.elapsed().as_secs_f64();
        drop(vm);
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
            "agent_version": hello.agent_version,
            "guest_fingerprint": guest_fp.fingerprint,
            "api_calls": api_calls,
            "rootfs_copy": copy_mode,
            "bundle": bundle,
            "timings": {
                "boot_to_agent_s": boot_s,
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
        let state: Value = serde_json::from_slice(
            &std::fs::read(plan.entry_dir.join(STATE_FILE))
                .context("reading the entry's firecracker.json")?,
        )
        .context("parsing the entry's firecracker.json")?;
        let mem_mib = state["mem_size_mib"].as_u64().unwrap_or(self.opts.mem_mib);
        let run = new_run_dir(ctx, "con")?;
        let prepare_started = Instant::now();
        // Never opened read-write: the VM writes to its own clone (F1).
        let copy_mode = clone_file(&plan.entry_dir.join(ROOTFS), &run.join(ROOTFS))?;
        let prepare_s = prepare_started.elapsed().as_secs_f64();
        let mem_path = plan.entry_dir.join("mem");
        let uffd = match self.opts.memory_backend {
            MemoryBackend::File => None,
            MemoryBackend::Uffd => Some(UffdServer::start(&run.join("uffd.sock"), &mem_path)?),
        };
        let id = format!("bds-con-{}", nonce());
        let vm = VmProcess::spawn(&self.vm_config(&id, Duration::from_secs(4 * 3600))?, run)
            .context("starting firecracker")?;
        let run_path = vm.run_dir().path().to_path_buf();
        let api = vm.client();
        api.set_memory_size_mib(mem_mib);
        api.put_logger(&vm.run_dir().logger(LogLevel::Info)?)
            .context("PUT /logger")?;
        api.put_metrics(&vm.run_dir().metrics()?)
            .context("PUT /metrics")?;
        let (backend, backend_path) = match &uffd {
            None => (BackendType::File, mem_path.clone()),
            Some(server) => (BackendType::Uffd, server.socket.clone()),
        };
        let mut load = SnapshotLoadParams::new(
            plan.entry_dir.join("vmstate").to_string_lossy(),
            backend,
            backend_path.to_string_lossy(),
        );
        load.resume_vm = Some(true);
        let load_started = Instant::now();
        api.load_snapshot(&load).context("PUT /snapshot/load")?;
        let load_s = load_started.elapsed().as_secs_f64();
        let ready_started = Instant::now();
        let (mut agent, _) =
            Agent::wait_ready(&self.endpoint(&run_path), Instant::now() + RESTORE_READY)
                .context("waiting for the guest agent after the restore")?;
        let ready_s = ready_started.elapsed().as_secs_f64();
        let clock = agent
            .sync_clock()
            .context("setting the guest clock after the restore")?;
        let mut seed = [0u8; 64];
        File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut seed))
            .context("reading host entropy")?;
        agent
            .reseed(&seed)
            .context("reseeding the guest after the restore")?;
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
        let api_calls = api.call_count();
        let _ = vm.kill();
        drop(vm);
        let uffd_notes = uffd.map(UffdServer::finish);
        Ok(ConsumeHashes {
            base,
            target,
            notes: json!({
                "base_hashes_from": if plan.base == plan.entry_base { "entry" } else { "guest" },
                "warm_state_lost": warm_state_lost,
                "server_pid": server_pid,
                "recorded_server_pid": recorded_pid,
                "clock_step_ns": clock.step_nanos().to_string(),
                "clock_dry_run": clock.dry_run,
                "api_calls": api_calls,
                "rootfs_copy": copy_mode,
                "memory_backend": format!("{:?}", self.opts.memory_backend).to_lowercase(),
                "uffd": uffd_notes,
                "bundle": bundle,
                "timings": {
                    "prepare_disk_s": prepare_s,
                    "load_s": load_s,
                    "agent_ready_s": ready_s,
                    "hash_s": hash_s,
                },
            }),
        })
    }
}

/// A uffd handler serving the entry's memory file to one restore.
struct UffdServer {
    socket: PathBuf,
    thread: std::thread::JoinHandle<Result<String, String>>,
}

impl UffdServer {
    fn start(socket: &Path, mem_path: &Path) -> Result<UffdServer> {
        use bazel_diff_uffd::{Handler, MemoryFile, Policy, UffdListener, WorkingSet};
        let mem = Arc::new(MemoryFile::open(mem_path).context("opening the memory file")?);
        let listener = UffdListener::bind(socket).context("binding the uffd socket")?;
        let ws_path = WorkingSet::sidecar_path(mem_path);
        let thread = std::thread::spawn(move || {
            let run = || -> bazel_diff_uffd::Result<String> {
                let handshake = listener.accept(Duration::from_secs(60))?;
                let mut handler = Handler::new(handshake, mem, Policy::default())?;
                if let Ok(ws) = WorkingSet::load(&ws_path) {
                    handler = handler.with_prefetch(&ws)?;
                }
                let outcome = handler.run()?;
                Ok(format!("{:?}", outcome.stats))
            };
            run().map_err(|e| e.to_string())
        });
        Ok(UffdServer {
            socket: socket.to_path_buf(),
            thread,
        })
    }

    fn finish(self) -> Value {
        match self.thread.join() {
            Ok(Ok(stats)) => json!({ "stats": stats }),
            Ok(Err(e)) => json!({ "error": e }),
            Err(_) => json!({ "error": "the uffd handler panicked" }),
        }
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
    let run = RunDir::create_in(&parent, name)
        .with_context(|| format!("creating a run directory in {}", parent.display()))?;
    // sun_path holds 108 bytes with the NUL; uffd.sock is the longest name we bind.
    if run.join("uffd.sock").as_os_str().len() > 107 {
        bail!(
            "the run directory {} is too deep for unix socket paths (108 bytes): use a store \
             with a shorter path",
            run.path().display()
        );
    }
    Ok(run)
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

    #[test]
    fn host_facts_are_present() {
        assert!(host_kernel().contains('.'));
        assert!(host_cpu().contains('/'));
    }
}
