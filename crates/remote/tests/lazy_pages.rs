//! Guest memory fetched on first fault: a memory image pushed to a real S3-compatible
//! server (moto), served by the userfaultfd handler through [`LazyPages`] to a simulated VM
//! in a child process (a real userfaultfd, as Firecracker registers it). Only the chunks the
//! guest touches are fetched, the bytes are the image's, a warm chunk cache fetches nothing,
//! and a corrupt chunk fails the handler, which kills the VM rather than serve it.
//!
//! The child re-executes this test binary (see `child_entry_point`).

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on setup failures by design
#![allow(clippy::print_stdout)] // the child reports to the parent on stdout

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bazel_diff_remote::{ChunkCache, LazyPages, Manifest, Remote, SharedStore};
use bazel_diff_store::{EntryKey, MetadataInput, Store};
use bazel_diff_testkit::{require_moto, S3Server};
use bazel_diff_uffd::sim::SimulatedVm;
use bazel_diff_uffd::{
    Error, ExitReason, Handler, Outcome, PageSource, Policy, UffdListener, WorkingSet,
};

const FP: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const BASE: &str = "3333333333333333333333333333333333333333";
const BUCKET: &str = "snaps";
const MEM_FILE: &str = "vm/mem";
/// The smallest image the store cuts into fixed 256 KiB chunks.
const MEM: u64 = 64 << 20;
const CHUNK: u64 = 256 << 10;
const PAGE: u64 = 4096;
const MIB: u64 = 1 << 20;

const ROLE_ENV: &str = "LAZY_PAGES_CHILD";
const SOCKET_ENV: &str = "LAZY_PAGES_SOCKET";
const RANGES_ENV: &str = "LAZY_PAGES_RANGES";
const OUT_ENV: &str = "LAZY_PAGES_OUT";

/// The image: 24 MiB of noise, then zeros with a few data pages at 40 MiB.
fn image() -> Vec<u8> {
    let mut mem = vec![0u8; MEM as usize];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for word in mem[..24 << 20].chunks_exact_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes());
    }
    mem[(40 << 20)..(40 << 20) + 3 * PAGE as usize].fill(0xA5);
    mem
}

struct Fixture {
    s3: S3Server,
    dir: tempfile::TempDir,
    image: Vec<u8>,
    manifest: Manifest,
}

impl Fixture {
    /// Records the image on "host A" and pushes it; `None` when moto is not installed.
    fn new() -> Option<Fixture> {
        let s3 = require_moto()?;
        s3.bucket(BUCKET);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("a/store")).unwrap();
        let key = EntryKey::new(FP, BASE).unwrap();
        let staging = store.begin(&key).unwrap();
        let image = image();
        std::fs::create_dir_all(staging.path().join("vm")).unwrap();
        std::fs::write(staging.path().join(MEM_FILE), &image).unwrap();
        staging
            .publish(MetadataInput::new("test", "firecracker"))
            .unwrap();
        let shared = SharedStore {
            remote: remote(&s3),
            cache: ChunkCache::open(dir.path().join("a/chunks"), 1 << 30).unwrap(),
        };
        shared.push(&store, &key).unwrap();
        let manifest = shared.remote.manifest(&key).unwrap();
        assert!(manifest.files[MEM_FILE]
            .chunks
            .iter()
            .all(|c| c.size == CHUNK));
        Some(Fixture {
            s3,
            dir,
            image,
            manifest,
        })
    }

    /// The image served from the object store through the chunk cache of `host`.
    fn pages(&self, host: &str) -> Arc<LazyPages> {
        let cache = ChunkCache::open(self.dir.path().join(host).join("chunks"), 1 << 30).unwrap();
        let pages = LazyPages::new(
            remote(&self.s3),
            cache,
            &self.manifest,
            MEM_FILE,
            self.dir.path(),
        )
        .unwrap();
        Arc::new(pages)
    }

    /// Restores a simulated VM in a child process that reads `ranges` of its memory into a
    /// file, served from `pages` one 256 KiB chunk per fault; the handler's outcome, the
    /// child, the bytes it read and how long serving took.
    fn restore(
        &self,
        name: &str,
        pages: Arc<LazyPages>,
        ranges: &[(u64, u64)],
        prefetch: Option<&WorkingSet>,
    ) -> (bazel_diff_uffd::Result<Outcome>, Child, Vec<u8>, Duration) {
        let sock = self.dir.path().join(format!("{name}.sock"));
        let out = self.dir.path().join(format!("{name}.bytes"));
        let listener = UffdListener::bind(&sock).unwrap();
        let spec: Vec<String> = ranges.iter().map(|(o, l)| format!("{o}:{l}")).collect();
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_entry_point",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ROLE_ENV, "touch")
            .env(SOCKET_ENV, &sock)
            .env(RANGES_ENV, spec.join(","))
            .env(OUT_ENV, &out)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let hs = listener.accept(Duration::from_secs(30)).unwrap();
        let started = Instant::now();
        let policy = Policy {
            chunk_bytes: CHUNK,
            ..Policy::default()
        };
        let outcome = Handler::new(hs, pages, policy)
            .and_then(|h| match prefetch {
                Some(ws) => h.with_prefetch(ws),
                None => Ok(h),
            })
            .and_then(Handler::run);
        let took = started.elapsed();
        let bytes = std::fs::read(&out).unwrap_or_default();
        (outcome, child, bytes, took)
    }

    fn expected(&self, ranges: &[(u64, u64)]) -> Vec<u8> {
        ranges
            .iter()
            .flat_map(|&(o, l)| self.image[o as usize..(o + l) as usize].iter().copied())
            .collect()
    }
}

fn remote(s3: &S3Server) -> Remote {
    let env = s3.env();
    let config: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Remote::open_with(&format!("s3://{BUCKET}/team"), &config).unwrap()
}

fn wait_done(mut child: Child) {
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let done = stdout
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("DONE"));
    assert!(done, "the child did not finish its reads");
    assert!(child.wait().unwrap().success());
}

#[test]
fn only_the_chunks_the_guest_touches_are_fetched() {
    let Some(fx) = Fixture::new() else { return };
    // 1 MiB of noise (4 chunks), a page straddling nothing at 5 MiB + 100 (1 chunk), the
    // data pages at 40 MiB (1 chunk), a page of a zero chunk (never fetched).
    let ranges = [
        (0, MIB),
        (5 * MIB + 100, PAGE),
        (40 * MIB, 3 * PAGE),
        (60 * MIB, PAGE),
    ];
    let want = fx.expected(&ranges);

    let cold = fx.pages("b");
    let (outcome, child, got, _) = fx.restore("cold", cold.clone(), &ranges, None);
    let outcome = outcome.unwrap();
    wait_done(child);
    assert_eq!(outcome.reason, ExitReason::PeerExited);
    assert!(got == want, "the guest read other bytes than the image's");
    let stats = cold.stats();
    assert_eq!(stats.fetched, 6, "{stats:?}");
    assert_eq!(stats.from_cache, 0, "{stats:?}");
    assert_eq!(stats.logical_bytes, 6 * CHUNK, "{stats:?}");
    assert!(
        outcome.stats.zero_pages >= CHUNK / PAGE,
        "the zero chunk is served as zero pages: {:?}",
        outcome.stats
    );

    // Host B again: the chunk cache has them all.
    let warm = fx.pages("b");
    let (outcome, child, got, _) = fx.restore("warm", warm.clone(), &ranges, None);
    outcome.unwrap();
    wait_done(child);
    assert!(got == want);
    let stats = warm.stats();
    assert_eq!((stats.fetched, stats.from_cache), (0, 6), "{stats:?}");
}

#[test]
fn faults_and_prefetch_fetch_each_chunk_once() {
    let Some(fx) = Fixture::new() else { return };
    let ranges = [(0, 2 * MIB), (40 * MIB, PAGE), (8 * MIB, MIB)];
    let (outcome, child, _, _) = fx.restore("record", fx.pages("e"), &ranges, None);
    let ws = outcome.unwrap().working_set.unwrap();
    wait_done(child);
    // A new host: the guest touches the working set backwards while the two prefetchers
    // go forwards, so faults and prefetch meet on the same chunks.
    let backwards: Vec<(u64, u64)> = ranges
        .iter()
        .rev()
        .flat_map(|&(o, l)| (0..l / PAGE).rev().map(move |p| (o + p * PAGE, PAGE)))
        .collect();
    let want = fx.expected(&backwards);
    let pages = fx.pages("f");
    let (outcome, child, got, _) = fx.restore("prefetch", pages.clone(), &backwards, Some(&ws));
    let outcome = outcome.unwrap();
    wait_done(child);
    assert!(got == want);
    assert!(outcome.stats.prefetch_pages > 0, "{:?}", outcome.stats);
    let stats = pages.stats();
    assert_eq!(stats.fetched, 13, "each chunk once: {stats:?}");
}

#[test]
fn a_corrupt_chunk_fails_the_handler_and_the_vm() {
    let Some(fx) = Fixture::new() else { return };
    // Valid zstd of the right length, wrong bytes: only the digest check catches it.
    let chunk = &fx.manifest.files[MEM_FILE].chunks[(5 * MIB / CHUNK) as usize];
    let wrong = zstd::encode_all(&vec![7u8; CHUNK as usize][..], 1).unwrap();
    fx.s3.put_object(
        BUCKET,
        &format!("team/chunks/{}/{}", &chunk.digest[..2], chunk.digest),
        &wrong,
    );
    let pages = fx.pages("c");
    let (outcome, mut child, got, _) = fx.restore(
        "corrupt",
        pages.clone(),
        &[(0, PAGE), (5 * MIB, PAGE)],
        None,
    );
    let err = outcome.unwrap_err();
    assert!(matches!(err, Error::Source { .. }), "{err}");
    assert!(err.to_string().contains(&chunk.digest), "{err}");
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the handler kills the VM it can no longer serve"
    );
    assert!(got.is_empty(), "the guest never completed its reads");
    // The failure sticks: a retry does not serve around the bad chunk.
    assert!(pages.bytes(5 * MIB, PAGE).is_err());
    assert_eq!(pages.stats().fetched, 1, "only the first chunk was good");
}

/// Bytes fetched for a restore touching a tenth of the image (64 KiB runs spread over
/// it), and the serving rate cold (from moto through the handler) and warm (from the local
/// chunk cache). Printed for the docs; run with `--nocapture`.
#[test]
fn figures_for_a_restore_touching_a_tenth_of_the_image() {
    let Some(fx) = Fixture::new() else { return };
    // 102 of the image's 1024 64-KiB slots, spread by a stride coprime with 1024.
    let slot = 64 << 10;
    let runs: Vec<(u64, u64)> = (0..102u64)
        .map(|i| ((i * 613) % 1024 * slot, slot))
        .collect();
    let touched: u64 = runs.iter().map(|r| r.1).sum();
    let want = fx.expected(&runs);
    for label in ["cold", "warm"] {
        let pages = fx.pages("d");
        let (outcome, child, got, took) = fx.restore(label, pages.clone(), &runs, None);
        let outcome = outcome.unwrap();
        wait_done(child);
        assert!(got == want);
        let stats = pages.stats();
        assert!(stats.logical_bytes < MEM / 4, "{stats:?}");
        let secs = took.as_secs_f64();
        eprintln!(
            "lazy {label}: the guest touched {} KiB ({:.0}% of the {} MiB image) in {} faults; \
             {} KiB of chunks made available ({} fetched, {} from the cache, {} KiB \
             downloaded) in {:.3}s: {:.0} faults/s, {:.1} MB/s",
            touched >> 10,
            100.0 * touched as f64 / MEM as f64,
            MEM >> 20,
            outcome.stats.fault_events,
            stats.logical_bytes >> 10,
            stats.fetched,
            stats.from_cache,
            stats.fetched_bytes >> 10,
            secs,
            outcome.stats.fault_events as f64 / secs,
            stats.logical_bytes as f64 / secs / 1e6,
        );
    }
}

/// The simulated VM (not a test on its own): maps the image's size, connects to the
/// handler, reads `LAZY_PAGES_RANGES` (`offset:len,...`) in order, writes what it read to
/// `LAZY_PAGES_OUT` and prints `DONE`.
#[test]
fn child_entry_point() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    assert_eq!(role, "touch");
    let sock = std::env::var(SOCKET_ENV).unwrap();
    let vm = SimulatedVm::new(&[MEM]).unwrap();
    let _stream = vm.connect(Path::new(&sock)).unwrap();
    let mut out = Vec::new();
    for range in std::env::var(RANGES_ENV).unwrap().split(',') {
        let (offset, len) = range.split_once(':').unwrap();
        let mut buf = vec![0u8; len.parse().unwrap()];
        vm.read(offset.parse().unwrap(), &mut buf);
        out.extend_from_slice(&buf);
    }
    std::fs::write(std::env::var(OUT_ENV).unwrap(), out).unwrap();
    println!("DONE");
    std::process::exit(0);
}
