//! `--store s3://bucket/prefix`: the shared store (crates/remote) behind the local flow.
//!
//! Record builds the entry in a local store inside `--cache` exactly as for a directory
//! store, then pushes it (chunks, then the manifest). Consume and resolve list the object
//! store's manifests, pick an entry by the usual rules, and materialize that entry, with the
//! entries it requires (a Diff snapshot's parents), into the local store from the chunk cache
//! (fetching what the cache lacks); from there the local flow is unchanged.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use bazel_diff_remote::{
    is_object_store_url, Backend, ChunkCache, ObjectBackend, Remote, SharedStore,
};
use bazel_diff_store::{format_size, parse_size, EntryKey, Store};

/// Default size limit of the chunk cache.
const DEFAULT_CACHE_BYTES: &str = "20GiB";

/// The `--store` value as text (a directory or a URL).
pub fn store_text(store: &Path) -> String {
    store.to_string_lossy().into_owned()
}

/// Whether `--store` names an object store.
pub fn is_remote(store: &Path) -> bool {
    is_object_store_url(&store_text(store))
}

/// The cache directory: `--cache`, else `$BAZEL_DIFF_SNAP_CACHE`, else
/// `$XDG_CACHE_HOME/bazel-diff-snap`, else `~/.cache/bazel-diff-snap`.
pub fn cache_dir(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = flag {
        return Ok(dir.to_path_buf());
    }
    let env = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = env("BAZEL_DIFF_SNAP_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = env("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("bazel-diff-snap"));
    }
    let home = env("HOME").context(
        "--store is an object store URL: give --cache DIR (or set BAZEL_DIFF_SNAP_CACHE) for \
         the local cache",
    )?;
    Ok(PathBuf::from(home).join(".cache/bazel-diff-snap"))
}

/// The directory store the local flow works in: `--store` itself, or for an object store
/// `<cache>/store`.
pub fn local_store_path(store: &Path, cache: Option<&Path>) -> Result<PathBuf> {
    if is_remote(store) {
        Ok(cache_dir(cache)?.join("store"))
    } else {
        Ok(store.to_path_buf())
    }
}

/// The backend of `--store`: the local store itself for a directory, else the object store
/// with `local` as its cache.
pub fn backend(common: &crate::Common, local: &Store) -> Result<Box<dyn Backend>> {
    if !is_remote(&common.store) {
        return Ok(Box::new(local.clone()));
    }
    let remote = Remote::open(&store_text(&common.store))?;
    let max = common.cache_max_bytes.as_deref();
    let limit = parse_size(max.unwrap_or(DEFAULT_CACHE_BYTES)).context("--cache-max-bytes")?;
    let cache = ChunkCache::open(cache_dir(common.cache.as_deref())?.join("chunks"), limit)?;
    Ok(Box::new(ObjectBackend {
        shared: SharedStore { remote, cache },
        local: local.clone(),
    }))
}

/// Opens just the object store (list, verify, gc).
pub fn open_remote(store: &Path) -> Result<Option<Remote>> {
    if !is_remote(store) {
        return Ok(None);
    }
    Ok(Some(Remote::open(&store_text(store))?))
}

/// After a record: publishes the local entry `key` to the object store, if `--store` is one
/// (nothing to do when it already has it, so a record whose push failed is finished by
/// running it again).
pub fn push_recorded(ctx: &crate::context::Context, key: &EntryKey) -> Result<()> {
    let location = ctx.backend.location();
    let pushed = ctx
        .backend
        .publish(key)
        .with_context(|| format!("publishing {key} to {location} (run record again to retry)"))?;
    if let Some(r) = pushed {
        eprintln!(
            "bazel-diff-snap: pushed {key} to {location}: {} in {} chunks, {} stored, {} uploaded ({} new chunks) in {:.1}s",
            format_size(r.logical_bytes),
            r.chunks,
            format_size(r.stored_bytes),
            format_size(r.uploaded_bytes),
            r.uploaded_chunks,
            r.seconds
        );
    }
    Ok(())
}

/// `list` of an object store: every manifest with its logical size (the entry's files),
/// stored size (its distinct compressed chunks, shared ones included) and the bytes its
/// record uploaded (what it cost on top of the entries before it).
pub fn list(remote: &Remote, json: bool) -> Result<()> {
    use std::io::Write;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut rows: Vec<serde_json::Value> = remote
        .list(None)?
        .into_iter()
        .map(|listing| {
            let key = &listing.key;
            match listing.manifest {
                Ok(m) => serde_json::json!({
                    "fingerprint": key.fingerprint(),
                    "base_sha": key.base_sha(),
                    "status": "ok",
                    "driver": m.metadata.driver,
                    "created_unix": m.created_unix,
                    "age_secs": now.saturating_sub(m.created_unix).max(0),
                    "files": m.files.len(),
                    "chunks": m.distinct_chunks().len(),
                    "logical_bytes": m.logical_bytes,
                    "stored_bytes": m.stored_bytes,
                    "uploaded_bytes": m.uploaded_bytes,
                    "metadata": m.metadata,
                }),
                Err(reason) => serde_json::json!({
                    "fingerprint": key.fingerprint(),
                    "base_sha": key.base_sha(),
                    "status": "corrupt",
                    "reason": reason,
                    "created_unix": listing.uploaded_unix,
                }),
            }
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r["created_unix"].as_i64().unwrap_or(0)));
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &rows)?;
        writeln!(out)?;
        return Ok(());
    }
    let size = |v: &serde_json::Value| v.as_u64().map_or("-".into(), bazel_diff_store::format_size);
    writeln!(
        out,
        "{:<16}  {:<12}  {:>8}  {:>9}  {:>9}  {:>9}  {:<11}  STATUS",
        "FINGERPRINT", "BASE", "AGE", "LOGICAL", "STORED", "UPLOADED", "DRIVER"
    )?;
    for r in &rows {
        let text = |k: &str| r[k].as_str().unwrap_or("-").to_owned();
        let age = r["age_secs"].as_u64().map_or("-".into(), |s| {
            bazel_diff_store::format_duration(std::time::Duration::from_secs(s))
        });
        let status = match r["reason"].as_str() {
            Some(reason) => format!("CORRUPT: {reason}"),
            None => "ok".into(),
        };
        writeln!(
            out,
            "{:<16}  {:<12}  {:>8}  {:>9}  {:>9}  {:>9}  {:<11}  {status}",
            &text("fingerprint")[..16],
            &text("base_sha")[..12],
            age,
            size(&r["logical_bytes"]),
            size(&r["stored_bytes"]),
            size(&r["uploaded_bytes"]),
            text("driver"),
        )?;
    }
    Ok(())
}

/// `verify` of an object store: every manifest parses and every chunk it names exists with
/// its recorded size; `--fix` removes the entries that fail. Whether all were sound.
pub fn verify(remote: &Remote, fix: bool, json: bool) -> Result<bool> {
    use std::io::Write;
    let mut reports = Vec::new();
    let mut clean = true;
    let listings = remote.list(None)?;
    let by_key: std::collections::HashMap<&EntryKey, &bazel_diff_remote::EntryListing> =
        listings.iter().map(|l| (&l.key, l)).collect();
    for listing in &listings {
        let problems = match &listing.manifest {
            Ok(manifest) => {
                let mut problems = remote.check_chunks(manifest)?;
                // An entry is only as usable as the entries it requires.
                for requirement in &manifest.metadata.requires {
                    let found = requirement.key().ok().and_then(|k| by_key.get(&k).copied());
                    let reason = match found.map(|l| &l.manifest) {
                        Some(Err(reason)) => Some(format!("its manifest is unusable: {reason}")),
                        Some(Ok(required)) => requirement.unmet(Some(&required.metadata)),
                        None => requirement.unmet(None),
                    };
                    if let Some(reason) = reason {
                        problems.push(format!(
                            "requires the entry {}/{}: {reason}",
                            requirement.fingerprint, requirement.base_sha
                        ));
                    }
                }
                problems
            }
            Err(reason) => vec![format!("manifest: {reason}")],
        };
        let removed = if problems.is_empty() {
            false
        } else if fix {
            remote.remove(&listing.key)?;
            true
        } else {
            clean = false;
            false
        };
        reports.push(serde_json::json!({
            "fingerprint": listing.key.fingerprint(),
            "base_sha": listing.key.base_sha(),
            "status": if problems.is_empty() { "ok" } else { "problems" },
            "problems": problems,
            "removed": removed,
        }));
    }
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &reports)?;
        writeln!(out)?;
    } else {
        for r in &reports {
            let problems: Vec<&str> = r["problems"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str())
                .collect();
            let status = if problems.is_empty() {
                "ok".to_owned()
            } else {
                problems.join("; ")
            };
            let removed = if r["removed"] == true {
                " (removed)"
            } else {
                ""
            };
            writeln!(
                out,
                "{}/{}  {status}{removed}",
                r["fingerprint"].as_str().unwrap_or("-"),
                r["base_sha"].as_str().unwrap_or("-")
            )?;
        }
    }
    Ok(clean)
}

/// `gc` of an object store: the retention rules over manifests, then the chunk sweep.
pub fn gc(remote: &Remote, args: &crate::GcArgs) -> Result<()> {
    use bazel_diff_store::format_size;
    use std::io::Write;
    let grace = args.grace.unwrap_or(bazel_diff_remote::DEFAULT_GRACE);
    let min_safe = bazel_diff_remote::REFRESH_AFTER
        + bazel_diff_remote::RECORD_WINDOW
        + bazel_diff_remote::GC_WINDOW;
    if grace < min_safe {
        eprintln!(
            "bazel-diff-snap: warning: --grace {} is shorter than {}: chunks of a record running now could be deleted",
            bazel_diff_store::format_duration(grace),
            bazel_diff_store::format_duration(min_safe)
        );
    }
    let policy = bazel_diff_remote::RemoteGcPolicy {
        keep_per_fingerprint: args.keep_per_fingerprint,
        max_age: args.max_age,
        max_bytes: args.max_bytes,
        grace,
        dry_run: args.dry_run,
    };
    let report = remote.gc(&policy, std::time::SystemTime::now())?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
        return Ok(());
    }
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for key in &report.removed {
        writeln!(out, "{verb} {key}")?;
    }
    for key in &report.required {
        writeln!(out, "kept {key}: a kept entry requires it")?;
    }
    writeln!(
        out,
        "{verb} {} entries and {} chunks ({}); {} chunks kept in the grace period; {} remaining",
        report.removed.len(),
        report.chunks_deleted,
        format_size(report.bytes_deleted),
        report.chunks_in_grace,
        format_size(report.bytes_remaining)
    )?;
    Ok(())
}
