//! The store backend seen by `bazel-diff-snap`: where entries are listed, opened and
//! published. Two implementations: the local directory store itself, and an object store in
//! front of a local store ([`ObjectBackend`]), which lists manifests, materializes the chosen
//! entry (with the entries it requires) into the local store and pushes recorded entries. Either way an opened entry is a
//! local, locked, verified [`EntryReader`], so drivers do not know which one they got.

use std::path::Path;

use bazel_diff_store::{EntryInfo, EntryKey, EntryReader, Store};

use crate::error::Result;
use crate::pages::LazyEntry;
use crate::remote::{FetchStats, PushReport, SharedStore};

/// Where entries live; see the module docs.
pub trait Backend {
    /// The store as the user named it (a directory or a URL), for messages.
    fn location(&self) -> String;

    /// The local store entries are recorded into (and, for an object store, fetched into).
    fn local(&self) -> &Store;

    /// The entries of `fingerprint`, newest first; unusable ones included, marked corrupt.
    fn entries_for(&self, fingerprint: &str) -> Result<Vec<EntryInfo>>;

    /// Opens `key` for use, fetching it first if it is not local; what the fetch cost
    /// (`None` for a local store).
    fn open_entry(&self, key: &EntryKey) -> Result<(EntryReader, Option<FetchStats>)>;

    /// For a restore that serves the files in `lazy` on first read: opens `key` with every
    /// other file fetched into `dest` (see [`SharedStore::open_lazily`]). `None` when the
    /// entry is opened with [`open_entry`](Self::open_entry) instead (a local store, or an
    /// intact local copy).
    fn open_lazily(&self, key: &EntryKey, lazy: &[&str], dest: &Path) -> Result<Option<LazyEntry>> {
        let _ = (key, lazy, dest);
        Ok(None)
    }

    /// Publishes the entry `key` that a record just put in the local store; `None` when
    /// there is nothing to do (a local store, or the object store already has it).
    fn publish(&self, key: &EntryKey) -> Result<Option<PushReport>>;

    /// Whether `key` is published (for an object store: uploaded, not just local).
    fn contains(&self, key: &EntryKey) -> Result<bool>;

    /// `fingerprint.json` of the newest usable entry, to explain a fingerprint mismatch.
    fn newest_fingerprint_json(&self) -> Option<String>;
}

impl Backend for Store {
    fn location(&self) -> String {
        self.root().display().to_string()
    }

    fn local(&self) -> &Store {
        self
    }

    fn entries_for(&self, fingerprint: &str) -> Result<Vec<EntryInfo>> {
        Ok(Store::entries_for(self, fingerprint)?)
    }

    fn open_entry(&self, key: &EntryKey) -> Result<(EntryReader, Option<FetchStats>)> {
        Ok((Store::open_entry(self, key)?, None))
    }

    fn publish(&self, _key: &EntryKey) -> Result<Option<PushReport>> {
        Ok(None)
    }

    fn contains(&self, key: &EntryKey) -> Result<bool> {
        Ok(Store::contains(self, key)?)
    }

    fn newest_fingerprint_json(&self) -> Option<String> {
        let newest = self
            .entries()
            .ok()?
            .into_iter()
            .filter_map(|e| Some((e.metadata()?.created_unix, e.path)))
            .max_by_key(|(created, _)| *created)?;
        std::fs::read_to_string(newest.1.join("fingerprint.json")).ok()
    }
}

/// An object store with a local store as its cache and recording area.
#[derive(Debug)]
pub struct ObjectBackend {
    pub shared: SharedStore,
    pub local: Store,
}

impl Backend for ObjectBackend {
    fn location(&self) -> String {
        self.shared.remote.url().to_owned()
    }

    fn local(&self) -> &Store {
        &self.local
    }

    fn entries_for(&self, fingerprint: &str) -> Result<Vec<EntryInfo>> {
        self.shared.entries_for(fingerprint, &self.local)
    }

    fn open_entry(&self, key: &EntryKey) -> Result<(EntryReader, Option<FetchStats>)> {
        let stats = self.shared.materialize(key, &self.local)?;
        Ok((self.local.open_entry(key)?, Some(stats)))
    }

    fn open_lazily(&self, key: &EntryKey, lazy: &[&str], dest: &Path) -> Result<Option<LazyEntry>> {
        self.shared.open_lazily(key, &self.local, lazy, dest)
    }

    fn publish(&self, key: &EntryKey) -> Result<Option<PushReport>> {
        self.shared.push(&self.local, key)
    }

    fn contains(&self, key: &EntryKey) -> Result<bool> {
        self.shared.remote.contains(key)
    }

    fn newest_fingerprint_json(&self) -> Option<String> {
        let remote = &self.shared.remote;
        let newest = remote
            .list(None)
            .ok()?
            .into_iter()
            .filter_map(|listing| listing.manifest.ok())
            .max_by_key(|manifest| manifest.created_unix)?;
        // One small chunk, through the cache.
        let file = remote
            .lazy_file(&newest, "fingerprint.json", &self.shared.cache)
            .ok()?;
        String::from_utf8(file.read_at(0, file.size()).ok()?).ok()
    }
}
