//! A stand-in for Firecracker's side of the Uffd backend, for tests and the bench on hosts
//! without KVM: anonymous guest memory registered with a real userfaultfd, handed to a
//! handler over a real unix socket exactly as `PUT /snapshot/load` does
//! (`guest_memory_from_uffd` + `send_uffd_handshake` in Firecracker's `persist.rs`).
//!
//! Guest memory is addressed by *file offset*: offset `o` is the byte the handler serves
//! from offset `o` of the memory file. The accessors panic on offsets outside guest memory,
//! as slice indexing does.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::handshake::{send_handshake, GuestRegionUffdMapping};
use crate::sys::{Uffd, UFFD_FEATURE_EVENT_REMOVE};

/// Simulated guest memory: regions of anonymous memory registered for missing-page faults.
#[derive(Debug)]
pub struct SimulatedVm {
    uffd: Uffd,
    regions: Vec<SimRegion>,
    page_size: u64,
}

#[derive(Debug)]
struct SimRegion {
    addr: usize,
    len: u64,
    offset: u64,
}

// SAFETY: the regions are plain shared memory owned by the value; concurrent reads through
// raw pointers are sound, and faults are resolved by the kernel and the handler.
unsafe impl Send for SimulatedVm {}
// SAFETY: as above.
unsafe impl Sync for SimulatedVm {}

impl SimulatedVm {
    /// Maps one anonymous region per size (`MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE`,
    /// 4 KiB pages, as Firecracker does without huge pages), creates a userfaultfd requiring
    /// `UFFD_FEATURE_EVENT_REMOVE`, and registers every region in missing mode. Region `i`
    /// is backed by the memory file right after region `i - 1`.
    pub fn new(region_sizes: &[u64]) -> io::Result<Self> {
        let page_size = 4096u64;
        let uffd = Uffd::create()?;
        let api = uffd.api(UFFD_FEATURE_EVENT_REMOVE)?;
        if api.features & UFFD_FEATURE_EVENT_REMOVE == 0 {
            return Err(io::Error::other(
                "the kernel lacks UFFD_FEATURE_EVENT_REMOVE",
            ));
        }
        let mut vm = Self {
            uffd,
            regions: Vec::new(),
            page_size,
        };
        let mut offset = 0;
        for &len in region_sizes {
            if len == 0 || len % page_size != 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("region size {len} is not a positive multiple of {page_size}"),
                ));
            }
            // SAFETY: a fresh anonymous mapping at a kernel-chosen address.
            let addr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if addr == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            vm.regions.push(SimRegion {
                addr: addr as usize,
                len,
                offset,
            });
            vm.uffd.register_missing(addr as u64, len)?;
            offset += len;
        }
        Ok(vm)
    }

    /// The handshake body Firecracker would send for this memory.
    pub fn mappings(&self) -> Vec<GuestRegionUffdMapping> {
        self.regions
            .iter()
            .map(|r| GuestRegionUffdMapping {
                base_host_virt_addr: r.addr as u64,
                size: r.len,
                offset: r.offset,
                page_size: self.page_size,
            })
            .collect()
    }

    /// Connects to the handler's socket and sends the mappings and the userfaultfd in one
    /// `sendmsg`. Keep the returned stream open for as long as the "VM" lives, as current
    /// Firecracker does.
    pub fn connect(&self, socket: &Path) -> io::Result<UnixStream> {
        send_handshake(socket, &self.mappings(), self.uffd.as_fd())
    }

    /// The userfaultfd the memory is registered with (Firecracker keeps its own copy too).
    pub fn uffd_fd(&self) -> BorrowedFd<'_> {
        self.uffd.as_fd()
    }

    /// Total guest memory in bytes.
    pub fn len(&self) -> u64 {
        self.regions.iter().map(|r| r.len).sum()
    }

    /// Whether there is no guest memory.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The page size (4096).
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// The host address of guest byte `offset`.
    pub fn host_addr(&self, offset: u64) -> Option<u64> {
        self.regions
            .iter()
            .find(|r| offset >= r.offset && offset - r.offset < r.len)
            .map(|r| r.addr as u64 + (offset - r.offset))
    }

    fn ptr(&self, offset: u64, len: u64) -> *mut u8 {
        let r = self
            .regions
            .iter()
            .find(|r| offset >= r.offset && offset - r.offset < r.len)
            .filter(|r| offset + len <= r.offset + r.len)
            .unwrap_or_else(|| panic!("guest range {offset:#x}+{len:#x} is not inside one region"));
        (r.addr + (offset - r.offset) as usize) as *mut u8
    }

    /// Reads one byte from user space, faulting its page in if needed.
    pub fn read_byte(&self, offset: u64) -> u8 {
        // SAFETY: in bounds of a live mapping (checked by `ptr`).
        unsafe { std::ptr::read_volatile(self.ptr(offset, 1)) }
    }

    /// Writes one byte from user space, faulting its page in if needed.
    pub fn write_byte(&self, offset: u64, value: u8) {
        // SAFETY: in bounds of a live mapping (checked by `ptr`).
        unsafe { std::ptr::write_volatile(self.ptr(offset, 1), value) }
    }

    /// Copies guest bytes `[offset, offset + buf.len())` out from user space (possibly
    /// across regions), faulting pages in.
    pub fn read(&self, mut offset: u64, mut buf: &mut [u8]) {
        while !buf.is_empty() {
            let r = self
                .regions
                .iter()
                .find(|r| offset >= r.offset && offset - r.offset < r.len)
                .unwrap_or_else(|| panic!("guest offset {offset:#x} is outside guest memory"));
            let n = ((r.offset + r.len - offset) as usize).min(buf.len());
            // SAFETY: `n` bytes in bounds of the region's live mapping.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    (r.addr + (offset - r.offset) as usize) as *const u8,
                    buf.as_mut_ptr(),
                    n,
                );
            }
            buf = &mut buf[n..];
            offset += n as u64;
        }
    }

    /// Reads guest bytes through the kernel: `write(2)`s them from guest memory into a
    /// memfd, so the faults happen in kernel mode (`copy_from_user`), the way KVM's faults on
    /// guest memory do. The range must lie in one region.
    pub fn read_via_kernel(&self, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let src = self.ptr(offset, len);
        // SAFETY: plain syscall; the name is a NUL-terminated literal.
        let fd = unsafe { libc::memfd_create(c"uffd-sim".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just gave us this descriptor.
        let memfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut written = 0u64;
        while written < len {
            // SAFETY: the source range is in bounds of a live mapping.
            let n = unsafe {
                libc::write(
                    memfd.as_raw_fd(),
                    src.add(written as usize).cast(),
                    (len - written) as usize,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            written += n as u64;
        }
        let mut out = vec![0u8; len as usize];
        // SAFETY: reading into a buffer we own.
        let n = unsafe { libc::pread(memfd.as_raw_fd(), out.as_mut_ptr().cast(), out.len(), 0) };
        if n < 0 || n as u64 != len {
            return Err(io::Error::other("short read back from the memfd"));
        }
        Ok(out)
    }

    /// `madvise(MADV_DONTNEED)` on guest bytes `[offset, offset + len)`, as Firecracker does
    /// when the balloon inflates: the pages are dropped and the handler gets
    /// `UFFD_EVENT_REMOVE` (this blocks until the handler has read it).
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let p = self.ptr(offset, len);
        // SAFETY: advice on a page-aligned range of our own mapping.
        let r = unsafe { libc::madvise(p.cast(), len as usize, libc::MADV_DONTNEED) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for SimulatedVm {
    fn drop(&mut self) {
        for r in &self.regions {
            // SAFETY: unmapping exactly the mappings created in `new`.
            unsafe {
                libc::munmap(r.addr as *mut libc::c_void, r.len as usize);
            }
        }
    }
}
