//! `--store s3://...` end to end, against a real S3-compatible server (moto, a separate
//! process on a loopback port) and real Bazel: record on host A, consume on host B (an
//! empty cache) with the same answer as the local store, and a chunk corrupted or deleted
//! behind the tool's back makes consume exit 2 without output.

#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::path::Path;

use bazel_diff_testkit::require_moto;
use support::{read_json, require_bazel, Lab};

/// `<command> --workspace ws --store <store> --cache <cache> --bazel ... --bazel-diff ...`.
fn args(lab: &Lab, command: &str, store: &str, cache: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        command.into(),
        "--workspace".into(),
        lab.ws.display().to_string(),
        "--store".into(),
        store.into(),
        "--cache".into(),
        cache.display().to_string(),
        "--bazel".into(),
        lab.bazel.display().to_string(),
        "--bazel-diff".into(),
        lab.bazel_diff.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[test]
fn record_on_one_host_consume_on_another_through_s3() {
    let Some(bazel) = require_bazel() else { return };
    let Some(s3) = require_moto() else { return };
    let url = format!("{}/ci", s3.bucket("snaps"));
    let env: Vec<(&str, String)> = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let lab = Lab::new(&bazel);
    let (c0, c2) = (lab.sha("c0"), lab.sha("c2"));
    let (host_a, host_b, host_c) = (lab.out("host-a"), lab.out("host-b"), lab.out("host-c"));
    for cache in [&host_a, &host_b, &host_c] {
        lab.register_output_root(cache);
    }

    lab.snap_env(
        &args(&lab, "record", &url, &host_a, &["--base-sha", &c0]),
        &env,
    )
    .success()
    .stderr_has("pushed");
    // Recording again is a no-op: the object store has the entry.
    lab.snap_env(
        &args(&lab, "record", &url, &host_a, &["--base-sha", &c0]),
        &env,
    )
    .success()
    .stderr_has("already recorded in s3://");

    let listed = lab
        .snap_env(&["list", "--store", &url, "--json"], &env)
        .success()
        .json();
    let entry = &listed[0];
    assert_eq!(entry["base_sha"], c0.as_str(), "{listed:#}");
    assert!(entry["logical_bytes"].as_u64().unwrap() > 0, "{entry:#}");
    assert!(entry["stored_bytes"].as_u64().unwrap() > 0, "{entry:#}");

    // The local store's answer: host A's cache holds a plain directory store.
    let local_store = host_a.join("store").display().to_string();
    let local_out = lab.out("local.txt");
    lab.snap(&args(
        &lab,
        "consume",
        &local_store,
        &host_a,
        &[
            "--target-sha",
            &c2,
            "--base-sha",
            &c0,
            "--out",
            &local_out.display().to_string(),
        ],
    ))
    .success();
    let expected = fs::read(&local_out).unwrap();
    assert!(!expected.is_empty());

    // Host B: nothing cached; the entry comes from the object store.
    let out = lab.out("impacted.txt");
    let report = lab.out("report.json");
    let consume = |cache: &Path| {
        let _ = fs::remove_file(&out);
        let run = lab.snap_env(
            &args(
                &lab,
                "consume",
                &url,
                cache,
                &[
                    "--target-sha",
                    &c2,
                    "--base-sha",
                    &c0,
                    "--out",
                    &out.display().to_string(),
                    "--json",
                    &report.display().to_string(),
                ],
            ),
            &env,
        );
        support::check_out_file(&run, &out);
        run
    };
    consume(&host_b).success();
    assert_eq!(
        fs::read(&out).unwrap(),
        expected,
        "host B differs from the local store"
    );
    let json = read_json(&report);
    assert_eq!(json["outcome"], "snapshot", "{json:#}");
    let fetch = &json["entry"]["fetch"];
    assert!(fetch["fetched"].as_u64().unwrap() > 0, "{json:#}");
    assert_eq!(fetch["from_cache"], 0, "{json:#}");

    // Behind the tool's back: a chunk of the entry corrupted, then deleted. Host C (empty
    // cache) must not use the entry: exit 2, no output, the reason in the report.
    let manifest = lab
        .snap_env(&["list", "--store", &url, "--json"], &env)
        .success()
        .json();
    let fp = manifest[0]["fingerprint"].as_str().unwrap().to_owned();
    let chunks = chunk_keys(&host_b.join("chunks"));
    assert!(!chunks.is_empty());
    let victim = format!("ci/chunks/{}/{}", &chunks[0][..2], chunks[0]);
    s3.put_object("snaps", &victim, b"not zstd");
    consume(&host_c).exit(2).stderr_has("corrupt");
    assert_eq!(read_json(&report)["outcome"], "no-snapshot");
    s3.delete_object("snaps", &victim);
    consume(&host_c).exit(2).stderr_has("missing");
    // verify reports the entry, and --fix removes it; consume then finds no entry.
    lab.snap_env(&["verify", "--store", &url], &env)
        .exit(1)
        .stdout_has("missing");
    lab.snap_env(&["verify", "--store", &url, "--fix"], &env)
        .success();
    consume(&host_c).exit(2).stderr_has(&fp);
}

/// The digests in a chunk cache directory.
fn chunk_keys(cache: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for shard in support::read_dir_paths(cache) {
        if shard.file_name().is_some_and(|n| n == ".tmp") {
            continue;
        }
        for chunk in support::read_dir_paths(&shard) {
            out.push(chunk.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}
