//! `exec`: argv without a shell, streaming, exit codes and signals, timeouts that reach the
//! whole process group.

use std::time::{Duration, Instant};

use bazel_diff_agent::protocol::ErrorCode;
use bazel_diff_agent::{ClientError, ExecRequest, OutputEncoding, StreamName};

use crate::support::{process_gone, wait_until, Agent};

fn deadline(secs: u64) -> Option<Instant> {
    Some(Instant::now() + Duration::from_secs(secs))
}

#[test]
fn argv_reaches_the_program_verbatim_without_a_shell() {
    let agent = Agent::start(&[]);
    let mut client = agent.client();
    // Each of these would be split, expanded, globbed or executed by a shell.
    let tricky = [
        "two words",
        "'single quoted'",
        "\"double quoted\"",
        "$HOME",
        "$(touch /tmp/pwned)",
        "; echo injected",
        "*",
        "back\\slash",
        "",
        "tab\there",
    ];
    let mut argv = vec!["printf".to_string(), "<%s>\\n".to_string()];
    argv.extend(tricky.iter().map(|s| s.to_string()));
    let out = client.exec(&ExecRequest::new(argv), deadline(20)).unwrap();
    assert!(out.status.success(), "{out:?}");
    let expected: String = tricky.iter().map(|a| format!("<{a}>\n")).collect();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
    assert!(out.stderr.is_empty());
}

#[test]
fn output_is_streamed_in_order_as_it_is_produced() {
    let agent = Agent::start(&[]);
    let mut client = agent.client();
    let script = "echo one; sleep 0.4; echo two >&2; sleep 0.4; echo three";
    let start = Instant::now();
    let mut chunks: Vec<(StreamName, String, Duration)> = Vec::new();
    let status = client
        .exec_streaming(
            &ExecRequest::new(["sh", "-c", script]),
            deadline(20),
            &mut |stream, data| {
                chunks.push((
                    stream,
                    String::from_utf8_lossy(data).into_owned(),
                    start.elapsed(),
                ))
            },
        )
        .unwrap();
    let total = start.elapsed();
    assert!(status.success());
    let seen: Vec<(StreamName, &str)> = chunks.iter().map(|(s, d, _)| (*s, d.as_str())).collect();
    assert_eq!(
        seen,
        [
            (StreamName::Stdout, "one\n"),
            (StreamName::Stderr, "two\n"),
            (StreamName::Stdout, "three\n")
        ]
    );
    // "one" arrived while the command was still running, not at its end.
    assert!(
        chunks[0].2 + Duration::from_millis(300) < total,
        "first chunk at {:?}, exit at {total:?}",
        chunks[0].2
    );
}

#[test]
fn non_zero_exit_and_signal_death_are_reported() {
    let agent = Agent::start(&[]);
    let mut client = agent.client();

    let out = client
        .exec(
            &ExecRequest::new(["sh", "-c", "echo bye >&2; exit 7"]),
            deadline(20),
        )
        .unwrap();
    assert_eq!((out.status.code, out.status.signal), (Some(7), None));
    assert!(!out.status.timed_out && !out.status.success());
    assert_eq!(out.stderr, b"bye\n");

    let out = client
        .exec(
            &ExecRequest::new(["sh", "-c", "kill -TERM $$"]),
            deadline(20),
        )
        .unwrap();
    assert_eq!(
        (out.status.code, out.status.signal),
        (None, Some(libc::SIGTERM))
    );
    assert!(!out.status.timed_out);
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let agent = Agent::start(&[]);
    let mut client = agent.client();
    // The grandchild `sleep` would outlive a kill of `sh` alone, and keep stdout open.
    let req = ExecRequest::new(["sh", "-c", "sleep 300 & echo $!; wait"])
        .timeout(Duration::from_millis(700));
    let start = Instant::now();
    let out = client.exec(&req, deadline(30)).unwrap();
    let took = start.elapsed();
    assert!(out.status.timed_out, "{out:?}");
    assert_eq!(out.status.signal, Some(libc::SIGKILL));
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let grandchild: i32 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || process_gone(grandchild)),
        "grandchild sleep {grandchild} survived the timeout"
    );
    // The connection is still good for the next request.
    client.ping().unwrap();
}

#[test]
fn client_deadline_caps_the_agent_timeout() {
    let agent = Agent::start(&[]);
    let mut client = agent.client();
    let start = Instant::now();
    let out = client
        .exec(
            &ExecRequest::new(["sleep", "300"]),
            Some(Instant::now() + Duration::from_millis(500)),
        )
        .unwrap();
    assert!(out.status.timed_out);
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    assert!(matches!(
        client.exec(&ExecRequest::new(["true"]), Some(Instant::now())),
        Err(ClientError::DeadlinePassed { .. })
    ));
}

#[test]
fn hanging_up_during_exec_kills_the_command() {
    use std::io::Write;
    let agent = Agent::start(&[]);
    agent.client(); // wait until it listens
    let pidfile = agent.path("pid");
    let script = format!(
        "echo $$ > {}.tmp; mv {0}.tmp {0}; exec sleep 300",
        pidfile.display()
    );
    // No timeout at all: only the hang-up can stop it.
    let request = serde_json::json!({"id": 1, "op": "exec", "argv": ["sh", "-c", script]});
    let mut raw = std::os::unix::net::UnixStream::connect(&agent.socket).unwrap();
    raw.write_all(format!("{request}\n").as_bytes()).unwrap();
    assert!(wait_until(Duration::from_secs(10), || pidfile.exists()));
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!process_gone(pid));
    drop(raw);
    assert!(
        wait_until(Duration::from_secs(5), || process_gone(pid)),
        "sleep {pid} survived"
    );
}

#[test]
fn stdin_env_and_cwd_are_applied() {
    let agent = Agent::start(&[]);
    let mut client = agent.client();
    let cwd = agent.dir.path().to_str().unwrap().to_string();
    let req = ExecRequest::new(["sh", "-c", "cat; printf '%s|' \"$GREETING\"; pwd"])
        .stdin(b"from stdin\n".to_vec())
        .env("GREETING", "hello world")
        .cwd(cwd.clone());
    let out = client.exec(&req, deadline(20)).unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!(
            "from stdin\nhello world|{}\n",
            std::fs::canonicalize(&cwd).unwrap().display()
        )
    );

    // clear_env leaves only what the request sets.
    let req = ExecRequest::new(["/usr/bin/env"])
        .clear_env()
        .env("ONLY", "this");
    let out = client.exec(&req, deadline(20)).unwrap();
    assert_eq!(out.stdout, b"ONLY=this\n");
}

#[test]
fn binary_output_survives_and_utf8_lossy_is_text() {
    let agent = Agent::start(&[]);
    let mut client = agent.client();
    let req = ExecRequest::new(["printf", "\\000\\377é"]);
    let out = client.exec(&req, deadline(20)).unwrap();
    assert_eq!(out.stdout, b"\x00\xff\xc3\xa9");
    let out = client
        .exec(&req.clone().output(OutputEncoding::Utf8Lossy), deadline(20))
        .unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "\u{0}\u{fffd}é");
}

#[test]
fn large_output_arrives_complete() {
    let agent = Agent::start(&[]);
    let mut client = agent.client();
    // 4 MiB through both pipes at once: neither may block the other.
    let script = "head -c 2097152 /dev/zero; head -c 2097152 /dev/zero >&2";
    let out = client
        .exec(&ExecRequest::new(["sh", "-c", script]), deadline(60))
        .unwrap();
    assert!(out.status.success());
    assert_eq!((out.stdout.len(), out.stderr.len()), (2 << 20, 2 << 20));
}

#[test]
fn spawn_failures_and_bad_requests_are_errors_not_crashes() {
    let agent = Agent::start(&[]);
    let mut client = agent.client();
    let err = client
        .exec(&ExecRequest::new(["/no/such/program"]), deadline(20))
        .unwrap_err();
    assert_eq!(err.agent_code(), Some(ErrorCode::SpawnFailed), "{err}");
    assert!(err.to_string().contains("/no/such/program"), "{err}");

    let err = client
        .exec(
            &ExecRequest::new(["true"]).cwd("/no/such/dir"),
            deadline(20),
        )
        .unwrap_err();
    assert_eq!(err.agent_code(), Some(ErrorCode::SpawnFailed), "{err}");

    let err = client
        .exec(&ExecRequest::new(Vec::<String>::new()), deadline(20))
        .unwrap_err();
    assert_eq!(err.agent_code(), Some(ErrorCode::BadRequest), "{err}");

    // The connection survives all of it.
    assert!(client
        .exec(&ExecRequest::new(["true"]), deadline(20))
        .unwrap()
        .status
        .success());
}

#[test]
fn a_daemon_holding_the_pipes_neither_hangs_exec_nor_gets_killed() {
    // Like `bazel build` leaving its server behind: the command exits, a setsid() daemon
    // keeps running with the output pipes still open.
    let agent = Agent::start(&[]);
    let mut client = agent.client();
    let start = Instant::now();
    let out = client
        .exec(
            &ExecRequest::new(["sh", "-c", "setsid sleep 30 & echo $!"]),
            deadline(20),
        )
        .unwrap();
    assert!(out.status.success() && !out.status.timed_out, "{out:?}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let daemon: i32 = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let alive = !process_gone(daemon);
    // SAFETY: kill(2) on the pid we just started; no memory arguments.
    unsafe { libc::kill(daemon, libc::SIGKILL) };
    assert!(alive, "the daemon {daemon} was killed by a normal exit");
}
