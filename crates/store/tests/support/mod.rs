//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bazel_diff_store::{EntryKey, MetadataInput, Published, Store};
use sha2::{Digest, Sha256};

/// Fingerprint number `n`.
pub fn fp(n: u32) -> String {
    format!("{:064x}", 0xf00d_0000_u64 + u64::from(n))
}

/// Commit id number `n`.
pub fn sha(n: u32) -> String {
    format!("{:040x}", 0xc0de_0000_u64 + u64::from(n))
}

pub fn key(fp_n: u32, sha_n: u32) -> EntryKey {
    EntryKey::new(&fp(fp_n), &sha(sha_n)).unwrap()
}

pub fn write(dir: &Path, rel: &str, content: &[u8]) {
    let path = dir.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// An instant `secs` after 2023-11-14T22:13:20Z.
pub fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

pub fn input() -> MetadataInput {
    MetadataInput::new("bazel-diff-snap test", "local")
}

/// Publishes an entry with the given files.
pub fn publish_files(
    store: &Store,
    key: &EntryKey,
    files: &[(&str, &[u8])],
    created: SystemTime,
) -> Published {
    let staging = store.begin(key).unwrap();
    for (rel, content) in files {
        write(staging.path(), rel, content);
    }
    staging.publish(input().with_created(created)).unwrap()
}

/// Publishes a small entry whose one file is `bytes` long.
pub fn publish_sized(
    store: &Store,
    key: &EntryKey,
    bytes: usize,
    created: SystemTime,
) -> Published {
    publish_files(
        store,
        key,
        &[("base_hashes.json", &vec![b'x'; bytes])],
        created,
    )
}

/// Makes a published file or directory writable again so a test can tamper with it (as
/// non-root, 0444/0555 would stop it).
pub fn writable(path: &Path) {
    let mode = if path.is_dir() { 0o755 } else { 0o644 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

pub fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Names in `<store>/.staging`.
pub fn staging_names(store: &Store) -> Vec<String> {
    names(&store.root().join(".staging"))
}

pub fn names(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    out.sort();
    out
}
