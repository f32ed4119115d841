//! Who requires whom among a set of entries (see `Metadata::requires`), for retention:
//! local gc here, and the object store's gc over its manifests.

use std::collections::HashMap;

use crate::key::EntryKey;
use crate::metadata::Metadata;

/// The `requires` edges among a list of entries, by index into that list. Requirements of
/// entries outside the list are left out: nothing to keep there.
#[derive(Debug, Clone, Default)]
pub struct Dependencies {
    requires: Vec<Vec<usize>>,
    dependents: Vec<Vec<usize>>,
}

impl Dependencies {
    /// The edges among `entries` (each key with its metadata, `None` when unusable: an
    /// unusable entry requires nothing we can know of).
    pub fn new<'a>(
        entries: impl IntoIterator<Item = (&'a EntryKey, Option<&'a Metadata>)>,
    ) -> Self {
        let entries: Vec<_> = entries.into_iter().collect();
        let index: HashMap<&EntryKey, usize> = entries
            .iter()
            .enumerate()
            .map(|(i, (key, _))| (*key, i))
            .collect();
        let mut deps = Dependencies {
            requires: vec![Vec::new(); entries.len()],
            dependents: vec![Vec::new(); entries.len()],
        };
        for (i, (_, metadata)) in entries.iter().enumerate() {
            for key in metadata.map(Metadata::required_keys).unwrap_or_default() {
                if let Some(&j) = index.get(&key) {
                    deps.requires[i].push(j);
                    deps.dependents[j].push(i);
                }
            }
        }
        deps
    }

    /// The entries `i` requires directly.
    pub fn requires(&self, i: usize) -> &[usize] {
        &self.requires[i]
    }

    /// The entries that require `i` directly.
    pub fn dependents(&self, i: usize) -> &[usize] {
        &self.dependents[i]
    }

    /// Whether an entry for which `live` holds requires `i`.
    pub fn is_required(&self, i: usize, live: impl Fn(usize) -> bool) -> bool {
        self.dependents[i].iter().any(|&d| live(d))
    }

    /// Every entry the entries marked in `roots` require, transitively, and the roots.
    pub fn closure(&self, roots: &[bool]) -> Vec<bool> {
        let mut marked = roots.to_vec();
        let mut stack: Vec<usize> = (0..roots.len()).filter(|&i| roots[i]).collect();
        while let Some(i) = stack.pop() {
            for &j in &self.requires[i] {
                if !marked[j] {
                    marked[j] = true;
                    stack.push(j);
                }
            }
        }
        marked
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::metadata::Requirement;

    fn key(n: u8) -> EntryKey {
        EntryKey::new(&"a".repeat(64), &format!("{n:02x}").repeat(20)).expect("key")
    }

    fn metadata(n: u8, requires: &[u8]) -> Metadata {
        Metadata {
            format_version: crate::FORMAT_VERSION,
            tool_version: "t".into(),
            driver: "firecracker".into(),
            fingerprint: "a".repeat(64),
            base_sha: key(n).base_sha().to_owned(),
            created_unix: 0,
            created_at: String::new(),
            files: BTreeMap::new(),
            total_bytes: 0,
            extra: serde_json::Map::new(),
            requires: requires
                .iter()
                .map(|&r| Requirement::new(&key(r)))
                .collect(),
        }
    }

    #[test]
    fn closure_follows_chains_and_ignores_absent_entries() {
        // 0 <- 1 <- 2, 3 alone, 4 requires 9 (not listed), 5 unusable.
        let keys: Vec<EntryKey> = (0..6).map(key).collect();
        let metas = [
            metadata(0, &[]),
            metadata(1, &[0]),
            metadata(2, &[1]),
            metadata(3, &[]),
            metadata(4, &[9]),
        ];
        let deps = Dependencies::new(keys.iter().enumerate().map(|(i, k)| (k, metas.get(i))));
        assert_eq!(deps.requires(2), &[1]);
        assert_eq!(deps.dependents(0), &[1]);
        assert!(deps.requires(4).is_empty());
        assert!(deps.is_required(1, |d| d == 2));
        assert!(!deps.is_required(1, |_| false));
        let roots = [false, false, true, false, true, false];
        assert_eq!(
            deps.closure(&roots),
            vec![true, true, true, false, true, false]
        );
    }
}
