//! [`Hashes`], the label-to-hash map of a hashes file.
//!
//! Entries are kept in insertion (file) order in one vector, labels in one string arena, and
//! a separate compact index maps a 64-bit label hash to the entry position. Parsing then
//! appends sequentially instead of scattering 10^5 entries (and label allocations) over the
//! heap, and two files listing labels in the same order (ours are sorted; upstream's come
//! from Java hash maps of near-identical key sets) can be compared by walking both vectors
//! side by side; see [`Hashes::get_near`].

use std::collections::hash_map::Entry as MapEntry;
use std::fmt;
use std::hash::BuildHasher;

use rustc_hash::{FxBuildHasher, FxHashMap};

use crate::target::TargetHash;

/// End of a collision chain.
const NONE: u32 = u32::MAX;

/// Label to [`TargetHash`], iterated in insertion order. Inserting an existing label
/// replaces its hash in place (last value wins, as when upstream reads duplicate keys).
///
/// Equality ignores order.
#[derive(Clone, Default)]
pub struct Hashes {
    /// All labels, back to back; entries refer to byte ranges of it.
    labels: String,
    entries: Vec<Entry>,
    /// Label hash to the position of the first entry with that hash.
    index: FxHashMap<u64, u32>,
    /// Next position with the same label hash, or [`NONE`]; parallel to `entries`.
    next: Vec<u32>,
}

#[derive(Clone)]
struct Entry {
    label_start: usize,
    label_end: usize,
    hash: TargetHash,
}

impl Hashes {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty map with room for `capacity` labels.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut hashes = Self::default();
        hashes.reserve(capacity);
        hashes
    }

    /// Makes room for `additional` more labels.
    pub fn reserve(&mut self, additional: usize) {
        self.entries.reserve(additional);
        self.index.reserve(additional);
        self.next.reserve(additional);
    }

    /// Makes room for `bytes` more bytes of label text.
    pub(crate) fn reserve_label_bytes(&mut self, bytes: usize) {
        self.labels.reserve(bytes);
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if there are no labels.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Inserts or replaces; returns the replaced hash.
    ///
    /// # Panics
    /// Beyond `u32::MAX - 1` entries (far past any real workspace).
    pub fn insert(&mut self, label: &str, hash: TargetHash) -> Option<TargetHash> {
        let position = u32::try_from(self.entries.len())
            .ok()
            .filter(|&p| p != NONE)
            .expect("more than 2^32 - 1 labels");
        match self.index.entry(label_hash(label)) {
            MapEntry::Vacant(slot) => {
                slot.insert(position);
            }
            MapEntry::Occupied(slot) => {
                let mut i = *slot.get() as usize;
                loop {
                    if self.label(i) == label {
                        return Some(std::mem::replace(&mut self.entries[i].hash, hash));
                    }
                    if self.next[i] == NONE {
                        self.next[i] = position;
                        break;
                    }
                    i = self.next[i] as usize;
                }
            }
        }
        let label_start = self.labels.len();
        self.labels.push_str(label);
        self.entries.push(Entry {
            label_start,
            label_end: self.labels.len(),
            hash,
        });
        self.next.push(NONE);
        None
    }

    /// The hash of `label`.
    pub fn get(&self, label: &str) -> Option<&TargetHash> {
        self.position(label).map(|i| &self.entries[i].hash)
    }

    /// True if `label` is present.
    pub fn contains_key(&self, label: &str) -> bool {
        self.position(label).is_some()
    }

    /// Looks `label` up, trying position `hint` first. Returns the hash and its position, so
    /// a caller walking another map in a similar order passes `position + 1` as the next
    /// hint and, when the orders agree, never touches the index.
    pub fn get_near(&self, label: &str, hint: usize) -> Option<(usize, &TargetHash)> {
        if hint < self.entries.len() && self.label(hint) == label {
            return Some((hint, &self.entries[hint].hash));
        }
        self.position(label).map(|i| (i, &self.entries[i].hash))
    }

    /// Entries in insertion order.
    pub fn iter(&self) -> HashesIter<'_> {
        HashesIter {
            labels: &self.labels,
            entries: self.entries.iter(),
        }
    }

    /// Labels in insertion order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &str> {
        self.iter().map(|(label, _)| label)
    }

    /// Hashes in insertion order, mutable (labels cannot change).
    pub fn values_mut(&mut self) -> impl ExactSizeIterator<Item = &mut TargetHash> {
        self.entries.iter_mut().map(|entry| &mut entry.hash)
    }

    /// Keeps the entries for which `keep` is true, in order. Rebuilds the index.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &TargetHash) -> bool) {
        let old = std::mem::take(self);
        self.reserve(old.len());
        for Entry {
            label_start,
            label_end,
            hash,
        } in old.entries
        {
            let label = &old.labels[label_start..label_end];
            if keep(label, &hash) {
                self.insert(label, hash);
            }
        }
    }

    fn label(&self, i: usize) -> &str {
        let entry = &self.entries[i];
        &self.labels[entry.label_start..entry.label_end]
    }

    fn position(&self, label: &str) -> Option<usize> {
        let mut i = *self.index.get(&label_hash(label))?;
        loop {
            if self.label(i as usize) == label {
                return Some(i as usize);
            }
            i = self.next[i as usize];
            if i == NONE {
                return None;
            }
        }
    }
}

/// Iterator over the entries of [`Hashes`], in insertion order.
pub struct HashesIter<'a> {
    labels: &'a str,
    entries: std::slice::Iter<'a, Entry>,
}

impl<'a> Iterator for HashesIter<'a> {
    type Item = (&'a str, &'a TargetHash);
    fn next(&mut self) -> Option<Self::Item> {
        let entry = self.entries.next()?;
        Some((
            &self.labels[entry.label_start..entry.label_end],
            &entry.hash,
        ))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.entries.size_hint()
    }
}

impl ExactSizeIterator for HashesIter<'_> {}

fn label_hash(label: &str) -> u64 {
    FxBuildHasher.hash_one(label)
}

impl PartialEq for Hashes {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .enumerate()
                .all(|(i, (label, hash))| other.get_near(label, i).map(|(_, h)| h) == Some(hash))
    }
}

impl Eq for Hashes {}

impl fmt::Debug for Hashes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<L: AsRef<str>> FromIterator<(L, TargetHash)> for Hashes {
    fn from_iter<I: IntoIterator<Item = (L, TargetHash)>>(iter: I) -> Self {
        let mut hashes = Hashes::new();
        hashes.extend(iter);
        hashes
    }
}

impl<L: AsRef<str>> Extend<(L, TargetHash)> for Hashes {
    fn extend<I: IntoIterator<Item = (L, TargetHash)>>(&mut self, iter: I) {
        let iter = iter.into_iter();
        self.reserve(iter.size_hint().0);
        for (label, hash) in iter {
            self.insert(label.as_ref(), hash);
        }
    }
}

impl<'a> IntoIterator for &'a Hashes {
    type Item = (&'a str, &'a TargetHash);
    type IntoIter = HashesIter<'a>;
    fn into_iter(self) -> HashesIter<'a> {
        self.iter()
    }
}

impl std::ops::Index<&str> for Hashes {
    type Output = TargetHash;
    /// # Panics
    /// If the label is absent, like `HashMap`'s `Index`.
    fn index(&self, label: &str) -> &TargetHash {
        self.get(label).expect("label not in Hashes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &str) -> TargetHash {
        TargetHash::parse(v).expect("valid")
    }

    #[test]
    fn insert_get_replace_keep_order() {
        let mut map = Hashes::new();
        assert_eq!(map.insert("//b", h("1~1")), None);
        assert_eq!(map.insert("//a", h("2~2")), None);
        assert_eq!(map.insert("//b", h("3~3")), Some(h("1~1")));
        assert_eq!(map.len(), 2);
        assert_eq!(map.keys().collect::<Vec<_>>(), ["//b", "//a"]);
        assert_eq!(map.get("//b"), Some(&h("3~3")));
        assert_eq!(map.get("//c"), None);
        assert_eq!(map.get_near("//a", 1), Some((1, &h("2~2"))));
        assert_eq!(map.get_near("//a", 0), Some((1, &h("2~2"))));
        assert_eq!(map.get_near("//a", 99), Some((1, &h("2~2"))));
        map.retain(|label, _| label != "//b");
        assert_eq!(map.keys().collect::<Vec<_>>(), ["//a"]);
        assert!(!map.contains_key("//b"));
    }

    #[test]
    fn colliding_label_hashes_chain() {
        let mut map: Hashes = (0..5)
            .map(|i| (format!("//{i}"), h(&format!("{i}~{i}"))))
            .collect();
        // Point every label's hash at entry 0 and chain all entries, as if all collided.
        for i in 0..5u32 {
            map.next[i as usize] = if i < 4 { i + 1 } else { NONE };
            map.index.insert(label_hash(&format!("//{i}")), 0);
        }
        for i in 0..5 {
            assert_eq!(map.get(&format!("//{i}")), Some(&h(&format!("{i}~{i}"))));
        }
        assert_eq!(map.insert("//3", h("x~x")), Some(h("3~3")));
        assert_eq!(map.len(), 5);
    }

    #[test]
    fn equality_ignores_order() {
        let a: Hashes = [("//a", h("1~1")), ("//b", h("2~2"))].into_iter().collect();
        let b: Hashes = [("//b", h("2~2")), ("//a", h("1~1"))].into_iter().collect();
        assert_eq!(a, b);
        let c: Hashes = [("//b", h("2~2")), ("//a", h("1~9"))].into_iter().collect();
        assert_ne!(a, c);
    }
}
