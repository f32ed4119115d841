//! The Firecracker process: spawned (directly or through the jailer) in its own process group
//! with a per-VM run directory holding its API socket, its serial console and logs, and killed
//! as a group on drop, on [`VmProcess::kill`] or when its lifetime runs out.
//!
//! Upstream ran one VM per host: a fixed socket path that it unlinked even when another run
//! owned it (F25, F31). Here every VM gets a fresh run directory, the socket lives inside it,
//! and a socket path that already exists is an error: this code never unlinks a file it did
//! not create (only the run directory it made, and a jail directory the jailer made for it).

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::models::{LogLevel, Logger, Metrics};
use crate::timeouts::TimeoutPolicy;

/// Longest unix socket path (`sun_path` is 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;
/// How often the socket wait and `wait_timeout` look again.
const POLL: Duration = Duration::from_millis(5);
/// Lines of a log shown in an error.
const TAIL_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("invalid VM id {0:?}: 1-64 ASCII letters, digits or '-'")]
    InvalidId(String),
    #[error("the jailer needs a VM id (`--id`)")]
    JailerNeedsId,
    #[error("API socket path {} is longer than the {MAX_SOCKET_PATH} bytes a unix socket allows; use a shorter run directory", .0.display())]
    SocketPathTooLong(PathBuf),
    #[error("API socket path {} already exists; refusing to reuse or unlink a socket this run did not create", .0.display())]
    SocketExists(PathBuf),
    #[error("jail directory {} already exists (another VM with this id?)", .0.display())]
    JailExists(PathBuf),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("could not start {}: {source}", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} exited ({status}) before its API socket {} appeared; stderr:\n{stderr_tail}\nstdout:\n{stdout_tail}", program.display(), socket.display())]
    EarlyExit {
        program: PathBuf,
        socket: PathBuf,
        status: String,
        stderr_tail: String,
        stdout_tail: String,
    },
    #[error("API socket {} did not accept connections within {waited:?} (process killed); stderr:\n{stderr_tail}", socket.display())]
    SocketTimeout {
        socket: PathBuf,
        waited: Duration,
        stderr_tail: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ProcessError {
    let what = what.into();
    move |source| ProcessError::Io { what, source }
}

/// A VM's private directory: API socket, console and logs, and whatever per-run files the
/// caller puts there (a reflink clone of the disk under its recorded relative name). It is
/// Firecracker's working directory, so relative paths in API bodies resolve inside it.
/// Removed on drop unless [`RunDir::keep`] was called.
#[derive(Debug)]
pub struct RunDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl RunDir {
    /// Name of the API socket in a run directory.
    pub const API_SOCKET: &'static str = "api.sock";
    /// Firecracker's stdout: the guest's serial console (and Firecracker's log lines until
    /// `PUT /logger`).
    pub const STDOUT: &'static str = "firecracker.stdout";
    pub const STDERR: &'static str = "firecracker.stderr";
    /// Target of `PUT /logger` (see [`RunDir::logger`]).
    pub const LOG: &'static str = "firecracker.log";
    /// Target of `PUT /metrics` (see [`RunDir::metrics`]).
    pub const METRICS: &'static str = "firecracker.metrics";

    /// Makes `<parent>/<name>-XXXXXX` (mode 0700). Keep `parent` short: the socket path inside
    /// must fit in 107 bytes.
    pub fn create_in(parent: &Path, name: &str) -> io::Result<RunDir> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in(parent)?;
        let path = dir.path().to_path_buf();
        Ok(RunDir {
            dir: Some(dir),
            path,
        })
    }

    /// Uses a directory the caller owns; it is never removed by this crate.
    pub fn existing(path: impl Into<PathBuf>) -> RunDir {
        RunDir {
            dir: None,
            path: path.into(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.path.join(relative)
    }

    pub fn api_socket(&self) -> PathBuf {
        self.join(Self::API_SOCKET)
    }

    pub fn stdout_path(&self) -> PathBuf {
        self.join(Self::STDOUT)
    }

    pub fn stderr_path(&self) -> PathBuf {
        self.join(Self::STDERR)
    }

    /// Creates the (empty) log file, which Firecracker requires to exist, and returns the
    /// `PUT /logger` body for it.
    pub fn logger(&self, level: LogLevel) -> io::Result<Logger> {
        let path = self.join(Self::LOG);
        touch(&path)?;
        Ok(Logger {
            level: Some(level),
            log_path: Some(path.to_string_lossy().into_owned()),
            show_level: Some(true),
            show_log_origin: Some(false),
            module: None,
        })
    }

    /// Creates the (empty) metrics file and returns the `PUT /metrics` body for it.
    pub fn metrics(&self) -> io::Result<Metrics> {
        let path = self.join(Self::METRICS);
        touch(&path)?;
        Ok(Metrics {
            metrics_path: path.to_string_lossy().into_owned(),
            emit_id: None,
            properties: None,
        })
    }

    /// Keeps the directory after drop (for a post-mortem); returns its path.
    pub fn keep(mut self) -> PathBuf {
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
        self.path.clone()
    }
}

fn touch(path: &Path) -> io::Result<()> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(drop)
}

/// Running Firecracker through the jailer (chroot, uid/gid, cgroups, netns).
///
/// Everything the VM opens (kernel, disks, memory file, vsock and uffd sockets) must be
/// hard-linked or copied into [`JailerConfig::jail_root`] by the caller, and paths in API
/// bodies are then jail-relative: the same recorded path names a different host file in every
/// jail, which is what lets many restores of one snapshot run at once.
#[derive(Debug, Clone)]
pub struct JailerConfig {
    pub jailer: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// `--chroot-base-dir` (the jailer's default is `/srv/jailer`).
    pub chroot_base_dir: PathBuf,
    /// `--cgroup-version` (use 2: restores are slow under cgroup v1).
    pub cgroup_version: Option<u8>,
    /// `--netns`: a network namespace path for the VM.
    pub netns: Option<PathBuf>,
    /// More jailer arguments (`--cgroup`, `--resource-limit`, ...), before `--`.
    pub extra_args: Vec<OsString>,
    /// The API socket path as Firecracker sees it inside the jail.
    pub api_sock_in_jail: String,
}

impl JailerConfig {
    pub fn new(jailer: impl Into<PathBuf>, uid: u32, gid: u32) -> JailerConfig {
        JailerConfig {
            jailer: jailer.into(),
            uid,
            gid,
            chroot_base_dir: PathBuf::from("/srv/jailer"),
            cgroup_version: Some(2),
            netns: None,
            extra_args: Vec::new(),
            api_sock_in_jail: "/run/firecracker.socket".to_owned(),
        }
    }

    /// `<chroot_base_dir>/<firecracker file name>/<id>`: the directory the jailer creates for
    /// one VM (and that this crate removes after the VM is gone).
    pub fn jail_dir(&self, firecracker: &Path, id: &str) -> PathBuf {
        let exec_name = firecracker
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("firecracker"));
        self.chroot_base_dir.join(exec_name).join(id)
    }

    /// The jail's root as seen from the host.
    pub fn jail_root(&self, firecracker: &Path, id: &str) -> PathBuf {
        self.jail_dir(firecracker, id).join("root")
    }
}

/// How to start one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The `firecracker` binary.
    pub firecracker: PathBuf,
    /// `--id` (required with the jailer): shows in `GET /` and in logs and metrics.
    pub id: Option<String>,
    /// More Firecracker arguments (e.g. `--level`, `--no-seccomp`), after `--api-sock`.
    pub extra_args: Vec<OsString>,
    /// How long the API socket may take to accept connections (Firecracker needs ~12 ms).
    pub socket_wait: Duration,
    /// Kill the process group this long after spawn, whatever it is doing (None: never).
    pub lifetime: Option<Duration>,
    pub jailer: Option<JailerConfig>,
    /// Deadlines of the clients [`VmProcess::client`] hands out.
    pub timeouts: TimeoutPolicy,
}

impl VmConfig {
    pub fn new(firecracker: impl Into<PathBuf>) -> VmConfig {
        VmConfig {
            firecracker: firecracker.into(),
            id: None,
            extra_args: Vec::new(),
            socket_wait: Duration::from_secs(10),
            lifetime: None,
            jailer: None,
            timeouts: TimeoutPolicy::DEFAULT,
        }
    }

    /// The program, its arguments, and where the API socket will appear on the host, for a VM
    /// whose run directory is `run_dir`.
    pub fn command_line(&self, run_dir: &Path) -> Result<CommandLine, ProcessError> {
        if let Some(id) = &self.id {
            check_vm_id(id)?;
        }
        let mut args: Vec<OsString> = Vec::new();
        let (program, socket, jail_dir) = match &self.jailer {
            None => {
                let socket = run_dir.join(RunDir::API_SOCKET);
                args.push("--api-sock".into());
                args.push(socket.clone().into_os_string());
                if let Some(id) = &self.id {
                    args.push("--id".into());
                    args.push(id.into());
                }
                (self.firecracker.clone(), socket, None)
            }
            Some(jailer) => {
                let id = self.id.as_deref().ok_or(ProcessError::JailerNeedsId)?;
                args.extend([
                    "--id".into(),
                    id.into(),
                    "--exec-file".into(),
                    self.firecracker.clone().into_os_string(),
                    "--uid".into(),
                    jailer.uid.to_string().into(),
                    "--gid".into(),
                    jailer.gid.to_string().into(),
                    "--chroot-base-dir".into(),
                    jailer.chroot_base_dir.clone().into_os_string(),
                ]);
                if let Some(version) = jailer.cgroup_version {
                    args.push("--cgroup-version".into());
                    args.push(version.to_string().into());
                }
                if let Some(netns) = &jailer.netns {
                    args.push("--netns".into());
                    args.push(netns.clone().into_os_string());
                }
                args.extend(jailer.extra_args.iter().cloned());
                // The jailer passes `--id` on to Firecracker itself.
                args.push("--".into());
                args.push("--api-sock".into());
                args.push(jailer.api_sock_in_jail.clone().into());
                let root = jailer.jail_root(&self.firecracker, id);
                let socket = root.join(jailer.api_sock_in_jail.trim_start_matches('/'));
                (
                    jailer.jailer.clone(),
                    socket,
                    Some(jailer.jail_dir(&self.firecracker, id)),
                )
            }
        };
        args.extend(self.extra_args.iter().cloned());
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(ProcessError::SocketPathTooLong(socket));
        }
        Ok(CommandLine {
            program,
            args,
            socket,
            jail_dir,
        })
    }
}

/// What [`VmConfig::command_line`] computes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The API socket's host path.
    pub socket: PathBuf,
    /// The jail directory the jailer will create (jailer mode).
    pub jail_dir: Option<PathBuf>,
}

fn check_vm_id(id: &str) -> Result<(), ProcessError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ProcessError::InvalidId(id.to_owned()))
    }
}

/// Why the process group was killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    /// [`VmConfig::lifetime`] ran out.
    Lifetime,
    /// [`VmProcess::kill`], [`VmProcess::terminate`] past its grace, or drop.
    Requested,
}

struct ChildState {
    child: std::process::Child,
    status: Option<ExitStatus>,
    killed: Option<KillReason>,
    watchdog_off: bool,
}

struct Shared {
    state: Mutex<ChildState>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, ChildState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running Firecracker (or jailer) process. Dropping it kills the whole process group, then
/// removes the jail directory (jailer mode) and the run directory (unless kept).
pub struct VmProcess {
    shared: Arc<Shared>,
    pid: u32,
    socket: PathBuf,
    jail_dir: Option<PathBuf>,
    jail_root: Option<PathBuf>,
    timeouts: TimeoutPolicy,
    watchdog: Option<JoinHandle<()>>,
    run_dir: Option<RunDir>,
    /// Never written: an open pipe keeps Firecracker's serial input quiet (no EOF, and unlike
    /// /dev/null it can be registered with epoll).
    _stdin: Option<std::process::ChildStdin>,
}

impl std::fmt::Debug for VmProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmProcess")
            .field("pid", &self.pid)
            .field("socket", &self.socket)
            .field("run_dir", &self.run_dir)
            .finish()
    }
}

impl VmProcess {
    /// Starts the VM process with `run_dir` as its working directory, stdout (serial console)
    /// and stderr going to files there, in a new process group; then waits until the API
    /// socket accepts connections (bounded by [`VmConfig::socket_wait`]). On any error the
    /// process group is already killed.
    pub fn spawn(config: &VmConfig, run_dir: RunDir) -> Result<VmProcess, ProcessError> {
        let line = config.command_line(run_dir.path())?;
        if let Some(jail) = &line.jail_dir {
            if jail.symlink_metadata().is_ok() {
                return Err(ProcessError::JailExists(jail.clone()));
            }
        }
        if line.socket.symlink_metadata().is_ok() {
            return Err(ProcessError::SocketExists(line.socket));
        }
        let stdout = File::create(run_dir.stdout_path()).map_err(io_err(format!(
            "creating {}",
            run_dir.stdout_path().display()
        )))?;
        let stderr = File::create(run_dir.stderr_path()).map_err(io_err(format!(
            "creating {}",
            run_dir.stderr_path().display()
        )))?;
        let mut command = Command::new(&line.program);
        command
            .args(&line.args)
            .current_dir(run_dir.path())
            .stdin(Stdio::piped())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0);
        tracing::debug!(program = %line.program.display(), args = ?line.args, "spawning firecracker");
        let mut child = command.spawn().map_err(|source| ProcessError::Spawn {
            program: line.program.clone(),
            source,
        })?;
        let pid = child.id();
        let stdin = child.stdin.take();
        let shared = Arc::new(Shared {
            state: Mutex::new(ChildState {
                child,
                status: None,
                killed: None,
                watchdog_off: false,
            }),
            changed: Condvar::new(),
        });
        let watchdog = config.lifetime.map(|lifetime| {
            let shared = shared.clone();
            std::thread::spawn(move || watchdog(&shared, Instant::now() + lifetime))
        });
        let jail_root = match (&config.jailer, &config.id) {
            (Some(jailer), Some(id)) => Some(jailer.jail_root(&config.firecracker, id)),
            _ => None,
        };
        let vm = VmProcess {
            shared,
            pid,
            socket: line.socket,
            jail_dir: line.jail_dir,
            jail_root,
            timeouts: config.timeouts,
            watchdog,
            run_dir: Some(run_dir),
            _stdin: stdin,
        };
        vm.wait_for_socket(&line.program, config.socket_wait)?;
        Ok(vm)
    }

    fn wait_for_socket(&self, program: &Path, wait: Duration) -> Result<(), ProcessError> {
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .try_wait()
                .map_err(io_err("waiting for the Firecracker process"))?
            {
                return Err(ProcessError::EarlyExit {
                    program: program.to_path_buf(),
                    socket: self.socket.clone(),
                    status: status.to_string(),
                    stderr_tail: self.stderr_tail(),
                    stdout_tail: self.stdout_tail(),
                });
            }
            if UnixStream::connect(&self.socket).is_ok() {
                tracing::debug!(socket = %self.socket.display(), waited = ?started.elapsed(), "firecracker api socket up");
                return Ok(());
            }
            if started.elapsed() >= wait {
                let _ = self.kill();
                return Err(ProcessError::SocketTimeout {
                    socket: self.socket.clone(),
                    waited: wait,
                    stderr_tail: self.stderr_tail(),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The API socket's host path.
    pub fn api_socket(&self) -> &Path {
        &self.socket
    }

    pub fn run_dir(&self) -> &RunDir {
        self.run_dir
            .as_ref()
            .expect("the run directory is only taken by into_run_dir, which consumes self")
    }

    /// Jailer mode: the jail's root on the host (where the caller links the VM's files).
    pub fn jail_root(&self) -> Option<&Path> {
        self.jail_root.as_deref()
    }

    /// A new client for this VM's socket with the configured deadlines.
    pub fn client(&self) -> Client {
        Client::new(&self.socket).with_timeouts(self.timeouts)
    }

    /// The exit status if the process has exited (it is then reaped).
    pub fn try_wait(&self) -> io::Result<Option<ExitStatus>> {
        let mut state = self.shared.lock();
        if state.status.is_some() {
            return Ok(state.status);
        }
        if exited_nowait(self.pid)? {
            reap(&mut state, None)?;
            self.shared.changed.notify_all();
        }
        Ok(state.status)
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_timeout(&self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGTERM to the process group, then SIGKILL after `grace`.
    pub fn terminate(&self, grace: Duration) -> io::Result<ExitStatus> {
        {
            let state = self.shared.lock();
            if let Some(status) = state.status {
                return Ok(status);
            }
            signal_group(self.pid, libc::SIGTERM);
        }
        if let Some(status) = self.wait_timeout(grace)? {
            return Ok(status);
        }
        self.kill()
    }

    /// SIGKILL to the whole process group, then reaps the process.
    pub fn kill(&self) -> io::Result<ExitStatus> {
        let mut state = self.shared.lock();
        let status = reap(&mut state, Some(KillReason::Requested))?;
        self.shared.changed.notify_all();
        Ok(status)
    }

    /// Why the group was killed, if it was (None: it exited by itself or still runs).
    pub fn kill_reason(&self) -> Option<KillReason> {
        self.shared.lock().killed
    }

    /// The last lines of the serial console (Firecracker's stdout).
    pub fn stdout_tail(&self) -> String {
        tail(&self.run_dir().stdout_path(), TAIL_LINES)
    }

    /// The last lines of Firecracker's stderr.
    pub fn stderr_tail(&self) -> String {
        tail(&self.run_dir().stderr_path(), TAIL_LINES)
    }

    /// Kills the VM and hands back its run directory (to keep its logs, say).
    pub fn into_run_dir(mut self) -> RunDir {
        self.shutdown();
        self.run_dir
            .take()
            .expect("the run directory is present until into_run_dir")
    }

    fn shutdown(&mut self) {
        if let Err(e) = self.kill() {
            tracing::warn!(pid = self.pid, "killing firecracker: {e}");
        }
        {
            let mut state = self.shared.lock();
            state.watchdog_off = true;
            self.shared.changed.notify_all();
        }
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
        if let Some(jail) = self.jail_dir.take() {
            // The jailer made this directory for our id (spawn refused an existing one).
            if let Err(e) = std::fs::remove_dir_all(&jail) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(jail = %jail.display(), "removing the jail directory: {e}");
                }
            }
        }
    }
}

impl Drop for VmProcess {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn watchdog(shared: &Shared, deadline: Instant) {
    let mut state = shared.lock();
    loop {
        if state.status.is_some() || state.watchdog_off {
            return;
        }
        let now = Instant::now();
        if now >= deadline {
            let pid = state.child.id();
            tracing::warn!(pid, "firecracker lifetime over: killing its process group");
            let _ = reap(&mut state, Some(KillReason::Lifetime));
            shared.changed.notify_all();
            return;
        }
        state = shared
            .changed
            .wait_timeout(state, deadline - now)
            .map(|(guard, _)| guard)
            .unwrap_or_else(|e| e.into_inner().0);
    }
}

/// SIGKILLs the group and reaps the leader, unless already reaped. The group is signalled
/// while the leader is still unreaped (at worst a zombie), so its pid, which is the group id,
/// cannot have been reused: the signal can only reach this VM's processes.
fn reap(state: &mut ChildState, reason: Option<KillReason>) -> io::Result<ExitStatus> {
    if let Some(status) = state.status {
        return Ok(status);
    }
    let pid = state.child.id();
    let already_exited = exited_nowait(pid)?;
    // Also sweeps stragglers of a leader that exited on its own.
    signal_group(pid, libc::SIGKILL);
    let status = state.child.wait()?;
    if !already_exited {
        state.killed = reason;
    }
    state.status = Some(status);
    Ok(status)
}

fn signal_group(pgid: u32, signal: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers; a negative pid addresses the process group.
    let rc = unsafe { libc::kill(-pgid, signal) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!(pgid, signal, "signalling the process group: {e}");
        }
    }
}

/// Whether `pid` (our child) has exited, without reaping it (`waitid` with `WNOWAIT`).
fn exited_nowait(pid: u32) -> io::Result<bool> {
    let id: libc::id_t = pid;
    // SAFETY: siginfo_t is plain data; zeroed is a valid value for waitid to fill.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `info` is a valid, writable siginfo_t; the flags do not reap the child.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                id,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            // SAFETY: waitid succeeded, so the pid field is initialised (0 when nothing exited).
            return Ok(unsafe { info.si_pid() } != 0);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            // Already reaped elsewhere: it has certainly exited.
            Some(libc::ECHILD) => return Ok(true),
            _ => return Err(e),
        }
    }
}

/// The last `lines` lines of a file (reads at most its last 64 KiB); empty if unreadable.
pub fn tail(path: &Path, lines: usize) -> String {
    const WINDOW: u64 = 64 * 1024;
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if file
        .seek(SeekFrom::Start(len.saturating_sub(WINDOW)))
        .is_err()
    {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_command_line() {
        let mut config = VmConfig::new("/usr/bin/firecracker");
        config.id = Some("vm-1".into());
        config.extra_args = vec!["--level".into(), "Info".into()];
        let line = config.command_line(Path::new("/run/bd/vm-abc")).unwrap();
        assert_eq!(line.program, PathBuf::from("/usr/bin/firecracker"));
        assert_eq!(
            line.args,
            [
                "--api-sock",
                "/run/bd/vm-abc/api.sock",
                "--id",
                "vm-1",
                "--level",
                "Info"
            ]
            .map(OsString::from)
        );
        assert_eq!(line.socket, PathBuf::from("/run/bd/vm-abc/api.sock"));
        assert_eq!(line.jail_dir, None);
    }

    #[test]
    fn jailer_command_line() {
        let mut config = VmConfig::new("/opt/fc/firecracker-v1.17");
        config.id = Some("consume-7".into());
        let mut jailer = JailerConfig::new("/opt/fc/jailer", 1001, 1002);
        jailer.chroot_base_dir = PathBuf::from("/srv/jail");
        jailer.netns = Some(PathBuf::from("/var/run/netns/fc7"));
        config.jailer = Some(jailer);
        let line = config.command_line(Path::new("/tmp/run")).unwrap();
        assert_eq!(line.program, PathBuf::from("/opt/fc/jailer"));
        assert_eq!(
            line.args,
            [
                "--id",
                "consume-7",
                "--exec-file",
                "/opt/fc/firecracker-v1.17",
                "--uid",
                "1001",
                "--gid",
                "1002",
                "--chroot-base-dir",
                "/srv/jail",
                "--cgroup-version",
                "2",
                "--netns",
                "/var/run/netns/fc7",
                "--",
                "--api-sock",
                "/run/firecracker.socket",
            ]
            .map(OsString::from)
        );
        assert_eq!(
            line.socket,
            PathBuf::from("/srv/jail/firecracker-v1.17/consume-7/root/run/firecracker.socket")
        );
        assert_eq!(
            line.jail_dir,
            Some(PathBuf::from("/srv/jail/firecracker-v1.17/consume-7"))
        );
    }

    #[test]
    fn bad_configs() {
        let mut config = VmConfig::new("firecracker");
        config.jailer = Some(JailerConfig::new("jailer", 0, 0));
        assert!(matches!(
            config.command_line(Path::new("/r")),
            Err(ProcessError::JailerNeedsId)
        ));
        config.id = Some("bad/id".into());
        assert!(matches!(
            config.command_line(Path::new("/r")),
            Err(ProcessError::InvalidId(_))
        ));
        let config = VmConfig::new("firecracker");
        let long = format!("/{}", "d".repeat(120));
        assert!(matches!(
            config.command_line(Path::new(&long)),
            Err(ProcessError::SocketPathTooLong(_))
        ));
    }

    #[test]
    fn tail_keeps_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        assert_eq!(tail(&path, 2), "line 98\nline 99");
        assert_eq!(tail(&dir.path().join("none"), 2), "");
    }
}
