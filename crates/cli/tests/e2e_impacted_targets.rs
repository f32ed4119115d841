//! End-to-end: `generate-hashes` at a base commit and after one change, then
//! `get-impacted-targets`, against real Bazel (WORKSPACE mode) and real git.
//!
//! One fixture and one Bazel server per test function; its scenarios run one after the other,
//! each on a fresh branch from `base`. Every expected impacted set is a literal list worked out
//! by hand from the fixture graph (drawn in `support/workspace.rs`) and spec sections 4 and 6,
//! not copied from the tool's output.

// Test code: a panic is how a failure is reported (clippy allows unwrap only in #[test] fns).
#![allow(clippy::unwrap_used)]

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use support::workspace::{fixture_files, ALL_MAIN_TARGETS, WORKSPACE};
use support::{labels, read_hashes, require_bazel, BazelServer, Fixture};

/// Runs scenarios against one fixture and collects every mismatch, so one failing scenario
/// does not hide the others.
struct Scenarios<'a> {
    fixture: &'a Fixture,
    bazel: &'a BazelServer,
    base_hashes: PathBuf,
    failures: Vec<String>,
}

impl Scenarios<'_> {
    /// Starts `name` on a fresh branch from `base`, applies `change`, commits it and generates
    /// the hashes of the result with `extra` generate-hashes flags.
    fn change(&self, name: &str, change: impl FnOnce(&Fixture), extra: &[&str]) -> PathBuf {
        self.fixture.checkout_new_branch(name, "base");
        change(self.fixture);
        self.fixture.commit(name);
        let hashes = self.fixture.out(&format!("{name}.json"));
        self.bazel.generate_hashes(&hashes, extra);
        hashes
    }

    fn impacted(&self, name: &str, starting: &Path, fin: &Path, extra: &[&str]) -> Vec<String> {
        let out = self.fixture.out(&format!("{name}.impacted.txt"));
        self.bazel.impacted(starting, fin, &out, extra)
    }

    fn expect(&mut self, name: &str, actual: Vec<String>, expected: &[&str]) {
        if actual != labels(expected) {
            self.failures.push(format!(
                "scenario {name}:\n  expected {expected:#?}\n  actual   {actual:#?}"
            ));
        }
    }

    /// `get-impacted-targets -d` JSON output.
    fn distances(
        &self,
        name: &str,
        starting: &Path,
        fin: &Path,
        edges: &Path,
        extra: &[&str],
    ) -> Vec<serde_json::Value> {
        let out = self.fixture.out(&format!("{name}.distances.json"));
        let mut args = vec![
            "-sh",
            starting.to_str().unwrap(),
            "-fh",
            fin.to_str().unwrap(),
            "-d",
            edges.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        self.bazel.run("get-impacted-targets", &args).success();
        serde_json::from_slice(&fs::read(&out).unwrap()).unwrap()
    }

    fn expect_distances(
        &mut self,
        name: &str,
        json: &[serde_json::Value],
        expected: &[(&str, u64, u64)],
    ) {
        let actual: Vec<(String, u64, u64)> = json
            .iter()
            .map(|v| {
                (
                    v["label"].as_str().unwrap().to_owned(),
                    v["targetDistance"].as_u64().unwrap(),
                    v["packageDistance"].as_u64().unwrap(),
                )
            })
            .collect();
        let expected: Vec<(String, u64, u64)> = expected
            .iter()
            .map(|(l, t, p)| (l.to_string(), *t, *p))
            .collect();
        if actual != expected {
            self.failures.push(format!(
                "scenario {name}:\n  expected {expected:?}\n  actual   {actual:?}"
            ));
        }
    }

    /// The common shape: change, generate, diff against the base hashes, compare.
    fn check(&mut self, name: &str, change: impl FnOnce(&Fixture), expected: &[&str]) {
        let fin = self.change(name, change, &[]);
        let actual = self.impacted(name, &self.base_hashes.clone(), &fin, &[]);
        self.expect(name, actual, expected);
    }
}

#[test]
fn impacted_targets_of_workspace_changes_match_hand_computed_sets() {
    let Some(bazel) = require_bazel() else { return };
    let fixture = Fixture::new(&fixture_files());
    let server = BazelServer::new(&bazel, &fixture);

    let base_hashes = fixture.out("base.json");
    server.generate_hashes(&base_hashes, &[]);
    let base = read_hashes(&base_hashes);
    let text = fs::read_to_string(&base_hashes).unwrap();
    assert!(
        text.starts_with("{\n  \"") && text.ends_with("\n}"),
        "Gson-style pretty JSON without a trailing newline (spec 5): {:?}",
        &text[text.len().saturating_sub(20)..]
    );
    let main: Vec<&str> = base
        .keys()
        .map(String::as_str)
        .filter(|l| !l.starts_with("//external:"))
        .collect();
    assert_eq!(main, ALL_MAIN_TARGETS, "the query universe of the fixture");
    assert!(
        base.keys().any(|l| l.starts_with("//external:")),
        "WORKSPACE mode: //external:all-targets is queried by default"
    );
    // Same tree, same server: same bytes, and without an output path they go to stdout.
    let again = server.run("generate-hashes", &[]).success();
    assert!(
        again.stdout.as_bytes() == fs::read(&base_hashes).unwrap(),
        "two runs on one tree give byte-identical hashes (stdout vs file)"
    );
    let no_external = fixture.out("no-external.json");
    server.generate_hashes(&no_external, &["--excludeExternalTargets"]);
    assert_eq!(
        read_hashes(&no_external).keys().collect::<Vec<_>>(),
        ALL_MAIN_TARGETS,
        "--excludeExternalTargets leaves out //external:all-targets"
    );

    let mut s = Scenarios {
        fixture: &fixture,
        bazel: &server,
        base_hashes: base_hashes.clone(),
        failures: Vec::new(),
    };

    s.check(
        "source_content_change",
        |f| f.write("lib/data/a.txt", "a changed\n"),
        &[
            "//app:app",
            "//app:app.out",
            "//lib:data/a.txt",
            "//lib:srcs",
            "//lib:upper",
            "//lib:upper.txt",
            "//lib:upper_alias",
        ],
    );
    // Query mode is configuration-agnostic: a file of a non-default select() branch counts,
    // and the change reaches //app:app_macro through the macro-made rule's input.
    s.check(
        "select_branch_source_change",
        |f| f.write("lib/fast.txt", "faster\n"),
        &[
            "//app:app_macro",
            "//app:app_macro.out",
            "//lib:fast.txt",
            "//lib:selected",
            "//lib:selected.out",
        ],
    );
    s.check(
        "glob_picks_up_new_file",
        |f| f.write("lib/data/c.txt", "c\n"),
        &[
            "//app:app",
            "//app:app.out",
            "//lib:data/c.txt",
            "//lib:srcs",
            "//lib:upper",
            "//lib:upper.txt",
            "//lib:upper_alias",
        ],
    );
    // The deleted //lib:data/b.txt itself is not reported (deleted targets never are).
    s.check(
        "glob_shrinks_on_deleted_file",
        |f| f.remove("lib/data/b.txt"),
        &[
            "//app:app",
            "//app:app.out",
            "//lib:srcs",
            "//lib:upper",
            "//lib:upper.txt",
            "//lib:upper_alias",
        ],
    );
    s.check(
        "build_attribute_edit",
        |f| {
            f.replace(
                "lib/BUILD",
                "cmd = \"cat $(SRCS) | tr a-z A-Z > $@\"",
                "cmd = \"cat $(SRCS) | tr a-z A-Z | sort > $@\"",
            )
        },
        &[
            "//app:app",
            "//app:app.out",
            "//lib:BUILD",
            "//lib:upper",
            "//lib:upper.txt",
            "//lib:upper_alias",
        ],
    );
    s.check(
        "new_target",
        |f| {
            f.append(
                "app/BUILD",
                "\ngenrule(\n    name = \"extra\",\n    srcs = [\"main.txt\"],\n    \
                 outs = [\"extra.out\"],\n    cmd = \"cp $< $@\",\n)\n",
            )
        },
        &["//app:BUILD", "//app:extra", "//app:extra.out"],
    );
    // //app:leaf and //app:leaf.out are gone: not reported, as upstream.
    s.check(
        "deleted_target_is_not_reported",
        |f| {
            f.replace(
                "app/BUILD",
                "genrule(\n    name = \"leaf\",\n    outs = [\"leaf.out\"],\n    \
                 cmd = \"echo leaf > $@\",\n)\n",
                "",
            )
        },
        &["//app:BUILD"],
    );
    // A change to the macro's code that leaves the attributes it produces unchanged: only the
    // per-rule .bzl seed (instantiation stack) can see it. Rules in the same BUILD files that
    // were not made by a macro of defs.bzl are not impacted, nor are the BUILD files that load
    // it. //app:nested has defs.bzl in its stack too (nested_gen), so the whole file counts.
    s.check(
        "macro_change_impacts_only_rules_made_through_the_bzl",
        |f| {
            f.replace(
                "tools/defs.bzl",
                "        outs = [name + \".out\"],\n",
                "        outs = [\"%s.out\" % name],\n",
            )
        },
        &[
            "//app:app_macro",
            "//app:app_macro.out",
            "//app:nested",
            "//app:nested.o",
            "//lib:lib_macro",
            "//lib:lib_macro.out",
            "//tools:defs.bzl",
        ],
    );
    // The innermost frame of a nested macro: only the rule instantiated through inner.bzl.
    s.check(
        "nested_macro_inner_bzl_change_impacts_only_its_rules",
        |f| {
            f.replace(
                "tools/inner.bzl",
                "        srcs = [src],\n",
                "        srcs = [s for s in [src]],\n",
            )
        },
        &["//app:nested", "//app:nested.o"],
    );
    // lib/data becomes its own package: the glob in //lib stops at the package boundary and
    // comes back empty; the files reappear as new targets of //lib/data. The old
    // //lib:data/*.txt targets are deleted (not reported); //lib:BUILD is unchanged.
    s.check(
        "new_build_file_splits_package",
        |f| {
            f.write(
                "lib/data/BUILD",
                "filegroup(\n    name = \"data\",\n    srcs = glob([\"*.txt\"]),\n)\n",
            )
        },
        &[
            "//app:app",
            "//app:app.out",
            "//lib/data:BUILD",
            "//lib/data:a.txt",
            "//lib/data:b.txt",
            "//lib/data:data",
            "//lib:srcs",
            "//lib:upper",
            "//lib:upper.txt",
            "//lib:upper_alias",
        ],
    );
    // Our documented fix of upstream #441: the package_group is hashed, and rules whose
    // visibility names it depend on it (upstream reports nothing but //lib:BUILD here).
    s.check(
        "package_group_packages_change_impacts_rules_visible_through_it",
        |f| {
            f.replace(
                "lib/BUILD",
                "packages = [\"//app/...\"],",
                "packages = [\"//app/...\", \"//other/...\"],",
            )
        },
        &[
            "//app:app",
            "//app:app.out",
            "//lib:BUILD",
            "//lib:friends",
            "//lib:srcs",
            "//lib:upper",
            "//lib:upper.txt",
            "//lib:upper_alias",
        ],
    );
    // Through `includes`: the included group changes, so does every group including it.
    s.check(
        "included_package_group_change_impacts_rules_visible_through_includer",
        |f| {
            f.replace(
                "lib/BUILD",
                "packages = [\"//tools/...\"],",
                "packages = [\"//tools/...\", \"//other/...\"],",
            )
        },
        &[
            "//app:app",
            "//app:app.out",
            "//lib:BUILD",
            "//lib:friends",
            "//lib:more_friends",
            "//lib:srcs",
            "//lib:upper",
            "//lib:upper.txt",
            "//lib:upper_alias",
        ],
    );
    // Shifts every line of app/BUILD: locations are not hashed, so only the BUILD file's
    // own content hash changes; no rule is impacted.
    s.check(
        "comment_only_build_edit_impacts_no_rule",
        |f| {
            let old = f.read("app/BUILD");
            f.write("app/BUILD", &format!("# A comment.\n\n{old}# Trailing.\n"));
        },
        &["//app:BUILD"],
    );
    s.check(
        "bazelrc_build_option_change_impacts_nothing",
        |f| f.append(".bazelrc", "build --verbose_failures\n"),
        &[],
    );
    // Git records the mode (100644 -> 100755); the owner-exec byte is part of the digest.
    s.check(
        "exec_bit_change_impacts_file_and_consumers",
        |f| f.set_mode("app/main.txt", 0o755),
        &[
            "//app:app",
            "//app:app.out",
            "//app:main.txt",
            "//app:nested",
            "//app:nested.o",
        ],
    );

    // Only the owner-exec bit counts (git's 644/755 model): group and other bits do not.
    s.check(
        "group_exec_bit_change_impacts_nothing",
        |f| f.set_mode("app/main.txt", 0o654),
        &[],
    );
    // git does not track that bit, so the next checkout would keep it: restore it by hand.
    fixture.set_mode("app/main.txt", 0o644);
    // A select() key is an input of the rule that selects on it.
    s.check(
        "config_setting_edit_impacts_rules_selecting_on_it",
        |f| {
            f.replace(
                "lib/BUILD",
                "values = {\"compilation_mode\": \"opt\"},",
                "values = {\"compilation_mode\": \"dbg\"},",
            )
        },
        &[
            "//app:app_macro",
            "//app:app_macro.out",
            "//lib:BUILD",
            "//lib:opt",
            "//lib:selected",
            "//lib:selected.out",
        ],
    );

    // --seed-filepaths: the list's paths are relative to the process cwd (the fixture root),
    // not to the workspace. Both sides are generated from the same tree with the same list.
    {
        let name = "seed_file_change_impacts_everything";
        fs::create_dir_all(fixture.out("seeds")).unwrap();
        fs::write(fixture.out("seeds/seed.txt"), "seed v1\n").unwrap();
        fs::write(fixture.out("seeds.list"), "seeds/seed.txt\n").unwrap();
        let seed_base = s.change(name, |_| {}, &["-s", "seeds.list"]);
        assert_ne!(
            read_hashes(&seed_base),
            base,
            "a seed file changes every hash"
        );
        fs::write(fixture.out("seeds/seed.txt"), "seed v2\n").unwrap();
        let seed_final = fixture.out("seed-final.json");
        server.generate_hashes(&seed_final, &["-s", "seeds.list"]);
        let actual = s.impacted(name, &seed_base, &seed_final, &[]);
        let every_label: Vec<String> = read_hashes(&seed_final).into_keys().collect();
        if actual != every_label {
            s.failures.push(format!(
                "{name}: every label (//external ones too) must be impacted:\n{actual:#?}"
            ));
        }
        let main: Vec<String> = actual
            .into_iter()
            .filter(|l| !l.starts_with("//external:"))
            .collect();
        s.expect(name, main, ALL_MAIN_TARGETS);
    }

    // --includeTargetType at both revisions, then -tt at get-impacted-targets; with types
    // known, output is ordered SourceFile, GeneratedFile, Rule, then by label (spec 5.3).
    {
        let name = "typed_glob_picks_up_new_file";
        let typed_base = s.change(&format!("{name}_base"), |_| {}, &["--includeTargetType"]);
        let typed = read_hashes(&typed_base);
        assert_eq!(typed["//lib:srcs"].split_once('#').unwrap().0, "Rule");
        assert_eq!(
            typed["//lib:data/a.txt"].split_once('#').unwrap().0,
            "SourceFile"
        );
        assert_eq!(
            typed["//lib:upper.txt"].split_once('#').unwrap().0,
            "GeneratedFile"
        );
        assert_eq!(typed["//lib:friends"].split_once('#').unwrap().0, "Rule");
        let typed_final = s.change(
            name,
            |f| f.write("lib/data/c.txt", "c\n"),
            &["--includeTargetType"],
        );
        let rules = s.impacted(name, &typed_base, &typed_final, &["-tt", "Rule"]);
        s.expect(
            "typed -tt Rule",
            rules,
            &[
                "//app:app",
                "//lib:srcs",
                "//lib:upper",
                "//lib:upper_alias",
            ],
        );
        let all = s.impacted(
            name,
            &typed_base,
            &typed_final,
            &["-tt", "Rule,SourceFile,GeneratedFile"],
        );
        s.expect(
            "typed -tt Rule,SourceFile,GeneratedFile (kind order)",
            all,
            &[
                "//lib:data/c.txt",
                "//app:app.out",
                "//lib:upper.txt",
                "//app:app",
                "//lib:srcs",
                "//lib:upper",
                "//lib:upper_alias",
            ],
        );
        let sources = s.impacted(name, &typed_base, &typed_final, &["-tt", "SourceFile"]);
        s.expect("typed -tt SourceFile", sources, &["//lib:data/c.txt"]);
    }

    // -d: the final revision's dep edges; distances per spec 6.5. a.txt and the filegroup
    // listing it change directly (0,0); each rule above adds one to the target distance and
    // crossing from //lib into //app adds one to the package distance.
    {
        let name = "distances_of_source_change";
        let edges = fixture.out("edges.json");
        let fin = s.change(
            name,
            |f| f.write("lib/data/a.txt", "a changed\n"),
            &["-d", edges.to_str().unwrap()],
        );
        assert_eq!(
            fs::read(&fin).unwrap(),
            fs::read(fixture.out("source_content_change.json")).unwrap(),
            "-d does not change the hashes"
        );
        let dep_edges: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&fs::read(&edges).unwrap()).unwrap();
        assert_eq!(
            dep_edges["//lib:upper.txt"],
            serde_json::json!(["//lib:upper"])
        );
        assert!(
            !dep_edges.contains_key("//lib:data/a.txt"),
            "source files have no dep-edge entry"
        );
        let json = s.distances(name, &base_hashes, &fin, &edges, &[]);
        s.expect_distances(
            name,
            &json,
            &[
                ("//app:app", 3, 1),
                ("//app:app.out", 4, 1),
                ("//lib:data/a.txt", 0, 0),
                ("//lib:srcs", 0, 0),
                ("//lib:upper", 1, 0),
                ("//lib:upper.txt", 2, 0),
                ("//lib:upper_alias", 2, 0),
            ],
        );
        let first = json.first().and_then(|v| v.as_object()).expect("an object");
        assert_eq!(
            first.keys().collect::<Vec<_>>(),
            ["label", "targetDistance", "packageDistance"],
            "field order of spec 5.4"
        );

        // Distances are computed before -tt filters (spec 6.5 step 4): the rules keep the
        // distances they have through generated files and sources.
        let name = "distances_of_source_change_typed_rules_only";
        let typed_edges = fixture.out("typed-edges.json");
        let typed_fin = s.change(
            name,
            |f| f.write("lib/data/a.txt", "a changed\n"),
            &["--includeTargetType", "-d", typed_edges.to_str().unwrap()],
        );
        let typed_base = fixture.out("typed_glob_picks_up_new_file_base.json");
        let json = s.distances(
            name,
            &typed_base,
            &typed_fin,
            &typed_edges,
            &["-tt", "Rule"],
        );
        s.expect_distances(
            name,
            &json,
            &[
                ("//app:app", 3, 1),
                ("//lib:srcs", 0, 0),
                ("//lib:upper", 1, 0),
                ("//lib:upper_alias", 2, 0),
            ],
        );
    }

    // A BUILD file that does not parse: without -k (the default, upstream #400) the run fails
    // and writes nothing; with -k Bazel's exit code 3 is accepted and the broken package
    // contributes only its BUILD file, whose targets silently vanish (upstream #398).
    {
        let name = "broken_build_file_needs_keep_going";
        fixture.checkout_new_branch(name, "base");
        fixture.append("app/BUILD", "\ngenrule(\n");
        fixture.commit(name);
        let broken = fixture.out("broken.json");
        let run = server
            .run("generate-hashes", &[broken.to_str().unwrap()])
            .exit(1)
            .stderr_has("app/BUILD");
        assert!(!broken.exists(), "no output from a failed run:\n{run}");
        server.generate_hashes(&broken, &["-k"]);
        let kept: Vec<String> = read_hashes(&broken)
            .into_keys()
            .filter(|l| !l.starts_with("//external:"))
            .collect();
        let expected: Vec<&str> = ALL_MAIN_TARGETS
            .iter()
            .copied()
            .filter(|l| !l.starts_with("//app:") || *l == "//app:BUILD")
            .collect();
        s.expect(&format!("{name} (hashed labels)"), kept, &expected);
        let actual = s.impacted(name, &base_hashes, &broken, &[]);
        s.expect(name, actual, &["//app:BUILD"]);
    }

    assert!(s.failures.is_empty(), "{}", s.failures.join("\n\n"));
}

/// Bazel 4.2.3 writes non-ASCII label characters into `--output=streamed_proto` as the UTF-8
/// encoding of each byte of their UTF-8 form (`é` arrives as `Ã©`, while `--output=label`
/// prints `é`). The source path derived from that label does not exist, so the file is
/// hashed as "missing" at both revisions and an edit to it impacts nothing.
#[test]
fn content_change_of_non_ascii_file_impacts_its_consumers() {
    let Some(bazel) = require_bazel() else { return };
    let fixture = Fixture::new(&[
        ("WORKSPACE", WORKSPACE),
        (
            "lib/BUILD",
            "filegroup(\n    name = \"srcs\",\n    srcs = glob([\"data/*.txt\"]),\n)\n\n\
             genrule(\n    name = \"upper\",\n    srcs = [\":srcs\"],\n    \
             outs = [\"upper.txt\"],\n    cmd = \"cat $(SRCS) > $@\",\n)\n",
        ),
        ("lib/data/a.txt", "a\n"),
        ("lib/data/\u{e9}t\u{e9}.txt", "summer\n"),
    ]);
    let server = BazelServer::new(&bazel, &fixture);
    let base = fixture.out("base.json");
    server.generate_hashes(&base, &[]);
    fixture.write("lib/data/\u{e9}t\u{e9}.txt", "winter\n");
    fixture.commit("edit the file with a non-ASCII name");
    let fin = fixture.out("final.json");
    server.generate_hashes(&fin, &[]);
    let impacted = server.impacted(&base, &fin, &fixture.out("impacted.txt"), &[]);
    let (files, rules): (Vec<String>, Vec<String>) = impacted
        .into_iter()
        .partition(|l| l.starts_with("//lib:data/"));
    assert_eq!(rules, ["//lib:srcs", "//lib:upper", "//lib:upper.txt"]);
    assert_eq!(files.len(), 1, "the edited file itself: {files:?}");
}

/// External repositories (spec 3.10, 4.3): a `local_repository` outside the checkout, used by
/// a genrule. Its files are hashed only for repos named in `--fineGrainedHashExternalRepos`;
/// otherwise they hash as empty and an edit is invisible (upstream's documented behaviour,
/// spec section 10).
#[test]
fn external_repo_file_change_is_seen_only_with_fine_grained_hashing() {
    let Some(bazel) = require_bazel() else { return };
    let fixture = Fixture::new(&[
        (
            "WORKSPACE",
            "workspace(name = \"fixture\")\n\n\
             local_repository(\n    name = \"ext\",\n    path = \"../ext\",\n)\n",
        ),
        (
            "app/BUILD",
            "genrule(\n    name = \"uses_ext\",\n    srcs = [\"@ext//:data\"],\n    \
             outs = [\"uses_ext.out\"],\n    cmd = \"cp $< $@\",\n)\n",
        ),
    ]);
    let ext = fixture.root.join("ext");
    fs::create_dir(&ext).unwrap();
    fs::write(ext.join("WORKSPACE"), "").unwrap();
    fs::write(
        ext.join("BUILD"),
        "filegroup(\n    name = \"data\",\n    srcs = [\"data.txt\"],\n    \
         visibility = [\"//visibility:public\"],\n)\n",
    )
    .unwrap();
    fs::write(ext.join("data.txt"), "v1\n").unwrap();
    let server = BazelServer::new(&bazel, &fixture);

    let run = |name: &str, extra: &[&str]| -> Vec<String> {
        let before = fixture.out(&format!("{name}-before.json"));
        let after = fixture.out(&format!("{name}-after.json"));
        fs::write(ext.join("data.txt"), "v1\n").unwrap();
        server.generate_hashes(&before, extra);
        fs::write(ext.join("data.txt"), "v2\n").unwrap();
        server.generate_hashes(&after, extra);
        server.impacted(&before, &after, &fixture.out(&format!("{name}.txt")), &[])
    };
    let coarse = run("coarse", &[]);
    let fine = run("fine", &["--fineGrainedHashExternalRepos", "@ext"]);
    assert_eq!(coarse, Vec::<String>::new(), "without fine-grained hashing");
    assert_eq!(
        fine,
        [
            "//app:uses_ext",
            "//app:uses_ext.out",
            "@ext//:data",
            "@ext//:data.txt"
        ],
        "with --fineGrainedHashExternalRepos @ext"
    );
}

/// `--useCquery` on Bazel 4.2.3: its `cquery` has no `--query_file` option (only `query`
/// has), so every cquery run fails with "Unrecognized option: --query_file" (exit 2 from
/// Bazel, 1 from us). The expression works as a positional argument there. The code already
/// gates `--consistent_labels` and `streamed_proto` by version for this Bazel
/// (`crates/cli/src/features.rs`) but always passes `--query_file`
/// (`crates/bazel/src/query.rs`).
#[test]
fn use_cquery_generates_hashes_on_bazel_4() {
    let Some(bazel) = require_bazel() else { return };
    let fixture = Fixture::new(&fixture_files());
    let server = BazelServer::new(&bazel, &fixture);
    let hashes = fixture.out("cquery.json");
    server.generate_hashes(&hashes, &["--useCquery"]);
    let map = read_hashes(&hashes);
    for label in ["//app:app", "//lib:upper", "//lib:selected"] {
        assert!(map.contains_key(label), "{label} in {:#?}", map.keys());
    }
}
