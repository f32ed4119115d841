//! The generator: determinism, shape and target-count estimate (no Bazel needed).

mod common;

use std::collections::BTreeSet;

use bazel_diff_bench::gen::{generate_with_threads, GenConfig};
use bazel_diff_bench::generate;
use common::{rule_names, small_config, snapshot, text};

#[test]
fn same_config_gives_byte_identical_tree() -> anyhow::Result<()> {
    let cfg = small_config();
    let a = tempfile::tempdir()?;
    let b = tempfile::tempdir()?;
    generate(&cfg, a.path())?;
    // A different thread count must not change anything either.
    generate_with_threads(&cfg, b.path(), 1)?;
    assert_eq!(snapshot(a.path()), snapshot(b.path()));
    Ok(())
}

#[test]
fn different_seed_gives_different_tree() -> anyhow::Result<()> {
    let a = tempfile::tempdir()?;
    let b = tempfile::tempdir()?;
    generate(&small_config(), a.path())?;
    generate(
        &GenConfig {
            seed: 2,
            ..small_config()
        },
        b.path(),
    )?;
    assert_ne!(snapshot(a.path()), snapshot(b.path()));
    Ok(())
}

#[test]
fn refuses_non_empty_output_dir() -> anyhow::Result<()> {
    let d = tempfile::tempdir()?;
    std::fs::write(d.path().join("keep.txt"), "x")?;
    assert!(generate(&small_config(), d.path()).is_err());
    assert_eq!(std::fs::read_to_string(d.path().join("keep.txt"))?, "x");
    Ok(())
}

#[test]
fn target_estimate_hits_requested_sizes() {
    let cfg = GenConfig::default();
    for want in [1_500usize, 15_000, 150_000] {
        let packages = cfg.packages_for_targets(want);
        let got = GenConfig {
            packages,
            ..cfg.clone()
        }
        .estimated_targets();
        assert!(
            got.abs_diff(want) * 100 <= want,
            "asked {want}, estimate {got}"
        );
    }
}

#[test]
fn estimate_matches_files_written() -> anyhow::Result<()> {
    // Every source file, BUILD file and exported file is one target; each rule adds itself and its
    // output; each package a filegroup. Cross-check the formula against what is on disk.
    let cfg = small_config();
    let d = tempfile::tempdir()?;
    generate(&cfg, d.path())?;
    let files = snapshot(d.path());
    let in_packages = files
        .keys()
        .filter(|k| k.starts_with('l') || k.starts_with("tools/"))
        .count();
    let rules: usize = files
        .iter()
        .filter(|(k, _)| k.ends_with("/BUILD") && k.starts_with('l'))
        .map(|(_, v)| rule_names(&String::from_utf8_lossy(v)).len())
        .sum();
    assert_eq!(rules, cfg.packages * cfg.targets_per_package);
    assert_eq!(
        in_packages + 2 * rules + cfg.packages,
        cfg.estimated_targets()
    );
    Ok(())
}

#[test]
fn deps_only_point_one_layer_down_with_bounded_fan_in() -> anyhow::Result<()> {
    let cfg = small_config();
    let d = tempfile::tempdir()?;
    generate(&cfg, d.path())?;
    let files = snapshot(d.path());
    let packages: BTreeSet<&str> = files
        .keys()
        .filter_map(|k| k.strip_suffix("/BUILD"))
        .filter(|k| k.starts_with('l'))
        .collect();
    assert_eq!(packages.len(), cfg.packages);
    let layer_of = |pkg: &str| -> usize { pkg[1..3].parse().expect("layer number") };
    let mut cross = 0;
    for pkg in &packages {
        let build = text(d.path(), &format!("{pkg}/BUILD"));
        assert!(build.contains("load(\"//tools:defs.bzl\", \"bench_genrule\")"));
        assert!(build.contains("glob([\"*.txt\"])"));
        let mut per_rule = 0;
        for line in build.lines() {
            if line == "bench_genrule(" {
                per_rule = 0;
            }
            let Some(label) = line
                .trim()
                .strip_prefix("\"//")
                .and_then(|l| l.strip_suffix("\","))
            else {
                continue;
            };
            let (dep_pkg, target) = label.split_once(':').expect("label has a colon");
            assert_eq!(layer_of(dep_pkg) + 1, layer_of(pkg), "{pkg} -> {label}");
            assert!(
                packages.contains(dep_pkg),
                "{pkg} -> {label}: no such package"
            );
            let rule = target.strip_suffix(".out").expect("deps are rule outputs");
            assert!(rule_names(&text(d.path(), &format!("{dep_pkg}/BUILD")))
                .iter()
                .any(|r| r == rule));
            per_rule += 1;
            cross += 1;
            assert!(per_rule <= cfg.fan_in, "{pkg}: more than fan-in deps");
        }
    }
    let rules_above_layer0 = (cfg.packages - cfg.layer_sizes()[0]) * cfg.targets_per_package;
    assert_eq!(
        cross,
        rules_above_layer0 * cfg.fan_in,
        "every rule above layer 0 has fan-in deps"
    );
    Ok(())
}

#[test]
fn macro_call_stays_on_line_six() {
    // Instantiation stacks read `tools/defs.bzl:6:19: bench_genrule`; the bzl-edit mutation keeps it.
    let line6 = bazel_diff_bench::gen::DEFS_BZL
        .lines()
        .nth(5)
        .expect("6 lines");
    assert_eq!(line6, "    native.genrule(");
}

#[test]
fn fewer_packages_than_layers_collapses_layers() -> anyhow::Result<()> {
    let cfg = GenConfig {
        packages: 3,
        ..GenConfig::default()
    };
    assert_eq!(cfg.layer_sizes(), vec![1, 1, 1]);
    let d = tempfile::tempdir()?;
    let s = generate(&cfg, d.path())?;
    assert_eq!(s.layers, 3);
    assert!(d.path().join("l02/p0000/BUILD").is_file());
    Ok(())
}
