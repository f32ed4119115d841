//! `hello`, `set_time`, `reseed`, `shutdown`. Nothing here changes this machine's clock or
//! entropy pool: `set_time` runs with `--dry-run-time` or unprivileged, and `reseed` feeds a
//! plain file.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bazel_diff_agent::agent::system::{has_effective_capability, CAP_SYS_TIME};
use bazel_diff_agent::protocol::ErrorCode;
use bazel_diff_agent::{ExecRequest, PROTOCOL_VERSION};

use crate::support::{as_nobody, is_root, make_world_writable, process_gone, wait_until, Agent};

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[test]
fn hello_identifies_agent_and_guest() {
    let agent = Agent::start(&[]);
    let (_, hello) = agent.ready();
    assert_eq!(hello.protocol_version, PROTOCOL_VERSION);
    assert_eq!(hello.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(hello.pid, agent.child.id());
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(hello.boot_id, boot_id.trim());
    assert!(hello.uptime_ms > 0);
    let skew = now_nanos().abs_diff(hello.realtime_unix_nanos);
    assert!(skew < 60_000_000_000, "skew {skew} ns");
    for op in ["exec", "set_time", "reseed", "write_file"] {
        assert!(
            hello.ops.iter().any(|o| o == op),
            "{op} missing from {:?}",
            hello.ops
        );
    }
}

#[test]
fn set_time_dry_run_follows_the_capability() {
    let agent = Agent::start(&["--dry-run-time"]);
    let mut client = agent.client();
    let target = now_nanos() + 3_600_000_000_000;
    let before = now_nanos();
    let result = client.set_time(target);
    if has_effective_capability(CAP_SYS_TIME).unwrap() {
        let set = result.unwrap();
        assert!(set.dry_run);
        assert_eq!(set.unix_nanos, target);
        assert!(set.previous_unix_nanos >= before - 1_000_000_000);
        assert!((set.step_nanos() - 3_600_000_000_000).abs() < 60_000_000_000);
    } else {
        assert_eq!(
            result.unwrap_err().agent_code(),
            Some(ErrorCode::NotPermitted)
        );
    }
    // The clock did not jump by an hour.
    assert!(now_nanos() < target - 3_000_000_000_000);
}

#[test]
fn set_time_without_privilege_is_refused_by_the_kernel() {
    // The real clock_settime path, run where it must fail: as nobody when we are root (no
    // capabilities left after the uid change), as ourselves otherwise.
    if !is_root() && has_effective_capability(CAP_SYS_TIME).unwrap() {
        eprintln!("skipped: unprivileged but holding CAP_SYS_TIME, cannot test EPERM safely");
        return;
    }
    let agent = Agent::start_with(&[], |cmd, dir| {
        if is_root() {
            make_world_writable(dir);
            as_nobody(cmd);
        }
    });
    let (mut client, hello) = agent.ready();
    assert_ne!(hello.euid, 0);
    let err = client.set_time(now_nanos()).unwrap_err();
    assert_eq!(err.agent_code(), Some(ErrorCode::NotPermitted), "{err}");
    assert!(err.to_string().contains("CAP_SYS_TIME"), "{err}");

    let err = client.set_time(1_700_000_000_000).unwrap_err();
    assert_eq!(err.agent_code(), Some(ErrorCode::BadRequest), "{err}");
}

#[test]
fn reseed_feeds_the_random_device() {
    let dir = tempfile::tempdir().unwrap();
    let device = dir.path().join("urandom");
    std::fs::write(&device, b"").unwrap();
    let agent = Agent::start(&[&format!("--random-device={}", device.display())]);
    let mut client = agent.client();
    let bytes: Vec<u8> = (0..64u8).collect();
    let done = client.reseed(&bytes).unwrap();
    // A plain file has no RNDADDENTROPY: the bytes are written, not credited.
    assert_eq!((done.bytes, done.credited), (64, false));
    assert_eq!(std::fs::read(&device).unwrap(), bytes);

    let err = client.reseed(&[]).unwrap_err();
    assert_eq!(err.agent_code(), Some(ErrorCode::BadRequest), "{err}");
    let err = client.reseed(&vec![0u8; (64 << 10) + 1]).unwrap_err();
    assert_eq!(err.agent_code(), Some(ErrorCode::BadRequest), "{err}");
}

#[test]
fn shutdown_stops_the_agent_kills_its_commands_and_removes_its_socket() {
    let mut agent = Agent::start(&[]);
    let pidfile = agent.path("pid");
    let script = format!(
        "echo $$ > {}.tmp; mv {0}.tmp {0}; exec sleep 300",
        pidfile.display()
    );
    let runner = {
        let mut client = agent.client();
        std::thread::spawn(move || client.exec(&ExecRequest::new(["sh", "-c", &script]), None))
    };
    assert!(wait_until(Duration::from_secs(10), || pidfile.exists()));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let client = agent.client();
    client.shutdown().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || process_gone(pid)),
        "sleep {pid} survived"
    );
    // The exec either reports the kill or loses its connection as the agent exits.
    match runner.join().unwrap() {
        Ok(out) => assert_eq!(out.status.signal, Some(libc::SIGKILL), "{out:?}"),
        Err(e) => assert!(e.is_retryable(), "{e}"),
    }
    assert!(wait_until(Duration::from_secs(5), || !agent.alive()));
    assert_eq!(agent.child.wait().unwrap().code(), Some(0));
    assert!(!agent.socket.exists());
}
