//! `list`, `verify` and `gc`: looking after the store.

use std::io::Write;
use std::time::SystemTime;

use anyhow::{Context as _, Result};
use bazel_diff_store::{format_duration, format_size, GcPolicy, Removed, Store, VerifyStatus};

use crate::{GcArgs, ListArgs, VerifyArgs, EXIT_ERROR, EXIT_OK};

fn open(store: &std::path::Path) -> Result<Store> {
    if !store.is_dir() {
        anyhow::bail!("store {} does not exist", store.display());
    }
    Ok(Store::open(store)?)
}

pub fn list(args: &ListArgs) -> Result<()> {
    if let Some(remote) = crate::shared::open_remote(&args.store)? {
        return crate::shared::list(&remote, args.json);
    }
    let store = open(&args.store)?;
    let mut entries = store.entries()?;
    entries.sort_by_key(|e| std::cmp::Reverse(e.created_unix));
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &entries)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<16}  {:<12}  {:>8}  {:>9}  {:<11}  STATUS",
        "FINGERPRINT", "BASE", "AGE", "SIZE", "DRIVER"
    )?;
    let now = SystemTime::now();
    for e in &entries {
        let driver = e.metadata().map_or("-", |m| m.driver.as_str());
        let status = e
            .corruption()
            .map_or("ok".to_owned(), |why| format!("CORRUPT: {why}"));
        writeln!(
            out,
            "{:<16}  {:<12}  {:>8}  {:>9}  {:<11}  {status}",
            &e.key.fingerprint()[..16],
            &e.key.base_sha()[..12],
            format_duration(e.age(now)),
            format_size(e.disk_bytes),
            driver,
        )?;
    }
    Ok(())
}

/// Exit 1 when any entry is corrupt (so CI can alert), 0 otherwise.
pub fn verify(args: &VerifyArgs) -> u8 {
    match verify_inner(args) {
        Ok(true) => EXIT_OK,
        Ok(false) => EXIT_ERROR,
        Err(e) => {
            eprintln!("bazel-diff-snap: error: {e:#}");
            EXIT_ERROR
        }
    }
}

fn verify_inner(args: &VerifyArgs) -> Result<bool> {
    if let Some(remote) = crate::shared::open_remote(&args.store)? {
        return crate::shared::verify(&remote, args.fix, args.json);
    }
    let store = open(&args.store)?;
    let reports = store.verify_all()?;
    let mut clean = true;
    let mut removed = Vec::new();
    for report in &reports {
        if report.is_ok() {
            continue;
        }
        clean = false;
        if args.fix && !matches!(report.status, VerifyStatus::Failed { .. }) {
            match store.remove(&report.key)? {
                Removed::Removed { .. } => removed.push(report.path.clone()),
                other => eprintln!(
                    "bazel-diff-snap: not removed {}: {other:?}",
                    report.path.display()
                ),
            }
        }
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(
            &mut out,
            &serde_json::json!({ "entries": reports, "removed": removed }),
        )?;
        writeln!(out)?;
    } else {
        for report in &reports {
            let status = match &report.status {
                VerifyStatus::Ok => "ok".to_owned(),
                VerifyStatus::Problems { problems } => problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
                VerifyStatus::Corrupt { reason } => format!("corrupt: {reason}"),
                VerifyStatus::Failed { error } => format!("not checked: {error}"),
            };
            writeln!(out, "{}  {status}", report.path.display())?;
        }
        for path in &removed {
            writeln!(out, "removed {}", path.display())?;
        }
    }
    Ok(clean || (args.fix && removed.len() == reports.iter().filter(|r| !r.is_ok()).count()))
}

pub fn gc(args: &GcArgs) -> Result<()> {
    if let Some(remote) = crate::shared::open_remote(&args.store)? {
        return crate::shared::gc(&remote, args);
    }
    if args.grace.is_some() {
        anyhow::bail!("--grace applies to object stores only");
    }
    let store = open(&args.store)?;
    let policy = GcPolicy {
        keep_per_fingerprint: args.keep_per_fingerprint,
        max_age: args.max_age,
        max_bytes: args.max_bytes,
        remove_corrupt: false,
        dry_run: args.dry_run,
    };
    let report = store.gc(&policy, SystemTime::now())?;
    let servers = if args.dry_run {
        Vec::new()
    } else {
        retire_servers(&store)?
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
    } else {
        let verb = if args.dry_run {
            "would remove"
        } else {
            "removed"
        };
        for e in &report.removed {
            writeln!(out, "{verb} {}", e.path.display())?;
        }
        for e in &report.skipped_in_use {
            writeln!(out, "in use, kept {}", e.path.display())?;
        }
        for e in report.kept.iter().filter(|e| !e.required_by.is_empty()) {
            writeln!(
                out,
                "kept {}: required by {} kept entries (a Diff chain)",
                e.path.display(),
                e.required_by.len()
            )?;
        }
        for dir in &servers {
            writeln!(out, "retired Bazel output root {}", dir.display())?;
        }
        writeln!(
            out,
            "{verb} {} entries, {} freed, {} remaining",
            report.removed.len(),
            format_size(report.bytes_freed),
            format_size(report.bytes_remaining)
        )?;
    }
    Ok(())
}

/// The local driver keeps a Bazel output root (and server) per fingerprint; once no entry of
/// a fingerprint is left, its server is stopped and its output root deleted. Each worktree's
/// lock is held meanwhile (tried for a few seconds: a busy worktree is left for the next gc),
/// and the live fingerprints are read under it, so a record publishing a new fingerprint
/// cannot lose its server.
fn retire_servers(store: &Store) -> Result<Vec<std::path::PathBuf>> {
    let mut retired = Vec::new();
    let Ok(work_dirs) = std::fs::read_dir(store.root().join(".work")) else {
        return Ok(retired);
    };
    for work in work_dirs.flatten().map(|e| e.path()) {
        let Ok(roots) = std::fs::read_dir(work.join("bazel")) else {
            continue;
        };
        let lock_path = work.join("worktree.lock");
        let _lock = match bazel_diff_store::FileLock::exclusive(
            &lock_path,
            Some(std::time::Duration::from_secs(5)),
        ) {
            Ok(lock) => lock,
            Err(e) => {
                tracing::info!(
                    "worktree {} is busy, its servers are kept: {e}",
                    work.display()
                );
                continue;
            }
        };
        let live: std::collections::HashSet<String> = store.fingerprints()?.into_iter().collect();
        for root in roots.flatten().map(|e| e.path()) {
            let fingerprint = root.file_name().map(|n| n.to_string_lossy().into_owned());
            if fingerprint.is_some_and(|fp| live.contains(&fp)) {
                continue;
            }
            stop_servers(&root);
            make_writable(&root);
            std::fs::remove_dir_all(&root)
                .with_context(|| format!("removing {}", root.display()))?;
            retired.push(root);
        }
    }
    Ok(retired)
}

/// Stops the Bazel servers of an output user root by their pid files (`bazel shutdown`
/// would need a workspace to run in).
fn stop_servers(user_root: &std::path::Path) {
    for base in std::fs::read_dir(user_root).into_iter().flatten().flatten() {
        let pid_file = base.path().join("server/server.pid.txt");
        let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: kill(2) with a pid read from Bazel's own pid file.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        // Give the server a moment to exit before its files are removed.
        for _ in 0..50 {
            // SAFETY: signal 0 only checks that the process exists.
            if unsafe { libc::kill(pid, 0) } != 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// Bazel leaves read-only directories in its output base; deletion needs write permission.
fn make_writable(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            make_writable(&entry.path());
        }
    }
}
