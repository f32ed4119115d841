//! The userfaultfd kernel ABI (`include/uapi/linux/userfaultfd.h`) and [`Uffd`], an owned
//! userfaultfd with the handful of ioctls a page server needs.
//!
//! Raw `ioctl`s through `libc` rather than the `userfaultfd` crate: the ABI is small and
//! frozen, and we need exact control of what the crate hides — the signed `copy` /
//! `zeropage` result of a partial `UFFDIO_COPY` (the crate casts it to `usize`, which is why
//! Firecracker's example handler has to unscramble `-EAGAIN`), the wake modes, and creating
//! a descriptor through `/dev/userfaultfd` on kernels that restrict the syscall.
//!
//! The ioctl numbers use the generic `_IOC` encoding of x86_64 and aarch64, the two
//! architectures Firecracker runs on.

use std::fs::OpenOptions;
use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// `UFFD_API`: the only API version.
pub const UFFD_API: u64 = 0xAA;

/// `UFFD_EVENT_PAGEFAULT`.
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// `UFFD_EVENT_FORK`.
pub const UFFD_EVENT_FORK: u8 = 0x13;
/// `UFFD_EVENT_REMAP`.
pub const UFFD_EVENT_REMAP: u8 = 0x14;
/// `UFFD_EVENT_REMOVE`: `madvise(MADV_DONTNEED/MADV_REMOVE)` on a registered range (the
/// balloon device).
pub const UFFD_EVENT_REMOVE: u8 = 0x15;
/// `UFFD_EVENT_UNMAP`.
pub const UFFD_EVENT_UNMAP: u8 = 0x16;

/// `UFFD_PAGEFAULT_FLAG_WRITE`.
pub const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1 << 0;

/// `UFFD_FEATURE_EVENT_REMOVE`, which Firecracker requires.
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;

/// `UFFDIO_REGISTER_MODE_MISSING`.
pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;

/// `UFFDIO_COPY_MODE_DONTWAKE` (same bit for `UFFDIO_ZEROPAGE_MODE_DONTWAKE`).
pub const UFFDIO_MODE_DONTWAKE: u64 = 1 << 0;

const UFFDIO: u32 = 0xAA;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

const fn ioc(dir: u32, nr: u32, size: usize) -> libc::c_ulong {
    ((dir << 30) | ((size as u32) << 16) | (UFFDIO << 8) | nr) as libc::c_ulong
}

/// `UFFDIO_API`.
pub const UFFDIO_API: libc::c_ulong = ioc(IOC_READ | IOC_WRITE, 0x3F, size_of::<UffdioApi>());
/// `UFFDIO_REGISTER`.
pub const UFFDIO_REGISTER: libc::c_ulong =
    ioc(IOC_READ | IOC_WRITE, 0x00, size_of::<UffdioRegister>());
/// `UFFDIO_UNREGISTER`.
pub const UFFDIO_UNREGISTER: libc::c_ulong = ioc(IOC_READ, 0x01, size_of::<UffdioRange>());
/// `UFFDIO_WAKE`.
pub const UFFDIO_WAKE: libc::c_ulong = ioc(IOC_READ, 0x02, size_of::<UffdioRange>());
/// `UFFDIO_COPY`.
pub const UFFDIO_COPY: libc::c_ulong = ioc(IOC_READ | IOC_WRITE, 0x03, size_of::<UffdioCopy>());
/// `UFFDIO_ZEROPAGE`.
pub const UFFDIO_ZEROPAGE: libc::c_ulong =
    ioc(IOC_READ | IOC_WRITE, 0x04, size_of::<UffdioZeropage>());
/// `USERFAULTFD_IOC_NEW` on `/dev/userfaultfd` (Linux 6.1+).
pub const USERFAULTFD_IOC_NEW: libc::c_ulong = (UFFDIO << 8) as libc::c_ulong;

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioApi {
    pub api: u64,
    pub features: u64,
    pub ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioRange {
    pub start: u64,
    pub len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioRegister {
    pub range: UffdioRange,
    pub mode: u64,
    pub ioctls: u64,
}

/// `struct uffdio_copy`. `copy` is the kernel's answer: bytes copied, or `-errno`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioCopy {
    pub dst: u64,
    pub src: u64,
    pub len: u64,
    pub mode: u64,
    pub copy: i64,
}

/// `struct uffdio_zeropage`. `zeropage` is bytes mapped, or `-errno`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioZeropage {
    pub range: UffdioRange,
    pub mode: u64,
    pub zeropage: i64,
}

/// `struct uffd_msg` (32 bytes, `__packed` in C but naturally aligned as laid out here).
/// `arg` is the union: for a page fault `[flags, address, ptid]`, for a remove
/// `[start, end, _]`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdMsg {
    pub event: u8,
    pub reserved1: u8,
    pub reserved2: u16,
    pub reserved3: u32,
    pub arg: [u64; 3],
}

const _: () = assert!(size_of::<UffdMsg>() == 32);
const _: () = assert!(size_of::<UffdioCopy>() == 40);
const _: () = assert!(size_of::<UffdioApi>() == 24);

/// A `UFFDIO_COPY` or `UFFDIO_ZEROPAGE` that did not complete: `done` bytes (a multiple of
/// the page size, possibly 0) were populated before the kernel stopped with `errno`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FillError {
    pub done: u64,
    pub errno: i32,
}

/// An owned userfaultfd.
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
}

impl Uffd {
    /// Creates a userfaultfd the way Firecracker does: close-on-exec, non-blocking, for
    /// user- and kernel-mode faults (KVM faults on guest memory from kernel mode). Uses
    /// `/dev/userfaultfd` when it can be opened, else the `userfaultfd(2)` syscall.
    pub fn create() -> io::Result<Self> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        let dev = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/userfaultfd");
        if let Ok(dev) = dev {
            // SAFETY: USERFAULTFD_IOC_NEW takes its flags by value and returns a new fd.
            let fd = unsafe { libc::ioctl(dev.as_raw_fd(), USERFAULTFD_IOC_NEW, flags) };
            if fd >= 0 {
                // SAFETY: the kernel just gave us this descriptor.
                return Ok(Self::from_owned(unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        // SAFETY: plain syscall with integer flags.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just gave us this descriptor.
        Ok(Self::from_owned(unsafe {
            OwnedFd::from_raw_fd(fd as RawFd)
        }))
    }

    /// Wraps a descriptor known to be a userfaultfd (e.g. received over `SCM_RIGHTS`).
    pub fn from_owned(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// Duplicates the descriptor (both refer to the same userfaultfd context).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            fd: self.fd.try_clone()?,
        })
    }

    /// `UFFDIO_API`: the handshake with the kernel, requesting `features`. Returns the
    /// features and ioctls the kernel granted.
    pub fn api(&self, features: u64) -> io::Result<UffdioApi> {
        let mut api = UffdioApi {
            api: UFFD_API,
            features,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API reads and writes a `struct uffdio_api` we own.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_API, &mut api) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(api)
    }

    /// `UFFDIO_REGISTER` in missing mode for `[addr, addr + len)`.
    pub fn register_missing(&self, addr: u64, len: u64) -> io::Result<u64> {
        let mut reg = UffdioRegister {
            range: UffdioRange { start: addr, len },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER reads and writes a `struct uffdio_register` we own.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_REGISTER, &mut reg) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(reg.ioctls)
    }

    /// `UFFDIO_COPY`: atomically populates `[dst, dst + len)` of the registered process with
    /// a copy of our `[src, src + len)`, then wakes threads waiting on that range unless
    /// `wake` is false.
    ///
    /// # Safety
    /// `src..src + len` must be readable memory of this process.
    pub unsafe fn copy(
        &self,
        dst: u64,
        src: *const u8,
        len: u64,
        wake: bool,
    ) -> Result<(), FillError> {
        let mut c = UffdioCopy {
            dst,
            src: src as u64,
            len,
            mode: if wake { 0 } else { UFFDIO_MODE_DONTWAKE },
            copy: 0,
        };
        // SAFETY: UFFDIO_COPY reads and writes a `struct uffdio_copy` we own; the kernel
        // reads `src` with copy_from_user, which the caller guarantees is readable.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_COPY, &mut c) };
        fill_result(r, c.copy)
    }

    /// `UFFDIO_ZEROPAGE`: maps the shared zero page over `[dst, dst + len)` (4 KiB pages
    /// only; hugetlbfs rejects it), then wakes unless `wake` is false.
    pub fn zeropage(&self, dst: u64, len: u64, wake: bool) -> Result<(), FillError> {
        let mut z = UffdioZeropage {
            range: UffdioRange { start: dst, len },
            mode: if wake { 0 } else { UFFDIO_MODE_DONTWAKE },
            zeropage: 0,
        };
        // SAFETY: UFFDIO_ZEROPAGE reads and writes a `struct uffdio_zeropage` we own.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_ZEROPAGE, &mut z) };
        fill_result(r, z.zeropage)
    }

    /// `UFFDIO_WAKE`: wakes threads blocked on faults in `[addr, addr + len)`.
    pub fn wake(&self, addr: u64, len: u64) -> io::Result<()> {
        let range = UffdioRange { start: addr, len };
        // SAFETY: UFFDIO_WAKE reads a `struct uffdio_range` we own.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_WAKE, &range) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads as many pending messages as fit in `buf` without blocking; `Ok(0)` when none
    /// is pending. The descriptor must be non-blocking (see [`Uffd::set_nonblocking`]).
    pub fn read_events(&self, buf: &mut [UffdMsg]) -> io::Result<usize> {
        loop {
            // SAFETY: reading into a buffer of `buf.len()` plain-old-data messages we own.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    std::mem::size_of_val(buf),
                )
            };
            if n >= 0 {
                return Ok(n as usize / size_of::<UffdMsg>());
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EAGAIN) => return Ok(0),
                Some(libc::EINTR) => continue,
                _ => return Err(err),
            }
        }
    }

    /// Sets `O_NONBLOCK` (on the open file description, which Firecracker shares; it creates
    /// the descriptor non-blocking anyway). `poll` on a blocking userfaultfd reports
    /// `POLLERR`, so the serving loop needs this.
    pub fn set_nonblocking(&self) -> io::Result<()> {
        // SAFETY: fcntl on a descriptor we own.
        let flags = unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        if flags & libc::O_NONBLOCK != 0 {
            return Ok(());
        }
        // SAFETY: fcntl on a descriptor we own.
        let r =
            unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

fn fill_result(r: libc::c_int, answer: i64) -> Result<(), FillError> {
    if r == 0 {
        return Ok(());
    }
    let errno = io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO);
    if answer > 0 {
        // Partial: the ioctl says EAGAIN; the page it stopped at is retried by the caller.
        return Err(FillError {
            done: answer as u64,
            errno,
        });
    }
    // The kernel stores -errno in the answer field when it got that far; validation
    // failures (EINVAL, EFAULT on the struct) leave it 0 and only set errno.
    let errno = if answer < 0 { (-answer) as i32 } else { errno };
    Err(FillError { done: 0, errno })
}

impl AsFd for Uffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Uffd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        // Values from <linux/userfaultfd.h> as compiled for x86_64 / aarch64.
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_UNREGISTER, 0x8010_aa01);
        assert_eq!(UFFDIO_WAKE, 0x8010_aa02);
        assert_eq!(UFFDIO_COPY, 0xc028_aa03);
        assert_eq!(UFFDIO_ZEROPAGE, 0xc020_aa04);
        assert_eq!(USERFAULTFD_IOC_NEW, 0xaa00);
    }
}
