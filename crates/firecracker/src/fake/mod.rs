//! A fake Firecracker for tests (feature `fake`): an HTTP server on a unix socket that checks
//! every request against `firecracker-api.yaml` ([`swagger`]), answers like Firecracker (204
//! for accepted changes, 200 with JSON for reads, 400 with `{"fault_message": ...}` for bad
//! bodies and for calls the VM's state forbids), keeps the VM state machine, writes snapshot
//! files, and records every call. Its own answers are checked against the swagger too.
//!
//! Two ways to run it:
//! - in-process: [`FakeFirecracker::start`] serves on a thread;
//! - as a process: the `fake-firecracker` binary ([`binary_main`]) takes Firecracker's
//!   `--api-sock`/`--id` (or the jailer's arguments), so [`crate::VmProcess`] can be tested end
//!   to end. Other crates' tests find it with [`binary_path`].
//!
//! What it does not emulate: a guest (nothing boots; vsock connections are accepted and closed),
//! the uffd itself (a `Uffd` load sends the region JSON to the handler socket, without a file
//! descriptor), MMDS, pmem, cpu-config, memory hotplug and balloon statistics/hinting (valid
//! requests for those get a 400 saying so).

pub mod swagger;
mod vm;

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http::{self, Kind};
use crate::models::InstanceState;
use swagger::Swagger;
pub use swagger::{Rejection, SwaggerError};
use vm::{FakeVm, Reply};

/// Delays the answer to `method path` (None: any method), to test client deadlines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    pub method: Option<String>,
    pub path: String,
    pub delay: Duration,
}

/// How the fake behaves.
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// `GET /` `id` (Firecracker's default is `anonymous-instance`).
    pub instance_id: String,
    /// Relative paths in bodies resolve here (None: the process's working directory).
    pub root: Option<PathBuf>,
    /// Absolute paths resolve under `root` too (the fake jailer's "chroot").
    pub chroot: bool,
    /// Size of the memory file snapshot create writes (a small placeholder by default).
    pub mem_file_len: u64,
    pub stalls: Vec<Stall>,
    /// SendCtrlAltDel makes the "process" exit (a `reboot=k` guest rebooting).
    pub exit_on_ctrl_alt_del: bool,
    /// A failed snapshot load makes the "process" exit, as in Firecracker.
    pub exit_on_failed_load: bool,
    /// Print one line per call to stderr (the binary does).
    pub echo_calls: bool,
    /// Pipe host-initiated vsock connections (`CONNECT <port>`) to this unix socket: a
    /// guest agent running as a local process stands in for the guest. The binary takes it
    /// from `$FAKE_FC_VSOCK_PROXY`.
    pub vsock_proxy: Option<PathBuf>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            instance_id: "anonymous-instance".to_owned(),
            root: None,
            chroot: false,
            mem_file_len: 64 * 1024,
            stalls: Vec::new(),
            exit_on_ctrl_alt_del: true,
            exit_on_failed_load: true,
            echo_calls: false,
            vsock_proxy: None,
        }
    }
}

/// One request as the fake saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedCall {
    pub method: String,
    pub path: String,
    /// The swagger `operationId`, when the route exists.
    pub operation_id: Option<String>,
    /// The body as JSON (a string if it was not JSON).
    pub body: Option<Value>,
    pub status: u16,
    pub fault_message: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FakeError {
    #[error(transparent)]
    Swagger(#[from] SwaggerError),
    #[error("binding the fake Firecracker API socket {}: {source}", path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

struct Shared {
    swagger: Arc<Swagger>,
    config: Arc<FakeConfig>,
    vm: Mutex<FakeVm>,
    calls: Mutex<Vec<RecordedCall>>,
    stop: AtomicBool,
    /// Set when the fake "process" exits: Some(exit code).
    exited: Mutex<Option<i32>>,
    exited_cv: Condvar,
    socket: PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn request_stop(&self, code: i32) {
        {
            let mut exited = lock(&self.exited);
            if exited.is_none() {
                *exited = Some(code);
            }
        }
        self.stop.store(true, Ordering::SeqCst);
        self.exited_cv.notify_all();
    }

    fn stall(&self, method: &str, path: &str) {
        let Some(stall) = self
            .config
            .stalls
            .iter()
            .find(|s| s.path == path && s.method.as_deref().is_none_or(|m| m == method))
        else {
            return;
        };
        let until = Instant::now() + stall.delay;
        while Instant::now() < until && !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn handle(&self, method: &str, path: &str, body: &[u8]) -> Reply {
        let body = (!body.is_empty()).then_some(body);
        let (operation_id, mut reply) = match self.swagger.validate_request(method, path, body) {
            Err(rejection) => (None, Reply::fault(400, rejection.to_string())),
            Ok(matched) => {
                let reply = lock(&self.vm).handle(&matched);
                (Some(matched.operation_id), reply)
            }
        };
        if let Some(op) = &operation_id {
            if let Err(e) = self
                .swagger
                .validate_response(op, reply.status, reply.body.as_ref())
            {
                reply = Reply::fault(500, format!("fake-firecracker bug: {e}"));
            }
        }
        let fault_message = reply
            .body
            .as_ref()
            .and_then(|b| b.get("fault_message"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let recorded_body = body.map(|b| {
            serde_json::from_slice(b)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(b).into_owned()))
        });
        if self.config.echo_calls {
            eprintln!(
                "fake-firecracker: {method} {path} -> {}{}",
                reply.status,
                fault_message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            );
        }
        lock(&self.calls).push(RecordedCall {
            method: method.to_owned(),
            path: path.to_owned(),
            operation_id,
            body: recorded_body,
            status: reply.status,
            fault_message,
        });
        reply
    }
}

/// The fake serving on a unix socket. Dropping it stops it and removes the socket it created.
pub struct FakeFirecracker {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FakeFirecracker {
    /// Serves on `socket` (which must not exist), validating against the swagger at
    /// [`Swagger::default_path`].
    pub fn start(socket: impl Into<PathBuf>, config: FakeConfig) -> Result<Self, FakeError> {
        FakeFirecracker::start_with(socket, config, Swagger::shared()?)
    }

    pub fn start_with(
        socket: impl Into<PathBuf>,
        config: FakeConfig,
        swagger: Arc<Swagger>,
    ) -> Result<Self, FakeError> {
        let socket = socket.into();
        let listener = UnixListener::bind(&socket).map_err(|source| FakeError::Bind {
            path: socket.clone(),
            source,
        })?;
        let config = Arc::new(config);
        let shared = Arc::new(Shared {
            vm: Mutex::new(FakeVm::new(config.clone(), swagger.version().to_owned())),
            swagger,
            config,
            calls: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            exited: Mutex::new(None),
            exited_cv: Condvar::new(),
            socket,
        });
        let serving = shared.clone();
        let accept = std::thread::spawn(move || accept_loop(&serving, &listener));
        Ok(FakeFirecracker {
            shared,
            accept: Some(accept),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.shared.socket
    }

    /// Every request so far, valid or not, in order.
    pub fn calls(&self) -> Vec<RecordedCall> {
        lock(&self.shared.calls).clone()
    }

    pub fn clear_calls(&self) {
        lock(&self.shared.calls).clear();
    }

    pub fn state(&self) -> InstanceState {
        lock(&self.shared.vm).state()
    }

    /// The exit code if the fake "process" exited (SendCtrlAltDel, failed load).
    pub fn exit_code(&self) -> Option<i32> {
        *lock(&self.shared.exited)
    }

    /// Waits until the fake exits by itself; None on timeout.
    pub fn wait_exit(&self, timeout: Option<Duration>) -> Option<i32> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut exited = lock(&self.shared.exited);
        loop {
            if let Some(code) = *exited {
                return Some(code);
            }
            let wait = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    left
                }
                None => Duration::from_secs(3600),
            };
            exited = self
                .shared
                .exited_cv
                .wait_timeout(exited, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

impl Drop for FakeFirecracker {
    fn drop(&mut self) {
        self.shared.request_stop(0);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        let _ = std::fs::remove_file(&self.shared.socket);
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &UnixListener) {
    accept_until(listener, &shared.stop, |stream| {
        let shared = shared.clone();
        std::thread::spawn(move || serve_connection(&shared, stream));
    });
}

/// Accepts connections until `stop` is set. Polls with a short timeout instead of relying on a
/// wake-up connection, which cannot reach a listener whose socket file was already removed.
pub(crate) fn accept_until(
    listener: &UnixListener,
    stop: &AtomicBool,
    mut on_connection: impl FnMut(UnixStream),
) {
    use std::os::fd::AsRawFd;
    while !stop.load(Ordering::SeqCst) {
        let mut fds = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for a descriptor owned by `listener`.
        let ready = unsafe { libc::poll(&mut fds, 1, 20) };
        if ready <= 0 || stop.load(Ordering::SeqCst) {
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => on_connection(stream),
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

fn serve_connection(shared: &Shared, mut stream: UnixStream) {
    loop {
        let message = match http::read_message(&mut stream, Kind::Request, &mut || Ok(())) {
            Ok(Some(message)) => message,
            Ok(None) | Err(http::HttpError::Io(_)) => return,
            Err(http::HttpError::Malformed(detail)) => {
                let body = serde_json::json!({ "fault_message": detail }).to_string();
                let _ = http::write_response(&mut stream, 400, Some(body.as_bytes()));
                return;
            }
        };
        let mut parts = message.start_line.split_whitespace();
        let (method, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(m), Some(p), Some(v)) if v.starts_with("HTTP/1.") => (m.to_owned(), p.to_owned()),
            _ => {
                let body = serde_json::json!({ "fault_message": "Invalid HTTP request line." });
                let _ = http::write_response(&mut stream, 400, Some(body.to_string().as_bytes()));
                return;
            }
        };
        shared.stall(&method, &path);
        if shared.stop.load(Ordering::SeqCst) {
            // The "process" is gone: no answer.
            return;
        }
        let reply = shared.handle(&method, &path, &message.body);
        let bytes = reply.body.as_ref().map(|b| b.to_string().into_bytes());
        if http::write_response(&mut stream, reply.status, bytes.as_deref()).is_err() {
            return;
        }
        if let Some(code) = reply.exit {
            shared.request_stop(code);
            return;
        }
    }
}

/// The `fake-firecracker` binary, for tests that need a process: finds it from
/// `$FAKE_FIRECRACKER_BIN`, else next to the running test executable's `deps/` directory
/// (`target/<profile>/fake-firecracker`, built by `cargo build -p bazel-diff-firecracker` or any
/// workspace-wide `cargo test`).
pub fn binary_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("FAKE_FIRECRACKER_BIN") {
        return Some(PathBuf::from(path));
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .take(3)
        .map(|dir| dir.join("fake-firecracker"))
        .find(|candidate| candidate.is_file())
}

/// The `fake-firecracker` binary's main: Firecracker's arguments (`--api-sock PATH`, `--id ID`;
/// others are accepted and ignored), or the jailer's (`--id --exec-file --uid --gid
/// --chroot-base-dir ... -- <firecracker args>`: the jail is created and used as the root for
/// every path, without a real chroot). Test-only knobs: `--fake-stall PATH=MS` (repeatable),
/// `--fake-ignore-sigterm`, `--fake-no-api` (never opens the socket), `--fake-exit CODE`
/// (exits at once), `--fake-mem-file-len BYTES`. `--version` prints
/// `Firecracker v<swagger version> (fake)` and exits 0, as Firecracker's does.
/// `$FAKE_FC_VSOCK_PROXY=<unix socket>` sets [`FakeConfig::vsock_proxy`]. Returns the exit
/// code.
pub fn binary_main(args: Vec<String>) -> i32 {
    match run_binary(args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("fake-firecracker: {message}");
            2
        }
    }
}

fn run_binary(args: Vec<String>) -> Result<i32, String> {
    if args.iter().any(|a| a == "--version") {
        let version = Swagger::shared().map_err(|e| e.to_string())?;
        use std::io::Write;
        let _ = writeln!(
            std::io::stdout(),
            "Firecracker v{} (fake)",
            version.version()
        );
        return Ok(0);
    }
    let mut config = FakeConfig {
        echo_calls: true,
        vsock_proxy: std::env::var_os("FAKE_FC_VSOCK_PROXY")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
        ..FakeConfig::default()
    };
    let (fc_args, jail_root) = if args.iter().any(|a| a == "--exec-file") {
        let (jail_root, rest) = fake_jailer(&args)?;
        (rest, Some(jail_root))
    } else {
        (args, None)
    };
    let mut api_sock = None;
    let mut no_api = false;
    let mut it = fc_args.into_iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--api-sock" => api_sock = Some(value("--api-sock")?),
            "--id" => config.instance_id = value("--id")?,
            "--fake-stall" => {
                let spec = value("--fake-stall")?;
                let (path, ms) = spec
                    .rsplit_once('=')
                    .ok_or("--fake-stall takes PATH=MILLISECONDS")?;
                let ms: u64 = ms.parse().map_err(|_| "bad --fake-stall milliseconds")?;
                config.stalls.push(Stall {
                    method: None,
                    path: path.to_owned(),
                    delay: Duration::from_millis(ms),
                });
            }
            "--fake-ignore-sigterm" => {
                // SAFETY: installing SIG_IGN for SIGTERM has no memory-safety preconditions.
                unsafe {
                    libc::signal(libc::SIGTERM, libc::SIG_IGN);
                }
            }
            "--fake-no-api" => no_api = true,
            "--fake-exit" => {
                let code = value("--fake-exit")?;
                eprintln!("fake-firecracker: exiting at once as asked");
                return code.parse().map_err(|_| "bad --fake-exit code".to_owned());
            }
            "--fake-mem-file-len" => {
                config.mem_file_len = value("--fake-mem-file-len")?
                    .parse()
                    .map_err(|_| "bad --fake-mem-file-len")?;
            }
            // Firecracker flags with a value; accepted and ignored.
            "--level"
            | "--log-path"
            | "--metrics-path"
            | "--config-file"
            | "--seccomp-filter"
            | "--http-api-max-payload-size"
            | "--mmds-size-limit"
            | "--module" => {
                value(&arg)?;
            }
            _ if arg.starts_with("--") => {}
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    if no_api {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    let api_sock = api_sock.unwrap_or_else(|| "/run/firecracker.socket".to_owned());
    let socket = match &jail_root {
        Some(root) => {
            config.root = Some(root.clone());
            config.chroot = true;
            vm::resolve(&config, &api_sock)
        }
        None => PathBuf::from(&api_sock),
    };
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("creating {}: {e}", parent.display()))?;
    }
    {
        use std::io::Write;
        // Stands in for the serial console: the guest's first words on stdout.
        let mut out = std::io::stdout();
        let _ = writeln!(
            out,
            "fake-firecracker {}: serial console",
            config.instance_id
        );
        let _ = out.flush();
    }
    let fake = FakeFirecracker::start(socket, config).map_err(|e| e.to_string())?;
    let code = fake.wait_exit(None).unwrap_or(0);
    eprintln!("fake-firecracker: exiting with {code}");
    // Like a killed or exited Firecracker, leave the socket file behind.
    std::mem::forget(fake);
    Ok(code)
}

/// Parses jailer arguments, creates `<base>/<exec name>/<id>/root` and enters it; returns the
/// root and the Firecracker arguments after `--`.
fn fake_jailer(args: &[String]) -> Result<(PathBuf, Vec<String>), String> {
    let split = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let (jailer_args, rest) = args.split_at(split);
    let rest: Vec<String> = rest.iter().skip(1).cloned().collect();
    let mut id = None;
    let mut exec_file = None;
    let mut base = PathBuf::from("/srv/jailer");
    let mut it = jailer_args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--id" => id = Some(value()?),
            "--exec-file" => exec_file = Some(PathBuf::from(value()?)),
            "--chroot-base-dir" => base = PathBuf::from(value()?),
            "--uid" | "--gid" | "--cgroup-version" | "--netns" | "--cgroup" | "--parent-cgroup"
            | "--resource-limit" => {
                value()?;
            }
            "--daemonize" | "--new-pid-ns" => {}
            other => return Err(format!("unknown jailer argument {other:?}")),
        }
    }
    let id = id.ok_or("the jailer needs --id")?;
    let exec_file = exec_file.ok_or("the jailer needs --exec-file")?;
    let exec_name = exec_file
        .file_name()
        .ok_or("--exec-file has no file name")?;
    let root = base.join(exec_name).join(&id).join("root");
    std::fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    std::env::set_current_dir(&root).map_err(|e| format!("entering {}: {e}", root.display()))?;
    // The jailer hands the id on to Firecracker.
    let mut fc_args = vec!["--id".to_owned(), id];
    fc_args.extend(rest);
    Ok((root, fc_args))
}
