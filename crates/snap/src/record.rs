//! `record`: warm Bazel at a base commit in the store's worktree and publish the entry.

use std::time::Instant;

use anyhow::{Context as _, Result};
use bazel_diff_fingerprint::Fingerprint;
use bazel_diff_store::{EntryKey, MetadataInput, Published};
use serde_json::json;

use crate::context::Context;
use crate::{failpoint, RecordArgs, VERSION};

/// The store key: the bazel-diff fingerprint, combined with the driver's key material when
/// the driver has any (so entries of different VM configurations never mix).
pub fn store_key(fingerprint: &str, driver_material: Option<&str>) -> String {
    match driver_material {
        None => fingerprint.to_owned(),
        Some(material) => {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            for part in [fingerprint, material] {
                h.update((part.len() as u64).to_be_bytes());
                h.update(part.as_bytes());
            }
            hex::encode(h.finalize())
        }
    }
}

/// An existing entry that fails verification is removed so it can be recorded again;
/// returns whether it was removed (false: the entry is sound).
fn replace_if_corrupt(ctx: &Context, key: &EntryKey) -> Result<bool> {
    let problems = match ctx.store.open_entry(key) {
        Ok(entry) => entry
            .verify()?
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        Err(e) => vec![e.to_string()],
    };
    if problems.is_empty() {
        return Ok(false);
    }
    eprintln!(
        "bazel-diff-snap: the existing entry is corrupt ({}); recording it again",
        problems.join("; ")
    );
    match ctx.store.remove(key)? {
        bazel_diff_store::Removed::InUse => {
            anyhow::bail!("the corrupt entry {key} is in use; try again when its consume is done")
        }
        _ => Ok(true),
    }
}

/// The fingerprint of the worktree's current checkout.
pub fn fingerprint_of_worktree(ctx: &Context) -> Result<(String, Fingerprint)> {
    let json = ctx.tool.fingerprint(&ctx.bazel_workspace)?;
    let parsed = Fingerprint::from_json(&json).context("reading bazel-diff's fingerprint")?;
    Ok((json, parsed))
}

pub fn run(args: &RecordArgs) -> Result<()> {
    let started = Instant::now();
    let ctx = Context::new(
        &args.common,
        crate::consume::tool_for(&args.common, Vec::new()),
    )?;
    let driver = crate::consume::make_driver(&args.common).map_err(anyhow::Error::new)?;
    driver.check_available().map_err(anyhow::Error::new)?;
    let base = ctx.repo.commit(&args.base_sha)?;
    let _worktree = ctx.lock_worktree()?;
    ctx.checkout(&base)?;
    let (fingerprint_json, fingerprint) = fingerprint_of_worktree(&ctx)?;
    let material = driver.key_material()?;
    let key_hex = store_key(&fingerprint.fingerprint, material.as_deref());
    let key = EntryKey::new(&key_hex, &base)?;
    if crate::shared::is_remote(&args.common.store) && ctx.backend.contains(&key)? {
        eprintln!(
            "bazel-diff-snap: {base} is already recorded in {} for this fingerprint ({key_hex}); nothing to do",
            ctx.backend.location()
        );
        return Ok(());
    }
    if ctx.store.contains(&key)? && !replace_if_corrupt(&ctx, &key)? {
        eprintln!("bazel-diff-snap: {base} is already recorded for this fingerprint ({key_hex}); nothing to do");
        return crate::shared::push_recorded(&ctx, &key);
    }
    let staging = ctx.store.begin(&key)?;
    if staging.entry_exists()? {
        eprintln!(
            "bazel-diff-snap: another record published {base} while we waited; nothing to do"
        );
        return crate::shared::push_recorded(&ctx, &key);
    }
    failpoint::hit("after-begin");
    let warm_started = Instant::now();
    let driver_state = driver.record(&ctx, &key_hex, &base, staging.path())?;
    let requirements = driver.requirements(&key_hex, &driver_state)?;
    let warmup_secs = warm_started.elapsed().as_secs_f64();
    std::fs::write(staging.path().join("fingerprint.json"), &fingerprint_json)
        .context("writing fingerprint.json into the staging entry")?;
    failpoint::hit("before-publish");
    let mut metadata = MetadataInput::new(VERSION, driver.kind())
        .with_extra("bazel_diff_fingerprint", fingerprint.fingerprint.clone())
        .with_extra(
            "fingerprint_components",
            fingerprint
                .components
                .iter()
                .map(|(name, hex)| (name.clone(), json!(hex)))
                .collect::<serde_json::Map<_, _>>(),
        )
        .with_extra("driver_state", driver_state)
        .with_extra("driver_key_material", json!(material))
        .with_extra(
            "timings",
            json!({ "warmup_s": warmup_secs, "total_s": started.elapsed().as_secs_f64() }),
        );
    metadata.requires = requirements;
    match staging.publish(metadata)? {
        Published::Created { path, .. } => {
            eprintln!("bazel-diff-snap: recorded {base} as {}", path.display());
        }
        Published::AlreadyExisted { path } => {
            eprintln!(
                "bazel-diff-snap: another record published {} first; kept it",
                path.display()
            );
        }
    }
    crate::shared::push_recorded(&ctx, &key)
}
