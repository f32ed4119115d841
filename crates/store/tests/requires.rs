//! Entries that require others (Diff snapshot chains): gc keeps what kept entries need,
//! the byte budget drops whole chains, verify reports broken requirements.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on setup failures by design

mod support;

use std::time::{Duration, SystemTime};

use bazel_diff_store::{
    EntryKey, GcEntry, GcPolicy, GcReason, Problem, Requirement, Store, VerifyStatus,
};
use support::*;

/// Publishes a 100 KiB entry `(1, n)` created at `created`, requiring `parent`'s `mem`.
fn publish(store: &Store, n: u32, created: u64, parent: Option<u32>) -> EntryKey {
    let key = key(1, n);
    let staging = store.begin(&key).unwrap();
    write(staging.path(), "mem", &vec![n as u8; 100 << 10]);
    let mut input = input().with_created(at(created));
    if let Some(p) = parent {
        let parent_key = support::key(1, p);
        let mem = store.open_entry(&parent_key).unwrap().metadata().files["mem"]
            .sha256
            .clone();
        input = input.with_requirement(Requirement::new(&parent_key).with_file("mem", mem));
    }
    staging.publish(input).unwrap();
    key
}

fn shas(list: &[GcEntry]) -> Vec<u32> {
    let mut out: Vec<u32> = list
        .iter()
        .map(|e| (u64::from_str_radix(&e.key.base_sha()[24..], 16).unwrap() - 0xc0de_0000) as u32)
        .collect();
    out.sort();
    out
}

/// A chain 1 (t=0, Full) <- 2 (t=10) <- 3 (t=40), and Full entries 4 (t=20), 5 (t=30).
fn chain_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    publish(&store, 1, 0, None);
    publish(&store, 2, 10, Some(1));
    publish(&store, 4, 20, None);
    publish(&store, 5, 30, None);
    publish(&store, 3, 40, Some(2));
    (dir, store)
}

fn gc(store: &Store, policy: GcPolicy, now: SystemTime) -> bazel_diff_store::GcReport {
    let report = store.gc(&policy, now).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    report
}

#[test]
fn a_kept_diff_entry_keeps_its_whole_chain() {
    let (_dir, store) = chain_store();
    // Keep 1 per fingerprint: the newest is 3, a Diff of 2, itself a Diff of 1.
    let report = gc(
        &store,
        GcPolicy {
            keep_per_fingerprint: Some(1),
            ..GcPolicy::default()
        },
        at(100),
    );
    assert_eq!(shas(&report.removed), vec![4, 5]);
    assert_eq!(shas(&report.kept), vec![1, 2, 3]);
    let kept = |n: u32| report.kept.iter().find(|e| e.key == key(1, n)).unwrap();
    assert_eq!(kept(1).required_by, vec![key(1, 2)]);
    assert_eq!(kept(2).required_by, vec![key(1, 3)]);
    assert!(kept(3).required_by.is_empty());
    assert!(kept(1).reasons.is_empty());
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["kept"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["required_by"][0]["base_sha"] == sha(3)));

    // Old parents of a young entry stay too; once it goes, so do they.
    let report = gc(
        &store,
        GcPolicy {
            max_age: Some(Duration::from_secs(30)),
            ..GcPolicy::default()
        },
        at(60),
    );
    assert!(report.removed.is_empty(), "{:?}", shas(&report.removed));
    let report = gc(
        &store,
        GcPolicy {
            max_age: Some(Duration::from_secs(30)),
            ..GcPolicy::default()
        },
        at(80),
    );
    assert_eq!(shas(&report.removed), vec![1, 2, 3]);
    assert!(report
        .removed
        .iter()
        .all(|e| e.reasons == vec![GcReason::MaxAge]));
    assert!(store.entries().unwrap().is_empty());
}

#[test]
fn parents_stay_while_their_dependent_is_in_use() {
    let (_dir, store) = chain_store();
    let reader = store.open_entry(&key(1, 3)).unwrap();
    let report = gc(
        &store,
        GcPolicy {
            max_age: Some(Duration::from_secs(1)),
            ..GcPolicy::default()
        },
        at(100),
    );
    assert_eq!(shas(&report.skipped_in_use), vec![3]);
    assert_eq!(shas(&report.removed), vec![4, 5]);
    assert_eq!(shas(&report.kept), vec![1, 2]);
    drop(reader);
    // Nothing holds the chain any more.
    let report = gc(
        &store,
        GcPolicy {
            max_age: Some(Duration::from_secs(1)),
            ..GcPolicy::default()
        },
        at(100),
    );
    assert_eq!(shas(&report.removed), vec![1, 2, 3]);
}

#[test]
fn the_byte_budget_drops_whole_chains_oldest_head_first() {
    let (_dir, store) = chain_store();
    let each = store.entries().unwrap()[0].disk_bytes;
    // Room for 3.5 entries. Entry by entry, oldest first, would take the chain's root
    // (t=0) and 2 first and break the newest entry; the chain is as young as its head.
    let report = gc(
        &store,
        GcPolicy {
            max_bytes: Some(each * 7 / 2),
            dry_run: true,
            ..GcPolicy::default()
        },
        at(100),
    );
    assert_eq!(shas(&report.removed), vec![4, 5]);
    assert_eq!(report.bytes_remaining, 3 * each);

    // Room for one entry: the chain goes whole (3 entries) once the Full entries are gone.
    let report = gc(
        &store,
        GcPolicy {
            max_bytes: Some(each + each / 2),
            ..GcPolicy::default()
        },
        at(100),
    );
    assert_eq!(shas(&report.removed), vec![1, 2, 3, 4, 5]);
    assert!(report
        .removed
        .iter()
        .all(|e| e.reasons == vec![GcReason::MaxBytes]));
    assert!(!report.over_budget);
    assert!(store.entries().unwrap().is_empty());
}

#[test]
fn the_byte_budget_keeps_a_parent_shared_with_another_chain() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    // 1 <- 2 (t=10) and 1 <- 3 (t=50).
    publish(&store, 1, 0, None);
    publish(&store, 2, 10, Some(1));
    publish(&store, 3, 50, Some(1));
    let each = store.entries().unwrap()[0].disk_bytes;
    let report = gc(
        &store,
        GcPolicy {
            max_bytes: Some(2 * each),
            ..GcPolicy::default()
        },
        at(100),
    );
    assert_eq!(shas(&report.removed), vec![2]);
    assert_eq!(shas(&report.kept), vec![1, 3]);
}

#[test]
fn verify_reports_a_missing_or_replaced_requirement() {
    let (_dir, store) = chain_store();
    assert!(store.verify_all().unwrap().iter().all(|r| r.is_ok()));

    store.remove(&key(1, 1)).unwrap();
    let reports = store.verify_all().unwrap();
    let bad: Vec<_> = reports.iter().filter(|r| !r.is_ok()).collect();
    assert_eq!(bad.len(), 1, "{reports:?}");
    assert_eq!(bad[0].key, key(1, 2));
    let VerifyStatus::Problems { problems } = &bad[0].status else {
        panic!("{:?}", bad[0].status);
    };
    assert_eq!(
        problems,
        &vec![Problem::Requirement {
            required: key(1, 1).to_string(),
            reason: "the entry is missing".into(),
        }]
    );

    // Recorded again with other content: not the memory entry 2 was built on.
    let staging = store.begin(&key(1, 1)).unwrap();
    write(staging.path(), "mem", b"other");
    staging.publish(input()).unwrap();
    let reports = store.verify_all().unwrap();
    let text = reports
        .iter()
        .filter_map(|r| match &r.status {
            VerifyStatus::Problems { problems } => Some(problems[0].to_string()),
            _ => None,
        })
        .collect::<Vec<_>>();
    assert_eq!(text.len(), 1);
    assert!(text[0].contains("recorded again"), "{text:?}");
}

#[test]
fn publish_rejects_an_entry_requiring_itself() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let staging = store.begin(&key(1, 1)).unwrap();
    write(staging.path(), "mem", b"x");
    let err = staging
        .publish(input().with_requirement(Requirement::new(&key(1, 1))))
        .unwrap_err();
    assert!(err.to_string().contains("requires itself"), "{err}");
    assert!(store.entries().unwrap().is_empty());
}
