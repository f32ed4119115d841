//! Firecracker's Uffd backend handshake: the handler listens on a unix stream socket
//! (`mem_backend.backend_path` of `PUT /snapshot/load`); Firecracker connects and, in one
//! `sendmsg`, sends the JSON array of [`GuestRegionUffdMapping`]s as the body and the
//! userfaultfd as `SCM_RIGHTS` ancillary data. Nothing else is ever sent.
//!
//! Recent Firecracker keeps its end of the socket open until it exits (it `forget`s the
//! stream so the close cannot overtake the message); older releases close it right after
//! the `sendmsg`. So end-of-stream says nothing reliable about the VM; the serving loop
//! watches the peer's pid instead (see [`crate::Handler`]).

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::sys::Uffd;

/// One guest memory region as Firecracker describes it in the handshake
/// (`GuestRegionUffdMapping` in `src/vmm/src/persist.rs`).
///
/// On the wire (current Firecracker):
/// `{"base_host_virt_addr": u64, "size": usize, "offset": u64, "page_size": usize,
/// "page_size_kib": usize}`. `page_size_kib` is deprecated (to go in 2.0) and, despite its
/// name, also in **bytes** (4096, or 2097152 with hugetlbfs); releases from before
/// `page_size` existed send only `page_size_kib`. Parsing accepts either; serializing writes both, as Firecracker
/// does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WireMapping", into = "WireMapping")]
pub struct GuestRegionUffdMapping {
    /// Host virtual address (in Firecracker's address space) where the region is mapped.
    pub base_host_virt_addr: u64,
    /// Region size in bytes.
    pub size: u64,
    /// Offset of the region's contents in the memory file (the running sum of the sizes of
    /// the regions before it).
    pub offset: u64,
    /// Page size of the region in bytes: 4096, or 2 MiB for hugetlbfs-backed memory.
    pub page_size: u64,
}

impl GuestRegionUffdMapping {
    /// Whether `addr` (a host virtual address) lies in the region.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base_host_virt_addr && addr - self.base_host_virt_addr < self.size
    }

    /// The memory-file offset backing host address `addr`, if the region covers it.
    pub fn file_offset(&self, addr: u64) -> Option<u64> {
        self.contains(addr)
            .then(|| self.offset + (addr - self.base_host_virt_addr))
    }
}

#[derive(Serialize, Deserialize)]
struct WireMapping {
    base_host_virt_addr: u64,
    size: u64,
    offset: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    page_size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    page_size_kib: Option<u64>,
}

impl TryFrom<WireMapping> for GuestRegionUffdMapping {
    type Error = String;

    fn try_from(w: WireMapping) -> Result<Self, String> {
        let page_size = w
            .page_size
            .or(w.page_size_kib)
            .ok_or("neither page_size nor page_size_kib is present")?;
        if !page_size.is_power_of_two() || page_size < 4096 {
            return Err(format!(
                "page size {page_size} is not a power of two of at least 4096 bytes"
            ));
        }
        Ok(Self {
            base_host_virt_addr: w.base_host_virt_addr,
            size: w.size,
            offset: w.offset,
            page_size,
        })
    }
}

impl From<GuestRegionUffdMapping> for WireMapping {
    fn from(m: GuestRegionUffdMapping) -> Self {
        Self {
            base_host_virt_addr: m.base_host_virt_addr,
            size: m.size,
            offset: m.offset,
            page_size: Some(m.page_size),
            page_size_kib: Some(m.page_size),
        }
    }
}

/// Parses a handshake body (the JSON array Firecracker sends).
pub fn parse_mappings(body: &[u8]) -> Result<Vec<GuestRegionUffdMapping>> {
    serde_json::from_slice(body).map_err(|source| Error::Mappings {
        body: String::from_utf8_lossy(body).into_owned(),
        source,
    })
}

/// Credentials of the process that connected (`SO_PEERCRED`), as of its `connect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// What Firecracker handed over: the userfaultfd, the region layout, and the connection
/// (kept open: recent Firecracker closes its end only when it exits).
#[derive(Debug)]
pub struct Handshake {
    /// The userfaultfd Firecracker registered its guest memory with.
    pub uffd: Uffd,
    /// The guest regions, in the order Firecracker sent them.
    pub mappings: Vec<GuestRegionUffdMapping>,
    /// Who connected; `None` when the kernel could not say (pid 0: another pid namespace).
    pub peer: Option<PeerCred>,
    /// The accepted connection.
    pub stream: UnixStream,
}

/// A listening uffd socket. Created by [`UffdListener::bind`] (mode 0600) and unlinked on
/// drop: it never removes a path it did not create.
#[derive(Debug)]
pub struct UffdListener {
    listener: UnixListener,
    path: PathBuf,
}

impl UffdListener {
    /// Binds and listens on `path`, which must not exist. Bind before `PUT /snapshot/load`:
    /// Firecracker connects during the load and fails it if nobody listens.
    pub fn bind(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let listener =
            UnixListener::bind(&path).map_err(|e| Error::io("bind the uffd socket", &path, e))?;
        let this = Self { listener, path };
        std::fs::set_permissions(&this.path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io("restrict the uffd socket to its owner", &this.path, e))?;
        Ok(this)
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` for Firecracker to connect and complete the handshake (the
    /// same deadline covers both).
    pub fn accept(&self, timeout: Duration) -> Result<Handshake> {
        let deadline = Instant::now() + timeout;
        if !wait_readable(self.listener.as_raw_fd(), deadline)
            .map_err(|e| Error::io("poll the uffd socket", &self.path, e))?
        {
            return Err(Error::HandshakeTimeout {
                what: "Firecracker to connect",
                path: self.path.clone(),
                waited: timeout,
            });
        }
        let (stream, _) = self
            .listener
            .accept()
            .map_err(|e| Error::io("accept on the uffd socket", &self.path, e))?;
        receive_handshake(stream, &self.path, deadline)
    }
}

impl Drop for UffdListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Room for the descriptors of the guest_memfd variant (3), so that one is reported as
/// unsupported instead of being truncated.
const MAX_FDS: usize = 4;

/// Reads the handshake from an accepted connection: the body may span several reads when
/// there are many regions; the descriptor rides on the first.
pub fn receive_handshake(stream: UnixStream, path: &Path, deadline: Instant) -> Result<Handshake> {
    let started = Instant::now();
    let peer = peer_cred(&stream);
    let mut body = Vec::with_capacity(16 << 10);
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if !wait_readable(stream.as_raw_fd(), deadline)
            .map_err(|e| Error::io("poll the uffd connection", path, e))?
        {
            return Err(Error::HandshakeTimeout {
                what: "the handshake message",
                path: path.to_path_buf(),
                waited: started.elapsed(),
            });
        }
        let n = recv_with_fds(&stream, &mut buf, &mut fds)
            .map_err(|e| Error::io("receive the handshake on", path, e))?;
        body.extend_from_slice(&buf[..n]);
        let complete = match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(_) => true,
            Err(e) if e.is_eof() && n > 0 => false,
            Err(_) => true, // let parse_mappings report it
        };
        if complete || n == 0 {
            break;
        }
    }
    if fds.len() > 1 {
        return Err(Error::UnsupportedFds {
            path: path.to_path_buf(),
            count: fds.len(),
        });
    }
    let Some(fd) = fds.pop() else {
        return Err(Error::NoUffd {
            path: path.to_path_buf(),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    };
    let mappings = parse_mappings(&body)?;
    let uffd = Uffd::from_owned(fd);
    uffd.set_nonblocking().map_err(|source| Error::Uffd {
        op: "make non-blocking",
        source,
    })?;
    Ok(Handshake {
        uffd,
        mappings,
        peer,
        stream,
    })
}

/// Firecracker's side of the handshake (`send_uffd_handshake` in `persist.rs`): connects to
/// `path` and sends `mappings` as JSON with `uffd` as `SCM_RIGHTS`, in a single `sendmsg`.
/// Returns the connection, which Firecracker keeps open. Used by [`crate::sim`], the tests
/// and the bench.
pub fn send_handshake(
    path: &Path,
    mappings: &[GuestRegionUffdMapping],
    uffd: BorrowedFd<'_>,
) -> io::Result<UnixStream> {
    let body = serde_json::to_vec(mappings).map_err(io::Error::other)?;
    let stream = UnixStream::connect(path)?;
    let mut iov = libc::iovec {
        iov_base: body.as_ptr() as *mut libc::c_void,
        iov_len: body.len(),
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(size_of::<RawFd>() as u32) } as usize;
    let mut cmsg_buf = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data; zeroed is a valid initial state.
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer is CMSG_SPACE(sizeof(int)) bytes, aligned, and owned;
    // CMSG_FIRSTHDR/CMSG_DATA point inside it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), uffd.as_raw_fd());
    }
    // SAFETY: msg points at live buffers for the duration of the call.
    let sent = unsafe { libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    if sent as usize != body.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("sent {sent} of {} handshake bytes", body.len()),
        ));
    }
    Ok(stream)
}

fn recv_with_fds(stream: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: pure size computation.
    let space = unsafe { libc::CMSG_SPACE((MAX_FDS * size_of::<RawFd>()) as u32) } as usize;
    let mut cmsg_buf = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data; zeroed is a valid initial state.
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg_buf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = loop {
        // SAFETY: msg points at live, owned buffers.
        let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    // SAFETY: walking the control messages the kernel wrote into our buffer; every
    // SCM_RIGHTS payload is an array of descriptors now owned by this process.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let payload = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..payload / size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other(format!(
            "the handshake carried more than {MAX_FDS} file descriptors"
        )));
    }
    Ok(n)
}

fn peer_cred(stream: &UnixStream) -> Option<PeerCred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which we own.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    (r == 0 && cred.pid > 0).then_some(PeerCred {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// Polls `fd` for input until `deadline`; `Ok(false)` on timeout.
fn wait_readable(fd: RawFd, deadline: Instant) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one pollfd we own.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r > 0 {
            return Ok(true);
        }
        if r == 0 {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            continue;
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

    /// The body current Firecracker sends for a 4 GiB x86_64 guest with 4 KiB pages, whose
    /// RAM the 32-bit MMIO gap splits into two regions; byte for byte what `serde_json`
    /// writes for its `Vec<GuestRegionUffdMapping>`.
    const FIRECRACKER_BODY: &str = concat!(
        r#"[{"base_host_virt_addr":140127082909696,"size":3221225472,"offset":0,"page_size":4096,"page_size_kib":4096},"#,
        r#"{"base_host_virt_addr":140130304135168,"size":1073741824,"offset":3221225472,"page_size":4096,"page_size_kib":4096}]"#
    );

    #[test]
    fn parses_a_firecracker_handshake_body() -> Result<()> {
        let m = parse_mappings(FIRECRACKER_BODY.as_bytes())?;
        assert_eq!(
            m,
            vec![
                GuestRegionUffdMapping {
                    base_host_virt_addr: 140_127_082_909_696,
                    size: 3 << 30,
                    offset: 0,
                    page_size: 4096,
                },
                GuestRegionUffdMapping {
                    base_host_virt_addr: 140_130_304_135_168,
                    size: 1 << 30,
                    offset: 3 << 30,
                    page_size: 4096,
                },
            ]
        );
        assert_eq!(
            m[1].file_offset(140_130_304_135_168 + 8192),
            Some((3 << 30) + 8192)
        );
        assert_eq!(m[0].file_offset(140_130_304_135_168), None);
        // Serializing writes the same wire format back.
        assert_eq!(
            serde_json::to_string(&m).ok().as_deref(),
            Some(FIRECRACKER_BODY)
        );
        Ok(())
    }

    #[test]
    fn accepts_legacy_and_huge_page_forms() -> Result<()> {
        // Releases before `page_size` existed: only `page_size_kib`, in bytes.
        let legacy =
            br#"[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size_kib":4096}]"#;
        assert_eq!(parse_mappings(legacy)?[0].page_size, 4096);
        let huge = br#"[{"base_host_virt_addr":2097152,"size":4194304,"offset":0,"page_size":2097152,"page_size_kib":2097152}]"#;
        assert_eq!(parse_mappings(huge)?[0].page_size, 2 << 20);
        Ok(())
    }

    #[test]
    fn rejects_malformed_bodies() {
        for bad in [
            &br#"[{"base_host_virt_addr":0,"size":4096,"offset":0}]"#[..],
            br#"[{"base_host_virt_addr":0,"size":4096,"offset":0,"page_size":4}]"#,
            br#"[{"base_host_virt_addr":0,"size":4096,"offset":0,"page_size":3000}]"#,
            br#"{"base_host_virt_addr":0}"#,
            br#"[{"base_host_virt_addr":0,"size":4096,"#,
        ] {
            assert!(
                matches!(parse_mappings(bad), Err(Error::Mappings { .. })),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
