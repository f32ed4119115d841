//! Retention, removal and cleanup.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on setup failures by design

mod support;

use std::fs;
use std::time::Duration;

use bazel_diff_store::{GcPolicy, GcReason, GcReport, Removed, Store, METADATA_FILE};
use support::*;

/// Keys in a report list, as (fingerprint number, sha number) for readable assertions.
fn ids(list: &[bazel_diff_store::GcEntry]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = list
        .iter()
        .map(|e| {
            let n = |s: &str, base: u64| (u64::from_str_radix(s, 16).unwrap() - base) as u32;
            (
                n(&e.key.fingerprint()[48..], 0xf00d_0000),
                n(&e.key.base_sha()[24..], 0xc0de_0000),
            )
        })
        .collect();
    out.sort();
    out
}

/// Two fingerprints; fingerprint 1 has entries created at 0, 10, 20, 30 (s), fingerprint 2
/// one at 15. Each entry holds a 100 KiB file.
fn populated() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for (n, created) in [(1, 0), (2, 10), (3, 20), (4, 30)] {
        publish_sized(&store, &key(1, n), 100 << 10, at(created));
    }
    publish_sized(&store, &key(2, 1), 100 << 10, at(15));
    (dir, store)
}

fn remaining(store: &Store) -> Vec<(u32, u32)> {
    let report = store
        .gc(
            &GcPolicy {
                dry_run: true,
                ..GcPolicy::default()
            },
            at(0),
        )
        .unwrap();
    ids(&report.kept)
}

#[test]
fn default_policy_removes_no_entry() {
    let (_dir, store) = populated();
    let report = store.gc(&GcPolicy::default(), at(1_000_000)).unwrap();
    assert!(report.removed.is_empty());
    assert_eq!(report.kept.len(), 5);
    assert_eq!(store.entries().unwrap().len(), 5);
}

#[test]
fn keep_per_fingerprint_keeps_the_newest() {
    let (_dir, store) = populated();
    let policy = GcPolicy {
        keep_per_fingerprint: Some(2),
        ..GcPolicy::default()
    };
    let report = store.gc(&policy, at(100)).unwrap();
    assert_eq!(ids(&report.removed), vec![(1, 1), (1, 2)]);
    assert!(report
        .removed
        .iter()
        .all(|e| e.reasons == vec![GcReason::KeepPerFingerprint]));
    assert_eq!(remaining(&store), vec![(1, 3), (1, 4), (2, 1)]);
    assert!(report.bytes_freed >= 2 * (100 << 10));
    // Removed entries are gone from disk, trash is empty, their lock files too.
    assert!(!store.entry_path(&key(1, 1)).exists());
    assert!(names(&store.root().join(".trash")).is_empty());
    assert!(!names(&store.root().join(".locks"))
        .iter()
        .any(|n| n.contains(&sha(1)[24..]) && n.contains(&fp(1)[48..])));
}

#[test]
fn max_age_removes_old_entries() {
    let (_dir, store) = populated();
    let policy = GcPolicy {
        max_age: Some(Duration::from_secs(16)),
        ..GcPolicy::default()
    };
    // At t=30: ages are 30, 20, 10, 0 and 15 (fingerprint 2).
    let report = store.gc(&policy, at(30)).unwrap();
    assert_eq!(ids(&report.removed), vec![(1, 1), (1, 2)]);
    assert!(report
        .removed
        .iter()
        .all(|e| e.reasons == vec![GcReason::MaxAge]));
    assert_eq!(remaining(&store), vec![(1, 3), (1, 4), (2, 1)]);
}

#[test]
fn max_bytes_removes_oldest_first_across_fingerprints() {
    let (_dir, store) = populated();
    let sizes: Vec<u64> = store
        .entries()
        .unwrap()
        .iter()
        .map(|e| e.disk_bytes)
        .collect();
    let each = sizes[0];
    assert!(sizes.iter().all(|&s| s == each), "{sizes:?}");
    // Budget for two and a half entries: the three oldest go (created 0, 10, 15).
    let policy = GcPolicy {
        max_bytes: Some(each * 5 / 2),
        ..GcPolicy::default()
    };
    let report = store.gc(&policy, at(100)).unwrap();
    assert_eq!(ids(&report.removed), vec![(1, 1), (1, 2), (2, 1)]);
    assert!(report
        .removed
        .iter()
        .all(|e| e.reasons == vec![GcReason::MaxBytes]));
    assert_eq!(report.bytes_remaining, 2 * each);
    assert!(!report.over_budget);
    assert_eq!(remaining(&store), vec![(1, 3), (1, 4)]);
}

#[test]
fn rules_combine_and_budget_counts_what_is_left() {
    let (_dir, store) = populated();
    let each = store.entries().unwrap()[0].disk_bytes;
    let policy = GcPolicy {
        keep_per_fingerprint: Some(3),
        max_bytes: Some(3 * each),
        ..GcPolicy::default()
    };
    let report = store.gc(&policy, at(100)).unwrap();
    // keep=3 drops (1,1); the budget then drops the oldest remaining, (1,2).
    let reasons: Vec<_> = report.removed.iter().map(|e| e.reasons.clone()).collect();
    assert_eq!(ids(&report.removed), vec![(1, 1), (1, 2)]);
    assert!(reasons.contains(&vec![GcReason::KeepPerFingerprint]));
    assert!(reasons.contains(&vec![GcReason::MaxBytes]));
    assert_eq!(remaining(&store), vec![(1, 3), (1, 4), (2, 1)]);
}

#[test]
fn entries_in_use_are_skipped_and_remove_reports_in_use() {
    let (_dir, store) = populated();
    let oldest = key(1, 1);
    let reader = store.open_entry(&oldest).unwrap();

    assert_eq!(store.remove(&oldest).unwrap(), Removed::InUse);
    assert!(store.entry_path(&oldest).join(METADATA_FILE).exists());

    let each = reader.metadata().total_bytes;
    let policy = GcPolicy {
        max_age: Some(Duration::from_secs(25)),
        max_bytes: Some(1),
        ..GcPolicy::default()
    };
    let report = store.gc(&policy, at(30)).unwrap();
    assert_eq!(ids(&report.skipped_in_use), vec![(1, 1)]);
    assert_eq!(report.skipped_in_use[0].reasons, vec![GcReason::MaxAge]);
    // Everything else went for the budget; the held entry keeps it exceeded.
    assert_eq!(ids(&report.removed), vec![(1, 2), (1, 3), (1, 4), (2, 1)]);
    assert!(report.over_budget);
    assert!(report.bytes_remaining >= each);
    assert_eq!(
        reader.verify().unwrap(),
        vec![],
        "the reader's entry is intact"
    );

    drop(reader);
    assert!(matches!(store.remove(&oldest).unwrap(), Removed::Removed { bytes } if bytes > 0));
    assert_eq!(store.remove(&oldest).unwrap(), Removed::NotFound);
    assert!(store.entries().unwrap().is_empty());
    // Empty fingerprint directories go too.
    let report = store.gc(&GcPolicy::default(), at(30)).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(store.fingerprints().unwrap().is_empty());
}

#[test]
fn dry_run_reports_without_removing() {
    let (_dir, store) = populated();
    let reader = store.open_entry(&key(1, 2)).unwrap();
    let policy = GcPolicy {
        keep_per_fingerprint: Some(1),
        dry_run: true,
        ..GcPolicy::default()
    };
    let report = store.gc(&policy, at(100)).unwrap();
    assert!(report.dry_run);
    assert_eq!(ids(&report.removed), vec![(1, 1), (1, 3)]);
    assert_eq!(ids(&report.skipped_in_use), vec![(1, 2)]);
    assert_eq!(ids(&report.kept), vec![(1, 4), (2, 1)]);
    assert!(report.bytes_freed > 0);
    drop(reader);
    assert_eq!(store.entries().unwrap().len(), 5);
}

#[test]
fn corrupt_entries_are_removed_only_when_asked() {
    let (_dir, store) = populated();
    let broken = key(1, 9);
    fs::create_dir_all(store.entry_path(&broken)).unwrap();
    fs::write(store.entry_path(&broken).join("vmstate"), "half").unwrap();

    // Not counted by keep-per-fingerprint, never removed by it.
    let policy = GcPolicy {
        keep_per_fingerprint: Some(4),
        max_age: Some(Duration::from_secs(1)),
        ..GcPolicy::default()
    };
    let report = store
        .gc(
            &GcPolicy {
                dry_run: true,
                ..policy.clone()
            },
            at(1_000_000),
        )
        .unwrap();
    assert!(report.kept.iter().any(|e| e.corrupt && e.key == broken));
    assert!(!report.removed.iter().any(|e| e.corrupt));

    let policy = GcPolicy {
        remove_corrupt: true,
        ..GcPolicy::default()
    };
    let report = store.gc(&policy, at(100)).unwrap();
    assert_eq!(ids(&report.removed), vec![(1, 9)]);
    assert_eq!(report.removed[0].reasons, vec![GcReason::Corrupt]);
    assert!(report.removed[0].corrupt);
    assert_eq!(store.entries().unwrap().len(), 5);
    assert!(store.entries().unwrap().iter().all(|e| !e.is_corrupt()));
}

#[test]
fn stale_staging_and_trash_are_cleaned_live_staging_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let live = store.begin(&key(1, 1)).unwrap();
    write(live.path(), "vm/mem_file", b"in progress");

    // Leftovers of a crashed recorder (its record lock is free) and of a deleter that
    // died (pid 0 parses but is never alive), plus junk names.
    let staging = store.root().join(".staging");
    let crashed = staging.join(format!("{}-{}.{}.abc", fp(2), sha(2), std::process::id()));
    write(&crashed, "vm/mem_file", b"half");
    let junk = staging.join("junk");
    fs::create_dir(&junk).unwrap();
    let trash = store
        .root()
        .join(".trash")
        .join(format!("{}-{}.0.xyz", fp(3), sha(3)));
    write(&trash, "vmstate", b"old");
    writable(&trash); // (a real trashed entry has 0755 on top; contents may be 0555)

    let report = store.gc(&GcPolicy::default(), at(0)).unwrap();
    let cleaned: Vec<_> = report
        .stale_staging
        .iter()
        .map(|p| p.path.clone())
        .collect();
    assert_eq!(cleaned, vec![crashed.clone()]);
    assert_eq!(
        report
            .stale_trash
            .iter()
            .map(|p| p.path.clone())
            .collect::<Vec<_>>(),
        vec![trash.clone()]
    );
    assert!(
        live.path().exists(),
        "a live recorder's staging directory is kept"
    );
    assert!(junk.exists(), "unattributable names are kept for an hour");
    assert!(!crashed.exists() && !trash.exists());

    // An hour later, the junk goes too.
    let later = std::time::SystemTime::now() + Duration::from_secs(3601);
    let report = store.gc(&GcPolicy::default(), later).unwrap();
    assert_eq!(report.stale_staging.len(), 1);
    assert!(!junk.exists());
    assert!(live.path().exists());
    write(live.path(), "base_hashes.json", b"{}");
    assert!(live.publish(input()).unwrap().is_created());
}

#[test]
fn gc_removes_unused_lock_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    publish_sized(&store, &key(1, 1), 10, at(0));
    drop(store.begin(&key(1, 2)).unwrap()); // a record that was abandoned
    let locks = store.root().join(".locks");
    assert_eq!(names(&locks).len(), 3);
    let held = store.begin(&key(1, 3)).unwrap();

    let report = store.gc(&GcPolicy::default(), at(0)).unwrap();
    // Kept: the entry lock of the existing entry and the held record lock.
    let left = names(&locks);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left
        .iter()
        .any(|n| n.contains(&sha(1)) && n.ends_with(".lock") && !n.ends_with(".record.lock")));
    assert!(left
        .iter()
        .any(|n| n.contains(&sha(3)) && n.ends_with(".record.lock")));
    assert_eq!(report.lock_files_removed, 2, "record locks of keys 1 and 2");
    drop(held);
}

#[test]
fn report_serializes_to_json() {
    let (_dir, store) = populated();
    let policy = GcPolicy {
        keep_per_fingerprint: Some(3),
        ..GcPolicy::default()
    };
    let report: GcReport = store.gc(&policy, at(100)).unwrap();
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["dry_run"], false);
    assert_eq!(json["removed"][0]["fingerprint"], fp(1));
    assert_eq!(json["removed"][0]["base_sha"], sha(1));
    assert_eq!(json["removed"][0]["reasons"][0], "keep_per_fingerprint");
    assert_eq!(json["kept"].as_array().unwrap().len(), 4);
    assert!(json["kept"][0].get("reasons").is_none());
    for field in ["skipped_in_use", "stale_staging", "stale_trash", "errors"] {
        assert!(json[field].is_array(), "{field}");
    }
    for field in ["bytes_freed", "bytes_remaining", "lock_files_removed"] {
        assert!(json[field].is_u64(), "{field}");
    }
}
