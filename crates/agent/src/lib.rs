//! `bazel-diff-agent`: the guest agent of `bazel-diff-snap` and its host-side client.
//!
//! The agent is a small static binary in the guest image. It listens on an `AF_VSOCK` port
//! and replaces the upstream ssh control plane (spec findings F19, F20, F22, F23, F26): no
//! sshd, no NIC, no keys, no shell strings, and a timeout on every command. The host reaches
//! it through Firecracker's hybrid vsock ([`Endpoint::HybridVsock`]); tests reach it over a
//! unix socket ([`Endpoint::Unix`]).
//!
//! * [`protocol`]: the wire format, shared by both sides (the one place names live).
//! * [`client`]: the host side ([`Client`]).
//! * [`agent`]: the guest side; `src/main.rs` only parses flags.
//!
//! # Building for the guest image
//!
//! ```text
//! rustup target add x86_64-unknown-linux-musl
//! cargo build --release --target x86_64-unknown-linux-musl -p bazel-diff-agent
//! # -> target/x86_64-unknown-linux-musl/release/bazel-diff-agent (static)
//!
//! # Without the musl target, a static glibc build works as well (no NSS lookups are used):
//! RUSTFLAGS="-C target-feature=+crt-static" \
//!   cargo build --release --target x86_64-unknown-linux-gnu -p bazel-diff-agent
//! ```
//!
//! Dependencies are kept to serde, serde_json, thiserror, libc and clap (about 1.1 MB
//! stripped). Linux only: it uses `AF_VSOCK`, `pidfd_open` (falling back to polling before
//! 5.3), `RNDADDENTROPY` and `clock_settime`.
//!
//! Run it as root from an early systemd unit (`Restart=always`), with
//! `--listen vsock:10789` (the default). The guest kernel needs `CONFIG_VIRTIO_VSOCKETS`,
//! and the VM a vsock device (`PUT /vsock {"guest_cid": 3, "uds_path": ...}` before boot).
//!
//! # Transport
//!
//! Host-initiated, over Firecracker's hybrid vsock (Firecracker `docs/vsock.md`):
//!
//! 1. connect an `AF_UNIX` stream socket to the vsock device's `uds_path`;
//! 2. send `CONNECT <port>\n` (the agent's port, default [`protocol::DEFAULT_VSOCK_PORT`]);
//! 3. read `OK <assigned_host_port>\n`. If nothing listens on the port, Firecracker closes
//!    the connection instead ([`ClientError::NoListener`], retryable);
//! 4. from then on the stream is a byte pipe to the agent.
//!
//! (Guest-initiated connections would arrive on `<uds_path>_<port>`; the agent makes none.)
//!
//! A snapshot **resets every vsock connection** while the guest's listening socket survives,
//! so the host reconnects after each restore: [`Client::wait_ready`] retries until the agent
//! answers `ping` and `hello`.
//!
//! # Protocol (version 1)
//!
//! Line-delimited JSON in both directions: one object per line, UTF-8, `\n`-terminated, at
//! most [`protocol::MAX_LINE_BYTES`]. Every request has `"op"` and a client-chosen
//! `"id"` (a positive integer); every message the agent sends for it repeats the `id` and
//! has a `"type"`. Requests on one connection are served one at a time, in order;
//! connections are served concurrently (up to `--max-connections`). Binary data is standard
//! base64 with padding. Unknown request fields are ignored.
//!
//! | request | answer |
//! | --- | --- |
//! | `{"op":"hello"}` | `{"type":"hello","agent_version","protocol_version","boot_id","uptime_ms","realtime_unix_nanos","hostname","pid","euid","ops":[..]}` |
//! | `{"op":"ping"}` | `{"type":"pong"}` |
//! | `{"op":"exec","argv":[..],"cwd"?,"env"?:{..},"clear_env"?,"timeout_ms"?,"stdin"?:b64,"output"?:"base64"\|"utf8_lossy"}` | any number of `{"type":"output","stream":"stdout"\|"stderr","encoding","data"}`, then `{"type":"exit","code","signal","timed_out","duration_ms"}` |
//! | `{"op":"read_file","path","max_bytes"}` | any number of `{"type":"file_chunk","data":b64}`, then `{"type":"file_end","bytes","size","truncated"}` |
//! | `{"op":"write_file","path","mode","create_dirs"?}`, then `{"op":"write_chunk","data":b64}`…, then `{"op":"write_end"}` (sent without waiting) | one `{"type":"written","path","bytes"}` |
//! | `{"op":"set_time","unix_nanos"}` | `{"type":"time_set","previous_unix_nanos","unix_nanos","dry_run"}` |
//! | `{"op":"reseed","bytes":b64}` | `{"type":"reseeded","bytes","credited"}` |
//! | `{"op":"shutdown"}` | `{"type":"bye"}`, then the agent exits (the guest keeps running) |
//!
//! Any request may instead be answered by `{"type":"error","code","message"}` (see
//! [`protocol::ErrorCode`]: `bad_json`, `bad_request`, `unknown_op`, `line_too_long`, `busy`,
//! `spawn_failed`, `not_found`, `permission_denied`, `not_permitted`, `io`). An error never
//! closes the connection; garbage gets an error with `id` 0 and the next line is read.
//!
//! Semantics:
//!
//! * **exec** runs `argv` directly (`execvp`, no shell: spaces, quotes, `$`, `;` reach the
//!   program verbatim) in a new process group, with stdin from `stdin` or `/dev/null`.
//!   Output chunks are sent as soon as they are read, in the order read. At `timeout_ms` the
//!   agent SIGKILLs the whole process group and reports `timed_out: true` with `signal: 9`.
//!   A normal exit does not kill the group, and a daemon that left it with `setsid` (the
//!   Bazel server) is never touched; the agent stops reading output 500 ms after the exit if
//!   such a daemon still holds the pipes. If the host closes the connection (or shuts down
//!   its sending side) during an exec, the agent kills the process group. `code` is set when the command exited,
//!   `signal` when a signal killed it.
//! * **read_file** sends at most `max_bytes`; `truncated` says whether more was there.
//! * **write_file** writes a temporary file in the target's directory, applies `mode`
//!   exactly (no umask), fsyncs, renames it over the target and fsyncs the directory.
//!   Chunks are not acknowledged; the single answer comes after `write_end`. Any other
//!   request before `write_end` aborts the write (an error answers the `write_file`).
//! * **set_time** sets `CLOCK_REALTIME` (needs CAP_SYS_TIME: `not_permitted` otherwise;
//!   values before 2000 are `bad_request`). With `--dry-run-time` the agent checks the
//!   capability and answers `dry_run: true` without touching the clock.
//! * **reseed** credits the bytes to the kernel pool with `RNDADDENTROPY` and forces a CRNG
//!   reseed when it may (root), otherwise writes them to `/dev/urandom` (mixed, not
//!   credited). At most [`protocol::MAX_RESEED_BYTES`].
//! * Paths (`cwd`, `read_file`, `write_file`) must be absolute.
//!
//! Versioning: `hello.protocol_version` is [`PROTOCOL_VERSION`]. New optional fields and
//! new ops keep the version (an older agent answers a new op with `unknown_op`); a change of
//! meaning bumps it, and [`Client::wait_ready`] refuses a mismatch.
//!
//! # After a restore (what the driver does, in order)
//!
//! 1. [`Client::wait_ready`] with a deadline (connections died with the snapshot);
//! 2. [`Client::sync_clock`] first, before anything reads the time (git, Bazel, TLS);
//! 3. [`Client::reseed`] with fresh host random bytes;
//! 4. then the work: `exec` with explicit argv and a deadline.

pub mod agent;
pub mod b64;
pub mod client;
pub mod error;
pub mod protocol;

pub use client::{Client, Endpoint, ExecOutput, ExitStatus, FileContents, Reseeded, TimeSet};
pub use error::ClientError;
pub use protocol::{ExecRequest, Hello, OutputEncoding, StreamName, PROTOCOL_VERSION};
