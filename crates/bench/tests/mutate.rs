//! Mutations: each touches exactly what it says, deterministically (no Bazel needed).

mod common;

use bazel_diff_bench::mutate::{add_partial_bzl, list_packages};
use bazel_diff_bench::{apply_mutation, generate, Mutation, Rng};
use common::{changed, rule_names, small_config, snapshot, text};

fn fresh() -> anyhow::Result<tempfile::TempDir> {
    let d = tempfile::tempdir()?;
    generate(&small_config(), d.path())?;
    Ok(d)
}

#[test]
fn parse_and_display_round_trip() -> anyhow::Result<()> {
    for s in [
        "content:3",
        "build-edit:1",
        "add-file:2",
        "delete-file:5",
        "new-target:1",
        "bzl-edit",
        "partial-bzl-edit",
    ] {
        let m: Mutation = s.parse()?;
        assert_eq!(m.to_string(), s);
    }
    assert_eq!("content".parse::<Mutation>()?, Mutation::Content(1));
    for bad in [
        "",
        "contents:1",
        "content:x",
        "bzl-edit:2",
        "partial-bzl-edit:1",
        "content:-1",
    ] {
        assert!(bad.parse::<Mutation>().is_err(), "{bad:?} should not parse");
    }
    Ok(())
}

#[test]
fn content_edits_k_sources_in_low_layers() -> anyhow::Result<()> {
    let d = fresh()?;
    let before = snapshot(d.path());
    let rep = apply_mutation(d.path(), &Mutation::Content(3), &mut Rng::new(9))?;
    let (modified, added, deleted) = changed(&before, &snapshot(d.path()));
    assert_eq!(modified, rep.modified);
    assert_eq!(modified.len(), 3);
    assert!(added.is_empty() && deleted.is_empty());
    for m in &modified {
        assert!(m.ends_with(".txt"), "{m}");
        // 6 layers: the lowest tenth rounds up to layer 0 only.
        assert!(m.starts_with("l00/"), "{m} is not in a low layer");
    }
    Ok(())
}

#[test]
fn same_rng_gives_same_mutation() -> anyhow::Result<()> {
    let a = fresh()?;
    let b = fresh()?;
    for m in [
        "content:2",
        "build-edit:2",
        "add-file:2",
        "delete-file:2",
        "new-target:2",
        "bzl-edit",
    ] {
        let m: Mutation = m.parse()?;
        let ra = apply_mutation(a.path(), &m, &mut Rng::new(5))?;
        let rb = apply_mutation(b.path(), &m, &mut Rng::new(5))?;
        assert_eq!(ra, rb);
    }
    assert_eq!(snapshot(a.path()), snapshot(b.path()));
    Ok(())
}

#[test]
fn build_edit_changes_one_tags_line_per_file() -> anyhow::Result<()> {
    let d = fresh()?;
    let before = snapshot(d.path());
    let rep = apply_mutation(d.path(), &Mutation::BuildEdit(2), &mut Rng::new(1))?;
    let (modified, added, deleted) = changed(&before, &snapshot(d.path()));
    assert_eq!(modified, rep.modified);
    assert_eq!(modified.len(), 2);
    assert!(added.is_empty() && deleted.is_empty());
    for m in &modified {
        assert!(m.ends_with("/BUILD"));
        let old = String::from_utf8_lossy(&before[m]).into_owned();
        let new = text(d.path(), m);
        let diff: Vec<(&str, &str)> = old
            .lines()
            .zip(new.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(diff.len(), 1, "{m}: {diff:?}");
        assert!(
            diff[0].1.starts_with("    tags = [\"edit-") && diff[0].1.ends_with("\"bench\"],"),
            "{diff:?}"
        );
        assert_eq!(old.lines().count(), new.lines().count());
    }
    Ok(())
}

#[test]
fn add_file_adds_globbed_txt() -> anyhow::Result<()> {
    let d = fresh()?;
    let before = snapshot(d.path());
    let rep = apply_mutation(d.path(), &Mutation::AddFile(3), &mut Rng::new(2))?;
    let (modified, added, deleted) = changed(&before, &snapshot(d.path()));
    assert!(modified.is_empty() && deleted.is_empty());
    assert_eq!(added, rep.added);
    assert_eq!(added.len(), 3);
    for a in &added {
        assert!(a.ends_with(".txt"), "the srcs glob only matches *.txt: {a}");
        let pkg = a.rsplit_once('/').expect("in a package").0;
        assert!(text(d.path(), &format!("{pkg}/BUILD")).contains("glob([\"*.txt\"])"));
    }
    Ok(())
}

#[test]
fn delete_file_removes_file_and_its_references() -> anyhow::Result<()> {
    let d = fresh()?;
    let before = snapshot(d.path());
    let rep = apply_mutation(d.path(), &Mutation::DeleteFile(4), &mut Rng::new(3))?;
    let after = snapshot(d.path());
    let (modified, added, deleted) = changed(&before, &after);
    assert!(added.is_empty());
    assert_eq!(deleted, rep.deleted);
    assert_eq!(deleted.len(), 4);
    assert_eq!(modified, rep.modified);
    for del in &deleted {
        let (pkg, name) = del.rsplit_once('/').expect("in a package");
        let build = text(d.path(), &format!("{pkg}/BUILD"));
        assert!(
            !build.contains(&format!("\"{name}\"")),
            "{pkg}/BUILD still names {name}"
        );
        // Generated sources src1..: rule gen{i+1} named src{i} explicitly, so its BUILD changed.
        if name.starts_with("src") {
            assert!(
                modified.contains(&format!("{pkg}/BUILD")),
                "{pkg}/BUILD should have changed"
            );
        }
    }
    Ok(())
}

#[test]
fn new_target_appends_a_rule() -> anyhow::Result<()> {
    let d = fresh()?;
    let before = snapshot(d.path());
    let rep = apply_mutation(d.path(), &Mutation::NewTarget(2), &mut Rng::new(4))?;
    let (modified, added, deleted) = changed(&before, &snapshot(d.path()));
    assert!(added.is_empty() && deleted.is_empty());
    assert_eq!(modified, rep.modified);
    assert_eq!(modified.len(), 2);
    for m in &modified {
        let old = rule_names(&String::from_utf8_lossy(&before[m]));
        let new = rule_names(&text(d.path(), m));
        assert_eq!(new.len(), old.len() + 1);
        assert_eq!(new[..old.len()], old[..]);
        assert!(new[old.len()].starts_with("new_"));
        assert!(
            text(d.path(), m).starts_with(&*String::from_utf8_lossy(&before[m])),
            "appended, not rewritten"
        );
    }
    Ok(())
}

#[test]
fn bzl_edit_bumps_the_macro_body_and_keeps_line_numbers() -> anyhow::Result<()> {
    let d = fresh()?;
    let before = snapshot(d.path());
    for expected in ["bench-v2", "bench-v3"] {
        let rep = apply_mutation(d.path(), &Mutation::BzlEdit, &mut Rng::new(0))?;
        assert_eq!(rep.modified, vec!["tools/defs.bzl".to_string()]);
        let bzl = text(d.path(), "tools/defs.bzl");
        assert!(bzl.contains(expected), "{bzl}");
        assert_eq!(bzl.lines().nth(5), Some("    native.genrule("));
    }
    let (modified, added, deleted) = changed(&before, &snapshot(d.path()));
    assert_eq!(modified, vec!["tools/defs.bzl".to_string()]);
    assert!(added.is_empty() && deleted.is_empty());
    Ok(())
}

#[test]
fn partial_bzl_is_loaded_by_every_tenth_package_and_edited() -> anyhow::Result<()> {
    let d = fresh()?;
    let packages = list_packages(d.path())?;
    let loaders = add_partial_bzl(d.path(), 10)?;
    assert_eq!(loaders, packages.len().div_ceil(10));
    let first = text(d.path(), &format!("{}/BUILD", packages[0].rel));
    assert!(
        first.starts_with("load(\"//tools:partial.bzl\", \"partial_genrule\")\n"),
        "{first}"
    );
    assert!(!text(d.path(), &format!("{}/BUILD", packages[1].rel)).contains("partial"));
    let before = snapshot(d.path());
    let rep = apply_mutation(d.path(), &Mutation::PartialBzlEdit, &mut Rng::new(0))?;
    assert_eq!(rep.modified, vec!["tools/partial.bzl".to_string()]);
    assert!(text(d.path(), "tools/partial.bzl").contains("partial-v2"));
    let (modified, added, deleted) = changed(&before, &snapshot(d.path()));
    assert_eq!(modified, vec!["tools/partial.bzl".to_string()]);
    assert!(added.is_empty() && deleted.is_empty());
    Ok(())
}

#[test]
fn mutations_compose_over_many_rounds() -> anyhow::Result<()> {
    // Later rounds must keep working on trees earlier rounds changed (e.g. deleting until a
    // package has no sources left, editing new targets' tags).
    let d = fresh()?;
    let mut rng = Rng::new(11);
    for _ in 0..25 {
        for m in [
            "delete-file:3",
            "new-target:2",
            "build-edit:3",
            "add-file:1",
            "content:2",
        ] {
            apply_mutation(d.path(), &m.parse()?, &mut rng)?;
        }
    }
    assert_eq!(list_packages(d.path())?.len(), small_config().packages);
    Ok(())
}
