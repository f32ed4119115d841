//! Garbage collection: retention policies over entries, plus cleanup of what crashed
//! recorders and deleters left behind (staging and trash directories, lock files).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::contract::{
    ENTRY_LOCK_SUFFIX, LOCKS_DIR, RECORD_LOCK_SUFFIX, STAGING_DIR, STALE_AFTER, TRASH_DIR,
};
use crate::deps::Dependencies;
use crate::entry::EntryInfo;
use crate::error::{Result, StoreError};
use crate::fsutil::{disk_usage, mtime, parse_work_name, pid_alive, remove_tree};
use crate::key::EntryKey;
use crate::lock::{self, Mode};
use crate::store::{read_names, remove_empty_dir, Removed, Store};

/// What [`Store::gc`] removes. An entry is removed when any rule selects it; the default
/// policy removes no entry and only cleans up after crashes.
#[derive(Debug, Clone, Default)]
pub struct GcPolicy {
    /// Keep at most the newest N entries (by creation time) of each fingerprint, plus the
    /// entries they require.
    pub keep_per_fingerprint: Option<usize>,
    /// Remove entries older than this, unless a younger entry that stays requires them.
    pub max_age: Option<Duration>,
    /// After the rules above, remove the oldest entries until the entries' disk usage is
    /// at most this many bytes. Entries in use, and corrupt entries not removed by
    /// `remove_corrupt`, still count towards the total. Chains go whole: the oldest entry
    /// that nothing staying requires (a chain's head, usually its newest entry) goes first,
    /// with every entry only it required, so a chain is as old as its head and costs the
    /// bytes of all its entries.
    pub max_bytes: Option<u64>,
    /// Remove entries whose metadata is missing or unusable. Off by default: a corrupt
    /// entry is evidence worth looking at.
    pub remove_corrupt: bool,
    /// Report what would be removed without removing anything. In-use checks are still
    /// made (a lock is tried and released), so the report is accurate for this instant.
    pub dry_run: bool,
}

/// Why gc selected an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GcReason {
    Corrupt,
    MaxAge,
    KeepPerFingerprint,
    MaxBytes,
}

/// One entry in a [`GcReport`].
#[derive(Debug, Clone, Serialize)]
pub struct GcEntry {
    #[serde(flatten)]
    pub key: EntryKey,
    pub path: PathBuf,
    pub created_unix: i64,
    pub disk_bytes: u64,
    pub corrupt: bool,
    /// Why it was selected (empty for kept entries).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<GcReason>,
    /// Entries staying in the store that require this one; it stays for them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub required_by: Vec<EntryKey>,
}

/// A staging or trash directory that was (or would be) deleted.
#[derive(Debug, Clone, Serialize)]
pub struct GcPath {
    pub path: PathBuf,
    pub bytes: u64,
}

/// Something gc could not do; it carried on with the rest.
#[derive(Debug, Clone, Serialize)]
pub struct GcFailure {
    pub path: PathBuf,
    pub error: String,
}

/// What [`Store::gc`] did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Entries removed (would be removed).
    pub removed: Vec<GcEntry>,
    /// Entries left in place (including those whose removal failed, see `errors`).
    pub kept: Vec<GcEntry>,
    /// Entries selected for removal but held by a reader; untouched.
    pub skipped_in_use: Vec<GcEntry>,
    /// Staging directories of recorders that are gone.
    pub stale_staging: Vec<GcPath>,
    /// Trash left by interrupted deletions.
    pub stale_trash: Vec<GcPath>,
    /// Lock files of keys without an entry or recorder.
    pub lock_files_removed: usize,
    /// Disk bytes freed (would be freed): entries, staging and trash.
    pub bytes_freed: u64,
    /// Disk bytes of the entries left in place.
    pub bytes_remaining: u64,
    /// Whether `max_bytes` is still exceeded (entries in use or corrupt entries remain).
    pub over_budget: bool,
    pub errors: Vec<GcFailure>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Kept,
    Removed(u64),
    InUse,
    Vanished,
    Failed,
}

impl Fate {
    /// Whether the entry is still in the store afterwards.
    fn stays(self) -> bool {
        !matches!(self, Fate::Removed(_) | Fate::Vanished)
    }
}

impl Store {
    /// Applies `policy` at time `now` (ages are measured against it). Never deletes an
    /// entry in use: each removal only tries the entry lock. Fails only if the store
    /// cannot be listed; per-item failures are collected in [`GcReport::errors`].
    ///
    /// Entries that entries staying in the store require (`requires` in their metadata,
    /// transitively) stay too, whatever the rules say, unless they are corrupt: a kept
    /// Diff snapshot keeps its whole chain. See [`GcPolicy::max_bytes`] for the budget.
    pub fn gc(&self, policy: &GcPolicy, now: SystemTime) -> Result<GcReport> {
        let mut entries = self.entries()?;
        // Newest first within a fingerprint; `keep_per_fingerprint` counts in this order.
        entries.sort_by(|a, b| {
            (a.key.fingerprint(), b.created_unix, &a.key).cmp(&(
                b.key.fingerprint(),
                a.created_unix,
                &b.key,
            ))
        });
        let mut report = GcReport {
            dry_run: policy.dry_run,
            ..GcReport::default()
        };
        let deps = Dependencies::new(entries.iter().map(|e| (&e.key, e.metadata())));
        let mut reasons = select(&entries, policy, now);
        let mut fates = vec![Fate::Kept; entries.len()];

        // Dependents are settled before what they require: an entry goes only once none
        // of its dependents stays (kept by the rules, in use, or failed to go).
        let mut pending: Vec<usize> = (0..entries.len())
            .filter(|&i| !reasons[i].is_empty())
            .collect();
        let mut undecided: Vec<bool> = reasons.iter().map(|r| !r.is_empty()).collect();
        loop {
            let mut progress = false;
            for &i in &pending {
                let stays = |d: usize| !undecided[d] && fates[d].stays();
                // A corrupt entry serves no dependent: the rules remove it regardless.
                if !entries[i].is_corrupt() && deps.is_required(i, stays) {
                    reasons[i].clear();
                } else if entries[i].is_corrupt() || !deps.is_required(i, |d| undecided[d]) {
                    fates[i] = self.collect(&entries[i], policy.dry_run, &mut report);
                } else {
                    continue;
                }
                undecided[i] = false;
                progress = true;
            }
            pending.retain(|&i| undecided[i]);
            if !progress {
                break;
            }
        }
        // Left over: entries requiring each other in a cycle (a forged store); kept.
        for i in pending {
            reasons[i].clear();
        }

        let remaining = |fates: &[Fate]| -> u64 {
            entries
                .iter()
                .zip(fates)
                .filter(|(_, f)| f.stays())
                .map(|(e, _)| e.disk_bytes)
                .sum()
        };
        if let Some(budget) = policy.max_bytes {
            let mut total = remaining(&fates);
            let mut candidate: Vec<bool> = (0..entries.len())
                .map(|i| fates[i] == Fate::Kept && !entries[i].is_corrupt())
                .collect();
            let mut oldest_first: Vec<usize> = (0..entries.len()).collect();
            oldest_first.sort_by_key(|&i| (entries[i].created_unix, &entries[i].key));
            while total > budget {
                // The oldest entry nothing staying requires: the head of a chain (or a lone
                // entry). It goes with every entry only it required.
                let Some(&head) = oldest_first
                    .iter()
                    .find(|&&i| candidate[i] && !deps.is_required(i, |d| fates[d].stays()))
                else {
                    break;
                };
                let mut unit = vec![head];
                while let Some(i) = unit.pop() {
                    // Reached twice through a diamond of requirements: settled already.
                    if !candidate[i] {
                        continue;
                    }
                    candidate[i] = false;
                    reasons[i].push(GcReason::MaxBytes);
                    fates[i] = self.collect(&entries[i], policy.dry_run, &mut report);
                    if fates[i].stays() {
                        continue;
                    }
                    total = total.saturating_sub(entries[i].disk_bytes);
                    unit.extend(
                        deps.requires(i).iter().copied().filter(|&j| {
                            candidate[j] && !deps.is_required(j, |d| fates[d].stays())
                        }),
                    );
                }
            }
            report.over_budget = total > budget;
        }
        report.bytes_remaining = remaining(&fates);

        let required_by: Vec<Vec<EntryKey>> = (0..entries.len())
            .map(|i| {
                deps.dependents(i)
                    .iter()
                    .filter(|&&d| fates[d].stays())
                    .map(|&d| entries[d].key.clone())
                    .collect()
            })
            .collect();
        for (((entry, fate), reasons), required_by) in
            entries.into_iter().zip(fates).zip(reasons).zip(required_by)
        {
            let item = GcEntry {
                corrupt: entry.is_corrupt(),
                key: entry.key,
                path: entry.path,
                created_unix: entry.created_unix,
                disk_bytes: entry.disk_bytes,
                reasons,
                required_by,
            };
            match fate {
                Fate::Removed(bytes) => {
                    report.bytes_freed += bytes;
                    report.removed.push(item);
                }
                Fate::InUse => report.skipped_in_use.push(item),
                Fate::Kept | Fate::Failed => report.kept.push(GcEntry {
                    reasons: Vec::new(),
                    ..item
                }),
                Fate::Vanished => {}
            }
        }

        self.clean_staging(policy.dry_run, now, &mut report);
        self.clean_trash(policy.dry_run, now, &mut report);
        if !policy.dry_run {
            self.clean_locks(&mut report);
            for fp in self.fingerprints()? {
                remove_empty_dir(&self.fingerprint_dir(&fp));
            }
        }
        Ok(report)
    }

    fn collect(&self, entry: &EntryInfo, dry_run: bool, report: &mut GcReport) -> Fate {
        match self.remove_entry(&entry.key, dry_run) {
            Ok(Removed::Removed { bytes }) => Fate::Removed(bytes),
            Ok(Removed::InUse) => Fate::InUse,
            Ok(Removed::NotFound) => Fate::Vanished,
            Err(e) => {
                report.errors.push(failure(&entry.path, &e));
                Fate::Failed
            }
        }
    }

    /// Staging directories are stale when nobody holds their key's record lock (a live
    /// recorder always does), or when the pid in their name is gone (another recorder of
    /// the same key holds the lock now). Names we cannot parse are stale after an hour.
    fn clean_staging(&self, dry_run: bool, now: SystemTime, report: &mut GcReport) {
        let dir = self.root().join(STAGING_DIR);
        let names = match read_names(&dir) {
            Ok(names) => names,
            Err(e) => return report.errors.push(failure(&dir, &e)),
        };
        for (name, path) in names {
            let parsed = parse_work_name(&name)
                .and_then(|(stem, pid)| EntryKey::from_stem(stem).map(|key| (key, pid)));
            let (stale, _guard) = match parsed {
                Some((key, pid)) => {
                    match lock::try_lock(&self.record_lock_path(&key), Mode::Exclusive) {
                        Ok(Some(guard)) => (true, Some(guard)),
                        Ok(None) => (!pid_alive(pid), None),
                        Err(e) => {
                            report.errors.push(failure(&path, &e));
                            continue;
                        }
                    }
                }
                None => (older_than(&path, STALE_AFTER, now), None),
            };
            if stale {
                if let Some(item) = delete_dir(&path, dry_run, report) {
                    report.stale_staging.push(item);
                }
            }
        }
    }

    /// Trash is invisible to everyone; only its deleter may still be working on it. It is
    /// stale when that process is gone, or after an hour.
    fn clean_trash(&self, dry_run: bool, now: SystemTime, report: &mut GcReport) {
        let dir = self.root().join(TRASH_DIR);
        let names = match read_names(&dir) {
            Ok(names) => names,
            Err(e) => return report.errors.push(failure(&dir, &e)),
        };
        for (name, path) in names {
            let owner_alive = parse_work_name(&name).is_some_and(|(_, pid)| pid_alive(pid));
            if !owner_alive || older_than(&path, STALE_AFTER, now) {
                if let Some(item) = delete_dir(&path, dry_run, report) {
                    report.stale_trash.push(item);
                }
            }
        }
    }

    /// Removes lock files nobody needs: record locks nobody holds, and entry locks of keys
    /// without an entry. Unlinking while holding the lock exclusively is safe (see `lock`).
    fn clean_locks(&self, report: &mut GcReport) {
        let dir = self.root().join(LOCKS_DIR);
        let names = match read_names(&dir) {
            Ok(names) => names,
            Err(e) => return report.errors.push(failure(&dir, &e)),
        };
        for (name, path) in names {
            let (stem, is_record) = match name.strip_suffix(RECORD_LOCK_SUFFIX) {
                Some(stem) => (stem, true),
                None => match name.strip_suffix(ENTRY_LOCK_SUFFIX) {
                    Some(stem) => (stem, false),
                    None => continue,
                },
            };
            let Some(key) = EntryKey::from_stem(stem) else {
                continue;
            };
            let result = (|| -> Result<bool> {
                if !is_record && self.contains(&key)? {
                    return Ok(false);
                }
                let Some(guard) = lock::try_lock(&path, Mode::Exclusive)? else {
                    return Ok(false);
                };
                // Re-check under the lock: a publisher holds it while it renames.
                if !is_record && self.contains(&key)? {
                    return Ok(false);
                }
                guard.unlink()?;
                Ok(true)
            })();
            match result {
                Ok(true) => report.lock_files_removed += 1,
                Ok(false) => {}
                Err(e) => report.errors.push(failure(&path, &e)),
            }
        }
    }
}

/// Marks entries for removal by the count and age rules (and corruption).
fn select(entries: &[EntryInfo], policy: &GcPolicy, now: SystemTime) -> Vec<Vec<GcReason>> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    entries
        .iter()
        .map(|entry| {
            let mut reasons = Vec::new();
            if entry.is_corrupt() {
                if policy.remove_corrupt {
                    reasons.push(GcReason::Corrupt);
                }
                return reasons;
            }
            if policy.max_age.is_some_and(|max| entry.age(now) > max) {
                reasons.push(GcReason::MaxAge);
            }
            let rank = seen.entry(entry.key.fingerprint()).or_default();
            *rank += 1;
            if policy.keep_per_fingerprint.is_some_and(|keep| *rank > keep) {
                reasons.push(GcReason::KeepPerFingerprint);
            }
            reasons
        })
        .collect()
}

fn delete_dir(path: &Path, dry_run: bool, report: &mut GcReport) -> Option<GcPath> {
    let bytes = disk_usage(path).unwrap_or(0);
    if !dry_run {
        if let Err(e) = remove_tree(path) {
            report.errors.push(GcFailure {
                path: path.to_owned(),
                error: e.to_string(),
            });
            return None;
        }
    }
    report.bytes_freed += bytes;
    Some(GcPath {
        path: path.to_owned(),
        bytes,
    })
}

fn older_than(path: &Path, limit: Duration, now: SystemTime) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|meta| {
        now.duration_since(mtime(&meta))
            .is_ok_and(|age| age > limit)
    })
}

fn failure(path: &Path, error: &StoreError) -> GcFailure {
    GcFailure {
        path: path.to_owned(),
        error: error.to_string(),
    }
}
