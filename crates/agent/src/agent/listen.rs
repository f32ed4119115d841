//! Where the agent listens: an `AF_VSOCK` port (in a guest) or a unix socket (tests,
//! debugging), and the connected-socket type both hand out.

use std::ffi::c_int;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// `AF_VSOCK` from `<linux/socket.h>`; spelled out because not every libc target exports it.
const AF_VSOCK: c_int = 40;

/// A `--listen` address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `vsock:PORT`: any CID, this port.
    Vsock(u32),
    /// `unix:PATH`.
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(port) = s.strip_prefix("vsock:") {
            port.parse::<u32>()
                .ok()
                .filter(|&p| p != libc::VMADDR_PORT_ANY)
                .map(ListenAddr::Vsock)
                .ok_or_else(|| format!("`{s}`: the vsock port must be a number below 4294967295"))
        } else if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                Err(format!("`{s}`: the unix socket path is empty"))
            } else {
                Ok(ListenAddr::Unix(PathBuf::from(path)))
            }
        } else {
            Err(format!("`{s}`: expected vsock:PORT or unix:PATH"))
        }
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Vsock(port) => write!(f, "vsock:{port}"),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Why the agent could not start listening.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "AF_VSOCK is not available on this kernel (socket(AF_VSOCK) failed: {source}); the guest \
         needs CONFIG_VIRTIO_VSOCKETS and the VM a vsock device (Firecracker: PUT /vsock before \
         boot). Use --listen unix:PATH outside a VM"
    )]
    VsockUnavailable {
        #[source]
        source: io::Error,
    },
    #[error("cannot {op} vsock port {port}: {source}{}", in_use_hint(source))]
    Vsock {
        op: &'static str,
        port: u32,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on unix socket {}: {source}{}", path.display(), in_use_hint(source))]
    Unix {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn in_use_hint(err: &io::Error) -> &'static str {
    if err.kind() == io::ErrorKind::AddrInUse {
        " (is another agent running? a stale unix socket file must be removed by hand)"
    } else {
        ""
    }
}

impl ListenError {
    /// Classifies a failed `socket(AF_VSOCK, ...)`: errors meaning "no vsock in this kernel"
    /// become [`ListenError::VsockUnavailable`].
    pub fn from_vsock_socket(port: u32, source: io::Error) -> ListenError {
        match source.raw_os_error() {
            Some(
                libc::EAFNOSUPPORT
                | libc::EPROTONOSUPPORT
                | libc::ESOCKTNOSUPPORT
                | libc::ENODEV
                | libc::ENOSYS,
            ) => ListenError::VsockUnavailable { source },
            _ => ListenError::Vsock {
                op: "create a socket for",
                port,
                source,
            },
        }
    }
}

/// A bound, listening socket.
#[derive(Debug)]
pub enum Listener {
    Vsock {
        fd: OwnedFd,
        port: u32,
    },
    Unix {
        listener: UnixListener,
        path: PathBuf,
    },
}

fn cvt(ret: c_int) -> io::Result<c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl Listener {
    /// Binds and listens. A unix socket path that already exists is an error: the agent
    /// never removes a file it did not create.
    pub fn bind(addr: &ListenAddr) -> Result<Listener, ListenError> {
        match addr {
            ListenAddr::Vsock(port) => bind_vsock(*port),
            ListenAddr::Unix(path) => UnixListener::bind(path)
                .map(|listener| Listener::Unix {
                    listener,
                    path: path.clone(),
                })
                .map_err(|source| ListenError::Unix {
                    path: path.clone(),
                    source,
                }),
        }
    }

    /// Waits for the next connection. Accepted sockets are close-on-exec, so commands the
    /// agent runs (and daemons they leave, like a Bazel server) never hold a connection open.
    pub fn accept(&self) -> io::Result<SocketStream> {
        let fd = match self {
            Listener::Unix { listener, .. } => {
                return Ok(SocketStream(listener.accept()?.0.into()))
            }
            Listener::Vsock { fd, .. } => fd.as_raw_fd(),
        };
        loop {
            // SAFETY: plain accept4 on a listening socket we own; a null address is allowed.
            let ret = unsafe {
                libc::accept4(
                    fd,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            match cvt(ret) {
                // SAFETY: accept4 returned a new descriptor that nothing else owns.
                Ok(new) => return Ok(SocketStream(unsafe { OwnedFd::from_raw_fd(new) })),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Listener::Vsock { port, .. } => format!("vsock port {port} (any CID)"),
            Listener::Unix { path, .. } => format!("unix socket {}", path.display()),
        }
    }

    /// The unix socket file this listener created, to remove at shutdown.
    pub fn unix_path(&self) -> Option<&Path> {
        match self {
            Listener::Unix { path, .. } => Some(path),
            Listener::Vsock { .. } => None,
        }
    }
}

fn bind_vsock(port: u32) -> Result<Listener, ListenError> {
    // SAFETY: socket(2) has no memory arguments.
    let raw = cvt(unsafe { libc::socket(AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })
        .map_err(|e| ListenError::from_vsock_socket(port, e))?;
    // SAFETY: socket returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = AF_VSOCK as libc::sa_family_t;
    addr.svm_port = port;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    // SAFETY: addr is a valid sockaddr_vm and the length says so.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    })
    .map_err(|source| ListenError::Vsock {
        op: "bind",
        port,
        source,
    })?;
    // SAFETY: listen(2) on our socket.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), 128) }).map_err(|source| ListenError::Vsock {
        op: "listen on",
        port,
        source,
    })?;
    Ok(Listener::Vsock { fd, port })
}

/// A connected stream socket (unix or vsock). Writes use `MSG_NOSIGNAL`, so a vanished peer
/// is an `EPIPE` error rather than a signal.
#[derive(Debug)]
pub struct SocketStream(OwnedFd);

impl SocketStream {
    pub fn try_clone(&self) -> io::Result<SocketStream> {
        Ok(SocketStream(self.0.try_clone()?))
    }

    pub fn shutdown(&self) {
        // SAFETY: shutdown(2) on our socket; failure (already closed by the peer) is moot.
        unsafe { libc::shutdown(self.0.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

impl From<OwnedFd> for SocketStream {
    fn from(fd: OwnedFd) -> Self {
        SocketStream(fd)
    }
}

impl AsRawFd for SocketStream {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl IntoRawFd for SocketStream {
    fn into_raw_fd(self) -> RawFd {
        self.0.into_raw_fd()
    }
}

impl Read for SocketStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: buf is valid for writes of buf.len() bytes.
            let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

impl Write for SocketStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: buf is valid for reads of buf.len() bytes.
            let n = unsafe {
                libc::send(
                    self.0.as_raw_fd(),
                    buf.as_ptr().cast(),
                    buf.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_addresses() {
        assert_eq!("vsock:10789".parse(), Ok(ListenAddr::Vsock(10789)));
        assert_eq!(
            "unix:/tmp/a b.sock".parse(),
            Ok(ListenAddr::Unix(PathBuf::from("/tmp/a b.sock")))
        );
        assert!("vsock:".parse::<ListenAddr>().is_err());
        assert!("vsock:4294967295".parse::<ListenAddr>().is_err());
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("tcp:1".parse::<ListenAddr>().is_err());
    }

    #[test]
    fn missing_vsock_support_is_reported_clearly() {
        let err =
            ListenError::from_vsock_socket(10789, io::Error::from_raw_os_error(libc::EAFNOSUPPORT));
        assert!(matches!(err, ListenError::VsockUnavailable { .. }));
        let msg = err.to_string();
        assert!(msg.contains("AF_VSOCK is not available"), "{msg}");
        assert!(msg.contains("CONFIG_VIRTIO_VSOCKETS"), "{msg}");

        let other = ListenError::from_vsock_socket(1, io::Error::from_raw_os_error(libc::EMFILE));
        assert!(matches!(other, ListenError::Vsock { .. }), "{other}");
    }
}
