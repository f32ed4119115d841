//! Publishing output files atomically, and the "file or stdout" output of the CLIs.
//!
//! A published file is either the complete new content or the previous file: content goes
//! to a temporary file in the target's directory (same filesystem, so the rename is atomic),
//! which is fsynced, renamed over the target, and the directory is fsynced so the rename
//! survives a crash. Until the rename the target is untouched, and the temporary file is
//! removed on every failure path (including a drop without [`AtomicFile::commit`]).

use std::fs;
use std::io::{self, BufWriter, Stdout, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::contract::STDOUT_ARG;

/// Why an output could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("cannot write {}: directory {} does not exist", path.display(), dir.display())]
    MissingDirectory { path: PathBuf, dir: PathBuf },
    #[error("cannot write {}: it does not name a file", path.display())]
    NotAFilePath { path: PathBuf },
    #[error("cannot write {}: {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        /// The step that failed, e.g. "renaming the temporary file into place".
        action: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot write to standard output: {0}")]
    Stdout(#[source] io::Error),
}

/// A file being written; it replaces `path` only on [`commit`](Self::commit).
///
/// Writes are buffered. Dropping it without committing discards the content and removes
/// the temporary file. If `path` is a symlink, the link itself is replaced.
#[derive(Debug)]
pub struct AtomicFile {
    path: PathBuf,
    dir: PathBuf,
    temp: BufWriter<NamedTempFile>,
}

impl AtomicFile {
    /// Starts writing a replacement for `path`. Fails if its directory does not exist.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, WriteError> {
        let path = path.as_ref().to_owned();
        let Some(name) = path.file_name() else {
            return Err(WriteError::NotAFilePath { path });
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
            _ => PathBuf::from("."),
        };
        // A dot-prefixed name keeps globs and directory watchers from picking it up.
        let prefix = format!(".{}.", name.to_string_lossy());
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix).suffix(".tmp");
        #[cfg(unix)]
        {
            // tempfile defaults to 0600; published files get the usual 0666 & !umask.
            use std::os::unix::fs::PermissionsExt;
            builder.permissions(fs::Permissions::from_mode(0o666));
        }
        let temp = builder.tempfile_in(&dir).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound && !dir.is_dir() {
                WriteError::MissingDirectory {
                    path: path.clone(),
                    dir: dir.clone(),
                }
            } else {
                io_error(&path, "creating a temporary file next to it", source)
            }
        })?;
        // Replacing a file keeps its mode (e.g. a group-readable report stays so).
        if let Ok(meta) = fs::metadata(&path) {
            temp.as_file()
                .set_permissions(meta.permissions())
                .map_err(|e| io_error(&path, "copying the permissions of the old file", e))?;
        }
        Ok(AtomicFile {
            path,
            dir,
            temp: BufWriter::with_capacity(1 << 16, temp),
        })
    }

    /// The file this will replace.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flushes, fsyncs, renames over the target and fsyncs the directory.
    pub fn commit(self) -> Result<(), WriteError> {
        let AtomicFile { path, dir, temp } = self;
        let temp = temp
            .into_inner()
            .map_err(|e| io_error(&path, "writing", e.into_error()))?;
        temp.as_file()
            .sync_all()
            .map_err(|e| io_error(&path, "syncing the temporary file", e))?;
        temp.persist(&path)
            .map_err(|e| io_error(&path, "renaming the temporary file into place", e.error))?;
        sync_dir(&dir).map_err(|e| io_error(&path, "syncing its directory after the rename", e))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.temp.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.temp.write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.temp.flush()
    }
}

/// Atomically replaces `path` with `bytes` (see the module docs).
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<(), WriteError> {
    let mut file = AtomicFile::create(path)?;
    if let Err(e) = file.write_all(bytes) {
        return Err(io_error(file.path(), "writing", e));
    }
    file.commit()
}

/// Where a CLI writes its result: standard output, or a file published atomically.
#[derive(Debug)]
pub enum Output {
    Stdout(BufWriter<Stdout>),
    File(AtomicFile),
}

impl Output {
    /// Standard output for an absent path or `-`, else an [`AtomicFile`] for the path.
    pub fn from_arg(path: Option<&Path>) -> Result<Self, WriteError> {
        match path {
            Some(path) if path != Path::new(STDOUT_ARG) => {
                AtomicFile::create(path).map(Output::File)
            }
            _ => Ok(Output::Stdout(BufWriter::new(io::stdout()))),
        }
    }

    /// Finishes the output: flushes standard output, or commits the file. Without this a
    /// file output is discarded.
    pub fn commit(self) -> Result<(), WriteError> {
        match self {
            Output::Stdout(mut out) => out.flush().map_err(WriteError::Stdout),
            Output::File(file) => file.commit(),
        }
    }

    /// Opens the output for `path` (see [`from_arg`](Self::from_arg)), lets `write` fill it
    /// and commits it, so a failed `write` never publishes a partial file. Errors name the
    /// destination.
    pub fn write_with(
        path: Option<&Path>,
        write: impl FnOnce(&mut Output) -> io::Result<()>,
    ) -> Result<(), WriteError> {
        let mut out = Output::from_arg(path)?;
        match write(&mut out) {
            Ok(()) => out.commit(),
            Err(e) => Err(match &out {
                Output::Stdout(_) => WriteError::Stdout(e),
                Output::File(file) => io_error(file.path(), "writing", e),
            }),
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Output::Stdout(out) => out.write(buf),
            Output::File(file) => file.write(buf),
        }
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Output::Stdout(out) => out.write_all(buf),
            Output::File(file) => file.write_all(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::Stdout(out) => out.flush(),
            Output::File(file) => file.flush(),
        }
    }
}

fn io_error(path: &Path, action: &'static str, source: io::Error) -> WriteError {
    WriteError::Io {
        path: path.to_owned(),
        action,
        source,
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    // Directories cannot be opened for syncing here; the rename is still atomic.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn creates_and_replaces_without_leftovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("out.json");
        write_atomic(&target, b"first").expect("write");
        assert_eq!(fs::read(&target).expect("read"), b"first");
        write_atomic(&target, b"second").expect("rewrite");
        assert_eq!(fs::read(&target).expect("read"), b"second");
        assert_eq!(entries(dir.path()), ["out.json"]);
    }

    #[test]
    fn streaming_writer_publishes_only_on_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("big.json");
        fs::write(&target, b"old").expect("seed");

        let mut file = AtomicFile::create(&target).expect("create");
        for _ in 0..10_000 {
            file.write_all(b"0123456789").expect("write");
        }
        assert_eq!(
            fs::read(&target).expect("read"),
            b"old",
            "target touched before commit"
        );
        drop(file);
        assert_eq!(fs::read(&target).expect("read"), b"old");
        assert_eq!(entries(dir.path()), ["big.json"], "temp left after drop");

        let mut file = AtomicFile::create(&target).expect("create");
        file.write_all(b"new").expect("write");
        file.commit().expect("commit");
        assert_eq!(fs::read(&target).expect("read"), b"new");
        assert_eq!(entries(dir.path()), ["big.json"]);
    }

    #[test]
    fn missing_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("nope").join("out.json");
        let err = write_atomic(&target, b"x").expect_err("must fail");
        assert!(
            matches!(err, WriteError::MissingDirectory { .. }),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "cannot write {}: directory {} does not exist",
                target.display(),
                dir.path().join("nope").display()
            )
        );
    }

    #[test]
    fn failed_rename_leaves_target_and_no_temp() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A non-empty directory cannot be replaced by a file.
        let target = dir.path().join("occupied");
        fs::create_dir(&target).expect("mkdir");
        fs::write(target.join("keep"), b"k").expect("seed");
        let err = write_atomic(&target, b"x").expect_err("must fail");
        assert!(
            matches!(
                err,
                WriteError::Io {
                    action: "renaming the temporary file into place",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(entries(dir.path()), ["occupied"]);
        assert_eq!(entries(&target), ["keep"]);
    }

    #[test]
    fn path_without_file_name_is_rejected() {
        let err = AtomicFile::create("/").expect_err("must fail");
        assert!(matches!(err, WriteError::NotAFilePath { .. }), "{err:?}");
    }

    #[cfg(unix)]
    #[test]
    fn keeps_mode_of_replaced_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("report.txt");
        fs::write(&target, b"old").expect("seed");
        fs::set_permissions(&target, fs::Permissions::from_mode(0o640)).expect("chmod");
        write_atomic(&target, b"new").expect("write");
        let mode = fs::metadata(&target).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
    }

    #[cfg(unix)]
    #[test]
    fn new_file_gets_the_same_mode_as_a_plain_write() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let mode = |p: &Path| fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        let plain = dir.path().join("plain.txt");
        fs::write(&plain, b"x").expect("write");
        let atomic = dir.path().join("atomic.txt");
        write_atomic(&atomic, b"x").expect("write");
        // tempfile's private 0600 default must not leak into published files.
        assert_eq!(mode(&atomic), mode(&plain));
    }

    #[test]
    fn write_with_publishes_only_complete_output() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("hashes.json");
        fs::write(&target, b"old").expect("seed");
        let err = Output::write_with(Some(&target), |out| {
            out.write_all(b"partial")?;
            Err(io::Error::other("generator failed"))
        })
        .expect_err("must fail");
        assert_eq!(
            err.to_string(),
            format!(
                "cannot write {}: writing: generator failed",
                target.display()
            )
        );
        assert_eq!(fs::read(&target).expect("read"), b"old");
        assert_eq!(entries(dir.path()), ["hashes.json"]);

        Output::write_with(Some(&target), |out| out.write_all(b"new")).expect("write");
        assert_eq!(fs::read(&target).expect("read"), b"new");
    }

    #[test]
    fn output_dash_or_none_is_stdout_else_atomic_file() {
        assert!(matches!(Output::from_arg(None), Ok(Output::Stdout(_))));
        assert!(matches!(
            Output::from_arg(Some(Path::new("-"))),
            Ok(Output::Stdout(_))
        ));
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("o.txt");
        let mut out = Output::from_arg(Some(&target)).expect("open");
        out.write_all(b"hello").expect("write");
        assert!(!target.exists());
        out.commit().expect("commit");
        assert_eq!(fs::read(&target).expect("read"), b"hello");
    }
}
