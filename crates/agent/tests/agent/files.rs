//! `read_file` / `write_file`: round trips, atomic replacement, limits, errors.

use std::os::unix::fs::PermissionsExt;

use bazel_diff_agent::protocol::{ErrorCode, WriteFileRequest, CHUNK_BYTES};

use crate::support::Agent;

/// Deterministic bytes covering every value, longer than several chunks.
fn payload(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9E37_79B9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn leftovers(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("agent-tmp"))
        .collect()
}

#[test]
fn write_then_read_round_trips_binary_data() {
    let agent = Agent::start(&[]);
    let mut client = agent.client();
    let target = agent.path("out.bin");
    let path = target.to_str().unwrap();
    let data = payload(3 * CHUNK_BYTES + 123);

    assert_eq!(
        client.write_file(path, 0o640, &data).unwrap(),
        data.len() as u64
    );
    assert_eq!(std::fs::read(&target).unwrap(), data);
    let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o640);
    assert!(leftovers(agent.dir.path()).is_empty());

    let back = client.read_file(path, u64::MAX).unwrap();
    assert_eq!(back.data, data);
    assert_eq!((back.size, back.truncated), (data.len() as u64, false));

    // Exactly the size: not truncated. One byte less: truncated.
    let exact = client.read_file(path, data.len() as u64).unwrap();
    assert!(!exact.truncated && exact.data == data);
    let short = client.read_file(path, 1000).unwrap();
    assert!(short.truncated);
    assert_eq!(short.data, &data[..1000]);

    // Empty files work both ways.
    client.write_file(path, 0o600, b"").unwrap();
    assert_eq!(client.read_file(path, 10).unwrap().data, b"");
}

#[test]
fn write_replaces_atomically_and_can_create_directories() {
    let agent = Agent::start(&[]);
    let mut client = agent.client();
    let target = agent.path("a/b/c.txt");
    let path = target.to_str().unwrap();

    let err = client.write_file(path, 0o644, b"x").unwrap_err();
    assert_eq!(err.agent_code(), Some(ErrorCode::NotFound), "{err}");

    let req = WriteFileRequest {
        path: path.to_string(),
        mode: 0o600,
        create_dirs: true,
    };
    client.write_file_from(&req, &mut &b"first"[..]).unwrap();
    // Hold the old file open: an atomic replace leaves its contents intact for this reader.
    let old = std::fs::File::open(&target).unwrap();
    client.write_file(path, 0o644, b"second").unwrap();
    let mut seen = String::new();
    std::io::Read::read_to_string(&mut &old, &mut seen).unwrap();
    assert_eq!(seen, "first");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "second");
    assert!(leftovers(target.parent().unwrap()).is_empty());
}

#[test]
fn file_errors_are_typed_and_leave_the_connection_usable() {
    let agent = Agent::start(&[]);
    let mut client = agent.client();
    let missing = agent.path("missing");

    let err = client.read_file(missing.to_str().unwrap(), 10).unwrap_err();
    assert_eq!(err.agent_code(), Some(ErrorCode::NotFound), "{err}");

    let err = client.read_file("relative/path", 10).unwrap_err();
    assert_eq!(err.agent_code(), Some(ErrorCode::BadRequest), "{err}");

    let err = client
        .read_file(agent.dir.path().to_str().unwrap(), 10)
        .unwrap_err();
    assert_eq!(err.agent_code(), Some(ErrorCode::BadRequest), "{err}");

    let err = client.write_file("relative", 0o644, b"x").unwrap_err();
    assert_eq!(err.agent_code(), Some(ErrorCode::BadRequest), "{err}");

    let err = client
        .write_file(agent.path("f").to_str().unwrap(), 0o17777, b"x")
        .unwrap_err();
    assert_eq!(err.agent_code(), Some(ErrorCode::BadRequest), "{err}");

    client.ping().unwrap();
    assert!(leftovers(agent.dir.path()).is_empty());
}

#[test]
fn an_interrupted_write_leaves_nothing_behind() {
    use std::io::{BufRead, BufReader, Write};
    let agent = Agent::start(&[]);
    agent.client();
    let target = agent.path("never.txt");
    let mut raw = std::os::unix::net::UnixStream::connect(&agent.socket).unwrap();
    let header = serde_json::json!({"id": 5, "op": "write_file", "path": target, "mode": 420});
    write!(
        raw,
        "{header}\n{{\"id\":5,\"op\":\"write_chunk\",\"data\":\"aGk=\"}}\n"
    )
    .unwrap();
    // A ping before write_end aborts the write: the write_file gets an error, the ping a pong.
    raw.write_all(b"{\"id\":6,\"op\":\"ping\"}\n").unwrap();
    let mut lines = BufReader::new(raw.try_clone().unwrap()).lines();
    let first: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(
        (first["id"].as_u64(), first["type"].as_str()),
        (Some(5), Some("error"))
    );
    let second: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(
        (second["id"].as_u64(), second["type"].as_str()),
        (Some(6), Some("pong"))
    );
    assert!(!target.exists());
    assert!(leftovers(agent.dir.path()).is_empty());

    // A connection that dies mid-write cleans up too.
    let mut raw = std::os::unix::net::UnixStream::connect(&agent.socket).unwrap();
    write!(
        raw,
        "{header}\n{{\"id\":5,\"op\":\"write_chunk\",\"data\":\"aGk=\"}}\n"
    )
    .unwrap();
    assert!(crate::support::wait_until(
        std::time::Duration::from_secs(5),
        || { !leftovers(agent.dir.path()).is_empty() }
    ));
    drop(raw);
    assert!(crate::support::wait_until(
        std::time::Duration::from_secs(5),
        || { leftovers(agent.dir.path()).is_empty() }
    ));
    assert!(!target.exists());
}
