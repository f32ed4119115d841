//! The client's error type. Each variant names the op or the endpoint it concerns.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::ErrorCode;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The unix socket (the agent's, or Firecracker's vsock UDS) could not be connected.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: io::Error,
    },
    /// Firecracker closed the connection instead of answering `CONNECT`: nothing listens on
    /// the guest port (yet). Retryable.
    #[error(
        "firecracker vsock {} refused CONNECT {port}: nothing is listening on that guest port \
         (yet)",
        uds.display()
    )]
    NoListener { uds: PathBuf, port: u32 },
    /// Firecracker's answer to `CONNECT` was not `OK <port>`.
    #[error("firecracker vsock {} answered CONNECT {port} with {reply:?}, expected \"OK <port>\"", uds.display())]
    Handshake {
        uds: PathBuf,
        port: u32,
        reply: String,
    },
    /// `wait_ready` gave up.
    #[error("agent at {endpoint} not ready after {:.1}s ({attempts} attempts); last error: {last}", waited.as_secs_f64())]
    NotReady {
        endpoint: String,
        waited: Duration,
        attempts: u32,
        last: Box<ClientError>,
    },
    #[error("the agent speaks protocol version {agent}, this client {client}: update the guest image or the host")]
    Incompatible { agent: u32, client: u32 },
    #[error("{op}: i/o error on the agent connection: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{op}: the agent closed the connection")]
    Closed { op: &'static str },
    #[error("{op}: no answer from the agent within {:.1}s", waited.as_secs_f64())]
    Timeout { op: &'static str, waited: Duration },
    /// The deadline passed before the request could be sent.
    #[error("{op}: the deadline had already passed")]
    DeadlinePassed { op: &'static str },
    /// The agent sent something this client does not understand.
    #[error("{op}: protocol error: {detail}")]
    Protocol { op: &'static str, detail: String },
    /// The agent answered with an error; the connection stays usable.
    #[error("{op}: the agent reported {code}: {message}")]
    Agent {
        op: &'static str,
        code: ErrorCode,
        message: String,
    },
    #[error("{op}: request of {len} bytes exceeds the protocol's line limit of {max}")]
    TooLarge {
        op: &'static str,
        len: usize,
        max: usize,
    },
    /// An earlier transport error left the connection in an unknown state.
    #[error("the agent connection is unusable after an earlier error ({0}); reconnect")]
    Broken(String),
}

impl ClientError {
    /// Whether trying again later (a new connection) may succeed: the agent or the VM is
    /// still starting, or a restore reset the connection.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connect { source, .. } | ClientError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::NotFound
                    | io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::WouldBlock
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::Interrupted
            ),
            ClientError::NoListener { .. }
            | ClientError::Closed { .. }
            | ClientError::Timeout { .. }
            | ClientError::Broken(_) => true,
            ClientError::Agent { code, .. } => *code == ErrorCode::Busy,
            ClientError::Handshake { .. }
            | ClientError::NotReady { .. }
            | ClientError::Incompatible { .. }
            | ClientError::DeadlinePassed { .. }
            | ClientError::Protocol { .. }
            | ClientError::TooLarge { .. } => false,
        }
    }

    /// The agent's error code, when the agent refused the request.
    pub fn agent_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Agent { code, .. } => Some(*code),
            _ => None,
        }
    }
}
