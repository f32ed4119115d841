//! Spawning Bazel and collecting its exit status and stderr.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Lines of Bazel's stderr kept for error messages.
const TAIL_LINES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum BazelError {
    #[error("could not run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed with exit code {code} (allowed: {allowed:?}); last lines of its stderr:\n{stderr_tail}")]
    Failed {
        command: String,
        code: i32,
        allowed: Vec<i32>,
        stderr_tail: String,
    },
    #[error("`{command}` printed unexpected output: {output:?}")]
    UnexpectedOutput { command: String, output: String },
    #[error("writing the query file {path}: {source}")]
    QueryFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl BazelError {
    /// Bazel said the `//external` package does not exist (Bzlmod-only workspaces, spec 3.8).
    pub fn is_external_unavailable(&self) -> bool {
        matches!(self, BazelError::Failed { stderr_tail, .. }
            if stderr_tail.contains("no such package 'external'")
                || stderr_tail.contains("//external package is not available"))
    }
}

pub(crate) fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

pub(crate) fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Runs to completion capturing stdout and stderr; non-zero exit is an error.
pub(crate) fn run_captured(cmd: Command) -> Result<Output, BazelError> {
    let command = describe(&cmd);
    let out = run_captured_any_status(cmd)?;
    if out.status.success() {
        return Ok(out);
    }
    Err(BazelError::Failed {
        command,
        code: exit_code(out.status),
        allowed: vec![0],
        stderr_tail: tail_of(&String::from_utf8_lossy(&out.stderr)),
    })
}

pub(crate) fn run_captured_any_status(mut cmd: Command) -> Result<Output, BazelError> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.output().map_err(|source| BazelError::Spawn {
        command: describe(&cmd),
        source,
    })
}

fn tail_of(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// Echoes a child's stderr to ours (when asked) while keeping the last lines.
pub struct StderrTail {
    lines: Arc<Mutex<VecDeque<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl StderrTail {
    pub(crate) fn start(stderr: impl Read + Send + 'static, echo: bool) -> Self {
        let lines = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
        let keep = lines.clone();
        let thread = std::thread::spawn(move || {
            let mut reader = BufReader::new(stderr);
            let mut line = Vec::new();
            while matches!(reader.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                if echo {
                    let _ = std::io::stderr().write_all(&line);
                }
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                if let Ok(mut kept) = keep.lock() {
                    if kept.len() == TAIL_LINES {
                        kept.pop_front();
                    }
                    kept.push_back(text);
                }
                line.clear();
            }
        });
        StderrTail {
            lines,
            thread: Some(thread),
        }
    }

    /// Waits for the stream to end and returns its last lines.
    pub fn finish(mut self) -> String {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.lines
            .lock()
            .map(|l| l.iter().cloned().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }
}
