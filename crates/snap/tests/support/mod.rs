//! Harness of the `bazel-diff-snap` end-to-end tests: real git, real Bazel, the built
//! `bazel-diff-snap` and `bazel-diff` binaries.
//!
//! A [`Lab`] is one temp directory holding a fixture repository (`ws/`, a small WORKSPACE-mode
//! genrule/filegroup workspace with a few commits and branches), a snapshot store (`store/`),
//! and a clone (`cold/`) plus a private output root (`cold-bazel/`) for independent cold
//! `bazel-diff` runs. Dropping the lab shuts down every Bazel server that lives under it (the
//! local driver's servers under `store/.work/*/bazel/*`, the cold one, and anything else whose
//! command line names the lab), then makes the tree writable so the temp dir can go.
//!
//! `bazel-diff` is not a dependency of this crate, so it must have been built beside
//! `bazel-diff-snap` (`cargo build -p bazel-diff -p bazel-diff-snap`, or any `cargo test`
//! of the whole workspace), or be named by `$BAZEL_DIFF_SNAP_TEST_BAZEL_DIFF`.
//!
//! Each test binary uses a different part of it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use bazel_diff_testkit::make_writable;
use serde_json::Value;

/// The orchestrator under test.
pub fn snap_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_bazel-diff-snap"))
}

/// The `bazel-diff` the orchestrator drives: `$BAZEL_DIFF_SNAP_TEST_BAZEL_DIFF`, else the one
/// built next to `bazel-diff-snap`. Missing is a setup error, never a skip.
pub fn bazel_diff_bin() -> PathBuf {
    if let Some(path) =
        std::env::var_os("BAZEL_DIFF_SNAP_TEST_BAZEL_DIFF").filter(|p| !p.is_empty())
    {
        return PathBuf::from(path);
    }
    let sibling = snap_bin()
        .parent()
        .expect("the binary has a directory")
        .join("bazel-diff");
    assert!(
        sibling.is_file(),
        "{} does not exist: build it first with `cargo build -p bazel-diff -p bazel-diff-snap` \
         (or set BAZEL_DIFF_SNAP_TEST_BAZEL_DIFF)",
        sibling.display()
    );
    sibling
}

// Not every suite that includes this module needs Bazel.
#[allow(unused_imports)]
pub use bazel_diff_testkit::require_bazel;

/// What a finished run left behind.
#[derive(Debug)]
pub struct Run {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics with the whole run unless it exited with `code` (a signal is never a code).
    #[track_caller]
    pub fn exit(self, code: i32) -> Self {
        assert_eq!(self.code(), Some(code), "unexpected exit status:\n{self}");
        self
    }

    #[track_caller]
    pub fn success(self) -> Self {
        self.exit(0)
    }

    /// Panics unless stderr contains `needle`.
    #[track_caller]
    pub fn stderr_has(self, needle: &str) -> Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{self}"
        );
        self
    }

    #[track_caller]
    pub fn stdout_has(self, needle: &str) -> Self {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}:\n{self}"
        );
        self
    }

    /// stdout parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{self}"))
    }

    /// The signal that ended the process, if one did.
    pub fn signal(&self) -> Option<i32> {
        self.status.signal()
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "$ {}\nexit: {} after {:.2?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command, self.status, self.elapsed, self.stdout, self.stderr
        )
    }
}

fn show(args: &[std::ffi::OsString]) -> String {
    args.iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A process started with [`Lab::spawn`]; killed if dropped before [`Spawned::wait`].
pub struct Spawned {
    command: String,
    started: Instant,
    child: Option<Child>,
}

impl Spawned {
    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("not waited yet").id()
    }

    /// Whether the process has not exited yet.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .expect("not waited yet")
            .try_wait()
            .expect("try_wait")
            .is_none()
    }

    pub fn wait(mut self) -> Run {
        let child = self.child.take().expect("waited once");
        let output = child.wait_with_output().expect("wait for the child");
        let run = Run {
            command: std::mem::take(&mut self.command),
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            elapsed: self.started.elapsed(),
        };
        eprintln!("[{:>7.2?}] {} -> {}", run.elapsed, run.command, run.status);
        run
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The fixture's commits, by name:
///
/// ```text
/// main:  c0 ── c1 ── c2 ── c3 ── c4
///               ├── side   (branch `side`: lib/extra.txt changed)
///               └── rc     (branch `rc`: adds a .bazelrc, nothing else)
/// ```
///
/// * `c0`: the base (see [`FIXTURE`]).
/// * `c1`: `lib/in.txt` changed (so `//lib:gen` and `//app:app` change).
/// * `c2`: `app/README.md` changed (`//app:docs`).
/// * `c3`: `tools/defs.bzl` changed (the macro behind `//lib:gen`).
/// * `c4`: `app/main.txt` changed and a new package `//extra` added.
pub const COMMITS: [&str; 7] = ["c0", "c1", "c2", "c3", "c4", "side", "rc"];

/// The files of `c0`.
pub const FIXTURE: &[(&str, &str)] = &[
    ("WORKSPACE", "workspace(name = \"snap_fixture\")\n"),
    ("tools/BUILD", "exports_files([\"defs.bzl\"])\n"),
    (
        "tools/defs.bzl",
        "def txt_gen(name, src, visibility = None):\n    native.genrule(\n        name = name,\n        srcs = [src],\n        outs = [name + \".txt\"],\n        cmd = \"cp $< $@\",\n        visibility = visibility,\n    )\n",
    ),
    (
        "lib/BUILD",
        "load(\"//tools:defs.bzl\", \"txt_gen\")\n\ntxt_gen(name = \"gen\", src = \"in.txt\", visibility = [\"//visibility:public\"])\n\nfilegroup(name = \"files\", srcs = [\"in.txt\", \"extra.txt\"], visibility = [\"//visibility:public\"])\n",
    ),
    ("lib/in.txt", "one\n"),
    ("lib/extra.txt", "extra\n"),
    (
        "app/BUILD",
        "genrule(\n    name = \"app\",\n    srcs = [\"//lib:gen\", \"main.txt\"],\n    outs = [\"app.out\"],\n    cmd = \"cat $(SRCS) > $@\",\n)\n\nfilegroup(name = \"docs\", srcs = [\"README.md\"])\n\nfilegroup(name = \"all\", srcs = [\":app\", \"//lib:files\"])\n",
    ),
    ("app/main.txt", "main\n"),
    ("app/README.md", "# app\n"),
];

/// One fixture repository, one store, one cold checkout: see the module docs.
pub struct Lab {
    pub root: PathBuf,
    /// The user's checkout (`--workspace`).
    pub ws: PathBuf,
    pub store: PathBuf,
    /// The Bazel every run uses (`--bazel`).
    pub bazel: PathBuf,
    pub bazel_diff: PathBuf,
    shas: BTreeMap<String, String>,
    /// Bazel output roots the lab itself starts servers in (cold runs).
    extra_roots: std::cell::RefCell<Vec<PathBuf>>,
    dir: Option<tempfile::TempDir>,
}

impl Lab {
    /// A lab whose fixture has every commit of [`COMMITS`], checked out clean on `main` at `c4`.
    pub fn new(bazel: &Path) -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("snap-e2e-")
            .tempdir()
            .expect("temp dir");
        // Canonical, so paths the tool prints (it canonicalizes the store) compare equal.
        let root = dir.path().canonicalize().expect("canonical temp dir");
        let ws = root.join("ws");
        fs::create_dir_all(&ws).unwrap();
        let mut lab = Lab {
            ws,
            store: root.join("store"),
            bazel: bazel.to_path_buf(),
            bazel_diff: bazel_diff_bin(),
            shas: BTreeMap::new(),
            extra_roots: Default::default(),
            root,
            dir: Some(dir),
        };
        for (path, content) in FIXTURE {
            lab.write(path, content);
        }
        lab.git(&["init", "-q", "-b", "main"]);
        lab.commit_as("c0");
        lab.write("lib/in.txt", "two\n");
        lab.commit_as("c1");
        lab.write("app/README.md", "# app, documented\n");
        lab.commit_as("c2");
        let defs = lab
            .read("tools/defs.bzl")
            .replace("cp $< $@", "cat $< > $@");
        lab.write("tools/defs.bzl", &defs);
        lab.commit_as("c3");
        lab.write("app/main.txt", "main, changed\n");
        lab.write(
            "extra/BUILD",
            "filegroup(name = \"extra\", srcs = [\"x.txt\"])\n",
        );
        lab.write("extra/x.txt", "x\n");
        lab.commit_as("c4");
        let c1 = lab.sha("c1");
        lab.git(&["checkout", "-q", "-b", "side", &c1]);
        lab.write("lib/extra.txt", "extra, on a side branch\n");
        lab.commit_as("side");
        lab.git(&["checkout", "-q", "-b", "rc", &c1]);
        lab.write(".bazelrc", "build --verbose_failures\n");
        lab.commit_as("rc");
        lab.git(&["checkout", "-q", "main"]);
        lab
    }

    /// The full sha of a commit of [`COMMITS`].
    pub fn sha(&self, name: &str) -> String {
        self.shas
            .get(name)
            .unwrap_or_else(|| panic!("no commit {name} in the fixture"))
            .clone()
    }

    fn commit_as(&mut self, name: &str) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", name]);
        let sha = self.git(&["rev-parse", "HEAD"]);
        self.shas.insert(name.to_owned(), sha);
    }

    pub fn write(&self, rel: &str, content: &str) {
        let path = self.ws.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.ws.join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    /// A path in the lab beside the workspace (outputs, reports).
    pub fn out(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Runs git in the user's checkout (fixed identity, no user or system config).
    pub fn git(&self, args: &[&str]) -> String {
        git_in(&self.ws, args)
    }

    /// `--workspace <ws> --store <store> --bazel <bazel> --bazel-diff <bazel-diff>`.
    pub fn common(&self) -> Vec<String> {
        self.common_for(&self.ws)
    }

    pub fn common_for(&self, ws: &Path) -> Vec<String> {
        self.common_with(ws, &self.bazel)
    }

    /// Like [`Lab::common`] with another workspace and Bazel.
    pub fn common_with(&self, ws: &Path, bazel: &Path) -> Vec<String> {
        vec![
            "--workspace".into(),
            ws.display().to_string(),
            "--store".into(),
            self.store.display().to_string(),
            "--bazel".into(),
            bazel.display().to_string(),
            "--bazel-diff".into(),
            self.bazel_diff.display().to_string(),
        ]
    }

    fn command<S: AsRef<OsStr>>(&self, args: &[S], env: &[(&str, &str)]) -> (Command, String) {
        let args: Vec<std::ffi::OsString> = args.iter().map(|a| a.as_ref().to_owned()).collect();
        let mut cmd = Command::new(snap_bin());
        cmd.args(&args)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("BAZEL_DIFF_SNAP_FAILPOINT")
            .env_remove("BAZEL_DIFF_SNAP_LOG")
            .env_remove("BAZEL_DIFF_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let shown = if env.is_empty() {
            format!("bazel-diff-snap {}", show(&args))
        } else {
            let vars: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{} bazel-diff-snap {}", vars.join(" "), show(&args))
        };
        (cmd, shown)
    }

    /// Runs `bazel-diff-snap <args>` in the lab root and waits for it.
    pub fn snap<S: AsRef<OsStr>>(&self, args: &[S]) -> Run {
        self.snap_env(args, &[])
    }

    pub fn snap_env<S: AsRef<OsStr>>(&self, args: &[S], env: &[(&str, &str)]) -> Run {
        self.spawn_env(args, env).wait()
    }

    /// Starts `bazel-diff-snap <args>` without waiting.
    pub fn spawn<S: AsRef<OsStr>>(&self, args: &[S]) -> Spawned {
        self.spawn_env(args, &[])
    }

    pub fn spawn_env<S: AsRef<OsStr>>(&self, args: &[S], env: &[(&str, &str)]) -> Spawned {
        let (mut cmd, command) = self.command(args, env);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {command}: {e}"));
        Spawned {
            command,
            started,
            child: Some(child),
        }
    }

    /// `record` of `rev` with extra arguments.
    pub fn record(&self, rev: &str, extra: &[&str]) -> Run {
        let mut args = vec!["record".to_owned()];
        args.extend(self.common());
        args.extend(["--base-sha".to_owned(), rev.to_owned()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        self.snap(&args)
    }

    /// `consume --target-sha <target> --out <out> <extra...>`: `out` is removed first, and is
    /// checked to exist exactly when the run exits 0 (`--out` is never left behind by a
    /// failed run).
    pub fn consume(&self, target: &str, out: &Path, extra: &[&str]) -> Run {
        self.consume_in(&self.ws, target, out, extra)
    }

    pub fn consume_in(&self, ws: &Path, target: &str, out: &Path, extra: &[&str]) -> Run {
        let _ = fs::remove_file(out);
        let mut args = vec!["consume".to_owned()];
        args.extend(self.common_for(ws));
        args.extend(["--target-sha".to_owned(), target.to_owned()]);
        args.extend(["--out".to_owned(), out.display().to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let run = self.snap(&args);
        check_out_file(&run, out);
        run
    }

    /// `resolve --target-sha <target> <extra...>`, expected to exit 0, as JSON.
    pub fn resolve(&self, target: &str, extra: &[&str]) -> Value {
        let mut args = vec!["resolve".to_owned()];
        args.extend(self.common());
        args.extend(["--target-sha".to_owned(), target.to_owned()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        self.snap(&args).success().json()
    }

    /// `list --json`, expected to exit 0.
    pub fn list(&self) -> Vec<Value> {
        let run = self
            .snap(&["list", "--store", self.store.to_str().unwrap(), "--json"])
            .success();
        match run.json() {
            Value::Array(entries) => entries,
            other => panic!("list --json is not an array: {other}\n{run}"),
        }
    }

    /// The base shas of the listed entries, sorted.
    pub fn listed_bases(&self) -> Vec<String> {
        let mut bases: Vec<String> = self
            .list()
            .iter()
            .map(|e| e["base_sha"].as_str().expect("base_sha").to_owned())
            .collect();
        bases.sort();
        bases
    }

    /// `verify <extra...>`.
    pub fn verify(&self, extra: &[&str]) -> Run {
        let mut args = vec!["verify", "--store", self.store.to_str().unwrap()];
        args.extend_from_slice(extra);
        self.snap(&args)
    }

    /// `gc <extra...> --json`, expected to exit 0, as JSON.
    pub fn gc(&self, extra: &[&str]) -> Value {
        self.snap(&self.gc_args(extra)).success().json()
    }

    /// `gc --store <store> --json <extra...>`.
    pub fn gc_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = ["gc", "--store", self.store.to_str().unwrap()]
            .map(str::to_owned)
            .to_vec();
        args.push("--json".to_owned());
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// The Bazel output roots of the local driver (`<store>/.work/*/bazel/*`).
    pub fn output_roots(&self) -> Vec<PathBuf> {
        self.work_dirs()
            .iter()
            .flat_map(|w| read_dir_paths(&w.join("bazel")))
            .collect()
    }

    /// Entry directories visible in the store (`<store>/<fingerprint>/<sha>`), sorted.
    pub fn entry_dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let Ok(fps) = fs::read_dir(&self.store) else {
            return out;
        };
        for fp in fps.flatten() {
            if fp.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            for entry in fs::read_dir(fp.path()).unwrap().flatten() {
                out.push(entry.path());
            }
        }
        out.sort();
        out
    }

    /// The one entry directory of `base` (panics unless there is exactly one).
    pub fn entry_dir(&self, base: &str) -> PathBuf {
        let found: Vec<PathBuf> = self
            .entry_dirs()
            .into_iter()
            .filter(|p| p.file_name().is_some_and(|n| n == base))
            .collect();
        assert_eq!(found.len(), 1, "entries of {base}: {found:?}");
        found.into_iter().next().unwrap()
    }

    /// The store's `.work/<repo id>` directories.
    pub fn work_dirs(&self) -> Vec<PathBuf> {
        read_dir_paths(&self.store.join(".work"))
    }

    /// Impacted targets of (base, target) computed without the orchestrator: a clone of the
    /// fixture checked out at each commit, `bazel-diff generate-hashes` on a private output root
    /// that no snapshot ever used, then `get-impacted-targets`. `flags` go to generate-hashes
    /// (as `--flag` does for the orchestrator).
    pub fn cold_impacted(&self, bazel: &Path, base: &str, target: &str, flags: &[&str]) -> Vec<u8> {
        self.cold_impacted_with(bazel, base, target, flags, &[])
    }

    /// [`Lab::cold_impacted`] with `impacted_flags` for get-impacted-targets (as
    /// `--impacted-flag` does for the orchestrator).
    pub fn cold_impacted_with(
        &self,
        bazel: &Path,
        base: &str,
        target: &str,
        flags: &[&str],
        impacted_flags: &[&str],
    ) -> Vec<u8> {
        let cold = self.root.join("cold");
        if !cold.exists() {
            let status = Command::new("git")
                .args(["clone", "-q", "--no-checkout"])
                .arg(&self.ws)
                .arg(&cold)
                .stdin(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "git clone of the fixture");
        }
        git_in(
            &cold,
            &[
                "fetch",
                "-q",
                "origin",
                "+refs/heads/*:refs/remotes/origin/*",
            ],
        );
        let user_root = self.root.join("cold-bazel");
        self.extra_roots.borrow_mut().push(user_root.clone());
        let startup = format!("--output_user_root={}", user_root.display());
        let hashes = |rev: &str, name: &str| -> PathBuf {
            git_in(&cold, &["checkout", "-q", "--detach", "-f", rev]);
            git_in(&cold, &["clean", "-q", "-ffdx", "-e", "/bazel-*"]);
            let out = self.root.join(name);
            let mut args: Vec<String> = vec![
                "generate-hashes".into(),
                "-w".into(),
                cold.display().to_string(),
                "-b".into(),
                bazel.display().to_string(),
                "-so".into(),
                startup.clone(),
            ];
            args.extend(flags.iter().map(|s| s.to_string()));
            args.push(out.display().to_string());
            self.bazel_diff_run(&args).success();
            out
        };
        let base_hashes = hashes(base, "cold-base.json");
        let target_hashes = hashes(target, "cold-target.json");
        let out = self.root.join("cold-impacted.txt");
        let _ = fs::remove_file(&out);
        let mut args: Vec<String> = vec![
            "get-impacted-targets".into(),
            "-w".into(),
            cold.display().to_string(),
            "-b".into(),
            bazel.display().to_string(),
            "-sh".into(),
            base_hashes.display().to_string(),
            "-fh".into(),
            target_hashes.display().to_string(),
            "-o".into(),
            out.display().to_string(),
        ];
        args.extend(impacted_flags.iter().map(|s| s.to_string()));
        self.bazel_diff_run(&args).success();
        fs::read(&out).expect("cold impacted targets")
    }

    fn bazel_diff_run(&self, args: &[String]) -> Run {
        let started = Instant::now();
        let output = Command::new(&self.bazel_diff)
            .args(args)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .env_remove("BAZEL_DIFF_LOG")
            .output()
            .expect("run bazel-diff");
        let run = Run {
            command: format!("bazel-diff {}", args.join(" ")),
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            elapsed: started.elapsed(),
        };
        eprintln!("[{:>7.2?}] {} -> {}", run.elapsed, run.command, run.status);
        run
    }

    /// Writes an executable wrapper around the lab's Bazel with two knobs, read from the
    /// environment of each call (the orchestrator passes its environment down):
    ///
    /// * `SNAP_TEST_SLOW_BAZEL=<secs>`: sleep that long first (to hold a consume in its
    ///   hashing phase);
    /// * `SNAP_TEST_FAIL_WARM=1`: fail any call on the local driver's warm output roots
    ///   (`<store>/.work/<id>/bazel/<fingerprint>`), as a crashed or broken warm server would;
    ///   other output roots (the cold path's) work.
    ///
    /// Its content is fixed, so its fingerprint is stable.
    pub fn wrapped_bazel(&self) -> PathBuf {
        write_script(
            &self.root.join("tools/wrapped-bazel"),
            &format!(
                r#"if [ -n "$SNAP_TEST_SLOW_BAZEL" ]; then sleep "$SNAP_TEST_SLOW_BAZEL"; fi
if [ -n "$SNAP_TEST_FAIL_WARM" ]; then
  case "$*" in
    *"/.work/"*"/bazel/"*) echo "wrapped-bazel: simulated failure of the warm Bazel" >&2; exit 37 ;;
  esac
fi
exec '{}' "$@""#,
                self.bazel.display()
            ),
        )
    }

    /// Makes [`Lab::shutdown_servers`] also look for servers under `user_root`.
    pub fn register_output_root(&self, user_root: &Path) {
        self.extra_roots.borrow_mut().push(user_root.to_path_buf());
    }

    /// Pids of live processes (other than this one) whose command line mentions `needle`.
    pub fn processes_mentioning(needle: &Path) -> Vec<u32> {
        let needle = needle.as_os_str().as_encoded_bytes();
        let me = std::process::id();
        let mut pids = Vec::new();
        for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            if cmdline.windows(needle.len()).any(|w| w == needle) && !is_zombie(pid) {
                pids.push(pid);
            }
        }
        pids
    }

    /// Shuts down every Bazel server under the lab: a polite `bazel shutdown` from the
    /// workspace each output base belongs to, then SIGKILL for anything still naming the lab.
    pub fn shutdown_servers(&self) {
        let mut roots: Vec<PathBuf> = Vec::new();
        for work in self.work_dirs() {
            roots.extend(read_dir_paths(&work.join("bazel")));
            // The cold fallback's scratch output roots (normally gone with their run).
            for run in read_dir_paths(&work) {
                if run
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("run-"))
                {
                    roots.push(run.join("bazel"));
                }
            }
        }
        roots.extend(self.extra_roots.borrow().iter().cloned());
        roots.sort();
        roots.dedup();
        for user_root in roots {
            for output_base in read_dir_paths(&user_root) {
                let pid_file = output_base.join("server/server.pid.txt");
                if !pid_file.exists() {
                    continue;
                }
                let Ok(workspace) = fs::read_to_string(output_base.join("DO_NOT_BUILD_HERE"))
                else {
                    continue;
                };
                let workspace = PathBuf::from(workspace.trim());
                if !workspace.is_dir() {
                    continue;
                }
                let _ = Command::new(&self.bazel)
                    .arg(format!("--output_user_root={}", user_root.display()))
                    .arg("shutdown")
                    .current_dir(&workspace)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let mut needle = self.root.clone().into_os_string();
        needle.push("/");
        let needle = PathBuf::from(needle);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = Lab::processes_mentioning(&needle);
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                eprintln!(
                    "warning: processes still alive under {}: {left:?}",
                    needle.display()
                );
                break;
            }
            for pid in &left {
                eprintln!(
                    "warning: killing leftover process {pid} under {}",
                    needle.display()
                );
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.shutdown_servers();
        // Store entries are 0444/0555 and Bazel leaves read-only trees behind.
        make_writable(&self.root);
        if std::env::var_os("SNAP_TEST_KEEP").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("keeping {}", dir.keep().display());
            }
        }
    }
}

fn is_zombie(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after = stat.rsplit_once(')')?.1;
            after.split_whitespace().next().map(|s| s == "Z")
        })
        .unwrap_or(true)
}

/// Checks the `--out` contract: written exactly when the run exited 0.
#[track_caller]
pub fn check_out_file(run: &Run, out: &Path) {
    if run.code() == Some(0) {
        assert!(
            out.is_file(),
            "exit 0 but {} was not written:\n{run}",
            out.display()
        );
    } else {
        assert!(
            !out.exists(),
            "{} exists after a failed run:\n{run}",
            out.display()
        );
    }
}

/// Runs git in `dir` with a fixed identity and no user or system config; returns stdout.
pub fn git_in(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=snap tests",
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
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::null())
        .output()
        .expect("run git");
    assert!(
        output.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

pub fn read_dir_paths(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// Writes an executable `#!/bin/sh` script through `install`, so no write descriptor of this
/// multi-threaded process can leak into a child forked meanwhile (ETXTBSY).
pub fn write_script(path: &Path, body: &str) -> PathBuf {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let source = path.with_extension("src");
    fs::write(&source, format!("#!/bin/sh\n{body}\n")).unwrap();
    let status = Command::new("install")
        .arg("-m755")
        .arg(&source)
        .arg(path)
        .status()
        .expect("run install");
    assert!(status.success(), "install {}", path.display());
    fs::remove_file(&source).unwrap();
    path.to_path_buf()
}

/// Makes a published (0444) file writable and gives it new content.
pub fn overwrite_entry_file(path: &Path, content: &[u8]) {
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(path, content).unwrap();
}

/// Sleeps until the wall clock is in a later second than now, so entries recorded before and
/// after have different `created_unix` (the store's time resolution).
pub fn next_second() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let left = Duration::from_secs(now.as_secs() + 1) - now;
    std::thread::sleep(left + Duration::from_millis(20));
}

/// Waits up to `timeout` for `cond`, polling.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The names of the `phases` of a consume report.
pub fn phase_names(report: &Value) -> Vec<String> {
    report["phases"]
        .as_array()
        .expect("phases is an array")
        .iter()
        .map(|p| {
            let secs = p[1].as_f64().expect("phase seconds");
            assert!(secs >= 0.0, "negative phase time: {p}");
            p[0].as_str().expect("phase name").to_owned()
        })
        .collect()
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}\n{text}", path.display()))
}

/// The lines of an impacted-targets file.
pub fn lines(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::to_owned)
        .collect()
}
