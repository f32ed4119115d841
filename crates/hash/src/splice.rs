//! The package-local update (issue 6): what a stored [`GraphState`] says about packages
//! (which exist, which load a `.bzl` file, which files repository rules read), and the
//! targets it keeps when some packages are re-queried
//! ([`crate::GraphBuilder::finish_spliced`] runs the graph pass over both).
//!
//! Query mode asks for `//external:all-targets + //...:all-targets` without `deps()`, so
//! the cold result is the union of every package's own targets: a package's targets depend
//! only on its BUILD file, the `.bzl` files it loads, the files of its directory outside
//! subpackages and the workspace configuration. Re-querying the packages a change can touch
//! and keeping every other package's targets is therefore the cold query's target set.

use rayon::prelude::*;
use rustc_hash::FxHashSet;

use crate::rule::PreparedRule;
use crate::source::SourceHasher;
use crate::state::{label_of, main_repo_key, soft_rel, GraphState};
use crate::{Digest, HashConfig, HashError};

/// The package part of a label (`//a/b` of `//a/b:c`, `//external` of `//external:x`).
pub fn package_of_label(label: &str) -> &str {
    label.split_once(':').map_or(label, |(pkg, _)| pkg)
}

/// Targets a splice keeps from the stored graph.
pub(crate) struct KeptParts {
    pub rules: Vec<PreparedRule>,
    /// `(label, raw digest, subincludes)`.
    pub sources: Vec<(String, Digest, Vec<String>)>,
    /// `(file, generating rule)`.
    pub generated: Vec<(String, String)>,
}

impl GraphState {
    /// The main-repository packages of the stored graph (`//` for the root package).
    pub fn packages(&self) -> FxHashSet<&str> {
        let labels = self
            .rules
            .iter()
            .map(|r| r.label)
            .chain(self.sources.iter().map(|s| s.label))
            .chain(self.generated.iter().map(|g| g.0));
        labels
            .map(|l| package_of_label(self.string(l)))
            .filter(|p| p.starts_with("//") && *p != "//external")
            .collect()
    }

    /// Packages whose BUILD file loads the workspace file `path` (directly or through other
    /// `.bzl` files: Bazel lists the transitive loads as the BUILD file's subincludes).
    pub fn loaders_of(&self, path: &str) -> FxHashSet<&str> {
        self.sources
            .iter()
            .filter(|s| {
                self.subincludes[s.sub_start as usize..(s.sub_start + s.sub_count) as usize]
                    .iter()
                    .any(|&l| main_repo_key(self.string(l)).as_deref() == Some(path))
            })
            .map(|s| package_of_label(self.string(s.label)))
            .collect()
    }

    /// Workspace paths that rules of `//external` take as inputs: a change there can change
    /// external repositories (and the `.bzl` files BUILD files load from them).
    pub fn repository_input_paths(&self) -> FxHashSet<String> {
        let mut out = FxHashSet::default();
        for rule in &self.rules {
            if !self.string(rule.label).starts_with("//external:") {
                continue;
            }
            for &(input, _) in self.rule_inputs(rule) {
                let label = label_of(self.string(input));
                out.extend(main_repo_key(label));
                out.extend(soft_rel(label));
            }
        }
        out
    }

    /// Whether any rule carries an always-affected tag (its per-run salt makes no two runs
    /// agree).
    pub fn has_always_affected(&self) -> bool {
        self.rules.iter().any(|r| r.always_affected)
    }

    /// Rebuilds the per-target inputs of the graph pass for every target `keep` accepts, as
    /// the cold run prepared them; sources whose file is one of the workspace paths in
    /// `rehash` get their raw digest read again.
    pub(crate) fn kept_parts(
        &self,
        config: &HashConfig,
        keep: impl Fn(&str) -> bool + Sync,
        rehash: &std::collections::HashSet<String>,
    ) -> Result<KeptParts, HashError> {
        let strings = |ids: &[u32]| -> Vec<String> {
            ids.iter().map(|&s| self.string(s).to_owned()).collect()
        };
        let rules = self
            .rules
            .par_iter()
            .filter(|r| keep(self.string(r.label)))
            .map(|r| {
                let added: FxHashSet<u32> = self.vis_added[r.vis_added.range()]
                    .iter()
                    .copied()
                    .collect();
                PreparedRule {
                    label: self.string(r.label).to_owned(),
                    attribute_digest: r.attribute,
                    // The inputs before visibility edges: the graph pass adds them again.
                    inputs: self
                        .rule_inputs(r)
                        .iter()
                        .filter(|(s, _)| !added.contains(s))
                        .map(|&(s, _)| self.string(s).to_owned())
                        .collect(),
                    bzl_paths: r.has_stack.then(|| strings(&self.bzl_paths[r.bzl.range()])),
                    always_affected: r.always_affected,
                    visibility: strings(&self.visibility[r.visibility.range()]),
                    is_package_group: r.package_group,
                }
            })
            .collect();
        let hasher = SourceHasher::new(config);
        let sources = self
            .sources
            .par_iter()
            .filter(|s| keep(self.string(s.label)))
            .map(|s| {
                let label = self.string(s.label).to_owned();
                let subincludes =
                    strings(&self.subincludes[s.sub_start as usize..][..s.sub_count as usize]);
                let raw = if main_repo_key(&label).is_some_and(|p| rehash.contains(&p)) {
                    hasher.raw_digest(&label, &subincludes)?
                } else {
                    s.raw
                };
                Ok((label, raw, subincludes))
            })
            .collect::<Result<_, HashError>>()?;
        let generated = self
            .generated
            .iter()
            .filter(|(file, _)| keep(self.string(*file)))
            .map(|&(file, rule)| {
                let rule_label = self.string(self.rules[rule as usize].label);
                (self.string(file).to_owned(), rule_label.to_owned())
            })
            .collect();
        Ok(KeptParts {
            rules,
            sources,
            generated,
        })
    }

    /// The workspace paths of the stored main-repository source targets.
    pub fn source_paths(&self) -> FxHashSet<String> {
        self.sources
            .iter()
            .filter_map(|s| main_repo_key(self.string(s.label)))
            .collect()
    }
}
