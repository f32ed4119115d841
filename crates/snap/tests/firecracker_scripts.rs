//! The firecracker host scripts (`scripts/firecracker/`): `--help`, argument checks, the
//! image build's `--dry-run` plan and the host check's report, without root, network or KVM.
//! shellcheck runs when installed (`apt-get install shellcheck`; scripts/install-deps.sh does)
//! and says so when it is not; under `CI=true` a missing shellcheck fails the test.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts/firecracker")
        .join(name)
}

fn bash(name: &str, args: &[&str]) -> Output {
    Command::new("bash")
        .arg(script(name))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn scripts_pass_shellcheck() {
    let found = Command::new("shellcheck")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but shellcheck is not installed (scripts/install-deps.sh installs it)"
        );
        eprintln!("note: shellcheck is not installed; the scripts were NOT linted");
        return;
    }
    // Every shell script of the repository, not only these two.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("shellcheck")
        .arg(root.join(".ci/run"))
        .args(["build-guest-image.sh", "setup-host.sh"].map(script))
        .args(["example.sh", "install-deps.sh", "test.sh"].map(|s| root.join("scripts").join(s)))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn both_scripts_have_help_and_refuse_unknown_flags() {
    for name in ["build-guest-image.sh", "setup-host.sh"] {
        let help = bash(name, &["--help"]);
        assert!(help.status.success(), "{name}: {}", text(&help));
        assert!(text(&help).contains("Usage:"), "{name}");
        let bad = bash(name, &["--no-such-flag"]);
        assert_eq!(bad.status.code(), Some(1), "{name}: {}", text(&bad));
        assert!(text(&bad).contains("unknown argument"), "{name}");
    }
}

#[test]
fn image_dry_run_plans_every_step_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinux");
    let bin = dir.path().join("bin");
    std::fs::write(&kernel, b"kernel").unwrap();
    std::fs::write(&bin, b"binary").unwrap();
    let out_dir = dir.path().join("image");
    let (k, b, o) = (
        kernel.to_str().unwrap(),
        bin.to_str().unwrap(),
        out_dir.to_str().unwrap(),
    );
    let run = bash(
        "build-guest-image.sh",
        &[
            "--out",
            o,
            "--kernel",
            k,
            "--bazel-diff",
            b,
            "--agent",
            b,
            "--agent-port",
            "10800",
            "--dry-run",
        ],
    );
    let log = text(&run);
    assert!(run.status.success(), "{log}");
    for step in [
        "debootstrap --variant=minbase",
        "bazel-bootstrap",
        "/usr/local/bin/bazel-diff-agent",
        "sbin/init (agent on vsock:10800)",
        "mkfs.ext4 -F -q",
        "rootfs.base.ext4",
        "vmlinux",
        "dry run: nothing was changed",
    ] {
        assert!(log.contains(step), "no {step:?} in:\n{log}");
    }
    assert!(!out_dir.exists(), "a dry run created {}", out_dir.display());
    // Bad arguments are refused before anything runs.
    for (args, why) in [
        (vec!["--dry-run"], "--out is required"),
        (
            vec!["--out", o, "--kernel", "/no/such/vmlinux", "--dry-run"],
            "does not exist",
        ),
        (
            vec!["--out", o, "--agent-port", "x", "--dry-run"],
            "must be a number",
        ),
        (
            vec!["--out", o, "--guest-workspace", "rel", "--dry-run"],
            "must be absolute",
        ),
    ] {
        let run = bash("build-guest-image.sh", &args);
        assert_eq!(run.status.code(), Some(1), "{args:?}: {}", text(&run));
        assert!(text(&run).contains(why), "{args:?}: {}", text(&run));
    }
}

#[test]
fn host_check_reports_each_missing_piece_with_its_fix() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    // A firecracker that does not run: always missing, whatever the host has.
    let run = bash(
        "setup-host.sh",
        &[
            "--check",
            "--store",
            store.to_str().unwrap(),
            "--firecracker",
            "/no/such/firecracker",
            "--memory-backend",
            "uffd",
        ],
    );
    let log = text(&run);
    assert_eq!(run.status.code(), Some(1), "{log}");
    assert!(
        log.contains("MISSING  /no/such/firecracker is not executable"),
        "{log}"
    );
    assert!(log.contains("fix: "), "{log}");
    assert!(log.contains("/dev/kvm"), "{log}");
    assert!(log.contains("userfaultfd"), "{log}");
    assert!(log.contains("socket paths fit"), "{log}");
    assert!(log.contains("reflink"), "{log}");
    // The check changed nothing in the store.
    assert_eq!(std::fs::read_dir(&store).unwrap().count(), 0, "{log}");
    // Versions are read from `--version` (the fake prints Firecracker's format).
    let fake = Path::new(env!("CARGO_BIN_EXE_bazel-diff-snap")).with_file_name("fake-firecracker");
    if fake.is_file() {
        let run = bash("setup-host.sh", &["--firecracker", fake.to_str().unwrap()]);
        let log = text(&run);
        assert!(log.contains("ok       firecracker 1."), "{log}");
    }
}
