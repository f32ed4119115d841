//! The shared store against a real S3-compatible server (moto, a separate process on a
//! loopback port): record on one host, consume on another, gc racing a record, chunks
//! deleted or corrupted behind the tool's back, and a server that dies mid-upload.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bazel_diff_remote::{ChunkCache, Manifest, Remote, RemoteError, RemoteGcPolicy, SharedStore};
use bazel_diff_store::{EntryKey, MetadataInput, Requirement, Store};
use bazel_diff_testkit::{require_moto, S3Server};

const FP: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const BUCKET: &str = "snaps";
const MEM: usize = 64 << 20;

fn sha(n: u8) -> String {
    format!("{n:02x}").repeat(20)
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The files of an entry at "commit" `n`: JSON that grows by one line per commit (an
/// insertion in the middle), and a 64 MiB memory image, mostly zero pages, where each
/// commit rewrites a few hundred pages.
fn entry_files(n: u8) -> Vec<(&'static str, Vec<u8>)> {
    let mut json = String::from("{\n");
    for i in 0..20_000u32 {
        json.push_str(&format!(
            "  \"//pkg{i}:target\": \"{:016x}\",\n",
            u64::from(i) * 7919
        ));
        if i == 10_000 {
            for extra in 0..n {
                json.push_str(&format!("  \"//new{extra}:target\": \"x\",\n"));
            }
        }
    }
    json.push_str("}\n");
    let mut mem = vec![0u8; MEM];
    // A fixed "heap" of random pages, then per-commit churn in clustered runs.
    mem[..4 << 20].copy_from_slice(&noise(4 << 20, 99));
    for run in 0..u64::from(n) * 8 {
        let page = (run * 1_234_567 % (MEM as u64 / 4096 - 16)) as usize;
        let at = page * 4096;
        mem[at..at + 16 * 4096].copy_from_slice(&noise(16 * 4096, run + 1000 * u64::from(n)));
    }
    vec![
        ("base_hashes.json", json.into_bytes()),
        ("graph_state.bin", noise(300_000, u64::from(n) + 5)),
        ("vm/mem", mem),
    ]
}

/// Records an entry into a host's local store.
fn record_locally(store: &Store, base: &str, files: &[(&str, Vec<u8>)]) -> EntryKey {
    let key = EntryKey::new(FP, base).unwrap();
    let staging = store.begin(&key).unwrap();
    for (rel, data) in files {
        let path = staging.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
    staging
        .publish(MetadataInput::new("test", "local"))
        .unwrap();
    key
}

/// One CI host: a local store and a chunk cache, talking to `endpoint`.
struct Host {
    _dir: tempfile::TempDir,
    store: Store,
    shared: SharedStore,
}

fn host(s3: &S3Server, endpoint: &str) -> Host {
    let dir = tempfile::tempdir().unwrap();
    let env = s3.env_for(endpoint);
    let config: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let remote = Remote::open_with(&format!("s3://{BUCKET}/team"), &config).unwrap();
    Host {
        store: Store::open(dir.path().join("store")).unwrap(),
        shared: SharedStore {
            remote,
            cache: ChunkCache::open(dir.path().join("chunks"), 1 << 30).unwrap(),
        },
        _dir: dir,
    }
}

fn server() -> Option<S3Server> {
    let s3 = require_moto()?;
    s3.bucket(BUCKET);
    Some(s3)
}

fn read_entry(store: &Store, key: &EntryKey, rel: &str) -> Vec<u8> {
    let entry = store.open_entry(key).unwrap();
    std::fs::read(entry.path().join(rel)).unwrap()
}

#[test]
fn record_on_one_host_consume_on_another() {
    let Some(s3) = server() else { return };
    let (a, b) = (host(&s3, &s3.endpoint()), host(&s3, &s3.endpoint()));
    let files0 = entry_files(0);
    let key0 = record_locally(&a.store, &sha(1), &files0);
    let first = a.shared.push(&a.store, &key0).unwrap().unwrap();
    assert!(
        a.shared.push(&a.store, &key0).unwrap().is_none(),
        "pushed once"
    );
    // 64 MiB, mostly zero pages: the image dedups within itself.
    assert!(first.stored_bytes < 8 << 20, "{first:?}");
    assert_eq!(first.uploaded_bytes, first.stored_bytes);

    // One commit later: most chunks are already there.
    let files1 = entry_files(1);
    let key1 = record_locally(&a.store, &sha(2), &files1);
    let second = a.shared.push(&a.store, &key1).unwrap().unwrap();
    let ratio = second.uploaded_bytes as f64 / second.stored_bytes as f64;
    assert!(
        ratio < 0.35,
        "the second entry uploaded {ratio:.2} of its size: {second:?}"
    );

    // Host B sees both, with A's metadata, and materializes them from an empty cache.
    let listed = b.shared.entries_for(FP, &b.store).unwrap();
    assert_eq!(listed.len(), 2);
    let meta_a = a.store.open_entry(&key1).unwrap().metadata().clone();
    assert_eq!(
        listed[0].metadata().unwrap(),
        &meta_a,
        "newest first, same metadata"
    );
    let got0 = b.shared.materialize(&key0, &b.store).unwrap();
    assert_eq!(got0.from_cache, 0);
    assert!(got0.fetched_bytes <= first.stored_bytes);
    for (rel, data) in &files0 {
        assert!(read_entry(&b.store, &key0, rel) == *data, "{rel} differs");
    }
    assert!(b
        .store
        .open_entry(&key0)
        .unwrap()
        .verify()
        .unwrap()
        .is_empty());
    // The next entry costs only what changed.
    let got1 = b.shared.materialize(&key1, &b.store).unwrap();
    assert!(got1.from_cache > 0, "{got1:?}");
    assert!(
        got1.fetched_bytes <= second.uploaded_bytes + (1 << 20),
        "{got1:?} vs {second:?}"
    );
    assert_eq!(b.store.open_entry(&key1).unwrap().metadata(), &meta_a);
    // Materialized already: nothing fetched.
    assert_eq!(b.shared.materialize(&key1, &b.store).unwrap().fetched, 0);
    // A damaged local copy is replaced (from the cache), never used.
    let damaged = b.store.entry_path(&key1).join("graph_state.bin");
    std::fs::set_permissions(
        &damaged,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    std::fs::write(&damaged, b"x").unwrap();
    let again = b.shared.materialize(&key1, &b.store).unwrap();
    assert_eq!(
        (again.fetched, again.from_cache),
        (0, again.chunks),
        "{again:?}"
    );
    assert!(b
        .store
        .open_entry(&key1)
        .unwrap()
        .verify()
        .unwrap()
        .is_empty());

    // Lazy range reads fetch only the chunks they touch (a fresh host C).
    let c = host(&s3, &s3.endpoint());
    let manifest = c.shared.remote.manifest(&key1).unwrap();
    let mem = c
        .shared
        .remote
        .lazy_file(&manifest, "vm/mem", &c.shared.cache)
        .unwrap();
    let (offset, len) = ((2 << 20) - 100, 4096 + 200);
    let bytes = mem.read_at(offset, len).unwrap();
    assert!(bytes == files1[2].1[offset as usize..(offset + len) as usize]);
    assert_eq!(mem.stats().fetched, 2, "a read across a chunk boundary");
    assert!(mem.read_at(MEM as u64 - 10, 11).is_err());
}

/// Chunks deleted or corrupted behind the tool's back, and a manifest naming a chunk that
/// was never uploaded: the entry is unusable, nothing is published locally.
#[test]
fn missing_or_corrupt_chunks_make_the_entry_unusable() {
    let Some(s3) = server() else { return };
    let a = host(&s3, &s3.endpoint());
    let files = entry_files(0);
    let key = record_locally(&a.store, &sha(1), &files);
    a.shared.push(&a.store, &key).unwrap();
    let manifest = a.shared.remote.manifest(&key).unwrap();
    let chunk_key = |digest: &str| format!("team/chunks/{}/{digest}", &digest[..2]);
    let json_chunk = manifest.files["base_hashes.json"].chunks[3].digest.clone();

    // Corrupted: valid zstd of other bytes, then garbage.
    let other = zstd_frame_of(b"not the chunk");
    for body in [other.as_slice(), b"garbage".as_slice()] {
        s3.put_object(BUCKET, &chunk_key(&json_chunk), body);
        let b = host(&s3, &s3.endpoint());
        let err = b.shared.materialize(&key, &b.store).unwrap_err();
        assert!(matches!(err, RemoteError::BadChunk { .. }), "{err}");
        assert!(err.is_corruption());
        assert!(!b.store.contains(&key).unwrap(), "nothing published");
    }
    // Deleted.
    s3.delete_object(BUCKET, &chunk_key(&json_chunk));
    let b = host(&s3, &s3.endpoint());
    let err = b.shared.materialize(&key, &b.store).unwrap_err();
    assert!(matches!(err, RemoteError::MissingChunk { .. }), "{err}");
    assert!(!b.store.contains(&key).unwrap());

    // A manifest naming a chunk nobody uploaded.
    let mut forged: Manifest = manifest.clone();
    forged.base_sha = sha(9);
    forged.metadata.base_sha = sha(9);
    forged.files.get_mut("graph_state.bin").unwrap().chunks[0].digest = "0".repeat(64);
    let forged_key = EntryKey::new(FP, &sha(9)).unwrap();
    s3.put_object(
        BUCKET,
        &format!("team/entries/{FP}/{}.json", sha(9)),
        &serde_json::to_vec(&forged).unwrap(),
    );
    let err = b.shared.materialize(&forged_key, &b.store).unwrap_err();
    assert!(matches!(err, RemoteError::MissingChunk { .. }), "{err}");
    // An unparsable manifest is listed as corrupt, not hidden.
    s3.put_object(BUCKET, &format!("team/entries/{FP}/{}.json", sha(8)), b"{");
    let listed = b.shared.entries_for(FP, &b.store).unwrap();
    assert_eq!(listed.iter().filter(|e| e.is_corrupt()).count(), 1);
    let err = b
        .shared
        .materialize(&EntryKey::new(FP, &sha(8)).unwrap(), &b.store)
        .unwrap_err();
    assert!(matches!(err, RemoteError::BadManifest { .. }), "{err}");
}

fn zstd_frame_of(data: &[u8]) -> Vec<u8> {
    // The chunk format is plain zstd; the test crate has no zstd dependency, so build a
    // raw (uncompressed) zstd frame by hand: magic, frame header, one raw last block.
    let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd];
    frame.push(0x20); // single segment, 1-byte content size
    frame.push(data.len() as u8);
    let block_header = ((data.len() as u32) << 3) | 1; // last block, raw
    frame.extend_from_slice(&block_header.to_le_bytes()[..3]);
    frame.extend_from_slice(data);
    frame
}

/// A TCP proxy in front of the server that dies (closes every connection and stops
/// listening) once `budget` request bytes went through: the server vanishing mid-upload,
/// as the client sees it, while the server keeps what it had received.
struct DyingProxy {
    port: u16,
    dead: Arc<AtomicBool>,
}

impl DyingProxy {
    fn start(target: u16, budget: u64) -> DyingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let dead = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let flag = dead.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                conns
                    .lock()
                    .unwrap()
                    .extend([client.try_clone().unwrap(), server.try_clone().unwrap()]);
                for (from, to, counted) in [
                    (
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        true,
                    ),
                    (server, client, false),
                ] {
                    let (flag, sent, conns) = (flag.clone(), sent.clone(), conns.clone());
                    std::thread::spawn(move || {
                        pump(from, to, counted, budget, &flag, &sent, &conns)
                    });
                }
            }
        });
        DyingProxy { port, dead }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    counted: bool,
    budget: u64,
    dead: &AtomicBool,
    sent: &AtomicU64,
    conns: &Mutex<Vec<TcpStream>>,
) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if counted && sent.fetch_add(n as u64, Ordering::SeqCst) + n as u64 > budget {
            dead.store(true, Ordering::SeqCst);
            for conn in conns.lock().unwrap().iter() {
                let _ = conn.shutdown(Shutdown::Both);
            }
            break;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[test]
fn a_server_dying_mid_upload_publishes_nothing_and_the_next_record_succeeds() {
    let Some(s3) = server() else { return };
    let proxy = DyingProxy::start(s3.port, 6 << 20);
    let a = host(&s3, &proxy.endpoint());
    // Incompressible: the upload is long enough to be cut in the middle.
    let files = vec![("graph_state.bin", noise(24 << 20, 3))];
    let key = record_locally(&a.store, &sha(1), &files);
    let err = a.shared.push(&a.store, &key).unwrap_err();
    assert!(proxy.dead.load(Ordering::SeqCst), "the proxy died: {err}");
    assert!(!err.is_corruption(), "{err}");

    // Nobody sees a manifest; some chunks made it.
    let direct = host(&s3, &s3.endpoint());
    assert!(direct.shared.remote.list(None).unwrap().is_empty());
    let dry = direct
        .shared
        .remote
        .gc(
            &RemoteGcPolicy {
                grace: Duration::ZERO,
                dry_run: true,
                ..RemoteGcPolicy::default()
            },
            SystemTime::now() + Duration::from_secs(2),
        )
        .unwrap();
    assert!(
        dry.chunks_total > 0 && dry.chunks_deleted == dry.chunks_total,
        "{dry:?}"
    );

    // The next record (the server is back) publishes the entry; host B uses it.
    let retry = SharedStore {
        remote: Remote::open_with(
            &format!("s3://{BUCKET}/team"),
            &s3.env()
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
        )
        .unwrap(),
        cache: a.shared.cache.clone(),
    };
    let report = retry.push(&a.store, &key).unwrap().unwrap();
    assert!(
        report.uploaded_chunks < report.distinct_chunks,
        "{report:?}"
    );
    let b = host(&s3, &s3.endpoint());
    b.shared.materialize(&key, &b.store).unwrap();
    assert!(read_entry(&b.store, &key, "graph_state.bin") == files[0].1);
}

#[test]
fn gc_keeps_referenced_and_young_chunks_while_a_record_runs() {
    let Some(s3) = server() else { return };
    let a = host(&s3, &s3.endpoint());
    let key0 = record_locally(&a.store, &sha(1), &entry_files(0));
    a.shared.push(&a.store, &key0).unwrap();
    let key1 = record_locally(&a.store, &sha(2), &entry_files(1));
    let key2 = record_locally(&a.store, &sha(3), &entry_files(2));

    // A record (of key1) and gc at once: gc keeps key0 (default policy) and every chunk
    // key1 uploads (younger than the grace period), before or after its manifest lands.
    let stop = Arc::new(AtomicBool::new(false));
    let gc_runs = std::thread::scope(|scope| {
        let gc = scope.spawn(|| {
            let gc_host = host(&s3, &s3.endpoint());
            let mut runs = 0;
            while !stop.load(Ordering::SeqCst) || runs == 0 {
                let report = gc_host
                    .shared
                    .remote
                    .gc(&RemoteGcPolicy::default(), SystemTime::now())
                    .unwrap();
                assert_eq!(report.chunks_deleted, 0, "{report:?}");
                runs += 1;
            }
            runs
        });
        a.shared.push(&a.store, &key1).unwrap();
        stop.store(true, Ordering::SeqCst);
        gc.join().unwrap()
    });
    assert!(gc_runs >= 1);
    a.shared.push(&a.store, &key2).unwrap();

    // Retention: keep the newest entry only. Within the grace period the trashed entries'
    // chunks stay (a consume may be reading them); after it they go, the kept entry's stay.
    let now = SystemTime::now();
    let policy = RemoteGcPolicy {
        keep_per_fingerprint: Some(1),
        ..RemoteGcPolicy::default()
    };
    let gc = a.shared.remote.gc(&policy, now).unwrap();
    assert_eq!(gc.removed.len(), 2, "{gc:?}");
    assert_eq!(gc.chunks_deleted, 0);
    let later = now + Duration::from_secs(48 * 3600);
    let swept = a
        .shared
        .remote
        .gc(&RemoteGcPolicy::default(), later)
        .unwrap();
    assert!(swept.chunks_deleted > 0, "{swept:?}");
    assert_eq!(swept.trash_purged, 2);
    let listed: Vec<String> = a
        .shared
        .remote
        .list(None)
        .unwrap()
        .iter()
        .map(|l| l.key.base_sha().to_owned())
        .collect();
    assert_eq!(listed, [sha(3)]);
    let b = host(&s3, &s3.endpoint());
    b.shared.materialize(&key2, &b.store).unwrap();
    assert!(b
        .store
        .open_entry(&key2)
        .unwrap()
        .verify()
        .unwrap()
        .is_empty());
    let keep: HashSet<String> = HashSet::new();
    assert!(b.shared.cache.evict(&keep).unwrap().chunks > 0);
}

/// Records a small entry created at `created` (Unix seconds), requiring `parent`'s `mem`.
fn record_requiring(store: &Store, n: u8, created: u64, parent: Option<&EntryKey>) -> EntryKey {
    let key = EntryKey::new(FP, &sha(n)).unwrap();
    let staging = store.begin(&key).unwrap();
    // Odd seeds: `noise` makes them odd anyway, so distinct odd seeds give distinct data.
    let seed = 2 * u64::from(n) + 1;
    std::fs::write(staging.path().join("base_hashes.json"), noise(50_000, seed)).unwrap();
    std::fs::write(staging.path().join("mem"), noise(100_000, 1000 + seed)).unwrap();
    let mut input = MetadataInput::new("test", "firecracker")
        .with_created(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + created));
    if let Some(parent) = parent {
        let mem = store.open_entry(parent).unwrap().metadata().files["mem"]
            .sha256
            .clone();
        input = input.with_requirement(Requirement::new(parent).with_file("mem", mem));
    }
    staging.publish(input).unwrap();
    key
}

/// A Diff chain on the shared store: pushing its tip pushes the parents first,
/// materializing the tip on another host brings them, gc keeps them while the tip is kept,
/// and a tip whose parent is gone is an unmet requirement with nothing published locally.
#[test]
fn required_entries_travel_with_their_dependent_and_gc_keeps_them() {
    let Some(s3) = server() else { return };
    let a = host(&s3, &s3.endpoint());
    let root = record_requiring(&a.store, 1, 100, None);
    let diff1 = record_requiring(&a.store, 2, 200, Some(&root));
    let full = record_requiring(&a.store, 4, 250, None);
    let diff2 = record_requiring(&a.store, 3, 300, Some(&diff1));
    let listed = |host: &Host| -> Vec<String> {
        host.shared
            .remote
            .list(None)
            .unwrap()
            .iter()
            .map(|l| l.key.base_sha().to_owned())
            .collect()
    };
    assert!(a.shared.push(&a.store, &diff2).unwrap().is_some());
    assert_eq!(listed(&a), [sha(1), sha(2), sha(3)]);
    a.shared.push(&a.store, &full).unwrap();

    // Host B materializes the tip from an empty cache: its chain comes along.
    let b = host(&s3, &s3.endpoint());
    let got = b.shared.materialize(&diff2, &b.store).unwrap();
    assert_eq!(got.from_cache, 0);
    assert!(got.logical_bytes >= 3 * 150_000, "{got:?}");
    let keys: Vec<EntryKey> = b
        .store
        .entries()
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(b.store.verify_all().unwrap().iter().all(|r| r.is_ok()));
    assert_eq!(
        b.store.open_entry(&diff2).unwrap().metadata(),
        a.store.open_entry(&diff2).unwrap().metadata(),
        "the same entry, requirements included"
    );

    // Keep one per fingerprint: the tip, hence its whole chain; the Full entry goes.
    let policy = RemoteGcPolicy {
        keep_per_fingerprint: Some(1),
        ..RemoteGcPolicy::default()
    };
    let report = a.shared.remote.gc(&policy, SystemTime::now()).unwrap();
    assert_eq!(report.removed, [full.to_string()], "{report:?}");
    assert_eq!(report.required, [root.to_string(), diff1.to_string()]);
    // After the grace period the removed entry's chunks go; the chain's stay usable.
    let later = SystemTime::now() + Duration::from_secs(48 * 3600);
    let swept = a.shared.remote.gc(&policy, later).unwrap();
    assert!(swept.chunks_deleted > 0, "{swept:?}");
    assert!(swept.removed.is_empty(), "{swept:?}");
    let c = host(&s3, &s3.endpoint());
    c.shared.materialize(&diff2, &c.store).unwrap();
    assert_eq!(c.store.entries().unwrap().len(), 3);

    // The root removed behind the chain's back: the tip is unusable, nothing is fetched.
    a.shared.remote.remove(&root).unwrap();
    let d = host(&s3, &s3.endpoint());
    let err = d.shared.materialize(&diff2, &d.store).unwrap_err();
    assert!(
        matches!(err, RemoteError::UnmetRequirement { .. }) && err.is_corruption(),
        "{err}"
    );
    assert!(err.to_string().contains(root.base_sha()), "{err}");
    assert!(d.store.entries().unwrap().is_empty());

    // A byte budget drops the chain whole (its head is the only entry left to drop).
    let report = a
        .shared
        .remote
        .gc(
            &RemoteGcPolicy {
                max_bytes: Some(1),
                ..RemoteGcPolicy::default()
            },
            SystemTime::now(),
        )
        .unwrap();
    assert_eq!(report.removed, [diff1.to_string(), diff2.to_string()]);
}
