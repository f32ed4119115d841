//! A small seeded PRNG (SplitMix64). Hand-written so the generated trees depend on nothing but
//! this file: a dependency upgrade must never change a benchmark workspace.

/// SplitMix64: 64-bit state, passes BigCrush, trivially reproducible on every platform.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng { state: seed }
    }

    /// An independent stream derived from this one's seed and `tag`, without advancing `self`.
    /// Used so that, e.g., package 17's contents do not depend on how many numbers package 16 drew.
    pub fn fork(&self, tag: u64) -> Rng {
        Rng::new(mix(self.state ^ mix(tag.wrapping_add(GOLDEN))))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix(self.state)
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the tiny bias is irrelevant here). `n` must be > 0.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below(0)");
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// `k` distinct indices from `0..n` (all of them, shuffled, if `k >= n`), in draw order.
    pub fn sample_distinct(&mut self, n: usize, k: usize) -> Vec<usize> {
        if k >= n {
            let mut all: Vec<usize> = (0..n).collect();
            self.shuffle(&mut all);
            return all;
        }
        if k * 4 <= n {
            // Sparse: rejection is cheaper than materialising 0..n.
            let mut out = Vec::with_capacity(k);
            while out.len() < k {
                let i = self.below(n);
                if !out.contains(&i) {
                    out.push(i);
                }
            }
            return out;
        }
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = i + self.below(n - i);
            all.swap(i, j);
        }
        all.truncate(k);
        all
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }

    /// A short lowercase hex token, for fresh names and edit markers.
    pub fn token(&mut self) -> String {
        format!("{:08x}", self.next_u64() as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_sequence() {
        // Reference values of SplitMix64 with seed 0 (Vigna's reference implementation).
        let mut r = Rng::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn sample_distinct_is_distinct_and_in_range() {
        let mut r = Rng::new(7);
        for (n, k) in [(10, 3), (10, 9), (10, 10), (10, 20), (1000, 4), (0, 3)] {
            let s = r.sample_distinct(n, k);
            assert_eq!(s.len(), k.min(n));
            let mut d = s.clone();
            d.sort_unstable();
            d.dedup();
            assert_eq!(d.len(), s.len());
            assert!(s.iter().all(|&i| i < n));
        }
    }

    #[test]
    fn fork_does_not_advance() {
        let r = Rng::new(42);
        let a = r.fork(1).next_u64();
        let b = r.fork(1).next_u64();
        let c = r.fork(2).next_u64();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
