//! `exec`: runs one argv (no shell) in its own process group, streams its output as it is
//! read, and enforces the timeout by killing the whole group.

use std::collections::HashSet;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Failure;
use crate::protocol::{
    ErrorCode, ErrorInfo, ExecRequest, ExitInfo, OutputEncoding, Response, StreamName, CHUNK_BYTES,
};

/// How long output pipes may stay open after the command exited, because a descendant that
/// left the process group (or was backgrounded) still holds them. Then the agent stops
/// reading and reports the exit.
const LINGER_AFTER_EXIT: Duration = Duration::from_millis(500);

/// Poll interval for noticing the exit when `pidfd_open` is unavailable (Linux < 5.3).
const EXIT_POLL_FALLBACK: Duration = Duration::from_millis(20);

/// Process groups of the commands running right now, killed when the agent shuts down.
#[derive(Default)]
pub(crate) struct Running(Mutex<HashSet<i32>>);

impl Running {
    fn insert(&self, pgid: i32) {
        self.lock().insert(pgid);
    }

    fn remove(&self, pgid: i32) {
        self.lock().remove(&pgid);
    }

    pub(crate) fn kill_all(&self) {
        for &pgid in self.lock().iter() {
            kill_group(pgid, libc::SIGKILL);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<i32>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn kill_group(pgid: i32, signal: i32) {
    // SAFETY: kill(2) has no memory arguments; ESRCH (group already gone) is fine.
    unsafe { libc::kill(-pgid, signal) };
}

fn bad_request(message: String) -> Failure {
    Failure::Reply(ErrorInfo {
        code: ErrorCode::BadRequest,
        message,
    })
}

fn validate(req: &ExecRequest) -> Result<(), Failure> {
    match req.argv.first() {
        None => return Err(bad_request("exec: argv is empty".into())),
        Some(p) if p.is_empty() => return Err(bad_request("exec: argv[0] is empty".into())),
        Some(_) => {}
    }
    if let Some(cwd) = &req.cwd {
        if !Path::new(cwd).is_absolute() {
            return Err(bad_request(format!(
                "exec: cwd `{cwd}` is not an absolute path"
            )));
        }
    }
    if let Some(key) = req
        .env
        .keys()
        .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
    {
        return Err(bad_request(format!(
            "exec: invalid environment variable name `{key}`"
        )));
    }
    Ok(())
}

/// Runs the command; `emit` sends one message to the host. Returns the exit, or why there
/// is none.
pub(crate) fn run(
    req: &ExecRequest,
    conn_fd: RawFd,
    running: &Running,
    emit: &mut dyn FnMut(&Response) -> io::Result<()>,
) -> Result<ExitInfo, Failure> {
    validate(req)?;
    let mut cmd = Command::new(&req.argv[0]);
    cmd.args(&req.argv[1..]);
    if req.clear_env {
        cmd.env_clear();
    }
    cmd.envs(&req.env);
    if let Some(cwd) = &req.cwd {
        cmd.current_dir(cwd);
    }
    cmd.stdin(if req.stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    // Its own group, so a timeout reaches every descendant that did not setsid() away.
    .process_group(0);

    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| {
        Failure::Reply(ErrorInfo {
            code: ErrorCode::SpawnFailed,
            message: match &req.cwd {
                Some(cwd) => format!("cannot run `{}` in {cwd}: {e}", req.argv[0]),
                None => format!("cannot run `{}`: {e}", req.argv[0]),
            },
        })
    })?;
    let pgid = child.id() as i32;
    running.insert(pgid);
    let result = supervise(req, &mut child, pgid, start, conn_fd, emit);
    if result.is_err() {
        kill_group(pgid, libc::SIGKILL);
        let _ = child.wait();
    }
    running.remove(pgid);
    result
}

struct Pipe {
    name: StreamName,
    fd: OwnedFd,
    /// An incomplete UTF-8 sequence held back from the previous chunk (`utf8_lossy` only).
    carry: Vec<u8>,
}

fn supervise(
    req: &ExecRequest,
    child: &mut Child,
    pgid: i32,
    start: Instant,
    conn_fd: RawFd,
    emit: &mut dyn FnMut(&Response) -> io::Result<()>,
) -> Result<ExitInfo, Failure> {
    if let (Some(mut pipe), Some(data)) = (child.stdin.take(), req.stdin.clone()) {
        // Detached: it ends when the data is written or the reader is gone (EPIPE; the agent
        // ignores SIGPIPE like every Rust program).
        std::thread::Builder::new()
            .name("exec-stdin".into())
            .spawn(move || {
                let _ = pipe.write_all(&data.0);
            })
            .map_err(|e| Failure::Reply(io_error("start the stdin writer", &e)))?;
    }
    let mut pipes: Vec<Pipe> = Vec::with_capacity(2);
    for (name, fd) in [
        (StreamName::Stdout, child.stdout.take().map(OwnedFd::from)),
        (StreamName::Stderr, child.stderr.take().map(OwnedFd::from)),
    ] {
        if let Some(fd) = fd {
            set_nonblocking(&fd).map_err(|e| Failure::Reply(io_error("configure a pipe", &e)))?;
            pipes.push(Pipe {
                name,
                fd,
                carry: Vec::new(),
            });
        }
    }
    let pidfd = pidfd_open(pgid);
    // A timeout too large to represent is no timeout.
    let deadline = req
        .timeout_ms
        .and_then(|ms| start.checked_add(Duration::from_millis(ms)));
    let mut status: Option<ExitStatus> = None;
    let mut exited_at = start;
    let mut timed_out = false;
    let mut buf = vec![0u8; CHUNK_BYTES];

    loop {
        if status.is_none() {
            if let Some(s) = child
                .try_wait()
                .map_err(|e| Failure::Reply(io_error("wait for the command", &e)))?
            {
                status = Some(s);
                exited_at = Instant::now();
            }
        }
        let now = Instant::now();
        if status.is_some() && (pipes.is_empty() || now >= exited_at + LINGER_AFTER_EXIT) {
            break;
        }
        if !timed_out && deadline.is_some_and(|d| now >= d) {
            kill_group(pgid, libc::SIGKILL);
            timed_out = true;
        }

        let mut fds: Vec<libc::pollfd> = pipes
            .iter()
            .map(|p| pollfd(p.fd.as_raw_fd(), libc::POLLIN))
            .collect();
        let conn_slot = fds.len();
        fds.push(pollfd(conn_fd, libc::POLLRDHUP));
        let watch_pidfd = status.is_none() && pidfd.is_some();
        if let (true, Some(fd)) = (watch_pidfd, &pidfd) {
            fds.push(pollfd(fd.as_raw_fd(), libc::POLLIN));
        }
        let mut wait: Option<Duration> = None;
        let mut cap = |d: Duration| wait = Some(wait.map_or(d, |w| w.min(d)));
        if let (false, Some(d)) = (timed_out, deadline) {
            cap(d.saturating_duration_since(now));
        }
        if status.is_some() {
            cap((exited_at + LINGER_AFTER_EXIT).saturating_duration_since(now));
        } else if !watch_pidfd {
            cap(EXIT_POLL_FALLBACK);
        }
        poll(&mut fds, wait).map_err(|e| Failure::Reply(io_error("poll", &e)))?;

        if fds[conn_slot].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0 {
            return Err(Failure::Disconnected(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the host closed the connection during exec",
            )));
        }
        let mut closed = Vec::new();
        for (i, pipe) in pipes.iter_mut().enumerate() {
            if fds[i].revents == 0 {
                continue;
            }
            if drain(pipe, &mut buf, req.output, emit)? {
                closed.push(i);
            }
        }
        for i in closed.into_iter().rev() {
            let mut pipe = pipes.remove(i);
            if !pipe.carry.is_empty() {
                let data = String::from_utf8_lossy(&pipe.carry).into_owned();
                pipe.carry.clear();
                emit(&output(pipe.name, req.output, data)).map_err(Failure::Disconnected)?;
            }
        }
    }

    let status = status.unwrap_or_else(|| ExitStatus::from_raw(0));
    Ok(ExitInfo {
        code: status.code(),
        signal: status.signal(),
        timed_out,
        duration_ms: u64::try_from(exited_at.duration_since(start).as_millis()).unwrap_or(u64::MAX),
    })
}

/// Reads what the pipe has now and sends it; true at EOF.
fn drain(
    pipe: &mut Pipe,
    buf: &mut [u8],
    encoding: OutputEncoding,
    emit: &mut dyn FnMut(&Response) -> io::Result<()>,
) -> Result<bool, Failure> {
    loop {
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::read(pipe.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            return Ok(true);
        }
        if n < 0 {
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::WouldBlock => return Ok(false),
                io::ErrorKind::Interrupted => continue,
                _ => return Err(Failure::Reply(io_error("read command output", &err))),
            }
        }
        let bytes = &buf[..n as usize];
        let data = match encoding {
            OutputEncoding::Base64 => crate::b64::encode(bytes),
            OutputEncoding::Utf8Lossy => utf8_lossy_chunk(&mut pipe.carry, bytes),
        };
        if !data.is_empty() {
            emit(&output(pipe.name, encoding, data)).map_err(Failure::Disconnected)?;
        }
    }
}

fn output(stream: StreamName, encoding: OutputEncoding, data: String) -> Response {
    Response::Output {
        stream,
        encoding,
        data,
    }
}

/// Decodes `carry + bytes` lossily, keeping a trailing incomplete (but so far valid) UTF-8
/// sequence in `carry` for the next chunk.
pub(crate) fn utf8_lossy_chunk(carry: &mut Vec<u8>, bytes: &[u8]) -> String {
    carry.extend_from_slice(bytes);
    let cut = incomplete_tail(carry);
    let text = String::from_utf8_lossy(&carry[..cut]).into_owned();
    carry.drain(..cut);
    text
}

/// Where a trailing, possibly incomplete multi-byte sequence starts (`b.len()` if none).
fn incomplete_tail(b: &[u8]) -> usize {
    let len = b.len();
    for i in (len.saturating_sub(3)..len).rev() {
        let byte = b[i];
        if byte & 0xC0 == 0x80 {
            continue; // continuation byte: look further back for the lead byte
        }
        let need = match byte {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return len,
        };
        return if len - i < need { i } else { len };
    }
    len
}

fn io_error(what: &str, e: &io::Error) -> ErrorInfo {
    ErrorInfo {
        code: ErrorCode::Io,
        message: format!("exec: cannot {what}: {e}"),
    }
}

fn pollfd(fd: RawFd, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

fn poll(fds: &mut [libc::pollfd], wait: Option<Duration>) -> io::Result<()> {
    let timeout = match wait {
        // Round up, so a deadline 0.4 ms away does not spin.
        Some(d) => i32::try_from(d.as_micros().div_ceil(1000)).unwrap_or(i32::MAX),
        None => -1,
    };
    // SAFETY: fds is a valid, exclusively borrowed array of pollfd of the given length.
    let ret = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
        fds.iter_mut().for_each(|f| f.revents = 0);
    }
    Ok(())
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, no memory arguments.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A descriptor that becomes readable when `pid` exits; `None` before Linux 5.3.
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) has no memory arguments.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: on success the syscall returned a new descriptor that nothing else owns.
    (ret >= 0).then(|| unsafe { OwnedFd::from_raw_fd(ret as RawFd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_chunks_never_split_a_character() {
        let text = "aé€😀z";
        let bytes = text.as_bytes();
        for split in 0..=bytes.len() {
            let mut carry = Vec::new();
            let mut out = utf8_lossy_chunk(&mut carry, &bytes[..split]);
            out += &utf8_lossy_chunk(&mut carry, &bytes[split..]);
            assert!(carry.is_empty(), "split {split}");
            assert_eq!(out, text, "split {split}");
        }
    }

    #[test]
    fn utf8_invalid_bytes_are_replaced_not_held() {
        let mut carry = Vec::new();
        assert_eq!(utf8_lossy_chunk(&mut carry, b"a\xffb"), "a\u{fffd}b");
        assert!(carry.is_empty());
        // A lone lead byte at the end is held until more arrives.
        assert_eq!(utf8_lossy_chunk(&mut carry, b"x\xe2"), "x");
        assert_eq!(carry, b"\xe2");
        assert_eq!(utf8_lossy_chunk(&mut carry, b"y"), "\u{fffd}y");
    }

    #[test]
    fn rejects_bad_requests_before_spawning() {
        for req in [
            ExecRequest::new(Vec::<String>::new()),
            ExecRequest::new([""]),
            ExecRequest::new(["true"]).cwd("relative/dir"),
            ExecRequest::new(["true"]).env("A=B", "c"),
        ] {
            assert!(
                matches!(
                    validate(&req),
                    Err(Failure::Reply(ErrorInfo {
                        code: ErrorCode::BadRequest,
                        ..
                    }))
                ),
                "{req:?}"
            );
        }
        assert!(validate(&ExecRequest::new(["true"]).cwd("/")).is_ok());
    }
}
