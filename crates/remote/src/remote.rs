//! The object-store backend: opening `s3://` URLs, pushing entries (chunks first, manifest
//! last), listing manifests, and verified reads through the chunk cache (whole entries or
//! byte ranges).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bazel_diff_store::{
    EntryInfo, EntryKey, EntryState, Metadata, MetadataInput, Published, Removed, Store,
    StoreError, METADATA_FILE,
};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use serde::Serialize;

use crate::cache::ChunkCache;
use crate::chunk::{chunk_digest, compress, decompress_verified, split, Chunking};
use crate::contract::{
    CHUNKS_DIR, CONCURRENCY, ENTRIES_DIR, MANIFEST_FORMAT_VERSION, RECORD_WINDOW, REFRESH_AFTER,
};
use crate::error::{io_err, RemoteError, Result};
use crate::manifest::{ChunkRef, FileManifest, Manifest};
use crate::pages::LazyEntry;
use crate::{progress, runtime};

/// Whether `--store` names an object store (`scheme://...`) rather than a directory.
pub fn is_object_store_url(store: &str) -> bool {
    store.contains("://")
}

/// A snapshot store on object storage. Blocking API; see the crate docs for the layout.
pub struct Remote {
    rt: tokio::runtime::Runtime,
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).finish()
    }
}

/// One manifest found by [`Remote::list`].
#[derive(Debug, Clone)]
pub struct EntryListing {
    pub key: EntryKey,
    /// When the manifest was uploaded (Unix seconds).
    pub uploaded_unix: i64,
    /// The parsed manifest, or why it is unusable.
    pub manifest: std::result::Result<Box<Manifest>, String>,
}

/// What [`Remote::push`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PushReport {
    pub logical_bytes: u64,
    pub chunks: u64,
    pub distinct_chunks: u64,
    /// Chunks (and their stored bytes) this push uploaded; the rest already existed.
    pub uploaded_chunks: u64,
    pub uploaded_bytes: u64,
    /// Stored bytes of the entry's distinct chunks.
    pub stored_bytes: u64,
    /// Chunks re-uploaded because the stored copy was older than the refresh age.
    pub refreshed_chunks: u64,
    pub seconds: f64,
}

/// What a read from the store cost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FetchStats {
    /// Distinct chunks needed.
    pub chunks: u64,
    pub from_cache: u64,
    pub fetched: u64,
    /// Stored (compressed) bytes downloaded.
    pub fetched_bytes: u64,
    /// Uncompressed bytes produced.
    pub logical_bytes: u64,
    pub seconds: f64,
}

impl FetchStats {
    /// Adds what another read cost (its `seconds` too: sequential reads).
    fn add(&mut self, other: &FetchStats) {
        self.chunks += other.chunks;
        self.from_cache += other.from_cache;
        self.fetched += other.fetched;
        self.fetched_bytes += other.fetched_bytes;
        self.logical_bytes += other.logical_bytes;
        self.seconds += other.seconds;
    }
}

impl Remote {
    /// Opens `s3://bucket[/prefix]`. Credentials, region and endpoint come from the usual
    /// `AWS_*` variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    /// `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP` for a plain-HTTP endpoint such as a local test
    /// server). Nothing is contacted yet.
    pub fn open(url: &str) -> Result<Remote> {
        Remote::open_with(url, &[])
    }

    /// [`open`](Self::open) with `config` (`AWS_*` variable names or object_store's
    /// `aws_*` keys, any case) applied over the environment: tests point it at their own
    /// server without touching the process environment.
    pub fn open_with(url: &str, config: &[(&str, &str)]) -> Result<Remote> {
        let bad = |reason: &str| RemoteError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(bad(
                "only s3:// object stores are supported by this build (or give a directory)",
            ));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("the bucket name is empty"));
        }
        let prefix = prefix.trim_matches('/');
        let prefix = ObjectPath::parse(prefix).map_err(|e| bad(&e.to_string()))?;
        let mut builder = AmazonS3Builder::from_env();
        for (name, value) in config {
            let key = name
                .to_ascii_lowercase()
                .parse::<AmazonS3ConfigKey>()
                .map_err(|e| bad(&format!("unknown setting {name}: {e}")))?;
            builder = builder.with_config(key, *value);
        }
        let store = builder
            .with_bucket_name(bucket)
            // A few quick retries: a CI job would rather fall back to cold than hang for
            // the client's default three minutes on a dead endpoint.
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
                ..RetryConfig::default()
            })
            .build()
            .map_err(|source| RemoteError::Open {
                url: url.to_owned(),
                source: Box::new(source),
            })?;
        Ok(Remote {
            rt: runtime::new()?,
            store: Arc::new(store),
            prefix,
            url: url.trim_end_matches('/').to_owned(),
        })
    }

    /// The store URL, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub(crate) fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub(crate) fn dir(&self, name: &str) -> ObjectPath {
        self.prefix.clone().join(name)
    }

    pub(crate) fn chunk_path(&self, digest: &str) -> ObjectPath {
        self.dir(CHUNKS_DIR).join(&digest[..2]).join(digest)
    }

    pub(crate) fn manifest_path(&self, dir: &str, key: &EntryKey) -> ObjectPath {
        self.dir(dir)
            .join(key.fingerprint())
            .join(format!("{}.json", key.base_sha()))
    }

    pub(crate) fn request_err(
        &self,
        op: &'static str,
        key: &ObjectPath,
    ) -> impl FnOnce(object_store::Error) -> RemoteError {
        let key = key.to_string();
        let url = self.url.clone();
        move |source| RemoteError::Request {
            op,
            key,
            url,
            source: Box::new(source),
        }
    }

    /// Every manifest, or those of one fingerprint, sorted by key.
    pub fn list(&self, fingerprint: Option<&str>) -> Result<Vec<EntryListing>> {
        let dir = self.dir(ENTRIES_DIR);
        let prefix = match fingerprint {
            Some(fp) => dir.join(fp),
            None => dir,
        };
        self.block_on(self.list_manifests(&prefix))
    }

    pub(crate) async fn list_manifests(&self, prefix: &ObjectPath) -> Result<Vec<EntryListing>> {
        let metas: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(self.request_err("list", prefix))?;
        let mut keyed = Vec::new();
        for meta in metas {
            let parts: Vec<String> = meta
                .location
                .parts()
                .map(|p| p.as_ref().to_owned())
                .collect();
            let key = match parts.as_slice() {
                [.., fp, file] => file
                    .strip_suffix(".json")
                    .and_then(|sha| EntryKey::new(fp, sha).ok()),
                _ => None,
            };
            match key {
                Some(key) => keyed.push((key, meta)),
                None => {
                    tracing::warn!(object = %meta.location, "ignoring a stray object among the manifests")
                }
            }
        }
        let mut out: Vec<EntryListing> = futures::stream::iter(keyed)
            .map(|(key, meta)| async move {
                let manifest = self.read_manifest_at(&meta.location, &key).await?;
                Ok::<_, RemoteError>(manifest.map(|manifest| EntryListing {
                    key,
                    uploaded_unix: meta.last_modified.timestamp(),
                    manifest,
                }))
            })
            .buffer_unordered(CONCURRENCY)
            .try_filter_map(|listing| async move { Ok(listing) })
            .try_collect()
            .await?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Reads and checks the manifest at `path`: `None` if it is gone, `Some(Err)` if unusable.
    async fn read_manifest_at(
        &self,
        path: &ObjectPath,
        key: &EntryKey,
    ) -> Result<Option<std::result::Result<Box<Manifest>, String>>> {
        let bytes = match self.store.get(path).await {
            Ok(got) => got.bytes().await.map_err(self.request_err("read", path))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.request_err("read", path)(e)),
        };
        let parsed = serde_json::from_slice::<Manifest>(&bytes)
            .map_err(|e| format!("not a manifest: {e}"))
            .and_then(|m| m.check(key).map(|()| Box::new(m)));
        Ok(Some(parsed))
    }

    /// The manifest of `key`: [`RemoteError::NotFound`] if there is none,
    /// [`RemoteError::BadManifest`] if it is unusable.
    pub fn manifest(&self, key: &EntryKey) -> Result<Manifest> {
        let path = self.manifest_path(ENTRIES_DIR, key);
        match self.block_on(self.read_manifest_at(&path, key))? {
            Some(Ok(manifest)) => Ok(*manifest),
            Some(Err(reason)) => Err(RemoteError::BadManifest {
                key: key.to_string(),
                reason,
            }),
            None => Err(RemoteError::NotFound {
                key: key.to_string(),
                url: self.url.clone(),
            }),
        }
    }

    /// Whether `key` has a manifest (usable or not).
    pub fn contains(&self, key: &EntryKey) -> Result<bool> {
        let path = self.manifest_path(ENTRIES_DIR, key);
        match self.block_on(self.store.head(&path)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.request_err("check", &path)(e)),
        }
    }

    /// Uploads the entry in `dir` described by `metadata` (its `metadata.json`): every chunk
    /// first, the manifest last. Chunks already stored (and fresh) are not uploaded again.
    /// `chunking` overrides [`Chunking::for_file`] (benchmarks). A manifest of the same key
    /// is replaced: two records of one key describe the same entry.
    pub fn push(
        &self,
        dir: &Path,
        metadata: &Metadata,
        chunking: Option<Chunking>,
    ) -> Result<PushReport> {
        let key =
            EntryKey::new(&metadata.fingerprint, &metadata.base_sha).map_err(StoreError::from)?;
        let started = Instant::now();
        let bar = progress::bytes_bar(metadata.total_bytes, "uploading");
        let stored: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
        let claimed: Arc<Mutex<HashSet<String>>> = Arc::default();
        let mut report = PushReport {
            logical_bytes: metadata.total_bytes,
            ..PushReport::default()
        };
        let mut files = BTreeMap::new();
        for (rel, record) in &metadata.files {
            let path = dir.join(rel);
            let file = File::open(&path).map_err(io_err("open", &path))?;
            let chunking = chunking.unwrap_or_else(|| Chunking::for_file(record.size));
            let spans = split(file, chunking);
            let chunks: Vec<(String, u64, Option<Upload>)> = self.block_on(
                futures::stream::iter(spans)
                    .map(|span| {
                        let (path, stored, claimed, bar) =
                            (&path, stored.clone(), claimed.clone(), &bar);
                        async move {
                            let span = span.map_err(io_err("read", path))?;
                            let size = span.data.len() as u64;
                            let (digest, data) =
                                runtime::cpu(move || (chunk_digest(&span.data), span.data)).await;
                            let first = lock(&claimed).insert(digest.clone());
                            let upload = if first {
                                let upload = self.upload_chunk(&digest, data).await?;
                                lock(&stored).insert(digest.clone(), upload.stored);
                                Some(upload)
                            } else {
                                None
                            };
                            bar.inc(size);
                            Ok::<_, RemoteError>((digest, size, upload))
                        }
                    })
                    .buffered(CONCURRENCY)
                    .try_collect(),
            )?;
            let stored = lock(&stored);
            let mut refs = Vec::with_capacity(chunks.len());
            for (digest, size, upload) in chunks {
                if let Some(upload) = upload {
                    report.distinct_chunks += 1;
                    report.stored_bytes += upload.stored;
                    if upload.uploaded {
                        report.uploaded_chunks += 1;
                        report.uploaded_bytes += upload.stored;
                    }
                    report.refreshed_chunks += u64::from(upload.refreshed);
                }
                let stored = stored.get(&digest).copied().unwrap_or_default();
                refs.push(ChunkRef {
                    digest,
                    size,
                    stored,
                });
            }
            report.chunks += refs.len() as u64;
            files.insert(
                rel.clone(),
                FileManifest {
                    size: record.size,
                    sha256: record.sha256.clone(),
                    chunking,
                    chunks: refs,
                },
            );
        }
        bar.finish_and_clear();
        let elapsed = started.elapsed();
        if elapsed > RECORD_WINDOW {
            return Err(RemoteError::RecordWindowExceeded {
                key: key.to_string(),
                secs: elapsed.as_secs(),
            });
        }
        let manifest = Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            fingerprint: metadata.fingerprint.clone(),
            base_sha: metadata.base_sha.clone(),
            created_unix: metadata.created_unix,
            metadata: metadata.clone(),
            files,
            logical_bytes: metadata.total_bytes,
            stored_bytes: report.stored_bytes,
            uploaded_bytes: report.uploaded_bytes,
        };
        // Our own output, checked like any other manifest before anyone can see it.
        manifest
            .check(&key)
            .map_err(|reason| RemoteError::BadManifest {
                key: key.to_string(),
                reason,
            })?;
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| RemoteError::BadManifest {
            key: key.to_string(),
            reason: e.to_string(),
        })?;
        let path = self.manifest_path(ENTRIES_DIR, &key);
        self.block_on(self.store.put(&path, PutPayload::from(json)))
            .map_err(self.request_err("publish the manifest", &path))?;
        report.seconds = started.elapsed().as_secs_f64();
        tracing::info!(key = %key, ?report, "pushed snapshot entry");
        Ok(report)
    }

    /// Makes sure the chunk is stored and fresh; uploads it otherwise.
    async fn upload_chunk(&self, digest: &str, data: Vec<u8>) -> Result<Upload> {
        let path = self.chunk_path(digest);
        let refreshed = match self.store.head(&path).await {
            Ok(meta) => {
                let age = SystemTime::now()
                    .duration_since(SystemTime::from(meta.last_modified))
                    .unwrap_or_default();
                if age < REFRESH_AFTER {
                    return Ok(Upload {
                        stored: meta.size,
                        uploaded: false,
                        refreshed: false,
                    });
                }
                true
            }
            Err(object_store::Error::NotFound { .. }) => false,
            Err(e) => return Err(self.request_err("check", &path)(e)),
        };
        let compressed = runtime::cpu(move || compress(&data))
            .await
            .map_err(io_err("compress a chunk for", path.to_string()))?;
        let stored = compressed.len() as u64;
        self.store
            .put(&path, PutPayload::from(compressed))
            .await
            .map_err(self.request_err("upload", &path))?;
        Ok(Upload {
            stored,
            uploaded: true,
            refreshed,
        })
    }

    /// One chunk of `file`, verified: from the cache, else from the store (then cached).
    pub(crate) async fn chunk(
        &self,
        cache: &ChunkCache,
        file: &str,
        chunk: &ChunkRef,
        stats: &Mutex<FetchStats>,
    ) -> Result<Vec<u8>> {
        if let Some(data) = cache.get(&chunk.digest, chunk.size) {
            lock(stats).from_cache += 1;
            return Ok(data);
        }
        let path = self.chunk_path(&chunk.digest);
        let stored = match self.store.get(&path).await {
            Ok(got) => got
                .bytes()
                .await
                .map_err(self.request_err("download", &path))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(RemoteError::MissingChunk {
                    digest: chunk.digest.clone(),
                    file: file.to_owned(),
                    url: self.url.clone(),
                })
            }
            Err(e) => return Err(self.request_err("download", &path)(e)),
        };
        let fetched = stored.len() as u64;
        let (digest, size) = (chunk.digest.clone(), chunk.size);
        let data = runtime::cpu(move || decompress_verified(&stored, &digest, size))
            .await
            .map_err(|reason| RemoteError::BadChunk {
                digest: chunk.digest.clone(),
                file: file.to_owned(),
                reason,
            })?;
        cache.put(&chunk.digest, &data)?;
        let mut stats = lock(stats);
        stats.fetched += 1;
        stats.fetched_bytes += fetched;
        Ok(data)
    }

    /// Writes every file of `manifest` under `dest` (created as needed), each chunk fetched
    /// once and verified. On error, `dest` holds partial files: write into a staging
    /// directory.
    pub fn pull(&self, manifest: &Manifest, cache: &ChunkCache, dest: &Path) -> Result<FetchStats> {
        self.pull_except(manifest, cache, dest, &[])
    }

    /// [`pull`](Self::pull) of every file of `manifest` but those named in `skip` (served
    /// lazily instead, see [`LazyPages`](crate::LazyPages)).
    pub fn pull_except(
        &self,
        manifest: &Manifest,
        cache: &ChunkCache,
        dest: &Path,
        skip: &[&str],
    ) -> Result<FetchStats> {
        let started = Instant::now();
        let wanted: Vec<(&String, &FileManifest)> = manifest
            .files
            .iter()
            .filter(|(rel, _)| !skip.contains(&rel.as_str()))
            .collect();
        let logical_bytes = wanted.iter().map(|(_, file)| file.size).sum();
        let bar = progress::bytes_bar(logical_bytes, "downloading");
        // Each distinct chunk once, with every place it goes.
        let mut targets: HashMap<&str, Placement<'_>> = HashMap::new();
        let mut handles = Vec::new();
        for (rel, file) in wanted {
            let path = dest.join(rel);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(io_err("create", parent))?;
            }
            let out = File::create(&path).map_err(io_err("create", &path))?;
            out.set_len(file.size).map_err(io_err("size", &path))?;
            let index = handles.len();
            handles.push((out, path));
            for (chunk, offset) in file.chunks.iter().zip(file.offsets()) {
                targets
                    .entry(chunk.digest.as_str())
                    .or_insert_with(|| Placement {
                        file: rel,
                        chunk,
                        places: Vec::new(),
                    })
                    .places
                    .push((index, offset));
            }
        }
        let stats = Mutex::new(FetchStats {
            chunks: targets.len() as u64,
            logical_bytes,
            ..FetchStats::default()
        });
        let handles = &handles;
        self.block_on(
            futures::stream::iter(targets.into_values())
                .map(
                    |Placement {
                         file,
                         chunk,
                         places,
                     }| {
                        let (stats, bar) = (&stats, &bar);
                        async move {
                            let data = self.chunk(cache, file, chunk, stats).await?;
                            for (index, offset) in places {
                                let (out, path) = &handles[index];
                                out.write_all_at(&data, offset)
                                    .map_err(io_err("write", path))?;
                                bar.inc(chunk.size);
                            }
                            Ok::<_, RemoteError>(())
                        }
                    },
                )
                .buffer_unordered(CONCURRENCY)
                .try_collect::<()>(),
        )?;
        bar.finish_and_clear();
        let keep: HashSet<String> = manifest
            .distinct_chunks()
            .into_keys()
            .map(str::to_owned)
            .collect();
        cache.evict(&keep)?;
        let mut stats = stats.into_inner().unwrap_or_else(|e| e.into_inner());
        stats.seconds = started.elapsed().as_secs_f64();
        Ok(stats)
    }

    /// Cheap audit of an entry: every chunk exists with its recorded stored size (one
    /// `HEAD` each). Digests are not checked here: every read checks them.
    pub fn check_chunks(&self, manifest: &Manifest) -> Result<Vec<String>> {
        let chunks = manifest.distinct_chunks();
        let mut problems: Vec<String> = self.block_on(
            futures::stream::iter(chunks)
                .map(|(digest, stored)| async move {
                    let path = self.chunk_path(digest);
                    match self.store.head(&path).await {
                        Ok(meta) if meta.size == stored => Ok(None),
                        Ok(meta) => Ok(Some(format!(
                            "chunk {digest}: {} bytes stored, expected {stored}",
                            meta.size
                        ))),
                        Err(object_store::Error::NotFound { .. }) => {
                            Ok(Some(format!("chunk {digest}: missing")))
                        }
                        Err(e) => Err(self.request_err("check", &path)(e)),
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .try_filter_map(|problem| async move { Ok(problem) })
                .try_collect(),
        )?;
        problems.sort();
        Ok(problems)
    }

    /// A file of `manifest` read lazily, chunk by chunk, through `cache`.
    pub fn lazy_file<'a>(
        &'a self,
        manifest: &Manifest,
        file: &str,
        cache: &'a ChunkCache,
    ) -> Result<LazyFile<'a>> {
        let Some(chunks) = manifest.files.get(file) else {
            return Err(RemoteError::NotFound {
                key: format!("{}/{}/{file}", manifest.fingerprint, manifest.base_sha),
                url: self.url.clone(),
            });
        };
        Ok(LazyFile {
            remote: self,
            cache,
            name: file.to_owned(),
            offsets: chunks.offsets(),
            file: chunks.clone(),
            stats: Mutex::default(),
        })
    }
}

/// Where one distinct chunk of a pull goes.
struct Placement<'a> {
    /// The first file naming it (for messages).
    file: &'a str,
    chunk: &'a ChunkRef,
    /// (index of the output file, offset) pairs.
    places: Vec<(usize, u64)>,
}

/// Outcome of making sure one chunk is stored.
#[derive(Debug, Clone, Copy)]
struct Upload {
    stored: u64,
    uploaded: bool,
    refreshed: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking holder cannot leave these maps half-updated in a harmful way.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Random access to one file of a remote entry: only the chunks a read touches are fetched
/// (and cached). Guest memory served on first fault goes through
/// [`LazyPages`](crate::LazyPages) instead, which keeps fetched chunks mapped for the
/// userfaultfd handler.
pub struct LazyFile<'a> {
    remote: &'a Remote,
    cache: &'a ChunkCache,
    name: String,
    file: FileManifest,
    offsets: Vec<u64>,
    stats: Mutex<FetchStats>,
}

impl LazyFile<'_> {
    /// The file's length.
    pub fn size(&self) -> u64 {
        self.file.size
    }

    /// Bytes `[offset, offset + len)` of the file, every chunk verified.
    pub fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= self.file.size)
            .ok_or_else(|| RemoteError::OutOfRange {
                file: self.name.clone(),
                offset,
                len,
                size: self.file.size,
            })?;
        let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        if len == 0 {
            return Ok(out);
        }
        // The chunk holding `offset`: the last start at or before it.
        let first = self.offsets.partition_point(|&start| start <= offset) - 1;
        for (index, chunk) in self.file.chunks.iter().enumerate().skip(first) {
            let start = self.offsets[index];
            if start >= end {
                break;
            }
            let data = self.remote.block_on(self.remote.chunk(
                self.cache,
                &self.name,
                chunk,
                &self.stats,
            ))?;
            let from = offset.saturating_sub(start) as usize;
            let to = (end - start).min(chunk.size) as usize;
            out.extend_from_slice(&data[from..to]);
        }
        lock(&self.stats).logical_bytes += len;
        Ok(out)
    }

    /// What the reads so far cost.
    pub fn stats(&self) -> FetchStats {
        lock(&self.stats).clone()
    }
}

/// The remote store as `bazel-diff-snap` uses it: the object store, the local chunk cache,
/// and a local [`Store`] that entries are recorded into and materialized into.
#[derive(Debug)]
pub struct SharedStore {
    pub remote: Remote,
    pub cache: ChunkCache,
}

impl SharedStore {
    /// The entries of `fingerprint` as the local store would list them, with `path` where
    /// the entry is (or will be) materialized in `local` and `disk_bytes` its stored size.
    pub fn entries_for(&self, fingerprint: &str, local: &Store) -> Result<Vec<EntryInfo>> {
        let now_unix = unix_now();
        let mut out = Vec::new();
        for listing in self.remote.list(Some(fingerprint))? {
            let (state, created, bytes) = match listing.manifest {
                Ok(manifest) => (
                    EntryState::Ok {
                        metadata: Box::new(manifest.metadata.clone()),
                    },
                    manifest.created_unix,
                    manifest.stored_bytes,
                ),
                Err(reason) => (EntryState::Corrupt { reason }, listing.uploaded_unix, 0),
            };
            out.push(EntryInfo {
                path: local.entry_path(&listing.key),
                key: listing.key,
                created_unix: created,
                age_secs: u64::try_from(now_unix.saturating_sub(created)).unwrap_or(0),
                disk_bytes: bytes,
                state,
            });
        }
        out.sort_by(|a, b| {
            b.created_unix
                .cmp(&a.created_unix)
                .then_with(|| a.key.cmp(&b.key))
        });
        Ok(out)
    }

    /// Publishes the local entry `key` of `local` to the object store, unless the store
    /// already has it; `None` then. Entries it requires that the store lacks are pushed
    /// first (from `local`; failing if it lacks them): like chunks before a manifest, a
    /// reader never sees an entry whose requirements are not there.
    pub fn push(&self, local: &Store, key: &EntryKey) -> Result<Option<PushReport>> {
        self.push_with_requirements(local, key, 0)
    }

    fn push_with_requirements(
        &self,
        local: &Store,
        key: &EntryKey,
        depth: usize,
    ) -> Result<Option<PushReport>> {
        if self.remote.contains(key)? {
            return Ok(None);
        }
        let entry = local.open_entry(key)?;
        for required in entry.metadata().required_keys() {
            if depth == MAX_REQUIRED_DEPTH {
                return Err(too_deep(key));
            }
            if let Some(report) = self.push_with_requirements(local, &required, depth + 1)? {
                tracing::info!(entry = %required, required_by = %key, bytes = report.uploaded_bytes, "pushed a required entry");
            }
        }
        self.remote
            .push(entry.path(), entry.metadata(), None)
            .map(Some)
    }

    /// Makes the entry `key` available in `local`, with the entries it requires (a Diff
    /// snapshot's parents, transitively; fetched first, each checked against the digests
    /// the requirement pins), fetching only the chunks the cache lacks. An intact local
    /// copy is reused as is. Fails (and publishes nothing more) on any missing or corrupt
    /// chunk or unmet requirement. The stats cover every entry fetched.
    pub fn materialize(&self, key: &EntryKey, local: &Store) -> Result<FetchStats> {
        let started = Instant::now();
        let manifest = self.remote.manifest(key)?;
        let mut stats = self.materialize_required(&manifest, local)?;
        stats.add(&self.materialize_one(key, local, &manifest)?);
        stats.seconds = started.elapsed().as_secs_f64();
        Ok(stats)
    }

    /// Materializes, in `local`, every entry `manifest` requires (transitively). Every
    /// requirement is checked against the required entry's manifest before anything is
    /// downloaded, and the deepest go first, so a failure never leaves an entry without
    /// what it requires.
    fn materialize_required(&self, manifest: &Manifest, local: &Store) -> Result<FetchStats> {
        // Breadth first: (key, manifest, depth) of every required entry.
        let mut needed = self.requirements_of(manifest, 0)?;
        let mut next = 0;
        while let Some((_, dependent, depth)) = needed.get(next) {
            let more = self.requirements_of(dependent, *depth)?;
            needed.extend(more);
            next += 1;
        }
        let mut stats = FetchStats::default();
        for (key, required, _) in needed.iter().rev() {
            stats.add(&self.materialize_one(key, local, required)?);
        }
        Ok(stats)
    }

    /// The entries `dependent` (at `depth` below the entry being opened) requires, each
    /// checked against its manifest.
    fn requirements_of(
        &self,
        dependent: &Manifest,
        depth: usize,
    ) -> Result<Vec<(EntryKey, Manifest, usize)>> {
        let key = dependent.key().map_err(|reason| RemoteError::BadManifest {
            key: format!("{}/{}", dependent.fingerprint, dependent.base_sha),
            reason,
        })?;
        if !dependent.metadata.requires.is_empty() && depth == MAX_REQUIRED_DEPTH {
            return Err(too_deep(&key));
        }
        let mut out = Vec::new();
        for requirement in &dependent.metadata.requires {
            let required = requirement.key().map_err(StoreError::from)?;
            let unmet = |reason: String| RemoteError::UnmetRequirement {
                key: key.to_string(),
                required: required.to_string(),
                reason,
            };
            let manifest = match self.remote.manifest(&required) {
                Ok(manifest) => manifest,
                Err(RemoteError::NotFound { url, .. }) => {
                    return Err(unmet(format!("it is not in {url}")))
                }
                Err(RemoteError::BadManifest { reason, .. }) => {
                    return Err(unmet(format!("its manifest is unusable: {reason}")))
                }
                Err(e) => return Err(e),
            };
            if let Some(reason) = requirement.unmet(Some(&manifest.metadata)) {
                return Err(unmet(reason));
            }
            out.push((required, manifest, depth + 1));
        }
        Ok(out)
    }

    /// [`materialize`](Self::materialize) of the one entry `manifest` describes.
    fn materialize_one(
        &self,
        key: &EntryKey,
        local: &Store,
        manifest: &Manifest,
    ) -> Result<FetchStats> {
        // Twice at most: a concurrent consume on this host may materialize it first.
        for _ in 0..2 {
            if let Some(stats) = self.reuse_local(key, local, manifest)? {
                return Ok(stats);
            }
            let staging = local.begin(key)?;
            if staging.entry_exists()? {
                continue;
            }
            let stats = self.remote.pull(manifest, &self.cache, staging.path())?;
            let meta = &manifest.metadata;
            let mut input = MetadataInput::new(&meta.tool_version, &meta.driver).with_created(
                SystemTime::UNIX_EPOCH
                    + Duration::from_secs(u64::try_from(meta.created_unix).unwrap_or(0)),
            );
            input.extra = meta.extra.clone();
            input.requires = meta.requires.clone();
            return match staging.publish(input)? {
                Published::Created { metadata, path } if metadata.files != meta.files => {
                    // Chunks verified but the assembled files do not hash to the recorded
                    // SHA-256: the manifest itself is wrong. Leave nothing for consume.
                    local.remove(key)?;
                    Err(RemoteError::BadManifest {
                        key: key.to_string(),
                        reason: format!(
                            "the files assembled in {} do not match its metadata's digests",
                            path.display()
                        ),
                    })
                }
                _ => Ok(stats),
            };
        }
        Err(RemoteError::LocalCopyInUse {
            key: key.to_string(),
            path: local.entry_path(key),
        })
    }

    /// For a restore that serves the files in `lazy` on first read (see
    /// [`LazyPages`](crate::LazyPages)): pulls every other file of `key` into `dest`, with
    /// the entry's `metadata.json`, and leaves those on the object store. `None` when the
    /// entry should be opened with [`materialize`](Self::materialize) instead: `local`
    /// holds an intact copy, the entry lacks one of the `lazy` files, or it requires other
    /// entries (a Diff snapshot, layered over its parents' local files). Pulled chunks are
    /// verified; `dest` is not a store entry (nothing else locks or lists it).
    pub fn open_lazily(
        &self,
        key: &EntryKey,
        local: &Store,
        lazy: &[&str],
        dest: &Path,
    ) -> Result<Option<LazyEntry>> {
        let manifest = self.remote.manifest(key)?;
        if lazy.iter().any(|f| !manifest.files.contains_key(*f))
            || !manifest.metadata.requires.is_empty()
            || self.reuse_local(key, local, &manifest)?.is_some()
        {
            return Ok(None);
        }
        fs::create_dir_all(dest).map_err(io_err("create", dest))?;
        let stats = self
            .remote
            .pull_except(&manifest, &self.cache, dest, lazy)?;
        let meta_path = dest.join(METADATA_FILE);
        let meta = serde_json::to_vec_pretty(&manifest.metadata)
            .map_err(|e| io_err("serialize", &meta_path)(e.into()))?;
        fs::write(&meta_path, meta).map_err(io_err("write", &meta_path))?;
        Ok(Some(LazyEntry {
            dir: dest.to_path_buf(),
            manifest,
            stats,
            url: self.remote.url().to_owned(),
            cache: self.cache.clone(),
        }))
    }

    /// The stats of reusing the local copy of `key` if it is intact and the same entry;
    /// otherwise removes it (if any) and returns `None`.
    fn reuse_local(
        &self,
        key: &EntryKey,
        local: &Store,
        manifest: &Manifest,
    ) -> Result<Option<FetchStats>> {
        if !local.contains(key)? {
            return Ok(None);
        }
        let intact = match local.open_entry(key) {
            Ok(entry) => {
                entry.metadata().files == manifest.metadata.files
                    && entry.metadata().requires == manifest.metadata.requires
                    && entry.verify_quick()?.is_empty()
            }
            Err(_) => false,
        };
        if intact {
            return Ok(Some(FetchStats {
                logical_bytes: manifest.logical_bytes,
                ..FetchStats::default()
            }));
        }
        tracing::warn!(key = %key, "the local copy differs from the shared store's; replacing it");
        match local.remove(key)? {
            Removed::InUse => Err(RemoteError::LocalCopyInUse {
                key: key.to_string(),
                path: local.entry_path(key),
            }),
            Removed::Removed { .. } | Removed::NotFound => Ok(None),
        }
    }
}

/// A chain of required entries this long is refused (a cycle, or a forged store).
const MAX_REQUIRED_DEPTH: usize = 64;

fn too_deep(key: &EntryKey) -> RemoteError {
    RemoteError::BadManifest {
        key: key.to_string(),
        reason: format!(
            "its chain of required entries is longer than {MAX_REQUIRED_DEPTH} (a cycle?)"
        ),
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
