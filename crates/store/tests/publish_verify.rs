//! Publication, listing, reading and verification on a real filesystem.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on setup failures by design

mod support;

use std::fs;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use bazel_diff_store::{
    EntryKey, KeyPart, MetadataInput, Problem, Published, Store, StoreError, VerifyStatus,
    DIR_MODE, FILE_MODE, FORMAT_VERSION, METADATA_FILE,
};
use support::*;

const BASE_HASHES: &[u8] = br#"{"//:a":"1234"}"#;
const MEM: &[u8] = b"pretend this is guest memory";

fn sample_entry(store: &Store) -> EntryKey {
    let key = key(1, 1);
    let published = publish_files(
        store,
        &key,
        &[
            ("base_hashes.json", BASE_HASHES),
            ("vm/mem_file", MEM),
            ("vm/empty", b""),
        ],
        at(0),
    );
    assert!(published.is_created());
    key
}

#[test]
fn published_entry_is_listed_with_correct_digests() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let key = key(1, 1);
    let staging = store.begin(&key).unwrap();
    assert!(staging.path().starts_with(store.root().join(".staging")));
    write(staging.path(), "base_hashes.json", BASE_HASHES);
    write(staging.path(), "vm/mem_file", MEM);
    write(staging.path(), "vm/empty", b"");
    let input = MetadataInput::new("bazel-diff-snap 0.1.0", "firecracker")
        .with_extra("timings", serde_json::json!({"warmup_ms": 1234}))
        .with_created(at(0));
    let published = staging.publish(input).unwrap();

    let entry = store.entry_path(&key);
    assert_eq!(published.path(), entry);
    assert_eq!(store.fingerprints().unwrap(), vec![fp(1)]);
    let entries = store.entries().unwrap();
    assert_eq!(entries.len(), 1);
    let info = &entries[0];
    assert_eq!(info.key, key);
    assert_eq!(info.path, entry);
    assert!(info.disk_bytes > 0);
    let meta = info.metadata().expect("not corrupt");
    assert_eq!(meta.format_version, FORMAT_VERSION);
    assert_eq!(meta.tool_version, "bazel-diff-snap 0.1.0");
    assert_eq!(meta.driver, "firecracker");
    assert_eq!(
        (meta.fingerprint.as_str(), meta.base_sha.as_str()),
        (key.fingerprint(), key.base_sha())
    );
    assert_eq!(meta.created_unix, 1_700_000_000);
    assert_eq!(meta.created_at, "2023-11-14T22:13:20Z");
    assert_eq!(meta.extra["timings"]["warmup_ms"], 1234);
    let listed: Vec<(&str, u64, &str)> = meta
        .files
        .iter()
        .map(|(p, r)| (p.as_str(), r.size, r.sha256.as_str()))
        .collect();
    let (h_base, h_mem, h_empty) = (sha256_hex(BASE_HASHES), sha256_hex(MEM), sha256_hex(b""));
    assert_eq!(
        listed,
        vec![
            (
                "base_hashes.json",
                BASE_HASHES.len() as u64,
                h_base.as_str()
            ),
            ("vm/empty", 0, h_empty.as_str()),
            ("vm/mem_file", MEM.len() as u64, h_mem.as_str()),
        ]
    );
    assert_eq!(meta.total_bytes, (BASE_HASHES.len() + MEM.len()) as u64);

    // metadata.json on disk is exactly what the listing parsed.
    let on_disk: serde_json::Value =
        serde_json::from_slice(&fs::read(entry.join(METADATA_FILE)).unwrap()).unwrap();
    assert_eq!(on_disk, serde_json::to_value(meta).unwrap());

    // Frozen: files 0444, directories 0555, nothing left in staging.
    for file in ["base_hashes.json", "vm/mem_file", "vm/empty", METADATA_FILE] {
        assert_eq!(mode(&entry.join(file)), FILE_MODE, "{file}");
    }
    assert_eq!(mode(&entry), DIR_MODE);
    assert_eq!(mode(&entry.join("vm")), DIR_MODE);
    assert!(staging_names(&store).is_empty());

    let reader = store.open_entry(&key).unwrap();
    assert_eq!(reader.metadata(), meta);
    assert_eq!(reader.file("vm/mem_file"), Some(entry.join("vm/mem_file")));
    assert_eq!(reader.file("nope"), None);
    assert_eq!(reader.verify().unwrap(), vec![]);
    assert_eq!(reader.verify_quick().unwrap(), vec![]);
    drop(reader);
    let all = store.verify_all().unwrap();
    assert_eq!(all.len(), 1);
    assert!(all[0].is_ok(), "{all:?}");
}

/// Tampers with a published entry and returns what `verify` and `verify_quick` report.
fn tamper(change: impl FnOnce(&std::path::Path)) -> (Vec<Problem>, Vec<Problem>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let key = sample_entry(&store);
    change(&store.entry_path(&key));
    let reader = store.open_entry(&key).unwrap();
    (reader.verify().unwrap(), reader.verify_quick().unwrap())
}

#[test]
fn verify_reports_a_flipped_byte() {
    let (full, quick) = tamper(|entry| {
        let path = entry.join("vm/mem_file");
        writable(&path);
        let mut bytes = fs::read(&path).unwrap();
        bytes[3] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
    });
    let mut flipped = MEM.to_vec();
    flipped[3] ^= 0x01;
    assert_eq!(
        full,
        vec![Problem::DigestMismatch {
            path: "vm/mem_file".into(),
            expected: sha256_hex(MEM),
            actual: sha256_hex(&flipped),
        }]
    );
    assert_eq!(quick, vec![], "the quick check looks at sizes only");
}

#[test]
fn verify_reports_a_truncated_file() {
    let (full, quick) = tamper(|entry| {
        let path = entry.join("base_hashes.json");
        writable(&path);
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4)
            .unwrap();
    });
    let expected = vec![Problem::SizeMismatch {
        path: "base_hashes.json".into(),
        expected: BASE_HASHES.len() as u64,
        actual: 4,
    }];
    assert_eq!(full, expected);
    assert_eq!(quick, expected);
}

#[test]
fn verify_reports_a_deleted_file() {
    let (full, quick) = tamper(|entry| {
        writable(&entry.join("vm"));
        fs::remove_file(entry.join("vm/mem_file")).unwrap();
    });
    let expected = vec![Problem::Missing {
        path: "vm/mem_file".into(),
    }];
    assert_eq!(full, expected);
    assert_eq!(quick, expected);
}

#[test]
fn verify_reports_an_added_file_and_a_swapped_type() {
    let (full, quick) = tamper(|entry| {
        writable(entry);
        writable(&entry.join("vm"));
        fs::write(entry.join("vm/rootfs.overlay"), "new").unwrap();
        fs::remove_file(entry.join("vm/empty")).unwrap();
        fs::create_dir(entry.join("vm/empty")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", entry.join("escape")).unwrap();
    });
    assert_eq!(
        full,
        vec![
            Problem::Unexpected {
                path: "escape".into()
            },
            Problem::NotAFile {
                path: "vm/empty".into(),
                kind: "directory"
            },
            Problem::Unexpected {
                path: "vm/rootfs.overlay".into()
            },
        ]
    );
    assert_eq!(
        quick,
        vec![Problem::NotAFile {
            path: "vm/empty".into(),
            kind: "directory"
        }]
    );
    // Problems render for humans.
    assert_eq!(
        full[2].to_string(),
        "vm/rootfs.overlay: not listed in metadata.json"
    );
}

#[test]
fn verify_all_reports_problems_per_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let broken = sample_entry(&store);
    publish_sized(&store, &key(1, 2), 10, at(5));
    let path = store.entry_path(&broken).join("base_hashes.json");
    writable(&path);
    fs::write(&path, "{}").unwrap();
    let reports = store.verify_all().unwrap();
    assert_eq!(reports.len(), 2);
    let bad = reports.iter().find(|r| r.key == broken).unwrap();
    assert!(
        matches!(&bad.status, VerifyStatus::Problems { problems } if problems.len() == 1),
        "{bad:?}"
    );
    assert!(reports.iter().find(|r| r.key != broken).unwrap().is_ok());
    // Newest first within a fingerprint: the broken entry (older) comes second.
    let json = serde_json::to_value(&reports).unwrap();
    assert_eq!(json[0]["status"], "ok", "{json}");
    assert_eq!(json[1]["status"], "problems", "{json}");
    assert_eq!(json[1]["problems"][0]["problem"], "size_mismatch");
}

#[test]
fn corrupt_entries_are_listed_with_a_reason_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let good = sample_entry(&store);

    // An entry directory with no metadata (e.g. copied in by hand, or an upstream store).
    let no_meta = key(1, 7);
    fs::create_dir_all(store.entry_path(&no_meta)).unwrap();
    fs::write(store.entry_path(&no_meta).join("base_hashes.json"), "{}").unwrap();
    // Unparsable metadata.
    let garbage = key(1, 8);
    fs::create_dir_all(store.entry_path(&garbage)).unwrap();
    fs::write(store.entry_path(&garbage).join(METADATA_FILE), "{not json").unwrap();
    // A valid entry moved under another key: its metadata names the old key.
    let moved = key(2, 1);
    fs::create_dir_all(store.entry_path(&moved).parent().unwrap()).unwrap();
    copy_tree(&store.entry_path(&good), &store.entry_path(&moved));
    // Stray names are ignored, internal directories never listed.
    fs::create_dir_all(dir.path().join("not-a-fingerprint")).unwrap();
    fs::create_dir_all(store.entry_path(&good).parent().unwrap().join("HEAD")).unwrap();

    assert_eq!(store.fingerprints().unwrap(), vec![fp(1), fp(2)]);
    let entries = store.entries().unwrap();
    let reason = |k: &EntryKey| {
        entries
            .iter()
            .find(|e| &e.key == k)
            .map(|e| e.corruption().map(str::to_owned))
            .expect("listed")
    };
    assert_eq!(entries.len(), 4);
    assert_eq!(reason(&good), None);
    assert!(reason(&no_meta)
        .unwrap()
        .contains("metadata.json is missing"));
    assert!(reason(&garbage).unwrap().contains("not valid"));
    assert!(reason(&moved).unwrap().contains("not the entry's key"));
    assert_eq!(store.entries_for(&fp(2)).unwrap().len(), 1);

    match store.open_entry(&garbage) {
        Err(StoreError::Corrupt { key, reason, .. }) => {
            assert_eq!(key, garbage);
            assert!(reason.contains("not valid"));
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let reports = store.verify_all().unwrap();
    assert_eq!(
        reports
            .iter()
            .filter(|r| matches!(r.status, VerifyStatus::Corrupt { .. }))
            .count(),
        3
    );
    let json = serde_json::to_value(&entries).unwrap();
    assert!(json
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["status"] == "corrupt" && e["reason"].is_string()));
    assert!(json
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["status"] == "ok" && e["metadata"]["driver"] == "local"));
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    fs::create_dir(to).unwrap();
    for child in fs::read_dir(from).unwrap() {
        let child = child.unwrap();
        if child.file_type().unwrap().is_dir() {
            copy_tree(&child.path(), &to.join(child.file_name()));
        } else {
            fs::copy(child.path(), to.join(child.file_name())).unwrap();
        }
    }
}

#[test]
fn open_entry_of_a_missing_key_is_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(matches!(
        store.open_entry(&key(1, 1)),
        Err(StoreError::NotFound { .. })
    ));
    assert!(!store.contains(&key(1, 1)).unwrap());
}

#[test]
fn dropped_staging_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let staging = store.begin(&key(1, 1)).unwrap();
    write(staging.path(), "vm/mem_file", MEM);
    let path = staging.path().to_owned();
    assert!(path.exists());
    drop(staging);
    assert!(!path.exists());
    assert!(store.entries().unwrap().is_empty());
    assert!(store.fingerprints().unwrap().is_empty());
    // The key is free again.
    let again = store
        .with_lock_timeout(Some(Duration::from_secs(5)))
        .begin(&key(1, 1))
        .unwrap();
    drop(again);
}

#[test]
fn publication_refuses_what_an_entry_must_not_hold() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();

    let staging = store.begin(&key(1, 1)).unwrap();
    write(staging.path(), "rootfs", b"disk");
    std::os::unix::fs::symlink("/etc/passwd", staging.path().join("link")).unwrap();
    let err = staging.publish(input()).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::UnsupportedFileType {
                kind: "symlink",
                ..
            }
        ),
        "{err}"
    );

    let staging = store.begin(&key(1, 1)).unwrap();
    write(staging.path(), METADATA_FILE, b"{}");
    let err = staging.publish(input()).unwrap_err();
    assert!(matches!(err, StoreError::ReservedName { .. }), "{err}");
    // Only the top-level name is reserved.
    let staging = store.begin(&key(1, 1)).unwrap();
    write(staging.path(), "guest/metadata.json", b"{}");
    assert!(staging.publish(input()).unwrap().is_created());

    let staging = store.begin(&key(1, 2)).unwrap();
    let err = staging.publish(MetadataInput::new("v", "")).unwrap_err();
    assert!(matches!(err, StoreError::InvalidMetadata { .. }), "{err}");

    // Failed publications leave no entry and no staging directory.
    assert_eq!(store.entries().unwrap().len(), 1);
    assert!(staging_names(&store).is_empty());
}

#[test]
fn publishing_an_existing_key_never_touches_the_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let key = sample_entry(&store);
    let before = fs::read(store.entry_path(&key).join(METADATA_FILE)).unwrap();

    let staging = store.begin(&key).unwrap();
    assert!(staging.entry_exists().unwrap());
    write(staging.path(), "base_hashes.json", b"different");
    let published = staging.publish(input()).unwrap();
    assert!(
        matches!(published, Published::AlreadyExisted { ref path } if *path == store.entry_path(&key))
    );
    assert_eq!(
        fs::read(store.entry_path(&key).join(METADATA_FILE)).unwrap(),
        before
    );
    assert_eq!(
        fs::read(store.entry_path(&key).join("base_hashes.json")).unwrap(),
        BASE_HASHES
    );
    assert!(staging_names(&store).is_empty());
}

#[test]
fn concurrent_publishers_of_one_key_have_exactly_one_winner() {
    const WRITERS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let barrier = Arc::new(Barrier::new(WRITERS));
    let handles: Vec<_> = (0..WRITERS)
        .map(|id| {
            let (store, barrier) = (store.clone(), Arc::clone(&barrier));
            thread::spawn(move || {
                barrier.wait();
                let staging = store.begin(&key(1, 1)).unwrap();
                let content = format!("writer {id}\n").repeat(1000);
                write(staging.path(), "base_hashes.json", content.as_bytes());
                write(staging.path(), "vm/mem_file", &vec![id as u8; 64 << 10]);
                let published = staging.publish(input().with_extra("writer", id)).unwrap();
                (id, published.is_created())
            })
        })
        .collect();
    let results: Vec<(usize, bool)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let winners: Vec<usize> = results.iter().filter(|r| r.1).map(|r| r.0).collect();
    assert_eq!(winners.len(), 1, "{results:?}");

    let reader = store.open_entry(&key(1, 1)).unwrap();
    assert_eq!(reader.metadata().extra["writer"], winners[0]);
    assert_eq!(reader.verify().unwrap(), vec![]);
    let content = fs::read_to_string(reader.path().join("base_hashes.json")).unwrap();
    assert_eq!(content, format!("writer {}\n", winners[0]).repeat(1000));
    assert!(staging_names(&store).is_empty());
}

#[test]
fn readers_are_not_blocked_by_a_recorder_of_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path())
        .unwrap()
        .with_lock_timeout(Some(Duration::from_secs(2)));
    let key = sample_entry(&store);
    let recording = store.begin(&key).unwrap();
    let start = Instant::now();
    let reader = store.open_entry(&key).unwrap();
    assert!(start.elapsed() < Duration::from_secs(1));
    // And a publication that finds the entry while it is being read does not wait either.
    write(recording.path(), "base_hashes.json", b"{}");
    assert!(!recording.publish(input()).unwrap().is_created());
    drop(reader);
}

#[test]
fn a_second_recorder_waits_for_the_first_and_can_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path())
        .unwrap()
        .with_lock_timeout(Some(Duration::from_millis(100)));
    let first = store.begin(&key(1, 1)).unwrap();
    let start = Instant::now();
    let err = store.begin(&key(1, 1)).unwrap_err();
    assert!(start.elapsed() >= Duration::from_millis(100));
    assert!(
        matches!(
            err,
            StoreError::LockTimeout {
                mode: "exclusive",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(".record.lock"), "{err}");
    // Other keys are independent.
    drop(store.begin(&key(1, 2)).unwrap());
    drop(first);
    drop(store.begin(&key(1, 1)).unwrap());
}

#[test]
fn invalid_keys_are_rejected() {
    let good_fp = fp(1);
    let good_sha = sha(1);
    for bad in [
        "../x",
        "..",
        "abc1234",
        &good_sha.to_uppercase(),
        &format!("{}g", &good_sha[1..]),
        "",
    ] {
        let err = EntryKey::new(&good_fp, bad).unwrap_err();
        assert_eq!(err.part, KeyPart::BaseSha, "{bad:?}");
    }
    for bad in [
        "../x",
        &good_sha,
        &good_fp.to_uppercase(),
        &format!("{}/", &good_fp[1..]),
    ] {
        assert_eq!(
            EntryKey::new(bad, &good_sha).unwrap_err().part,
            KeyPart::Fingerprint,
            "{bad:?}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert!(matches!(
        store.entries_for("../.."),
        Err(StoreError::InvalidKey(_))
    ));
}

#[test]
fn open_creates_the_internal_directories_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("a/b/store");
    let store = Store::open(&root).unwrap();
    assert_eq!(store.root(), fs::canonicalize(&root).unwrap());
    assert_eq!(names(&root), vec![".locks", ".staging", ".trash"]);
    Store::open(&root).unwrap();
    assert!(store.fingerprints().unwrap().is_empty());
}
