//! gc on the object store: retention rules over manifests, then mark and sweep of chunks
//! with a grace period (the protocol and why it is safe: see the crate docs).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};

use bazel_diff_store::{Dependencies, EntryKey};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectMeta, ObjectStoreExt};
use serde::Serialize;

use crate::chunk::is_digest;
use crate::contract::{CHUNKS_DIR, CONCURRENCY, DEFAULT_GRACE, ENTRIES_DIR, GC_WINDOW, TRASH_DIR};
use crate::error::Result;
use crate::remote::{EntryListing, Remote};

/// What [`Remote::gc`] removes. The default removes no entry and sweeps only unreferenced
/// chunks older than [`DEFAULT_GRACE`].
#[derive(Debug, Clone)]
pub struct RemoteGcPolicy {
    /// Keep at most the newest N entries of each fingerprint (plus the entries they
    /// require: a kept entry keeps what it requires, transitively).
    pub keep_per_fingerprint: Option<usize>,
    /// Remove entries older than this (unless a kept entry requires them).
    pub max_age: Option<Duration>,
    /// Then remove the oldest entries until their distinct chunks take at most this many
    /// stored bytes. Chains go whole: the oldest entry nothing kept requires (a chain's
    /// head) goes with every entry only it required.
    pub max_bytes: Option<u64>,
    /// Unreferenced chunks younger than this are never deleted.
    pub grace: Duration,
    /// Report without deleting.
    pub dry_run: bool,
}

impl Default for RemoteGcPolicy {
    fn default() -> Self {
        RemoteGcPolicy {
            keep_per_fingerprint: None,
            max_age: None,
            max_bytes: None,
            grace: DEFAULT_GRACE,
            dry_run: false,
        }
    }
}

/// What [`Remote::gc`] did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RemoteGcReport {
    pub dry_run: bool,
    /// Entries removed (moved to trash), as `<fingerprint>/<base-sha>`.
    pub removed: Vec<String>,
    /// Entries kept.
    pub kept: Vec<String>,
    /// Entries among `kept` that the rules selected, kept because kept entries require them
    /// (e.g. the parents of a kept Diff snapshot).
    pub required: Vec<String>,
    /// Manifests that cannot be parsed: kept, and they protect no chunk.
    pub corrupt: Vec<String>,
    pub chunks_total: u64,
    pub chunks_referenced: u64,
    /// Unreferenced chunks spared because they are younger than the grace period.
    pub chunks_in_grace: u64,
    pub chunks_deleted: u64,
    pub bytes_deleted: u64,
    /// Stored bytes of the chunks left.
    pub bytes_remaining: u64,
    /// Trash manifests older than the grace period, deleted.
    pub trash_purged: u64,
}

impl Remote {
    /// Applies `policy` at `now`. See the crate docs for the protocol.
    pub fn gc(&self, policy: &RemoteGcPolicy, now: SystemTime) -> Result<RemoteGcReport> {
        self.block_on(self.gc_async(policy, now))
    }

    async fn gc_async(&self, policy: &RemoteGcPolicy, now: SystemTime) -> Result<RemoteGcReport> {
        let started = Instant::now();
        let mut report = RemoteGcReport {
            dry_run: policy.dry_run,
            ..RemoteGcReport::default()
        };
        // 1. Chunks first: anything uploaded after this listing is not a deletion candidate.
        let chunks_dir = self.dir(CHUNKS_DIR);
        let chunks: Vec<ObjectMeta> = self
            .object_store()
            .list(Some(&chunks_dir))
            .try_collect()
            .await
            .map_err(self.request_err("list", &chunks_dir))?;
        report.chunks_total = chunks.len() as u64;

        // 2. Retention over the manifests.
        let listings = self.list_manifests(&self.dir(ENTRIES_DIR)).await?;
        let now_unix = unix(now);
        let Selection { removed, required } = select(&listings, policy, now_unix);
        let mut referenced: HashSet<String> = HashSet::new();
        for (i, listing) in listings.iter().enumerate() {
            let name = listing.key.to_string();
            if required.contains(&i) {
                report.required.push(name.clone());
            }
            match &listing.manifest {
                Err(_) => report.corrupt.push(name),
                Ok(_) if removed.contains(&i) => {
                    if !policy.dry_run {
                        self.trash(&listing.key).await?;
                    }
                    report.removed.push(name);
                }
                Ok(manifest) => {
                    referenced.extend(manifest.distinct_chunks().into_keys().map(str::to_owned));
                    report.kept.push(name);
                }
            }
        }
        // 3. Mark what recently trashed manifests name; purge older trash.
        let trash_dir = self.dir(TRASH_DIR);
        for listing in self.list_manifests(&trash_dir).await? {
            let young = now_unix.saturating_sub(listing.uploaded_unix)
                < i64::try_from(policy.grace.as_secs()).unwrap_or(i64::MAX);
            match listing.manifest {
                Ok(manifest) if young || policy.dry_run => {
                    referenced.extend(manifest.distinct_chunks().into_keys().map(str::to_owned))
                }
                _ if young => {}
                _ => {
                    let path = self.manifest_path(TRASH_DIR, &listing.key);
                    self.delete(&path).await?;
                    report.trash_purged += 1;
                }
            }
        }
        // Removed entries' manifests stay referenced through the trash in a dry run.
        if policy.dry_run {
            for i in &removed {
                if let Ok(manifest) = &listings[*i].manifest {
                    referenced.extend(manifest.distinct_chunks().into_keys().map(str::to_owned));
                }
            }
        }

        // 4. Sweep.
        let grace_start = now - policy.grace;
        let mut candidates = Vec::new();
        for chunk in chunks {
            let digest = chunk.location.filename().unwrap_or_default().to_owned();
            if is_digest(&digest) && referenced.contains(&digest) {
                report.chunks_referenced += 1;
                report.bytes_remaining += chunk.size;
            } else if SystemTime::from(chunk.last_modified) > grace_start {
                report.chunks_in_grace += 1;
                report.bytes_remaining += chunk.size;
            } else {
                candidates.push(chunk);
            }
        }
        let outcomes: Vec<(u64, bool)> = futures::stream::iter(candidates)
            .map(|chunk| async move {
                if policy.dry_run {
                    return Ok((chunk.size, true));
                }
                if started.elapsed() > GC_WINDOW {
                    return Ok((chunk.size, false));
                }
                // Checked again: a record may have refreshed it since the listing.
                match self.object_store().head(&chunk.location).await {
                    Ok(meta) if SystemTime::from(meta.last_modified) <= grace_start => {
                        self.delete(&chunk.location).await?;
                        Ok((chunk.size, true))
                    }
                    Ok(_) => Ok((chunk.size, false)),
                    Err(object_store::Error::NotFound { .. }) => Ok((0, true)),
                    Err(e) => Err(self.request_err("check", &chunk.location)(e)),
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        for (size, deleted) in outcomes {
            if deleted {
                report.chunks_deleted += 1;
                report.bytes_deleted += size;
            } else {
                report.chunks_in_grace += 1;
                report.bytes_remaining += size;
            }
        }
        Ok(report)
    }

    /// Moves a manifest to the trash (copy, then delete): from now on consumers do not see
    /// the entry, but its chunks stay marked for one grace period.
    async fn trash(&self, key: &EntryKey) -> Result<()> {
        let from = self.manifest_path(ENTRIES_DIR, key);
        let to = self.manifest_path(TRASH_DIR, key);
        self.object_store()
            .copy(&from, &to)
            .await
            .map_err(self.request_err("move to trash", &from))?;
        self.delete(&from).await
    }

    pub(crate) async fn delete(&self, path: &ObjectPath) -> Result<()> {
        match self.object_store().delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.request_err("delete", path)(e)),
        }
    }

    /// Deletes the manifest of `key` (the entry disappears; its chunks go at the next gc
    /// after the grace period).
    pub fn remove(&self, key: &EntryKey) -> Result<()> {
        self.block_on(self.trash(key))
    }
}

/// What the retention rules decide over the manifests.
#[derive(Debug, Default)]
struct Selection {
    /// Indices of the entries to remove.
    removed: HashSet<usize>,
    /// Indices of entries the rules selected but kept ones require.
    required: HashSet<usize>,
}

/// Applies the rules to the usable entries. An entry a kept entry requires (transitively)
/// is kept; the byte budget drops whole chains (see [`RemoteGcPolicy::max_bytes`]).
fn select(listings: &[EntryListing], policy: &RemoteGcPolicy, now_unix: i64) -> Selection {
    let mut removed = HashSet::new();
    // Newest first within each fingerprint.
    let mut usable: Vec<(usize, &str, i64)> = listings
        .iter()
        .enumerate()
        .filter_map(|(i, l)| {
            let manifest = l.manifest.as_ref().ok()?;
            Some((i, l.key.fingerprint(), manifest.created_unix))
        })
        .collect();
    usable.sort_by(|a, b| (a.1, b.2).cmp(&(b.1, a.2)));
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for &(i, fp, created) in &usable {
        let rank = seen.entry(fp).or_default();
        *rank += 1;
        let too_many = policy.keep_per_fingerprint.is_some_and(|keep| *rank > keep);
        let too_old = policy.max_age.is_some_and(|age| {
            now_unix.saturating_sub(created) > i64::try_from(age.as_secs()).unwrap_or(i64::MAX)
        });
        if too_many || too_old {
            removed.insert(i);
        }
    }
    let deps = Dependencies::new(
        listings
            .iter()
            .map(|l| (&l.key, l.manifest.as_ref().ok().map(|m| &m.metadata))),
    );
    let kept: Vec<bool> = (0..listings.len()).map(|i| !removed.contains(&i)).collect();
    let needed = deps.closure(&kept);
    let required: HashSet<usize> = removed.iter().copied().filter(|&i| needed[i]).collect();
    removed.retain(|i| !needed[*i]);
    if let Some(budget) = policy.max_bytes {
        // Reference counts over distinct chunks, so shared chunks count once.
        let mut live: Vec<bool> = (0..listings.len())
            .map(|i| listings[i].manifest.is_ok() && !removed.contains(&i))
            .collect();
        let mut refs: HashMap<&str, (u32, u64)> = HashMap::new();
        for (i, listing) in listings.iter().enumerate() {
            if let (true, Ok(manifest)) = (live[i], &listing.manifest) {
                for (digest, stored) in manifest.distinct_chunks() {
                    refs.entry(digest).or_insert((0, stored)).0 += 1;
                }
            }
        }
        let mut total: u64 = refs.values().map(|(_, size)| size).sum();
        let mut oldest_first: Vec<&(usize, &str, i64)> =
            usable.iter().filter(|(i, _, _)| live[*i]).collect();
        oldest_first.sort_by_key(|(i, _, created)| (*created, &listings[*i].key));
        while total > budget {
            // The oldest entry nothing live requires (a chain's head) goes, with every
            // entry only it required.
            let Some(&&(head, _, _)) = oldest_first
                .iter()
                .find(|(i, _, _)| live[*i] && !deps.is_required(*i, |d| live[d]))
            else {
                break;
            };
            let mut unit = vec![head];
            while let Some(i) = unit.pop() {
                if !live[i] {
                    continue;
                }
                live[i] = false;
                removed.insert(i);
                if let Ok(manifest) = &listings[i].manifest {
                    for digest in manifest.distinct_chunks().into_keys() {
                        if let Some(entry) = refs.get_mut(digest) {
                            entry.0 -= 1;
                            if entry.0 == 0 {
                                total -= entry.1;
                            }
                        }
                    }
                }
                unit.extend(
                    deps.requires(i)
                        .iter()
                        .copied()
                        .filter(|&j| live[j] && !deps.is_required(j, |d| live[d])),
                );
            }
        }
    }
    Selection { removed, required }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
