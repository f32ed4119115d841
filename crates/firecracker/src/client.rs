//! The Firecracker API client: blocking HTTP/1.1 over the VM's unix socket, one connection per
//! call, a deadline per call from [`TimeoutPolicy`], and a log of every call made (the number
//! of host-side API calls per record and per consume is a reported figure).
//!
//! Why not hyper: the API is strictly request/response with `Content-Length` bodies and the
//! orchestrator drives one VM call at a time, so an async runtime would add a dependency tree
//! and a thread pool to get what `UnixStream` plus socket timeouts already give. A fresh
//! connection per call means a call that timed out can never leave a half-read answer in front
//! of the next one.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::http::{self, HttpError, Kind};
use crate::models::*;
use crate::timeouts::TimeoutPolicy;

/// The HTTP methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Put,
    Patch,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed API call. Every variant names the call (`PUT /snapshot/create`).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{method} {path}: cannot connect to the Firecracker API socket {}: {source}", socket.display())]
    Connect {
        method: Method,
        path: String,
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{method} {path}: no complete answer within {timeout:?}; the VM's state is unknown, kill it")]
    Timeout {
        method: Method,
        path: String,
        timeout: Duration,
    },
    #[error("{method} {path}: I/O error on the API socket: {source}")]
    Io {
        method: Method,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{method} {path}: {detail}")]
    Protocol {
        method: Method,
        path: String,
        detail: String,
    },
    /// Firecracker refused the call; `fault_message` is its explanation.
    #[error("{method} {path}: Firecracker answered HTTP {status}: {}", fault_message.as_deref().unwrap_or(body.as_str()))]
    Status {
        method: Method,
        path: String,
        status: u16,
        fault_message: Option<String>,
        /// The raw body (when it was not the usual `{"fault_message": ...}`).
        body: String,
    },
    #[error("{method} {path}: unexpected answer body {body:?}: {source}")]
    Decode {
        method: Method,
        path: String,
        body: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid {what} {id:?}: Firecracker ids are 1-64 ASCII letters, digits or '_'")]
    InvalidId { what: &'static str, id: String },
}

impl ApiError {
    /// The HTTP status Firecracker answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Firecracker's `fault_message`, if it answered with one.
    pub fn fault_message(&self) -> Option<&str> {
        match self {
            ApiError::Status { fault_message, .. } => fault_message.as_deref(),
            _ => None,
        }
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, ApiError::Timeout { .. })
    }
}

/// One call as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    pub method: Method,
    pub path: String,
    /// HTTP status, `None` when no answer arrived (connect error, timeout).
    pub status: Option<u16>,
    pub elapsed: Duration,
}

/// A client for one Firecracker API socket. Cheap to create; `&self` methods so one client can
/// be shared.
#[derive(Debug)]
pub struct Client {
    socket: PathBuf,
    timeouts: TimeoutPolicy,
    /// Guest memory size for snapshot deadlines; 0 = unknown.
    mem_size_mib: AtomicU64,
    calls: Mutex<Vec<CallRecord>>,
}

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client {
            socket: socket.into(),
            timeouts: TimeoutPolicy::DEFAULT,
            mem_size_mib: AtomicU64::new(0),
            calls: Mutex::new(Vec::new()),
        }
    }

    pub fn with_timeouts(mut self, timeouts: TimeoutPolicy) -> Client {
        self.timeouts = timeouts;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn timeouts(&self) -> &TimeoutPolicy {
        &self.timeouts
    }

    /// Tells the client the guest's memory size, which sizes the snapshot create/load
    /// deadlines. [`Client::put_machine_config`] sets it; before a load, set it from the
    /// snapshot's manifest.
    pub fn set_memory_size_mib(&self, mem_size_mib: u64) {
        self.mem_size_mib.store(mem_size_mib, Ordering::Relaxed);
    }

    pub fn memory_size_mib(&self) -> Option<u64> {
        match self.mem_size_mib.load(Ordering::Relaxed) {
            0 => None,
            mib => Some(mib),
        }
    }

    /// How many API calls this client has made (failed ones included).
    pub fn call_count(&self) -> usize {
        self.calls.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Every call made so far, in order.
    pub fn calls(&self) -> Vec<CallRecord> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    pub fn reset_calls(&self) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.clear();
        }
    }

    // ---- GET ----

    /// `GET /`: instance id, state (`Not started`, `Running`, `Paused`) and VMM version.
    pub fn describe_instance(&self) -> Result<InstanceInfo, ApiError> {
        self.get("/")
    }

    /// `GET /version`.
    pub fn version(&self) -> Result<FirecrackerVersion, ApiError> {
        self.get("/version")
    }

    /// `GET /machine-config`.
    pub fn machine_config(&self) -> Result<MachineConfiguration, ApiError> {
        self.get("/machine-config")
    }

    /// `GET /vm/config`: every configured resource (after a restore, what the vmstate held).
    pub fn vm_config(&self) -> Result<FullVmConfiguration, ApiError> {
        self.get("/vm/config")
    }

    /// `GET /balloon`.
    pub fn balloon(&self) -> Result<Balloon, ApiError> {
        self.get("/balloon")
    }

    // ---- pre-boot configuration ----

    /// `PUT /machine-config`; also records the memory size for snapshot deadlines.
    pub fn put_machine_config(&self, config: &MachineConfiguration) -> Result<(), ApiError> {
        self.send(Method::Put, "/machine-config", config, self.timeouts.config)?;
        self.set_memory_size_mib(config.mem_size_mib);
        Ok(())
    }

    /// `PUT /boot-source`.
    pub fn put_boot_source(&self, boot_source: &BootSource) -> Result<(), ApiError> {
        self.send(
            Method::Put,
            "/boot-source",
            boot_source,
            self.timeouts.config,
        )
    }

    /// `PUT /drives/{drive_id}`.
    pub fn put_drive(&self, drive: &Drive) -> Result<(), ApiError> {
        let path = format!("/drives/{}", checked_id("drive_id", &drive.drive_id)?);
        self.send(Method::Put, &path, drive, self.timeouts.config)
    }

    /// `PUT /network-interfaces/{iface_id}`.
    pub fn put_network_interface(&self, iface: &NetworkInterface) -> Result<(), ApiError> {
        let path = format!(
            "/network-interfaces/{}",
            checked_id("iface_id", &iface.iface_id)?
        );
        self.send(Method::Put, &path, iface, self.timeouts.config)
    }

    /// `PUT /vsock`.
    pub fn put_vsock(&self, vsock: &Vsock) -> Result<(), ApiError> {
        self.send(Method::Put, "/vsock", vsock, self.timeouts.config)
    }

    /// `PUT /entropy`.
    pub fn put_entropy(&self, entropy: &EntropyDevice) -> Result<(), ApiError> {
        self.send(Method::Put, "/entropy", entropy, self.timeouts.config)
    }

    /// `PUT /balloon`.
    pub fn put_balloon(&self, balloon: &Balloon) -> Result<(), ApiError> {
        self.send(Method::Put, "/balloon", balloon, self.timeouts.config)
    }

    /// `PUT /serial`.
    pub fn put_serial(&self, serial: &SerialDevice) -> Result<(), ApiError> {
        self.send(Method::Put, "/serial", serial, self.timeouts.config)
    }

    /// `PUT /logger` (allowed before a snapshot load).
    pub fn put_logger(&self, logger: &Logger) -> Result<(), ApiError> {
        self.send(Method::Put, "/logger", logger, self.timeouts.config)
    }

    /// `PUT /metrics` (allowed before a snapshot load; once per process).
    pub fn put_metrics(&self, metrics: &Metrics) -> Result<(), ApiError> {
        self.send(Method::Put, "/metrics", metrics, self.timeouts.config)
    }

    // ---- actions and VM state ----

    /// `PUT /actions`.
    pub fn action(&self, action_type: ActionType) -> Result<(), ApiError> {
        let timeout = match action_type {
            ActionType::InstanceStart => self.timeouts.start,
            ActionType::FlushMetrics | ActionType::SendCtrlAltDel => self.timeouts.config,
        };
        self.send(
            Method::Put,
            "/actions",
            &InstanceActionInfo { action_type },
            timeout,
        )
    }

    /// `PUT /actions {"action_type": "InstanceStart"}`: boots the configured VM.
    pub fn instance_start(&self) -> Result<(), ApiError> {
        self.action(ActionType::InstanceStart)
    }

    /// `PUT /actions {"action_type": "SendCtrlAltDel"}` (x86_64).
    pub fn send_ctrl_alt_del(&self) -> Result<(), ApiError> {
        self.action(ActionType::SendCtrlAltDel)
    }

    /// `PUT /actions {"action_type": "FlushMetrics"}`.
    pub fn flush_metrics(&self) -> Result<(), ApiError> {
        self.action(ActionType::FlushMetrics)
    }

    /// `PATCH /vm`.
    pub fn patch_vm(&self, state: VmState) -> Result<(), ApiError> {
        self.send(Method::Patch, "/vm", &Vm { state }, self.timeouts.config)
    }

    /// `PATCH /vm {"state": "Paused"}`.
    pub fn pause(&self) -> Result<(), ApiError> {
        self.patch_vm(VmState::Paused)
    }

    /// `PATCH /vm {"state": "Resumed"}`.
    pub fn resume(&self) -> Result<(), ApiError> {
        self.patch_vm(VmState::Resumed)
    }

    // ---- post-boot updates ----

    /// `PATCH /drives/{drive_id}`.
    pub fn patch_drive(&self, drive: &PartialDrive) -> Result<(), ApiError> {
        let path = format!("/drives/{}", checked_id("drive_id", &drive.drive_id)?);
        self.send(Method::Patch, &path, drive, self.timeouts.config)
    }

    /// `PATCH /network-interfaces/{iface_id}`.
    pub fn patch_network_interface(&self, iface: &PartialNetworkInterface) -> Result<(), ApiError> {
        let path = format!(
            "/network-interfaces/{}",
            checked_id("iface_id", &iface.iface_id)?
        );
        self.send(Method::Patch, &path, iface, self.timeouts.config)
    }

    /// `PATCH /balloon`.
    pub fn patch_balloon(&self, update: &BalloonUpdate) -> Result<(), ApiError> {
        self.send(Method::Patch, "/balloon", update, self.timeouts.config)
    }

    // ---- snapshots ----

    /// `PUT /snapshot/create`; the VM must be paused. Deadline:
    /// [`TimeoutPolicy::snapshot`] of the known memory size.
    pub fn create_snapshot(&self, params: &SnapshotCreateParams) -> Result<(), ApiError> {
        let timeout = self.timeouts.snapshot(self.memory_size_mib());
        self.send(Method::Put, "/snapshot/create", params, timeout)
    }

    /// `PUT /snapshot/load` on a fresh process. Deadline: [`TimeoutPolicy::snapshot`] of the
    /// memory size set with [`Client::set_memory_size_mib`] (unknown: the policy's worst case).
    pub fn load_snapshot(&self, params: &SnapshotLoadParams) -> Result<(), ApiError> {
        let timeout = self.timeouts.snapshot(self.memory_size_mib());
        self.send(Method::Put, "/snapshot/load", params, timeout)
    }

    // ---- raw ----

    /// Any call, with a JSON body or none; answers the JSON body of a 2xx (None when empty).
    /// Counted like every other call. For endpoints without a typed method (MMDS, pmem, ...).
    pub fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<Option<Value>, ApiError> {
        let bytes = match body {
            Some(v) => Some(serde_json::to_vec(v).map_err(|source| ApiError::Decode {
                method,
                path: path.to_owned(),
                body: String::new(),
                source,
            })?),
            None => None,
        };
        let answer = self.exchange(method, path, bytes.as_deref(), timeout)?;
        if answer.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&answer)
            .map(Some)
            .map_err(|source| decode_error(method, path, &answer, source))
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let answer = self.exchange(Method::Get, path, None, self.timeouts.config)?;
        serde_json::from_slice(&answer)
            .map_err(|source| decode_error(Method::Get, path, &answer, source))
    }

    fn send<T: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: &T,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        let bytes = serde_json::to_vec(body).map_err(|source| ApiError::Decode {
            method,
            path: path.to_owned(),
            body: String::new(),
            source,
        })?;
        self.exchange(method, path, Some(&bytes), timeout)?;
        Ok(())
    }

    /// One request/response on a fresh connection; the answer body of a 2xx.
    fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Vec<u8>, ApiError> {
        let started = Instant::now();
        let result = self.exchange_inner(method, path, body, started + timeout, timeout);
        let status = match &result {
            Ok((status, _)) => Some(*status),
            Err(e) => e.status(),
        };
        let elapsed = started.elapsed();
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(CallRecord {
                method,
                path: path.to_owned(),
                status,
                elapsed,
            });
        }
        tracing::debug!(%method, path, ?status, ?elapsed, "firecracker api call");
        result.map(|(_, body)| body)
    }

    fn exchange_inner(
        &self,
        method: Method,
        path: &str,
        body: Option<&[u8]>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>), ApiError> {
        let timed_out = || ApiError::Timeout {
            method,
            path: path.to_owned(),
            timeout,
        };
        let io_error = |source: io::Error| {
            if matches!(
                source.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                timed_out()
            } else {
                ApiError::Io {
                    method,
                    path: path.to_owned(),
                    source,
                }
            }
        };
        let mut stream = UnixStream::connect(&self.socket).map_err(|source| ApiError::Connect {
            method,
            path: path.to_owned(),
            socket: self.socket.clone(),
            source,
        })?;
        let left = remaining(deadline).ok_or_else(timed_out)?;
        stream.set_write_timeout(Some(left)).map_err(io_error)?;
        http::write_request(&mut stream, method.as_str(), path, body).map_err(io_error)?;
        let reader = stream.try_clone().map_err(io_error)?;
        let mut set_deadline = || -> io::Result<()> {
            let left = remaining(deadline)
                .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "deadline passed"))?;
            reader.set_read_timeout(Some(left))
        };
        let message = match http::read_message(&mut stream, Kind::Response, &mut set_deadline) {
            Ok(Some(message)) => message,
            Ok(None) => {
                return Err(ApiError::Protocol {
                    method,
                    path: path.to_owned(),
                    detail: "Firecracker closed the connection without answering".into(),
                })
            }
            Err(HttpError::Io(e)) => return Err(io_error(e)),
            Err(HttpError::Malformed(detail)) => {
                return Err(ApiError::Protocol {
                    method,
                    path: path.to_owned(),
                    detail,
                })
            }
        };
        let status = message.status().map_err(|e| ApiError::Protocol {
            method,
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        if (200..300).contains(&status) {
            return Ok((status, message.body));
        }
        let fault_message = serde_json::from_slice::<ApiFault>(&message.body)
            .ok()
            .and_then(|f| f.fault_message);
        Err(ApiError::Status {
            method,
            path: path.to_owned(),
            status,
            fault_message,
            body: String::from_utf8_lossy(&message.body).into_owned(),
        })
    }
}

fn remaining(deadline: Instant) -> Option<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    // A zero socket timeout means "block forever": treat it as expired.
    (!left.is_zero()).then_some(left)
}

fn decode_error(method: Method, path: &str, body: &[u8], source: serde_json::Error) -> ApiError {
    ApiError::Decode {
        method,
        path: path.to_owned(),
        body: String::from_utf8_lossy(body).into_owned(),
        source,
    }
}

/// Firecracker accepts resource ids of ASCII alphanumerics and `_`, at most 64 long; checking
/// here also keeps a caller's id from rewriting the request path.
fn checked_id<'a>(what: &'static str, id: &'a str) -> Result<&'a str, ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(id)
    } else {
        Err(ApiError::InvalidId {
            what,
            id: id.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(checked_id("drive_id", "rootfs").is_ok());
        assert!(checked_id("drive_id", "git_bundle2").is_ok());
        for bad in ["", "../vm", "a/b", "a b", "x?y", &"a".repeat(65)] {
            assert!(checked_id("drive_id", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn connect_error_names_the_socket_and_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let client = Client::new(dir.path().join("missing.sock"));
        let err = client.version().unwrap_err();
        assert!(matches!(err, ApiError::Connect { .. }), "{err}");
        assert!(err.to_string().contains("missing.sock"), "{err}");
        assert_eq!(client.call_count(), 1);
        assert_eq!(client.calls()[0].status, None);
    }
}
