//! Distance metrics of impacted targets (spec 6.5).
//!
//! Upstream defines `dist(l)` recursively: a directly impacted target is (0,0); an indirectly
//! impacted one takes, independently, the minimum of `dist(d).target + 1` and of
//! `dist(d).package + (pkg(l) != pkg(d))` over its impacted deps `d`. That is a shortest
//! path to the nearest "sink" (a direct target, or an indirect one that falls back to (0,0)),
//! so it is computed here by breadth-first search from all sinks along reversed edges:
//! linear time, no recursion however long the chains are, and well-defined on cycles (which
//! overflow upstream's stack).

use std::collections::VecDeque;

use bazel_diff_format::{DepEdges, Hashes};
use rustc_hash::{FxHashMap, FxHashSet};
use tracing::warn;

/// Target and package distance of one impacted label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Distance {
    pub(crate) target: u32,
    pub(crate) package: u32,
}

const UNREACHED: u32 = u32::MAX;

/// Computes distances for every label impacted between `from` and `to`. Labels in `removed`
/// are treated as absent from `from` (the module-change path makes them count as new).
pub(crate) fn compute<'a>(
    from: &Hashes,
    to: &'a Hashes,
    dep_edges: &DepEdges,
    removed: Option<&FxHashSet<&str>>,
) -> Vec<(&'a str, Distance)> {
    // Impacted labels and whether each is directly impacted (new, or direct digest changed).
    let mut labels: Vec<&'a str> = Vec::new();
    let mut direct: Vec<bool> = Vec::new();
    let mut hint = 0;
    for (label, hash) in to {
        let old = match from.get_near(label, hint) {
            Some((position, old)) => {
                hint = position + 1;
                Some(old).filter(|_| removed.is_none_or(|set| !set.contains(label)))
            }
            None => None,
        };
        match old {
            None => {
                labels.push(label);
                direct.push(true);
            }
            Some(old) if old != hash => {
                labels.push(label);
                direct.push(old.direct() != hash.direct());
            }
            Some(_) => {}
        }
    }
    let index: FxHashMap<&str, u32> = labels
        .iter()
        .enumerate()
        .map(|(i, label)| (*label, i as u32))
        .collect();

    // Reversed edges `dep -> (dependent, crosses package)` from every indirect, non-sink label.
    let mut dependents: Vec<Vec<(u32, bool)>> = vec![Vec::new(); labels.len()];
    let mut sinks: Vec<u32> = Vec::new();
    for (i, &label) in labels.iter().enumerate() {
        let i = i as u32;
        if direct[i as usize] {
            sinks.push(i);
            continue;
        }
        let Some(deps) = dep_edges.get(label) else {
            warn!(
                "{label} was indirectly impacted, but has no dependencies in the dep-edges file. \
                 Falling back to distance 0. If you ran generate-hashes with --targetType, note \
                 that filtering by target type drops non-Rule entries (SourceFile, GeneratedFile) \
                 and is incompatible with distance metrics computed from a full dep-edges file \
                 -- see https://github.com/Tinder/bazel-diff/issues/268"
            );
            sinks.push(i);
            continue;
        };
        let mut has_impacted_dep = false;
        for dep in deps {
            if let Some(&d) = index.get(dep.as_str()) {
                has_impacted_dep = true;
                dependents[d as usize].push((i, package(label) != package(dep)));
            }
        }
        if !has_impacted_dep {
            warn!(
                "{label} was indirectly impacted, but none of its {} deps in the dep-edges file \
                 are themselves impacted (most likely because they were filtered out of the hash \
                 JSON via --targetType). Falling back to distance 0 -- see \
                 https://github.com/Tinder/bazel-diff/issues/268",
                deps.len()
            );
            sinks.push(i);
        }
    }

    let target = target_distances(&dependents, &sinks);
    let package = package_distances(&dependents, &sinks);
    labels
        .iter()
        .enumerate()
        .map(|(i, &label)| {
            let distance = if target[i] == UNREACHED {
                warn!(
                    "{label} was indirectly impacted, but its impacted dependencies form a cycle \
                     that reaches no directly impacted target. Falling back to distance 0."
                );
                Distance {
                    target: 0,
                    package: 0,
                }
            } else {
                Distance {
                    target: target[i],
                    package: package[i],
                }
            };
            (label, distance)
        })
        .collect()
}

/// Upstream's package of a label: the text before the first `:`.
fn package(label: &str) -> &str {
    label.split_once(':').map_or(label, |(package, _)| package)
}

/// Unit-weight shortest distances from any sink.
fn target_distances(dependents: &[Vec<(u32, bool)>], sinks: &[u32]) -> Vec<u32> {
    let mut dist = vec![UNREACHED; dependents.len()];
    let mut queue = VecDeque::with_capacity(dependents.len());
    for &s in sinks {
        dist[s as usize] = 0;
        queue.push_back(s);
    }
    while let Some(d) = queue.pop_front() {
        let next = dist[d as usize] + 1;
        for &(l, _) in &dependents[d as usize] {
            if dist[l as usize] == UNREACHED {
                dist[l as usize] = next;
                queue.push_back(l);
            }
        }
    }
    dist
}

/// 0/1-weight shortest distances from any sink (weight 1 where an edge crosses packages),
/// by 0-1 BFS: zero-weight relaxations go to the front of the deque.
fn package_distances(dependents: &[Vec<(u32, bool)>], sinks: &[u32]) -> Vec<u32> {
    let mut dist = vec![UNREACHED; dependents.len()];
    let mut queue = VecDeque::with_capacity(dependents.len());
    for &s in sinks {
        dist[s as usize] = 0;
        queue.push_back(s);
    }
    while let Some(d) = queue.pop_front() {
        let base = dist[d as usize];
        for &(l, crosses) in &dependents[d as usize] {
            let candidate = base + u32::from(crosses);
            if candidate < dist[l as usize] {
                dist[l as usize] = candidate;
                if crosses {
                    queue.push_back(l);
                } else {
                    queue.push_front(l);
                }
            }
        }
    }
    dist
}
