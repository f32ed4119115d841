//! Test harness: the real `bazel-diff-agent` binary on a unix socket in a temp dir, killed
//! (by its own pid) when the handle drops.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bazel_diff_agent::{Client, Endpoint, Hello};

pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Agent {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_bazel-diff-agent")
}

impl Agent {
    /// Starts an agent on `<tmp>/agent.sock` with extra flags.
    pub fn start(extra: &[&str]) -> Agent {
        Agent::start_with(extra, |_, _| {})
    }

    /// Like [`Agent::start`], letting the caller adjust the command (uid, env).
    pub fn start_with(extra: &[&str], adjust: impl FnOnce(&mut Command, &Path)) -> Agent {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("agent.sock");
        let mut cmd = Command::new(binary());
        cmd.arg(format!("--listen=unix:{}", socket.display()))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("agent.log")).expect("agent.log"));
        adjust(&mut cmd, dir.path());
        let child = cmd.spawn().expect("spawn bazel-diff-agent");
        Agent { child, dir, socket }
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::Unix(self.socket.clone())
    }

    pub fn client(&self) -> Client {
        self.ready().0
    }

    pub fn ready(&self) -> (Client, Hello) {
        Client::wait_ready(&self.endpoint(), Instant::now() + READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("agent not ready: {e}"))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Whether the agent process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.path("agent.log")).unwrap_or_default();
            eprintln!("--- agent stderr ---\n{log}--- end ---");
        }
    }
}

/// Runs `cmd` as uid/gid 65534 (nobody) when this process is root.
pub fn as_nobody(cmd: &mut Command) {
    cmd.uid(65534).gid(65534);
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `pid` is gone (or a zombie nobody reaped yet, which is dead all the same).
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}

pub fn make_world_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
}
