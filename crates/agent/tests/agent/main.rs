//! End-to-end tests: the real agent binary on a unix socket, driven by the real client.
//! (No VM here: the hybrid-vsock path goes through a fake Firecracker muxer, see
//! `transport.rs`.)

#![allow(clippy::unwrap_used)]

mod exec;
mod files;
mod support;
mod system;
mod transport;
