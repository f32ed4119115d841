//! Differential test of the package-local incremental path (issue 6): seeded random sequences
//! of content edits, file adds/deletes/renames (picked up by globs), BUILD edits (new and
//! removed targets, attributes, visibility, package groups, globs), new and removed packages
//! (which split and merge globs), `.bzl` edits (a macro whose change alters the generated
//! targets; comment lines that alter only hashes and instantiation stacks), on a layered
//! workspace beside the shared e2e fixture, must give hash and dep-edge files byte-identical
//! to a cold `generate-hashes` after every step, each step starting from the graph state the
//! previous incremental step wrote.
//!
//! `BAZEL_DIFF_INCREMENTAL_SEED=N` replays a sequence; `BAZEL_DIFF_INCREMENTAL_ROUNDS=N` sets
//! its length (default 10; a soak:
//! `BAZEL_DIFF_INCREMENTAL_ROUNDS=500 cargo test -p bazel-diff --test incremental_packages`).

// Test code: a panic is how a failure is reported (clippy allows unwrap only in #[test] fns).
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;
use std::fs;

use support::workspace::fixture_files;
use support::{random_seed, require_bazel, BazelServer, Differential, Fixture, Rng};

const LAYERS: usize = 3;
const PER_LAYER: usize = 3;

/// The macro file: `gen_macro` makes `COUNT` genrules, so bumping it changes the targets of
/// every package that calls it; `stack.bzl` is loaded through it (a transitive load).
fn gen_bzl(count: usize) -> String {
    format!(
        "load(\"//tools:stack.bzl\", \"suffix\")\n\nCOUNT = {count}\n\ndef gen_macro(name, srcs = []):\n    for i in range(COUNT):\n        native.genrule(\n            name = name + str(i),\n            srcs = srcs,\n            outs = [name + str(i) + suffix()],\n            cmd = \"cat $(SRCS) > $@\",\n        )\n"
    )
}

const STACK_BZL: &str = "def suffix():\n    return \".o\"\n";

/// A package of the layered part: a `**` glob (so subpackages split it), a genrule over it
/// and the outputs of the layer below, and in some packages the macro.
fn package_build(layer: usize, p: usize, extra: &str) -> String {
    let mut srcs = vec!["\":srcs\"".to_owned()];
    if layer > 0 {
        for q in [p, (p + 1) % PER_LAYER] {
            srcs.push(format!("\"//gen/l{}p{q}:out.txt\"", layer - 1));
        }
        srcs.dedup();
    }
    let macro_call = if p == 0 && layer != 1 {
        "load(\"//tools:gen.bzl\", \"gen_macro\")\n\ngen_macro(name = \"m\", srcs = [\":srcs\"])\n\n"
    } else {
        ""
    };
    format!(
        "{macro_call}filegroup(\n    name = \"srcs\",\n    srcs = glob([\"**/*.txt\"]),\n)\n\ngenrule(\n    name = \"g\",\n    srcs = [{}],\n    outs = [\"out.txt\"],\n    cmd = \"cat $(SRCS) > $@\",\n    visibility = [\"//visibility:public\"],\n)\n{extra}",
        srcs.join(", ")
    )
}

fn layered_files() -> Vec<(String, String)> {
    let mut files = vec![
        ("tools/gen.bzl".to_owned(), gen_bzl(1)),
        ("tools/stack.bzl".to_owned(), STACK_BZL.to_owned()),
        (
            "gen/BUILD".to_owned(),
            "package_group(\n    name = \"grp\",\n    packages = [\"//gen/l0p0\"],\n)\n".to_owned(),
        ),
    ];
    for layer in 0..LAYERS {
        for p in 0..PER_LAYER {
            let pkg = format!("gen/l{layer}p{p}");
            files.push((format!("{pkg}/BUILD"), package_build(layer, p, "")));
            files.push((format!("{pkg}/s0.txt"), format!("{pkg} zero\n")));
            files.push((format!("{pkg}/deep/s1.txt"), format!("{pkg} one\n")));
        }
    }
    files
}

/// One random change; returns the paths it touched (existing or deleted).
fn mutate(fixture: &Fixture, rng: &mut Rng, round: usize, bzl_count: &mut usize) -> Vec<String> {
    let pkg = format!("gen/l{}p{}", rng.below(LAYERS), rng.below(PER_LAYER));
    let txts = |dir: &str| -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(fixture.file(&d)).unwrap().flatten() {
                let rel = format!("{d}/{}", e.file_name().to_string_lossy());
                if e.file_type().unwrap().is_dir() {
                    stack.push(rel);
                } else if rel.ends_with(".txt") {
                    out.push(rel);
                }
            }
        }
        out.sort();
        out
    };
    let token = rng.next() % 100_000;
    match rng.below(12) {
        // Content edit of a source (graph-stable when alone).
        0 | 1 => {
            let files = txts(&pkg);
            if files.is_empty() {
                return Vec::new();
            }
            let path = files[rng.below(files.len())].clone();
            fixture.append(&path, &format!("round {round} {token}\n"));
            vec![path]
        }
        // A new file, at the top or in a subdirectory (both matched by the `**` glob).
        2 => {
            let path = if rng.below(2) == 0 {
                format!("{pkg}/added_{token}.txt")
            } else {
                format!("{pkg}/sub/added_{token}.txt")
            };
            fixture.write(&path, "added\n");
            vec![path]
        }
        // Delete or rename a file.
        3 => {
            let files = txts(&pkg);
            if files.is_empty() {
                return Vec::new();
            }
            let path = files[rng.below(files.len())].clone();
            let content = fixture.read(&path);
            fixture.remove(&path);
            if rng.below(2) == 0 {
                let renamed = format!("{pkg}/renamed_{token}.txt");
                fixture.write(&renamed, &content);
                vec![path, renamed]
            } else {
                vec![path]
            }
        }
        // BUILD edits: a new target, a changed attribute, a visibility change.
        4 => {
            let build = format!("{pkg}/BUILD");
            let text = fixture.read(&build);
            let edited = match rng.below(4) {
                // The glob itself: whether subdirectories count.
                3 if text.contains("\"**/*.txt\"") => text.replacen("\"**/*.txt\"", "\"*.txt\"", 1),
                3 => text.replacen("\"*.txt\"", "\"**/*.txt\"", 1),
                0 => format!(
                    "{text}\ngenrule(\n    name = \"new_{token}\",\n    srcs = [\":srcs\"],\n    outs = [\"new_{token}.out\"],\n    cmd = \"touch $@\",\n)\n"
                ),
                1 => text.replacen("cat $(SRCS) > $@", &format!("cat $(SRCS) > $@ # {token}"), 1),
                _ if text.contains("\"//visibility:public\"") => {
                    text.replacen("\"//visibility:public\"", "\"//gen:grp\"", 1)
                }
                _ => text.replacen("\"//gen:grp\"", "\"//visibility:public\"", 1),
            };
            fixture.write(&build, &edited);
            vec![build]
        }
        // Remove the targets added earlier (back to the generated BUILD file).
        5 => {
            let build = format!("{pkg}/BUILD");
            let (layer, p) = (pkg.as_bytes()[5] - b'0', pkg.as_bytes()[7] - b'0');
            fixture.write(&build, &package_build(layer as usize, p as usize, ""));
            vec![build]
        }
        // The package group's contents (rules naming it in visibility depend on it).
        6 => {
            let other = format!("//gen/l{}p{}", rng.below(LAYERS), rng.below(PER_LAYER));
            fixture.write(
                "gen/BUILD",
                &format!("package_group(\n    name = \"grp\",\n    packages = [\"{other}\"],\n)\n"),
            );
            vec!["gen/BUILD".to_owned()]
        }
        // A subpackage splitting the parent's glob, or its removal merging it back.
        7 => {
            let build = format!("{pkg}/sub/BUILD");
            if fixture.file(&build).exists() {
                fixture.remove(&build);
            } else {
                fixture.write(
                    &build,
                    "filegroup(\n    name = \"all\",\n    srcs = glob([\"*.txt\"]),\n)\n",
                );
            }
            vec![build]
        }
        // The macro: how many targets it makes.
        8 => {
            *bzl_count = *bzl_count % 3 + 1;
            fixture.write("tools/gen.bzl", &gen_bzl(*bzl_count));
            vec!["tools/gen.bzl".to_owned()]
        }
        // `.bzl` edits that only change hashes (a transitively loaded file, a fixture macro)
        // or also the instantiation stacks (a line inserted above the macro shifts frames).
        9 => {
            let path = ["tools/stack.bzl", "tools/defs.bzl", "tools/gen.bzl"][rng.below(3)];
            let text = fixture.read(path);
            fixture.write(path, &format!("# round {round} {token}\n{text}"));
            vec![path.to_owned()]
        }
        // The shared fixture: its `data/*.txt` glob, the package group its visibility names
        // (which includes another group), a rule reading a file of another package.
        10 => match rng.below(3) {
            0 => {
                let path = format!("lib/data/added_{token}.txt");
                fixture.write(&path, "data\n");
                vec![path]
            }
            1 => {
                let text = fixture.read("lib/BUILD");
                let edited = if text.contains("\"//gen/...\"") {
                    text.replacen("\"//app/...\", \"//gen/...\"", "\"//app/...\"", 1)
                } else {
                    text.replacen("\"//app/...\"", "\"//app/...\", \"//gen/...\"", 1)
                };
                fixture.write("lib/BUILD", &edited);
                vec!["lib/BUILD".to_owned()]
            }
            _ => {
                fixture.append(
                    "app/BUILD",
                    &format!(
                        "\ngenrule(\n    name = \"uses_{token}\",\n    srcs = [\"//lib:data/a.txt\", \"//gen/l0p0:s0.txt\"],\n    outs = [\"uses_{token}.out\"],\n    cmd = \"cat $(SRCS) > $@\",\n)\n"
                    ),
                );
                vec!["app/BUILD".to_owned()]
            }
        },
        // An exec-bit flip.
        _ => {
            let files = txts(&pkg);
            if files.is_empty() {
                return Vec::new();
            }
            let path = files[rng.below(files.len())].clone();
            let mode = fs::metadata(fixture.file(&path)).unwrap().permissions();
            let exec = std::os::unix::fs::PermissionsExt::mode(&mode) & 0o100 != 0;
            fixture.set_mode(&path, if exec { 0o644 } else { 0o755 });
            vec![path]
        }
    }
}

#[test]
fn package_local_hashes_match_cold_runs_byte_for_byte() {
    let Some(bazel) = require_bazel() else { return };
    let seed = random_seed();
    let rounds = std::env::var("BAZEL_DIFF_INCREMENTAL_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    eprintln!(
        "package-local differential test: BAZEL_DIFF_INCREMENTAL_SEED={seed} BAZEL_DIFF_INCREMENTAL_ROUNDS={rounds}"
    );
    let mut rng = Rng(seed);

    let layered = layered_files();
    let mut files: Vec<(&str, &str)> = fixture_files();
    files.extend(layered.iter().map(|(p, c)| (p.as_str(), c.as_str())));
    let fixture = Fixture::new(&files);
    let server = BazelServer::new(&bazel, &fixture);

    let state = |n: usize| fixture.out(&format!("state{}.bin", n % 2));
    let diff = Differential::new(&fixture, &server);
    diff.cold_with_state(&state(0));

    let mut bzl_count = 1;
    let mut paths_taken: BTreeSet<&str> = BTreeSet::new();
    for round in 1..=rounds {
        let mut changed = Vec::new();
        for _ in 0..1 + rng.below(3) {
            changed.extend(mutate(&fixture, &mut rng, round, &mut bzl_count));
        }
        let run = diff
            .incremental(&changed, &state(round - 1), Some(&state(round)), &[])
            .success();
        let path = ["graph-stable path", "package-local path"]
            .into_iter()
            .find(|p| run.stderr.contains(p));
        assert!(
            path.is_some(),
            "seed {seed}, round {round} (changed {changed:?}): expected an incremental path:\n{run}"
        );
        paths_taken.extend(path);
        diff.assert_same_as_cold(&format!(
            "seed {seed}, round {round} (changed {changed:?}):\n{run}"
        ));
    }
    eprintln!("paths taken: {paths_taken:?}");
    if rounds >= 5 {
        assert!(paths_taken.contains("package-local path"), "seed {seed}");
    }
}

#[test]
fn verify_flag_compares_with_the_full_query_and_widely_loaded_bzl_goes_full() {
    let Some(bazel) = require_bazel() else { return };
    let layered = layered_files();
    let mut files: Vec<(&str, &str)> = fixture_files();
    files.extend(layered.iter().map(|(p, c)| (p.as_str(), c.as_str())));
    let fixture = Fixture::new(&files);
    let server = BazelServer::new(&bazel, &fixture);
    let state = fixture.out("state.bin");
    let diff = Differential::new(&fixture, &server);
    diff.cold_with_state(&state);
    let incremental =
        |changed: &str, extra: &[&str]| diff.incremental(&[changed], &state, None, extra);

    fixture.write(
        "gen/l1p1/BUILD",
        &package_build(1, 1, "exports_files([\"s0.txt\"])\n"),
    );
    incremental("gen/l1p1/BUILD", &["--incremental-verify"])
        .success()
        .stderr_has("package-local path")
        .stderr_has("verified: identical to the full query");

    // A changed list that omits a change (the BUILD edit above; the state is still the
    // base's) makes the incremental result stale: verify fails.
    let run = incremental("gen/l0p1/s0.txt", &["--incremental-verify"]).exit(1);
    assert!(
        run.stderr
            .contains("incremental verify failed: //gen/l1p1:"),
        "{run}"
    );

    // A `.bzl` file every package loads is cheaper with the full query.
    fs::write(
        fixture.file("gen/BUILD"),
        "load(\"//tools:stack.bzl\", \"suffix\")\n",
    )
    .unwrap();
    for layer in 0..LAYERS {
        for p in 0..PER_LAYER {
            let build = format!("gen/l{layer}p{p}/BUILD");
            let text = fixture.read(&build);
            fixture.write(
                &build,
                &format!("load(\"//tools:stack.bzl\", \"suffix\")\n{text}"),
            );
        }
    }
    diff.cold_with_state(&state);
    fixture.append("tools/stack.bzl", "# edited\n");
    incremental("tools/stack.bzl", &[])
        .success()
        .stderr_has("full query: tools/stack.bzl is loaded by");
}
