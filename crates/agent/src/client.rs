//! The host side: connects to the agent directly over a unix socket or through
//! Firecracker's hybrid vsock (`CONNECT <port>\n` / `OK <n>\n` on the VM's vsock UDS), and
//! wraps each op in a typed call with a timeout or deadline.

use std::io::{self, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::b64;
use crate::error::ClientError;
use crate::protocol::{
    encode_line, read_line, Base64Bytes, Envelope, ExecRequest, ExitInfo, Hello, Line,
    OutputEncoding, ReadFileRequest, Request, Response, StreamName, WriteFileRequest, CHUNK_BYTES,
    MAX_LINE_BYTES, PROTOCOL_VERSION,
};

/// How long a call other than `exec` may wait for its answer, unless [`Client::set_timeout`]
/// says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long past an `exec` deadline the client waits for the agent's `exit` report (the
/// agent kills the command at the deadline itself).
pub const EXIT_REPORT_GRACE: Duration = Duration::from_secs(2);

/// Longest wait for one connection attempt (connect plus `OK`, or connect plus `ping`)
/// inside [`Client::wait_ready`].
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

const BACKOFF_FIRST: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(250);

/// Where the agent is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The agent's own unix socket (`--listen unix:PATH`): tests and debugging.
    Unix(PathBuf),
    /// A guest port behind a Firecracker vsock device whose `uds_path` is `uds_path`.
    HybridVsock { uds_path: PathBuf, port: u32 },
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::HybridVsock { uds_path, port } => {
                write!(f, "vsock port {port} via {}", uds_path.display())
            }
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// The agent killed the process group at the timeout (or the call's deadline).
    pub timed_out: bool,
    pub duration: Duration,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl From<ExitInfo> for ExitStatus {
    fn from(e: ExitInfo) -> Self {
        ExitStatus {
            code: e.code,
            signal: e.signal,
            timed_out: e.timed_out,
            duration: Duration::from_millis(e.duration_ms),
        }
    }
}

/// A finished command with its collected output.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileContents {
    pub data: Vec<u8>,
    /// The file's size when the agent opened it.
    pub size: u64,
    /// `max_bytes` cut the read short.
    pub truncated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeSet {
    pub previous_unix_nanos: u64,
    pub unix_nanos: u64,
    pub dry_run: bool,
}

impl TimeSet {
    /// How far the guest clock moved (positive: forward), in nanoseconds.
    pub fn step_nanos(&self) -> i128 {
        i128::from(self.unix_nanos) - i128::from(self.previous_unix_nanos)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reseeded {
    pub bytes: u64,
    pub credited: bool,
}

/// One connection to the agent. Requests on it run one after the other; open several
/// clients for parallelism. After a transport error (timeout, reset, garbage) the client
/// refuses further calls with [`ClientError::Broken`]: make a new one. An error the agent
/// reports ([`ClientError::Agent`]) leaves it usable.
#[derive(Debug)]
pub struct Client {
    endpoint: Endpoint,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    host_port: Option<u32>,
    next_id: u64,
    timeout: Duration,
    broken: Option<String>,
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Sends `CONNECT <port>\n` and reads `OK <n>\n` one byte at a time, so not a byte of what
/// follows is consumed.
fn hybrid_handshake(
    stream: &mut UnixStream,
    uds_path: &std::path::Path,
    port: u32,
) -> Result<u32, ClientError> {
    let io_err = |source| ClientError::Io {
        op: "vsock handshake",
        source,
    };
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(io_err)?;
    let mut line = Vec::with_capacity(32);
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => {
                return Err(ClientError::NoListener {
                    uds: uds_path.to_path_buf(),
                    port,
                })
            }
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() >= 64 => {
                return Err(ClientError::Handshake {
                    uds: uds_path.to_path_buf(),
                    port,
                    reply: String::from_utf8_lossy(&line).into_owned(),
                })
            }
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Firecracker resets rather than closes in some versions: same meaning.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                return Err(ClientError::NoListener {
                    uds: uds_path.to_path_buf(),
                    port,
                })
            }
            Err(e) => return Err(io_err(e)),
        }
    }
    let text = String::from_utf8_lossy(&line);
    text.strip_prefix("OK ")
        .and_then(|n| n.trim().parse::<u32>().ok())
        .ok_or_else(|| ClientError::Handshake {
            uds: uds_path.to_path_buf(),
            port,
            reply: text.into_owned(),
        })
}

impl Client {
    /// One connection attempt; `timeout` bounds the connect handshake.
    pub fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<Client, ClientError> {
        let (path, port) = match endpoint {
            Endpoint::Unix(path) => (path, None),
            Endpoint::HybridVsock { uds_path, port } => (uds_path, Some(*port)),
        };
        let connect_err = |source| ClientError::Connect {
            endpoint: endpoint.to_string(),
            source,
        };
        let mut stream = UnixStream::connect(path).map_err(connect_err)?;
        let timeout = timeout.max(Duration::from_millis(1));
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(connect_err)?;
        let host_port = match port {
            Some(port) => Some(
                hybrid_handshake(&mut stream, path, port).map_err(|e| match e {
                    ClientError::Io { source, .. }
                        if matches!(
                            source.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                    {
                        ClientError::Timeout {
                            op: "vsock handshake",
                            waited: timeout,
                        }
                    }
                    other => other,
                })?,
            ),
            None => None,
        };
        let reader = stream.try_clone().map_err(connect_err)?;
        Ok(Client {
            endpoint: endpoint.clone(),
            reader: BufReader::with_capacity(64 << 10, reader),
            writer: stream,
            host_port,
            next_id: 1,
            timeout: DEFAULT_TIMEOUT,
            broken: None,
        })
    }

    /// Connects, retrying with backoff until the agent answers `ping` and `hello`, or
    /// `deadline` passes. Use it after boot and after every snapshot restore: a restore
    /// resets all vsock connections, and the guest listener may need a moment.
    pub fn wait_ready(
        endpoint: &Endpoint,
        deadline: Instant,
    ) -> Result<(Client, Hello), ClientError> {
        let start = Instant::now();
        let mut attempts = 0u32;
        let mut backoff = BACKOFF_FIRST;
        loop {
            attempts += 1;
            let attempt = remaining(deadline).min(ATTEMPT_TIMEOUT);
            let result = Client::connect(endpoint, attempt).and_then(|mut c| {
                c.timeout = attempt.max(Duration::from_millis(1));
                c.ping()?;
                let hello = c.hello()?;
                if hello.protocol_version != PROTOCOL_VERSION {
                    return Err(ClientError::Incompatible {
                        agent: hello.protocol_version,
                        client: PROTOCOL_VERSION,
                    });
                }
                c.timeout = DEFAULT_TIMEOUT;
                Ok((c, hello))
            });
            let last = match result {
                Ok(ready) => return Ok(ready),
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => e,
            };
            let left = remaining(deadline);
            if left.is_zero() {
                return Err(ClientError::NotReady {
                    endpoint: endpoint.to_string(),
                    waited: start.elapsed(),
                    attempts,
                    last: Box::new(last),
                });
            }
            std::thread::sleep(backoff.min(left));
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The host-side port Firecracker assigned (`OK <n>`), for hybrid vsock connections.
    pub fn host_port(&self) -> Option<u32> {
        self.host_port
    }

    /// Bounds every later call except `exec` (which has its own deadline).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout.max(Duration::from_millis(1));
    }

    pub fn hello(&mut self) -> Result<Hello, ClientError> {
        let op = "hello";
        let id = self.send(op, &Request::Hello, None)?;
        match self.recv(op, id, Some(Instant::now() + self.timeout))? {
            Response::Hello(h) => Ok(h),
            other => Err(self.unexpected(op, other)),
        }
    }

    /// Round-trips a `ping`; returns how long it took.
    pub fn ping(&mut self) -> Result<Duration, ClientError> {
        let op = "ping";
        let start = Instant::now();
        let id = self.send(op, &Request::Ping, None)?;
        match self.recv(op, id, Some(start + self.timeout))? {
            Response::Pong {} => Ok(start.elapsed()),
            other => Err(self.unexpected(op, other)),
        }
    }

    /// Runs a command and collects its output. See [`Client::exec_streaming`].
    pub fn exec(
        &mut self,
        req: &ExecRequest,
        deadline: Option<Instant>,
    ) -> Result<ExecOutput, ClientError> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let status = self.exec_streaming(req, deadline, &mut |stream, data| match stream {
            StreamName::Stdout => stdout.extend_from_slice(data),
            StreamName::Stderr => stderr.extend_from_slice(data),
        })?;
        Ok(ExecOutput {
            status,
            stdout,
            stderr,
        })
    }

    /// Runs a command, handing each output chunk to `on_output` as it arrives. With a
    /// `deadline`, the agent's timeout is capped to it (so the agent kills the process group
    /// at the deadline and reports `timed_out`), and the call gives up
    /// [`EXIT_REPORT_GRACE`] later. A command that exits non-zero or by a signal is `Ok`.
    pub fn exec_streaming(
        &mut self,
        req: &ExecRequest,
        deadline: Option<Instant>,
        on_output: &mut dyn FnMut(StreamName, &[u8]),
    ) -> Result<ExitStatus, ClientError> {
        let op = "exec";
        let mut req = req.clone();
        let mut until = None;
        if let Some(deadline) = deadline {
            let left = remaining(deadline);
            if left.is_zero() {
                return Err(ClientError::DeadlinePassed { op });
            }
            let left_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1);
            req.timeout_ms = Some(req.timeout_ms.map_or(left_ms, |t| t.min(left_ms)));
            until = Some(deadline + EXIT_REPORT_GRACE);
        } else if let Some(ms) = req.timeout_ms {
            until = Instant::now()
                .checked_add(Duration::from_millis(ms))
                .map(|t| t + EXIT_REPORT_GRACE);
        }
        let id = self.send(op, &Request::Exec(req), None)?;
        loop {
            match self.recv(op, id, until)? {
                Response::Output {
                    stream,
                    encoding,
                    data,
                } => match encoding {
                    OutputEncoding::Utf8Lossy => on_output(stream, data.as_bytes()),
                    OutputEncoding::Base64 => match b64::decode(&data) {
                        Ok(bytes) => on_output(stream, &bytes),
                        Err(e) => {
                            return Err(self.poison(ClientError::Protocol {
                                op,
                                detail: format!("output chunk: {e}"),
                            }))
                        }
                    },
                },
                Response::Exit(exit) => return Ok(exit.into()),
                other => return Err(self.unexpected(op, other)),
            }
        }
    }

    /// Reads at most `max_bytes` of an absolute guest path.
    pub fn read_file(&mut self, path: &str, max_bytes: u64) -> Result<FileContents, ClientError> {
        let op = "read_file";
        let req = Request::ReadFile(ReadFileRequest {
            path: path.to_string(),
            max_bytes,
        });
        let id = self.send(op, &req, None)?;
        let mut data = Vec::new();
        loop {
            // Each chunk restarts the timeout: it bounds silence, not the transfer.
            match self.recv(op, id, Some(Instant::now() + self.timeout))? {
                Response::FileChunk { data: chunk } => {
                    if data.len() as u64 + chunk.0.len() as u64 > max_bytes {
                        return Err(self.poison(ClientError::Protocol {
                            op,
                            detail: format!("the agent sent more than max_bytes={max_bytes}"),
                        }));
                    }
                    data.extend_from_slice(&chunk.0);
                }
                Response::FileEnd {
                    bytes,
                    size,
                    truncated,
                } => {
                    if bytes != data.len() as u64 {
                        return Err(self.poison(ClientError::Protocol {
                            op,
                            detail: format!("file_end says {bytes} bytes, received {}", data.len()),
                        }));
                    }
                    return Ok(FileContents {
                        data,
                        size,
                        truncated,
                    });
                }
                other => return Err(self.unexpected(op, other)),
            }
        }
    }

    /// Writes `contents` to an absolute guest path atomically, with permission bits `mode`.
    /// Returns the bytes written.
    pub fn write_file(
        &mut self,
        path: &str,
        mode: u32,
        contents: &[u8],
    ) -> Result<u64, ClientError> {
        self.write_file_from(
            &WriteFileRequest {
                path: path.to_string(),
                mode,
                create_dirs: false,
            },
            &mut &contents[..],
        )
    }

    /// Streams `contents` into the file `req` describes (see [`WriteFileRequest`]).
    pub fn write_file_from(
        &mut self,
        req: &WriteFileRequest,
        contents: &mut dyn Read,
    ) -> Result<u64, ClientError> {
        let op = "write_file";
        let id = self.send(op, &Request::WriteFile(req.clone()), None)?;
        let mut buf = vec![0u8; CHUNK_BYTES];
        loop {
            let n = match contents.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    // The agent is mid-transaction: the connection cannot be reused.
                    return Err(self.poison(ClientError::Io {
                        op: "write_file (reading the local contents)",
                        source,
                    }));
                }
            };
            let chunk = Request::WriteChunk {
                data: Base64Bytes(buf[..n].to_vec()),
            };
            self.send(op, &chunk, Some(id))?;
        }
        self.send(op, &Request::WriteEnd {}, Some(id))?;
        match self.recv(op, id, Some(Instant::now() + self.timeout))? {
            Response::Written { bytes, .. } => Ok(bytes),
            other => Err(self.unexpected(op, other)),
        }
    }

    /// Sets the guest's `CLOCK_REALTIME`.
    pub fn set_time(&mut self, unix_nanos: u64) -> Result<TimeSet, ClientError> {
        let op = "set_time";
        let id = self.send(op, &Request::SetTime { unix_nanos }, None)?;
        match self.recv(op, id, Some(Instant::now() + self.timeout))? {
            Response::TimeSet {
                previous_unix_nanos,
                unix_nanos,
                dry_run,
            } => Ok(TimeSet {
                previous_unix_nanos,
                unix_nanos,
                dry_run,
            }),
            other => Err(self.unexpected(op, other)),
        }
    }

    /// Sets the guest clock to this host's wall clock, read just before sending.
    pub fn sync_clock(&mut self) -> Result<TimeSet, ClientError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        self.set_time(now)
    }

    /// Feeds `bytes` (from the host's CSPRNG) into the guest's entropy pool.
    pub fn reseed(&mut self, bytes: &[u8]) -> Result<Reseeded, ClientError> {
        let op = "reseed";
        let req = Request::Reseed {
            bytes: Base64Bytes(bytes.to_vec()),
        };
        let id = self.send(op, &req, None)?;
        match self.recv(op, id, Some(Instant::now() + self.timeout))? {
            Response::Reseeded { bytes, credited } => Ok(Reseeded { bytes, credited }),
            other => Err(self.unexpected(op, other)),
        }
    }

    /// Asks the agent process to exit (the guest keeps running).
    pub fn shutdown(mut self) -> Result<(), ClientError> {
        let op = "shutdown";
        let id = self.send(op, &Request::Shutdown, None)?;
        match self.recv(op, id, Some(Instant::now() + self.timeout))? {
            Response::Bye {} => Ok(()),
            other => Err(self.unexpected(op, other)),
        }
    }

    /// Marks the connection unusable and passes the error on.
    fn poison(&mut self, err: ClientError) -> ClientError {
        if self.broken.is_none() {
            self.broken = Some(err.to_string());
        }
        err
    }

    /// An agent error becomes [`ClientError::Agent`]; anything else out of place is a
    /// protocol error that poisons the connection.
    fn unexpected(&mut self, op: &'static str, got: Response) -> ClientError {
        match got {
            Response::Error(e) => ClientError::Agent {
                op,
                code: e.code,
                message: e.message,
            },
            other => self.poison(ClientError::Protocol {
                op,
                detail: format!("unexpected message {other:?}"),
            }),
        }
    }

    /// Sends one request; `id` continues a transaction, otherwise a new id is taken.
    fn send(
        &mut self,
        op: &'static str,
        req: &Request,
        id: Option<u64>,
    ) -> Result<u64, ClientError> {
        if let Some(why) = &self.broken {
            return Err(ClientError::Broken(why.clone()));
        }
        let id = id.unwrap_or_else(|| {
            let id = self.next_id;
            self.next_id += 1;
            id
        });
        let line = encode_line(id, req);
        if line.len() - 1 > MAX_LINE_BYTES {
            return Err(ClientError::TooLarge {
                op,
                len: line.len() - 1,
                max: MAX_LINE_BYTES,
            });
        }
        let timeout = self.timeout;
        let result = self
            .writer
            .set_write_timeout(Some(timeout))
            .and_then(|()| self.writer.write_all(&line));
        match result {
            Ok(()) => Ok(id),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(self.poison(ClientError::Timeout {
                    op,
                    waited: timeout,
                }))
            }
            Err(source) => {
                // The agent may have said why before closing (e.g. `busy`): prefer that.
                if let Some(said) = self.parting_error(op) {
                    return Err(self.poison(said));
                }
                Err(self.poison(ClientError::Io { op, source }))
            }
        }
    }

    /// An error the agent sent (with id 0) just before it closed the connection.
    fn parting_error(&mut self, op: &'static str) -> Option<ClientError> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_millis(100)))
            .ok()?;
        match read_line(&mut self.reader, MAX_LINE_BYTES) {
            Ok(Some(Line::Complete(bytes))) => {
                match serde_json::from_slice::<Envelope<Response>>(&bytes)
                    .ok()?
                    .body
                {
                    Response::Error(e) => Some(ClientError::Agent {
                        op,
                        code: e.code,
                        message: e.message,
                    }),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// The next message for request `id`, skipping stale ones (answers to requests whose
    /// caller gave up, e.g. on a timeout, can never be current: ids only grow).
    fn recv(
        &mut self,
        op: &'static str,
        id: u64,
        until: Option<Instant>,
    ) -> Result<Response, ClientError> {
        let start = Instant::now();
        loop {
            let wait = match until {
                Some(t) => {
                    let left = remaining(t);
                    if left.is_zero() {
                        return Err(self.poison(ClientError::Timeout {
                            op,
                            waited: start.elapsed(),
                        }));
                    }
                    Some(left)
                }
                None => None,
            };
            if let Err(source) = self.reader.get_ref().set_read_timeout(wait) {
                return Err(self.poison(ClientError::Io { op, source }));
            }
            let bytes = match read_line(&mut self.reader, MAX_LINE_BYTES) {
                Ok(Some(Line::Complete(bytes))) => bytes,
                Ok(Some(Line::TooLong { len })) => {
                    return Err(self.poison(ClientError::Protocol {
                        op,
                        detail: format!("answer line of {len} bytes exceeds {MAX_LINE_BYTES}"),
                    }))
                }
                Ok(None) => return Err(self.poison(ClientError::Closed { op })),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(self.poison(ClientError::Timeout {
                        op,
                        waited: start.elapsed(),
                    }))
                }
                Err(source) => return Err(self.poison(ClientError::Io { op, source })),
            };
            let msg: Envelope<Response> = match serde_json::from_slice(&bytes) {
                Ok(m) => m,
                Err(e) => {
                    return Err(self.poison(ClientError::Protocol {
                        op,
                        detail: format!(
                            "cannot decode {:?}: {e}",
                            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                        ),
                    }))
                }
            };
            // Id 0 errors concern the connection itself (`busy`), so they are ours too.
            if msg.id == id || (msg.id == 0 && matches!(msg.body, Response::Error(_))) {
                return Ok(msg.body);
            }
        }
    }
}
