//! Figures of the shared store against a loopback S3 server (moto, started here):
//! dedup between two entries one commit apart (real local-driver entries from a store
//! directory, and a synthetic memory image with clustered page churn), upload and download
//! MB/s, and what a consume fetches against the entry's full size.
//!
//! ```sh
//! cargo run --release -p bazel-diff-remote --example remote_bench -- \
//!     [--local-store DIR] [--mem-mib 1024] [--churn-pct 3]
//! ```
//!
//! `--local-store` is a `bazel-diff-snap` store directory holding (at least) two entries of
//! one fingerprint, e.g. `record` of two consecutive commits of a generated workspace.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bazel_diff_remote::{chunk_digest, split, ChunkCache, Chunking, Remote, SharedStore};
use bazel_diff_store::{format_size, EntryKey, MetadataInput, Store};
use bazel_diff_testkit::S3Server;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

const PAGE: usize = 4096;

/// A memory image: a third zero pages, a quarter low-entropy pages (text-like, compress
/// well), the rest random (heap data, pointers).
fn memory_image(mib: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let mut mem = vec![0u8; mib << 20];
    for page in mem.chunks_mut(PAGE) {
        match rng.next() % 12 {
            0..=3 => {}
            4..=6 => {
                let word = rng.next().to_le_bytes();
                for (i, b) in page.iter_mut().enumerate() {
                    *b = word[i % 8].wrapping_add((i / 64) as u8);
                }
            }
            _ => rng.fill(page),
        }
    }
    mem
}

/// Rewrites `pct`% of the pages: clustered runs of 1 to 64 pages, or single pages spread
/// uniformly. Returns the number of pages changed.
fn churn(mem: &mut [u8], pct: f64, clustered: bool, seed: u64) -> usize {
    let mut rng = Rng(seed | 1);
    let pages = mem.len() / PAGE;
    let target = (pages as f64 * pct / 100.0) as usize;
    let mut touched = HashSet::new();
    while touched.len() < target {
        let run = if clustered {
            1 + (rng.next() % 64) as usize
        } else {
            1
        };
        let start = (rng.next() as usize) % (pages - run);
        for page in start..start + run {
            if touched.insert(page) {
                rng.fill(&mut mem[page * PAGE..(page + 1) * PAGE]);
            }
        }
    }
    touched.len()
}

/// Share of `b`'s bytes in chunks that `a` already has, with this chunking.
fn offline_dedup(a: &[u8], b: &[u8], chunking: Chunking) -> f64 {
    let digests = |data: &[u8]| -> Vec<(String, usize)> {
        split(std::io::Cursor::new(data.to_vec()), chunking)
            .map(|c| {
                let c = c.unwrap();
                (chunk_digest(&c.data), c.data.len())
            })
            .collect()
    };
    let known: HashSet<String> = digests(a).into_iter().map(|(d, _)| d).collect();
    let shared: usize = digests(b)
        .iter()
        .filter(|(d, _)| known.contains(d))
        .map(|(_, n)| n)
        .sum();
    shared as f64 / b.len() as f64
}

fn publish(store: &Store, base: &str, files: &[(&str, &[u8])]) -> EntryKey {
    let key = EntryKey::new(&"f".repeat(64), base).unwrap();
    let staging = store.begin(&key).unwrap();
    for (rel, data) in files {
        std::fs::write(staging.path().join(rel), data).unwrap();
    }
    staging
        .publish(MetadataInput::new("bench", "firecracker"))
        .unwrap();
    key
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / secs
}

fn host(url: &str, s3: &S3Server, dir: &Path) -> SharedStore {
    let env = s3.env();
    let config: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    SharedStore {
        remote: Remote::open_with(url, &config).unwrap(),
        cache: ChunkCache::open(dir, 64 << 30).unwrap(),
    }
}

fn main() {
    let mut local: Option<PathBuf> = None;
    let mut mem_mib = 1024usize;
    let mut churn_pct = 3.0f64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().expect("a value after the flag");
        match arg.as_str() {
            "--local-store" => local = Some(PathBuf::from(value())),
            "--mem-mib" => mem_mib = value().parse().expect("--mem-mib N"),
            "--churn-pct" => churn_pct = value().parse().expect("--churn-pct X"),
            other => panic!("unknown argument {other}"),
        }
    }
    let s3 = S3Server::start();
    let url = format!("{}/bench", s3.bucket("bench"));
    let tmp = tempfile::tempdir().unwrap();
    let host_a = host(&url, &s3, &tmp.path().join("cache-a"));

    if let Some(dir) = local {
        println!("## local driver entries ({})", dir.display());
        let store = Store::open(&dir).unwrap();
        let mut entries: Vec<_> = store.entries().unwrap();
        entries.sort_by_key(|e| e.created_unix);
        let fp = entries[0].key.fingerprint().to_owned();
        let pair: Vec<_> = entries
            .iter()
            .filter(|e| e.key.fingerprint() == fp)
            .take(2)
            .collect();
        assert_eq!(
            pair.len(),
            2,
            "need two entries of one fingerprint in {}",
            dir.display()
        );
        let mut reports = Vec::new();
        for entry in &pair {
            let reader = store.open_entry(&entry.key).unwrap();
            let r = host_a
                .remote
                .push(reader.path(), reader.metadata(), None)
                .unwrap();
            println!(
                "push {}: files {}, logical {}, stored {}, uploaded {} ({} of {} chunks new), {:.2} s",
                &entry.key.base_sha()[..12],
                reader.metadata().files.len(),
                format_size(r.logical_bytes),
                format_size(r.stored_bytes),
                format_size(r.uploaded_bytes),
                r.uploaded_chunks,
                r.distinct_chunks,
                r.seconds
            );
            reports.push(r);
        }
        let second = &reports[1];
        println!(
            "dedup, second entry: {:.1}% of its stored bytes already in the store (uploaded {} of {})",
            100.0 * (1.0 - second.uploaded_bytes as f64 / second.stored_bytes as f64),
            format_size(second.uploaded_bytes),
            format_size(second.stored_bytes)
        );
        // Host B consumed the first entry yesterday; today it consumes the second.
        let b_dir = tempfile::tempdir().unwrap();
        let host_b = host(&url, &s3, &b_dir.path().join("chunks"));
        let local_b = Store::open(b_dir.path().join("store")).unwrap();
        let first = host_b.materialize(&pair[0].key, &local_b).unwrap();
        let next = host_b.materialize(&pair[1].key, &local_b).unwrap();
        println!(
            "consume on a fresh host: fetched {} for {} logical; the next commit's entry: fetched {} ({} of {} chunks from cache)",
            format_size(first.fetched_bytes),
            format_size(first.logical_bytes),
            format_size(next.fetched_bytes),
            next.from_cache,
            next.chunks
        );
    }

    println!("\n## synthetic memory image: {mem_mib} MiB, {churn_pct}% of pages rewritten");
    let a = memory_image(mem_mib, 42);
    let mut b_clustered = a.clone();
    let changed = churn(&mut b_clustered, churn_pct, true, 7);
    let mut b_uniform = a.clone();
    churn(&mut b_uniform, churn_pct, false, 9);
    println!("pages rewritten: {changed} of {}", a.len() / PAGE);
    for size in [256 << 10, 1 << 20, 4 << 20] {
        let chunking = Chunking::Fixed { size };
        println!(
            "offline dedup, fixed {:>4} KiB chunks: clustered churn {:.1}% shared, uniform churn {:.1}% shared",
            size >> 10,
            100.0 * offline_dedup(&a, &b_clustered, chunking),
            100.0 * offline_dedup(&a, &b_uniform, chunking),
        );
    }

    let store = Store::open(tmp.path().join("store")).unwrap();
    let key_a = publish(&store, &"a".repeat(40), &[("mem", &a)]);
    let key_b = publish(&store, &"b".repeat(40), &[("mem", &b_clustered)]);
    drop((a, b_clustered, b_uniform));
    let push = |key: &EntryKey| {
        let reader = store.open_entry(key).unwrap();
        let started = Instant::now();
        let r = host_a
            .remote
            .push(reader.path(), reader.metadata(), None)
            .unwrap();
        (r, started.elapsed().as_secs_f64())
    };
    let (ra, secs_a) = push(&key_a);
    println!(
        "upload A: {} logical, {} stored after zstd ({} chunks), {:.2} s = {:.0} MB/s logical, {:.0} MB/s on the wire",
        format_size(ra.logical_bytes),
        format_size(ra.stored_bytes),
        ra.distinct_chunks,
        secs_a,
        mbps(ra.logical_bytes, secs_a),
        mbps(ra.uploaded_bytes, secs_a)
    );
    let (rb, secs_b) = push(&key_b);
    println!(
        "upload B (one commit later): uploaded {} of {} stored ({:.1}% dedup), {} new chunks, {:.2} s",
        format_size(rb.uploaded_bytes),
        format_size(rb.stored_bytes),
        100.0 * (1.0 - rb.uploaded_bytes as f64 / rb.stored_bytes as f64),
        rb.uploaded_chunks,
        secs_b
    );

    let fresh = tempfile::tempdir().unwrap();
    let host_c = host(&url, &s3, &fresh.path().join("chunks"));
    let local_c = Store::open(fresh.path().join("store")).unwrap();
    let started = Instant::now();
    let full = host_c.materialize(&key_b, &local_c).unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "download B on an empty cache: fetched {} for {} logical, {:.2} s = {:.0} MB/s logical, {:.0} MB/s on the wire (incl. writing and the entry's SHA-256)",
        format_size(full.fetched_bytes),
        format_size(full.logical_bytes),
        secs,
        mbps(full.logical_bytes, secs),
        mbps(full.fetched_bytes, secs)
    );
    let started = Instant::now();
    let pulled = host_c
        .remote
        .pull(
            &host_c.remote.manifest(&key_b).unwrap(),
            &ChunkCache::open(fresh.path().join("c2"), 64 << 30).unwrap(),
            &fresh.path().join("raw"),
        )
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "raw pull of B (chunks only): {:.2} s = {:.0} MB/s logical",
        secs,
        mbps(pulled.logical_bytes, secs)
    );

    // A host that restored A before restores B: only the changed chunks travel.
    let warm = tempfile::tempdir().unwrap();
    let host_d = host(&url, &s3, &warm.path().join("chunks"));
    let local_d = Store::open(warm.path().join("store")).unwrap();
    host_d.materialize(&key_a, &local_d).unwrap();
    let next = host_d.materialize(&key_b, &local_d).unwrap();
    println!(
        "consume B on a host that has A cached: fetched {} of {} stored ({} of {} chunks)",
        format_size(next.fetched_bytes),
        format_size(rb.stored_bytes),
        next.fetched,
        next.chunks
    );

    // Lazy: a restore touching 10% of the pages (in 64-page runs), from an empty cache.
    let lazy_dir = tempfile::tempdir().unwrap();
    let lazy_cache = ChunkCache::open(lazy_dir.path(), 64 << 30).unwrap();
    let manifest = host_a.remote.manifest(&key_b).unwrap();
    let file = host_a
        .remote
        .lazy_file(&manifest, "mem", &lazy_cache)
        .unwrap();
    let mut rng = Rng(5);
    let pages = file.size() / PAGE as u64;
    let started = Instant::now();
    let mut touched = 0u64;
    while touched < pages / 10 {
        let start = rng.next() % (pages - 64);
        for page in start..start + 64 {
            file.read_at(page * PAGE as u64, PAGE as u64).unwrap();
        }
        touched += 64;
    }
    let stats = file.stats();
    println!(
        "lazy restore touching 10% of pages: fetched {} of {} stored ({} chunks) in {:.2} s",
        format_size(stats.fetched_bytes),
        format_size(rb.stored_bytes),
        stats.fetched,
        started.elapsed().as_secs_f64()
    );
}
