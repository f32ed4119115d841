//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use bazel_diff_bench::GenConfig;

/// A small but fully shaped config: several packages per layer, so locality and fan-in matter.
pub fn small_config() -> GenConfig {
    GenConfig {
        layers: 6,
        packages: 30,
        ..GenConfig::default()
    }
}

/// Every file under `dir` except `.git`, by relative path.
pub fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("dir entry"))
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        if e.file_name() == ".git" {
            continue;
        }
        if path.is_dir() {
            walk(root, &path, out);
        } else {
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            out.insert(rel, fs::read(&path).expect("read file"));
        }
    }
}

/// Paths whose contents differ, were added, or were removed between two snapshots.
pub fn changed(
    a: &BTreeMap<String, Vec<u8>>,
    b: &BTreeMap<String, Vec<u8>>,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let modified = a
        .iter()
        .filter(|(k, v)| b.get(*k).is_some_and(|w| w != *v))
        .map(|(k, _)| k.clone())
        .collect();
    let added = b.keys().filter(|k| !a.contains_key(*k)).cloned().collect();
    let deleted = a.keys().filter(|k| !b.contains_key(*k)).cloned().collect();
    (modified, added, deleted)
}

pub fn text(dir: &Path, rel: &str) -> String {
    fs::read_to_string(dir.join(rel)).expect("read text")
}

/// Rule names (the `name = "..."` of every `bench_genrule(` block) in a BUILD file.
pub fn rule_names(build: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_rule = false;
    for line in build.lines() {
        if line == "bench_genrule(" {
            in_rule = true;
        } else if in_rule {
            if let Some(n) = line
                .strip_prefix("    name = \"")
                .and_then(|l| l.strip_suffix("\","))
            {
                out.push(n.to_string());
                in_rule = false;
            }
        }
    }
    out
}
