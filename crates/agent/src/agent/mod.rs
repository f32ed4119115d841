//! The agent side: listeners, one thread per connection, and the request loop that turns
//! lines into [`Request`]s and answers them. `main.rs` only parses flags into a [`Config`].

mod exec;
mod files;
pub mod listen;
pub mod system;

use std::io::{self, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use crate::protocol::{
    encode_line, read_line, ErrorCode, ErrorInfo, Line, Request, Response, MAX_LINE_BYTES, OPS,
};
use listen::{ListenAddr, ListenError, Listener, SocketStream};

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<ListenAddr>,
    /// `set_time` checks permission and answers, but never touches the clock (tests).
    pub dry_run_time: bool,
    /// Where `reseed` writes (`/dev/urandom`; a plain file in tests).
    pub random_device: PathBuf,
    /// Connections served at once; more get a `busy` error.
    pub max_connections: usize,
    /// Log every connection and request to stderr.
    pub verbose: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![ListenAddr::Vsock(crate::protocol::DEFAULT_VSOCK_PORT)],
            dry_run_time: false,
            random_device: PathBuf::from("/dev/urandom"),
            max_connections: 32,
            verbose: false,
        }
    }
}

/// Why a request produced no final answer of its own.
pub(crate) enum Failure {
    /// Answer with this error; the connection goes on.
    Reply(ErrorInfo),
    /// Writing to the host failed, or it hung up: end the connection.
    Disconnected(io::Error),
}

impl From<ErrorInfo> for Failure {
    fn from(e: ErrorInfo) -> Self {
        Failure::Reply(e)
    }
}

struct Shared {
    config: Config,
    running: exec::Running,
    active: AtomicUsize,
    shutdown: Mutex<mpsc::Sender<()>>,
}

impl Shared {
    fn log(&self, msg: std::fmt::Arguments<'_>) {
        eprintln!("bazel-diff-agent: {msg}");
    }

    fn debug(&self, msg: std::fmt::Arguments<'_>) {
        if self.config.verbose {
            self.log(msg);
        }
    }
}

/// Binds every listener, then serves until a `shutdown` request. Returns early only when a
/// listener cannot be set up.
pub fn run(config: Config) -> Result<(), ListenError> {
    let listeners = config
        .listen
        .iter()
        .map(Listener::bind)
        .collect::<Result<Vec<_>, _>>()?;
    let (tx, rx) = mpsc::channel();
    let shared = Arc::new(Shared {
        config,
        running: exec::Running::default(),
        active: AtomicUsize::new(0),
        shutdown: Mutex::new(tx),
    });
    let mut unix_paths = Vec::new();
    for listener in listeners {
        shared.log(format_args!(
            "listening on {} (protocol {})",
            listener.describe(),
            crate::protocol::PROTOCOL_VERSION
        ));
        unix_paths.extend(listener.unix_path().map(PathBuf::from));
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("accept".into())
            .spawn(move || accept_loop(&listener, &shared))
            .map_err(|source| ListenError::Unix {
                path: PathBuf::from("<accept thread>"),
                source,
            })?;
    }
    // Every sender lives in `shared`, which outlives this wait, so only a real shutdown
    // request wakes it.
    let _ = rx.recv();
    shared.log(format_args!("shutting down"));
    shared.running.kill_all();
    for path in unix_paths {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

fn accept_loop(listener: &Listener, shared: &Arc<Shared>) {
    loop {
        let stream = match listener.accept() {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                shared.log(format_args!(
                    "accept on {} failed: {e}",
                    listener.describe()
                ));
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        if shared.active.fetch_add(1, Ordering::SeqCst) >= shared.config.max_connections {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            let mut s = stream;
            let _ = s.write_all(&encode_line(
                0,
                &Response::Error(ErrorInfo {
                    code: ErrorCode::Busy,
                    message: format!(
                        "the agent already serves {} connections",
                        shared.config.max_connections
                    ),
                }),
            ));
            continue;
        }
        let conn_shared = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("conn".into())
            .spawn(move || {
                serve(stream, &conn_shared);
                conn_shared.active.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            shared.log(format_args!("cannot start a connection thread: {e}"));
        }
    }
}

fn serve(stream: SocketStream, shared: &Shared) {
    let reader = match stream.try_clone() {
        Ok(r) => r,
        Err(e) => {
            shared.log(format_args!("cannot duplicate a connection: {e}"));
            return;
        }
    };
    shared.debug(format_args!("connection opened"));
    let mut session = Session {
        shared,
        conn_fd: stream.as_raw_fd(),
        reader: BufReader::with_capacity(64 << 10, reader),
        writer: stream,
        write: None,
    };
    let end = session.run();
    if let Some(w) = session.write.take() {
        w.abort("the connection ended before write_end".into());
    }
    shared.debug(format_args!("connection closed: {end}"));
    session.writer.shutdown();
}

enum Flow {
    Continue,
    Shutdown,
}

struct Session<'a> {
    shared: &'a Shared,
    conn_fd: i32,
    reader: BufReader<SocketStream>,
    writer: SocketStream,
    write: Option<files::PendingWrite>,
}

fn send(writer: &mut SocketStream, id: u64, body: &Response) -> io::Result<()> {
    writer.write_all(&encode_line(id, body))
}

fn error(code: ErrorCode, message: String) -> Response {
    Response::Error(ErrorInfo { code, message })
}

impl Session<'_> {
    /// Serves requests until EOF or a write error; says why it stopped.
    fn run(&mut self) -> String {
        loop {
            let line = match read_line(&mut self.reader, MAX_LINE_BYTES) {
                Ok(Some(line)) => line,
                Ok(None) => return "end of stream".into(),
                Err(e) => return format!("read error: {e}"),
            };
            let flow = match line {
                Line::TooLong { len } => self.too_long(len),
                Line::Complete(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => {
                    Ok(Flow::Continue)
                }
                Line::Complete(bytes) => self.handle(&bytes),
            };
            match flow {
                Ok(Flow::Continue) => {}
                Ok(Flow::Shutdown) => {
                    let tx = self
                        .shared
                        .shutdown
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    let _ = tx.send(());
                    return "shutdown requested".into();
                }
                Err(e) => return format!("write error: {e}"),
            }
        }
    }

    fn too_long(&mut self, len: usize) -> io::Result<Flow> {
        self.abort_write("a line longer than the limit arrived before write_end")?;
        send(
            &mut self.writer,
            0,
            &error(
                ErrorCode::LineTooLong,
                format!("request line of {len} bytes exceeds the limit of {MAX_LINE_BYTES}"),
            ),
        )?;
        Ok(Flow::Continue)
    }

    /// Ends an open write transaction with an error answer for it.
    fn abort_write(&mut self, why: &str) -> io::Result<()> {
        if let Some(w) = self.write.take() {
            let id = w.id;
            let err = w.abort(format!("write_file aborted: {why}"));
            send(&mut self.writer, id, &Response::Error(err))?;
        }
        Ok(())
    }

    fn handle(&mut self, bytes: &[u8]) -> io::Result<Flow> {
        let value: serde_json::Value = match serde_json::from_slice(bytes) {
            Ok(v) => v,
            Err(e) => {
                self.abort_write("a line that is not JSON arrived before write_end")?;
                send(
                    &mut self.writer,
                    0,
                    &error(ErrorCode::BadJson, format!("not JSON: {e}")),
                )?;
                return Ok(Flow::Continue);
            }
        };
        let id = value.get("id").and_then(|v| v.as_u64()).unwrap_or(0);
        let op = match value.get("op").and_then(|v| v.as_str()) {
            Some(op) => op.to_string(),
            None => {
                self.abort_write("a request without `op` arrived before write_end")?;
                let msg = if value.is_object() {
                    "a request needs a string field `op`".to_string()
                } else {
                    "a request must be a JSON object".to_string()
                };
                send(&mut self.writer, id, &error(ErrorCode::BadRequest, msg))?;
                return Ok(Flow::Continue);
            }
        };
        if !OPS.contains(&op.as_str()) {
            self.abort_write(&format!("unknown op `{op}` arrived before write_end"))?;
            send(
                &mut self.writer,
                id,
                &error(
                    ErrorCode::UnknownOp,
                    format!("unknown op `{op}`; this agent serves: {}", OPS.join(", ")),
                ),
            )?;
            return Ok(Flow::Continue);
        }
        let request: Request = match serde_json::from_value(value) {
            Ok(r) => r,
            Err(e) => {
                self.abort_write(&format!("an invalid `{op}` arrived before write_end"))?;
                send(
                    &mut self.writer,
                    id,
                    &error(
                        ErrorCode::BadRequest,
                        format!("invalid `{op}` request: {e}"),
                    ),
                )?;
                return Ok(Flow::Continue);
            }
        };
        if !matches!(request, Request::WriteChunk { .. } | Request::WriteEnd {}) {
            self.abort_write(&format!("`{op}` arrived before write_end"))?;
        }
        self.shared.debug(format_args!("request {id}: {op}"));
        self.dispatch(id, request)
    }

    fn dispatch(&mut self, id: u64, request: Request) -> io::Result<Flow> {
        let shared = self.shared;
        let reply = match request {
            Request::Hello => Response::Hello(system::hello()),
            Request::Ping => Response::Pong {},
            Request::Exec(req) => {
                let writer = &mut self.writer;
                let mut emit = |r: &Response| send(writer, id, r);
                match exec::run(&req, self.conn_fd, &shared.running, &mut emit) {
                    Ok(exit) => Response::Exit(exit),
                    Err(Failure::Reply(e)) => Response::Error(e),
                    Err(Failure::Disconnected(e)) => return Err(e),
                }
            }
            Request::ReadFile(req) => {
                let writer = &mut self.writer;
                let mut emit = |r: &Response| send(writer, id, r);
                match files::read_file(&req, &mut emit) {
                    Ok(end) => end,
                    Err(Failure::Reply(e)) => Response::Error(e),
                    Err(Failure::Disconnected(e)) => return Err(e),
                }
            }
            Request::WriteFile(req) => {
                // Answered at write_end.
                self.write = Some(files::PendingWrite::begin(id, &req));
                return Ok(Flow::Continue);
            }
            Request::WriteChunk { data } => match &mut self.write {
                Some(w) => {
                    w.push(&data.0);
                    return Ok(Flow::Continue);
                }
                None => error(
                    ErrorCode::BadRequest,
                    "write_chunk outside a write_file transaction".into(),
                ),
            },
            Request::WriteEnd {} => match self.write.take() {
                Some(w) => {
                    let id = w.id;
                    let reply = w.finish().unwrap_or_else(Response::Error);
                    send(&mut self.writer, id, &reply)?;
                    return Ok(Flow::Continue);
                }
                None => error(
                    ErrorCode::BadRequest,
                    "write_end outside a write_file transaction".into(),
                ),
            },
            Request::SetTime { unix_nanos } => {
                match system::set_time(unix_nanos, shared.config.dry_run_time) {
                    Ok(r) => {
                        if let Response::TimeSet {
                            previous_unix_nanos,
                            dry_run,
                            ..
                        } = r
                        {
                            let step = i128::from(unix_nanos) - i128::from(previous_unix_nanos);
                            shared.log(format_args!(
                                "{} CLOCK_REALTIME to {unix_nanos} ns (step {:+.3} s)",
                                if dry_run {
                                    "would set (dry run)"
                                } else {
                                    "set"
                                },
                                step as f64 / 1e9
                            ));
                        }
                        r
                    }
                    Err(e) => Response::Error(e),
                }
            }
            Request::Reseed { bytes } => system::reseed(&bytes.0, &shared.config.random_device)
                .unwrap_or_else(Response::Error),
            Request::Shutdown => {
                send(&mut self.writer, id, &Response::Bye {})?;
                return Ok(Flow::Shutdown);
            }
        };
        send(&mut self.writer, id, &reply)?;
        Ok(Flow::Continue)
    }
}
