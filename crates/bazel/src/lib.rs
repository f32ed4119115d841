//! Running Bazel: query invocations, feature detection, and the identity of the binary.
//!
//! Every Bazel process runs with the workspace as cwd and stdin closed (upstream #256).
//! Bazel's stderr is passed through to ours and its tail is kept for error messages.

pub mod identity;
mod process;
mod query;

pub use process::{BazelError, StderrTail};
pub use query::{QueryExpression, QueryOutput, QueryProcess, QueryStdout};

use std::path::{Path, PathBuf};

/// A Bazel binary bound to a workspace and startup options.
#[derive(Debug, Clone)]
pub struct Bazel {
    pub binary: PathBuf,
    pub workspace: PathBuf,
    pub startup_options: Vec<String>,
}

impl Bazel {
    pub fn new(binary: impl Into<PathBuf>, workspace: impl Into<PathBuf>) -> Self {
        Bazel {
            binary: binary.into(),
            workspace: workspace.into(),
            startup_options: Vec::new(),
        }
    }

    pub fn with_startup_options(mut self, options: Vec<String>) -> Self {
        self.startup_options = options;
        self
    }

    fn command(&self, with_startup: bool) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.binary);
        cmd.current_dir(&self.workspace)
            .stdin(std::process::Stdio::null());
        if with_startup {
            cmd.args(&self.startup_options);
        }
        cmd
    }

    /// `bazel info <key>` (one line of output, spec 3.2).
    pub fn info(&self, key: &str) -> Result<String, BazelError> {
        let mut cmd = self.command(true);
        cmd.args(["info", key]);
        let out = process::run_captured(cmd)?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines().filter(|l| !l.is_empty());
        match (lines.next(), lines.next()) {
            (Some(line), None) => Ok(line.trim().to_owned()),
            _ => Err(BazelError::UnexpectedOutput {
                command: format!("bazel info {key}"),
                output: text.into_owned(),
            }),
        }
    }

    /// The output base, where external repositories live (spec 3.2).
    pub fn output_base(&self) -> Result<PathBuf, BazelError> {
        self.info("output_base").map(PathBuf::from)
    }

    /// The Bazel server's pid (warm-state checks).
    pub fn server_pid(&self) -> Result<u32, BazelError> {
        let pid = self.info("server_pid")?;
        pid.parse().map_err(|_| BazelError::UnexpectedOutput {
            command: "bazel info server_pid".into(),
            output: pid,
        })
    }

    /// `bazel shutdown`.
    pub fn shutdown(&self) -> Result<(), BazelError> {
        let mut cmd = self.command(true);
        cmd.arg("shutdown");
        process::run_captured(cmd).map(|_| ())
    }

    /// Finds the directory of external repository `repo` (spec 3.10).
    pub fn external_repo_root(&self, output_base: &Path, repo: &str) -> PathBuf {
        let external = output_base.join("external");
        for candidate in [repo.to_owned(), format!("{repo}+")] {
            let dir = external.join(&candidate);
            if dir.is_dir() {
                return dir;
            }
        }
        let mut cmd = self.command(false);
        cmd.args([
            "query",
            &format!("@{repo}//..."),
            "--keep_going",
            "--output",
            "location",
        ]);
        if let Ok(out) = process::run_captured_any_status(cmd) {
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(path) = text.lines().next().and_then(|l| l.split(": ").next()) {
                if let Ok(rel) = Path::new(path).strip_prefix(&external) {
                    if let Some(first) = rel.components().next() {
                        return external.join(first);
                    }
                }
            }
        }
        tracing::warn!(
            "External repo @{repo} has no targets; assuming {}",
            external.join(repo).display()
        );
        external.join(repo)
    }
}
