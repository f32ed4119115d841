//! Incremental `generate-hashes` (issue 6): from a stored [`GraphState`] and the list of paths
//! changed since, take the cheapest path that is still exact, and say which on stderr:
//!
//! * **graph-stable**: only contents of existing source-file targets changed; no Bazel at all.
//! * **package-local**: BUILD files, `.bzl` files or the set of files changed; only the
//!   packages that can see the change are re-queried (on the warm server) and spliced into the
//!   stored graph, then the graph pass runs as in a cold run.
//! * anything else: the full query (the caller runs it).

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use bazel_diff_bazel::QueryOutput;
use bazel_diff_hash::{package_of_label, GraphBuilder, GraphState, HashedTarget, Refusal};

use crate::generate::{read_lines, stream_query, GenerateSettings, QueryFailure};
use crate::progress::Progress;

/// The hashes and, when asked for, the updated graph state; `Err(reason)` asks the caller
/// for the full query.
pub type Attempt = std::result::Result<(Vec<HashedTarget>, Option<GraphState>), String>;

/// A `.bzl` file loaded by more than this share of all packages is cheaper to handle with
/// the full query (re-querying most of the workspace piecemeal buys nothing).
const MAX_LOADER_SHARE: f64 = 0.25;

/// What a changed path is, for choosing the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathKind {
    /// `BUILD` / `BUILD.bazel`: its package (and the one it splits from or merges into).
    Build,
    /// `.bzl` / `.scl`: the packages that load it, and `//external`.
    Starlark,
    /// Anything changing the graph outside any package: the full query.
    Config(&'static str),
    /// Any other file: rehashed, or its package re-queried when the set of files changed.
    Plain,
}

fn classify(path: &str) -> PathKind {
    let name = path.rsplit('/').next().unwrap_or(path);
    if matches!(name, "BUILD" | "BUILD.bazel") {
        return PathKind::Build;
    }
    if name.ends_with(".bzl") || name.ends_with(".scl") {
        return PathKind::Starlark;
    }
    if name == "REPO.bazel"
        || name.starts_with("WORKSPACE")
        || name.starts_with("MODULE")
        || name.starts_with(".bazelrc")
        || name.ends_with(".bazelrc")
        || matches!(name, ".bazelignore" | ".bazelversion" | ".bazeliskrc")
        || path == "tools/bazel"
    {
        return PathKind::Config("a workspace configuration file");
    }
    // Files repository rules and module extensions commonly read: a content change can
    // change external repositories (and their synthetic //external targets).
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".lock")
        || lower.starts_with("requirements")
        || lower.ends_with("_install.json")
        || matches!(
            lower.as_str(),
            "go.mod"
                | "go.sum"
                | "go.work"
                | "package.json"
                | "package-lock.json"
                | "pnpm-lock.yaml"
                | "yarn.lock"
                | "cargo.toml"
                | "pyproject.toml"
                | "gemfile"
                | "pom.xml"
        )
    {
        return PathKind::Config(
            "a dependency manifest or lock file that repository rules may read",
        );
    }
    PathKind::Plain
}

/// Tries the incremental paths; `Ok(Err(reason))` when the full query is needed.
pub fn try_incremental(
    settings: &GenerateSettings,
    state_path: &Path,
    changed_path: &Path,
    want_state: bool,
) -> Result<Attempt> {
    let started = Instant::now();
    let mut changed: Vec<String> = read_lines(changed_path, "changed path list")?
        .into_iter()
        .map(|l| l.trim().trim_start_matches("./").to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    changed.sort();
    changed.dedup();
    if let Some((path, why)) = changed.iter().find_map(|p| match classify(p) {
        PathKind::Config(why) => Some((p, why)),
        _ => None,
    }) {
        return Ok(Err(format!("{path} is {why}")));
    }
    let mut state = match GraphState::read_from(state_path) {
        Ok(state) => state,
        Err(e) => return Ok(Err(format!("cannot use {}: {e}", state_path.display()))),
    };
    let loaded = started.elapsed();
    let config = &settings.hash_config;
    if state.config_digest != settings.graph_config_digest
        || state.seed != config.seed
        || state.track_deps != config.track_deps
        || state.use_cquery != config.use_cquery
    {
        return Ok(Err(
            "the state was written with different settings (seed, flags or options)".into(),
        ));
    }
    let why_not_stable = if changed.iter().all(|p| classify(p) == PathKind::Plain) {
        match state.resolve_changed(config, &changed) {
            Ok(indices) => {
                let hashed = state.update_sources(config, &indices)?;
                eprintln!(
                    "bazel-diff: incremental: graph-stable path, no Bazel query: {} changed path(s), {} source target(s) rehashed, {} targets (state loaded in {:.1?}, total {:.1?})",
                    changed.len(),
                    indices.len(),
                    hashed.len(),
                    loaded,
                    started.elapsed()
                );
                return Ok(Ok((hashed, Some(state))));
            }
            Err(refusal @ (Refusal::AlwaysAffected | Refusal::RepositoryInput(_))) => {
                return Ok(Err(refusal.to_string()))
            }
            Err(refusal) => refusal.to_string(),
        }
    } else {
        "BUILD or Starlark files changed".to_owned()
    };
    let plan = match plan(settings, &state, &changed) {
        Ok(plan) => plan,
        Err(reason) => return Ok(Err(reason)),
    };
    tracing::debug!("package-local plan: {plan:?}");
    package_local(
        settings,
        &state,
        plan,
        &why_not_stable,
        want_state,
        loaded,
        started,
    )
}

/// The packages a package-local update re-queries and replaces.
#[derive(Debug, Default)]
struct Plan {
    /// Packages (`//a/b`, `//` for the root) whose stored targets are dropped.
    drop: BTreeSet<String>,
    /// Those of them that exist in the new tree: re-queried.
    query: BTreeSet<String>,
    /// `//external` is re-queried too (a `.bzl` file changed: WORKSPACE may load it).
    external: bool,
    /// Source files (workspace paths) whose contents changed in packages that are kept.
    rehash: HashSet<String>,
}

fn package_label(dir: &str) -> String {
    format!("//{dir}")
}

fn parent_dir(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// `dir` and its ancestors up to the workspace root (`""`).
fn ancestors(dir: &str) -> impl Iterator<Item = &str> {
    let mut next = Some(dir);
    std::iter::from_fn(move || {
        let current = next?;
        next = (!current.is_empty()).then(|| parent_dir(current));
        Some(current)
    })
}

/// Decides which packages to re-query; `Err(reason)` when only the full query is exact.
fn plan(
    settings: &GenerateSettings,
    state: &GraphState,
    changed: &[String],
) -> std::result::Result<Plan, String> {
    let flags = &settings.flags;
    if flags.use_cquery {
        return Err("cquery mode queries deps(), which package-local updates do not model".into());
    }
    if flags.keep_going {
        return Err("--keep_going can drop targets of broken packages".into());
    }
    if !settings.fine_grained_repos.is_empty() {
        return Err("fine-grained external repositories are queried".into());
    }
    if settings
        .exclude_targets_query
        .as_deref()
        .is_some_and(|q| !q.trim().is_empty())
    {
        return Err("--excludeTargetsQuery can depend on any package".into());
    }
    if state.has_always_affected() {
        return Err(Refusal::AlwaysAffected.to_string());
    }
    let ws = &settings.hash_config.workspace;
    let ignored = bazelignore(ws)?;
    let repository_inputs = state.repository_input_paths();
    let old_packages = state.packages();
    let source_paths = state.source_paths();
    let exists = |rel: &str| -> std::result::Result<bool, String> {
        match std::fs::symlink_metadata(ws.join(rel)) {
            Ok(m) if m.file_type().is_symlink() => Err(format!("{rel} is a symbolic link")),
            Ok(m) if m.is_dir() => Err(format!("{rel} is a directory")),
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(format!("cannot inspect {rel}: {e}")),
        }
    };
    let is_package_now = |dir: &str| {
        ["BUILD.bazel", "BUILD"]
            .iter()
            .any(|b| ws.join(dir).join(b).is_file())
    };
    let mut plan = Plan::default();
    let owners = |dir: &str, plan: &mut Plan| -> std::result::Result<(), String> {
        let old = ancestors(dir).find(|d| old_packages.contains(package_label(d).as_str()));
        let new = ancestors(dir).find(|d| is_package_now(d));
        for d in old.into_iter().chain(new) {
            if d == "external" || d.starts_with("external/") {
                return Err(format!("//{d} would be the //external package"));
            }
            plan.drop.insert(package_label(d));
        }
        Ok(())
    };
    for path in changed {
        if path.starts_with('/')
            || path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(format!("{path:?} is not a plain workspace-relative path"));
        }
        if let Some(dir) = ignored
            .iter()
            .find(|d| path == *d || path.starts_with(&format!("{d}/")))
        {
            return Err(format!("{path} is under {dir}, listed in .bazelignore"));
        }
        if repository_inputs.contains(path) {
            return Err(Refusal::RepositoryInput(path.clone()).to_string());
        }
        // Nested repositories and symlinked directories change what `//...` sees.
        let dir = parent_dir(path);
        for d in ancestors(dir).filter(|d| !d.is_empty()) {
            if std::fs::symlink_metadata(ws.join(d)).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(format!("{d} is a symbolic link"));
            }
            for marker in ["WORKSPACE", "WORKSPACE.bazel", "MODULE.bazel", "REPO.bazel"] {
                if ws.join(d).join(marker).exists() {
                    return Err(format!(
                        "{path} is inside a nested repository ({d}/{marker})"
                    ));
                }
            }
        }
        let present = exists(path)?;
        match classify(path) {
            PathKind::Build => owners(dir, &mut plan)?,
            PathKind::Starlark => {
                let loaders = state.loaders_of(path);
                if loaders.len() as f64 > MAX_LOADER_SHARE * old_packages.len() as f64 {
                    return Err(format!(
                        "{path} is loaded by {} of {} packages",
                        loaders.len(),
                        old_packages.len()
                    ));
                }
                plan.drop.extend(loaders.into_iter().map(str::to_owned));
                plan.external = true;
                if present && source_paths.contains(path) {
                    plan.rehash.insert(path.clone());
                } else {
                    owners(dir, &mut plan)?;
                }
            }
            PathKind::Plain if present && source_paths.contains(path) => {
                plan.rehash.insert(path.clone());
            }
            // Added, deleted or not a target: globs may change, so its package is re-queried.
            PathKind::Plain => owners(dir, &mut plan)?,
            PathKind::Config(why) => return Err(format!("{path} is {why}")),
        }
    }
    plan.query = plan
        .drop
        .iter()
        .filter(|p| is_package_now(p.trim_start_matches("//")))
        .cloned()
        .collect();
    if let Some(p) = plan.query.iter().find(|p| p.contains('\'')) {
        return Err(format!("package {p} cannot be quoted in a query"));
    }
    Ok(plan)
}

/// The directories `.bazelignore` lists (Bazel skips them in `//...`).
fn bazelignore(ws: &Path) -> std::result::Result<Vec<String>, String> {
    let path = ws.join(".bazelignore");
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(text
            .lines()
            .map(|l| l.trim().trim_end_matches('/'))
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Re-queries the planned packages and splices them into the stored graph.
fn package_local(
    settings: &GenerateSettings,
    state: &GraphState,
    plan: Plan,
    why_not_stable: &str,
    want_state: bool,
    loaded: std::time::Duration,
    started: Instant,
) -> Result<Attempt> {
    let external = plan.external && !settings.flags.exclude_external_targets;
    let mut terms: Vec<String> = Vec::new();
    if external {
        terms.push("'//external:all-targets'".into());
    }
    terms.extend(plan.query.iter().map(|p| format!("'{p}:all-targets'")));
    let mut builder = GraphBuilder::new(settings.hash_config.clone());
    let query_started = Instant::now();
    if !terms.is_empty() {
        let progress = Progress::counter("querying affected packages", "targets");
        let streamed = stream_query(
            settings,
            &QueryOutput::streamed_query(),
            &terms.join(" + "),
            &settings.command_options,
            &mut builder,
            None,
            &progress,
        );
        progress.finish();
        if let Err(failure) = streamed {
            let reason = match failure {
                QueryFailure::Bazel(e) => format!("the package query failed: {e}"),
                QueryFailure::Decode(e) => format!("the package query failed: {e:#}"),
            };
            return Ok(Err(reason));
        }
    }
    let queried = query_started.elapsed();
    tracing::debug!("package query done");
    let mut drop: HashSet<&str> = plan.drop.iter().map(String::as_str).collect();
    if external {
        drop.insert("//external");
    }
    let (hashed, mut new_state) = builder.finish_spliced(
        state,
        |label| !drop.contains(package_of_label(label)),
        &plan.rehash,
        want_state,
    )?;
    if let Some(new_state) = &mut new_state {
        new_state.config_digest = settings.graph_config_digest;
    }
    let mut shown: Vec<&str> = plan.query.iter().take(5).map(String::as_str).collect();
    if plan.query.len() > shown.len() {
        shown.push("...");
    }
    eprintln!(
        "bazel-diff: incremental: package-local path, {} package(s) re-queried{} [{}], {} dropped, {} source(s) rehashed, {} targets; not graph-stable: {why_not_stable} (state loaded in {loaded:.1?}, query {queried:.1?}, total {:.1?})",
        plan.query.len(),
        if external { " + //external" } else { "" },
        shown.join(" "),
        plan.drop.len() - plan.query.len(),
        plan.rehash.len(),
        hashed.len(),
        started.elapsed()
    );
    Ok(Ok((hashed, new_state)))
}

/// `--incremental-verify`: fails naming the first target whose entry differs.
pub fn verify(incremental: &[HashedTarget], full: &[HashedTarget]) -> Result<()> {
    let (mut a, mut b) = (incremental.iter().peekable(), full.iter().peekable());
    loop {
        let (x, y) = match (a.peek(), b.peek()) {
            (None, None) => return Ok(()),
            (Some(x), None) => bail!(
                "incremental verify failed: {} is only in the incremental result",
                x.label
            ),
            (None, Some(y)) => bail!(
                "incremental verify failed: {} is only in the full query's result",
                y.label
            ),
            (Some(x), Some(y)) => (*x, *y),
        };
        match x.label.cmp(&y.label) {
            std::cmp::Ordering::Less => bail!(
                "incremental verify failed: {} is only in the incremental result",
                x.label
            ),
            std::cmp::Ordering::Greater => bail!(
                "incremental verify failed: {} is only in the full query's result",
                y.label
            ),
            std::cmp::Ordering::Equal if x != y => bail!(
                "incremental verify failed: {} differs: incremental {} {}~{} deps {:?}, full query {} {}~{} deps {:?}",
                x.label,
                x.kind.as_str(),
                hex::encode(x.overall),
                hex::encode(x.direct),
                x.deps,
                y.kind.as_str(),
                hex::encode(y.overall),
                hex::encode(y.direct),
                y.deps
            ),
            std::cmp::Ordering::Equal => {}
        }
        a.next();
        b.next();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_shaping_files_are_never_graph_stable() {
        for path in [
            "REPO.bazel",
            "WORKSPACE",
            "WORKSPACE.bzlmod",
            "MODULE.bazel",
            "MODULE.bazel.lock",
            ".bazelrc",
            ".bazelrc.user",
            "tools/ci.bazelrc",
            ".bazelignore",
            ".bazelversion",
            "tools/bazel",
            "third_party/requirements_lock.txt",
            "go.sum",
            "web/pnpm-lock.yaml",
            "Cargo.lock",
            "maven_install.json",
        ] {
            assert!(matches!(classify(path), PathKind::Config(_)), "{path}");
        }
        for path in ["BUILD", "a/b/BUILD.bazel"] {
            assert_eq!(classify(path), PathKind::Build, "{path}");
        }
        for path in ["tools/defs.bzl", "x/consts.scl"] {
            assert_eq!(classify(path), PathKind::Starlark, "{path}");
        }
        for path in [
            "src/main.rs",
            "docs/BUILD.md",
            "a/builder.txt",
            "lib/data/a.txt",
        ] {
            assert_eq!(classify(path), PathKind::Plain, "{path}");
        }
    }

    #[test]
    fn ancestors_end_at_the_root() {
        assert_eq!(
            ancestors("a/b/c").collect::<Vec<_>>(),
            ["a/b/c", "a/b", "a", ""]
        );
        assert_eq!(ancestors("").collect::<Vec<_>>(), [""]);
        assert_eq!(package_label(""), "//");
        assert_eq!(package_label("a/b"), "//a/b");
    }
}
