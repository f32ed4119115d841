//! `fingerprint` and `warmup`, the snapshot hooks (spec 2.4, 2.5, 7): the key is stable, moves
//! with the rc files and the flags but not with the sources, and warmup publishes exactly what
//! a cold `generate-hashes` and `fingerprint` would, or nothing at all.

// Test code: a panic is how a failure is reported (clippy allows unwrap only in #[test] fns).
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use support::workspace::fixture_files;
use support::{
    fails_without_touching, read_hashes, require_bazel, run_bazel_diff, write_script, BazelServer,
    Fixture,
};

/// Answers like Debian's bazel-bootstrap: `--version` says `bazel no_version`, everything else
/// fails. Enough for `fingerprint`, which never queries.
const DEBIAN_LIKE_BAZEL: &str = r#"case "$1" in
  --version) echo "bazel no_version" ;;
  *) echo "ERROR: Version information not available" >&2; exit 2 ;;
esac"#;

struct Workspace {
    _dir: tempfile::TempDir,
    root: PathBuf,
    ws: PathBuf,
    bazel: PathBuf,
}

impl Workspace {
    fn new() -> Workspace {
        let dir = tempfile::Builder::new().prefix("bd-fp").tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let ws = root.join("ws");
        fs::create_dir_all(ws.join("tools")).unwrap();
        fs::write(ws.join("WORKSPACE"), "").unwrap();
        fs::write(ws.join("BUILD"), "filegroup(name = \"x\")\n").unwrap();
        fs::write(
            ws.join(".bazelrc"),
            "build --jobs=2\nimport %workspace%/tools/ci.bazelrc\ntry-import %workspace%/user.bazelrc\n",
        )
        .unwrap();
        fs::write(ws.join("tools/ci.bazelrc"), "build --verbose_failures\n").unwrap();
        let bazel = write_script(&root.join("bin/bazel"), DEBIAN_LIKE_BAZEL);
        Workspace {
            _dir: dir,
            root,
            ws,
            bazel,
        }
    }

    fn write(&self, rel: &str, content: &str) {
        fs::write(self.ws.join(rel), content).unwrap();
    }

    /// The fingerprint JSON printed with `-o -`.
    fn fingerprint(&self, extra: &[&str]) -> Value {
        let mut args = vec![
            "fingerprint",
            "-w",
            self.ws.to_str().unwrap(),
            "-b",
            self.bazel.to_str().unwrap(),
            "-o",
            "-",
        ];
        args.extend_from_slice(extra);
        let run = run_bazel_diff(&self.root, &args).success();
        assert!(
            run.stdout.ends_with("}\n"),
            "pretty JSON and a newline:\n{run}"
        );
        serde_json::from_str(&run.stdout).unwrap()
    }
}

fn component<'a>(fingerprint: &'a Value, name: &str) -> &'a str {
    fingerprint["components"][name].as_str().unwrap()
}

/// Asserts that `after` differs from `before` in the key and in exactly the `changed`
/// component.
fn moved_only(before: &Value, after: &Value, changed: &str, why: &str) {
    assert_ne!(before["fingerprint"], after["fingerprint"], "{why}");
    let names: Vec<&String> = before["components"].as_object().unwrap().keys().collect();
    assert!(
        names.iter().any(|n| *n == changed),
        "{changed} is a component"
    );
    for name in names {
        if name == changed {
            assert_ne!(
                component(before, name),
                component(after, name),
                "{why}: {name}"
            );
        } else {
            assert_eq!(
                component(before, name),
                component(after, name),
                "{why}: {name}"
            );
        }
    }
}

#[test]
fn fingerprint_is_stable_and_moves_with_rc_files_flags_and_workspace_files_not_sources() {
    let w = Workspace::new();
    let first = w.fingerprint(&[]);
    assert_eq!(first, w.fingerprint(&[]), "two runs on one workspace agree");
    // Upstream's five components first, in upstream's order, then our documented extensions
    // (crates/fingerprint), which may grow.
    let components: Vec<&str> = first["components"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        components[..5],
        [
            "bazelDiffVersion",
            "bazelVersion",
            "moduleLock",
            "bazelrc",
            "flags"
        ],
        "{components:?}"
    );
    for ours in ["moduleBazel", "workspaceFiles", "bazelignore"] {
        assert!(components.contains(&ours), "{ours} in {components:?}");
    }
    let flags: Vec<&String> = first["flags"].as_object().unwrap().keys().collect();
    assert_eq!(
        flags,
        [
            "bazelCommandOptions",
            "bazelStartupOptions",
            "cqueryCommandOptions",
            "cqueryExpression",
            "excludeExternalTargets",
            "fineGrainedHashExternalRepos",
            "ignoredRuleHashingAttributes",
            "includeTargetType",
            "keepGoing",
            "targetType",
            "useCquery",
        ]
    );
    assert!(first["fingerprint"].as_str().unwrap().len() == 64);

    // Sources are not part of the key: the hashes computed after restoring are.
    w.write("BUILD", "filegroup(name = \"y\")\n");
    assert_eq!(
        first,
        w.fingerprint(&[]),
        "a BUILD edit leaves the key alone"
    );

    w.write(".bazelrc", "build --jobs=4\nimport %workspace%/tools/ci.bazelrc\ntry-import %workspace%/user.bazelrc\n");
    let rc_edited = w.fingerprint(&[]);
    moved_only(&first, &rc_edited, "bazelrc", ".bazelrc edited");

    w.write("tools/ci.bazelrc", "build --noverbose_failures\n");
    let imported_edited = w.fingerprint(&[]);
    moved_only(
        &rc_edited,
        &imported_edited,
        "bazelrc",
        "imported rc file edited",
    );

    w.write("user.bazelrc", "build --color=no\n");
    let try_imported = w.fingerprint(&[]);
    moved_only(
        &imported_edited,
        &try_imported,
        "bazelrc",
        "try-import target appeared",
    );

    // Our extension: imports are followed recursively (upstream reads one level).
    w.write(
        "tools/ci.bazelrc",
        "build --noverbose_failures\nimport %workspace%/tools/deeper.bazelrc\n",
    );
    w.write("tools/deeper.bazelrc", "build --jobs=3\n");
    let before_deeper_edit = w.fingerprint(&[]);
    w.write("tools/deeper.bazelrc", "build --jobs=5\n");
    let deeper_edited = w.fingerprint(&[]);
    moved_only(
        &before_deeper_edit,
        &deeper_edited,
        "bazelrc",
        "rc file imported two levels down",
    );
    w.write("tools/ci.bazelrc", "build --noverbose_failures\n");
    assert_eq!(
        try_imported,
        w.fingerprint(&[]),
        "back to the earlier rc files, back to the key"
    );

    let typed = w.fingerprint(&["--includeTargetType"]);
    moved_only(&try_imported, &typed, "flags", "--includeTargetType");
    assert_eq!(typed["flags"]["includeTargetType"], "true");

    w.write("WORKSPACE", "workspace(name = \"renamed\")\n");
    let workspace_edited = w.fingerprint(&[]);
    moved_only(
        &try_imported,
        &workspace_edited,
        "workspaceFiles",
        "WORKSPACE edited",
    );

    w.write("MODULE.bazel.lock", "{}\n");
    let module_lock = w.fingerprint(&[]);
    moved_only(
        &workspace_edited,
        &module_lock,
        "moduleLock",
        "MODULE.bazel.lock appeared",
    );
}

/// Our extension (crates/cli fingerprint.rs): the hashing inputs that upstream leaves out of
/// the key (spec 2.4 NOTE), here the seed files' contents, are covered by `hashingInputs`.
#[test]
fn fingerprint_moves_with_seed_file_contents() {
    let w = Workspace::new();
    fs::write(w.root.join("seed.txt"), "seed v1\n").unwrap();
    fs::write(w.root.join("seeds.list"), "seed.txt\n").unwrap();
    let first = w.fingerprint(&["-s", "seeds.list"]);
    assert_eq!(first, w.fingerprint(&["-s", "seeds.list"]));
    fs::write(w.root.join("seed.txt"), "seed v2\n").unwrap();
    let second = w.fingerprint(&["-s", "seeds.list"]);
    moved_only(&first, &second, "hashingInputs", "seed file edited");
}

/// `-o -` is stdout and creates no file named `-`; `-o <file>` holds the same bytes.
#[test]
fn fingerprint_dash_output_is_stdout_and_creates_no_file() {
    let w = Workspace::new();
    let args = |out: Option<&str>| {
        let mut args = vec![
            "fingerprint".to_string(),
            "-w".into(),
            w.ws.display().to_string(),
            "-b".into(),
            w.bazel.display().to_string(),
        ];
        if let Some(out) = out {
            args.extend(["-o".to_string(), out.to_string()]);
        }
        args
    };
    let dash = run_bazel_diff(&w.root, args(Some("-"))).success();
    assert!(!w.root.join("-").exists(), "no file named `-` in the cwd");
    assert!(
        !w.ws.join("-").exists(),
        "no file named `-` in the workspace"
    );
    let absent = run_bazel_diff(&w.root, args(None)).success();
    assert_eq!(dash.stdout, absent.stdout);
    let file = w.root.join("fingerprint.json");
    let to_file = run_bazel_diff(&w.root, args(Some(file.to_str().unwrap()))).success();
    assert!(to_file.stdout.is_empty(), "{to_file}");
    assert_eq!(fs::read_to_string(&file).unwrap(), dash.stdout);
}

/// Base hashes byte-identical to `generate-hashes` with the same flags, a fingerprint
/// byte-identical to `fingerprint` with the same flags, parent directories created.
#[test]
fn warmup_publishes_what_generate_hashes_and_fingerprint_would() {
    let Some(bazel) = require_bazel() else { return };
    let fixture = Fixture::new(&fixture_files());
    let server = BazelServer::new(&bazel, &fixture);
    let base = fixture.out("snap/a/b/base_hashes.json");
    let fingerprint = fixture.out("snap/c/fingerprint.json");
    let flags = ["--includeTargetType", "-tt", "Rule,SourceFile"];
    let mut args = vec![
        "--base-hashes",
        base.to_str().unwrap(),
        "--fingerprint-output",
        fingerprint.to_str().unwrap(),
    ];
    args.extend_from_slice(&flags);
    let run = server.run("warmup", &args).success();
    assert!(run.stdout.is_empty(), "{run}");

    let cold = fixture.out("cold.json");
    server.generate_hashes(&cold, &flags);
    assert!(
        fs::read(&base).unwrap() == fs::read(&cold).unwrap(),
        "warmup's base hashes are byte-identical to generate-hashes'"
    );
    let hashes = read_hashes(&base);
    assert!(hashes.contains_key("//lib:upper") && hashes.contains_key("//lib:data/a.txt"));
    assert!(
        !hashes.contains_key("//lib:upper.txt"),
        "-tt Rule,SourceFile applies to warmup too"
    );

    let fresh = fixture.out("fresh-fingerprint.json");
    let mut fp_args = vec!["-o", fresh.to_str().unwrap()];
    fp_args.extend_from_slice(&flags);
    server.run("fingerprint", &fp_args).success();
    let written = fs::read_to_string(&fingerprint).unwrap();
    assert_eq!(written, fs::read_to_string(&fresh).unwrap());
    assert!(written.ends_with("}\n"));
    let json: Value = serde_json::from_str(&written).unwrap();
    assert_eq!(
        json["flags"]["bazelStartupOptions"],
        server.startup_options()
    );
    assert_eq!(json["flags"]["includeTargetType"], "true");
    assert_eq!(json["flags"]["targetType"], "Rule,SourceFile");
}

/// A failing Bazel: warmup exits non-zero and publishes neither file (exit 0 is the "safe to
/// snapshot" signal, so a half-done warmup must not look done).
#[test]
fn warmup_with_failing_bazel_writes_neither_file() {
    let w = Workspace::new();
    let failing = write_script(
        &w.root.join("bin/failing-bazel"),
        "echo 'ERROR: fake bazel failed (marker 51c2)' >&2\nexit 1",
    );
    let base = w.root.join("snap/base_hashes.json");
    let fingerprint = w.root.join("snap/fingerprint.json");
    fs::create_dir_all(w.root.join("snap")).unwrap();
    let outputs: [&Path; 2] = [&base, &fingerprint];
    fails_without_touching(&outputs, 1, || {
        run_bazel_diff(
            &w.root,
            [
                "warmup",
                "-w",
                w.ws.to_str().unwrap(),
                "-b",
                failing.to_str().unwrap(),
                "--base-hashes",
                base.to_str().unwrap(),
                "--fingerprint-output",
                fingerprint.to_str().unwrap(),
            ],
        )
    })
    .stderr_has("marker 51c2");
}
