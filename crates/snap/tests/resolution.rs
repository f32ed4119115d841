//! Choosing among several entries: nearest ancestor, never a side branch, an explicit newer
//! base hashed on the warm server; then `list --json` and `gc --keep-per-fingerprint`.

#![allow(clippy::unwrap_used)]

mod support;

use std::fs;

use serde_json::Value;
use support::{next_second, read_json, require_bazel, Lab};

fn skipped_reason<'a>(skipped: &'a Value, sha: &str) -> Option<&'a str> {
    skipped
        .as_array()
        .expect("skipped is an array")
        .iter()
        .find(|s| s["sha"] == sha)
        .map(|s| s["reason"].as_str().expect("reason"))
}

/// Scenarios 2 and 9, on one store with entries for c0, c2 (main) and `side` (a branch off c1).
#[test]
fn nearest_ancestor_is_chosen_and_answers_equal_cold() {
    let Some(bazel) = require_bazel() else { return };
    let lab = Lab::new(&bazel);
    let (c0, c2, c3, c4, side) = (
        lab.sha("c0"),
        lab.sha("c2"),
        lab.sha("c3"),
        lab.sha("c4"),
        lab.sha("side"),
    );

    // Revisions are recorded by their full sha whatever names them. A second apart, so
    // "newest" is well defined at the store's one-second resolution.
    lab.record(&c0, &[]).success();
    next_second();
    lab.record("main~2", &[]).success();
    next_second();
    lab.record("side", &[]).success();
    let mut expected = vec![c0.clone(), c2.clone(), side.clone()];
    expected.sort();
    assert_eq!(lab.listed_bases(), expected);

    // Scenario 9: list --json.
    let listed = lab.list();
    assert_eq!(listed.len(), 3);
    let fingerprint = listed[0]["fingerprint"].as_str().unwrap().to_owned();
    assert_eq!(fingerprint.len(), 64, "{listed:#?}");
    let mut created = Vec::new();
    for entry in &listed {
        assert_eq!(
            entry["fingerprint"],
            fingerprint.as_str(),
            "one fingerprint: {entry:#}"
        );
        assert_eq!(entry["base_sha"].as_str().unwrap().len(), 40);
        assert_eq!(entry["status"], "ok");
        assert_eq!(entry["metadata"]["driver"], "local", "{entry:#}");
        assert!(entry["disk_bytes"].as_u64().unwrap() > 0, "{entry:#}");
        assert!(entry["metadata"]["total_bytes"].as_u64().unwrap() > 0);
        assert!(
            entry["metadata"]["files"]["base_hashes.json"]["size"]
                .as_u64()
                .unwrap()
                > 0
        );
        let path = entry["path"].as_str().unwrap();
        assert_eq!(
            std::path::Path::new(path),
            lab.store
                .join(&fingerprint)
                .join(entry["base_sha"].as_str().unwrap())
        );
        created.push(entry["created_unix"].as_i64().unwrap());
    }
    assert!(
        created.windows(2).all(|w| w[0] > w[1]),
        "list is newest first: {created:?}"
    );
    assert_eq!(
        listed[0]["base_sha"],
        side.as_str(),
        "side was recorded last"
    );
    // The table form works too.
    lab.snap(&["list", "--store", lab.store.to_str().unwrap()])
        .success()
        .stdout_has(&c2[..12]);

    // Scenario 2: target c4, no base: c2 (2 behind) beats c0 (4 behind); side is no ancestor.
    let choice = lab.resolve(&c4, &[]);
    assert_eq!(choice["usable"], true, "{choice:#}");
    assert_eq!(choice["entry_base_sha"], c2.as_str(), "{choice:#}");
    assert_eq!(choice["base_sha"], c2.as_str());
    assert_eq!(choice["base_source"], "entry");
    assert_eq!(choice["distance"], 2);
    assert_eq!(choice["target_sha"], c4.as_str());
    assert_eq!(
        std::path::Path::new(choice["entry"].as_str().unwrap()),
        lab.store.join(&fingerprint).join(&c2)
    );
    let reason = skipped_reason(&choice["skipped"], &side).expect("side is reported as skipped");
    assert!(reason.contains("not an ancestor"), "{reason}");
    assert!(
        skipped_reason(&choice["skipped"], &c0).is_some(),
        "{choice:#}"
    );

    let out = lab.out("impacted.txt");
    let json = lab.out("report.json");
    let json_arg = json.display().to_string();
    lab.consume(&c4, &out, &["--json", &json_arg]).success();
    let report = read_json(&json);
    assert_eq!(
        report["entry"]["base_sha"],
        c2.as_str(),
        "consume agrees with resolve"
    );
    assert_eq!(report["distance"], 2);
    assert_eq!(report["base_source"], "entry");
    let from_c2 = fs::read(&out).unwrap();
    assert_eq!(from_c2, lab.cold_impacted(&bazel, &c2, &c4, &[]));

    // An explicit base newer than every entry: the nearest entry (c2) is used and the warm
    // server hashes c3, so the answer is cold(c3, c4) and not cold(c2, c4).
    let choice = lab.resolve(&c4, &["--base-sha", &c3]);
    assert_eq!(choice["entry_base_sha"], c2.as_str(), "{choice:#}");
    assert_eq!(choice["base_sha"], c3.as_str());
    assert_eq!(choice["base_source"], "explicit");
    assert_eq!(choice["distance"], 1);
    lab.consume(&c4, &out, &["--base-sha", &c3, "--json", &json_arg])
        .success();
    let report = read_json(&json);
    assert_eq!(report["entry"]["base_sha"], c2.as_str());
    assert_eq!(report["base_sha"], c3.as_str());
    assert_eq!(report["base_source"], "explicit");
    assert_eq!(report["distance"], 1);
    assert_eq!(report["driver_notes"]["base_hashes_from"], "warm server");
    let from_c3 = fs::read(&out).unwrap();
    let cold_c3 = lab.cold_impacted(&bazel, &c3, &c4, &[]);
    assert_eq!(
        String::from_utf8_lossy(&from_c3),
        String::from_utf8_lossy(&cold_c3)
    );
    assert_ne!(
        from_c3, from_c2,
        "the fixture must tell the two bases apart"
    );

    // The side branch's own entry is exact for itself; main entries are not its ancestors
    // except c0.
    let choice = lab.resolve(&side, &[]);
    assert_eq!(choice["entry_base_sha"], side.as_str());
    assert_eq!(choice["distance"], 0);

    // --max-distance caps the walk: nothing within 1 commit of c4 → exit 2, nothing written.
    let choice = lab.resolve(&c4, &["--max-distance", "1"]);
    assert_eq!(choice["usable"], false, "{choice:#}");
    let run = lab
        .consume(&c4, &out, &["--max-distance", "1", "--json", &json_arg])
        .exit(2);
    assert!(run.stderr.contains("no usable snapshot"), "{run}");
    assert_eq!(read_json(&json)["outcome"], "no-snapshot");

    // Generous limits remove nothing; a byte budget one entry short removes the oldest.
    let report = lab.gc(&["--max-age", "7d", "--max-bytes", "10GB", "--dry-run"]);
    assert!(
        report["removed"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
    let sizes: Vec<u64> = lab
        .list()
        .iter()
        .map(|e| e["disk_bytes"].as_u64().unwrap())
        .collect();
    let budget = sizes[0] + sizes[1]; // the two newest (list is newest first)
    let report = lab.gc(&["--max-bytes", &budget.to_string(), "--dry-run"]);
    let removed: Vec<&str> = report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["base_sha"].as_str().unwrap())
        .collect();
    assert_eq!(removed, vec![c0.as_str()], "{report:#}");
    assert_eq!(report["over_budget"], false, "{report:#}");

    // Scenario 9: gc --keep-per-fingerprint 1 keeps only the newest (side).
    let dry = lab.gc(&["--keep-per-fingerprint", "1", "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["removed"].as_array().unwrap().len(), 2, "{dry:#}");
    assert_eq!(lab.list().len(), 3, "a dry run removes nothing");
    let report = lab.gc(&["--keep-per-fingerprint", "1"]);
    let mut removed: Vec<&str> = report["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["base_sha"].as_str().unwrap())
        .collect();
    removed.sort();
    let mut expected = vec![c0.as_str(), c2.as_str()];
    expected.sort();
    assert_eq!(removed, expected, "{report:#}");
    assert!(
        report["removed"][0]["reasons"].to_string().contains("keep"),
        "{report:#}"
    );
    assert_eq!(lab.listed_bases(), vec![side.clone()]);
    assert_eq!(
        lab.entry_dirs(),
        vec![lab.store.join(&fingerprint).join(&side)]
    );
    lab.verify(&[]).success();
    // The fingerprint still has an entry: its warm server and output root stay.
    let roots = lab.output_roots();
    assert_eq!(roots.len(), 1, "{roots:?}");
    assert!(roots[0].ends_with(&fingerprint));
    assert!(
        !Lab::processes_mentioning(&roots[0]).is_empty(),
        "the warm server is gone"
    );
}
