//! Small filesystem helpers: durability (fsync of files and directories), permission
//! changes, deletion of read-only trees, disk usage, and process liveness.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Makes the entries of directory `dir` (creations, renames, removals) durable.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Sets the permission bits of `path`. Follows symlinks, so callers pass only paths they
/// have seen to be regular files or directories.
pub(crate) fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Deletes a tree that may contain read-only directories (published entries are 0555,
/// which stops a non-root owner from unlinking their contents). A tree that is already
/// gone, or disappears while we delete it, is not an error: trash may be emptied by two
/// collectors at once.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
        Err(e) => return Err(e),
    }
    make_dirs_writable(path)?;
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn make_dirs_writable(dir: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return Ok(());
    }
    if meta.mode() & 0o700 != 0o700 {
        set_mode(dir, 0o755)?;
    }
    let children = match fs::read_dir(dir) {
        Ok(children) => children,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for child in children {
        let child = child?;
        if child.file_type()?.is_dir() {
            make_dirs_writable(&child.path())?;
        }
    }
    Ok(())
}

/// Bytes allocated on disk for everything under `path` (blocks, so sparse files count
/// what they use, not their length). Parts that vanish during the walk count as zero.
pub(crate) fn disk_usage(path: &Path) -> io::Result<u64> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        let children = match fs::read_dir(path) {
            Ok(children) => children,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(total),
            Err(e) => return Err(e),
        };
        for child in children {
            total += disk_usage(&child?.path())?;
        }
    }
    Ok(total)
}

/// Modification time of `path` as a `SystemTime` (for directories without metadata).
pub(crate) fn mtime(meta: &fs::Metadata) -> SystemTime {
    meta.modified().unwrap_or(UNIX_EPOCH)
}

/// Whole seconds since the Unix epoch (negative before it).
pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// How long ago `created_unix` was at `now`, zero if it is in the future.
pub(crate) fn age(created_unix: i64, now: SystemTime) -> Duration {
    let now = unix_seconds(now);
    Duration::from_secs(u64::try_from(now.saturating_sub(created_unix)).unwrap_or(0))
}

/// Whether a process with this id exists on this host. A zombie counts as alive; a pid
/// reused by an unrelated process reads as alive too, which only delays a cleanup.
pub(crate) fn pid_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 sends nothing; kill only checks that the process exists and that
    // we may signal it.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A name component unique on this host: `<pid>.<nanos><counter>`.
pub(crate) fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}.{nanos:x}x{n}", std::process::id())
}

/// Splits a work-directory name `<stem>.<pid>.<rest>` (staging and trash).
pub(crate) fn parse_work_name(name: &str) -> Option<(&str, u32)> {
    let mut parts = name.splitn(3, '.');
    let stem = parts.next()?;
    let pid = parts.next()?.parse().ok()?;
    parts.next()?;
    Some((stem, pid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_read_only_trees() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = dir.path().join("t");
        fs::create_dir_all(tree.join("a/b")).expect("mkdir");
        fs::write(tree.join("a/b/f"), "x").expect("write");
        set_mode(&tree.join("a/b/f"), 0o444).expect("chmod");
        for d in ["a/b", "a", ""] {
            set_mode(&tree.join(d), 0o555).expect("chmod");
        }
        remove_tree(&tree).expect("remove");
        assert!(!tree.exists());
        remove_tree(&tree).expect("removing a missing tree is fine");
    }

    #[test]
    fn own_pid_is_alive() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
        assert!(!pid_alive(u32::MAX));
    }

    #[test]
    fn work_names_parse() {
        assert_eq!(parse_work_name("a-b.123.xyz"), Some(("a-b", 123)));
        assert_eq!(parse_work_name("a-b.123.x.y"), Some(("a-b", 123)));
        assert_eq!(parse_work_name("a-b.123"), None);
        assert_eq!(parse_work_name("a-b.x.y"), None);
        let unique = unique_suffix();
        assert_eq!(
            parse_work_name(&format!("s.{unique}")).map(|p| p.1),
            Some(std::process::id())
        );
    }
}
