//! The Bzlmod module-change path (spec 6.3): when the module graphs stored in the two hashes
//! files differ, find the repos of changed modules and ask Bazel which workspace targets
//! depend on them.

use std::collections::BTreeSet;
use std::fmt::Display;

use bazel_diff_format::HashFile;
use rustc_hash::FxHashMap;
use serde_json::Value;
use tracing::{error, info, warn};

/// Runs the reverse-dependency query of the module-change path.
///
/// Implementations run `bazel query` (spec 3.12: plain query mode, no `-co` options,
/// keep_going off) for [`rdeps_expression`]`(repos)` and return the labels of the result.
/// It is called at most once per run, and only when a module change matched a repo, so an
/// implementation can start Bazel lazily.
pub trait RdepsQuery {
    type Error: Display;
    fn rdeps(&self, repos: &[String]) -> Result<Vec<String>, Self::Error>;
}

impl<F, E> RdepsQuery for F
where
    F: Fn(&[String]) -> Result<Vec<String>, E>,
    E: Display,
{
    type Error = E;
    fn rdeps(&self, repos: &[String]) -> Result<Vec<String>, E> {
        self(repos)
    }
}

/// The query expression for `repos` (canonical names, without `@@`):
/// `rdeps(//..., @@a//... + @@b//...)`.
pub fn rdeps_expression(repos: &[String]) -> String {
    let universe: Vec<String> = repos.iter().map(|repo| format!("@@{repo}//...")).collect();
    format!("rdeps(//..., {})", universe.join(" + "))
}

/// Result of the module-change path, when it is taken.
pub(crate) struct ModuleImpact {
    /// Labels impacted through changed modules (rdeps result, or its fallback); empty when no
    /// changed module matched a repo. The simple diff comes on top in every case.
    pub(crate) labels: Vec<String>,
}

/// Applies steps 1-5 of spec 6.3. `None` means the path is not taken: a side has no module
/// graph, the graphs are equal, a side failed to parse, or no module changed.
pub(crate) fn module_impact<Q: RdepsQuery + ?Sized>(
    from: &HashFile,
    to: &HashFile,
    query: &Q,
) -> Option<ModuleImpact> {
    let (Some(from_json), Some(to_json)) = (&from.module_graph_json, &to.module_graph_json) else {
        return None;
    };
    if from_json == to_json {
        return None;
    }
    let from_graph = parse_module_graph(from_json);
    let to_graph = parse_module_graph(to_json);
    if from_graph.is_empty() != to_graph.is_empty() {
        // An empty parse means a broken graph (Bazel always lists the root module); treating
        // every module as added would report everything (#335).
        warn!(
            "Module graph parse asymmetry detected (one side parsed to {} modules, the other to {}). \
             Falling back to per-target hash diff. See https://github.com/Tinder/bazel-diff/issues/335",
            from_graph.len(),
            to_graph.len()
        );
        return None;
    }
    let changed = changed_module_names(&from_graph, &to_graph);
    if changed.is_empty() {
        info!("No module changes detected");
        return None;
    }
    info!(
        "Module changes detected ({}) - querying for targets that depend on changed modules",
        changed
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    );

    let repos = matching_repos(&changed, to);
    if repos.is_empty() {
        info!("No external repositories matched any changed module");
        return Some(ModuleImpact { labels: Vec::new() });
    }
    info!(
        "Querying rdeps for {} repositories across {} changed modules",
        repos.len(),
        changed.len()
    );
    let labels = match query.rdeps(&repos) {
        Ok(labels) => labels
            .into_iter()
            .filter(|l| !l.starts_with("@@"))
            .collect(),
        Err(e) => {
            error!(
                "Unioned rdeps query failed - falling back to buildable workspace targets \
                 (or every hashed label on bzlmod-only shapes): {e}"
            );
            fallback_labels(to)
        }
    };
    info!(
        "Found {} workspace targets depending on changed modules",
        labels.len()
    );
    Some(ModuleImpact { labels })
}

/// The parts of a `bazel mod graph` node that matter here.
#[derive(Debug, PartialEq, Eq)]
struct Module {
    name: String,
    version: String,
}

/// Parses `bazel mod graph --output=json` into module key to module. A non-JSON prefix is
/// tolerated (bazel-diff 17.0.1..18.0.5 stored leaked stderr in front of the JSON); anything
/// else unparseable gives an empty map.
fn parse_module_graph(json: &str) -> FxHashMap<String, Module> {
    let parse_object = |text: &str| match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(root)) => Some(root),
        _ => None,
    };
    let root = parse_object(json).or_else(|| json.find('{').and_then(|i| parse_object(&json[i..])));
    let mut modules = FxHashMap::default();
    if let Some(root) = root {
        collect_modules(&root, &mut modules);
    }
    modules
}

/// Records `node` if it is a module (string `key`, `version`, `apparentName` and non-empty
/// `name`) and recurses into its `dependencies`. Depth is bounded by serde_json's recursion
/// limit, so plain recursion is safe.
fn collect_modules(node: &serde_json::Map<String, Value>, modules: &mut FxHashMap<String, Module>) {
    let field = |name: &str| node.get(name).and_then(Value::as_str);
    if let (Some(key), Some(name), Some(version), Some(_apparent_name)) = (
        field("key"),
        field("name"),
        field("version"),
        field("apparentName"),
    ) {
        if !name.is_empty() {
            let module = Module {
                name: name.to_owned(),
                version: version.to_owned(),
            };
            modules.insert(key.to_owned(), module);
        }
    }
    if let Some(Value::Array(deps)) = node.get("dependencies") {
        for dep in deps {
            if let Value::Object(dep) = dep {
                collect_modules(dep, modules);
            }
        }
    }
}

/// Names of modules whose key was added, removed, or kept with another version; each key
/// resolves against the final graph first, else the starting graph.
fn changed_module_names(
    from: &FxHashMap<String, Module>,
    to: &FxHashMap<String, Module>,
) -> BTreeSet<String> {
    let added_or_bumped = to
        .iter()
        .filter(|(key, module)| {
            from.get(*key)
                .is_none_or(|old| old.version != module.version)
        })
        .map(|(_, module)| module);
    let removed = from
        .iter()
        .filter(|(key, _)| !to.contains_key(*key))
        .map(|(_, module)| module);
    added_or_bumped
        .chain(removed)
        .map(|module| module.name.clone())
        .collect()
}

/// Canonical repos (from final-map labels `@@<repo>//...`) that are the base repo of a
/// changed module, sorted so the query is deterministic.
fn matching_repos(module_names: &BTreeSet<String>, to: &HashFile) -> Vec<String> {
    let candidates: BTreeSet<&str> = to
        .hashes
        .keys()
        .filter_map(|label| label.strip_prefix("@@"))
        .map(|rest| rest.split_once("//").map_or(rest, |(repo, _)| repo))
        .filter(|repo| !repo.is_empty())
        .collect();
    candidates
        .into_iter()
        .filter(|repo| {
            module_names
                .iter()
                .any(|module| is_base_repo_of(repo, module))
        })
        .map(str::to_owned)
        .collect()
}

/// True if `repo` is `<module>+<version>` or `<module>~<version>` with no further separator,
/// i.e. the module's own repo and not one of its extension repos (#335). Module names cannot
/// contain `+` or `~`, so the split is unambiguous.
fn is_base_repo_of(repo: &str, module: &str) -> bool {
    let Some(rest) = repo.strip_prefix(module) else {
        return false;
    };
    let mut chars = rest.chars();
    matches!(chars.next(), Some('+' | '~')) && !chars.as_str().contains(['+', '~'])
}

/// Used when the rdeps query fails: every workspace label of the final map, or every label
/// when there is none (a Bzlmod-only shape).
fn fallback_labels(to: &HashFile) -> Vec<String> {
    let workspace: Vec<String> = to
        .hashes
        .keys()
        .filter(|l| !l.starts_with("@@") && !l.starts_with("//external:"))
        .map(str::to_owned)
        .collect();
    if workspace.is_empty() {
        to.hashes.keys().map(str::to_owned).collect()
    } else {
        workspace
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_repo_matching() {
        assert!(is_base_repo_of("abseil-cpp~20240722.0", "abseil-cpp"));
        assert!(is_base_repo_of("rules_go+", "rules_go"));
        assert!(is_base_repo_of("rules_go+0.50.1", "rules_go"));
        assert!(!is_base_repo_of("rules_go", "rules_go"));
        assert!(!is_base_repo_of("rules_go+go_sdk+x", "rules_go"));
        assert!(!is_base_repo_of("rules_go~~go_sdk", "rules_go"));
        assert!(!is_base_repo_of("rules_go_x+1", "rules_go"));
        assert!(!is_base_repo_of("rules", "rules_go"));
    }

    #[test]
    fn module_graph_parsing() {
        let graph = parse_module_graph(
            r#"{"key": "<root>", "name": "root", "version": "", "apparentName": "root",
                "dependencies": [
                  {"key": "a@1", "name": "a", "version": "1", "apparentName": "a",
                   "dependencies": [{"key": "b@2", "name": "b", "version": "2", "apparentName": "b"}]},
                  {"key": "noname@1", "name": "", "version": "1", "apparentName": "x"},
                  {"key": "noapparent@1", "name": "n", "version": "1"},
                  {"key": 7, "name": "n", "version": "1", "apparentName": "x"},
                  "not an object"
                ]}"#,
        );
        let mut keys: Vec<&str> = graph.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["<root>", "a@1", "b@2"]);
        assert_eq!(graph["b@2"].version, "2");
    }

    #[test]
    fn module_graph_tolerates_prefix_and_rejects_garbage() {
        let json = r#"{"key": "r", "name": "r", "version": "", "apparentName": "r"}"#;
        assert_eq!(
            parse_module_graph(&format!("Starting server...\n{json}")).len(),
            1
        );
        assert!(parse_module_graph("garbage-non-json-payload").is_empty());
        assert!(parse_module_graph("[{\"key\": \"r\"}]").is_empty());
        assert!(parse_module_graph(&format!("{json} trailing")).is_empty());
    }

    #[test]
    fn expression_unions_repos() {
        assert_eq!(
            rdeps_expression(&["a+1".into(), "b~2".into()]),
            "rdeps(//..., @@a+1//... + @@b~2//...)"
        );
    }
}
