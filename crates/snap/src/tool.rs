//! Running the `bazel-diff` binary (upstream's `--bazel-diff` flag: the orchestrator drives
//! the CLI, so any compatible bazel-diff works).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// A bazel-diff binary plus the flags every hashing call gets.
#[derive(Debug, Clone)]
pub struct BazelDiff {
    pub binary: PathBuf,
    pub bazel: PathBuf,
    /// Upstream's repeatable `--flag`: passed to fingerprint, warmup and generate-hashes.
    pub flags: Vec<String>,
    /// Passed to get-impacted-targets only (e.g. `-tt Rule`).
    pub impacted_flags: Vec<String>,
}

impl BazelDiff {
    fn command(&self, subcommand: &str, workspace: &Path) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg(subcommand)
            .arg("-w")
            .arg(workspace)
            .arg("-b")
            .arg(&self.bazel)
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, mut cmd: Command, what: &str) -> Result<Vec<u8>> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        tracing::debug!("running {cmd:?}");
        let out = cmd
            .output()
            .with_context(|| format!("running {} ({what})", self.binary.display()))?;
        if !out.status.success() {
            bail!(
                "`bazel-diff {what}` failed with {} (its stderr is above)",
                out.status
            );
        }
        Ok(out.stdout)
    }

    /// `bazel-diff fingerprint` JSON for a checkout, with the user's flags only (so the key
    /// does not depend on where our tools keep Bazel's state).
    pub fn fingerprint(&self, workspace: &Path) -> Result<String> {
        let mut cmd = self.command("fingerprint", workspace);
        cmd.args(&self.flags);
        let out = self.run(cmd, "fingerprint")?;
        String::from_utf8(out).context("bazel-diff fingerprint printed non-UTF-8")
    }

    /// `bazel-diff warmup` with extra startup options (where Bazel keeps its state).
    pub fn warmup(
        &self,
        workspace: &Path,
        startup: &[String],
        base_hashes: &Path,
        fingerprint_output: &Path,
        extra: &[OsString],
    ) -> Result<()> {
        let mut cmd = self.command("warmup", workspace);
        cmd.args(startup_args(startup))
            .args(&self.flags)
            .args(extra)
            .arg("--base-hashes")
            .arg(base_hashes)
            .arg("--fingerprint-output")
            .arg(fingerprint_output);
        self.run(cmd, "warmup").map(|_| ())
    }

    /// `generate-hashes`; `extra` carries our own flags (e.g. the incremental ones).
    pub fn generate_hashes(
        &self,
        workspace: &Path,
        startup: &[String],
        out: &Path,
        extra: &[OsString],
    ) -> Result<()> {
        let mut cmd = self.command("generate-hashes", workspace);
        cmd.args(startup_args(startup))
            .args(&self.flags)
            .args(extra)
            .arg(out);
        self.run(cmd, "generate-hashes").map(|_| ())
    }

    /// `get-impacted-targets`; it publishes `out` atomically itself.
    pub fn impacted(&self, workspace: &Path, base: &Path, target: &Path, out: &Path) -> Result<()> {
        let mut cmd = self.command("get-impacted-targets", workspace);
        cmd.arg("-sh")
            .arg(base)
            .arg("-fh")
            .arg(target)
            .arg("-o")
            .arg(out)
            .args(&self.impacted_flags);
        self.run(cmd, "get-impacted-targets").map(|_| ())
    }
}

fn startup_args(startup: &[String]) -> Vec<OsString> {
    startup
        .iter()
        // Our bazel-diff's unsplit form: a store path may contain spaces.
        .flat_map(|o| [OsString::from("--bazelStartupOption"), OsString::from(o)])
        .collect()
}

/// The bazel-diff next to this executable when there is one, else `bazel-diff` on PATH.
pub fn default_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("bazel-diff")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("bazel-diff"))
}
