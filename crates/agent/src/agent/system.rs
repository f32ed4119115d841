//! Guest identity (`hello`) and post-restore hygiene: the wall clock (`set_time`) and the
//! kernel entropy pool (`reseed`).

use std::ffi::c_int;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::protocol::{
    ErrorCode, ErrorInfo, Hello, Response, MAX_RESEED_BYTES, OPS, PROTOCOL_VERSION,
};

/// `CAP_SYS_TIME` from `<linux/capability.h>`.
pub const CAP_SYS_TIME: u32 = 25;

/// `RNDADDENTROPY` = `_IOW('R', 0x03, int[2])` and `RNDRESEEDCRNG` = `_IO('R', 0x07)` from
/// `<linux/random.h>`, in the generic ioctl encoding (x86_64, aarch64, riscv64).
const RNDADDENTROPY: u64 = 0x4008_5203;
const RNDRESEEDCRNG: u64 = 0x5207;

/// Set times before 2000-01-01 are refused: they are a host bug (seconds or milliseconds
/// passed as nanoseconds), never a real clock.
const MIN_PLAUSIBLE_UNIX_NANOS: u64 = 946_684_800 * 1_000_000_000;

pub(crate) fn now_unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn uptime_ms() -> u64 {
    // SAFETY: timespec is plain old data; clock_gettime only writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: ts is a valid, exclusively borrowed timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for writes of its length; gethostname NUL-terminates on success.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

pub(crate) fn hello() -> Hello {
    Hello {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        protocol_version: PROTOCOL_VERSION,
        boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        uptime_ms: uptime_ms(),
        realtime_unix_nanos: now_unix_nanos(),
        hostname: hostname(),
        pid: std::process::id(),
        // SAFETY: geteuid cannot fail.
        euid: unsafe { libc::geteuid() },
        ops: OPS.iter().map(|s| s.to_string()).collect(),
    }
}

/// Whether this process holds capability `cap` in its effective set (from
/// `/proc/self/status`, so no capget ABI versions to track).
pub fn has_effective_capability(cap: u32) -> io::Result<bool> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no CapEff line"))?;
    let bits = u64::from_str_radix(hex, 16)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("CapEff `{hex}`: {e}")))?;
    Ok(cap < 64 && bits & (1u64 << cap) != 0)
}

fn not_permitted(detail: &str) -> ErrorInfo {
    ErrorInfo {
        code: ErrorCode::NotPermitted,
        message: format!(
            "set_time: {detail}; the agent needs CAP_SYS_TIME (run it as root in the guest)"
        ),
    }
}

/// Sets `CLOCK_REALTIME`, or with `dry_run` only checks that it could.
pub(crate) fn set_time(unix_nanos: u64, dry_run: bool) -> Result<Response, ErrorInfo> {
    if unix_nanos < MIN_PLAUSIBLE_UNIX_NANOS {
        return Err(ErrorInfo {
            code: ErrorCode::BadRequest,
            message: format!(
                "set_time: unix_nanos {unix_nanos} is before the year 2000 (seconds or \
                 milliseconds passed as nanoseconds?)"
            ),
        });
    }
    let previous = now_unix_nanos();
    if dry_run {
        return match has_effective_capability(CAP_SYS_TIME) {
            Ok(true) => Ok(Response::TimeSet {
                previous_unix_nanos: previous,
                unix_nanos,
                dry_run: true,
            }),
            Ok(false) => Err(not_permitted(
                "CAP_SYS_TIME is not in the effective set (dry run)",
            )),
            Err(e) => Err(ErrorInfo {
                code: ErrorCode::Io,
                message: format!("set_time: cannot read capabilities: {e}"),
            }),
        };
    }
    // Zeroed then filled: some libc targets (32-bit musl) add padding fields.
    // SAFETY: timespec is plain old data; all-zero is a valid value.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    ts.tv_sec = (unix_nanos / 1_000_000_000) as libc::time_t;
    ts.tv_nsec = (unix_nanos % 1_000_000_000) as _;
    // SAFETY: ts is a valid timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        let err = io::Error::last_os_error();
        return Err(if err.raw_os_error() == Some(libc::EPERM) {
            not_permitted(&format!("clock_settime(CLOCK_REALTIME) failed: {err}"))
        } else {
            ErrorInfo {
                code: ErrorCode::from_io(&err),
                message: format!("set_time: clock_settime(CLOCK_REALTIME) failed: {err}"),
            }
        });
    }
    Ok(Response::TimeSet {
        previous_unix_nanos: previous,
        unix_nanos,
        dry_run: false,
    })
}

/// Adds `bytes` to the entropy pool behind `device` (normally `/dev/urandom`): credited with
/// `RNDADDENTROPY` (plus `RNDRESEEDCRNG`) when the agent may, else mixed in by a plain write.
pub(crate) fn reseed(bytes: &[u8], device: &Path) -> Result<Response, ErrorInfo> {
    if bytes.is_empty() || bytes.len() > MAX_RESEED_BYTES {
        return Err(ErrorInfo {
            code: ErrorCode::BadRequest,
            message: format!(
                "reseed: {} bytes given, expected 1 to {MAX_RESEED_BYTES}",
                bytes.len()
            ),
        });
    }
    let fail = |what: &str, e: io::Error| ErrorInfo {
        code: ErrorCode::from_io(&e),
        message: format!("reseed: cannot {what} {}: {e}", device.display()),
    };
    let mut dev = OpenOptions::new()
        .append(true)
        .open(device)
        .map_err(|e| fail("open", e))?;

    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info = Vec::with_capacity(8 + bytes.len());
    info.extend_from_slice(&((bytes.len() * 8) as c_int).to_ne_bytes());
    info.extend_from_slice(&(bytes.len() as c_int).to_ne_bytes());
    info.extend_from_slice(bytes);
    // SAFETY: info holds a complete rand_pool_info whose buf_size matches its payload; the
    // kernel only reads it. On a non-random device the ioctl fails with ENOTTY.
    let credited = unsafe { libc::ioctl(dev.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) } == 0;
    if credited {
        // Make the new entropy reach the CRNG now rather than at its next scheduled reseed;
        // older kernels lack this ioctl, which is harmless.
        // SAFETY: RNDRESEEDCRNG takes no argument.
        unsafe { libc::ioctl(dev.as_raw_fd(), RNDRESEEDCRNG as _) };
    } else {
        dev.write_all(bytes).map_err(|e| fail("write", e))?;
    }
    Ok(Response::Reseeded {
        bytes: bytes.len() as u64,
        credited,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn implausible_times_are_refused_before_any_syscall() {
        let err = set_time(1_700_000_000, false).err().map(|e| e.code);
        assert_eq!(err, Some(ErrorCode::BadRequest));
    }

    #[test]
    fn capabilities_are_readable() {
        assert!(has_effective_capability(CAP_SYS_TIME).is_ok());
    }

    #[test]
    fn hello_describes_this_process() {
        let h = hello();
        assert_eq!(h.protocol_version, PROTOCOL_VERSION);
        assert_eq!(h.pid, std::process::id());
        assert!(h.realtime_unix_nanos > MIN_PLAUSIBLE_UNIX_NANOS);
        assert!(h.ops.iter().any(|o| o == "exec"));
    }
}
