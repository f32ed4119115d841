//! Crash safety and concurrency with real processes: the test binary re-executes itself
//! as a child (see `child_entry_point`) that records, publishes or reads, and the parent
//! kills it (SIGKILL) or lets it abort at chosen points.

#![allow(clippy::unwrap_used)] // helpers outside #[test] fns panic on setup failures by design

mod support;

use std::env;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use bazel_diff_store::{EntryKey, GcPolicy, Removed, Store};
use support::*;

const ROLE_ENV: &str = "BAZEL_DIFF_STORE_TEST_ROLE";
const STORE_ENV: &str = "BAZEL_DIFF_STORE_TEST_STORE";
const KEY_ENV: &str = "BAZEL_DIFF_STORE_TEST_KEY";
const GO_ENV: &str = "BAZEL_DIFF_STORE_TEST_GO";

/// Does nothing in a normal test run. In a child process, plays the role named by
/// `ROLE_ENV` against the store and key given in the environment, reporting progress as
/// lines on stdout.
#[test]
fn child_entry_point() {
    let Ok(role) = env::var(ROLE_ENV) else { return };
    let store = Store::open(env::var(STORE_ENV).unwrap()).unwrap();
    let key: EntryKey = env::var(KEY_ENV).unwrap().parse().unwrap();
    match role.as_str() {
        "abort-mid-staging" => {
            let staging = store.begin(&key).unwrap();
            write(staging.path(), "vm/mem_file", &[7u8; 1 << 16]);
            write(staging.path(), "base_hashes.json", b"{}");
            announce("READY");
            std::process::abort();
        }
        "hold-staging" => {
            let staging = store.begin(&key).unwrap();
            write(staging.path(), "vm/mem_file", &[7u8; 1 << 16]);
            announce("READY");
            sleep_forever(staging);
        }
        "hold-reader" => {
            let reader = store.open_entry(&key).unwrap();
            announce("READY");
            sleep_forever(reader);
        }
        "race-publish" => {
            let go = env::var(GO_ENV).unwrap();
            announce("READY");
            while !Path::new(&go).exists() {
                thread::sleep(Duration::from_millis(1));
            }
            let staging = store.begin(&key).unwrap();
            let me = std::process::id();
            write(
                staging.path(),
                "base_hashes.json",
                format!("writer {me}\n").repeat(500).as_bytes(),
            );
            write(
                staging.path(),
                "vm/mem_file",
                &me.to_le_bytes().repeat(1 << 14),
            );
            let published = staging.publish(input().with_extra("writer", me)).unwrap();
            announce(if published.is_created() {
                "RESULT created"
            } else {
                "RESULT existed"
            });
        }
        "publish-big" => {
            let staging = store.begin(&key).unwrap();
            write(staging.path(), "vm/mem_file", &vec![0xa5; 8 << 20]);
            for i in 0..100 {
                write(
                    staging.path(),
                    &format!("state/{i:03}"),
                    format!("state {i}").as_bytes(),
                );
            }
            announce("STAGED");
            staging.publish(input()).unwrap();
            announce("DONE");
        }
        other => panic!("unknown role {other}"),
    }
}

/// Prints a progress line. It starts with a newline because the harness has already
/// printed `test child_entry_point ... ` without one.
fn announce(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "\n{line}").unwrap();
    out.flush().unwrap();
}

fn sleep_forever<T>(_keep: T) -> ! {
    loop {
        thread::sleep(Duration::from_secs(60));
    }
}

/// How long a child may take to reach the next announced step before the test fails.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// A child process, killed on drop so a failing test leaves nothing running.
struct ChildProc {
    child: Child,
    /// Lines of the child's stdout, read by a thread so waits can time out.
    lines: mpsc::Receiver<String>,
}

impl ChildProc {
    fn spawn(role: &str, store: &Store, key: &EntryKey, extra: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env::current_exe().unwrap());
        cmd.args([
            "--exact",
            "child_entry_point",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(ROLE_ENV, role)
        .env(STORE_ENV, store.root())
        .env(KEY_ENV, key.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout: ChildStdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if tx.send(line.unwrap_or_default()).is_err() {
                    break;
                }
            }
        });
        ChildProc { child, lines }
    }

    /// Reads the child's stdout up to the next line starting with `prefix` (the test
    /// harness prints its own lines too).
    fn wait_for(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("child did not print {prefix:?} in time")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("child exited before printing {prefix:?}")
                }
            }
        }
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap(); // SIGKILL
        let status = self.child.wait().unwrap();
        assert!(
            status.signal() == Some(libc::SIGKILL) || status.success(),
            "{status:?}"
        );
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn process_aborting_mid_staging_leaves_no_entry_and_gc_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let key = key(1, 1);
    let mut child = ChildProc::spawn("abort-mid-staging", &store, &key, &[]);
    child.wait_for("READY");
    let status = child.wait();
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "expected SIGABRT, got {status:?}"
    );

    assert!(store.entries().unwrap().is_empty());
    assert!(store.fingerprints().unwrap().is_empty());
    assert!(!store.contains(&key).unwrap());
    assert_eq!(
        staging_names(&store).len(),
        1,
        "the dead recorder's staging directory remains"
    );

    let report = store
        .gc(&GcPolicy::default(), std::time::SystemTime::now())
        .unwrap();
    assert_eq!(report.stale_staging.len(), 1);
    assert!(report.stale_staging[0].bytes >= 1 << 16);
    assert!(staging_names(&store).is_empty());
    // The kernel released the dead process's record lock: the key can be recorded now.
    let store = store.with_lock_timeout(Some(Duration::from_secs(5)));
    publish_sized(&store, &key, 10, at(0));
    assert_eq!(store.open_entry(&key).unwrap().verify().unwrap(), vec![]);
}

#[test]
fn gc_keeps_a_live_recorders_staging_until_it_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut child = ChildProc::spawn("hold-staging", &store, &key(1, 1), &[]);
    child.wait_for("READY");

    let report = store
        .gc(&GcPolicy::default(), std::time::SystemTime::now())
        .unwrap();
    assert!(report.stale_staging.is_empty());
    assert_eq!(staging_names(&store).len(), 1);
    // Even "an hour later": liveness comes from the lock, not from the clock.
    let later = std::time::SystemTime::now() + Duration::from_secs(7200);
    assert!(store
        .gc(&GcPolicy::default(), later)
        .unwrap()
        .stale_staging
        .is_empty());

    child.kill9();
    assert!(store.entries().unwrap().is_empty());
    let report = store
        .gc(&GcPolicy::default(), std::time::SystemTime::now())
        .unwrap();
    assert_eq!(report.stale_staging.len(), 1);
    assert!(staging_names(&store).is_empty());
}

#[test]
fn concurrent_publisher_processes_have_exactly_one_winner() {
    const WRITERS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let go = dir.path().join("go");
    let go_str = go.to_str().unwrap();
    let mut children: Vec<ChildProc> = (0..WRITERS)
        .map(|_| ChildProc::spawn("race-publish", &store, &key(1, 1), &[(GO_ENV, go_str)]))
        .collect();
    for child in &mut children {
        child.wait_for("READY");
    }
    fs::write(&go, "").unwrap();
    let mut winners = Vec::new();
    for child in &mut children {
        let result = child.wait_for("RESULT");
        if result == "RESULT created" {
            winners.push(child.child.id());
        } else {
            assert_eq!(result, "RESULT existed");
        }
        assert!(child.wait().success());
    }
    assert_eq!(winners.len(), 1, "{winners:?}");

    let reader = store.open_entry(&key(1, 1)).unwrap();
    assert_eq!(reader.metadata().extra["writer"], winners[0]);
    assert_eq!(reader.verify().unwrap(), vec![]);
    let content = fs::read_to_string(reader.path().join("base_hashes.json")).unwrap();
    assert_eq!(content, format!("writer {}\n", winners[0]).repeat(500));
    assert!(
        staging_names(&store).is_empty(),
        "losers removed their staging directories"
    );
}

#[test]
fn reader_in_another_process_blocks_remove_and_gc() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let key = key(1, 1);
    publish_sized(&store, &key, 1000, at(0));
    let mut child = ChildProc::spawn("hold-reader", &store, &key, &[]);
    child.wait_for("READY");

    assert_eq!(store.remove(&key).unwrap(), Removed::InUse);
    let policy = GcPolicy {
        max_age: Some(Duration::ZERO),
        ..GcPolicy::default()
    };
    let report = store.gc(&policy, at(10)).unwrap();
    assert_eq!(report.skipped_in_use.len(), 1);
    assert!(report.removed.is_empty());
    assert!(store.open_entry(&key).unwrap().verify().unwrap().is_empty());

    child.kill9();
    let report = store.gc(&policy, at(10)).unwrap();
    assert_eq!(report.removed.len(), 1);
    assert!(store.entries().unwrap().is_empty());
}

/// Kills a publishing process at points spread over its whole publication (digesting,
/// writing metadata, freezing, fsyncing, renaming). After every kill the store shows
/// either no entry for the key or a complete one that verifies; never a partial one.
#[test]
fn kill_9_at_any_point_of_publication_never_exposes_a_partial_entry() {
    const KILLS: u32 = 16;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();

    // Calibrate: how long publication takes here, from "STAGED" to exit.
    let mut child = ChildProc::spawn("publish-big", &store, &key(1, 0), &[]);
    child.wait_for("STAGED");
    let start = Instant::now();
    assert!(child.wait().success());
    let publish_time = start.elapsed();
    assert!(store
        .open_entry(&key(1, 0))
        .unwrap()
        .verify()
        .unwrap()
        .is_empty());

    let mut published = 1;
    for i in 1..=KILLS {
        let key = key(1, i);
        let mut child = ChildProc::spawn("publish-big", &store, &key, &[]);
        child.wait_for("STAGED");
        // From 0 to 1.5x the calibrated time, so the last few usually let it finish.
        thread::sleep(publish_time * 3 * (i - 1) / (2 * (KILLS - 1)));
        child.kill9();

        let entries = store.entries().unwrap();
        assert!(
            entries.iter().all(|e| !e.is_corrupt()),
            "kill {i}: {entries:?}"
        );
        if store.contains(&key).unwrap() {
            let reader = store.open_entry(&key).unwrap();
            assert_eq!(reader.verify().unwrap(), vec![], "kill {i}");
            assert_eq!(reader.metadata().files.len(), 101);
            published += 1;
        }
        assert_eq!(entries.len(), published);
    }
    // Some kills must have landed before the rename, or the test proves nothing.
    assert!(
        published < KILLS as usize,
        "no kill interrupted a publication"
    );

    store
        .gc(&GcPolicy::default(), std::time::SystemTime::now())
        .unwrap();
    assert!(staging_names(&store).is_empty());
    assert_eq!(store.entries().unwrap().len(), published);
    assert!(store.verify_all().unwrap().iter().all(|r| r.is_ok()));
}
