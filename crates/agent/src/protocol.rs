//! The wire protocol shared by the agent and the client: message types, limits, the version
//! and the bounded line reader. The crate docs describe the exchange; this module is the
//! single source of truth for names and shapes.

use std::collections::BTreeMap;
use std::io::{self, BufRead};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::b64;

/// Protocol version reported by `hello`. Adding an optional field or a new op does not bump
/// it (old agents answer a new op with `unknown_op`); changing the meaning of an existing
/// message does. A client refuses an agent whose version differs from its own.
pub const PROTOCOL_VERSION: u32 = 1;

/// The agent's vsock port unless `--listen` says otherwise.
pub const DEFAULT_VSOCK_PORT: u32 = 10789;

/// The longest request or response line, newline excluded. Longer request lines get a
/// `line_too_long` error and are skipped.
pub const MAX_LINE_BYTES: usize = 8 << 20;

/// Payload bytes per `output`, `file_chunk` and `write_chunk` message.
pub const CHUNK_BYTES: usize = 64 << 10;

/// The most bytes one `reseed` may carry.
pub const MAX_RESEED_BYTES: usize = 64 << 10;

/// Ops this agent serves, in the order the crate docs list them (reported by `hello`).
pub const OPS: &[&str] = &[
    "hello",
    "ping",
    "exec",
    "read_file",
    "write_file",
    "write_chunk",
    "write_end",
    "set_time",
    "reseed",
    "shutdown",
];

/// Bytes carried as a base64 string on the wire.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Base64Bytes(pub Vec<u8>);

impl std::fmt::Debug for Base64Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Base64Bytes({} bytes)", self.0.len())
    }
}

impl Serialize for Base64Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&b64::encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        b64::decode(&text)
            .map(Base64Bytes)
            .map_err(serde::de::Error::custom)
    }
}

/// One line on the wire: a message plus the request id it belongs to. The agent echoes the
/// id of the request in every message it sends for it (0 when the request had none or could
/// not be parsed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope<T> {
    #[serde(default)]
    pub id: u64,
    #[serde(flatten)]
    pub body: T,
}

/// Host → agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Answered by [`Response::Hello`].
    Hello,
    /// Answered by [`Response::Pong`].
    Ping,
    /// Answered by any number of [`Response::Output`], then one [`Response::Exit`].
    Exec(ExecRequest),
    /// Answered by any number of [`Response::FileChunk`], then one [`Response::FileEnd`].
    ReadFile(ReadFileRequest),
    /// Opens a write transaction: the client follows it with `write_chunk`s and one
    /// `write_end` without waiting; the agent then answers once, [`Response::Written`].
    WriteFile(WriteFileRequest),
    WriteChunk {
        data: Base64Bytes,
    },
    WriteEnd {},
    /// Sets `CLOCK_REALTIME`. Answered by [`Response::TimeSet`].
    SetTime {
        unix_nanos: u64,
    },
    /// Mixes bytes into the kernel's entropy pool. Answered by [`Response::Reseeded`].
    Reseed {
        bytes: Base64Bytes,
    },
    /// Stops the agent (not the guest). Answered by [`Response::Bye`].
    Shutdown,
}

impl Request {
    /// The wire name of the op.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Hello => "hello",
            Request::Ping => "ping",
            Request::Exec(_) => "exec",
            Request::ReadFile(_) => "read_file",
            Request::WriteFile(_) => "write_file",
            Request::WriteChunk { .. } => "write_chunk",
            Request::WriteEnd {} => "write_end",
            Request::SetTime { .. } => "set_time",
            Request::Reseed { .. } => "reseed",
            Request::Shutdown => "shutdown",
        }
    }
}

/// How `exec` output chunks carry their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputEncoding {
    /// Exact bytes, base64.
    #[default]
    Base64,
    /// Text, invalid UTF-8 replaced by U+FFFD. A multi-byte character split across reads is
    /// kept whole, so chunk boundaries never corrupt valid UTF-8.
    Utf8Lossy,
}

/// Runs a program. There is no shell: `argv[0]` is looked up on `PATH` (the child's, when
/// `env` sets one) and `argv` reaches it verbatim.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    /// Absolute working directory; the agent's own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Variables to set, on top of the agent's environment (or of nothing with `clear_env`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub clear_env: bool,
    /// After this long the agent SIGKILLs the command's whole process group. No limit when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Fed to the command's stdin, which is then closed; `/dev/null` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<Base64Bytes>,
    #[serde(default, skip_serializing_if = "is_default_encoding")]
    pub output: OutputEncoding,
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_default_encoding(e: &OutputEncoding) -> bool {
    *e == OutputEncoding::default()
}

impl ExecRequest {
    /// A request for `argv`, with everything else defaulted.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ExecRequest {
            argv: argv.into_iter().map(Into::into).collect(),
            ..ExecRequest::default()
        }
    }

    pub fn cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), value.into());
        self
    }

    pub fn clear_env(mut self) -> Self {
        self.clear_env = true;
        self
    }

    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        self
    }

    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(Base64Bytes(data.into()));
        self
    }

    pub fn output(mut self, encoding: OutputEncoding) -> Self {
        self.output = encoding;
        self
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReadFileRequest {
    /// Absolute path.
    pub path: String,
    /// Read at most this many bytes; `file_end.truncated` tells whether there was more.
    pub max_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WriteFileRequest {
    /// Absolute path. Its directory must exist unless `create_dirs`.
    pub path: String,
    /// Permission bits of the new file (e.g. 420 = 0o644), applied exactly (no umask).
    pub mode: u32,
    #[serde(default, skip_serializing_if = "is_false")]
    pub create_dirs: bool,
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamName {
    Stdout,
    Stderr,
}

/// Agent → host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Response {
    Hello(Hello),
    Pong {},
    /// A chunk of `exec` output, sent as soon as it was read.
    Output {
        stream: StreamName,
        encoding: OutputEncoding,
        data: String,
    },
    /// The end of an `exec`.
    Exit(ExitInfo),
    FileChunk {
        data: Base64Bytes,
    },
    FileEnd {
        /// Bytes sent.
        bytes: u64,
        /// The file's size when it was opened.
        size: u64,
        /// Whether `max_bytes` stopped the read early.
        truncated: bool,
    },
    Written {
        path: String,
        bytes: u64,
    },
    TimeSet {
        /// The guest's wall clock just before the change.
        previous_unix_nanos: u64,
        unix_nanos: u64,
        /// The agent runs with `--dry-run-time`: permission was checked, the clock not set.
        dry_run: bool,
    },
    Reseeded {
        bytes: u64,
        /// Whether the kernel credited the bytes as entropy (`RNDADDENTROPY`, root only);
        /// otherwise they were only mixed in by a plain write.
        credited: bool,
    },
    Bye {},
    Error(ErrorInfo),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    pub agent_version: String,
    pub protocol_version: u32,
    /// `/proc/sys/kernel/random/boot_id`: equal across restores of one snapshot.
    pub boot_id: String,
    /// `CLOCK_BOOTTIME`; it does not advance while a snapshot sits on disk.
    pub uptime_ms: u64,
    /// The guest's wall clock, for the host to measure skew before `set_time`.
    pub realtime_unix_nanos: u64,
    pub hostname: String,
    pub pid: u32,
    pub euid: u32,
    pub ops: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit code, when the command exited.
    pub code: Option<i32>,
    /// The signal that killed it, when one did.
    pub signal: Option<i32>,
    /// The agent killed the process group because `timeout_ms` passed.
    pub timed_out: bool,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorInfo {
    pub code: ErrorCode,
    pub message: String,
}

/// Machine-readable error classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not JSON (or not UTF-8).
    BadJson,
    /// Valid JSON, but not a valid request (missing field, wrong type, relative path...).
    BadRequest,
    UnknownOp,
    LineTooLong,
    /// The agent serves its maximum number of connections.
    Busy,
    /// The program could not be started (not found, not executable, bad cwd).
    SpawnFailed,
    NotFound,
    /// EACCES: file permissions.
    PermissionDenied,
    /// EPERM: the agent lacks the privilege (e.g. CAP_SYS_TIME for `set_time`).
    NotPermitted,
    Io,
    /// A code this client does not know (a newer agent).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::LineTooLong => "line_too_long",
            ErrorCode::Busy => "busy",
            ErrorCode::SpawnFailed => "spawn_failed",
            ErrorCode::NotFound => "not_found",
            ErrorCode::PermissionDenied => "permission_denied",
            ErrorCode::NotPermitted => "not_permitted",
            ErrorCode::Io => "io",
            ErrorCode::Unknown => "unknown",
        }
    }

    /// The class of an I/O error.
    pub fn from_io(err: &io::Error) -> ErrorCode {
        match err.kind() {
            io::ErrorKind::NotFound => ErrorCode::NotFound,
            io::ErrorKind::PermissionDenied if err.raw_os_error() == Some(libc::EPERM) => {
                ErrorCode::NotPermitted
            }
            io::ErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
            _ => ErrorCode::Io,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Serializes one message as a line (with its trailing newline).
pub fn encode_line<T: Serialize>(id: u64, body: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(&Envelope { id, body })
        // Our message types contain only strings, numbers, maps with string keys: infallible.
        .unwrap_or_else(|e| format!("{{\"id\":{id},\"type\":\"error\",\"code\":\"io\",\"message\":\"cannot encode: {e}\"}}").into_bytes());
    line.push(b'\n');
    line
}

/// What [`read_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line, newline stripped.
    Complete(Vec<u8>),
    /// A line longer than the limit; it was read and thrown away up to its newline (or EOF).
    TooLong { len: usize },
}

/// Reads one `\n`-terminated line of at most `max` bytes without ever buffering more than
/// `max`. `Ok(None)` on a clean EOF; a last line without newline counts as a line.
pub fn read_line<R: BufRead + ?Sized>(reader: &mut R, max: usize) -> io::Result<Option<Line>> {
    let mut line = Vec::new();
    let mut discarded = 0usize;
    loop {
        let available = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(match (discarded, line.is_empty()) {
                (0, true) => None,
                (0, false) => Some(Line::Complete(line)),
                (len, _) => Some(Line::TooLong { len }),
            });
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (available.len(), false),
        };
        if discarded == 0 && line.len() + take <= max {
            line.extend_from_slice(&available[..take]);
        } else {
            discarded += line.len() + take;
            line = Vec::new();
        }
        reader.consume(if done { take + 1 } else { take });
        if done {
            return Ok(Some(if discarded == 0 {
                Line::Complete(line)
            } else {
                Line::TooLong { len: discarded }
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wire<T: Serialize>(id: u64, body: &T) -> serde_json::Value {
        serde_json::from_slice(&encode_line(id, body)).expect("valid json")
    }

    #[test]
    fn requests_have_the_documented_shape() {
        let exec = ExecRequest::new(["git", "status"])
            .cwd("/ws")
            .env("A", "b")
            .timeout(std::time::Duration::from_millis(1500))
            .stdin(b"in".to_vec());
        assert_eq!(
            wire(7, &Request::Exec(exec)),
            json!({"id": 7, "op": "exec", "argv": ["git", "status"], "cwd": "/ws",
                   "env": {"A": "b"}, "timeout_ms": 1500, "stdin": "aW4="})
        );
        assert_eq!(wire(1, &Request::Ping), json!({"id": 1, "op": "ping"}));
        assert_eq!(
            wire(2, &Request::WriteEnd {}),
            json!({"id": 2, "op": "write_end"})
        );
        assert_eq!(
            wire(3, &Request::SetTime { unix_nanos: 5 }),
            json!({"id": 3, "op": "set_time", "unix_nanos": 5})
        );
    }

    #[test]
    fn responses_round_trip() {
        let all = vec![
            Response::Pong {},
            Response::Output {
                stream: StreamName::Stderr,
                encoding: OutputEncoding::Utf8Lossy,
                data: "x".into(),
            },
            Response::Exit(ExitInfo {
                code: None,
                signal: Some(9),
                timed_out: true,
                duration_ms: 3,
            }),
            Response::FileChunk {
                data: Base64Bytes(vec![0, 255]),
            },
            Response::Error(ErrorInfo {
                code: ErrorCode::NotPermitted,
                message: "m".into(),
            }),
        ];
        for r in all {
            let line = encode_line(9, &r);
            let back: Envelope<Response> = serde_json::from_slice(&line).expect("decodes");
            assert_eq!(back.id, 9);
            assert_eq!(back.body, r);
        }
        assert_eq!(wire(0, &Response::Bye {}), json!({"id": 0, "type": "bye"}));
    }

    #[test]
    fn unknown_error_codes_decode_as_unknown() {
        let e: Envelope<Response> = serde_json::from_str(
            r#"{"id":1,"type":"error","code":"from_the_future","message":""}"#,
        )
        .expect("decodes");
        assert_eq!(
            e.body,
            Response::Error(ErrorInfo {
                code: ErrorCode::Unknown,
                message: String::new()
            })
        );
    }

    #[test]
    fn read_line_bounds_memory_and_resynchronises() {
        let input = b"short\nthis line is too long\nok\nlast".to_vec();
        let mut r = io::BufReader::with_capacity(4, &input[..]);
        assert_eq!(
            read_line(&mut r, 8).ok(),
            Some(Some(Line::Complete(b"short".to_vec())))
        );
        assert_eq!(
            read_line(&mut r, 8).ok(),
            Some(Some(Line::TooLong { len: 21 }))
        );
        assert_eq!(
            read_line(&mut r, 8).ok(),
            Some(Some(Line::Complete(b"ok".to_vec())))
        );
        assert_eq!(
            read_line(&mut r, 8).ok(),
            Some(Some(Line::Complete(b"last".to_vec())))
        );
        assert_eq!(read_line(&mut r, 8).ok(), Some(None));
    }
}
