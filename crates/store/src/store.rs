//! The store itself: opening, paths, listing, opening entries, removal.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::contract::{
    DIR_MODE, ENTRY_LOCK_SUFFIX, LOCKS_DIR, RECORD_LOCK_SUFFIX, STAGING_DIR, TRASH_DIR,
};
use crate::entry::{
    load_metadata, EntryInfo, EntryReader, EntryState, Load, Problem, VerifyReport, VerifyStatus,
};
use crate::error::{io_err, Result, StoreError};
use crate::fsutil::{
    age, disk_usage, fsync_dir, mtime, remove_tree, set_mode, unique_suffix, unix_seconds,
};
use crate::key::{validate_commit_sha, validate_fingerprint, EntryKey};
use crate::lock::{self, Mode};
use crate::metadata::Metadata;
use crate::staging::Staging;

/// A snapshot store rooted at a local directory. Cheap to clone; every method is safe to
/// call concurrently from threads and processes (see the crate docs for the locking).
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    lock_timeout: Option<Duration>,
}

/// Outcome of [`Store::remove`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Removed {
    /// The entry was deleted; `bytes` were allocated to it.
    Removed { bytes: u64 },
    /// Someone holds the entry (a reader, or a publisher checking it); nothing was done.
    InUse,
    /// There is no such entry.
    NotFound,
}

impl Store {
    /// Opens (creating if needed) the store at `root`, with its internal directories.
    /// Lock waits are unbounded until [`with_lock_timeout`](Self::with_lock_timeout).
    pub fn open(root: impl AsRef<Path>) -> Result<Store> {
        let root = root.as_ref();
        fs::create_dir_all(root).map_err(io_err("create the store directory", root))?;
        let root = fs::canonicalize(root).map_err(io_err("resolve the store directory", root))?;
        for internal in [STAGING_DIR, LOCKS_DIR, TRASH_DIR] {
            let dir = root.join(internal);
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("create", &dir)(e)),
            }
            // A symlinked `.staging` could sit on another filesystem, where the publishing
            // rename is not atomic (or fails); refuse instead of degrading silently.
            let meta = fs::symlink_metadata(&dir).map_err(io_err("stat", &dir))?;
            if !meta.is_dir() {
                return Err(io_err("use", &dir)(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "an internal store directory must be a real directory",
                )));
            }
        }
        Ok(Store {
            root,
            lock_timeout: None,
        })
    }

    /// Sets how long [`begin`](Self::begin), [`open_entry`](Self::open_entry) and
    /// publication wait for a lock before failing with [`StoreError::LockTimeout`];
    /// `None` waits forever.
    #[must_use]
    pub fn with_lock_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// The configured lock timeout.
    pub fn lock_timeout(&self) -> Option<Duration> {
        self.lock_timeout
    }

    /// The store directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the entry of `key` lives (whether or not it exists).
    pub fn entry_path(&self, key: &EntryKey) -> PathBuf {
        self.fingerprint_dir(key.fingerprint()).join(key.base_sha())
    }

    pub(crate) fn fingerprint_dir(&self, fingerprint: &str) -> PathBuf {
        self.root.join(fingerprint)
    }

    pub(crate) fn entry_lock_path(&self, key: &EntryKey) -> PathBuf {
        self.root
            .join(LOCKS_DIR)
            .join(format!("{}{ENTRY_LOCK_SUFFIX}", key.stem()))
    }

    pub(crate) fn record_lock_path(&self, key: &EntryKey) -> PathBuf {
        self.root
            .join(LOCKS_DIR)
            .join(format!("{}{RECORD_LOCK_SUFFIX}", key.stem()))
    }

    /// Whether `key` has a published entry (possibly corrupt). Takes no lock: the answer
    /// can be stale by the time it is used; [`open_entry`](Self::open_entry) is the
    /// authoritative check.
    pub fn contains(&self, key: &EntryKey) -> Result<bool> {
        let path = self.entry_path(key);
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("stat", &path)(e)),
        }
    }

    /// Starts recording `key`: waits for the key's record lock (other recorders of the
    /// same key), then creates a fresh staging directory. Readers of an existing entry
    /// for the key are not blocked. After waiting, check
    /// [`Staging::entry_exists`] to skip work another recorder already published.
    pub fn begin(&self, key: &EntryKey) -> Result<Staging> {
        let record_lock = lock::lock(
            &self.record_lock_path(key),
            Mode::Exclusive,
            self.lock_timeout,
        )?;
        let staging_root = self.root.join(STAGING_DIR);
        // `<fp>-<sha>.<pid>.<random>`: gc finds the key (to test its record lock) and the
        // owner's pid in the name.
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}.{}.", key.stem(), std::process::id()))
            .rand_bytes(8)
            .tempdir_in(&staging_root)
            .map_err(io_err("create a staging directory in", &staging_root))?
            .keep();
        tracing::debug!(key = %key, dir = %dir.display(), "staging snapshot entry");
        Ok(Staging::new(self.clone(), key.clone(), dir, record_lock))
    }

    /// Fingerprints that have a directory in the store, sorted. Internal (dot) directories
    /// are never listed; other stray names are logged and skipped.
    pub fn fingerprints(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (name, path) in read_names(&self.root)? {
            if name.starts_with('.') {
                continue;
            }
            match validate_fingerprint(&name) {
                // Not `is_dir()`: a symlinked fingerprint directory would pull a tree from
                // elsewhere into the store (and into gc's reach).
                Ok(()) if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) => out.push(name),
                _ => {
                    tracing::warn!(path = %path.display(), "ignoring a stray file in the snapshot store")
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Every published entry, grouped by fingerprint and newest first within one.
    /// Corrupt entries are included (see [`EntryInfo::corruption`]). Takes no locks: an
    /// entry may be removed right after it is listed; use [`open_entry`](Self::open_entry)
    /// to use one.
    pub fn entries(&self) -> Result<Vec<EntryInfo>> {
        let now = SystemTime::now();
        let mut out = Vec::new();
        for fp in self.fingerprints()? {
            out.extend(self.entries_in(&fp, now)?);
        }
        Ok(out)
    }

    /// The entries of one fingerprint, newest first.
    pub fn entries_for(&self, fingerprint: &str) -> Result<Vec<EntryInfo>> {
        validate_fingerprint(fingerprint)?;
        self.entries_in(fingerprint, SystemTime::now())
    }

    fn entries_in(&self, fingerprint: &str, now: SystemTime) -> Result<Vec<EntryInfo>> {
        let dir = self.fingerprint_dir(fingerprint);
        let mut out = Vec::new();
        for (sha, path) in read_names(&dir)? {
            if validate_commit_sha(&sha).is_err() {
                tracing::warn!(path = %path.display(), "ignoring a stray name in the snapshot store");
                continue;
            }
            let key = EntryKey::new(fingerprint, &sha)?;
            if let Some(info) = self.entry_info(key, path, now)? {
                out.push(info);
            }
        }
        out.sort_by(|a, b| {
            b.created_unix
                .cmp(&a.created_unix)
                .then_with(|| a.key.cmp(&b.key))
        });
        Ok(out)
    }

    /// Describes the entry at `path`, `None` if it vanished meanwhile.
    fn entry_info(
        &self,
        key: EntryKey,
        path: PathBuf,
        now: SystemTime,
    ) -> Result<Option<EntryInfo>> {
        let (state, created_unix) = match load_metadata(&path, &key)? {
            Load::Vanished => return Ok(None),
            Load::Ok(metadata) => {
                let created = metadata.created_unix;
                (EntryState::Ok { metadata }, created)
            }
            Load::Corrupt(reason) => {
                let created = match fs::symlink_metadata(&path) {
                    Ok(meta) => unix_seconds(mtime(&meta)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(io_err("stat", &path)(e)),
                };
                (EntryState::Corrupt { reason }, created)
            }
        };
        // An entry we cannot even walk is unusable, but it must not hide the others.
        let (state, disk_bytes) = match disk_usage(&path) {
            Ok(bytes) => (state, bytes),
            Err(e) => (
                EntryState::Corrupt {
                    reason: format!("cannot be read: {e}"),
                },
                0,
            ),
        };
        Ok(Some(EntryInfo {
            key,
            path,
            created_unix,
            age_secs: age(created_unix, now).as_secs(),
            disk_bytes,
            state,
        }))
    }

    /// Opens the entry of `key` for use: takes its entry lock in shared mode (waiting at
    /// most the lock timeout, which only `remove`/`gc` can make it do, briefly), then reads
    /// and checks its metadata. The entry cannot be deleted while the reader lives.
    ///
    /// Errors with [`StoreError::NotFound`] if there is no entry and
    /// [`StoreError::Corrupt`] if its metadata is unusable.
    pub fn open_entry(&self, key: &EntryKey) -> Result<EntryReader> {
        let guard = lock::lock(&self.entry_lock_path(key), Mode::Shared, self.lock_timeout)?;
        let path = self.entry_path(key);
        match load_metadata(&path, key)? {
            Load::Ok(metadata) => Ok(EntryReader::new(key.clone(), path, metadata, guard)),
            Load::Vanished => Err(StoreError::NotFound {
                key: key.clone(),
                store: self.root.clone(),
            }),
            Load::Corrupt(reason) => Err(StoreError::Corrupt {
                key: key.clone(),
                path,
                reason,
            }),
        }
    }

    /// Fully verifies every entry (reads every byte; see [`EntryReader::verify`]) and that
    /// the entries each one requires are present and the ones it was built on
    /// ([`Problem::Requirement`]). Each entry is held open (shared) while it is checked.
    /// Entries removed meanwhile are left out.
    pub fn verify_all(&self) -> Result<Vec<VerifyReport>> {
        let mut out = Vec::new();
        for info in self.entries()? {
            let status = match self.open_entry(&info.key) {
                Ok(reader) => match reader.verify().and_then(|mut problems| {
                    problems.extend(self.unmet_requirements(reader.metadata())?);
                    Ok(problems)
                }) {
                    Ok(problems) if problems.is_empty() => VerifyStatus::Ok,
                    Ok(problems) => VerifyStatus::Problems { problems },
                    Err(e) => VerifyStatus::Failed {
                        error: e.to_string(),
                    },
                },
                Err(StoreError::NotFound { .. }) => continue,
                Err(StoreError::Corrupt { reason, .. }) => VerifyStatus::Corrupt { reason },
                Err(e) => VerifyStatus::Failed {
                    error: e.to_string(),
                },
            };
            out.push(VerifyReport {
                key: info.key,
                path: info.path,
                status,
            });
        }
        Ok(out)
    }

    /// The requirements of `metadata` the store does not satisfy (from the required
    /// entries' metadata; their files are their own entries' business).
    fn unmet_requirements(&self, metadata: &Metadata) -> Result<Vec<Problem>> {
        let mut problems = Vec::new();
        for requirement in &metadata.requires {
            let key = requirement.key()?;
            let reason = match load_metadata(&self.entry_path(&key), &key)? {
                Load::Ok(found) => requirement.unmet(Some(&found)),
                Load::Vanished => requirement.unmet(None),
                Load::Corrupt(reason) => Some(format!("it is corrupt: {reason}")),
            };
            if let Some(reason) = reason {
                problems.push(Problem::Requirement {
                    required: key.to_string(),
                    reason,
                });
            }
        }
        Ok(problems)
    }

    /// Deletes the entry of `key` unless it is in use. Never waits: if a reader holds the
    /// entry, returns [`Removed::InUse`] and changes nothing. The entry is first renamed
    /// into `.trash/` (atomically invisible), then deleted.
    ///
    /// Entries that require this one are not consulted: `remove` is for entries that must
    /// go (corrupt, or being replaced), and a dependent of a removed entry cannot be used
    /// anyway (`verify` reports it, its consume exits 2). Retention belongs to
    /// [`gc`](Self::gc), which never removes an entry a kept entry requires.
    pub fn remove(&self, key: &EntryKey) -> Result<Removed> {
        self.remove_entry(key, false)
    }

    /// [`remove`](Self::remove), or with `dry_run` only the checks it would make.
    pub(crate) fn remove_entry(&self, key: &EntryKey, dry_run: bool) -> Result<Removed> {
        let Some(guard) = lock::try_lock(&self.entry_lock_path(key), Mode::Exclusive)? else {
            return Ok(Removed::InUse);
        };
        let path = self.entry_path(key);
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Removed::NotFound),
            Err(e) => return Err(io_err("stat", &path)(e)),
        };
        let bytes = disk_usage(&path).map_err(io_err("measure", &path))?;
        if dry_run {
            return Ok(Removed::Removed { bytes });
        }
        if meta.is_dir() && meta.permissions().readonly() {
            // Moving a directory to another parent rewrites its `..`, which needs write
            // permission on it when we are not root.
            set_mode(&path, DIR_MODE | 0o200).map_err(io_err("make writable", &path))?;
        }
        let trash = self
            .root
            .join(TRASH_DIR)
            .join(format!("{}.{}", key.stem(), unique_suffix()));
        fs::rename(&path, &trash).map_err(io_err("move to trash", &path))?;
        let fp_dir = self.fingerprint_dir(key.fingerprint());
        fsync_dir(&fp_dir).map_err(io_err("fsync", &fp_dir))?;
        // Nobody can see the entry any more; the lock file can go too.
        if let Err(e) = guard.unlink() {
            tracing::warn!(error = %e, "cannot remove the lock file of a removed entry");
        }
        if let Err(e) = remove_tree(&trash) {
            // Invisible already; `gc` finishes the deletion.
            tracing::warn!(path = %trash.display(), error = %e, "cannot delete trashed entry");
        }
        remove_empty_dir(&fp_dir);
        tracing::debug!(key = %key, bytes, "removed snapshot entry");
        Ok(Removed::Removed { bytes })
    }
}

/// Names and paths of the children of `dir`; empty if `dir` does not exist.
pub(crate) fn read_names(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let children = match fs::read_dir(dir) {
        Ok(children) => children,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    let mut out = Vec::new();
    for child in children {
        let child = child.map_err(io_err("list", dir))?;
        match child.file_name().into_string() {
            Ok(name) => out.push((name, child.path())),
            Err(_) => {
                tracing::warn!(path = %child.path().display(), "ignoring a non-UTF-8 name in the snapshot store")
            }
        }
    }
    Ok(out)
}

/// Removes a fingerprint directory that has no entries left. A publisher racing with us
/// recreates it (see `Staging::publish`).
pub(crate) fn remove_empty_dir(dir: &Path) {
    match fs::remove_dir(dir) {
        Ok(()) => tracing::debug!(dir = %dir.display(), "removed empty fingerprint directory"),
        Err(e) => tracing::trace!(dir = %dir.display(), error = %e, "fingerprint directory kept"),
    }
}
