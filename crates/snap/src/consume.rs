//! `consume` and `resolve`: find the entry for (base, target), use it, and fail safe.

use anyhow::{Context as _, Result};
use bazel_diff_remote::RemoteError;
use bazel_diff_store::EntryKey;
use serde_json::json;

use crate::context::Context;
use crate::driver::{ConsumePlan, Driver, LocalDriver, Unavailable, VerifyMismatch};
use crate::driver_fc::{FcOptions, FirecrackerDriver};
use crate::record::{fingerprint_of_worktree, store_key};
use crate::report::{Phases, Report};
use crate::resolve::resolve;
use crate::tool::{default_binary, BazelDiff};
use crate::{
    Common, ConsumeArgs, DriverKind, Fallback, ResolveArgs, Selection, EXIT_ERROR,
    EXIT_NO_SNAPSHOT, EXIT_OK,
};

pub fn tool_for(common: &Common, impacted_flags: Vec<String>) -> BazelDiff {
    BazelDiff {
        binary: common.bazel_diff.clone().unwrap_or_else(default_binary),
        bazel: common.bazel.clone(),
        flags: common.flags.clone(),
        impacted_flags,
    }
}

pub fn make_driver(common: &Common) -> Result<Box<dyn Driver>, Unavailable> {
    let ignored = common.fc.ignored();
    if !ignored.is_empty() {
        eprintln!(
            "bazel-diff-snap: warning: ignoring upstream's ssh/TAP flags {} (the guest is reached over vsock; no NIC is used)",
            ignored.join(", ")
        );
    }
    match common.driver {
        DriverKind::Local => Ok(Box::new(LocalDriver)),
        DriverKind::Firecracker => {
            let fc = &common.fc;
            let guest_workspace = match &fc.guest_workspace {
                Some(ws) => ws.clone(),
                // Upstream used --workspace as the guest path too.
                None => std::path::absolute(&common.workspace)
                    .map_err(|e| Unavailable(format!("resolving --workspace: {e}")))?
                    .to_string_lossy()
                    .into_owned(),
            };
            Ok(Box::new(FirecrackerDriver::new(FcOptions {
                firecracker: fc.firecracker_bin.clone(),
                kernel: fc.kernel.clone(),
                rootfs: fc.rootfs.clone(),
                vcpus: fc.vcpus,
                mem_mib: fc.mem_mib,
                jail: match (&fc.jailer, fc.jailer_uid, fc.jailer_gid) {
                    (Some(jailer), Some(uid), Some(gid)) => {
                        Some(crate::driver_fc_jail::JailOptions {
                            jailer: jailer.clone(),
                            uid,
                            gid,
                            chroot_base: fc.chroot_base.clone(),
                        })
                    }
                    _ => None,
                },
                guest_workspace,
                guest_bazel: fc.guest_bazel.clone(),
                guest_bazel_diff: fc.guest_bazel_diff.clone(),
                agent_port: fc.agent_port,
                memory_backend: fc.memory_backend,
                store: crate::shared::local_store_path(&common.store, common.cache.as_deref())
                    .map_err(|e| Unavailable(format!("{e:#}")))?,
                flags: common.flags.clone(),
                diff_from: fc.diff_from.clone(),
                max_diff_chain: fc.max_diff_chain,
            })))
        }
    }
}

/// Why no snapshot was used: exit 2 (or the cold path with `--fallback cold`).
#[derive(Debug)]
struct NoSnapshot(String);

impl std::fmt::Display for NoSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NoSnapshot {}

fn no_snapshot(reason: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(NoSnapshot(reason.into()))
}

/// The choice consume would make, filled into `report`; returns the entry key.
fn choose(
    ctx: &Context,
    driver: &dyn Driver,
    selection: &Selection,
    report: &mut Report,
    phases: &mut Phases,
) -> Result<(EntryKey, String, String)> {
    let target = ctx.repo.commit(&selection.target_sha)?;
    let explicit_base = selection
        .base_sha
        .as_deref()
        .map(|b| ctx.repo.commit(b))
        .transpose()?;
    report.target_sha = Some(target.clone());
    ctx.checkout(&target)?;
    let (_, fingerprint) = fingerprint_of_worktree(ctx)?;
    let material = driver.key_material()?;
    let key = store_key(&fingerprint.fingerprint, material.as_deref());
    report.fingerprint = Some(fingerprint.fingerprint.clone());
    report.store_key = Some(key.clone());
    report.fingerprint_components = fingerprint.components.clone();
    phases.mark(report, "fingerprint");

    let entries = ctx.backend.entries_for(&key).map_err(|e| match e {
        RemoteError::Store(e) => anyhow::Error::new(e),
        // An unreachable object store is no usable snapshot: the caller goes cold.
        e => no_snapshot(format!("cannot list {}: {e}", ctx.backend.location())),
    })?;
    let mut candidates = Vec::new();
    for entry in &entries {
        match entry.metadata() {
            Some(meta) if meta.driver == driver.kind() => candidates.push(meta.base_sha.clone()),
            Some(meta) => report.skipped.push(crate::resolve::Skipped {
                sha: meta.base_sha.clone(),
                reason: format!("recorded by the {} driver", meta.driver),
            }),
            None => report.skipped.push(crate::resolve::Skipped {
                sha: entry.key.base_sha().to_owned(),
                reason: "corrupt entry (no readable metadata)".into(),
            }),
        }
    }
    let want = explicit_base.clone().unwrap_or_else(|| target.clone());
    let resolution = resolve(&ctx.repo, &candidates, &want, selection.max_distance)?;
    report.skipped.extend(resolution.skipped);
    phases.mark(report, "resolve");
    let Some(choice) = resolution.choice else {
        let why = if entries.is_empty() {
            explain_missing_fingerprint(ctx, &fingerprint)
        } else {
            let corrupt = report
                .skipped
                .iter()
                .filter(|s| s.reason.starts_with("corrupt"))
                .count();
            let note = if corrupt > 0 {
                format!(" ({corrupt} corrupt entries skipped: run `bazel-diff-snap verify`)")
            } else {
                String::new()
            };
            format!(
                "no entry for fingerprint {key} is {want} or one of its ancestors within {} commits{note}",
                selection.max_distance
            )
        };
        return Err(no_snapshot(why));
    };
    let base = explicit_base.unwrap_or_else(|| choice.entry_base.clone());
    report.base_source = Some(
        if selection.base_sha.is_some() {
            "explicit"
        } else {
            "entry"
        }
        .into(),
    );
    report.base_sha = Some(base.clone());
    report.distance = Some(choice.distance);
    if selection.base_sha.is_none() {
        eprintln!(
            "bazel-diff-snap: no --base-sha given: diffing against the snapshot's base {} ({} commits behind the target)",
            choice.entry_base, choice.distance
        );
    }
    Ok((EntryKey::new(&key, &choice.entry_base)?, base, target))
}

/// Says why no entry matches: which fingerprint components differ from the most recent
/// entry recorded for another fingerprint.
fn explain_missing_fingerprint(
    ctx: &Context,
    current: &bazel_diff_fingerprint::Fingerprint,
) -> String {
    let recorded = ctx
        .backend
        .newest_fingerprint_json()
        .and_then(|text| bazel_diff_fingerprint::Fingerprint::from_json(&text).ok());
    match recorded {
        Some(recorded) => format!(
            "no snapshot for fingerprint {}; against the newest entry: {}",
            current.fingerprint,
            bazel_diff_fingerprint::explain_mismatch(&recorded, current).join("; ")
        ),
        None => format!(
            "the store has no snapshot for fingerprint {}",
            current.fingerprint
        ),
    }
}

fn consume_with_snapshot(
    ctx: &Context,
    driver: &dyn Driver,
    args: &ConsumeArgs,
    report: &mut Report,
    phases: &mut Phases,
) -> Result<()> {
    driver
        .check_available()
        .map_err(|Unavailable(why)| no_snapshot(format!("driver unavailable: {why}")))?;
    let (key, base, target) = choose(ctx, driver, &args.selection, report, phases)?;
    let scratch = ctx.scratch()?;
    let unusable = |e: bazel_diff_remote::RemoteError| {
        no_snapshot(format!("cannot open the chosen entry: {e}"))
    };
    // From an object store the entry is fetched into the local store first (only the chunks
    // the cache lacks, each verified): any missing or bad chunk is exit 2 too. Files the
    // driver reads on demand (guest memory) stay remote when no local copy exists: the rest
    // is fetched into the scratch directory, and they are read chunk by chunk, verified.
    let lazy = match driver.lazy_files() {
        [] => None,
        files => ctx
            .backend
            .open_lazily(&key, files, &scratch.path().join("entry"))
            .map_err(unusable)?,
    };
    let (_reader, entry_dir, fetched) = match &lazy {
        Some(lazy) => {
            phases.mark(report, "fetch");
            (None, lazy.dir.clone(), Some(lazy.stats.clone()))
        }
        None => {
            let (entry, fetched) = ctx.backend.open_entry(&key).map_err(unusable)?;
            if fetched.is_some() {
                phases.mark(report, "fetch");
            }
            let problems = entry.verify()?;
            if !problems.is_empty() {
                let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
                return Err(no_snapshot(format!(
                    "entry {} is corrupt: {}",
                    entry.path().display(),
                    list.join("; ")
                )));
            }
            let dir = entry.path().to_path_buf();
            (Some(entry), dir, fetched)
        }
    };
    report.entry = Some(json!({
        "dir": entry_dir,
        "base_sha": key.base_sha(),
        "fingerprint": key.fingerprint(),
        "driver": driver.kind(),
        "fetch": fetched,
        "lazy_files": lazy.as_ref().map(|_| driver.lazy_files()),
    }));
    phases.mark(report, "verify");
    // A warm state that fails is a snapshot we could not use: exit 2 (or the cold path),
    // never a hard error the caller would not retry cold (upstream finding F10).
    let hashes = driver
        .consume(
            ctx,
            &ConsumePlan {
                fingerprint: key.fingerprint(),
                entry_dir: &entry_dir,
                lazy: lazy.as_ref(),
                entry_base: key.base_sha(),
                base: &base,
                target: &target,
                scratch: scratch.path(),
                incremental: !args.no_incremental,
                verify: args.verify,
            },
        )
        .map_err(|e| {
            // A --verify mismatch is a finding, not an unusable snapshot.
            if e.is::<VerifyMismatch>() {
                e
            } else {
                no_snapshot(format!("the {} driver failed: {e:#}", driver.kind()))
            }
        })?;
    report.driver_notes = Some(hashes.notes);
    phases.mark(report, "hash");
    let impacted = scratch.path().join("impacted.txt");
    ctx.tool.impacted(
        &ctx.bazel_workspace,
        &hashes.base,
        &hashes.target,
        &impacted,
    )?;
    phases.mark(report, "impacted");
    publish_out(&impacted, &args.out)
}

/// Copies the result to `--out` atomically (the scratch directory may be on another
/// filesystem).
fn publish_out(result: &std::path::Path, out: &std::path::Path) -> Result<()> {
    let bytes = std::fs::read(result).with_context(|| format!("reading {}", result.display()))?;
    bazel_diff_format::write_atomic(out, &bytes)?;
    Ok(())
}

/// The cold path: both revisions hashed by a fresh Bazel server, as CI would without us.
fn consume_cold(ctx: &Context, args: &ConsumeArgs, report: &mut Report) -> Result<()> {
    let base_rev = args
        .selection
        .base_sha
        .as_deref()
        .context("--fallback cold needs --base-sha (without a snapshot there is no base)")?;
    let base = ctx.repo.commit(base_rev)?;
    let target = ctx.repo.commit(&args.selection.target_sha)?;
    report.base_sha = Some(base.clone());
    report.base_source = Some("explicit".into());
    report.target_sha = Some(target.clone());
    let scratch = ctx.scratch()?;
    let startup = vec![format!(
        "--output_user_root={}",
        scratch.path().join("bazel").display()
    )];
    let (base_hashes, target_hashes) = (
        scratch.path().join("base.json"),
        scratch.path().join("target.json"),
    );
    ctx.checkout(&base)?;
    ctx.tool
        .generate_hashes(&ctx.bazel_workspace, &startup, &base_hashes, &[])?;
    ctx.checkout(&target)?;
    ctx.tool
        .generate_hashes(&ctx.bazel_workspace, &startup, &target_hashes, &[])?;
    let impacted = scratch.path().join("impacted.txt");
    ctx.tool.impacted(
        &ctx.bazel_workspace,
        &base_hashes,
        &target_hashes,
        &impacted,
    )?;
    publish_out(&impacted, &args.out)?;
    let shutdown = std::process::Command::new(&ctx.tool.bazel)
        .arg(&startup[0])
        .arg("shutdown")
        .current_dir(&ctx.bazel_workspace)
        .stdin(std::process::Stdio::null())
        .output();
    if let Err(e) = shutdown {
        tracing::warn!("could not shut down the cold Bazel server: {e}");
    }
    Ok(())
}

pub fn run(args: &ConsumeArgs) -> u8 {
    let mut report = Report {
        driver: format!("{:?}", args.common.driver).to_lowercase(),
        ..Report::default()
    };
    let mut phases = Phases::start();
    let result = (|| -> Result<()> {
        let ctx = Context::new(
            &args.common,
            tool_for(&args.common, args.impacted_flags.clone()),
        )?;
        let _worktree = ctx.lock_worktree()?;
        phases.mark(&mut report, "setup");
        let attempt = make_driver(&args.common)
            .map_err(|Unavailable(why)| no_snapshot(format!("driver unavailable: {why}")))
            .and_then(|driver| {
                consume_with_snapshot(&ctx, driver.as_ref(), args, &mut report, &mut phases)
            });
        match attempt {
            Err(e) if args.fallback == Fallback::Cold => match e.downcast_ref::<NoSnapshot>() {
                Some(reason) => {
                    eprintln!("bazel-diff-snap: no usable snapshot ({reason}); running the cold path (--fallback cold)");
                    report.fallback_reason = Some(reason.0.clone());
                    report.outcome = "cold-fallback".into();
                    consume_cold(&ctx, args, &mut report)?;
                    phases.mark(&mut report, "cold");
                    Ok(())
                }
                None => Err(e),
            },
            other => other,
        }
    })();
    let code = match &result {
        Ok(()) => {
            if report.outcome.is_empty() {
                report.outcome = "snapshot".into();
            }
            EXIT_OK
        }
        Err(e) => match e.downcast_ref::<NoSnapshot>() {
            Some(reason) => {
                eprintln!("bazel-diff-snap: no usable snapshot: {reason}; nothing written (exit 2: run the cold path)");
                report.outcome = "no-snapshot".into();
                report.fallback_reason = Some(reason.0.clone());
                EXIT_NO_SNAPSHOT
            }
            None => {
                eprintln!("bazel-diff-snap: error: {e:#}");
                report.outcome = "error".into();
                report.error = Some(format!("{e:#}"));
                EXIT_ERROR
            }
        },
    };
    report.exit_code = i32::from(code);
    if let Some(path) = &args.json {
        let written = serde_json::to_vec_pretty(&report)
            .map_err(anyhow::Error::new)
            .and_then(|bytes| {
                bazel_diff_format::write_atomic(path, &bytes).map_err(anyhow::Error::new)
            });
        if let Err(e) = written {
            eprintln!(
                "bazel-diff-snap: error: writing the report {}: {e:#}",
                path.display()
            );
            // Exit 1 promises nothing was written.
            if code == EXIT_OK {
                let _ = std::fs::remove_file(&args.out);
            }
            return EXIT_ERROR;
        }
    }
    code
}

/// `resolve`: the choice consume would make, as JSON on stdout.
pub fn resolve_only(args: &ResolveArgs) -> Result<()> {
    let ctx = Context::new(&args.common, tool_for(&args.common, Vec::new()))?;
    let driver = make_driver(&args.common).map_err(anyhow::Error::new)?;
    let _worktree = ctx.lock_worktree()?;
    let mut report = Report {
        driver: driver.kind().into(),
        ..Report::default()
    };
    let mut phases = Phases::start();
    let chosen = choose(
        &ctx,
        driver.as_ref(),
        &args.selection,
        &mut report,
        &mut phases,
    );
    let out = match chosen {
        Ok((key, base, target)) => json!({
            "usable": true,
            "entry": ctx.store.entry_path(&key),
            "entry_base_sha": key.base_sha(),
            "base_sha": base,
            "base_source": report.base_source,
            "target_sha": target,
            "distance": report.distance,
            "store_key": report.store_key,
            "fingerprint": report.fingerprint,
            "skipped": report.skipped,
        }),
        Err(e) => match e.downcast_ref::<NoSnapshot>() {
            Some(reason) => json!({
                "usable": false,
                "reason": reason.0,
                "target_sha": report.target_sha,
                "store_key": report.store_key,
                "fingerprint": report.fingerprint,
                "skipped": report.skipped,
            }),
            None => return Err(e),
        },
    };
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, &out)?;
    std::io::Write::write_all(&mut stdout, b"\n")?;
    Ok(())
}
