//! `read_file` (streamed, bounded) and `write_file` (a temporary file in the target's
//! directory, fsynced, then renamed over the target: readers see the old file or the new one,
//! never a torn one).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::Failure;
use crate::protocol::{
    Base64Bytes, ErrorCode, ErrorInfo, ReadFileRequest, Response, WriteFileRequest, CHUNK_BYTES,
};

fn io_failure(what: &str, path: &Path, e: &io::Error) -> ErrorInfo {
    ErrorInfo {
        code: ErrorCode::from_io(e),
        message: format!("cannot {what} {}: {e}", path.display()),
    }
}

fn absolute(op: &str, path: &str) -> Result<PathBuf, ErrorInfo> {
    let p = PathBuf::from(path);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(ErrorInfo {
            code: ErrorCode::BadRequest,
            message: format!("{op}: path `{path}` is not absolute"),
        })
    }
}

/// Streams up to `max_bytes` of the file as `file_chunk`s; returns the closing `file_end`.
pub(crate) fn read_file(
    req: &ReadFileRequest,
    emit: &mut dyn FnMut(&Response) -> io::Result<()>,
) -> Result<Response, Failure> {
    let path = absolute("read_file", &req.path)?;
    let mut file = File::open(&path).map_err(|e| io_failure("open", &path, &e))?;
    let meta = file.metadata().map_err(|e| io_failure("stat", &path, &e))?;
    if meta.is_dir() {
        return Err(ErrorInfo {
            code: ErrorCode::BadRequest,
            message: format!("read_file: {} is a directory", path.display()),
        }
        .into());
    }
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut sent = 0u64;
    loop {
        let want = (req.max_bytes - sent).min(CHUNK_BYTES as u64) as usize;
        if want == 0 {
            break;
        }
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_failure("read", &path, &e).into()),
        };
        emit(&Response::FileChunk {
            data: Base64Bytes(buf[..n].to_vec()),
        })
        .map_err(Failure::Disconnected)?;
        sent += n as u64;
    }
    // Stopped by the limit: was there more? (Size alone cannot tell for /proc files.)
    let truncated = sent == req.max_bytes
        && file
            .read(&mut buf[..1])
            .map_err(|e| io_failure("read", &path, &e))?
            > 0;
    Ok(Response::FileEnd {
        bytes: sent,
        size: meta.len(),
        truncated,
    })
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// An open `write_file` transaction. Errors are remembered, not returned, because the
/// client streams all chunks before it reads the single answer.
pub(crate) struct PendingWrite {
    pub(crate) id: u64,
    target: PathBuf,
    mode: u32,
    bytes: u64,
    state: Result<(File, PathBuf), ErrorInfo>,
}

impl PendingWrite {
    pub(crate) fn begin(id: u64, req: &WriteFileRequest) -> PendingWrite {
        let target = PathBuf::from(&req.path);
        let state = Self::open_temp(req);
        PendingWrite {
            id,
            target,
            mode: req.mode,
            bytes: 0,
            state,
        }
    }

    fn open_temp(req: &WriteFileRequest) -> Result<(File, PathBuf), ErrorInfo> {
        let target = absolute("write_file", &req.path)?;
        if req.mode & !0o7777 != 0 {
            return Err(ErrorInfo {
                code: ErrorCode::BadRequest,
                message: format!("write_file: mode {:#o} has bits beyond 0o7777", req.mode),
            });
        }
        let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
            return Err(ErrorInfo {
                code: ErrorCode::BadRequest,
                message: format!("write_file: `{}` names no file", req.path),
            });
        };
        if req.create_dirs {
            fs::create_dir_all(dir).map_err(|e| io_failure("create directory", dir, &e))?;
        }
        let temp = dir.join(format!(
            ".{}.agent-tmp.{}.{}",
            name.to_string_lossy(),
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(|e| io_failure("create", &temp, &e))?;
        Ok((file, temp))
    }

    pub(crate) fn push(&mut self, data: &[u8]) {
        if let Ok((file, temp)) = &mut self.state {
            if let Err(e) = file.write_all(data) {
                let err = io_failure("write", temp, &e);
                self.fail(err);
                return;
            }
            self.bytes += data.len() as u64;
        }
    }

    fn fail(&mut self, err: ErrorInfo) {
        if let Ok((_, temp)) = &self.state {
            let _ = fs::remove_file(temp);
        }
        self.state = Err(err);
    }

    /// Publishes the file, or removes the temporary one and reports the first error.
    pub(crate) fn finish(mut self) -> Result<Response, ErrorInfo> {
        let result = match &self.state {
            Err(e) => Err(e.clone()),
            Ok((file, temp)) => self.publish(file, temp),
        };
        if let Err(e) = &result {
            self.fail(e.clone());
        }
        result
    }

    fn publish(&self, file: &File, temp: &Path) -> Result<Response, ErrorInfo> {
        file.set_permissions(fs::Permissions::from_mode(self.mode))
            .map_err(|e| io_failure("chmod", temp, &e))?;
        file.sync_all().map_err(|e| io_failure("fsync", temp, &e))?;
        fs::rename(temp, &self.target)
            .map_err(|e| io_failure("rename into place", &self.target, &e))?;
        if let Some(dir) = self.target.parent() {
            // The rename is durable once the directory is; a failure here changes nothing
            // visible, so it is not reported.
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(Response::Written {
            path: self.target.display().to_string(),
            bytes: self.bytes,
        })
    }

    /// Drops the transaction (the connection ended or another request interrupted it).
    pub(crate) fn abort(mut self, reason: String) -> ErrorInfo {
        let message = match &self.state {
            Err(earlier) => format!("{reason} (after an earlier error: {})", earlier.message),
            Ok(_) => reason,
        };
        let err = ErrorInfo {
            code: ErrorCode::BadRequest,
            message,
        };
        self.fail(err.clone());
        err
    }
}
