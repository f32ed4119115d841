//! Harness of the end-to-end tests: runs the built `bazel-diff`, finds a real Bazel (and fails
//! instead of skipping when it is missing on CI), builds git fixture repositories in temp dirs,
//! gives each fixture a private Bazel server that is shut down on drop, and writes fake Bazel
//! scripts for the failure paths.
//!
//! Each test binary uses a different part of it.
#![allow(dead_code)]

pub mod workspace;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Instant;

use bazel_diff_testkit::make_writable;

/// The `bazel-diff` binary under test.
pub fn bazel_diff() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bazel-diff"))
}

// Not every suite that includes this module needs Bazel.
#[allow(unused_imports)]
pub use bazel_diff_testkit::require_bazel;

/// What a finished `bazel-diff` run left behind.
#[derive(Debug)]
pub struct Run {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics with the whole run unless it exited 0.
    pub fn success(self) -> Self {
        assert!(self.status.success(), "expected success:\n{self}");
        self
    }

    /// Panics with the whole run unless it exited with `code`.
    pub fn exit(self, code: i32) -> Self {
        assert_eq!(self.code(), Some(code), "unexpected exit code:\n{self}");
        self
    }

    /// Panics unless stderr contains `needle`.
    pub fn stderr_has(self, needle: &str) -> Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{self}"
        );
        self
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "$ {}\nexit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.status, self.stdout, self.stderr
        )
    }
}

/// Runs `bazel-diff` with `args` in `cwd`, stdin closed.
pub fn run_bazel_diff<I, S>(cwd: &Path, args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let command = format!(
        "bazel-diff {}",
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let output = Command::new(bazel_diff())
        .args(&args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .env_remove("BAZEL_DIFF_LOG")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command}: {e}"));
    Run {
        command,
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A temp directory holding a git repository `ws/` (the workspace) and room for outputs
/// beside it, so nothing the tests write lands inside the workspace.
pub struct Fixture {
    dir: tempfile::TempDir,
    /// The temp directory itself: cwd of every `bazel-diff` run.
    pub root: PathBuf,
    /// The workspace (a git repository).
    pub ws: PathBuf,
}

impl Fixture {
    /// Writes `files` (path, content) into a fresh workspace, makes it a git repository, commits
    /// them and tags that commit `base`.
    pub fn new(files: &[(&str, &str)]) -> Fixture {
        Fixture::new_at("ws", files)
    }

    /// Like [`Fixture::new`] with the workspace at `ws_rel` inside the temp dir (so two
    /// checkouts of the same content can differ in path length and depth too).
    pub fn new_at(ws_rel: &str, files: &[(&str, &str)]) -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("bd-e2e")
            .tempdir()
            .expect("temp dir");
        let root = dir.path().to_path_buf();
        let ws = root.join(ws_rel);
        fs::create_dir_all(&ws).expect("workspace dir");
        let fixture = Fixture { dir, root, ws };
        for (path, content) in files {
            fixture.write(path, content);
        }
        fixture.git(&["init", "-q"]);
        fixture.commit("base");
        fixture.git(&["tag", "base"]);
        fixture
    }

    /// A path beside the workspace (for hash files, seed lists...).
    pub fn out(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn file(&self, rel: &str) -> PathBuf {
        self.ws.join(rel)
    }

    pub fn write(&self, rel: &str, content: &str) {
        let path = self.file(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("parent dirs");
        }
        fs::write(&path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.file(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    pub fn append(&self, rel: &str, content: &str) {
        let old = self.read(rel);
        self.write(rel, &format!("{old}{content}"));
    }

    /// Replaces the one occurrence of `from` in `rel`; panics if there is not exactly one, so a
    /// stale edit cannot silently turn a scenario into a no-op.
    pub fn replace(&self, rel: &str, from: &str, to: &str) {
        let old = self.read(rel);
        assert_eq!(
            old.matches(from).count(),
            1,
            "{rel} must contain {from:?} exactly once:\n{old}"
        );
        self.write(rel, &old.replacen(from, to, 1));
    }

    pub fn remove(&self, rel: &str) {
        fs::remove_file(self.file(rel)).unwrap_or_else(|e| panic!("remove {rel}: {e}"));
    }

    pub fn set_mode(&self, rel: &str, mode: u32) {
        fs::set_permissions(self.file(rel), fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {rel}: {e}"));
    }

    /// Runs git in the workspace (with a fixed identity and no user or system config) and
    /// returns its stdout.
    pub fn git(&self, args: &[&str]) -> String {
        let output = Command::new("git")
            .args([
                "-c",
                "user.name=bazel-diff tests",
                "-c",
                "user.email=tests@invalid",
            ])
            .args([
                "-c",
                "commit.gpgsign=false",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(&self.ws)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdin(Stdio::null())
            .output()
            .expect("run git");
        assert!(
            output.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Commits everything (including deletions and mode changes); returns the new sha.
    pub fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }

    /// Checks out `rev` on a fresh branch `branch`, discarding every change and untracked file.
    pub fn checkout_new_branch(&self, branch: &str, rev: &str) {
        self.git(&["checkout", "-q", "-f", "-B", branch, rev]);
        self.git(&["clean", "-q", "-f", "-d", "-x"]);
    }
}

/// A private Bazel server for one fixture: its own `--output_user_root` beside the workspace
/// (never shared by two fixtures, so parallel tests never share a server), no user rc file, and a `bazel shutdown` on drop. Declare it after its [`Fixture`] so it is dropped
/// first.
pub struct BazelServer {
    pub bazel: PathBuf,
    ws: PathBuf,
    root: PathBuf,
    user_root: PathBuf,
}

impl BazelServer {
    pub fn new(bazel: &Path, fixture: &Fixture) -> BazelServer {
        BazelServer {
            bazel: bazel.to_path_buf(),
            ws: fixture.ws.clone(),
            root: fixture.root.clone(),
            user_root: fixture.root.join("bazel-root"),
        }
    }

    /// The `-so` value: a private output root; no user rc file (the system rc stays: Debian's
    /// Bazel finds its install base through it); `--max_idle_secs` reaps the server even if a
    /// killed test never reaches its `Drop`.
    pub fn startup_options(&self) -> String {
        format!(
            "--output_user_root={} --nohome_rc --max_idle_secs=600",
            self.user_root.display()
        )
    }

    /// `-w <ws> -b <bazel> -so <startup options>`, shared by every Bazel-facing subcommand.
    pub fn common_args(&self) -> Vec<String> {
        vec![
            "-w".into(),
            self.ws.display().to_string(),
            "-b".into(),
            self.bazel.display().to_string(),
            "-so".into(),
            self.startup_options(),
        ]
    }

    /// Runs `bazel-diff <subcommand> <common args> <extra...>` in the fixture root.
    pub fn run(&self, subcommand: &str, extra: &[&str]) -> Run {
        let mut args = vec![subcommand.to_owned()];
        args.extend(self.common_args());
        args.extend(extra.iter().map(|s| s.to_string()));
        let started = Instant::now();
        let run = run_bazel_diff(&self.root, &args);
        eprintln!("[{:>6.2?}] {}", started.elapsed(), run.command);
        run
    }

    /// `generate-hashes` into `out` (beside the workspace); panics on failure.
    pub fn generate_hashes(&self, out: &Path, extra: &[&str]) {
        let mut args: Vec<&str> = extra.to_vec();
        let out = out.to_str().expect("utf-8 path");
        args.push(out);
        self.run("generate-hashes", &args).success();
    }

    /// `get-impacted-targets` text output, written with `-o` to `out`, one label per line.
    pub fn impacted(&self, starting: &Path, fin: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
        let mut args = vec![
            "-sh",
            starting.to_str().expect("utf-8"),
            "-fh",
            fin.to_str().expect("utf-8"),
            "-o",
            out.to_str().expect("utf-8"),
        ];
        args.extend_from_slice(extra);
        let run = self.run("get-impacted-targets", &args).success();
        assert!(
            run.stdout.is_empty(),
            "with -o nothing goes to stdout:\n{run}"
        );
        let text = fs::read_to_string(out).expect("impacted targets output");
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "every line ends with a newline: {text:?}"
        );
        text.lines().map(str::to_owned).collect()
    }
}

impl Drop for BazelServer {
    fn drop(&mut self) {
        if self.user_root.exists() {
            let status = Command::new(&self.bazel)
                .args(self.startup_options().split(' '))
                .arg("shutdown")
                .current_dir(&self.ws)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !matches!(status, Ok(s) if s.success()) {
                eprintln!(
                    "warning: `bazel shutdown` in {} failed: {status:?}",
                    self.ws.display()
                );
            }
            // Bazel leaves read-only directories behind; make the temp dir removable.
            make_writable(&self.user_root);
        }
    }
}

/// Writes an executable `#!/bin/sh` script. `install` creates the final file from another
/// process, so no write descriptor of this (multi-threaded) test process can leak into a
/// child forked meanwhile by a concurrent test, which would make running the script fail
/// with ETXTBSY.
pub fn write_script(path: &Path, body: &str) -> PathBuf {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("script dir");
    }
    let source = path.with_extension("src");
    fs::write(&source, format!("#!/bin/sh\n{body}\n")).expect("script source");
    let status = Command::new("install")
        .arg("-m755")
        .arg(&source)
        .arg(path)
        .status()
        .expect("run install");
    assert!(status.success(), "install {}", path.display());
    fs::remove_file(&source).expect("remove script source");
    path.to_path_buf()
}

/// What a failed run must leave in place of an output path that already existed.
pub const PREVIOUS: &[u8] = b"previous content, must survive a failed run\n";

/// The names in a directory.
pub fn listing(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Runs a failing command twice: with its `outputs` absent (none may appear, and no temporary
/// file may be left in their directory) and with them holding earlier content (which must be
/// left byte for byte). Returns the first run, checked to exit with `code`.
pub fn fails_without_touching(outputs: &[&Path], code: i32, run: impl Fn() -> Run) -> Run {
    let dirs: BTreeSet<&Path> = outputs.iter().map(|p| p.parent().unwrap()).collect();
    for path in outputs {
        let _ = fs::remove_file(path);
    }
    let before: Vec<_> = dirs.iter().map(|d| listing(d)).collect();
    let first = run().exit(code);
    for path in outputs {
        assert!(
            !path.exists(),
            "{} was created by a failed run:\n{first}",
            path.display()
        );
    }
    let after: Vec<_> = dirs.iter().map(|d| listing(d)).collect();
    assert_eq!(before, after, "a failed run left files behind:\n{first}");

    for path in outputs {
        fs::write(path, PREVIOUS).unwrap();
    }
    let before: Vec<_> = dirs.iter().map(|d| listing(d)).collect();
    let second = run().exit(code);
    for path in outputs {
        assert_eq!(
            fs::read(path).unwrap(),
            PREVIOUS,
            "{} was modified by a failed run:\n{second}",
            path.display()
        );
    }
    let after: Vec<_> = dirs.iter().map(|d| listing(d)).collect();
    assert_eq!(before, after, "a failed run left files behind:\n{second}");
    first
}

/// Reads a flat hashes file (the WORKSPACE-mode shape) into a sorted map.
pub fn read_hashes(path: &Path) -> BTreeMap<String, String> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}\n{text}", path.display()))
}

/// Owned, sorted copies of literal labels, for comparing with tool output.
pub fn labels(expected: &[&str]) -> Vec<String> {
    expected.iter().map(|s| s.to_string()).collect()
}

/// SplitMix64: tiny, seedable, good enough to pick edits in the randomized tests.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The seed of a randomized test: `BAZEL_DIFF_INCREMENTAL_SEED` to replay one, else the clock.
pub fn random_seed() -> u64 {
    std::env::var("BAZEL_DIFF_INCREMENTAL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
}

/// The files of a differential test: incremental runs of `generate-hashes` and cold runs of
/// the same tree, whose hash and dep-edge files must be byte-identical.
pub struct Differential<'a> {
    server: &'a BazelServer,
    changed_list: PathBuf,
    inc_hashes: PathBuf,
    inc_edges: PathBuf,
    cold_hashes: PathBuf,
    cold_edges: PathBuf,
}

impl<'a> Differential<'a> {
    pub fn new(fixture: &Fixture, server: &'a BazelServer) -> Self {
        Differential {
            server,
            changed_list: fixture.out("changed.txt"),
            inc_hashes: fixture.out("inc.json"),
            inc_edges: fixture.out("inc_edges.json"),
            cold_hashes: fixture.out("cold.json"),
            cold_edges: fixture.out("cold_edges.json"),
        }
    }

    /// A cold run that also writes the graph state the first incremental run starts from.
    pub fn cold_with_state(&self, state: &Path) {
        self.server.generate_hashes(
            &self.cold_hashes,
            &[
                "-d",
                self.cold_edges.to_str().unwrap(),
                "--write-graph-state",
                state.to_str().unwrap(),
            ],
        );
    }

    /// `generate-hashes --incremental-from from` over the `changed` paths, writing the next
    /// graph state to `next` when given; `extra` flags go first. Returns the run, whatever
    /// its exit code.
    pub fn incremental(
        &self,
        changed: &[impl AsRef<str>],
        from: &Path,
        next: Option<&Path>,
        extra: &[&str],
    ) -> Run {
        let list: String = changed
            .iter()
            .map(|p| format!("{}\n", p.as_ref()))
            .collect();
        fs::write(&self.changed_list, list).unwrap();
        let mut args: Vec<&str> = extra.to_vec();
        args.extend([
            "-d",
            self.inc_edges.to_str().unwrap(),
            "--incremental-from",
            from.to_str().unwrap(),
            "--incremental-changed",
            self.changed_list.to_str().unwrap(),
        ]);
        if let Some(next) = next {
            args.extend(["--write-graph-state", next.to_str().unwrap()]);
        }
        args.push(self.inc_hashes.to_str().unwrap());
        self.server.run("generate-hashes", &args)
    }

    /// Runs a cold `generate-hashes` now and panics with `context` unless the last
    /// incremental run wrote the same hash and dep-edge files.
    pub fn assert_same_as_cold(&self, context: &str) {
        self.server.generate_hashes(
            &self.cold_hashes,
            &["-d", self.cold_edges.to_str().unwrap()],
        );
        for (what, inc, cold) in [
            ("hashes", &self.inc_hashes, &self.cold_hashes),
            ("dep edges", &self.inc_edges, &self.cold_edges),
        ] {
            assert!(
                fs::read(inc).unwrap() == fs::read(cold).unwrap(),
                "{context}: incremental {what} differ from the cold run ({} vs {})",
                inc.display(),
                cold.display()
            );
        }
    }
}
