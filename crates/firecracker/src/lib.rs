//! Firecracker for `bazel-diff-snap`: a typed client for the Firecracker API over its unix
//! socket ([`Client`]), the microVM process with its per-VM run directory ([`VmProcess`],
//! [`RunDir`]), and, behind the `fake` feature, a fake Firecracker that checks every request
//! against the swagger file (`firecracker-api.yaml`) so tests can run without KVM.
//!
//! Nothing here knows about Bazel or the snapshot store: the orchestrator drives these pieces.
//!
//! What the orchestrator calls, in order (see the crate README for bodies and counts):
//! - record: spawn, `PUT /logger`, `PUT /metrics`, `PUT /machine-config`, `PUT /boot-source`,
//!   `PUT /drives/{id}`..., `PUT /vsock`, `PUT /entropy`, `PUT /actions InstanceStart`, (guest
//!   agent ready, warmup), `PATCH /vm Paused`, `PUT /snapshot/create`, kill.
//! - consume: spawn, `PUT /logger`, `PUT /metrics`, `PUT /snapshot/load` (`resume_vm: true`),
//!   (guest agent), kill.

pub mod client;
mod http;
pub mod models;
pub mod process;
pub mod timeouts;

#[cfg(feature = "fake")]
pub mod fake;

pub use client::{ApiError, CallRecord, Client, Method};
pub use models::*;
pub use process::{JailerConfig, ProcessError, RunDir, VmConfig, VmProcess};
pub use timeouts::TimeoutPolicy;
