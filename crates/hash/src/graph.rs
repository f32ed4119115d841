//! Building the target graph from streamed targets and computing every digest (spec 4.1,
//! 4.8, 4.9).

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use bazel_diff_query::proto::{discriminator, Target};
use bazel_diff_query::{decode_target, RuleView};
use bytes::Bytes;
use rayon::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};
use sha2::{Digest as _, Sha256};

use crate::rule::{prepare_package_group, prepare_rule, PreparedRule};
use crate::source::SourceHasher;
use crate::state::{
    DigestTable, GraphState, Interner, Resolution, RuleState, SourceState, Span, NONE,
};
use crate::{java_cmp, Digest, HashConfig, HashError};

/// Targets per unit of work sent to the rayon pool while the query streams.
const BATCH: usize = 512;

/// The kinds of hashed targets (the `Type#` prefix of hash values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TargetKind {
    Rule,
    SourceFile,
    GeneratedFile,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Rule => "Rule",
            TargetKind::SourceFile => "SourceFile",
            TargetKind::GeneratedFile => "GeneratedFile",
        }
    }
}

/// The hashes of one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashedTarget {
    pub label: String,
    pub kind: TargetKind,
    pub overall: Digest,
    pub direct: Digest,
    /// Dependency edges (only with `track_deps`; `None` for source files).
    pub deps: Option<Vec<String>>,
}

pub(crate) struct HashedSource {
    pub label: String,
    pub raw: Digest,
    pub subincludes: Vec<String>,
    /// The final digest unless the source's package has a seed (spec 4.8): computed while
    /// the query streams, as package seeds are rare (never with instantiation stacks).
    pub unseeded: Digest,
}

impl HashedSource {
    fn new(label: String, raw: Digest, subincludes: Vec<String>, config: &HashConfig) -> Self {
        HashedSource {
            unseeded: Sha256::new()
                .chain_update(raw)
                .chain_update(config.seed)
                .finalize()
                .into(),
            label,
            raw,
            subincludes,
        }
    }
}

/// A target waiting to be sent to the pool: decoded already, or still a raw message.
enum Pending {
    // Boxed: raw messages (query mode, the bulk) keep the batch small.
    Target(Box<Target>),
    Message { index: u64, bytes: Bytes },
}

/// What the pool made of one batch, in the batch's stream order.
#[derive(Default)]
struct Batch {
    rules: Vec<PreparedRule>,
    sources: Vec<HashedSource>,
    generated: Vec<(String, String)>,
    skipped: usize,
}

/// Accepts targets as they are decoded and hashes them.
pub struct GraphBuilder {
    config: Arc<HashConfig>,
    seen: FxHashSet<String>,
    pending: Vec<Pending>,
    generated: Vec<(String, String)>,
    sender: Sender<(usize, Result<Batch, HashError>)>,
    receiver: Receiver<(usize, Result<Batch, HashError>)>,
    batches_sent: usize,
}

impl GraphBuilder {
    pub fn new(config: Arc<HashConfig>) -> Self {
        let (sender, receiver) = channel();
        GraphBuilder {
            config,
            seen: FxHashSet::default(),
            pending: Vec::with_capacity(BATCH),
            generated: Vec::new(),
            sender,
            receiver,
            batches_sent: 0,
        }
    }

    /// Adds one target; a label seen before is ignored (first occurrence wins, as upstream
    /// de-duplicates cquery results).
    pub fn add(&mut self, target: Target) {
        // Only cquery repeats labels (one per configuration); query mode never does.
        if self.config.use_cquery {
            if let Some(label) = target.label() {
                if !self.seen.insert(label.to_owned()) {
                    return;
                }
            }
        }
        self.push(Pending::Target(Box::new(target)));
    }

    /// Adds one undecoded `Target` message (message `index` of the output, for errors); it
    /// is decoded on the pool, so the thread reading Bazel's output does little more than
    /// read. Only for query mode: labels are not de-duplicated.
    pub fn add_message(&mut self, bytes: Bytes, index: u64) {
        debug_assert!(!self.config.use_cquery, "cquery targets need add()");
        self.push(Pending::Message { index, bytes });
    }

    fn push(&mut self, item: Pending) {
        self.pending.push(item);
        if self.pending.len() >= BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let items = std::mem::replace(&mut self.pending, Vec::with_capacity(BATCH));
        let (config, sender) = (self.config.clone(), self.sender.clone());
        let sequence = self.batches_sent;
        self.batches_sent += 1;
        rayon::spawn(move || {
            // The receiver outlives every batch (finish waits for all of them).
            let _ = sender.send((sequence, process_batch(items, &config)));
        });
    }

    /// Waits for the streamed work and computes every target's digests.
    pub fn finish(self) -> Result<Vec<HashedTarget>, HashError> {
        Ok(self.finish_inner(false)?.0)
    }

    /// Like [`GraphBuilder::finish`], and also returns the [`GraphState`] for incremental
    /// updates (its `config_digest` is left zero for the caller to fill in).
    pub fn finish_with_state(self) -> Result<(Vec<HashedTarget>, GraphState), HashError> {
        let (hashes, state) = self.finish_inner(true)?;
        Ok((hashes, state.expect("state was requested")))
    }

    /// The package-local update: the targets added so far are the new contents of some
    /// packages; `base` supplies every target `keep` accepts (by label), with the raw
    /// digests of sources whose file is in `rehash` (workspace paths) read again. The whole
    /// graph pass then runs as in a cold run (seeds, soft digests, input resolution,
    /// visibility edges), so the result is the cold run's whenever the kept and added
    /// targets are the cold query's targets. With `want_state`, also the new graph state
    /// (its `config_digest` left zero for the caller to fill in).
    pub fn finish_spliced(
        mut self,
        base: &GraphState,
        keep: impl Fn(&str) -> bool + Sync,
        rehash: &std::collections::HashSet<String>,
        want_state: bool,
    ) -> Result<(Vec<HashedTarget>, Option<GraphState>), HashError> {
        let (mut rules, mut sources) = self.drain()?;
        let kept = base.kept_parts(&self.config, keep, rehash)?;
        tracing::debug!("kept targets rebuilt");
        rules.extend(kept.rules);
        sources.extend(kept.sources.into_iter().map(|(label, raw, subincludes)| {
            HashedSource::new(label, raw, subincludes, &self.config)
        }));
        let mut generated = std::mem::take(&mut self.generated);
        generated.extend(kept.generated);
        compute(&self.config, rules, sources, generated, want_state)
    }

    fn finish_inner(
        mut self,
        want_state: bool,
    ) -> Result<(Vec<HashedTarget>, Option<GraphState>), HashError> {
        let (rules, sources) = self.drain()?;
        tracing::debug!("streamed work drained");
        compute(&self.config, rules, sources, self.generated, want_state)
    }

    /// Waits for every batch sent to the pool.
    fn drain(&mut self) -> Result<(Vec<PreparedRule>, Vec<HashedSource>), HashError> {
        self.flush();
        let mut batches: Vec<Option<Result<Batch, HashError>>> =
            (0..self.batches_sent).map(|_| None).collect();
        for _ in 0..self.batches_sent {
            // A batch that panicked drops its sender without sending; recv then fails once
            // every other sender is gone, which cannot happen while `self.sender` lives, so
            // rayon's panic propagation is what surfaces such a bug.
            match self.receiver.recv() {
                Ok((sequence, batch)) => batches[sequence] = Some(batch),
                Err(_) => break,
            }
        }
        self.batches_sent = 0;
        // Reassembled in stream order: the first error is the first bad target, and the
        // result does not depend on scheduling.
        let batches: Vec<Batch> = batches.into_iter().flatten().collect::<Result<_, _>>()?;
        // Sized once: growing these by doubling copied and faulted in megabytes after EOF.
        let total = |count: fn(&Batch) -> usize| batches.iter().map(count).sum::<usize>();
        let mut rules = Vec::with_capacity(total(|b| b.rules.len()));
        let mut sources = Vec::with_capacity(total(|b| b.sources.len()));
        self.generated.reserve(total(|b| b.generated.len()));
        let mut skipped = 0;
        for batch in batches {
            rules.extend(batch.rules);
            sources.extend(batch.sources);
            self.generated.extend(batch.generated);
            skipped += batch.skipped;
        }
        if skipped > 0 {
            tracing::info!("dropped {skipped} targets of kinds that are not hashed");
        }
        Ok((rules, sources))
    }
}

/// The per-target work of one batch: decoding, rule preparation and source file digests.
fn process_batch(items: Vec<Pending>, config: &HashConfig) -> Result<Batch, HashError> {
    let hasher = SourceHasher::new(config);
    let mut batch = Batch::default();
    for item in items {
        let target = match item {
            Pending::Target(target) => *target,
            Pending::Message { index, bytes } => {
                // Rules, the bulk of the work, are read in place: no owned strings or
                // buffers for fields that only feed digests.
                if let Some(rule) = RuleView::of_target(&bytes) {
                    batch.rules.push(prepare_rule(&rule, config)?);
                    continue;
                }
                decode_target(bytes, index).map_err(HashError::Decode)?
            }
        };
        if target.label().is_none() {
            batch.skipped += 1;
            continue;
        }
        match target.r#type {
            discriminator::RULE => batch.rules.extend(
                target
                    .rule
                    .map(|r| prepare_rule(&RuleView::of_rule(&r), config))
                    .transpose()?,
            ),
            discriminator::SOURCE_FILE => {
                let source = target.source_file.unwrap_or_default();
                let raw = hasher.raw_digest(&source.name, &source.subinclude)?;
                batch.sources.push(HashedSource::new(
                    source.name,
                    raw,
                    source.subinclude,
                    config,
                ));
            }
            discriminator::GENERATED_FILE => {
                let generated = target.generated_file.unwrap_or_default();
                batch
                    .generated
                    .push((generated.name, generated.generating_rule));
            }
            discriminator::PACKAGE_GROUP => {
                let group = target.package_group.unwrap_or_default();
                batch.rules.push(prepare_package_group(group, config));
            }
            _ => batch.skipped += 1,
        }
    }
    Ok(batch)
}

/// What a rule input label resolves to.
#[derive(Clone, Copy)]
enum Node {
    Rule(u32),
    Source(u32),
}

/// What one rule input resolved to. `wanted`: the input asks for its soft digest to be
/// computed (a rule naming its own label does; its own outputs count only if others ask).
#[derive(Clone, Copy)]
enum Input {
    Source(u32),
    /// Another rule, or a file another rule generates.
    Dep {
        rule: u32,
        wanted: bool,
    },
    /// Anything else: its soft digest counts if there is one.
    Soft {
        wanted: bool,
    },
}

/// Every rule's inputs resolved once: the soft digest pass and the direct digests both
/// need them, and a label lookup per input is the bulk of both.
struct ResolvedInputs {
    inputs: Vec<Input>,
    /// Where each rule's inputs start in `inputs`, and the end.
    starts: Vec<usize>,
}

impl ResolvedInputs {
    fn resolve(rules: &[PreparedRule], nodes: &FxHashMap<&str, Node>) -> Self {
        let mut starts = Vec::with_capacity(rules.len() + 1);
        let mut total = 0;
        for rule in rules {
            starts.push(total);
            total += rule.inputs.len();
        }
        starts.push(total);
        let mut inputs = vec![Input::Soft { wanted: false }; total];
        let mut slots = Vec::with_capacity(rules.len());
        let mut rest = inputs.as_mut_slice();
        for rule in rules {
            let (head, tail) = rest.split_at_mut(rule.inputs.len());
            slots.push(head);
            rest = tail;
        }
        slots
            .into_par_iter()
            .zip(rules)
            .enumerate()
            .for_each(|(index, (slots, rule))| {
                for (slot, input) in slots.iter_mut().zip(&rule.inputs) {
                    let label = label_of(input);
                    *slot = match nodes.get(label) {
                        Some(Node::Source(s)) => Input::Source(*s),
                        Some(&Node::Rule(r)) => {
                            let wanted = label == rule.label;
                            if r as usize != index {
                                Input::Dep { rule: r, wanted }
                            } else {
                                Input::Soft { wanted }
                            }
                        }
                        None => Input::Soft { wanted: true },
                    };
                }
            });
        ResolvedInputs { inputs, starts }
    }

    /// The resolved inputs of rule `index`, in input order.
    fn of(&self, index: usize) -> &[Input] {
        &self.inputs[self.starts[index]..self.starts[index + 1]]
    }
}

fn package_of(label: &str) -> &str {
    label.rsplit_once(':').map_or(label, |(pkg, _)| pkg)
}

fn compute(
    config: &HashConfig,
    mut rules: Vec<PreparedRule>,
    mut sources: Vec<HashedSource>,
    mut generated: Vec<(String, String)>,
    want_state: bool,
) -> Result<(Vec<HashedTarget>, Option<GraphState>), HashError> {
    // Deterministic rule order keeps cycle errors independent of scheduling. Bazel's output
    // is usually sorted already, and checking is far cheaper than sorting.
    if !rules
        .par_windows(2)
        .all(|pair| java_cmp(&pair[0].label, &pair[1].label).is_le())
    {
        rules.par_sort_unstable_by(|a, b| java_cmp(&a.label, &b.label));
    }
    let visibility = add_visibility_edges(&mut rules, want_state);
    tracing::debug!("rules sorted");

    let mut nodes: FxHashMap<&str, Node> = FxHashMap::default();
    nodes.reserve(rules.len() + sources.len() + generated.len());
    for (i, s) in sources.iter().enumerate() {
        nodes.insert(&s.label, Node::Source(i as u32));
    }
    for (i, r) in rules.iter().enumerate() {
        nodes.insert(&r.label, Node::Rule(i as u32));
    }
    let mut generating = Vec::with_capacity(generated.len());
    for (file, rule) in &generated {
        match nodes.get(rule.as_str()) {
            Some(Node::Rule(r)) => generating.push(*r),
            _ => {
                return Err(HashError::MissingGeneratingRule {
                    file: file.clone(),
                    rule: rule.clone(),
                })
            }
        }
    }
    for ((file, _), rule) in generated.iter().zip(&generating) {
        nodes.insert(file, Node::Rule(*rule));
    }

    let hasher = SourceHasher::new(config);
    // Any instantiation stack switches the whole graph to per-rule `.bzl` seeds (spec 4.5).
    let per_rule_seeds = rules.iter().any(|r| r.bzl_paths.is_some());
    let resolved = ResolvedInputs::resolve(&rules, &nodes);
    let soft = soft_digests(&hasher, &rules, &resolved, &sources, per_rule_seeds)?;
    tracing::debug!("soft digests done");
    let seeds = if per_rule_seeds {
        Seeds::of_stacks(&rules, &soft)
    } else {
        Seeds::of_packages(package_seeds(&sources, &soft))
    };

    // Direct digests need no other rule's result, so they are computed in parallel.
    let direct: Vec<(Digest, Vec<(u32, u32)>)> = rules
        .par_iter()
        .enumerate()
        .map(|(index, rule)| {
            direct_digest(
                config,
                &rule.attribute_digest,
                rule,
                resolved.of(index),
                &sources,
                &soft,
                &seeds,
            )
        })
        .collect();
    tracing::debug!("direct digests done");
    let overall = overall_digests(&rules, &direct)?;
    tracing::debug!("overall digests done");
    let state = want_state.then(|| {
        build_state(
            config,
            &rules,
            &sources,
            &generated,
            &generating,
            &visibility,
            &nodes,
            &soft,
            per_rule_seeds,
            &seeds,
            &direct,
            &overall,
        )
    });
    tracing::debug!("graph state built");

    let track_deps = config.track_deps;
    // Labels are moved out and the rest is kept until exit (see `keep_until_exit`).
    let rule_hashes: Vec<HashedTarget> = rules
        .par_iter_mut()
        .zip(direct.par_iter())
        .zip(overall.par_iter())
        .map(|((rule, (direct, deps)), overall)| HashedTarget {
            deps: track_deps.then(|| {
                deps.iter()
                    .map(|&(_, input)| label_of(&rule.inputs[input as usize]).to_owned())
                    .collect()
            }),
            label: std::mem::take(&mut rule.label),
            kind: TargetKind::Rule,
            overall: *overall,
            direct: *direct,
        })
        .collect();
    let generated_hashes = generated
        .par_iter_mut()
        .zip(generating.par_iter())
        .map(|((file, rule_label), &rule)| HashedTarget {
            label: std::mem::take(file),
            kind: TargetKind::GeneratedFile,
            overall: overall[rule as usize],
            direct: direct[rule as usize].0,
            deps: track_deps.then(|| vec![std::mem::take(rule_label)]),
        })
        .collect();
    let package_seeds = &seeds.packages;
    let source_hashes = sources
        .par_iter_mut()
        .map(|source| {
            // Empty whenever rules carry instantiation stacks: skip finding the package.
            let seed = (!package_seeds.is_empty())
                .then(|| package_seeds.get(package_of(&source.label)))
                .flatten();
            let digest: Digest = match seed {
                Some(seed) => Sha256::new()
                    .chain_update(source.raw)
                    .chain_update(config.seed)
                    .chain_update(seed)
                    .finalize()
                    .into(),
                None => source.unseeded,
            };
            HashedTarget {
                label: std::mem::take(&mut source.label),
                kind: TargetKind::SourceFile,
                overall: digest,
                direct: digest,
                deps: None,
            }
        })
        .collect();
    keep_until_exit((rules, generated, sources, direct));
    Ok((
        merge_by_label([rule_hashes, generated_hashes, source_hashes]),
        state,
    ))
}

/// Leaves `value` allocated. Freeing a graph's hundreds of thousands of small allocations
/// takes tens of milliseconds between the end of the query and the published output, in a
/// process that ends right after it; the OS reclaims the memory at exit at no extra cost.
pub fn keep_until_exit<T>(value: T) {
    std::mem::forget(value);
}

/// Entries of the longest list per parallel merge task.
const MERGE_STEP: usize = 2048;

/// Sorts each list by label (bytes) unless it is already, then merges them: cheaper than
/// sorting the union, as each list usually comes sorted (rules by UTF-16 order, which is
/// byte order for nearly every label; sources and generated files in Bazel's order).
fn merge_by_label(mut lists: [Vec<HashedTarget>; 3]) -> Vec<HashedTarget> {
    lists.par_iter_mut().for_each(|list| {
        if !list
            .par_windows(2)
            .all(|pair| pair[0].label <= pair[1].label)
        {
            list.par_sort_unstable_by(|a, b| a.label.cmp(&b.label));
        }
    });
    // Segments split at labels of the longest list: each merges on its own.
    let lens = lists.each_ref().map(Vec::len);
    let total: usize = lens.iter().sum();
    let longest = lists
        .iter()
        .max_by_key(|l| l.len())
        .map_or(&[][..], Vec::as_slice);
    let mut cuts: Vec<[usize; 3]> = longest
        .par_iter()
        .step_by(MERGE_STEP)
        .skip(1)
        .map(|pivot| {
            lists
                .each_ref()
                .map(|l| l.partition_point(|t| t.label < pivot.label))
        })
        .collect();
    cuts.insert(0, [0; 3]);
    cuts.push(lens);

    let lists = lists.map(std::mem::ManuallyDrop::new);
    let mut out: Vec<HashedTarget> = Vec::with_capacity(total);
    let mut spare = &mut out.spare_capacity_mut()[..total];
    let mut tasks = Vec::with_capacity(cuts.len());
    for pair in cuts.windows(2) {
        let parts: [&[HashedTarget]; 3] =
            std::array::from_fn(|l| &lists[l][pair[0][l]..pair[1][l]]);
        let (head, tail) = spare.split_at_mut(parts.iter().map(|p| p.len()).sum());
        tasks.push((head, parts));
        spare = tail;
    }
    tasks.into_par_iter().for_each(|(slots, parts)| {
        let mut next = [0usize; 3];
        for slot in slots {
            let mut best: Option<usize> = None;
            for l in 0..3 {
                let Some(candidate) = parts[l].get(next[l]) else {
                    continue;
                };
                if best.is_none_or(|b| candidate.label < parts[b][next[b]].label) {
                    best = Some(l);
                }
            }
            let l = best.expect("a segment's slots match its parts");
            // SAFETY: the segments partition every list and each entry of a part is read
            // once, so every target is moved out exactly once; the lists are ManuallyDrop
            // and only their buffers are freed below, so nothing is dropped twice.
            slot.write(unsafe { std::ptr::read(&parts[l][next[l]]) });
            next[l] += 1;
        }
    });
    // SAFETY: the segments' slots cover the first `total` slots and each was written.
    unsafe { out.set_len(total) };
    for mut list in lists {
        // SAFETY: every element was moved into `out`; only the buffer is left to free.
        unsafe { list.set_len(0) };
        drop(std::mem::ManuallyDrop::into_inner(list));
    }
    out
}

/// The seeds mixed into direct digests (spec 4.5): per instantiation stack or per package.
struct Seeds {
    /// `ruleBzlSeed` of every distinct stack (rules share a few), when rules carry stacks.
    stacks: Option<FxHashMap<Vec<String>, Digest>>,
    packages: HashMap<String, Digest>,
}

impl Seeds {
    fn of_stacks(rules: &[PreparedRule], soft: &FxHashMap<String, Digest>) -> Self {
        let distinct: FxHashSet<&[String]> = rules
            .iter()
            .filter_map(|r| r.bzl_paths.as_deref())
            .collect();
        let stacks = distinct
            .into_iter()
            .map(|paths| (paths.to_vec(), rule_bzl_seed(paths, soft)))
            .collect();
        Seeds {
            stacks: Some(stacks),
            packages: HashMap::new(),
        }
    }

    fn of_packages(packages: HashMap<String, Digest>) -> Self {
        Seeds {
            stacks: None,
            packages,
        }
    }

    /// The seed mixed into a rule's direct digest (spec 4.8 step 3), if any.
    fn of_rule(&self, rule: &PreparedRule) -> Option<Digest> {
        match (&rule.bzl_paths, &self.stacks) {
            (Some(paths), Some(stacks)) => stacks.get(paths.as_slice()).copied(),
            _ => self.packages.get(package_of(&rule.label)).copied(),
        }
    }
}

/// Captures the computed graph for incremental updates.
#[allow(clippy::too_many_arguments)]
fn build_state(
    config: &HashConfig,
    rules: &[PreparedRule],
    sources: &[HashedSource],
    generated: &[(String, String)],
    generating: &[u32],
    visibility: &[RuleVisibility],
    nodes: &FxHashMap<&str, Node>,
    soft: &FxHashMap<String, Digest>,
    per_rule_seeds: bool,
    seeds: &Seeds,
    direct: &[(Digest, Vec<(u32, u32)>)],
    overall: &[Digest],
) -> GraphState {
    let mut strings = Interner::default();
    let mut digests = DigestTable::default();
    let mut rule_states = Vec::with_capacity(rules.len());
    let mut inputs = Vec::new();
    let (mut bzl, mut vis, mut vis_added) = (Vec::new(), Vec::new(), Vec::new());
    let push = |list: &mut Vec<u32>, items: &mut dyn Iterator<Item = u32>| {
        let start = list.len() as u32;
        list.extend(items);
        Span {
            start,
            count: list.len() as u32 - start,
        }
    };
    for ((index, rule), visibility) in rules.iter().enumerate().zip(visibility) {
        let seed = seeds.of_rule(rule).map_or(NONE, |d| digests.id(&d));
        let bzl_span = push(
            &mut bzl,
            &mut rule.bzl_paths.iter().flatten().map(|p| strings.id(p)),
        );
        let vis_span = push(
            &mut vis,
            &mut visibility.named.iter().map(|l| strings.id(l)),
        );
        let added_span = push(
            &mut vis_added,
            &mut visibility.added.iter().map(|l| strings.id(l)),
        );
        let input_start = inputs.len() as u32;
        for input in &rule.inputs {
            let label = label_of(input);
            let resolution = match nodes.get(label) {
                Some(Node::Source(s)) => Resolution::Source(*s),
                Some(Node::Rule(r)) if *r as usize != index => Resolution::Rule(*r),
                _ => match soft.get(label) {
                    Some(d) => Resolution::Soft(digests.id(d)),
                    None => Resolution::Nothing,
                },
            };
            inputs.push((strings.id(input), resolution.encode()));
        }
        rule_states.push(RuleState {
            label: strings.id(&rule.label),
            seed,
            always_affected: rule.always_affected,
            package_group: rule.is_package_group,
            has_stack: rule.bzl_paths.is_some(),
            input_start,
            input_count: inputs.len() as u32 - input_start,
            bzl: bzl_span,
            visibility: vis_span,
            vis_added: added_span,
            attribute: rule.attribute_digest,
            direct: direct[index].0,
            overall: overall[index],
        });
    }
    let mut subincludes = Vec::new();
    let source_states = sources
        .iter()
        .map(|s| {
            let sub_start = subincludes.len() as u32;
            subincludes.extend(s.subincludes.iter().map(|l| strings.id(l)));
            SourceState {
                label: strings.id(&s.label),
                package_seed: seeds
                    .packages
                    .get(package_of(&s.label))
                    .map_or(NONE, |d| digests.id(d)),
                sub_start,
                sub_count: s.subincludes.len() as u32,
                raw: s.raw,
            }
        })
        .collect();
    let generated_states = generated
        .iter()
        .zip(generating)
        .map(|((file, _), rule)| (strings.id(file), *rule))
        .collect();
    let mut soft_states: Vec<(u32, u32)> = soft
        .iter()
        .map(|(label, d)| (strings.id(label), digests.id(d)))
        .collect();
    // Soft lookups that found no file: creating that file later would change hashes too.
    let mut missing: FxHashSet<String> = FxHashSet::default();
    let main_repo = |l: &str| ["//", "@//", "@@//"].iter().any(|p| l.starts_with(p));
    for (index, rule) in rules.iter().enumerate() {
        for input in &rule.inputs {
            let label = label_of(input);
            let resolved = match nodes.get(label) {
                Some(Node::Source(_)) => true,
                Some(Node::Rule(r)) => *r as usize != index,
                None => false,
            };
            if !resolved && main_repo(label) && !soft.contains_key(label) {
                missing.insert(label.to_owned());
            }
        }
        if per_rule_seeds {
            for path in rule.bzl_paths.iter().flatten() {
                let label = format!("//{path}");
                if !soft.contains_key(&label) {
                    missing.insert(label);
                }
            }
        }
    }
    if !per_rule_seeds {
        for source in sources {
            for label in &source.subincludes {
                if main_repo(label) && !soft.contains_key(label) {
                    missing.insert(label.clone());
                }
            }
        }
    }
    let mut missing: Vec<String> = missing.into_iter().collect();
    missing.sort_unstable();
    soft_states.extend(missing.iter().map(|label| (strings.id(label), NONE)));
    soft_states.sort_unstable();
    let (strings, string_ends) = strings.finish();
    GraphState {
        config_digest: [0; 32],
        seed: config.seed,
        track_deps: config.track_deps,
        use_cquery: config.use_cquery,
        strings,
        string_ends,
        digests: digests.digests,
        rules: rule_states,
        inputs,
        bzl_paths: bzl,
        visibility: vis,
        vis_added,
        sources: source_states,
        subincludes,
        generated: generated_states,
        soft: soft_states,
    }
}

/// The label part of an encoded input (`label|configuration` in cquery mode).
fn label_of(input: &str) -> &str {
    input.split_once('|').map_or(input, |(label, _)| label)
}

/// What a graph state keeps of a rule's `visibility`: the labels that could name a package
/// group, and those that became inputs only through it.
#[derive(Default)]
pub(crate) struct RuleVisibility {
    named: Vec<String>,
    added: Vec<String>,
}

/// A rule whose `visibility` names a package group depends on it. With `record`, returns
/// per rule (in order) what a graph state needs to redo this after a splice.
fn add_visibility_edges(rules: &mut [PreparedRule], record: bool) -> Vec<RuleVisibility> {
    let groups: FxHashSet<String> = rules
        .iter()
        .filter(|r| r.is_package_group)
        .map(|r| r.label.clone())
        .collect();
    let mut recorded = Vec::with_capacity(if record { rules.len() } else { 0 });
    for rule in rules.iter_mut() {
        let visibility = std::mem::take(&mut rule.visibility);
        let mut added = Vec::new();
        for v in &visibility {
            if groups.contains(v)
                && *v != rule.label
                && rule.inputs.binary_search_by(|i| java_cmp(i, v)).is_err()
            {
                added.push(v.clone());
            }
        }
        if !added.is_empty() {
            rule.inputs.extend(added.iter().cloned());
            rule.inputs.sort_by(|a, b| java_cmp(a, b));
            rule.inputs.dedup();
        }
        if record {
            recorded.push(RuleVisibility {
                named: visibility,
                added,
            });
        }
    }
    recorded
}

/// Soft digests of every label that may need one: `.bzl` files of instantiation stacks or
/// BUILD-file subincludes, and rule inputs that resolve to no target (spec 4.4, 4.8 step 5).
fn soft_digests(
    hasher: &SourceHasher<'_>,
    rules: &[PreparedRule],
    resolved: &ResolvedInputs,
    sources: &[HashedSource],
    per_rule_seeds: bool,
) -> Result<FxHashMap<String, Digest>, HashError> {
    type Wanted<'a> = (FxHashSet<&'a str>, FxHashSet<&'a str>);
    let (bzl_files, mut wanted) = rules
        .par_iter()
        .enumerate()
        .fold(
            Wanted::default,
            |(mut bzl_files, mut wanted), (index, rule)| {
                if per_rule_seeds {
                    bzl_files.extend(rule.bzl_paths.iter().flatten().map(String::as_str));
                }
                for (input, resolved) in rule.inputs.iter().zip(resolved.of(index)) {
                    if let Input::Dep { wanted: true, .. } | Input::Soft { wanted: true } = resolved
                    {
                        wanted.insert(label_of(input));
                    }
                }
                (bzl_files, wanted)
            },
        )
        .reduce(Wanted::default, |(mut bzl_files, mut wanted), (b, w)| {
            bzl_files.extend(b);
            wanted.extend(w);
            (bzl_files, wanted)
        });
    if !per_rule_seeds {
        for source in sources {
            wanted.extend(source.subincludes.iter().map(String::as_str));
        }
    }
    let wanted: Vec<String> = wanted
        .into_iter()
        .map(str::to_owned)
        .chain(bzl_files.into_iter().map(|path| format!("//{path}")))
        .collect();
    let computed: Result<Vec<_>, _> = wanted
        .into_par_iter()
        .map(|label| Ok(hasher.soft_digest(&label)?.map(|d| (label, d))))
        .collect();
    Ok(computed?.into_iter().flatten().collect())
}

/// Package seeds (spec 4.5 fallback) from BUILD files' subincludes.
fn package_seeds(
    sources: &[HashedSource],
    soft: &FxHashMap<String, Digest>,
) -> HashMap<String, Digest> {
    let mut by_package: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for source in sources.iter().filter(|s| !s.subincludes.is_empty()) {
        by_package
            .entry(package_of(&source.label))
            .or_default()
            .extend(source.subincludes.iter().map(String::as_str));
    }
    let mut seeds = HashMap::new();
    for (package, mut labels) in by_package {
        labels.sort_by(|a, b| java_cmp(a, b));
        labels.dedup();
        let kept: Vec<(&str, &Digest)> = labels
            .into_iter()
            .filter_map(|l| soft.get(l).map(|d| (l, d)))
            .collect();
        if kept.is_empty() {
            continue;
        }
        let mut h = Sha256::new();
        for (label, digest) in kept {
            h.update(label.as_bytes());
            h.update(digest);
        }
        seeds.insert(package.to_owned(), h.finalize().into());
    }
    seeds
}

/// `ruleBzlSeed` (spec 4.5): always 32 bytes for a non-empty stack.
fn rule_bzl_seed(paths: &[String], soft: &FxHashMap<String, Digest>) -> Digest {
    let mut h = Sha256::new();
    let mut label = String::new();
    for path in paths {
        label.clear();
        label.push_str("//");
        label.push_str(path);
        if let Some(digest) = soft.get(&label) {
            h.update(path.as_bytes());
            h.update(digest);
        }
    }
    h.finalize().into()
}

/// The direct digest of a rule and the rules its inputs resolve to, as
/// `(rule index, input position)` in input order.
fn direct_digest(
    config: &HashConfig,
    attribute_digest: &[u8],
    rule: &PreparedRule,
    resolved: &[Input],
    sources: &[HashedSource],
    soft: &FxHashMap<String, Digest>,
    seeds: &Seeds,
) -> (Digest, Vec<(u32, u32)>) {
    let mut h = Sha256::new();
    h.update(attribute_digest);
    h.update(config.seed);
    if let Some(seed) = seeds.of_rule(rule) {
        h.update(seed);
    }
    if rule.always_affected {
        h.update(config.salt.as_bytes());
    }
    let mut deps = Vec::new();
    for (position, (input, resolved)) in rule.inputs.iter().zip(resolved).enumerate() {
        h.update(input.as_bytes());
        let label = label_of(input);
        match *resolved {
            Input::Source(s) => h.update(sources[s as usize].raw),
            Input::Dep { rule: r, .. } => deps.push((r, position as u32)),
            Input::Soft { .. } => {
                if let Some(digest) = soft.get(label) {
                    h.update(digest);
                } else {
                    tracing::trace!(
                        "Unable to calculate digest for input {label} of {}",
                        rule.label
                    );
                }
            }
        }
    }
    (h.finalize().into(), deps)
}

/// Overall digests in dependency order, iteratively (chains can be thousands deep).
fn overall_digests(
    rules: &[PreparedRule],
    direct: &[(Digest, Vec<(u32, u32)>)],
) -> Result<Vec<Digest>, HashError> {
    const UNVISITED: u8 = 0;
    const ON_STACK: u8 = 1;
    const DONE: u8 = 2;
    let mut state = vec![UNVISITED; rules.len()];
    let mut overall = vec![[0u8; 32]; rules.len()];
    let mut stack: Vec<(u32, usize)> = Vec::new();
    for root in 0..rules.len() as u32 {
        if state[root as usize] != UNVISITED {
            continue;
        }
        stack.push((root, 0));
        state[root as usize] = ON_STACK;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            let deps = &direct[node as usize].1;
            if let Some(&(dep, _)) = deps.get(*next) {
                *next += 1;
                match state[dep as usize] {
                    DONE => {}
                    ON_STACK => return Err(cycle_error(rules, &stack, dep)),
                    _ => {
                        state[dep as usize] = ON_STACK;
                        stack.push((dep, 0));
                    }
                }
                continue;
            }
            let mut h = Sha256::new();
            for &(dep, _) in deps {
                h.update(overall[dep as usize]);
            }
            h.update(direct[node as usize].0);
            overall[node as usize] = h.finalize().into();
            state[node as usize] = DONE;
            stack.pop();
        }
    }
    Ok(overall)
}

fn cycle_error(rules: &[PreparedRule], stack: &[(u32, usize)], back_to: u32) -> HashError {
    let start = stack.iter().position(|&(n, _)| n == back_to).unwrap_or(0);
    let mut path: Vec<String> = stack[start..]
        .iter()
        .map(|&(n, _)| rules[n as usize].label.clone())
        .collect();
    path.push(rules[back_to as usize].label.clone());
    HashError::Cycle(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::to_hex;
    use bazel_diff_query::proto::{GeneratedFile, PackageGroup, Rule, SourceFile};

    fn prepared(label: &str, inputs: &[&str]) -> PreparedRule {
        PreparedRule {
            label: label.into(),
            attribute_digest: [0; 32],
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            bzl_paths: None,
            always_affected: false,
            visibility: Vec::new(),
            is_package_group: false,
        }
    }

    /// Upstream's `BuildGraphHasherTest` replaces `ruleDigest` with ASCII bytes.
    fn vector_hashes(
        config: &HashConfig,
        rules: &[(&str, &str, &[&str])],
    ) -> Vec<(String, String)> {
        let prepared: Vec<_> = rules.iter().map(|(l, _, i)| prepared(l, i)).collect();
        let mut nodes = FxHashMap::default();
        for (i, r) in prepared.iter().enumerate() {
            nodes.insert(r.label.as_str(), Node::Rule(i as u32));
        }
        let soft = FxHashMap::default();
        let resolved = ResolvedInputs::resolve(&prepared, &nodes);
        let direct: Vec<_> = prepared
            .iter()
            .zip(rules)
            .enumerate()
            .map(|(i, (r, (_, attr, _)))| {
                direct_digest(
                    config,
                    attr.as_bytes(),
                    r,
                    resolved.of(i),
                    &[],
                    &soft,
                    &Seeds::of_packages(HashMap::new()),
                )
            })
            .collect();
        let overall = overall_digests(&prepared, &direct).unwrap();
        direct
            .iter()
            .zip(overall)
            .map(|(d, o)| (to_hex(&d.0), to_hex(&o)))
            .collect()
    }

    #[test]
    fn upstream_test_vectors() {
        let config = HashConfig::new("/ws");
        let got = vector_hashes(
            &config,
            &[
                ("rule1", "rule1Digest", &[]),
                ("rule2", "rule2Digest", &[]),
                ("rule3", "digest", &["rule1"]),
            ],
        );
        assert_eq!(
            got[0].0,
            "e34f24077b917a720bc1ce4b1383c7df3c01ff26e492dea43d45780871b30382"
        );
        assert_eq!(
            got[0].1,
            "443e5e8ca6f5f1afdebfb8650a1fc37ad10964fca5a270ef97b37ea2425c57ee"
        );
        assert_eq!(
            got[1].0,
            "9cfe592887d063932fa455fe985e96d8ec07079bc20fc2a955e8e8d520c59282"
        );
        assert_eq!(
            got[1].1,
            "72697540fd5f7d4fd23832a046915630cb2658f8cd0e67bc9c98353131bebfbc"
        );
        assert_eq!(
            got[2].0,
            "a572cd448866842478ead3689e13849a6069e07e50c79dc9b2be0bd282812eba"
        );
        assert_eq!(
            got[2].1,
            "504431ed5d613c0a165e0be7f492d82f03b9f48cc58fc284303967fc1946f9f5"
        );
    }

    #[test]
    fn upstream_test_vector_with_seed_file() {
        let mut config = HashConfig::new("/ws");
        config.seed = Sha256::digest(b"somecontent").into();
        let got = vector_hashes(&config, &[("rule1", "rule1Digest", &[])]);
        assert_eq!(
            got[0].0,
            "0404d80eadcc2dbfe9f0d7935086e1115344a06bd76d4e16af0dfd7b4913ee60"
        );
        assert_eq!(
            got[0].1,
            "ddf7345122667dda1bbbdc813a6d029795b243e729bcfdcd520cde12cac877f1"
        );
    }

    #[test]
    fn cycle_is_reported_with_its_path() {
        let rules = vec![
            prepared("rule1", &[]),
            prepared("rule3", &["rule4"]),
            prepared("rule4", &["rule3"]),
        ];
        let direct = vec![
            ([0; 32], vec![]),
            ([0; 32], vec![(2, 0)]),
            ([0; 32], vec![(1, 0)]),
        ];
        let err = overall_digests(&rules, &direct).unwrap_err().to_string();
        assert!(err.contains("rule3 -> rule4 -> rule3"), "{err}");
    }

    #[test]
    fn deep_chain_does_not_overflow_the_stack() {
        let n = 200_000u32;
        let rules: Vec<_> = (0..n).map(|i| prepared(&format!("r{i}"), &[])).collect();
        let direct: Vec<_> = (0..n)
            .map(|i| ([0u8; 32], if i + 1 < n { vec![(i + 1, 0)] } else { vec![] }))
            .collect();
        assert_eq!(overall_digests(&rules, &direct).unwrap().len(), n as usize);
    }

    fn rule_target(name: &str, inputs: &[&str], outputs: &[&str], visibility: &[&str]) -> Target {
        use bazel_diff_query::proto::AttributeHead;
        use prost::Message;
        let mut attribute = vec![bytes::Bytes::from(
            AttributeHead {
                name: "name".into(),
                r#type: 2,
                string_list_value: vec![],
            }
            .encode_to_vec(),
        )];
        if !visibility.is_empty() {
            attribute.push(bytes::Bytes::from(
                AttributeHead {
                    name: "visibility".into(),
                    r#type: 5,
                    string_list_value: visibility.iter().map(|s| s.to_string()).collect(),
                }
                .encode_to_vec(),
            ));
        }
        let _ = outputs;
        Target {
            r#type: discriminator::RULE,
            rule: Some(Rule {
                name: name.into(),
                rule_class: "genrule".into(),
                attribute,
                rule_input: inputs.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn source_target(name: &str) -> Target {
        Target {
            r#type: discriminator::SOURCE_FILE,
            source_file: Some(SourceFile {
                name: name.into(),
                subinclude: vec![],
            }),
            ..Default::default()
        }
    }

    fn generated_target(name: &str, rule: &str) -> Target {
        Target {
            r#type: discriminator::GENERATED_FILE,
            generated_file: Some(GeneratedFile {
                name: name.into(),
                generating_rule: rule.into(),
            }),
            ..Default::default()
        }
    }

    fn hash_all(
        config: HashConfig,
        targets: Vec<Target>,
    ) -> Result<BTreeMap<String, HashedTarget>, HashError> {
        let mut builder = GraphBuilder::new(Arc::new(config));
        for t in targets {
            builder.add(t);
        }
        Ok(builder
            .finish()?
            .into_iter()
            .map(|t| (t.label.clone(), t))
            .collect())
    }

    fn graph(ws: &std::path::Path, pg_packages: &[&str]) -> BTreeMap<String, HashedTarget> {
        let mut config = HashConfig::new(ws);
        config.track_deps = true;
        hash_all(
            config,
            vec![
                source_target("//a:in.txt"),
                rule_target("//a:gen", &["//a:in.txt"], &["//a:out"], &[]),
                generated_target("//a:out", "//a:gen"),
                rule_target("//b:use", &["//a:out", "//b:use"], &[], &["//b:pg"]),
                Target {
                    r#type: discriminator::PACKAGE_GROUP,
                    package_group: Some(PackageGroup {
                        name: "//b:pg".into(),
                        contained_package: pg_packages.iter().map(|s| s.to_string()).collect(),
                        included_package_group: vec![],
                    }),
                    ..Default::default()
                },
            ],
        )
        .unwrap()
    }

    #[test]
    fn generated_files_share_their_rule_hashes_and_deps_are_tracked() {
        let ws = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(ws.path().join("a")).unwrap();
        std::fs::write(ws.path().join("a/in.txt"), "x").unwrap();
        let g = graph(ws.path(), &["b/..."]);
        let (gen, out, used) = (&g["//a:gen"], &g["//a:out"], &g["//b:use"]);
        assert_eq!((gen.overall, gen.direct), (out.overall, out.direct));
        assert_eq!(out.kind, TargetKind::GeneratedFile);
        assert_eq!(out.deps.as_deref(), Some(&["//a:gen".to_owned()][..]));
        // The self-input is not a dep; the package group named in visibility is.
        assert_eq!(
            used.deps.as_deref(),
            Some(&["//a:out".to_owned(), "//b:pg".to_owned()][..])
        );
        assert_eq!(g["//a:in.txt"].deps, None);

        std::fs::write(ws.path().join("a/in.txt"), "y").unwrap();
        let changed = graph(ws.path(), &["b/..."]);
        assert_ne!(changed["//a:gen"].direct, gen.direct);
        assert_eq!(
            changed["//b:use"].direct, used.direct,
            "source content reaches only direct consumers' direct hash"
        );
        assert_ne!(changed["//b:use"].overall, used.overall);
    }

    #[test]
    fn package_group_change_impacts_rules_that_name_it() {
        let ws = tempfile::tempdir().unwrap();
        let before = graph(ws.path(), &["b/..."]);
        let after = graph(ws.path(), &["b/...", "c/..."]);
        assert_ne!(before["//b:pg"].overall, after["//b:pg"].overall);
        assert_ne!(before["//b:use"].overall, after["//b:use"].overall);
        assert_eq!(before["//a:gen"].overall, after["//a:gen"].overall);
    }

    #[test]
    fn raw_messages_hash_like_decoded_targets() {
        use prost::Message;
        let ws = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(ws.path().join("a")).unwrap();
        std::fs::write(ws.path().join("a/in.txt"), "x").unwrap();
        let targets = vec![
            source_target("//a:in.txt"),
            rule_target("//a:gen", &["//a:in.txt"], &[], &[]),
            generated_target("//a:out", "//a:gen"),
        ];
        let decoded = hash_all(HashConfig::new(ws.path()), targets.clone()).unwrap();
        let mut builder = GraphBuilder::new(Arc::new(HashConfig::new(ws.path())));
        for (index, t) in targets.iter().enumerate() {
            builder.add_message(t.encode_to_vec().into(), index as u64);
        }
        let raw: BTreeMap<_, _> = builder
            .finish()
            .unwrap()
            .into_iter()
            .map(|t| (t.label.clone(), t))
            .collect();
        assert_eq!(raw, decoded);

        // A message that is not a Target fails the run, naming its position.
        let mut builder = GraphBuilder::new(Arc::new(HashConfig::new(ws.path())));
        builder.add_message(targets[0].encode_to_vec().into(), 0);
        builder.add_message(bytes::Bytes::from_static(&[0xff, 0xff]), 1);
        let err = builder.finish().unwrap_err();
        assert!(
            matches!(
                err,
                HashError::Decode(bazel_diff_query::QueryDecodeError::Decode { index: 1, .. })
            ),
            "{err}"
        );
    }

    #[test]
    fn merge_by_label_equals_a_full_sort() {
        let target = |label: String| HashedTarget {
            label,
            kind: TargetKind::Rule,
            overall: [0; 32],
            direct: [0; 32],
            deps: None,
        };
        // Three interleaved lists, one unsorted, long enough for several merge segments.
        let lists: [Vec<HashedTarget>; 3] = std::array::from_fn(|l| {
            (0..3 * MERGE_STEP + 7)
                .map(|i| target(format!("//p{}:t{}", (i * 7919 + l) % 97, i * 3 + l)))
                .collect()
        });
        let mut expected: Vec<String> = lists.iter().flatten().map(|t| t.label.clone()).collect();
        expected.sort();
        let got: Vec<String> = merge_by_label(lists).into_iter().map(|t| t.label).collect();
        assert_eq!(got, expected);
        assert!(merge_by_label([vec![], vec![], vec![]]).is_empty());
    }

    #[test]
    fn missing_generating_rule_fails() {
        let err = hash_all(
            HashConfig::new("/ws"),
            vec![generated_target("//a:out", "//a:gone")],
        )
        .unwrap_err();
        assert!(
            matches!(err, HashError::MissingGeneratingRule { .. }),
            "{err}"
        );
    }

    #[test]
    fn duplicate_labels_first_wins_and_batches_cover_everything() {
        let mut targets: Vec<Target> = (0..2000)
            .map(|i| source_target(&format!("//p:f{i}")))
            .collect();
        targets.extend(
            (0..1500).map(|i| rule_target(&format!("//p:r{i}"), &[&format!("//p:f{i}")], &[], &[])),
        );
        targets.push(source_target("//p:f1"));
        let g = hash_all(HashConfig::new("/nonexistent"), targets).unwrap();
        assert_eq!(g.len(), 3500);
    }
}
