//! The firecracker driver end to end against the `fake-firecracker` binary, with the guest
//! agent (`bazel-diff-agent`) running as a local process behind the fake's vsock proxy and a
//! second clone of the fixture standing in for the guest's repository. Plus a canary on a
//! real microVM, gated on /dev/kvm and a guest image.
//!
//! Needs `cargo build -p bazel-diff -p bazel-diff-agent -p bazel-diff-firecracker` first
//! (binaries of other packages are not built by `cargo test -p bazel-diff-snap`).

#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use support::{git_in, lines, read_json, require_bazel, Lab, Run};

/// The test-only override of the /dev/kvm check (see `driver_fc.rs`).
const SKIP_KVM: &str = "BAZEL_DIFF_SNAP_FC_SKIP_KVM_CHECK";

fn sibling_bin(name: &str) -> PathBuf {
    let path = support::snap_bin().parent().unwrap().join(name);
    assert!(
        path.is_file(),
        "{} does not exist: build it first (cargo build -p bazel-diff-agent -p bazel-diff-firecracker)",
        path.display()
    );
    path
}

fn fake_firecracker() -> PathBuf {
    bazel_diff_firecracker::fake::binary_path()
        .filter(|p| p.is_file())
        .unwrap_or_else(|| sibling_bin("fake-firecracker"))
}

fn sha256(path: &Path) -> String {
    hex::encode(Sha256::digest(fs::read(path).unwrap()))
}

/// The "guest": a local agent on a unix socket; killed on drop.
struct Guest {
    child: Child,
    socket: PathBuf,
    workspace: PathBuf,
}

impl Guest {
    fn start(lab: &Lab) -> Guest {
        let workspace = lab.root.join("guest-ws");
        let status = Command::new("git")
            .args(["clone", "-q"])
            .arg(&lab.ws)
            .arg(&workspace)
            .stdin(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        // The guest image's clone knows nothing past c0's parent: record must bring commits in.
        git_in(&workspace, &["checkout", "-q", "--detach", &lab.sha("c0")]);
        let socket = lab.root.join("agent.sock");
        fs::write(lab.root.join("guest-random"), b"").unwrap();
        let child = Command::new(sibling_bin("bazel-diff-agent"))
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--dry-run-time")
            .arg("--random-device")
            .arg(lab.root.join("guest-random"))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "the agent did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Guest {
            child,
            socket,
            workspace,
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Fc<'a> {
    lab: &'a Lab,
    guest: Guest,
    kernel: PathBuf,
    rootfs: PathBuf,
}

impl<'a> Fc<'a> {
    fn new(lab: &'a Lab) -> Fc<'a> {
        let images = lab.root.join("images");
        fs::create_dir_all(&images).unwrap();
        let kernel = images.join("vmlinux");
        fs::write(&kernel, b"not really a kernel").unwrap();
        let rootfs = images.join("rootfs.base.ext4");
        let f = fs::File::create(&rootfs).unwrap();
        f.set_len(16 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"ext4-ish superblock", 1024).unwrap();
        Fc {
            lab,
            guest: Guest::start(lab),
            kernel,
            rootfs,
        }
    }

    fn args(&self, sub: &str, extra: &[&str]) -> Vec<String> {
        let mut args = vec![sub.to_owned()];
        args.extend(self.lab.common());
        args.extend(
            [
                "--driver",
                "firecracker",
                "--firecracker-bin",
                fake_firecracker().to_str().unwrap(),
                "--kernel",
                self.kernel.to_str().unwrap(),
                "--guest-workspace",
                self.guest.workspace.to_str().unwrap(),
                "--guest-bazel",
                self.lab.bazel.to_str().unwrap(),
                "--guest-bazel-diff",
                self.lab.bazel_diff.to_str().unwrap(),
                "--mem-mib",
                "256",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    fn run(&self, sub: &str, extra: &[&str]) -> Run {
        let proxy = self.guest.socket.to_str().unwrap().to_owned();
        self.lab.snap_env(
            &self.args(sub, extra),
            &[("FAKE_FC_VSOCK_PROXY", &proxy), (SKIP_KVM, "1")],
        )
    }

    fn consume(&self, target: &str, base: &str, out: &Path, extra: &[&str]) -> Run {
        let _ = fs::remove_file(out);
        let mut all = vec![
            "--target-sha",
            target,
            "--base-sha",
            base,
            "--out",
            out.to_str().unwrap(),
        ];
        all.extend_from_slice(extra);
        let run = self.run("consume", &all);
        support::check_out_file(&run, out);
        run
    }
}

#[test]
fn record_and_consume_through_the_fake_firecracker_match_a_cold_run() {
    let Some(bazel) = require_bazel() else { return };
    let lab = Lab::new(&bazel);
    let fc = Fc::new(&lab);
    let (c0, c1, c2) = (lab.sha("c0"), lab.sha("c1"), lab.sha("c2"));

    let run = fc
        .run(
            "record",
            &[
                "--base-sha",
                &c0,
                "--tap-device",
                "tap0",
                "--guest-addr",
                "x",
            ],
        )
        .success()
        .stderr_has("recorded")
        .stderr_has("ignoring upstream's ssh/TAP flags --guest-addr, --tap-device");
    let entry = lab.entry_dir(&c0);
    for file in [
        "vmstate",
        "mem",
        "rootfs.ext4",
        "base_hashes.json",
        "fingerprint.json",
        "firecracker.json",
    ] {
        assert!(
            entry.join(file).is_file(),
            "{file} in {}:\n{run}",
            entry.display()
        );
    }
    let state = read_json(&entry.join("firecracker.json"));
    assert!(
        state["server_pid"].as_str().is_some_and(|p| !p.is_empty()),
        "{state:#}"
    );
    assert_eq!(state["vcpus"], 2);
    eprintln!("record: {} firecracker API calls", state["api_calls"]);
    // The base image is untouched; the entry's disk is the VM's own copy.
    assert_eq!(
        fs::read(&fc.rootfs).unwrap(),
        fs::read(entry.join("rootfs.ext4")).unwrap()
    );
    // The temporary bundle refs are gone from the user's repository.
    assert_eq!(lab.git(&["for-each-ref", "refs/bazel-diff-snap"]), "");
    let rootfs_digest = sha256(&entry.join("rootfs.ext4"));
    let mem_digest = sha256(&entry.join("mem"));

    // Base = the entry's base: stored base hashes, target hashed in the guest.
    let out = lab.out("impacted.txt");
    let report = lab.out("report.json");
    fc.consume(&c1, &c0, &out, &["--json", report.to_str().unwrap()])
        .success();
    assert_eq!(
        lines(&fs::read(&out).unwrap()),
        lines(&lab.cold_impacted(&bazel, &c0, &c1, &[]))
    );
    let report = read_json(&report);
    let notes = &report["driver_notes"];
    assert_eq!(notes["warm_state_lost"], false, "{report:#}");
    assert_eq!(notes["base_hashes_from"], "entry", "{report:#}");
    eprintln!("consume: {} firecracker API calls", notes["api_calls"]);

    // The Uffd backend: the handler listens before the load. The fake sends the region JSON
    // without a userfaultfd, so the handler reports an error in the notes; the run still works.
    let report_uffd = lab.out("report-uffd.json");
    fc.consume(
        &c1,
        &c0,
        &out,
        &[
            "--memory-backend",
            "uffd",
            "--json",
            report_uffd.to_str().unwrap(),
        ],
    )
    .success();
    let notes = read_json(&report_uffd)["driver_notes"].clone();
    assert_eq!(notes["memory_backend"], "uffd", "{notes:#}");
    assert!(notes["uffd"].is_object(), "{notes:#}");
    eprintln!("uffd against the fake: {}", notes["uffd"]);

    // Base newer than the entry: both hashed in the guest.
    let report2 = lab.out("report2.json");
    fc.consume(&c2, &c1, &out, &["--json", report2.to_str().unwrap()])
        .success();
    assert_eq!(
        lines(&fs::read(&out).unwrap()),
        lines(&lab.cold_impacted(&bazel, &c1, &c2, &[]))
    );
    assert_eq!(
        read_json(&report2)["driver_notes"]["base_hashes_from"],
        "guest"
    );

    // F1: restores never wrote to the entry.
    assert_eq!(sha256(&entry.join("rootfs.ext4")), rootfs_digest);
    assert_eq!(sha256(&entry.join("mem")), mem_digest);
    assert_eq!(lab.git(&["for-each-ref", "refs/bazel-diff-snap"]), "");

    // The guest's Bazel server died (a real restore brings it back; here the "guest" outlives
    // the VM): the answer is still right, and the report says the warm state was lost.
    let status = Command::new(&bazel)
        .arg("shutdown")
        .current_dir(&fc.guest.workspace)
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let report3 = lab.out("report3.json");
    fc.consume(&c1, &c0, &out, &["--json", report3.to_str().unwrap()])
        .success()
        .stderr_has("warm state lost");
    assert_eq!(
        lines(&fs::read(&out).unwrap()),
        lines(&lab.cold_impacted(&bazel, &c0, &c1, &[]))
    );
    assert_eq!(read_json(&report3)["driver_notes"]["warm_state_lost"], true);

    // Another VM shape is another key: no usable snapshot.
    fc.consume(&c1, &c0, &out, &["--vcpus", "1"])
        .exit(2)
        .stderr_has("no usable snapshot");
    // No firecracker: exit 2, driver unavailable.
    let mut args = fc.args(
        "consume",
        &[
            "--target-sha",
            &c1,
            "--base-sha",
            &c0,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let at = args.iter().position(|a| a == "--firecracker-bin").unwrap();
    args[at + 1] = lab.root.join("no-such-firecracker").display().to_string();
    let _ = fs::remove_file(&out);
    lab.snap_env(&args, &[(SKIP_KVM, "1")])
        .exit(2)
        .stderr_has("driver unavailable");
    assert!(!out.exists());
}

/// A real microVM: runs only with /dev/kvm, a firecracker binary (`BAZEL_DIFF_FC_BIN` or on
/// PATH) and a guest image (`BAZEL_DIFF_FC_KERNEL`, `BAZEL_DIFF_FC_ROOTFS`) whose rootfs
/// starts `bazel-diff-agent` and holds a clone of the fixture at
/// `BAZEL_DIFF_FC_GUEST_WORKSPACE` with bazel and bazel-diff on PATH.
#[test]
fn canary_real_microvm() {
    let kvm_ok = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let firecracker = env("BAZEL_DIFF_FC_BIN").map(PathBuf::from).or_else(|| {
        std::env::split_paths(&std::env::var_os("PATH")?)
            .map(|d| d.join("firecracker"))
            .find(|p| p.is_file())
    });
    let missing: Vec<&str> = [
        ("/dev/kvm (read-write)", kvm_ok),
        ("a firecracker binary", firecracker.is_some()),
        (
            "BAZEL_DIFF_FC_KERNEL",
            env("BAZEL_DIFF_FC_KERNEL").is_some(),
        ),
        (
            "BAZEL_DIFF_FC_ROOTFS",
            env("BAZEL_DIFF_FC_ROOTFS").is_some(),
        ),
        (
            "BAZEL_DIFF_FC_GUEST_WORKSPACE",
            env("BAZEL_DIFF_FC_GUEST_WORKSPACE").is_some(),
        ),
    ]
    .into_iter()
    .filter_map(|(what, ok)| (!ok).then_some(what))
    .collect();
    if !missing.is_empty() {
        eprintln!(
            "note: the real-microVM canary did NOT run: missing {}",
            missing.join(", ")
        );
        return;
    }
    let Some(bazel) = require_bazel() else { return };
    let lab = Lab::new(&bazel);
    let (c0, c1) = (lab.sha("c0"), lab.sha("c1"));
    let mut common = vec!["--driver".to_owned(), "firecracker".to_owned()];
    for (flag, var) in [
        ("--kernel", "BAZEL_DIFF_FC_KERNEL"),
        ("--rootfs", "BAZEL_DIFF_FC_ROOTFS"),
        ("--guest-workspace", "BAZEL_DIFF_FC_GUEST_WORKSPACE"),
    ] {
        common.push(flag.to_owned());
        common.push(env(var).unwrap().to_string_lossy().into_owned());
    }
    common.push("--firecracker-bin".to_owned());
    common.push(firecracker.unwrap().display().to_string());
    let mut record = vec!["record".to_owned()];
    record.extend(lab.common());
    record.extend(common.iter().cloned());
    record.extend(["--base-sha".to_owned(), c0.clone()]);
    lab.snap(&record).success();
    let out = lab.out("impacted.txt");
    let mut consume = vec!["consume".to_owned()];
    consume.extend(lab.common());
    consume.extend(common);
    consume.extend(
        [
            "--target-sha",
            &c1,
            "--base-sha",
            &c0,
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    lab.snap(&consume).success();
    assert_eq!(
        lines(&fs::read(&out).unwrap()),
        lines(&lab.cold_impacted(&bazel, &c0, &c1, &[]))
    );
}
