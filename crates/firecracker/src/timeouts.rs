//! How long each Firecracker API call may take. Upstream used one 15-minute timeout for every
//! call (F26), so a wedged VMM hung a trivial config call for a quarter of an hour. Here a
//! config call gets seconds and only the calls that move guest memory get more, scaled by how
//! much memory there is.

use std::time::Duration;

const MIB_PER_GIB: u64 = 1024;

/// Per-call deadlines. A deadline covers connect, send and the whole answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeoutPolicy {
    /// Every call that only changes or reads configuration (`PUT /machine-config`,
    /// `PATCH /vm`, `GET /`, ...). Firecracker answers these in microseconds.
    pub config: Duration,
    /// `PUT /actions` with `InstanceStart`: Firecracker allocates guest memory and loads the
    /// kernel (and initrd) before answering.
    pub start: Duration,
    /// Floor for `PUT /snapshot/create` and `PUT /snapshot/load`.
    pub snapshot_min: Duration,
    /// Added per started GiB of guest memory for snapshot create/load: create writes every
    /// page (a Full snapshot faults all of them in); a `File` load only maps the file, but on a
    /// cold page cache or a slow disk the vmstate and first faults still scale with size.
    pub snapshot_per_gib: Duration,
    /// Memory size assumed when the client has not been told one: Firecracker's largest
    /// common guest, so an unknown size errs towards waiting.
    pub unknown_memory_mib: u64,
}

impl TimeoutPolicy {
    /// 5 s per config call, 15 s for InstanceStart, and for snapshots
    /// `max(60 s, 30 s per GiB)` (8 GiB: 4 min), assuming 32 GiB when the size is unknown.
    pub const DEFAULT: TimeoutPolicy = TimeoutPolicy {
        config: Duration::from_secs(5),
        start: Duration::from_secs(15),
        snapshot_min: Duration::from_secs(60),
        snapshot_per_gib: Duration::from_secs(30),
        unknown_memory_mib: 32 * MIB_PER_GIB,
    };

    /// The snapshot create/load deadline for a guest of `mem_size_mib` (None: unknown):
    /// `max(snapshot_min, snapshot_per_gib × ceil(mem_size_mib / 1024))`.
    pub fn snapshot(&self, mem_size_mib: Option<u64>) -> Duration {
        let mib = mem_size_mib.unwrap_or(self.unknown_memory_mib);
        let gib = mib.div_ceil(MIB_PER_GIB);
        let scaled = self
            .snapshot_per_gib
            .saturating_mul(u32::try_from(gib).unwrap_or(u32::MAX));
        scaled.max(self.snapshot_min)
    }

    /// The same deadline for every call (tests, or a caller with its own budget).
    pub fn uniform(timeout: Duration) -> TimeoutPolicy {
        TimeoutPolicy {
            config: timeout,
            start: timeout,
            snapshot_min: timeout,
            snapshot_per_gib: Duration::ZERO,
            unknown_memory_mib: 0,
        }
    }
}

impl Default for TimeoutPolicy {
    fn default() -> Self {
        TimeoutPolicy::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_timeout_scales_with_memory() {
        let p = TimeoutPolicy::DEFAULT;
        assert_eq!(p.snapshot(Some(128)), Duration::from_secs(60));
        assert_eq!(p.snapshot(Some(2048)), Duration::from_secs(60));
        assert_eq!(p.snapshot(Some(3 * 1024)), Duration::from_secs(90));
        assert_eq!(p.snapshot(Some(3 * 1024 + 1)), Duration::from_secs(120));
        assert_eq!(p.snapshot(Some(8192)), Duration::from_secs(240));
        assert_eq!(p.snapshot(None), Duration::from_secs(32 * 30));
        assert_eq!(p.snapshot(Some(0)), Duration::from_secs(60));
        let u = TimeoutPolicy::uniform(Duration::from_millis(300));
        assert_eq!(u.snapshot(Some(1 << 20)), Duration::from_millis(300));
        assert_eq!(u.snapshot(None), Duration::from_millis(300));
    }
}
