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

use serde_json::Value;
use sha2::{Digest, Sha256};
use support::{git_in, lines, read_json, require_bazel, Lab, Run, Spawned};

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

/// 4 KiB pages of a memory file that hold data.
fn data_pages(path: &Path) -> usize {
    fs::read(path)
        .unwrap()
        .chunks(4096)
        .filter(|p| p.iter().any(|b| *b != 0))
        .count()
}

/// The "guest": a local agent on a unix socket; killed on drop.
struct Guest {
    child: Child,
    socket: PathBuf,
    workspace: PathBuf,
}

impl Guest {
    /// A guest named `name` (its workspace, agent socket and entropy file carry the name).
    fn start(lab: &Lab, name: &str) -> Guest {
        let workspace = lab.root.join(format!("{name}-ws"));
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
        let socket = lab.root.join(format!("{name}-agent.sock"));
        let random = lab.root.join(format!("{name}-random"));
        fs::write(&random, b"").unwrap();
        let child = Command::new(sibling_bin("bazel-diff-agent"))
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--dry-run-time")
            .arg("--random-device")
            .arg(&random)
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
        Fc::with_guest(lab, "guest")
    }

    fn with_guest(lab: &'a Lab, guest: &str) -> Fc<'a> {
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
            guest: Guest::start(lab, guest),
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

    /// A consume that must succeed; returns the `driver_notes` of its `--json` report.
    fn consume_notes(&self, target: &str, base: &str, out: &Path, extra: &[&str]) -> Value {
        let report = out.with_extension("report.json");
        let mut all = vec!["--json", report.to_str().unwrap()];
        all.extend_from_slice(extra);
        self.consume(target, base, out, &all).success();
        read_json(&report)["driver_notes"].clone()
    }

    /// Starts a consume in `store` without waiting.
    fn spawn_consume(&self, store: &Path, target: &str, base: &str, json: &Path) -> Spawned {
        let out = json.with_extension("txt");
        let mut args = self.args(
            "consume",
            &[
                "--target-sha",
                target,
                "--base-sha",
                base,
                "--out",
                out.to_str().unwrap(),
                "--json",
                json.to_str().unwrap(),
            ],
        );
        let at = args.iter().position(|a| a == "--store").unwrap();
        args[at + 1] = store.display().to_string();
        let proxy = self.guest.socket.to_str().unwrap().to_owned();
        self.lab
            .spawn_env(&args, &[("FAKE_FC_VSOCK_PROXY", &proxy), (SKIP_KVM, "1")])
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
    let notes = fc.consume_notes(&c1, &c0, &out, &["--memory-backend", "uffd"]);
    assert_eq!(notes["memory_backend"], "uffd", "{notes:#}");
    assert!(notes["uffd"].is_object(), "{notes:#}");
    eprintln!("uffd against the fake: {}", notes["uffd"]);

    // Base newer than the entry: both hashed in the guest.
    let notes = fc.consume_notes(&c2, &c1, &out, &[]);
    assert_eq!(
        lines(&fs::read(&out).unwrap()),
        lines(&lab.cold_impacted(&bazel, &c1, &c2, &[]))
    );
    assert_eq!(notes["base_hashes_from"], "guest", "{notes:#}");

    // Diff snapshots: c1 recorded on top of c0's entry stores only the dirtied pages. Through
    // the jailer (the fake plays it): entry files go into a chroot per VM and back.
    let chroot_base = lab.root.join("jail");
    // SAFETY: geteuid and getegid only read the process's credentials.
    let (uid, gid) = (unsafe { libc::geteuid() }, unsafe { libc::getegid() });
    let (uid, gid) = (uid.to_string(), gid.to_string());
    let fake = fake_firecracker();
    let jailer = [
        "--jailer",
        fake.to_str().unwrap(),
        "--jailer-uid",
        &uid,
        "--jailer-gid",
        &gid,
        "--chroot-base",
        chroot_base.to_str().unwrap(),
    ];
    let mut args = vec!["--base-sha", c1.as_str(), "--diff-from", c0.as_str()];
    args.extend(jailer);
    fc.run("record", &args).success().stderr_has("recorded");
    let diff_entry = lab.entry_dir(&c1);
    let diff_state = read_json(&diff_entry.join("firecracker.json"));
    assert_eq!(diff_state["snapshot_type"], "Diff", "{diff_state:#}");
    assert_eq!(diff_state["parent"]["base_sha"], c0.as_str());
    assert_eq!(diff_state["parent"]["mem_sha256"], mem_digest.as_str());
    assert_eq!(diff_state["parent"]["chain"], 1);
    let (full_pages, diff_pages) = (
        data_pages(&entry.join("mem")),
        data_pages(&diff_entry.join("mem")),
    );
    assert!(
        diff_pages < full_pages,
        "{diff_pages} of {full_pages} pages"
    );
    eprintln!(
        "record --diff-from: {} API calls, {diff_pages} of {full_pages} pages stored",
        diff_state["api_calls"]
    );
    // Consume from the Diff entry: the file backend merges the chain (the fake refuses a
    // memory file with holes), the uffd backend layers it without a copy.
    let notes = fc.consume_notes(&c2, &c1, &out, &[]);
    assert_eq!(
        lines(&fs::read(&out).unwrap()),
        lines(&lab.cold_impacted(&bazel, &c1, &c2, &[]))
    );
    assert_eq!(notes["base_hashes_from"], "entry", "{notes:#}");
    assert_eq!(notes["memory"]["layers"], 2, "{notes:#}");
    assert_eq!(notes["api_calls"], 3, "{notes:#}");
    let notes = fc.consume_notes(&c2, &c1, &out, &["--memory-backend", "uffd"]);
    assert_eq!(notes["memory"]["merged"], false, "{notes:#}");
    // A jailed consume of the Diff entry: the merged memory is built in the jail.
    let notes = fc.consume_notes(&c2, &c1, &out, &jailer);
    assert_eq!(notes["jailed"], true, "{notes:#}");
    assert_eq!(
        lines(&fs::read(&out).unwrap()),
        lines(&lab.cold_impacted(&bazel, &c1, &c2, &[]))
    );
    let jails = chroot_base.join(fake.file_name().unwrap());
    assert_eq!(
        fs::read_dir(&jails).unwrap().count(),
        0,
        "jails left behind"
    );
    // The Diff entry requires its parent in the store's metadata, so the most aggressive
    // retention keeps the parent while it keeps the Diff entry, and consume still works.
    let diff_meta = read_json(&diff_entry.join("metadata.json"));
    assert_eq!(
        diff_meta["requires"],
        serde_json::json!([{
            "fingerprint": entry.parent().unwrap().file_name().unwrap().to_str().unwrap(),
            "base_sha": c0.as_str(),
            "files": { "mem": mem_digest.as_str() },
        }]),
        "{diff_meta:#}"
    );
    let store_arg = lab.store.to_str().unwrap();
    lab.snap(&["gc", "--store", store_arg, "--keep-per-fingerprint", "1"])
        .success()
        .stdout_has("required by 1 kept entries");
    assert!(
        entry.join("mem").exists(),
        "gc removed the Diff entry's parent"
    );
    lab.snap(&["verify", "--store", store_arg]).success();
    fc.consume(&c2, &c1, &out, &[]).success();
    assert_eq!(
        lines(&fs::read(&out).unwrap()),
        lines(&lab.cold_impacted(&bazel, &c1, &c2, &[]))
    );
    // A chain longer than --max-diff-chain is recorded Full, still from the restored VM.
    fc.run(
        "record",
        &[
            "--base-sha",
            &c2,
            "--diff-from",
            "auto",
            "--max-diff-chain",
            "1",
        ],
    )
    .success()
    .stderr_has("recording a Full snapshot");
    let rebased = read_json(&lab.entry_dir(&c2).join("firecracker.json"));
    assert_eq!(rebased["snapshot_type"], "Full", "{rebased:#}");
    assert!(rebased["parent"].is_null(), "{rebased:#}");
    assert_eq!(rebased["warm_start_from"], c1.as_str());

    // Two consumes at once on one host (two stores, two guests): each VM has its own run
    // directory, API socket and vsock socket.
    let store2 = lab.root.join("store2");
    fs::create_dir_all(&store2).unwrap();
    for dir in fs::read_dir(&lab.store).unwrap() {
        let dir = dir.unwrap().path();
        if dir.file_name().unwrap() != ".work" {
            let status = Command::new("cp")
                .arg("-a")
                .arg(&dir)
                .arg(&store2)
                .status()
                .unwrap();
            assert!(status.success());
        }
    }
    let fc2 = Fc::with_guest(&lab, "guest2");
    let (json_a, json_b) = (lab.out("parallel-a.json"), lab.out("parallel-b.json"));
    let a = fc.spawn_consume(&lab.store, &c1, &c0, &json_a);
    let b = fc2.spawn_consume(&store2, &c1, &c0, &json_b);
    let (a, b) = (a.wait(), b.wait());
    a.success();
    b.success();
    let cold = lines(&lab.cold_impacted(&bazel, &c0, &c1, &[]));
    for json in [&json_a, &json_b] {
        assert_eq!(lines(&fs::read(json.with_extension("txt")).unwrap()), cold);
    }
    let (vm_a, vm_b) = (
        read_json(&json_a)["driver_notes"]["vm_id"].clone(),
        read_json(&json_b)["driver_notes"]["vm_id"].clone(),
    );
    assert!(vm_a.is_string() && vm_a != vm_b, "{vm_a} {vm_b}");

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

    // A Diff entry whose parent is corrupt or gone is no usable snapshot.
    let consume = || {
        fc.run(
            "consume",
            &[
                "--target-sha",
                &c2,
                "--base-sha",
                &c1,
                "--out",
                out.to_str().unwrap(),
            ],
        )
    };
    let parent_mem = entry.join("mem");
    let original = fs::read(&parent_mem).unwrap();
    let mut flipped = original.clone();
    flipped[100] ^= 0xff;
    fs::write(&parent_mem, &flipped).unwrap();
    let run = consume();
    run.exit(2).stderr_has("which is corrupt");
    fs::write(&parent_mem, &original).unwrap();
    fs::remove_dir_all(&entry).unwrap();
    let run = consume();
    run.exit(2).stderr_has("which is gone");
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

/// `--store s3://` with the uffd backend: a consume on a host with an empty cache fetches
/// every file but the memory file, which the handler serves from the object store on first
/// fault (the fake sends no userfaultfd, so nothing faults and none of it is fetched). With
/// the file backend the whole entry is downloaded into the local store, as before.
#[test]
fn uffd_consume_from_s3_leaves_the_memory_file_remote() {
    let Some(bazel) = require_bazel() else { return };
    let Some(s3) = bazel_diff_testkit::require_moto() else {
        return;
    };
    let lab = Lab::new(&bazel);
    let fc = Fc::new(&lab);
    let url = format!("{}/ci", s3.bucket("snaps"));
    let (c0, c1) = (lab.sha("c0"), lab.sha("c1"));
    let (host_a, host_b) = (lab.out("host-a"), lab.out("host-b"));
    for cache in [&host_a, &host_b] {
        lab.register_output_root(cache);
    }
    let s3_env = s3.env();
    let proxy = fc.guest.socket.to_str().unwrap().to_owned();
    let mut env: Vec<(&str, &str)> = s3_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.extend([("FAKE_FC_VSOCK_PROXY", proxy.as_str()), (SKIP_KVM, "1")]);
    let on = |cache: &Path, sub: &str, extra: &[&str]| -> Run {
        let mut args = fc.args(sub, extra);
        let at = args.iter().position(|a| a == "--store").unwrap();
        args[at + 1] = url.clone();
        args.extend(["--cache".to_owned(), cache.display().to_string()]);
        lab.snap_env(&args, &env)
    };
    let entries = |cache: &Path| -> usize {
        fs::read_dir(cache.join("store"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|fp| !fp.file_name().to_string_lossy().starts_with('.'))
            .map(|fp| fs::read_dir(fp.path()).unwrap().count())
            .sum()
    };
    on(&host_a, "record", &["--base-sha", &c0])
        .success()
        .stderr_has("pushed");
    let expected = lines(&lab.cold_impacted(&bazel, &c0, &c1, &[]));

    let out = lab.out("impacted.txt");
    let report = lab.out("report-lazy.json");
    let consume = |backend: &str| {
        let _ = fs::remove_file(&out);
        on(
            &host_b,
            "consume",
            &[
                "--target-sha",
                &c1,
                "--base-sha",
                &c0,
                "--out",
                out.to_str().unwrap(),
                "--memory-backend",
                backend,
                "--json",
                report.to_str().unwrap(),
            ],
        )
        .success();
        assert_eq!(lines(&fs::read(&out).unwrap()), expected);
        read_json(&report)
    };

    let report = consume("uffd");
    let notes = &report["driver_notes"];
    assert_eq!(notes["memory"]["lazy"], true, "{report:#}");
    let lazy = &notes["uffd"]["lazy_memory"];
    let size = lazy["file_bytes"].as_u64().unwrap();
    assert!(size > 0, "{lazy:#}");
    assert!(lazy["served_bytes"].as_u64().unwrap() < size, "{lazy:#}");
    eprintln!("lazy memory against the fake: {lazy}");
    assert_eq!(
        entries(&host_b),
        0,
        "nothing materialized in host B's store"
    );

    let report = consume("file");
    assert!(
        report["driver_notes"]["memory"]["lazy"].is_null(),
        "{report:#}"
    );
    assert_eq!(entries(&host_b), 1, "the whole entry is in host B's store");
}
