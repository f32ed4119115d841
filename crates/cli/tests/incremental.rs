//! Differential test of the graph-stable incremental path (issue 6): after a seeded random
//! sequence of content edits and exec-bit flips, `generate-hashes --incremental-from` must
//! produce hash and dep-edge files byte-identical to a cold `generate-hashes` at every step.
//! Set `BAZEL_DIFF_INCREMENTAL_SEED` to replay a failing sequence.

// Test code: a panic is how a failure is reported (clippy allows unwrap only in #[test] fns).
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;

use support::workspace::fixture_files;
use support::{random_seed, require_bazel, BazelServer, Differential, Fixture, Rng};

const LAYERS: usize = 4;
const PER_LAYER: usize = 3;

/// A small layered genrule workspace on top of the shared fixture: package `gen/l<L>p<P>` has
/// two sources and one genrule reading them plus the outputs of up to two packages of the
/// layer below.
fn layered_files() -> Vec<(String, String)> {
    let mut files = Vec::new();
    for layer in 0..LAYERS {
        for p in 0..PER_LAYER {
            let pkg = format!("gen/l{layer}p{p}");
            let mut srcs = vec!["\"s0.txt\"".to_owned(), "\"s1.txt\"".to_owned()];
            if layer > 0 {
                for q in [p, (p + 1) % PER_LAYER] {
                    srcs.push(format!("\"//gen/l{}p{q}:out.txt\"", layer - 1));
                }
                srcs.dedup();
            }
            let build = format!(
                "genrule(\n    name = \"g\",\n    srcs = [{}],\n    outs = [\"out.txt\"],\n    cmd = \"cat $(SRCS) > $@\",\n    visibility = [\"//visibility:public\"],\n)\n",
                srcs.join(", ")
            );
            files.push((format!("{pkg}/BUILD"), build));
            files.push((format!("{pkg}/s0.txt"), format!("{pkg} zero\n")));
            files.push((format!("{pkg}/s1.txt"), format!("{pkg} one\n")));
        }
    }
    files
}

#[test]
fn incremental_hashes_match_cold_runs_byte_for_byte() {
    let Some(bazel) = require_bazel() else { return };
    let seed = random_seed();
    eprintln!("incremental differential test: BAZEL_DIFF_INCREMENTAL_SEED={seed}");
    let mut rng = Rng(seed);

    let layered = layered_files();
    let mut files: Vec<(&str, &str)> = fixture_files();
    files.extend(layered.iter().map(|(p, c)| (p.as_str(), c.as_str())));
    let fixture = Fixture::new(&files);
    let server = BazelServer::new(&bazel, &fixture);

    let editable: Vec<String> = files
        .iter()
        .map(|(p, _)| p.to_string())
        .filter(|p| p.ends_with(".txt"))
        .collect();

    let state = |n: usize| fixture.out(&format!("state{n}.bin"));
    let s0 = state(0);
    let diff = Differential::new(&fixture, &server);
    diff.cold_with_state(&s0);
    assert!(fs::metadata(&s0).unwrap().len() > 48);

    let mut exec_bits: std::collections::HashMap<String, bool> = Default::default();
    const ROUNDS: usize = 6;
    for round in 1..=ROUNDS {
        let mut changed = Vec::new();
        for _ in 0..1 + rng.below(3) {
            let path = editable[rng.below(editable.len())].clone();
            if rng.below(4) == 0 {
                let exec = exec_bits.entry(path.clone()).or_insert(false);
                *exec = !*exec;
                fixture.set_mode(&path, if *exec { 0o755 } else { 0o644 });
            } else {
                fixture.append(&path, &format!("round {round} {}\n", rng.next()));
            }
            changed.push(path);
        }
        diff.incremental(&changed, &state(round - 1), Some(&state(round)), &[])
            .success()
            .stderr_has("graph-stable path");
        diff.assert_same_as_cold(&format!("seed {seed}, round {round} (changed {changed:?})"));
    }

    // BUILD edits and new files re-query their packages; workspace configuration takes the
    // full query. Both stay exact. Each run starts from the last state, so the list grows.
    let last = state(ROUNDS);
    let mut since_last = Vec::new();
    for (edit, why) in [
        ("gen/l0p0/BUILD", "package-local path"),
        ("gen/l1p1/new.txt", "package-local path"),
        (
            "WORKSPACE",
            "full query: WORKSPACE is a workspace configuration file",
        ),
    ] {
        if edit.ends_with("BUILD") || edit == "WORKSPACE" {
            fixture.append(edit, "# edited\n");
        } else {
            fixture.write(edit, "new\n");
        }
        since_last.push(edit);
        diff.incremental(&since_last, &last, None, &[])
            .success()
            .stderr_has(why);
        diff.assert_same_as_cold(&format!("seed {seed}: the run for {edit}"));
    }

    // Different settings (a seed file) are refused too.
    let seeds = fixture.out("seeds.txt");
    let seed_file = fixture.out("seed_content");
    fs::write(&seed_file, "x").unwrap();
    fs::write(&seeds, format!("{}\n", seed_file.display())).unwrap();
    diff.incremental(
        &[] as &[&str],
        &last,
        None,
        &["-s", seeds.to_str().unwrap()],
    )
    .success()
    .stderr_has("full query")
    .stderr_has("different settings");
}
