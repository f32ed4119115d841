//! Tests mirroring upstream's `CalculateImpactedTargetsInteractorTest`, plus the worked
//! example of spec 6.5 and the module-change path.

use std::cell::RefCell;

use bazel_diff_format::{write_impacted_distances, TargetHash, TypeTag};

use super::*;

fn hash(target_type: Option<TargetType>, overall: &str, direct: &str) -> TargetHash {
    TargetHash::new(target_type.map(TypeTag::from), overall, direct).expect("valid hash")
}

fn untyped(value: &str) -> TargetHash {
    hash(None, value, value)
}

fn file(entries: &[(&str, TargetHash)]) -> HashFile {
    HashFile {
        hashes: entries
            .iter()
            .map(|(l, h)| (l.to_string(), h.clone()))
            .collect(),
        ..HashFile::default()
    }
}

/// A query that must not run.
fn no_query(_: &[String]) -> Result<Vec<String>, String> {
    Err("rdeps query must not run in this test".into())
}

/// Records each call and answers with `result`.
struct FakeQuery {
    calls: RefCell<Vec<Vec<String>>>,
    result: Result<Vec<String>, String>,
}

impl FakeQuery {
    fn new(result: Result<Vec<&str>, &str>) -> Self {
        FakeQuery {
            calls: RefCell::new(Vec::new()),
            result: result
                .map(|v| v.into_iter().map(String::from).collect())
                .map_err(String::from),
        }
    }
}

impl RdepsQuery for FakeQuery {
    type Error = String;
    fn rdeps(&self, repos: &[String]) -> Result<Vec<String>, String> {
        self.calls.borrow_mut().push(repos.to_vec());
        self.result.clone()
    }
}

fn labels(from: &HashFile, to: &HashFile) -> Vec<String> {
    impacted_targets(from, to, &no_query, &OutputFilter::default()).expect("impacted")
}

/// Upstream's `createTargetHashes`: each spec is `a <- b <- c` (b depends on a); every
/// label's hashes are the label itself.
fn chain_graph(specs: &[&str]) -> (DepEdges, Hashes) {
    let mut edges = DepEdges::default();
    let mut hashes = Hashes::default();
    for spec in specs {
        let chain: Vec<&str> = spec.split(" <- ").collect();
        for pair in chain.windows(2) {
            for label in pair {
                if !hashes.contains_key(label) {
                    hashes.insert(label, untyped(label));
                }
            }
            edges
                .entry(pair[1].to_string())
                .or_default()
                .push(pair[0].to_string());
        }
    }
    (edges, hashes)
}

fn change_directly(hashes: &mut Hashes, labels: &[&str]) {
    for label in labels {
        let old = &hashes[*label];
        let new = hash(
            old.target_type().and_then(TypeTag::known),
            &format!("{}-changed", old.overall()),
            &format!("{}-changed", old.direct()),
        );
        hashes.insert(label, new);
    }
}

fn change_indirectly(hashes: &mut Hashes, labels: &[&str]) {
    for label in labels {
        let old = &hashes[*label];
        let new = hash(
            old.target_type().and_then(TypeTag::known),
            &format!("{}-changed", old.overall()),
            old.direct(),
        );
        hashes.insert(label, new);
    }
}

fn distances(from: &Hashes, to: &Hashes, edges: &DepEdges) -> Vec<(String, u32, u32)> {
    let from = HashFile {
        hashes: from.clone(),
        ..HashFile::default()
    };
    let to = HashFile {
        hashes: to.clone(),
        ..HashFile::default()
    };
    impacted_targets_with_distances(&from, &to, edges, &no_query, &OutputFilter::default())
        .expect("distances")
        .into_iter()
        .map(|t| (t.label, t.target_distance, t.package_distance))
        .collect()
}

fn d(label: &str, target: u32, package: u32) -> (String, u32, u32) {
    (label.to_owned(), target, package)
}

// ---- simple diff (6.2) ----

#[test]
fn get_impacted_targets() {
    let from = file(&[("1", untyped("a")), ("2", untyped("b"))]);
    let to = file(&[
        ("1", untyped("c")),
        ("2", untyped("b")),
        ("3", untyped("d")),
    ]);
    let mut diff = simple_diff(&from.hashes, &to.hashes);
    diff.sort_unstable();
    assert_eq!(diff, ["1", "3"]);
    assert_eq!(labels(&from, &to), ["1", "3"]);
}

#[test]
fn simple_diff_agrees_with_plain_lookups_whatever_the_order() {
    // The diff walks both maps with a position hint; compare it with plain lookups when the
    // orders agree, differ locally, and are unrelated.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let labels: Vec<String> = (0..2_000).map(|i| format!("//p{}:t{i}", i % 13)).collect();
    for shuffle in [0, 5, 2_000] {
        let from: Hashes = labels
            .iter()
            .filter(|_| next() % 10 != 0)
            .map(|l| (l.as_str(), untyped(l)))
            .collect();
        let mut order: Vec<&String> = labels.iter().collect();
        for _ in 0..shuffle {
            let (a, b) = (next() as usize % order.len(), next() as usize % order.len());
            order.swap(a, b);
        }
        let mut to = Hashes::new();
        for label in order {
            match next() % 10 {
                0 => {}
                1 => {
                    to.insert(label, untyped("changed"));
                }
                _ => {
                    to.insert(label, untyped(label));
                }
            }
        }
        let mut fast = simple_diff(&from, &to);
        let mut plain: Vec<&str> = to
            .iter()
            .filter(|&(label, hash)| from.get(label) != Some(hash))
            .map(|(label, _)| label)
            .collect();
        fast.sort_unstable();
        plain.sort_unstable();
        assert_eq!(fast, plain, "shuffle {shuffle}");
    }
}

#[test]
fn deleted_targets_are_never_reported() {
    let from = file(&[("//a", untyped("a")), ("//gone", untyped("g"))]);
    let to = file(&[("//a", untyped("a"))]);
    assert!(labels(&from, &to).is_empty());
}

#[test]
fn type_prefix_mismatch_reports_all() {
    let from = file(&[
        ("//a", hash(Some(TargetType::Rule), "x", "y")),
        ("//b", hash(Some(TargetType::SourceFile), "z", "z")),
    ]);
    let to = file(&[("//a", hash(None, "x", "y")), ("//b", hash(None, "z", "z"))]);
    // Ranked by the starting types, since the final file has none.
    assert_eq!(labels(&from, &to), ["//b", "//a"]);
}

#[test]
fn sorts_by_kind_then_label() {
    let entries = [
        ("//pkg:rule_b", TargetType::Rule),
        ("//pkg:rule_a", TargetType::Rule),
        ("//pkg:gen_b", TargetType::GeneratedFile),
        ("//pkg:gen_a", TargetType::GeneratedFile),
        ("//pkg:src_b", TargetType::SourceFile),
        ("//pkg:src_a", TargetType::SourceFile),
    ];
    let from: Vec<_> = entries
        .iter()
        .map(|(l, t)| (*l, hash(Some(*t), l, l)))
        .collect();
    let to: Vec<_> = entries
        .iter()
        .map(|(l, t)| (*l, hash(Some(*t), &format!("{l}-changed"), l)))
        .collect();
    assert_eq!(
        labels(&file(&from), &file(&to)),
        [
            "//pkg:src_a",
            "//pkg:src_b",
            "//pkg:gen_a",
            "//pkg:gen_b",
            "//pkg:rule_a",
            "//pkg:rule_b",
        ]
    );
}

#[test]
fn rank_falls_back_to_starting_type_then_unknown_types() {
    let weird = TargetHash::parse("Weird#w~w").expect("valid");
    let from = file(&[(
        "//typed_in_from",
        hash(Some(TargetType::SourceFile), "a", "a"),
    )]);
    let to = file(&[
        ("//typed_in_from", untyped("b")),
        ("//untyped", untyped("u")),
        ("//weird", weird),
        ("//rule", hash(Some(TargetType::Rule), "r", "r")),
    ]);
    assert_eq!(
        labels(&from, &to),
        ["//typed_in_from", "//rule", "//weird", "//untyped"]
    );
}

#[test]
fn labels_sort_by_utf16_code_units() {
    let to = file(&[
        ("//p:\u{ffff}", untyped("a")),
        ("//p:\u{1f600}", untyped("b")),
        ("//p:z", untyped("c")),
    ]);
    assert_eq!(
        labels(&HashFile::default(), &to),
        ["//p:z", "//p:\u{1f600}", "//p:\u{ffff}"]
    );
}

// ---- filtering (6.4) ----

#[test]
fn target_type_filter_uses_final_types() {
    let from = file(&[("//a:src", hash(Some(TargetType::Rule), "old", "old"))]);
    let to = file(&[
        ("//a:src", hash(Some(TargetType::SourceFile), "s", "s")),
        ("//a:rule", hash(Some(TargetType::Rule), "r", "r")),
        ("//a:gen", hash(Some(TargetType::GeneratedFile), "g", "g")),
        ("//a:odd", TargetHash::parse("Odd#o~o").expect("valid")),
    ]);
    let filter = OutputFilter {
        target_types: Some(vec![TargetType::SourceFile, TargetType::Rule]),
        exclude_external: false,
    };
    let out = impacted_targets(&from, &to, &no_query, &filter).expect("impacted");
    assert_eq!(out, ["//a:src", "//a:rule"]);
}

#[test]
fn target_type_filter_without_types_is_an_error() {
    let from = file(&[("//a", untyped("a")), ("//b", untyped("b"))]);
    let to = file(&[("//a", untyped("a2")), ("//b", untyped("b2"))]);
    let filter = OutputFilter {
        target_types: Some(vec![TargetType::Rule]),
        exclude_external: false,
    };
    let err = impacted_targets(&from, &to, &no_query, &filter).expect_err("must fail");
    let ImpactError::NoTargetTypeInfo { label } = &err;
    assert_eq!(label, "//a");
    assert!(err.to_string().starts_with(
        "No target type info found, please re-generate the target hashes JSON with \
         --includeTargetType!"
    ));
    // Nothing impacted means nothing to check, as upstream.
    let same = impacted_targets(&from, &from, &no_query, &filter).expect("no error");
    assert!(same.is_empty());
    // The distance path checks the same way.
    let err = impacted_targets_with_distances(&from, &to, &DepEdges::default(), &no_query, &filter);
    assert!(err.is_err());
}

#[test]
fn excludes_external_targets_when_asked() {
    let from = file(&[
        ("//foo:bar", untyped("h1")),
        ("//external:boost.assert", untyped("h2")),
        ("//external:guava", untyped("h3")),
        ("@@some_repo//pkg:tgt", untyped("h4")),
    ]);
    let to = file(&[
        ("//foo:bar", untyped("h1-changed")),
        ("//external:boost.assert", untyped("h2-changed")),
        ("//external:guava", untyped("h3-changed")),
        ("@@some_repo//pkg:tgt", untyped("h4-changed")),
    ]);
    let exclude = OutputFilter {
        target_types: None,
        exclude_external: true,
    };
    let out = impacted_targets(&from, &to, &no_query, &exclude).expect("impacted");
    assert_eq!(out, ["//foo:bar", "@@some_repo//pkg:tgt"]);
    assert_eq!(labels(&from, &to).len(), 4);

    let out =
        impacted_targets_with_distances(&from, &to, &DepEdges::default(), &no_query, &exclude)
            .expect("distances");
    let out: Vec<&str> = out.iter().map(|t| t.label.as_str()).collect();
    assert_eq!(out, ["//foo:bar", "@@some_repo//pkg:tgt"]);
}

// ---- distances (6.5) ----

#[test]
fn omits_unchanged_targets() {
    let (edges, from) = chain_graph(&["//:1 <- //:2 <- //:3", "//:unchanged <- //:3"]);
    let mut to = from.clone();
    change_directly(&mut to, &["//:1", "//:2"]);
    change_indirectly(&mut to, &["//:3"]);
    assert_eq!(
        distances(&from, &to, &edges),
        [d("//:1", 0, 0), d("//:2", 0, 0), d("//:3", 1, 0)]
    );
}

#[test]
fn new_targets_are_directly_impacted() {
    let to: Hashes = [("//:1", untyped("a")), ("//:2", untyped("b"))]
        .into_iter()
        .map(|(l, h)| (l.to_owned(), h))
        .collect();
    assert_eq!(
        distances(&Hashes::default(), &to, &DepEdges::default()),
        [d("//:1", 0, 0), d("//:2", 0, 0)]
    );
}

#[test]
fn target_distances() {
    let (edges, from) = chain_graph(&["//:1 <- //:2 <- //:3"]);
    let mut to = from.clone();
    change_directly(&mut to, &["//:1"]);
    change_indirectly(&mut to, &["//:2", "//:3"]);
    assert_eq!(
        distances(&from, &to, &edges),
        [d("//:1", 0, 0), d("//:2", 1, 0), d("//:3", 2, 0)]
    );
}

#[test]
fn package_distance() {
    let (edges, from) = chain_graph(&["//A:1 <- //A:2 <- //B:3 <- //B:4 <- //C:5"]);
    let mut to = from.clone();
    change_directly(&mut to, &["//A:1"]);
    change_indirectly(&mut to, &["//A:2", "//B:3", "//B:4", "//C:5"]);
    assert_eq!(
        distances(&from, &to, &edges),
        [
            d("//A:1", 0, 0),
            d("//A:2", 1, 0),
            d("//B:3", 2, 1),
            d("//B:4", 3, 1),
            d("//C:5", 4, 2),
        ]
    );
}

#[test]
fn finds_shortest_distances_independently() {
    // //final:final's target distance (4) comes through //B, //C, //D; its package distance
    // (2) through the longer chain inside //A.
    let (edges, from) = chain_graph(&[
        "//changed:target <- //A:target_1 <- //A:target_2 <- //A:target_3 <- //A:target_4 <- //final:final",
        "//changed:target <- //B:target <- //C:target <- //D:target <- //final:final",
    ]);
    let mut to = from.clone();
    change_directly(&mut to, &["//changed:target"]);
    change_indirectly(
        &mut to,
        &[
            "//A:target_1",
            "//A:target_2",
            "//A:target_3",
            "//A:target_4",
            "//B:target",
            "//C:target",
            "//D:target",
            "//final:final",
        ],
    );
    let out = distances(&from, &to, &edges);
    let final_final = out
        .iter()
        .find(|t| t.0 == "//final:final")
        .expect("present");
    assert_eq!(final_final, &d("//final:final", 4, 2));
}

#[test]
fn depends_on_new_target() {
    let (edges, mut from) = chain_graph(&["//:1 <- //:2 <- //:3"]);
    let mut to = from.clone();
    from.retain(|label, _| label != "//:1");
    change_indirectly(&mut to, &["//:2", "//:3"]);
    assert_eq!(
        distances(&from, &to, &edges),
        [d("//:1", 0, 0), d("//:2", 1, 0), d("//:3", 2, 0)]
    );
}

#[test]
fn invalid_edges_fall_back_to_distance_zero() {
    let (edges, from) = chain_graph(&["//:1 <- //:2"]);
    let mut to = from.clone();
    change_indirectly(&mut to, &["//:2"]);
    // Its only dep is not impacted.
    assert_eq!(distances(&from, &to, &edges), [d("//:2", 0, 0)]);
    // No dep-edges entry at all.
    assert_eq!(
        distances(&from, &to, &DepEdges::default()),
        [d("//:2", 0, 0)]
    );
}

#[test]
fn target_type_filtered_dep_falls_back_to_distance_zero() {
    // Issue #268: the only changed dep was filtered out of the hashes by --targetType.
    let rule = |overall| hash(Some(TargetType::Rule), overall, "d");
    let from = file(&[("//pkg:rule", rule("v1"))]);
    let to = file(&[("//pkg:rule", rule("v2"))]);
    let mut edges = DepEdges::default();
    edges.insert("//pkg:rule".into(), vec!["//pkg:generated".into()]);
    assert_eq!(
        distances(&from.hashes, &to.hashes, &edges),
        [d("//pkg:rule", 0, 0)]
    );
}

/// Spec 6.5's worked example (upstream E2E `distance_metrics`), through to the JSON bytes.
#[test]
fn distance_metrics_worked_example() {
    use TargetType::{GeneratedFile, Rule, SourceFile};
    let targets = [
        ("//A:one.sh", SourceFile, "one.sh"),
        ("//A:one", Rule, "one"),
        ("//A:gen_two", Rule, "gen_two"),
        ("//A:two.sh", GeneratedFile, "gen_two"),
        ("//A:two", Rule, "two"),
        ("//A:three", Rule, "three"),
        ("//:lib", Rule, "lib"),
        ("//:untouched", Rule, "untouched"),
    ];
    let from = HashFile {
        hashes: targets
            .iter()
            .map(|(l, t, h)| (l.to_string(), hash(Some(*t), h, h)))
            .collect(),
        ..HashFile::default()
    };
    let mut to = from.clone();
    // one.sh's content changed: it and //A:one change directly, the rest only overall.
    change_directly(&mut to.hashes, &["//A:one.sh", "//A:one"]);
    change_indirectly(
        &mut to.hashes,
        &[
            "//A:gen_two",
            "//A:two.sh",
            "//A:two",
            "//A:three",
            "//:lib",
        ],
    );
    let mut edges = DepEdges::default();
    for (label, deps) in [
        ("//A:one", vec!["//A:one.sh"]),
        ("//A:gen_two", vec!["//A:one"]),
        ("//A:two.sh", vec!["//A:gen_two"]),
        ("//A:two", vec!["//A:two.sh"]),
        ("//A:three", vec!["//A:two"]),
        ("//:lib", vec!["//A:three"]),
        ("//:untouched", vec![]),
    ] {
        edges.insert(label.into(), deps.into_iter().map(String::from).collect());
    }
    let filter = OutputFilter {
        target_types: Some(vec![Rule, GeneratedFile]),
        exclude_external: false,
    };
    let out =
        impacted_targets_with_distances(&from, &to, &edges, &no_query, &filter).expect("distances");
    let mut json = Vec::new();
    write_impacted_distances(&mut json, &out).expect("vec write");
    let expected = r#"[
  {
    "label": "//A:two.sh",
    "targetDistance": 2,
    "packageDistance": 0
  },
  {
    "label": "//:lib",
    "targetDistance": 5,
    "packageDistance": 1
  },
  {
    "label": "//A:gen_two",
    "targetDistance": 1,
    "packageDistance": 0
  },
  {
    "label": "//A:one",
    "targetDistance": 0,
    "packageDistance": 0
  },
  {
    "label": "//A:three",
    "targetDistance": 4,
    "packageDistance": 0
  },
  {
    "label": "//A:two",
    "targetDistance": 3,
    "packageDistance": 0
  }
]"#;
    assert_eq!(String::from_utf8(json).expect("utf8"), expected);
}

#[test]
fn long_chains_do_not_recurse() {
    let labels: Vec<String> = (0..50_000).map(|i| format!("//p{}:t{i}", i / 10)).collect();
    let spec = labels.join(" <- ");
    let (edges, from) = chain_graph(&[&spec]);
    let mut to = from.clone();
    change_directly(&mut to, &[&labels[0]]);
    let rest: Vec<&str> = labels[1..].iter().map(String::as_str).collect();
    change_indirectly(&mut to, &rest);
    let out = distances(&from, &to, &edges);
    let last = out.iter().find(|t| t.0 == labels[49_999]).expect("present");
    assert_eq!(last, &d(&labels[49_999], 49_999, 4_999));
}

#[test]
fn cycles_are_safe() {
    // //:a and //:b depend on each other; //:b also on the direct //:root. //:x and //:y
    // only on each other, so nothing directly impacted is reachable from them.
    let mut edges = DepEdges::default();
    for (label, deps) in [
        ("//:a", vec!["//:b"]),
        ("//:b", vec!["//:a", "//:root"]),
        ("//:x", vec!["//:y"]),
        ("//:y", vec!["//:x"]),
    ] {
        edges.insert(label.into(), deps.into_iter().map(String::from).collect());
    }
    let names = ["//:root", "//:a", "//:b", "//:x", "//:y"];
    let from: Hashes = names.iter().map(|l| (l.to_string(), untyped(l))).collect();
    let mut to = from.clone();
    change_directly(&mut to, &["//:root"]);
    change_indirectly(&mut to, &["//:a", "//:b", "//:x", "//:y"]);
    assert_eq!(
        distances(&from, &to, &edges),
        [
            d("//:a", 2, 0),
            d("//:b", 1, 0),
            d("//:root", 0, 0),
            d("//:x", 0, 0),
            d("//:y", 0, 0),
        ]
    );
}

// ---- module-change path (6.3) ----

fn module_graph(modules: &[(&str, &str)]) -> String {
    let deps: Vec<String> = modules
        .iter()
        .map(|(name, version)| {
            format!(
                r#"{{"key": "{name}@{version}", "name": "{name}", "version": "{version}", "apparentName": "{name}"}}"#
            )
        })
        .collect();
    format!(
        r#"{{"key": "<root>", "name": "root", "version": "", "apparentName": "root", "dependencies": [{}]}}"#,
        deps.join(", ")
    )
}

fn with_graph(mut file: HashFile, graph: String) -> HashFile {
    file.module_graph_json = Some(graph);
    file
}

fn bumped_files() -> (HashFile, HashFile) {
    let from = file(&[
        ("//:target1", untyped("a")),
        ("//:changed", untyped("c1")),
        ("@@abseil-cpp~20240116.2//:strings", untyped("e1")),
        ("@@aspect_bazel_lib~2.22.5//:copy_to_bin", untyped("e2")),
    ]);
    let to = file(&[
        ("//:target1", untyped("a")),
        ("//:changed", untyped("c2")),
        ("//external:abseil-cpp", untyped("x")),
        ("@@abseil-cpp~20240722.0//:strings", untyped("e1b")),
        ("@@aspect_bazel_lib~2.23.0//:copy_to_bin", untyped("e2b")),
        ("@@aspect_bazel_lib~2.23.0~toolchains~x//:t", untyped("ext")),
    ]);
    let from = with_graph(
        from,
        module_graph(&[("abseil-cpp", "20240116.2"), ("aspect_bazel_lib", "2.22.5")]),
    );
    let to = with_graph(
        to,
        module_graph(&[("abseil-cpp", "20240722.0"), ("aspect_bazel_lib", "2.23.0")]),
    );
    (from, to)
}

#[test]
fn module_change_runs_one_unioned_rdeps_query() {
    let (from, to) = bumped_files();
    let query = FakeQuery::new(Ok(vec!["//:target1", "@@abseil-cpp~20240722.0//:strings"]));
    let out = impacted_targets(&from, &to, &query, &OutputFilter::default()).expect("impacted");
    assert_eq!(
        *query.calls.borrow(),
        [vec![
            "abseil-cpp~20240722.0".to_owned(),
            "aspect_bazel_lib~2.23.0".to_owned()
        ]]
    );
    assert_eq!(
        rdeps_expression(&query.calls.borrow()[0]),
        "rdeps(//..., @@abseil-cpp~20240722.0//... + @@aspect_bazel_lib~2.23.0//...)"
    );
    // rdeps result minus `@@` labels, united with the simple diff.
    assert_eq!(
        out,
        [
            "//:changed",
            "//:target1",
            "//external:abseil-cpp",
            "@@abseil-cpp~20240722.0//:strings",
            "@@aspect_bazel_lib~2.23.0//:copy_to_bin",
            "@@aspect_bazel_lib~2.23.0~toolchains~x//:t",
        ]
    );
}

#[test]
fn failed_rdeps_query_falls_back_to_workspace_targets() {
    let (from, to) = bumped_files();
    let query = FakeQuery::new(Err("bazel exploded"));
    let out = impacted_targets(&from, &to, &query, &OutputFilter::default()).expect("impacted");
    assert_eq!(query.calls.borrow().len(), 1);
    // Every `//` label of the final map except `//external:`, plus the simple diff.
    assert!(out.contains(&"//:target1".to_owned()));
    assert!(out.contains(&"//:changed".to_owned()));
    assert_eq!(out.len(), 6);

    // A Bzlmod-only shape (no workspace labels) falls back to every label.
    let mut from_only = from.clone();
    from_only.hashes.retain(|l, _| l.starts_with("@@"));
    let mut to_only = to.clone();
    to_only.hashes.retain(|l, _| l.starts_with("@@"));
    let out =
        impacted_targets(&from_only, &to_only, &query, &OutputFilter::default()).expect("impacted");
    assert_eq!(out.len(), 3);
}

#[test]
fn module_path_is_skipped_without_a_change() {
    let (from, mut to) = bumped_files();
    let query = FakeQuery::new(Ok(vec!["//:target1"]));
    let simple = [
        "//:changed",
        "//external:abseil-cpp",
        "@@abseil-cpp~20240722.0//:strings",
        "@@aspect_bazel_lib~2.23.0//:copy_to_bin",
        "@@aspect_bazel_lib~2.23.0~toolchains~x//:t",
    ];

    // Identical graphs.
    to.module_graph_json = from.module_graph_json.clone();
    let out = impacted_targets(&from, &to, &query, &OutputFilter::default()).expect("impacted");
    assert_eq!(out, simple);

    // Different text, same modules.
    to.module_graph_json = Some(format!(
        "  {}",
        from.module_graph_json.as_deref().unwrap_or("")
    ));
    assert_eq!(
        impacted_targets(&from, &to, &query, &OutputFilter::default()).expect("ok"),
        simple
    );

    // One side without a graph.
    to.module_graph_json = None;
    assert_eq!(
        impacted_targets(&from, &to, &query, &OutputFilter::default()).expect("ok"),
        simple
    );

    // Parse asymmetry (#335).
    to.module_graph_json = Some("garbage-non-json-payload".into());
    assert_eq!(
        impacted_targets(&from, &to, &query, &OutputFilter::default()).expect("ok"),
        simple
    );

    assert!(query.calls.borrow().is_empty());
}

#[test]
fn module_change_without_matching_repo_is_the_simple_diff() {
    // Query-mode hash files rarely hold `@@` labels, so nothing matches.
    let (mut from, mut to) = bumped_files();
    from.hashes.retain(|l, _| !l.starts_with("@@"));
    to.hashes.retain(|l, _| !l.starts_with("@@"));
    let query = FakeQuery::new(Ok(vec!["//:target1"]));
    let out = impacted_targets(&from, &to, &query, &OutputFilter::default()).expect("impacted");
    assert_eq!(out, ["//:changed", "//external:abseil-cpp"]);
    assert!(query.calls.borrow().is_empty());
}

#[test]
fn extension_repos_never_match() {
    let from = with_graph(
        file(&[("@@rules_go+//:a", untyped("1"))]),
        module_graph(&[("rules_go", "1")]),
    );
    let to = with_graph(
        file(&[("@@rules_go+go_sdk+x//:sdk", untyped("2"))]),
        module_graph(&[("rules_go", "2")]),
    );
    let query = FakeQuery::new(Ok(vec![]));
    impacted_targets(&from, &to, &query, &OutputFilter::default()).expect("impacted");
    assert!(query.calls.borrow().is_empty());
}

#[test]
fn module_change_makes_everything_direct_in_distance_mode() {
    let (from, to) = bumped_files();
    let query = FakeQuery::new(Ok(vec!["//:target1", "//:not_in_final"]));
    let mut edges = DepEdges::default();
    edges.insert("//:target1".into(), vec!["//:changed".into()]);
    let out = impacted_targets_with_distances(&from, &to, &edges, &query, &OutputFilter::default())
        .expect("distances");
    let out: Vec<(&str, u32, u32)> = out
        .iter()
        .map(|t| (t.label.as_str(), t.target_distance, t.package_distance))
        .collect();
    // Labels only the rdeps query knows (absent from the final map) are not reported here.
    assert_eq!(
        out,
        [
            ("//:changed", 0, 0),
            ("//:target1", 0, 0),
            ("//external:abseil-cpp", 0, 0),
            ("@@abseil-cpp~20240722.0//:strings", 0, 0),
            ("@@aspect_bazel_lib~2.23.0//:copy_to_bin", 0, 0),
            ("@@aspect_bazel_lib~2.23.0~toolchains~x//:t", 0, 0),
        ]
    );
}

#[test]
fn rdeps_labels_missing_from_final_are_dropped_by_type_filter() {
    let (from, mut to) = bumped_files();
    for hash in to.hashes.values_mut() {
        *hash = hash_with_rule_type(hash);
    }
    let query = FakeQuery::new(Ok(vec!["//:not_in_final"]));
    let filter = OutputFilter {
        target_types: Some(vec![TargetType::Rule]),
        exclude_external: true,
    };
    let out = impacted_targets(&from, &to, &query, &filter).expect("impacted");
    assert!(!out.contains(&"//:not_in_final".to_owned()));
    assert!(out.contains(&"//:changed".to_owned()));
    assert!(!out.iter().any(|l| l.starts_with("//external:")));
}

fn hash_with_rule_type(old: &TargetHash) -> TargetHash {
    hash(Some(TargetType::Rule), old.overall(), old.direct())
}
