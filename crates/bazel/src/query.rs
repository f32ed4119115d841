//! The graph query (spec 3.6 / 3.7), streamed from Bazel's stdout.

use std::io::{Read, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use bazel_diff_query::Framing;

use crate::process::{describe, exit_code, BazelError, StderrTail};
use crate::Bazel;

/// The universe bazel-diff queries.
#[derive(Debug, Clone, Default)]
pub struct QueryExpression {
    pub include_external: bool,
    /// Fine-grained repos, pasted as `<repo>//...:all-targets` exactly as given.
    pub fine_grained_repos: Vec<String>,
    pub exclude_query: Option<String>,
}

impl QueryExpression {
    /// Query-mode expression (spec 3.6).
    pub fn query_mode(&self) -> String {
        let mut terms = Vec::new();
        if self.include_external {
            terms.push("'//external:all-targets'".to_owned());
        }
        terms.push("'//...:all-targets'".to_owned());
        for repo in &self.fine_grained_repos {
            terms.push(format!("'{repo}//...:all-targets'"));
        }
        self.wrap(terms.join(" + "))
    }

    /// Cquery-mode expression (spec 3.7).
    pub fn cquery_mode(&self, expression: Option<&str>) -> String {
        self.wrap(expression.unwrap_or("deps(//...:all-targets)").to_owned())
    }

    fn wrap(&self, terms: String) -> String {
        match self.exclude_query.as_deref().map(str::trim) {
            Some(exclude) if !exclude.is_empty() => format!("({terms}) except ({exclude})"),
            _ => terms,
        }
    }
}

/// What a query command asks for.
pub struct QueryOutput {
    pub command: &'static str,
    pub output_args: Vec<String>,
    pub framing: Framing,
}

impl QueryOutput {
    fn query(format: &str, framing: Framing) -> Self {
        QueryOutput {
            command: "query",
            output_args: vec![
                "--output".into(),
                format.into(),
                "--proto:instantiation_stack".into(),
                "--order_output=no".into(),
            ],
            framing,
        }
    }

    /// `query --output streamed_proto` (varint-delimited targets).
    pub fn streamed_query() -> Self {
        Self::query("streamed_proto", Framing::StreamedTargets)
    }

    /// `query --output proto`, for Bazels without `streamed_proto`.
    pub fn proto_query() -> Self {
        Self::query("proto", Framing::QueryResult)
    }

    /// The cquery compatibility pass: one label per line from a Starlark formatter; the
    /// caller reads it as text.
    pub fn starlark_cquery(starlark_file: &std::path::Path, consistent_labels: bool) -> Self {
        let mut output_args = vec![
            "--output".into(),
            "starlark".into(),
            format!("--starlark:file={}", starlark_file.display()),
        ];
        if consistent_labels {
            output_args.push("--consistent_labels".into());
        }
        QueryOutput {
            command: "cquery",
            output_args,
            framing: Framing::StreamedTargets,
        }
    }

    /// The main cquery pass (spec 3.7); `streamed` and `consistent_labels` are version-gated.
    pub fn cquery(streamed: bool, consistent_labels: bool) -> Self {
        let mut output_args = vec![
            "--transitions=lite".into(),
            "--output".into(),
            if streamed { "streamed_proto" } else { "proto" }.into(),
            "--proto:instantiation_stack".into(),
        ];
        if consistent_labels {
            output_args.push("--consistent_labels".into());
        }
        QueryOutput {
            command: "cquery",
            output_args,
            framing: if streamed {
                Framing::StreamedCqueryResults
            } else {
                Framing::CqueryResult
            },
        }
    }
}

/// The pause after a short read (see [`QueryStdout`]): at Bazel's output rate (~55 MB/s at
/// 150k targets) a 1 MiB pipe takes ten times as long to fill, so the writer never waits.
const PAUSE_AFTER_SHORT_READ: Duration = Duration::from_millis(2);

/// Bazel's stdout, read in gulps: after a read that found the pipe far from full, the reader
/// pauses briefly so the next read takes what accumulated meanwhile. Without the pause a
/// reader with little else to do woke for nearly every write of Bazel's client (~10k
/// wakeups at 150k targets), taking CPU from Bazel itself.
pub struct QueryStdout {
    pipe: ChildStdout,
    /// Reads shorter than this are followed by a pause; 0 (pipe size unknown) never pauses.
    short_read: usize,
}

impl Read for QueryStdout {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.pipe.read(buf)?;
        if n > 0 && n < self.short_read && n < buf.len() {
            std::thread::sleep(PAUSE_AFTER_SHORT_READ);
        }
        Ok(n)
    }
}

/// A running query whose stdout is being decoded.
pub struct QueryProcess {
    child: Child,
    /// The stdout pipe's capacity, 0 when it could not be enlarged.
    pipe_size: usize,
    command: String,
    stderr: Option<StderrTail>,
    allowed: Vec<i32>,
    // Keeps the query file alive until Bazel has read it.
    _query_file: tempfile::NamedTempFile,
    pub framing: Framing,
}

impl QueryProcess {
    /// The query output; read it to the end before calling [`QueryProcess::wait`].
    pub fn take_stdout(&mut self) -> Option<QueryStdout> {
        let pipe = self.child.stdout.take()?;
        Some(QueryStdout {
            pipe,
            short_read: self.pipe_size / 8,
        })
    }

    /// Waits for Bazel and checks its exit code (0, or 3 with `--keep_going`).
    pub fn wait(mut self) -> Result<(), BazelError> {
        let status = self.child.wait().map_err(|source| BazelError::Spawn {
            command: self.command.clone(),
            source,
        })?;
        let stderr_tail = self
            .stderr
            .take()
            .map(StderrTail::finish)
            .unwrap_or_default();
        let code = exit_code(status);
        if self.allowed.contains(&code) {
            Ok(())
        } else {
            Err(BazelError::Failed {
                command: std::mem::take(&mut self.command),
                code,
                allowed: std::mem::take(&mut self.allowed),
                stderr_tail,
            })
        }
    }
}

impl Drop for QueryProcess {
    fn drop(&mut self) {
        // An abandoned query (error while decoding) must not outlive us.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Bazel {
    /// Starts `bazel <startup> query|cquery <output args> [--keep_going] <options>
    /// --query_file <f>` with stdout piped.
    pub fn start_query(
        &self,
        output: &QueryOutput,
        expression: &str,
        keep_going: bool,
        options: &[String],
        echo_stderr: bool,
    ) -> Result<QueryProcess, BazelError> {
        let query_file_error =
            |path: std::path::PathBuf| move |source| BazelError::QueryFile { path, source };
        let mut query_file = tempfile::Builder::new()
            .prefix("bazel-diff-query")
            .suffix(".txt")
            .tempfile()
            .map_err(query_file_error(std::env::temp_dir()))?;
        query_file
            .write_all(expression.as_bytes())
            .and_then(|()| query_file.flush())
            .map_err(query_file_error(query_file.path().to_owned()))?;
        let mut cmd: Command = self.command(true);
        cmd.arg(output.command).args(&output.output_args);
        if keep_going {
            cmd.arg("--keep_going");
        }
        cmd.args(options);
        // cquery of older Bazels (4.2.3) rejects --query_file; its expressions are short, so
        // they go on the command line. Query expressions can be long: they use the file.
        if output.command == "cquery" {
            cmd.arg(expression);
        } else {
            cmd.arg("--query_file").arg(query_file.path());
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let command = describe(&cmd);
        tracing::debug!("running {command}");
        let mut child = cmd.spawn().map_err(|source| BazelError::Spawn {
            command: command.clone(),
            source,
        })?;
        let pipe_size = child.stdout.as_ref().map_or(0, enlarge_pipe);
        let stderr = child
            .stderr
            .take()
            .map(|stderr| StderrTail::start(stderr, echo_stderr));
        Ok(QueryProcess {
            child,
            pipe_size,
            command,
            stderr,
            allowed: if keep_going { vec![0, 3] } else { vec![0] },
            _query_file: query_file,
            framing: output.framing,
        })
    }
}

/// A 64 KiB pipe holds ~100 targets: whenever our reader pauses to decode, Bazel's client
/// blocks. 1 MiB (the unprivileged maximum) keeps it writing. Returns the new size, or 0
/// when the pipe keeps its default size.
fn enlarge_pipe(pipe: &ChildStdout) -> usize {
    use std::os::unix::io::AsRawFd;
    // SAFETY: fcntl on a descriptor we own; failure just keeps the default size.
    let rc = unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    if rc < 0 {
        tracing::debug!(
            "could not enlarge the query pipe: {}",
            std::io::Error::last_os_error()
        );
    }
    usize::try_from(rc).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_mode_expression() {
        let mut e = QueryExpression {
            include_external: true,
            fine_grained_repos: vec!["@maven".into()],
            exclude_query: None,
        };
        assert_eq!(
            e.query_mode(),
            "'//external:all-targets' + '//...:all-targets' + '@maven//...:all-targets'"
        );
        e.exclude_query = Some("attr(tags, manual, //...)".into());
        e.include_external = false;
        e.fine_grained_repos.clear();
        assert_eq!(
            e.query_mode(),
            "('//...:all-targets') except (attr(tags, manual, //...))"
        );
        e.exclude_query = Some("  ".into());
        assert_eq!(e.cquery_mode(None), "deps(//...:all-targets)");
    }
}
