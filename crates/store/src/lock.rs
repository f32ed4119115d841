//! Advisory file locks (`flock(2)`), the only cross-process synchronization of the store.
//!
//! `std::fs::File::lock` needs Rust 1.89 (MSRV is 1.85), so this wraps `libc::flock`.
//! flock locks belong to the open file description: two opens of the same file, even in
//! one process, exclude each other, which is what threads of one process need too. The
//! descriptors are close-on-exec, so a Bazel server or Firecracker process spawned while a
//! lock is held does not inherit (and outlive us with) it. The kernel releases the lock
//! when the holder dies, including on `kill -9`.
//!
//! Lock files may be unlinked, but only by a holder of the exclusive lock
//! ([`LockGuard::unlink`]). Every acquisition therefore checks, once the lock is granted,
//! that the file it locked is still the one at the path, and starts over otherwise;
//! without that check, a process that opened the file before the unlink would hold a lock
//! on an orphaned inode that nobody else can see.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{io_err, Result, StoreError};

/// Lock mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Shared,
    Exclusive,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Shared => "shared",
            Mode::Exclusive => "exclusive",
        }
    }

    fn op(self) -> libc::c_int {
        match self {
            Mode::Shared => libc::LOCK_SH,
            Mode::Exclusive => libc::LOCK_EX,
        }
    }
}

/// A granted lock; released when dropped (the descriptor is closed).
#[derive(Debug)]
pub(crate) struct LockGuard {
    file: File,
    path: PathBuf,
}

impl LockGuard {
    /// Removes the lock file while still holding it (exclusive holders only), so that
    /// lock files of deleted entries do not accumulate. Safe because of the identity check
    /// every acquisition makes.
    pub(crate) fn unlink(self) -> Result<()> {
        let LockGuard { file, path } = self;
        let result = match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove lock file", &path)(e)),
        };
        // Unlock only after the unlink: a waiter then finds the inode orphaned and retries.
        drop(file);
        result
    }
}

/// Takes `mode` on `path`, creating the file if needed; waits at most `timeout` (forever
/// when `None`).
pub(crate) fn lock(path: &Path, mode: Mode, timeout: Option<Duration>) -> Result<LockGuard> {
    let start = Instant::now();
    loop {
        let file = open(path)?;
        match timeout {
            None => flock(&file, mode.op()).map_err(io_err("lock", path))?,
            Some(limit) => {
                let mut pause = Duration::from_millis(1);
                loop {
                    match flock(&file, mode.op() | libc::LOCK_NB) {
                        Ok(()) => break,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(io_err("lock", path)(e)),
                    }
                    let waited = start.elapsed();
                    if waited >= limit {
                        return Err(StoreError::LockTimeout {
                            path: path.to_owned(),
                            mode: mode.name(),
                            waited,
                        });
                    }
                    thread::sleep(pause.min(limit - waited));
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            }
        }
        if still_linked(&file, path)? {
            return Ok(LockGuard {
                file,
                path: path.to_owned(),
            });
        }
    }
}

/// Takes `mode` on `path` if nobody holds a conflicting lock; `None` if someone does.
pub(crate) fn try_lock(path: &Path, mode: Mode) -> Result<Option<LockGuard>> {
    loop {
        let file = open(path)?;
        match flock(&file, mode.op() | libc::LOCK_NB) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(io_err("lock", path)(e)),
        }
        if still_linked(&file, path)? {
            return Ok(Some(LockGuard {
                file,
                path: path.to_owned(),
            }));
        }
    }
}

fn open(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_err("open lock file", path))
}

/// Whether `path` still names the inode `file` refers to.
fn still_linked(file: &File, path: &Path) -> Result<bool> {
    let held = file.metadata().map_err(io_err("stat lock file", path))?;
    match fs::metadata(path) {
        Ok(now) => Ok(now.dev() == held.dev() && now.ino() == held.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("stat lock file", path)(e)),
    }
}

fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: `file` owns a valid open descriptor for the duration of the call, and
        // flock only operates on that descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_within_one_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.lock");
        let held = lock(&path, Mode::Exclusive, None).expect("first lock");
        assert!(try_lock(&path, Mode::Shared).expect("try").is_none());
        assert!(try_lock(&path, Mode::Exclusive).expect("try").is_none());
        let err = lock(&path, Mode::Shared, Some(Duration::from_millis(30))).expect_err("timeout");
        assert!(matches!(err, StoreError::LockTimeout { .. }), "{err}");
        drop(held);
        assert!(try_lock(&path, Mode::Exclusive).expect("try").is_some());
    }

    #[test]
    fn shared_locks_coexist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.lock");
        let _a = lock(&path, Mode::Shared, None).expect("a");
        let _b = try_lock(&path, Mode::Shared)
            .expect("try")
            .expect("b granted");
        assert!(try_lock(&path, Mode::Exclusive).expect("try").is_none());
    }

    #[test]
    fn waiter_on_an_unlinked_lock_file_starts_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.lock");
        let held = lock(&path, Mode::Exclusive, None).expect("first lock");
        let waiter = {
            let path = path.clone();
            thread::spawn(move || lock(&path, Mode::Exclusive, None).map(|g| g.file.metadata()))
        };
        thread::sleep(Duration::from_millis(50));
        held.unlink().expect("unlink");
        let got = waiter.join().expect("join").expect("lock").expect("stat");
        let current = fs::metadata(&path).expect("lock file recreated");
        assert_eq!((got.dev(), got.ino()), (current.dev(), current.ino()));
    }
}

/// An exclusive advisory lock on a file of the caller's choosing (e.g. a worktree shared by
/// several runs); released when dropped, or by the kernel when the process dies.
#[derive(Debug)]
pub struct FileLock {
    _guard: LockGuard,
}

impl FileLock {
    /// Waits (at most `timeout`, if given) for the exclusive lock on `path`, creating it.
    pub fn exclusive(path: &Path, timeout: Option<Duration>) -> Result<FileLock> {
        lock(path, Mode::Exclusive, timeout).map(|guard| FileLock { _guard: guard })
    }
}
