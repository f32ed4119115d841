//! Timing child processes: wall time and peak RSS of exactly that child (via `wait4`), so
//! figures do not depend on `/usr/bin/time` being installed.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{BenchError, Result};

/// One measured run.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub wall: Duration,
    /// Peak resident set size of the child (and descendants it waited for), in KiB.
    pub max_rss_kib: u64,
}

/// Runs `cmd` to completion with stdin closed and stdout discarded (or sent to `stdout_to`),
/// failing on a non-zero exit with the tail of its stderr.
pub fn run(mut cmd: Command, stdout_to: Option<&Path>) -> Result<Sample> {
    let describe = format!("{cmd:?}");
    cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    match stdout_to {
        Some(path) => {
            let file = std::fs::File::create(path)
                .map_err(|e| BenchError::msg(format!("creating {}: {e}", path.display())))?;
            cmd.stdout(file);
        }
        None => {
            cmd.stdout(Stdio::null());
        }
    }
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| BenchError::msg(format!("spawning {describe}: {e}")))?;
    let stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut stderr) = stderr {
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        }
        text
    });
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child, which `child` has not
    // reaped (we never call `wait` on it).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    let stderr = reader.join().unwrap_or_default();
    if rc != pid {
        return Err(BenchError::msg(format!(
            "waiting for {describe}: {}",
            std::io::Error::last_os_error()
        )));
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(BenchError::msg(format!(
            "{describe} failed (status {status}):\n{}",
            tail.join("\n")
        )));
    }
    Ok(Sample {
        wall,
        max_rss_kib: usage.ru_maxrss as u64,
    })
}

/// The median of durations (the upper one for an even count).
pub fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// `bazel-diff generate-hashes -w ws -b bazel` on the Bazel server of `user_root`; callers add
/// their flags and the output path.
pub fn generate_hashes(bazel_diff: &Path, bazel: &Path, ws: &Path, user_root: &Path) -> Command {
    let mut cmd = Command::new(bazel_diff);
    cmd.arg("generate-hashes")
        .arg("-w")
        .arg(ws)
        .arg("-b")
        .arg(bazel)
        .arg("-so")
        .arg(format!("--output_user_root={}", user_root.display()));
    cmd
}

/// Times `bazel-diff get-impacted-targets -w ws -sh base -fh head -o out`.
pub fn get_impacted_targets(
    bazel_diff: &Path,
    ws: &Path,
    base: &Path,
    head: &Path,
    out: &Path,
) -> Result<Duration> {
    let mut cmd = Command::new(bazel_diff);
    cmd.arg("get-impacted-targets").arg("-w").arg(ws).args([
        Path::new("-sh"),
        base,
        Path::new("-fh"),
        head,
        Path::new("-o"),
        out,
    ]);
    run(cmd, None).map(|s| s.wall)
}

/// Seconds rounded to the millisecond, for reports.
pub fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// `bazel --output_user_root=<root> shutdown` in `ws`, best effort (cleanup only).
pub fn bazel_shutdown(bazel: &Path, ws: &Path, user_root: &Path) {
    let mut cmd = Command::new(bazel);
    cmd.current_dir(ws)
        .arg(format!("--output_user_root={}", user_root.display()))
        .arg("shutdown");
    let _ = run(cmd, None);
}
