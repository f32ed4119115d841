//! A fixed-size bitmap shared between the fault-serving thread and the prefetchers.

use std::sync::atomic::{AtomicU64, Ordering};

/// One bit per page. Updates are atomic per word, so concurrent `set_range` calls from
/// different threads never lose bits.
#[derive(Debug)]
pub(crate) struct AtomicBitmap {
    words: Box<[AtomicU64]>,
    bits: u64,
}

impl AtomicBitmap {
    pub(crate) fn new(bits: u64) -> Self {
        let words = bits.div_ceil(64) as usize;
        Self {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            bits,
        }
    }

    pub(crate) fn get(&self, i: u64) -> bool {
        debug_assert!(i < self.bits);
        self.words[(i / 64) as usize].load(Ordering::Acquire) & (1 << (i % 64)) != 0
    }

    /// Sets bit `i`; returns whether it was already set.
    pub(crate) fn test_and_set(&self, i: u64) -> bool {
        debug_assert!(i < self.bits);
        let mask = 1 << (i % 64);
        self.words[(i / 64) as usize].fetch_or(mask, Ordering::AcqRel) & mask != 0
    }

    pub(crate) fn set_range(&self, start: u64, n: u64) {
        self.update_range(start, n, true);
    }

    pub(crate) fn clear_range(&self, start: u64, n: u64) {
        self.update_range(start, n, false);
    }

    fn update_range(&self, start: u64, n: u64, set: bool) {
        let end = (start + n).min(self.bits);
        let mut i = start;
        while i < end {
            let word = i / 64;
            let lo = i % 64;
            let hi = (end - word * 64).min(64);
            let mask = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            let w = &self.words[word as usize];
            if set {
                w.fetch_or(mask, Ordering::AcqRel);
            } else {
                w.fetch_and(!mask, Ordering::AcqRel);
            }
            i = word * 64 + hi;
        }
    }

    #[cfg(test)]
    pub(crate) fn count_ones(&self) -> u64 {
        self.words
            .iter()
            .map(|w| u64::from(w.load(Ordering::Acquire).count_ones()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_across_word_boundaries() {
        let b = AtomicBitmap::new(200);
        b.set_range(60, 80);
        assert_eq!(b.count_ones(), 80);
        assert!(!b.get(59) && b.get(60) && b.get(139) && !b.get(140));
        b.clear_range(64, 64);
        assert_eq!(b.count_ones(), 16);
        assert!(b.get(63) && !b.get(64) && !b.get(127) && b.get(128));
        assert!(!b.test_and_set(64) && b.test_and_set(64));
        b.clear_range(64, 1);
        b.set_range(190, 100); // clipped at the end
        assert!(b.get(199));
        assert_eq!(b.count_ones(), 26);
    }
}
