//! End-to-end: hashes depend on the workspace content only, never on where it is checked out
//! or where Bazel keeps its output base (spec 4.12; upstream E2E
//! `testGenerateHashesIsHermeticAcrossWorkspacePaths`, issues #180/#198/#222).

// Test code: a panic is how a failure is reported (clippy allows unwrap only in #[test] fns).
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;

use support::workspace::fixture_files;
use support::{read_hashes, require_bazel, BazelServer, Fixture};

/// Two checkouts of the same tree at different absolute paths (different depth and length),
/// each with its own Bazel output root, give byte-identical hash and dep-edge files; so does
/// a relative, non-normalised `-w` (spec 2.1: normalised lexically, not made absolute).
#[test]
fn same_tree_at_two_paths_gives_byte_identical_hashes() {
    let Some(bazel) = require_bazel() else { return };
    let one = Fixture::new(&fixture_files());
    let two = Fixture::new_at("a/much/deeper/checkout/of/the/same/repo", &fixture_files());
    let server_one = BazelServer::new(&bazel, &one);
    let server_two = BazelServer::new(&bazel, &two);
    assert_ne!(one.ws, two.ws);

    let generate = |fixture: &Fixture, server: &BazelServer, extra: &[&str]| {
        let hashes = fixture.out("hashes.json");
        let edges = fixture.out("edges.json");
        let mut args = vec!["-d", edges.to_str().unwrap()];
        args.extend_from_slice(extra);
        server.generate_hashes(&hashes, &args);
        (fs::read(&hashes).unwrap(), fs::read(&edges).unwrap())
    };
    // The two servers start in parallel: each fixture has its own output root.
    let ((hashes_one, edges_one), (hashes_two, edges_two)) = std::thread::scope(|s| {
        let first = s.spawn(|| generate(&one, &server_one, &[]));
        let second = generate(&two, &server_two, &[]);
        (first.join().unwrap(), second)
    });
    let map = read_hashes(&one.out("hashes.json"));
    assert!(
        map.keys().any(|l| l.starts_with("//external:")),
        "//external targets (which carry absolute paths in Bazel 4) are part of the check"
    );
    if hashes_one != hashes_two {
        let other = read_hashes(&two.out("hashes.json"));
        let differing: Vec<&String> = map
            .keys()
            .chain(other.keys())
            .filter(|l| map.get(*l) != other.get(*l))
            .collect();
        panic!("hash files differ between the two checkouts; labels: {differing:#?}");
    }
    assert!(
        edges_one == edges_two,
        "dep-edge files differ between the two checkouts"
    );

    // Same checkout named by a relative path with `.`/`..` components, from the temp dir.
    let relative = "./ws/../ws";
    let mut args = vec![
        "generate-hashes".to_string(),
        "-w".into(),
        relative.into(),
        "-b".into(),
        bazel.display().to_string(),
        "-so".into(),
        server_one.startup_options(),
    ];
    args.push("relative.json".into());
    let run = support::run_bazel_diff(&one.root, &args);
    assert!(run.status.success(), "{run}");
    assert!(
        fs::read(one.out("relative.json")).unwrap() == hashes_one,
        "-w {relative} gives the same bytes as the absolute path"
    );

    // ...and through a symlink to the checkout.
    let link = one.out("link-to-ws");
    std::os::unix::fs::symlink(&one.ws, &link).unwrap();
    let mut args = vec![
        "generate-hashes".to_string(),
        "-w".into(),
        link.display().to_string(),
    ];
    args.extend(server_one.common_args().into_iter().skip(2));
    args.push("via-link.json".into());
    let run = support::run_bazel_diff(&one.root, &args);
    assert!(run.status.success(), "{run}");
    assert!(
        fs::read(one.out("via-link.json")).unwrap() == hashes_one,
        "-w through a symlink gives the same bytes"
    );
}
