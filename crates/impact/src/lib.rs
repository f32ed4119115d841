//! The `get-impacted-targets` logic of bazel-diff (spec section 6), free of I/O.
//!
//! Given the starting and final hashes files it computes which labels are impacted: new
//! labels and labels whose hash changed ([`simple_diff`]); when the Bzlmod module graph
//! changed, also the reverse dependencies of the changed modules' repos, obtained through an
//! [`RdepsQuery`] the caller supplies (so this crate never starts Bazel, and the caller only
//! does when that path is taken). Results are filtered and ordered as upstream prints them;
//! writing them is [`bazel_diff_format`]'s job.

mod distance;
mod modules;

use bazel_diff_format::{
    cmp_utf16, DepEdges, HashFile, Hashes, ImpactedTarget, TargetType, TypeTag,
};
use rustc_hash::FxHashSet;
use tracing::warn;

pub use modules::{rdeps_expression, RdepsQuery};

/// Labels of this prefix are the `//external` package (WORKSPACE repos, synthetic Bzlmod
/// repo targets), which `--excludeExternalTargets` drops.
pub const EXTERNAL_PREFIX: &str = "//external:";

/// Output options of `get-impacted-targets` (spec 6.4).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutputFilter {
    /// `--targetType`: report only these types, as recorded in the final hashes. `None`
    /// reports every type.
    pub target_types: Option<Vec<TargetType>>,
    /// `--excludeExternalTargets`: drop labels starting with [`EXTERNAL_PREFIX`].
    pub exclude_external: bool,
}

/// Failures of the impact computation.
#[derive(Debug, thiserror::Error)]
pub enum ImpactError {
    /// `--targetType` was given but the final hashes carry no type for an impacted label.
    /// The message starts with upstream's.
    #[error(
        "No target type info found, please re-generate the target hashes JSON with \
         --includeTargetType! (no type for impacted label {label} in the final hashes)"
    )]
    NoTargetTypeInfo { label: String },
}

/// Labels present only in `to`, plus labels in both whose identity (type, overall and direct
/// digest) differs; unordered. Deleted labels are never impacted (spec 6.2).
pub fn simple_diff<'a>(from: &Hashes, to: &'a Hashes) -> Vec<&'a str> {
    // Files usually list labels in the same order, so look where the previous label was
    // found first; that keeps the walk over both maps sequential.
    let mut hint = 0;
    to.iter()
        .filter(|&(label, hash)| match from.get_near(label, hint) {
            Some((position, old)) => {
                hint = position + 1;
                old != hash
            }
            None => true,
        })
        .map(|(label, _)| label)
        .collect()
}

/// The impacted labels, filtered and ordered for output (spec 6.2-6.4, 5.3).
pub fn impacted_targets<Q: RdepsQuery + ?Sized>(
    from: &HashFile,
    to: &HashFile,
    query: &Q,
    filter: &OutputFilter,
) -> Result<Vec<String>, ImpactError> {
    let mut impacted = simple_diff(&from.hashes, &to.hashes);
    let module = modules::module_impact(from, to, query);
    if let Some(module) = &module {
        let mut seen: FxHashSet<&str> = impacted.iter().copied().collect();
        for label in &module.labels {
            if seen.insert(label) {
                impacted.push(label);
            }
        }
    }
    let impacted = impacted.into_iter().map(|label| (label, ())).collect();
    let labels = order_and_filter(impacted, from, to, filter)?;
    Ok(labels
        .into_iter()
        .map(|(label, ())| label.to_owned())
        .collect())
}

/// The impacted labels with their distances, filtered and ordered for output (spec 6.5).
///
/// `dep_edges` comes from `generate-hashes -d` on the final revision. Distances are computed
/// over all impacted labels before filtering, so filtered-out targets still carry the chain.
pub fn impacted_targets_with_distances<Q: RdepsQuery + ?Sized>(
    from: &HashFile,
    to: &HashFile,
    dep_edges: &DepEdges,
    query: &Q,
    filter: &OutputFilter,
) -> Result<Vec<ImpactedTarget>, ImpactError> {
    let module = modules::module_impact(from, to, query);
    // Upstream removes everything the module path reports (its labels and the simple diff)
    // from the starting hashes, so all of it counts as new, i.e. directly impacted.
    let removed: Option<FxHashSet<&str>> = module.as_ref().map(|module| {
        simple_diff(&from.hashes, &to.hashes)
            .into_iter()
            .chain(module.labels.iter().map(String::as_str))
            .collect()
    });
    let distances = distance::compute(&from.hashes, &to.hashes, dep_edges, removed.as_ref());
    let distances = order_and_filter(distances, from, to, filter)?;
    Ok(distances
        .into_iter()
        .map(|(label, d)| ImpactedTarget {
            label: label.to_owned(),
            target_distance: d.target,
            package_distance: d.package,
        })
        .collect())
}

/// Sorts by kind rank, then label in UTF-16 order (spec 5.3), and applies `--targetType`
/// and `--excludeExternalTargets` (6.4).
fn order_and_filter<'a, V>(
    items: Vec<(&'a str, V)>,
    from: &HashFile,
    to: &HashFile,
    filter: &OutputFilter,
) -> Result<Vec<(&'a str, V)>, ImpactError> {
    let mut ranked: Vec<(u8, (&str, V))> = items
        .into_iter()
        .map(|item| (kind_rank(item.0, &from.hashes, &to.hashes), item))
        .collect();
    ranked.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| cmp_utf16(a.1 .0, b.1 .0)));

    let mut out = Vec::with_capacity(ranked.len());
    let mut untracked = 0usize;
    for (_, (label, value)) in ranked {
        if let Some(types) = &filter.target_types {
            let Some(hash) = to.hashes.get(label) else {
                // Only rdeps results can be missing from the final map; upstream crashes on
                // them (null lookup). Their type is unknown, so they cannot match a type.
                untracked += 1;
                continue;
            };
            let Some(tag) = hash.target_type() else {
                return Err(ImpactError::NoTargetTypeInfo {
                    label: label.to_owned(),
                });
            };
            if !tag.known().is_some_and(|t| types.contains(&t)) {
                continue;
            }
        }
        if filter.exclude_external && label.starts_with(EXTERNAL_PREFIX) {
            continue;
        }
        out.push((label, value));
    }
    if untracked > 0 {
        warn!(
            "{untracked} impacted labels from the module rdeps query are not in the final hashes; \
             --targetType cannot check their type, so they are left out"
        );
    }
    Ok(out)
}

/// SourceFile 0, GeneratedFile 1, Rule 2, another type 3, no type 4; the type comes from
/// the final hashes, else from the starting hashes.
fn kind_rank(label: &str, from: &Hashes, to: &Hashes) -> u8 {
    let tag = to
        .get(label)
        .and_then(|h| h.target_type())
        .or_else(|| from.get(label).and_then(|h| h.target_type()));
    match tag {
        Some(TypeTag::Known(TargetType::SourceFile)) => 0,
        Some(TypeTag::Known(TargetType::GeneratedFile)) => 1,
        Some(TypeTag::Known(TargetType::Rule)) => 2,
        Some(TypeTag::Other(_)) => 3,
        None => 4,
    }
}

#[cfg(test)]
mod tests;
