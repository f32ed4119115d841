//! Connections: concurrency, garbage input, Firecracker's hybrid-vsock handshake (against a
//! fake muxer), retries after a "restore", and the real AF_VSOCK listener.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bazel_diff_agent::protocol::{ErrorCode, MAX_LINE_BYTES};
use bazel_diff_agent::{Client, ClientError, Endpoint, ExecRequest};

use crate::support::{binary, Agent};

#[test]
fn connections_are_served_concurrently() {
    let agent = Agent::start(&[]);
    agent.client();
    let start = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|i| {
            let endpoint = agent.endpoint();
            std::thread::spawn(move || {
                let (mut c, _) =
                    Client::wait_ready(&endpoint, Instant::now() + Duration::from_secs(10))
                        .unwrap();
                let out = c
                    .exec(
                        &ExecRequest::new(["sh", "-c", "sleep 1; echo $0", &i.to_string()]),
                        Some(Instant::now() + Duration::from_secs(20)),
                    )
                    .unwrap();
                String::from_utf8(out.stdout).unwrap()
            })
        })
        .collect();
    // Meanwhile, yet another connection answers at once.
    let mut quick = agent.client();
    assert!(quick.ping().unwrap() < Duration::from_millis(500));
    let outputs: Vec<String> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert_eq!(outputs, ["0\n", "1\n", "2\n", "3\n"]);
    // Four one-second sleeps in well under four seconds.
    assert!(
        start.elapsed() < Duration::from_millis(2500),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn one_connection_carries_many_requests() {
    let agent = Agent::start(&[]);
    let mut client = agent.client();
    for i in 0..50 {
        let out = client
            .exec(&ExecRequest::new(["echo", &i.to_string()]), None)
            .unwrap();
        assert_eq!(out.stdout, format!("{i}\n").as_bytes());
        client.ping().unwrap();
    }
}

fn raw_exchange(socket: &Path, lines: &[&[u8]]) -> Vec<serde_json::Value> {
    let mut raw = UnixStream::connect(socket).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    for line in lines {
        raw.write_all(line).unwrap();
    }
    raw.shutdown(std::net::Shutdown::Write).unwrap();
    BufReader::new(raw)
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

#[test]
fn garbage_gets_error_answers_and_never_a_crash() {
    let mut agent = Agent::start(&[]);
    agent.client();
    let oversized = vec![b'x'; MAX_LINE_BYTES + 10];
    let answers = raw_exchange(
        &agent.socket,
        &[
            b"this is not json\n",
            b"[1,2,3]\n",
            b"{}\n",
            b"{\"id\":3,\"op\":\"format_disk\"}\n",
            b"{\"id\":4,\"op\":\"exec\"}\n",
            b"{\"id\":5,\"op\":\"exec\",\"argv\":\"rm -rf /\"}\n",
            b"{\"id\":6,\"op\":\"read_file\",\"path\":\"/etc/hostname\",\"max_bytes\":-1}\n",
            b"\xff\xfe\n",
            b"\n",
            &oversized,
            b"\n",
            b"{\"id\":7,\"op\":\"write_chunk\",\"data\":\"aGk=\"}\n",
            b"{\"id\":8,\"op\":\"ping\"}\n",
        ],
    );
    let summary: Vec<(u64, String)> = answers
        .iter()
        .map(|a| {
            let kind = a["code"]
                .as_str()
                .or(a["type"].as_str())
                .unwrap()
                .to_string();
            (a["id"].as_u64().unwrap(), kind)
        })
        .collect();
    let expected: Vec<(u64, String)> = [
        (0, "bad_json"),
        (0, "bad_request"),
        (0, "bad_request"),
        (3, "unknown_op"),
        (4, "bad_request"),
        (5, "bad_request"),
        (6, "bad_request"),
        (0, "bad_json"),
        (0, "line_too_long"),
        (7, "bad_request"),
        (8, "pong"),
    ]
    .iter()
    .map(|(i, k)| (*i, k.to_string()))
    .collect();
    assert_eq!(summary, expected, "{answers:#?}");
    assert!(answers[3]["message"]
        .as_str()
        .unwrap()
        .contains("format_disk"));
    assert!(agent.alive());
    agent.client().ping().unwrap();
}

#[test]
fn connections_beyond_the_limit_get_busy() {
    let agent = Agent::start(&["--max-connections=1"]);
    let mut first = agent.client();
    let err = Client::connect(&agent.endpoint(), Duration::from_secs(5))
        .unwrap()
        .ping()
        .unwrap_err();
    assert_eq!(err.agent_code(), Some(ErrorCode::Busy), "{err}");
    assert!(err.is_retryable());
    first.ping().unwrap();
    drop(first);
    // The slot frees once the first connection is gone.
    agent.client().ping().unwrap();
}

/// How a fake Firecracker vsock muxer treats each incoming connection.
#[derive(Clone, Copy)]
enum Muxer {
    /// Close the first `n` connections without answering (no guest listener yet), like
    /// Firecracker right after a restore; then proxy.
    RefuseFirst(usize),
    /// Answer something other than `OK <n>`.
    Garbage,
}

/// A running fake muxer.
struct FakeMuxer {
    /// Connections it received.
    seen: Arc<AtomicUsize>,
    /// Both ends of the proxied connections, to cut them like a snapshot restore does.
    live: Arc<Mutex<Vec<UnixStream>>>,
    _thread: JoinHandle<()>,
}

impl FakeMuxer {
    fn seen(&self) -> usize {
        self.seen.load(Ordering::SeqCst)
    }

    /// What a snapshot does to vsock connections (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET).
    fn reset_all(&self) {
        for conn in self.live.lock().unwrap().drain(..) {
            let _ = conn.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Listens on `uds`, checks `CONNECT <port>\n`, answers `OK 1073741824\n` and proxies the
/// stream to the agent's unix socket, both ways, like Firecracker's muxer does to the guest.
fn fake_muxer(uds: &Path, port: u32, agent: PathBuf, mode: Muxer) -> FakeMuxer {
    let listener = UnixListener::bind(uds).unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    let live = Arc::new(Mutex::new(Vec::new()));
    let live_conns = Arc::clone(&live);
    let thread = std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut host) = conn else { return };
            let n = counter.fetch_add(1, Ordering::SeqCst);
            // Read the command byte by byte, as Firecracker does, so nothing after it is lost.
            let mut line = Vec::new();
            let mut byte = [0u8];
            while host.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
                line.push(byte[0]);
            }
            assert_eq!(String::from_utf8_lossy(&line), format!("CONNECT {port}"));
            match mode {
                Muxer::RefuseFirst(k) if n < k => continue, // dropped: closed, no answer
                Muxer::Garbage => {
                    let _ = host.write_all(b"NOPE\n");
                    continue;
                }
                Muxer::RefuseFirst(_) => {}
            }
            let guest = UnixStream::connect(&agent).unwrap();
            host.write_all(b"OK 1073741824\n").unwrap();
            live_conns.lock().unwrap().push(host.try_clone().unwrap());
            live_conns.lock().unwrap().push(guest.try_clone().unwrap());
            let (mut h2, mut g2) = (host.try_clone().unwrap(), guest.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut h2, &mut g2);
                let _ = g2.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let (mut g, mut h) = (guest, host);
                let _ = std::io::copy(&mut g, &mut h);
                let _ = h.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    FakeMuxer {
        seen,
        live,
        _thread: thread,
    }
}

#[test]
fn hybrid_vsock_handshake_through_a_fake_firecracker_muxer() {
    let agent = Agent::start(&[]);
    agent.client();
    let uds = agent.path("v.sock");
    let port = bazel_diff_agent::protocol::DEFAULT_VSOCK_PORT;
    let muxer = fake_muxer(&uds, port, agent.socket.clone(), Muxer::RefuseFirst(0));
    let endpoint = Endpoint::HybridVsock {
        uds_path: uds.clone(),
        port,
    };
    let (mut client, hello) =
        Client::wait_ready(&endpoint, Instant::now() + Duration::from_secs(10)).unwrap();
    assert_eq!(client.host_port(), Some(1_073_741_824));
    assert_eq!(hello.pid, agent.child.id());
    let out = client
        .exec(
            &ExecRequest::new(["printf", "%s", "through vsock"]),
            Some(Instant::now() + Duration::from_secs(10)),
        )
        .unwrap();
    assert_eq!(out.stdout, b"through vsock");
    assert_eq!(muxer.seen(), 1);
}

#[test]
fn after_a_restore_the_client_reconnects() {
    let agent = Agent::start(&[]);
    agent.client();
    let uds = agent.path("v.sock");
    let muxer = fake_muxer(&uds, 10789, agent.socket.clone(), Muxer::RefuseFirst(0));
    let endpoint = Endpoint::HybridVsock {
        uds_path: uds,
        port: 10789,
    };
    let deadline = || Instant::now() + Duration::from_secs(10);
    let (mut client, before) = Client::wait_ready(&endpoint, deadline()).unwrap();
    client.ping().unwrap();

    muxer.reset_all();
    let err = client.ping().unwrap_err();
    assert!(err.is_retryable(), "{err}");
    // The dead connection stays dead...
    assert!(matches!(client.ping(), Err(ClientError::Broken(_))));
    // ...and a new one reaches the same, still listening agent.
    let (mut client, after) = Client::wait_ready(&endpoint, deadline()).unwrap();
    assert_eq!((before.pid, before.boot_id), (after.pid, after.boot_id));
    client.ping().unwrap();
    assert_eq!(muxer.seen(), 2);
}

#[test]
fn wait_ready_retries_until_the_guest_listens_again() {
    let agent = Agent::start(&[]);
    agent.client();
    let uds = agent.path("v.sock");
    let endpoint = Endpoint::HybridVsock {
        uds_path: uds.clone(),
        port: 52,
    };
    // Before Firecracker has even created its socket: ENOENT, retried.
    let starter = {
        let (uds, sock) = (uds.clone(), agent.socket.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            fake_muxer(&uds, 52, sock, Muxer::RefuseFirst(3))
        })
    };
    let start = Instant::now();
    let (mut client, _) =
        Client::wait_ready(&endpoint, Instant::now() + Duration::from_secs(10)).unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300));
    client.ping().unwrap();
    let muxer = starter.join().unwrap();
    assert_eq!(muxer.seen(), 4, "3 refused + 1 served");
}

#[test]
fn wait_ready_gives_up_at_the_deadline_with_the_last_error() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let _muxer = fake_muxer(
        &uds,
        7,
        dir.path().join("nothing"),
        Muxer::RefuseFirst(usize::MAX),
    );
    let endpoint = Endpoint::HybridVsock {
        uds_path: uds,
        port: 7,
    };
    let start = Instant::now();
    let err =
        Client::wait_ready(&endpoint, Instant::now() + Duration::from_millis(600)).unwrap_err();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(3),
        "{took:?}"
    );
    match &err {
        ClientError::NotReady { attempts, last, .. } => {
            assert!(*attempts > 1);
            assert!(
                matches!(**last, ClientError::NoListener { port: 7, .. }),
                "{last}"
            );
        }
        other => panic!("unexpected {other}"),
    }
    assert!(err.to_string().contains("nothing is listening"), "{err}");
}

#[test]
fn a_bad_handshake_reply_fails_fast() {
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let _muxer = fake_muxer(&uds, 9, dir.path().join("nothing"), Muxer::Garbage);
    let endpoint = Endpoint::HybridVsock {
        uds_path: uds,
        port: 9,
    };
    let start = Instant::now();
    let err = Client::wait_ready(&endpoint, Instant::now() + Duration::from_secs(10)).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(
        matches!(err, ClientError::Handshake { ref reply, .. } if reply == "NOPE"),
        "{err}"
    );
}

fn vsock_available() -> bool {
    // SAFETY: socket(2) + close(2) with no memory arguments.
    unsafe {
        let fd = libc::socket(40 /* AF_VSOCK */, libc::SOCK_STREAM, 0);
        if fd >= 0 {
            libc::close(fd);
        }
        fd >= 0
    }
}

/// Starts an agent on `vsock:port`; returns it and the first stderr line.
fn start_vsock_agent(port: u32) -> (std::process::Child, String) {
    let mut child = Command::new(binary())
        .arg(format!("--listen=vsock:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line)
}

#[test]
fn vsock_listener_binds_or_explains_why_not() {
    // No vsock peer is ever contacted: the agent only binds and listens.
    let port = 20_000 + std::process::id() % 20_000;
    let (mut first, line) = start_vsock_agent(port);
    if !vsock_available() {
        let status = first.wait().unwrap();
        assert_eq!(status.code(), Some(1));
        assert!(line.contains("AF_VSOCK is not available"), "{line}");
        eprintln!("AF_VSOCK unavailable here; checked the error path: {line}");
        return;
    }
    assert!(
        line.contains(&format!("listening on vsock port {port}")),
        "{line}"
    );
    // A second agent on the same port fails with a clear message and exit code 1.
    let (mut second, line2) = start_vsock_agent(port);
    assert_eq!(second.wait().unwrap().code(), Some(1));
    assert!(
        line2.contains(&format!("cannot bind vsock port {port}")),
        "{line2}"
    );
    assert!(line2.contains("another agent running"), "{line2}");
    let _ = first.kill();
    let _ = first.wait();
}

#[test]
fn bad_listen_flags_are_usage_errors() {
    let out = Command::new(binary())
        .arg("--listen=tcp:1234")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected vsock:PORT or unix:PATH"));

    let dir = tempfile::tempdir().unwrap();
    let taken = dir.path().join("taken.sock");
    std::fs::write(&taken, b"").unwrap();
    let out = Command::new(binary())
        .arg(format!("--listen=unix:{}", taken.display()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen on unix socket"), "{stderr}");
    // Never removes a file it did not create.
    assert!(taken.exists());
}
