//! Failure paths of the CLI, no real Bazel needed: exit codes (0 success, 1 runtime failure,
//! 2 usage error), messages that name the bad input, and no partial output: an output path
//! given to a failing run is not created, and an existing file there keeps its bytes.

// Test code: a panic is how a failure is reported (clippy allows unwrap only in #[test] fns).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use support::{fails_without_touching, listing, run_bazel_diff, write_script, Run};

/// A Bazel that fails every command with several lines of stderr, the last one distinctive.
const FAILING_BAZEL: &str = r#"i=0
while [ $i -lt 40 ]; do echo "INFO: noise line $i" >&2; i=$((i+1)); done
echo "ERROR: fake bazel failed on purpose (marker 7f3a)" >&2
exit 1"#;

/// A temp dir with an (empty) WORKSPACE in `ws/` and room for inputs and outputs beside it.
struct Sandbox {
    _dir: tempfile::TempDir,
    root: PathBuf,
    ws: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::Builder::new().prefix("bd-cli").tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let ws = root.join("ws");
        fs::create_dir(&ws).unwrap();
        fs::write(ws.join("WORKSPACE"), "").unwrap();
        fs::create_dir(root.join("out")).unwrap();
        Sandbox {
            _dir: dir,
            root,
            ws,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn write(&self, rel: &str, content: &str) -> PathBuf {
        let path = self.path(rel);
        fs::write(&path, content).unwrap();
        path
    }

    /// A fake Bazel script; every invocation's arguments are appended to `<name>.log`.
    fn bazel(&self, name: &str, body: &str) -> PathBuf {
        let log = self.path(&format!("{name}.log"));
        write_script(
            &self.path(name),
            &format!("echo \"$*\" >> '{}'\n{body}", log.display()),
        )
    }

    fn bazel_calls(&self, name: &str) -> Vec<String> {
        fs::read_to_string(self.path(&format!("{name}.log")))
            .map(|text| text.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    fn run(&self, args: &[&str]) -> Run {
        run_bazel_diff(&self.root, args)
    }
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A valid flat hashes file.
fn hashes(sandbox: &Sandbox, rel: &str, entries: &[(&str, &str)]) -> PathBuf {
    let map: serde_json::Map<String, serde_json::Value> = entries
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect();
    sandbox.write(rel, &serde_json::to_string_pretty(&map).unwrap())
}

#[test]
fn missing_workspace_fails_naming_the_path_and_writes_nothing() {
    let sb = Sandbox::new();
    let bazel = sb.bazel("bazel", FAILING_BAZEL);
    let missing = sb.path("no/such/workspace");
    let out = sb.path("out/hashes.json");
    let edges = sb.path("out/edges.json");
    let run = fails_without_touching(&[&out, &edges], 2, || {
        sb.run(&[
            "generate-hashes",
            "-w",
            s(&missing),
            "-b",
            s(&bazel),
            "-d",
            s(&edges),
            s(&out),
        ])
    });
    let run = run.stderr_has(s(&missing));
    assert!(run.stdout.is_empty(), "{run}");

    let fingerprint = sb.path("out/fingerprint.json");
    fails_without_touching(&[&fingerprint], 2, || {
        sb.run(&[
            "fingerprint",
            "-w",
            s(&missing),
            "-b",
            s(&bazel),
            "-o",
            s(&fingerprint),
        ])
    })
    .stderr_has(s(&missing));

    let base = sb.path("out/base.json");
    fails_without_touching(&[&base, &fingerprint], 2, || {
        sb.run(&[
            "warmup",
            "-w",
            s(&missing),
            "-b",
            s(&bazel),
            "--base-hashes",
            s(&base),
            "--fingerprint-output",
            s(&fingerprint),
        ])
    })
    .stderr_has(s(&missing));
    assert!(
        sb.bazel_calls("bazel").is_empty(),
        "no Bazel call for a workspace that does not exist: {:?}",
        sb.bazel_calls("bazel")
    );
}

#[test]
fn failing_bazel_exits_1_with_its_stderr_tail_and_writes_nothing() {
    let sb = Sandbox::new();
    let bazel = sb.bazel("bazel", FAILING_BAZEL);
    let out = sb.path("out/hashes.json");
    let edges = sb.path("out/edges.json");
    let run = fails_without_touching(&[&out, &edges], 1, || {
        sb.run(&[
            "generate-hashes",
            "-w",
            s(&sb.ws),
            "-b",
            s(&bazel),
            "-d",
            s(&edges),
            s(&out),
        ])
    });
    let run = run.stderr_has("ERROR: fake bazel failed on purpose (marker 7f3a)");
    assert!(run.stdout.is_empty(), "nothing on stdout:\n{run}");
    // Bazel's stderr is passed through, and our own error message repeats its tail.
    let ours = run
        .stderr
        .rfind("[Error]")
        .map(|at| &run.stderr[at..])
        .unwrap_or_else(|| panic!("no [Error] line:\n{run}"));
    assert!(ours.contains("exit code 1"), "{run}");
    assert!(
        ours.contains("ERROR: fake bazel failed on purpose (marker 7f3a)"),
        "the error message carries the stderr tail:\n{run}"
    );
    let calls = sb.bazel_calls("bazel");
    assert!(
        calls.iter().any(|c| c.contains("query")),
        "the query was attempted: {calls:?}"
    );
}

/// Exit 0 but a stream that is not length-delimited `Target` messages.
#[test]
fn garbage_query_output_fails_and_writes_nothing() {
    let sb = Sandbox::new();
    let bazel = sb.bazel(
        "bazel",
        "case \"$*\" in *query*) printf '\\377\\377\\377\\377\\377garbage' ;; esac\nexit 0",
    );
    let out = sb.path("out/hashes.json");
    let run = fails_without_touching(&[&out], 1, || {
        sb.run(&["generate-hashes", "-w", s(&sb.ws), "-b", s(&bazel), s(&out)])
    });
    assert!(run.stdout.is_empty(), "{run}");
}

/// `--keep_going` is off by default (upstream #400): Bazel's partial-result exit code 3 is a
/// failure unless `-k` was given, and only then is `--keep_going` passed to Bazel.
#[test]
fn query_exit_3_fails_unless_keep_going_was_given() {
    let sb = Sandbox::new();
    let bazel = sb.bazel(
        "bazel",
        "echo 'ERROR: some package failed to load' >&2\nexit 3",
    );
    let out = sb.path("out/hashes.json");
    fails_without_touching(&[&out], 1, || {
        sb.run(&["generate-hashes", "-w", s(&sb.ws), "-b", s(&bazel), s(&out)])
    })
    .stderr_has("some package failed to load");
    assert!(
        sb.bazel_calls("bazel")
            .iter()
            .all(|c| !c.contains("--keep_going")),
        "{:?}",
        sb.bazel_calls("bazel")
    );

    sb.run(&[
        "generate-hashes",
        "-w",
        s(&sb.ws),
        "-b",
        s(&bazel),
        "-k",
        s(&out),
    ])
    .success();
    let written: serde_json::Value = serde_json::from_slice(&fs::read(&out).unwrap()).unwrap();
    assert_eq!(written, serde_json::json!({}), "an empty (partial) result");
    let calls = sb.bazel_calls("bazel");
    assert!(
        calls
            .last()
            .is_some_and(|c| c.contains("query") && c.contains("--keep_going")),
        "{calls:?}"
    );
}

#[test]
fn unreadable_hashes_or_edges_file_is_a_usage_error() {
    let sb = Sandbox::new();
    let good = hashes(&sb, "good.json", &[("//a:b", "x~y")]);
    let missing = sb.path("missing.json");
    let a_directory = sb.path("out");
    let out = sb.path("out/impacted.txt");
    let ws = s(&sb.ws);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["-sh", s(&missing), "-fh", s(&good)],
            "Incorrect starting hashes",
        ),
        (
            vec!["-sh", s(&a_directory), "-fh", s(&good)],
            "Incorrect starting hashes",
        ),
        (
            vec!["-sh", s(&good), "-fh", s(&missing)],
            "Incorrect final hashes",
        ),
        (
            vec!["-sh", s(&good), "-fh", s(&good), "-d", s(&missing)],
            "Incorrect dep edges file",
        ),
    ];
    for (args, message) in cases {
        fails_without_touching(&[&out], 2, || {
            let mut all = vec!["get-impacted-targets", "-w", ws, "-o", s(&out)];
            all.extend_from_slice(&args);
            sb.run(&all)
        })
        .stderr_has(message);
    }
}

#[test]
fn malformed_hashes_json_fails_naming_the_file() {
    let sb = Sandbox::new();
    let good = hashes(&sb, "good.json", &[("//a:b", "x~y")]);
    let out = sb.path("out/impacted.txt");
    let ws = s(&sb.ws);
    let bad_files = [
        ("not-json.json", "this is { not JSON"),
        (
            "truncated.json",
            "{\n  \"//a:b\": \"x~y\",\n  \"//a:c\": \"x~",
        ),
        ("array.json", "[\"//a:b\", \"x~y\"]"),
        ("bad-value.json", "{\"//a:b\": \"abc\"}"),
        ("too-many-types.json", "{\"//a:b\": \"Rule#Rule#x~y\"}"),
        ("number-value.json", "{\"//a:b\": 5}"),
    ];
    for (name, content) in bad_files {
        let bad = sb.write(name, content);
        for (starting, fin) in [(&bad, &good), (&good, &bad)] {
            fails_without_touching(&[&out], 1, || {
                sb.run(&[
                    "get-impacted-targets",
                    "-w",
                    ws,
                    "-sh",
                    s(starting),
                    "-fh",
                    s(fin),
                    "-o",
                    s(&out),
                ])
            })
            .stderr_has(s(&bad));
        }
    }
    // A malformed dep-edges file is named as well.
    let edges = sb.write("edges.json", "{\"//a:b\": \"not a list\"}");
    fails_without_touching(&[&out], 1, || {
        sb.run(&[
            "get-impacted-targets",
            "-w",
            ws,
            "-sh",
            s(&good),
            "-fh",
            s(&good),
            "-d",
            s(&edges),
            "-o",
            s(&out),
        ])
    })
    .stderr_has(s(&edges));
}

#[test]
fn unknown_flag_or_subcommand_is_a_usage_error_with_usage() {
    let sb = Sandbox::new();
    let good = hashes(&sb, "good.json", &[("//a:b", "x~y")]);
    let out = sb.path("out/impacted.txt");
    let hashes_out = sb.path("out/hashes.json");
    let ws = s(&sb.ws);
    fails_without_touching(&[&out], 2, || {
        sb.run(&[
            "get-impacted-targets",
            "-w",
            ws,
            "-sh",
            s(&good),
            "-fh",
            s(&good),
            "-o",
            s(&out),
            "--no-such-flag",
        ])
    })
    .stderr_has("--no-such-flag")
    .stderr_has("Usage");
    fails_without_touching(&[&hashes_out], 2, || {
        sb.run(&["generate-hashes", "-w", ws, "--bogus", "1", s(&hashes_out)])
    })
    .stderr_has("--bogus")
    .stderr_has("Usage");
    // Missing required option, no subcommand, unknown subcommand.
    fails_without_touching(&[&out], 2, || {
        sb.run(&[
            "get-impacted-targets",
            "-w",
            ws,
            "-sh",
            s(&good),
            "-o",
            s(&out),
        ])
    })
    .stderr_has("Usage");
    let run = sb.run(&[]).exit(2);
    assert!(
        run.stdout.is_empty() || run.stdout.contains("Usage"),
        "{run}"
    );
    sb.run(&["frobnicate"]).exit(2).stderr_has("Usage");
}

/// `-tt` needs types in the final hashes (spec 2.3): a runtime error, exit 1.
#[test]
fn target_type_filter_without_types_fails_and_writes_nothing() {
    let sb = Sandbox::new();
    let from = hashes(&sb, "from.json", &[("//a:b", "x~y")]);
    let to = hashes(&sb, "to.json", &[("//a:b", "z~y")]);
    let out = sb.path("out/impacted.txt");
    fails_without_touching(&[&out], 1, || {
        sb.run(&[
            "get-impacted-targets",
            "-w",
            s(&sb.ws),
            "-sh",
            s(&from),
            "-fh",
            s(&to),
            "-tt",
            "Rule",
            "-o",
            s(&out),
        ])
    })
    .stderr_has("No target type info");
}

/// Writing into a directory that does not exist, or onto a directory, is an I/O failure.
#[test]
fn unwritable_output_path_fails_and_leaves_no_partial_file() {
    let sb = Sandbox::new();
    let from = hashes(&sb, "from.json", &[("//a:b", "x~y")]);
    let to = hashes(&sb, "to.json", &[("//a:b", "z~y")]);
    let run = |out: &Path| {
        sb.run(&[
            "get-impacted-targets",
            "-w",
            s(&sb.ws),
            "-sh",
            s(&from),
            "-fh",
            s(&to),
            "-o",
            s(out),
        ])
    };
    let in_missing_dir = sb.path("out/no/such/dir/impacted.txt");
    let failed = run(&in_missing_dir).exit(1);
    assert!(!sb.path("out/no").exists(), "{failed}");
    let onto_dir = sb.path("out/a-directory");
    fs::create_dir(&onto_dir).unwrap();
    fs::write(onto_dir.join("keep"), "x").unwrap();
    run(&onto_dir).exit(1);
    assert_eq!(listing(&onto_dir), BTreeSet::from(["keep".to_owned()]));
    assert_eq!(
        listing(&sb.path("out")),
        BTreeSet::from(["a-directory".to_owned()]),
        "no temporary files left"
    );
}

/// Spec 8's unit-level vector through the binary: `{1:a,2:b}` to `{1:c,2:b,3:d}` gives 1 and 3;
/// the deleted label is never reported. WORKSPACE-mode files carry no module graph, so no Bazel
/// is started (our documented departure: upstream always runs `bazel info` first).
#[test]
fn simple_diff_reports_new_and_changed_labels_without_running_bazel() {
    let sb = Sandbox::new();
    let bazel = sb.bazel("bazel", FAILING_BAZEL);
    let from = hashes(
        &sb,
        "from.json",
        &[("1", "a~a"), ("2", "b~b"), ("gone", "g~g")],
    );
    let to = hashes(&sb, "to.json", &[("1", "c~a"), ("2", "b~b"), ("3", "d~d")]);
    let run = sb
        .run(&[
            "get-impacted-targets",
            "-w",
            s(&sb.ws),
            "-b",
            s(&bazel),
            "-sh",
            s(&from),
            "-fh",
            s(&to),
        ])
        .success();
    assert_eq!(run.stdout, "1\n3\n");
    let out = sb.path("out/impacted.txt");
    sb.run(&[
        "get-impacted-targets",
        "-w",
        s(&sb.ws),
        "-b",
        s(&bazel),
        "-sh",
        s(&from),
        "-fh",
        s(&to),
        "-o",
        s(&out),
    ])
    .success();
    assert_eq!(fs::read_to_string(&out).unwrap(), "1\n3\n");
    // Nothing impacted: an empty file, not a missing one.
    sb.run(&[
        "get-impacted-targets",
        "-w",
        s(&sb.ws),
        "-b",
        s(&bazel),
        "-sh",
        s(&to),
        "-fh",
        s(&to),
        "-o",
        s(&out),
    ])
    .success();
    assert_eq!(fs::read_to_string(&out).unwrap(), "");
    assert_eq!(sb.bazel_calls("bazel"), Vec::<String>::new());
}

/// A malformed value is explained once. Today the cause chain is printed twice or three times
/// (`... bad value for "//a:b": Invalid targetHash format: abc: bad value for "//a:b": Invalid
/// targetHash format: abc: Invalid targetHash format: abc`): the format crate's `ReadError` and
/// `ParseError` put `{source}` in their `Display` and also return it from `source()`, and
/// `main` prints errors with `{:#}`, which appends every source again.
#[test]
fn malformed_hashes_message_states_its_cause_once() {
    let sb = Sandbox::new();
    let good = hashes(&sb, "good.json", &[("//a:b", "x~y")]);
    let bad = sb.write("bad-value.json", "{\"//a:b\": \"abc\"}");
    let run = sb
        .run(&[
            "get-impacted-targets",
            "-w",
            s(&sb.ws),
            "-sh",
            s(&bad),
            "-fh",
            s(&good),
        ])
        .exit(1);
    assert_eq!(
        run.stderr.matches("Invalid targetHash format").count(),
        1,
        "{run}"
    );
    let array = sb.write("array.json", "[]");
    let run = sb
        .run(&[
            "get-impacted-targets",
            "-w",
            s(&sb.ws),
            "-sh",
            s(&array),
            "-fh",
            s(&good),
        ])
        .exit(1);
    assert_eq!(run.stderr.matches("found an array").count(), 1, "{run}");
}

/// Bazel runs with stdin closed (upstream #256: tools that read stdin hung the run). Our own
/// stdin is a pipe that stays open; a fake Bazel that reads stdin to EOF must not block on it.
#[test]
fn bazel_runs_with_stdin_closed_even_when_ours_is_open() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let sb = Sandbox::new();
    let bazel = sb.bazel("bazel", "cat > /dev/null\nexit 0");
    let out = sb.path("out/hashes.json");
    let mut child = Command::new(support::bazel_diff())
        .args(["generate-hashes", "-w", s(&sb.ws), "-b", s(&bazel), s(&out)])
        .current_dir(&sb.root)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _open_stdin = child.stdin.take();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("generate-hashes hung: Bazel inherited our open stdin");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{status}: {stderr}");
    let written: serde_json::Value = serde_json::from_slice(&fs::read(&out).unwrap()).unwrap();
    assert_eq!(written, serde_json::json!({}));
}
