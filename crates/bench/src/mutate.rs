//! Mutations of a generated workspace: the kinds of change whose impact bazel-diff must compute.
//! Each one edits the tree in place (the caller commits), driven by a caller-owned [`Rng`] so a
//! sequence of commits is reproducible.
//!
//! They rely only on the shapes `gen` writes (directory names `lNN/pNNNN`, one src per line, one
//! `tags` line per rule, the `bench-vN` marker in `tools/defs.bzl`), so they also work on a tree
//! that earlier mutations already changed.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Serialize;

use crate::error::{io_err, BenchError, Result};
use crate::gen::render_rule;
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// Edit the contents of K source files in the lowest layers (large impacted cone).
    Content(usize),
    /// Change an attribute (`tags`) of one rule in each of K BUILD files.
    BuildEdit(usize),
    /// Add a `.txt` file to K packages; the `srcs` glob picks it up.
    AddFile(usize),
    /// Delete K `.txt` sources and drop their explicit references from the BUILD files.
    DeleteFile(usize),
    /// Append a new `bench_genrule` to K BUILD files.
    NewTarget(usize),
    /// Edit the body of the `bench_genrule` macro (changes every generated rule's `cmd`).
    BzlEdit,
    /// Edit the macro of `tools/partial.bzl`, which one package in ten loads (see
    /// [`add_partial_bzl`]).
    PartialBzlEdit,
}

impl Mutation {
    pub fn kind(&self) -> &'static str {
        match self {
            Mutation::Content(_) => "content",
            Mutation::BuildEdit(_) => "build-edit",
            Mutation::AddFile(_) => "add-file",
            Mutation::DeleteFile(_) => "delete-file",
            Mutation::NewTarget(_) => "new-target",
            Mutation::BzlEdit => "bzl-edit",
            Mutation::PartialBzlEdit => "partial-bzl-edit",
        }
    }

    fn count(&self) -> Option<usize> {
        match *self {
            Mutation::Content(k)
            | Mutation::BuildEdit(k)
            | Mutation::AddFile(k)
            | Mutation::DeleteFile(k)
            | Mutation::NewTarget(k) => Some(k),
            Mutation::BzlEdit | Mutation::PartialBzlEdit => None,
        }
    }
}

impl fmt::Display for Mutation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.count() {
            Some(k) => write!(f, "{}:{k}", self.kind()),
            None => f.write_str(self.kind()),
        }
    }
}

impl Serialize for Mutation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl FromStr for Mutation {
    type Err = BenchError;

    /// `kind[:K]`, K defaulting to 1; `bzl-edit` takes no count.
    fn from_str(spec: &str) -> Result<Self> {
        let err = |reason: &str| BenchError::InvalidMutation {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let (kind, count) = match spec.split_once(':') {
            Some((k, n)) => {
                let n: usize = n
                    .parse()
                    .map_err(|_| err("the count after `:` must be a non-negative integer"))?;
                (k, Some(n))
            }
            None => (spec, None),
        };
        let k = count.unwrap_or(1);
        Ok(match kind {
            "content" => Mutation::Content(k),
            "build-edit" => Mutation::BuildEdit(k),
            "add-file" => Mutation::AddFile(k),
            "delete-file" => Mutation::DeleteFile(k),
            "new-target" => Mutation::NewTarget(k),
            "bzl-edit" if count.is_none() => Mutation::BzlEdit,
            "partial-bzl-edit" if count.is_none() => Mutation::PartialBzlEdit,
            "bzl-edit" | "partial-bzl-edit" => return Err(err("a .bzl edit takes no count")),
            _ => {
                return Err(err(
                    "unknown kind; expected content, build-edit, add-file, delete-file, new-target, bzl-edit or partial-bzl-edit",
                ))
            }
        })
    }
}

/// What a mutation touched, as workspace-relative paths (sorted).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct MutationReport {
    pub mutation: String,
    pub modified: Vec<String>,
    pub added: Vec<String>,
    pub deleted: Vec<String>,
}

/// A package of the generated tree, e.g. `l03/p0012` in layer 3.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Package {
    pub layer: usize,
    pub rel: String,
}

/// The generated packages under `dir`, in layer/package order.
pub fn list_packages(dir: &Path) -> Result<Vec<Package>> {
    let mut out = Vec::new();
    for (lname, lpath) in sorted_dirs(dir)? {
        let Some(layer) = lname
            .strip_prefix('l')
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        for (pname, ppath) in sorted_dirs(&lpath)? {
            if pname.starts_with('p') && ppath.join("BUILD").is_file() {
                out.push(Package {
                    layer,
                    rel: format!("{lname}/{pname}"),
                });
            }
        }
    }
    if out.is_empty() {
        return Err(BenchError::NotAWorkspace {
            dir: dir.to_path_buf(),
            reason: "no lNN/pNNNN/BUILD packages".into(),
        });
    }
    Ok(out)
}

fn sorted_dirs(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
        let e = e.map_err(io_err("read directory", dir))?;
        let ft = e.file_type().map_err(io_err("stat", e.path()))?;
        if ft.is_dir() {
            if let Ok(name) = e.file_name().into_string() {
                v.push((name, e.path()));
            }
        }
    }
    v.sort();
    Ok(v)
}

/// The `.txt` sources of a package, sorted by name.
fn txt_sources(dir: &Path, pkg: &Package) -> Result<Vec<String>> {
    let pdir = dir.join(&pkg.rel);
    let mut v = Vec::new();
    for e in fs::read_dir(&pdir).map_err(io_err("read directory", &pdir))? {
        let e = e.map_err(io_err("read directory", &pdir))?;
        if let Ok(name) = e.file_name().into_string() {
            if name.ends_with(".txt") {
                v.push(name);
            }
        }
    }
    v.sort();
    Ok(v)
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(io_err("read", path))
}

fn write(path: &Path, s: &str) -> Result<()> {
    fs::write(path, s).map_err(io_err("write", path))
}

/// Layers whose sources `content` edits: the lowest tenth (at least one), so the impacted cone
/// crosses most of the depth without being the whole graph.
fn low_layer_limit(pkgs: &[Package]) -> usize {
    let layers = pkgs.iter().map(|p| p.layer).max().unwrap_or(0) + 1;
    layers.div_ceil(10).max(1)
}

/// Picks up to `k` distinct `(package, source)` pairs from `pkgs`, trying random packages.
fn pick_sources(
    dir: &Path,
    pkgs: &[&Package],
    k: usize,
    rng: &mut Rng,
) -> Result<Vec<(Package, String)>> {
    let mut picked: BTreeSet<(usize, String)> = BTreeSet::new();
    let mut out = Vec::new();
    let mut attempts = 0;
    while out.len() < k && attempts < k * 20 + 100 && !pkgs.is_empty() {
        attempts += 1;
        let pi = rng.below(pkgs.len());
        let srcs = txt_sources(dir, pkgs[pi])?;
        if srcs.is_empty() {
            continue;
        }
        let s = srcs[rng.below(srcs.len())].clone();
        if picked.insert((pi, s.clone())) {
            out.push((pkgs[pi].clone(), s));
        }
    }
    Ok(out)
}

/// The macro file [`add_partial_bzl`] adds; `partial-bzl-edit` bumps its `partial-vN` marker.
const PARTIAL_BZL: &str = r#""""A macro only some packages load (the partial-bzl-edit mutation)."""

def partial_genrule(name, srcs = []):
    native.genrule(
        name = name,
        srcs = srcs,
        outs = [name + ".partial"],
        cmd = "(echo partial-v1; cat $(SRCS)) > $@",
    )
"#;

/// Makes one package in `every` load `tools/partial.bzl` and call its macro (the workspace
/// shape the `partial-bzl-edit` mutation needs); returns how many packages load it.
pub fn add_partial_bzl(dir: &Path, every: usize) -> Result<usize> {
    write(&dir.join("tools/partial.bzl"), PARTIAL_BZL)?;
    let mut loaders = 0;
    for pkg in list_packages(dir)?.iter().step_by(every.max(1)) {
        let path = dir.join(&pkg.rel).join("BUILD");
        let text = read(&path)?;
        // `load` must precede every other statement.
        write(
            &path,
            &format!(
                "load(\"//tools:partial.bzl\", \"partial_genrule\")\n{text}\npartial_genrule(name = \"partial\", srcs = [\":srcs\"])\n"
            ),
        )?;
        loaders += 1;
    }
    Ok(loaders)
}

/// Replaces the number after the first `marker` in the file at `rel` with its successor.
fn bump_marker(dir: &Path, rel: &str, marker: &str) -> Result<()> {
    let path = dir.join(rel);
    let text = read(&path)?;
    let Some(at) = text.find(marker) else {
        return Err(BenchError::NotAWorkspace {
            dir: dir.into(),
            reason: format!("no {marker}N marker in {rel}"),
        });
    };
    let digits_start = at + marker.len();
    let digits_len = text[digits_start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .count();
    let n: u64 = text[digits_start..digits_start + digits_len]
        .parse()
        .unwrap_or(0);
    let new = format!(
        "{}{}{}",
        &text[..digits_start],
        n + 1,
        &text[digits_start + digits_len..]
    );
    write(&path, &new)
}

/// Applies `m` to the workspace at `dir`. Never touches `.git`; the caller commits.
pub fn apply_mutation(dir: &Path, m: &Mutation, rng: &mut Rng) -> Result<MutationReport> {
    let mut rep = MutationReport {
        mutation: m.to_string(),
        ..Default::default()
    };
    match *m {
        Mutation::BzlEdit => {
            bump_marker(dir, "tools/defs.bzl", "bench-v")?;
            rep.modified.push("tools/defs.bzl".into());
        }
        Mutation::PartialBzlEdit => {
            bump_marker(dir, "tools/partial.bzl", "partial-v")?;
            rep.modified.push("tools/partial.bzl".into());
        }
        Mutation::Content(k) => {
            let pkgs = list_packages(dir)?;
            let limit = low_layer_limit(&pkgs);
            let low: Vec<&Package> = pkgs.iter().filter(|p| p.layer < limit).collect();
            let mut picks = pick_sources(dir, &low, k, rng)?;
            if picks.len() < k {
                // Not enough sources down low: widen to the whole tree.
                let all: Vec<&Package> = pkgs.iter().collect();
                for p in pick_sources(dir, &all, k * 2, rng)? {
                    if picks.len() < k && !picks.contains(&p) {
                        picks.push(p);
                    }
                }
            }
            for (pkg, src) in picks {
                let rel = format!("{}/{src}", pkg.rel);
                let path = dir.join(&rel);
                let mut text = read(&path)?;
                text.push_str(&format!("edit {}\n", rng.token()));
                write(&path, &text)?;
                rep.modified.push(rel);
            }
        }
        Mutation::DeleteFile(k) => {
            let pkgs = list_packages(dir)?;
            let all: Vec<&Package> = pkgs.iter().collect();
            for (pkg, src) in pick_sources(dir, &all, k, rng)? {
                let rel = format!("{}/{src}", pkg.rel);
                fs::remove_file(dir.join(&rel)).map_err(io_err("delete", dir.join(&rel)))?;
                rep.deleted.push(rel);
                // Explicit references must go too, or the package would name a missing input.
                let build_rel = format!("{}/BUILD", pkg.rel);
                let build = dir.join(&build_rel);
                let text = read(&build)?;
                let needle = format!("\"{src}\",");
                if text.lines().any(|l| l.trim() == needle) {
                    let kept: String = text
                        .lines()
                        .filter(|l| l.trim() != needle)
                        .map(|l| format!("{l}\n"))
                        .collect();
                    write(&build, &kept)?;
                    rep.modified.push(build_rel);
                }
            }
        }
        Mutation::AddFile(k) => {
            let pkgs = list_packages(dir)?;
            for pi in rng.sample_distinct(pkgs.len(), k) {
                let pkg = &pkgs[pi];
                let (name, path) = loop {
                    let name = format!("added_{}.txt", rng.token());
                    let path = dir.join(&pkg.rel).join(&name);
                    if !path.exists() {
                        break (name, path);
                    }
                };
                write(
                    &path,
                    &format!("{} added {name}\n{}\n", pkg.rel, rng.token()),
                )?;
                rep.added.push(format!("{}/{name}", pkg.rel));
            }
        }
        Mutation::BuildEdit(k) => {
            let pkgs = list_packages(dir)?;
            for pi in rng.sample_distinct(pkgs.len(), k) {
                let rel = format!("{}/BUILD", pkgs[pi].rel);
                let path = dir.join(&rel);
                let text = read(&path)?;
                let tag_lines: Vec<usize> = text
                    .lines()
                    .enumerate()
                    .filter(|(_, l)| l.starts_with("    tags = ["))
                    .map(|(i, _)| i)
                    .collect();
                if tag_lines.is_empty() {
                    continue;
                }
                let target = tag_lines[rng.below(tag_lines.len())];
                let token = rng.token();
                let new: String = text
                    .lines()
                    .enumerate()
                    .map(|(i, l)| {
                        if i == target {
                            format!(
                                "    tags = [\"edit-{token}\", {}\n",
                                &l["    tags = [".len()..]
                            )
                        } else {
                            format!("{l}\n")
                        }
                    })
                    .collect();
                write(&path, &new)?;
                rep.modified.push(rel);
            }
        }
        Mutation::NewTarget(k) => {
            let pkgs = list_packages(dir)?;
            for pi in rng.sample_distinct(pkgs.len(), k) {
                let rel = format!("{}/BUILD", pkgs[pi].rel);
                let path = dir.join(&rel);
                let mut text = read(&path)?;
                let rules: Vec<&str> = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("    name = \"")?.strip_suffix("\","))
                    .filter(|n| *n != "srcs")
                    .collect();
                let mut srcs = vec![":srcs".to_string()];
                if !rules.is_empty() {
                    srcs.push(format!(":{}.out", rules[rng.below(rules.len())]));
                }
                let name = loop {
                    let n = format!("new_{}", rng.token());
                    if !rules.contains(&n.as_str()) {
                        break n;
                    }
                };
                render_rule(&mut text, &name, &srcs);
                write(&path, &text)?;
                rep.modified.push(rel);
            }
        }
    }
    rep.modified.sort();
    rep.modified.dedup();
    rep.added.sort();
    rep.deleted.sort();
    Ok(rep)
}
