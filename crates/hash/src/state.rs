//! A serialisable snapshot of a computed graph ([`GraphState`]) and the graph-stable
//! incremental update: when only the contents of existing source files changed, their raw
//! digests are re-read and the direct/overall digests recomputed up the reverse edges, with
//! no query at all. The result is byte-identical to a cold run on the same tree.
//!
//! Binary format (all integers little-endian):
//! ```text
//! header: magic "BDGS" | version u32 | body length u64 | SHA-256(body) [32]
//! body:   config digest [32] | seed [32] | flags u8 (1 = track_deps, 2 = use_cquery)
//!         strings:   count u32 | end offset u32 × count | blob length u64 | UTF-8 blob
//!         digests:   count u32 | [32] × count            (seed and soft-digest table)
//!         rules:     count u32 | per rule: label u32, seed u32 (NONE = no seed),
//!                    flags u8 (1 = always affected, 2 = package group, 4 = non-empty
//!                    instantiation stack), input count u32, stack path count u32,
//!                    visibility count u32, visibility-edge count u32, attribute [32],
//!                    direct [32], overall [32]
//!         inputs:    count u32 | per input: string u32, resolution u32 (top 2 bits: 0 nothing,
//!                    1 source, 2 rule, 3 soft digest; low 30 bits the index)
//!         stack paths, visibility, visibility edges: each count u32 | string u32 × count
//!                    (a rule's `.bzl` paths; the labels its `visibility` names besides
//!                    `//visibility:*`; those of them that are inputs only as package-group
//!                    edges)
//!         sources:   count u32 | per source: label u32, package seed u32, subinclude
//!                    count u32, raw [32]
//!         subincludes: count u32 | string u32 × count
//!         generated: count u32 | per file: label u32, rule u32
//!         soft:      count u32 | per label: string u32, digest u32 (NONE: no file found)
//! ```
//! Rules' inputs, stack paths and visibility lists and sources' subincludes are stored
//! consecutively in rule/source order. Stack paths and visibility are what a package-local
//! update ([`crate::GraphBuilder::finish_spliced`]) needs to rebuild the rules it keeps.

use std::path::Path;

use rayon::prelude::*;
use rustc_hash::{FxHashMap, FxHashSet};
use sha2::{Digest as _, Sha256};

use crate::graph::{HashedTarget, TargetKind};
use crate::source::{file_digest_key, FileLocation, SourceHasher};
use crate::{Digest, HashConfig, HashError};

const MAGIC: &[u8; 4] = b"BDGS";
/// Bumped whenever the body layout or its meaning changes.
pub const FORMAT_VERSION: u32 = 2;
const HEADER_LEN: usize = 4 + 4 + 8 + 32;
/// "No entry" in u32 index fields.
pub(crate) const NONE: u32 = u32::MAX;

const TAG_SHIFT: u32 = 30;
const INDEX_MASK: u32 = (1 << TAG_SHIFT) - 1;

/// How one rule input resolved in the cold run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolution {
    /// Nothing but the input text was hashed.
    Nothing,
    /// A source-file target: its raw digest was hashed.
    Source(u32),
    /// A rule (or a generated file of it) other than the rule itself: a dependency.
    Rule(u32),
    /// A soft digest (index into the digest table) was hashed.
    Soft(u32),
}

impl Resolution {
    pub(crate) fn encode(self) -> u32 {
        match self {
            Resolution::Nothing => 0,
            Resolution::Source(i) => (1 << TAG_SHIFT) | i,
            Resolution::Rule(i) => (2 << TAG_SHIFT) | i,
            Resolution::Soft(i) => (3 << TAG_SHIFT) | i,
        }
    }

    fn decode(v: u32) -> Self {
        let i = v & INDEX_MASK;
        match v >> TAG_SHIFT {
            0 => Resolution::Nothing,
            1 => Resolution::Source(i),
            2 => Resolution::Rule(i),
            _ => Resolution::Soft(i),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RuleState {
    pub label: u32,
    /// Index into the digest table of the `.bzl`/package seed mixed in, or [`NONE`].
    pub seed: u32,
    pub always_affected: bool,
    pub package_group: bool,
    /// The instantiation stack was non-empty (`bzl` then lists its `.bzl` paths).
    pub has_stack: bool,
    pub input_start: u32,
    pub input_count: u32,
    pub bzl: Span,
    pub visibility: Span,
    /// Inputs present only as visibility edges to package groups.
    pub vis_added: Span,
    pub attribute: Digest,
    pub direct: Digest,
    pub overall: Digest,
}

/// A run of string ids in one of the per-rule lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Span {
    pub start: u32,
    pub count: u32,
}

impl Span {
    pub fn range(self) -> std::ops::Range<usize> {
        self.start as usize..(self.start + self.count) as usize
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SourceState {
    pub label: u32,
    /// Index into the digest table of the package seed, or [`NONE`].
    pub package_seed: u32,
    pub sub_start: u32,
    pub sub_count: u32,
    pub raw: Digest,
}

/// Errors loading or using a graph state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("graph state: {0}")]
    Corrupt(String),
    #[error("graph state: reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Hash(#[from] HashError),
}

/// Everything needed to recompute a graph's hashes after content-only source changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphState {
    /// Opaque digest of the caller's settings that shape the graph (query flags etc.).
    pub config_digest: Digest,
    pub seed: Digest,
    pub track_deps: bool,
    pub use_cquery: bool,
    pub(crate) strings: String,
    pub(crate) string_ends: Vec<u32>,
    pub(crate) digests: Vec<Digest>,
    pub(crate) rules: Vec<RuleState>,
    /// `(string, encoded resolution)` per rule input, consecutive per rule.
    pub(crate) inputs: Vec<(u32, u32)>,
    pub(crate) bzl_paths: Vec<u32>,
    pub(crate) visibility: Vec<u32>,
    pub(crate) vis_added: Vec<u32>,
    pub(crate) sources: Vec<SourceState>,
    pub(crate) subincludes: Vec<u32>,
    pub(crate) generated: Vec<(u32, u32)>,
    /// Soft-digested labels `(string, digest index or NONE when no file was found)`: files
    /// that matter without being source-file targets.
    pub(crate) soft: Vec<(u32, u32)>,
}

/// Why an incremental update is refused (the caller falls back to a full run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A changed path is not the file of any source-file target.
    UnknownPath(String),
    /// A changed path is also read as a soft digest (`.bzl` seeds, unresolved inputs).
    SoftDigested(String),
    /// A changed path no longer exists (a glob may drop its target).
    Missing(String),
    /// Always-affected rules carry a per-run salt, so no two runs agree anyway.
    AlwaysAffected,
    /// A changed file is an input of a repository rule (`//external:*`): it may change
    /// external repositories and so the graph itself.
    RepositoryInput(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::UnknownPath(p) => write!(f, "{p} is not a known source-file target"),
            Refusal::SoftDigested(p) => {
                write!(f, "{p} is hashed as a .bzl seed or unresolved input")
            }
            Refusal::Missing(p) => write!(f, "{p} was deleted"),
            Refusal::AlwaysAffected => write!(f, "the graph has always-affected rules"),
            Refusal::RepositoryInput(p) => {
                write!(f, "{p} is an input of a repository rule (//external)")
            }
        }
    }
}

/// Interns strings while a state is built.
#[derive(Default)]
pub(crate) struct Interner<'a> {
    ids: FxHashMap<&'a str, u32>,
    strings: String,
    ends: Vec<u32>,
}

impl<'a> Interner<'a> {
    pub fn id(&mut self, s: &'a str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.ends.len() as u32;
        self.strings.push_str(s);
        self.ends.push(self.strings.len() as u32);
        self.ids.insert(s, id);
        id
    }

    pub fn finish(self) -> (String, Vec<u32>) {
        (self.strings, self.ends)
    }
}

/// Interns digests (seeds, soft digests).
#[derive(Default)]
pub(crate) struct DigestTable {
    ids: FxHashMap<Digest, u32>,
    pub digests: Vec<Digest>,
}

impl DigestTable {
    pub fn id(&mut self, d: &Digest) -> u32 {
        *self.ids.entry(*d).or_insert_with(|| {
            self.digests.push(*d);
            (self.digests.len() - 1) as u32
        })
    }
}

pub(crate) fn label_of(input: &str) -> &str {
    input.split_once('|').map_or(input, |(label, _)| label)
}

impl GraphState {
    pub(crate) fn string(&self, id: u32) -> &str {
        let end = self.string_ends[id as usize] as usize;
        let start = match id {
            0 => 0,
            _ => self.string_ends[id as usize - 1] as usize,
        };
        &self.strings[start..end]
    }

    /// Number of rules, source files and generated files.
    pub fn target_count(&self) -> usize {
        self.rules.len() + self.sources.len() + self.generated.len()
    }

    pub(crate) fn rule_inputs(&self, rule: &RuleState) -> &[(u32, u32)] {
        let start = rule.input_start as usize;
        &self.inputs[start..start + rule.input_count as usize]
    }

    /// The hashes of every target, as [`crate::GraphBuilder::finish`] returns them.
    pub fn hashes(&self) -> Vec<HashedTarget> {
        let mut out: Vec<HashedTarget> = Vec::with_capacity(self.target_count());
        out.par_extend(self.rules.par_iter().map(|rule| HashedTarget {
            label: self.string(rule.label).to_owned(),
            kind: TargetKind::Rule,
            overall: rule.overall,
            direct: rule.direct,
            deps: self.track_deps.then(|| {
                self.rule_inputs(rule)
                    .iter()
                    .filter(|(_, r)| matches!(Resolution::decode(*r), Resolution::Rule(_)))
                    .map(|(s, _)| label_of(self.string(*s)).to_owned())
                    .collect()
            }),
        }));
        out.par_extend(self.generated.par_iter().map(|&(label, rule)| {
            let r = &self.rules[rule as usize];
            HashedTarget {
                label: self.string(label).to_owned(),
                kind: TargetKind::GeneratedFile,
                overall: r.overall,
                direct: r.direct,
                deps: self
                    .track_deps
                    .then(|| vec![self.string(r.label).to_owned()]),
            }
        }));
        out.par_extend(self.sources.par_iter().map(|source| {
            let digest = self.source_hash(source);
            HashedTarget {
                label: self.string(source.label).to_owned(),
                kind: TargetKind::SourceFile,
                overall: digest,
                direct: digest,
                deps: None,
            }
        }));
        out.par_sort_unstable_by(|a, b| a.label.cmp(&b.label));
        out
    }

    fn source_hash(&self, source: &SourceState) -> Digest {
        let mut h = Sha256::new();
        h.update(source.raw);
        h.update(self.seed);
        if source.package_seed != NONE {
            h.update(self.digests[source.package_seed as usize]);
        }
        h.finalize().into()
    }

    fn direct_digest(&self, index: usize, salt: &str) -> Digest {
        let rule = &self.rules[index];
        let mut h = Sha256::new();
        h.update(rule.attribute);
        h.update(self.seed);
        if rule.seed != NONE {
            h.update(self.digests[rule.seed as usize]);
        }
        if rule.always_affected {
            h.update(salt.as_bytes());
        }
        for &(input, resolution) in self.rule_inputs(rule) {
            h.update(self.string(input).as_bytes());
            match Resolution::decode(resolution) {
                Resolution::Source(s) => h.update(self.sources[s as usize].raw),
                Resolution::Soft(d) => h.update(self.digests[d as usize]),
                Resolution::Rule(_) | Resolution::Nothing => {}
            }
        }
        h.finalize().into()
    }

    fn overall_digest(&self, index: usize) -> Digest {
        let rule = &self.rules[index];
        let mut h = Sha256::new();
        for &(_, resolution) in self.rule_inputs(rule) {
            if let Resolution::Rule(dep) = Resolution::decode(resolution) {
                h.update(self.rules[dep as usize].overall);
            }
        }
        h.update(rule.direct);
        h.finalize().into()
    }

    /// Maps workspace-relative paths to source indices; refuses paths that are not exactly
    /// the file of a main-repo source target, or that are read as soft digests too.
    pub fn resolve_changed(
        &self,
        config: &HashConfig,
        changed: &[String],
    ) -> Result<Vec<u32>, Refusal> {
        if self.rules.iter().any(|r| r.always_affected) {
            return Err(Refusal::AlwaysAffected);
        }
        let mut by_key: FxHashMap<String, Vec<u32>> = FxHashMap::default();
        let wanted: FxHashSet<&str> = changed.iter().map(String::as_str).collect();
        for (i, source) in self.sources.iter().enumerate() {
            let label = self.string(source.label);
            if let Some(key) = main_repo_key(label) {
                if wanted.contains(key.as_str()) {
                    if let FileLocation::File { key, .. } = file_digest_key(config, label) {
                        by_key.entry(key).or_default().push(i as u32);
                    }
                }
            }
        }
        for &(label, _) in &self.soft {
            if let Some(rest) = soft_rel(self.string(label)) {
                if wanted.contains(rest.as_str()) {
                    return Err(Refusal::SoftDigested(rest));
                }
            }
        }
        let mut out = Vec::new();
        for path in changed {
            match by_key.get(path.as_str()) {
                Some(indices) => out.extend_from_slice(indices),
                None => return Err(Refusal::UnknownPath(path.clone())),
            }
            if std::fs::symlink_metadata(config.workspace.join(path)).is_err() {
                return Err(Refusal::Missing(path.clone()));
            }
        }
        out.sort_unstable();
        out.dedup();
        let changed_sources: FxHashSet<u32> = out.iter().copied().collect();
        for rule in &self.rules {
            if !self.string(rule.label).starts_with("//external:") {
                continue;
            }
            for &(_, resolution) in self.rule_inputs(rule) {
                if let Resolution::Source(s) = Resolution::decode(resolution) {
                    if changed_sources.contains(&s) {
                        let label = self.string(self.sources[s as usize].label);
                        return Err(Refusal::RepositoryInput(label.to_owned()));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Re-reads the given sources' raw digests, recomputes the direct digests of rules that
    /// take them as inputs and the overall digests of everything above them, and returns the
    /// full hash list (same shape and order as [`crate::GraphBuilder::finish`]). The state is
    /// updated in place, so it describes the new tree afterwards.
    pub fn update_sources(
        &mut self,
        config: &HashConfig,
        changed: &[u32],
    ) -> Result<Vec<HashedTarget>, HashError> {
        let hasher = SourceHasher::new(config);
        let fresh: Vec<(u32, Digest)> = changed
            .par_iter()
            .map(|&i| {
                let source = &self.sources[i as usize];
                let subs: Vec<String> = self.subincludes
                    [source.sub_start as usize..(source.sub_start + source.sub_count) as usize]
                    .iter()
                    .map(|&s| self.string(s).to_owned())
                    .collect();
                Ok((i, hasher.raw_digest(self.string(source.label), &subs)?))
            })
            .collect::<Result<_, HashError>>()?;
        let mut touched: FxHashSet<u32> = FxHashSet::default();
        for (i, raw) in fresh {
            if self.sources[i as usize].raw != raw {
                self.sources[i as usize].raw = raw;
                touched.insert(i);
            }
        }
        if touched.is_empty() {
            return Ok(self.hashes());
        }
        // Rules reading a touched source directly, and the reverse dependency edges.
        let n = self.rules.len();
        let mut dirty_direct = Vec::new();
        let mut rdeps: Vec<Vec<u32>> = vec![Vec::new(); n];
        for (r, rule) in self.rules.iter().enumerate() {
            let mut reads = false;
            for &(_, resolution) in self.rule_inputs(rule) {
                match Resolution::decode(resolution) {
                    Resolution::Source(s) if touched.contains(&s) => reads = true,
                    Resolution::Rule(d) => rdeps[d as usize].push(r as u32),
                    _ => {}
                }
            }
            if reads {
                dirty_direct.push(r as u32);
            }
        }
        let salt = config.salt.clone();
        let directs: Vec<(u32, Digest)> = dirty_direct
            .par_iter()
            .map(|&r| (r, self.direct_digest(r as usize, &salt)))
            .collect();
        // Everything reachable over reverse edges from a rule whose direct digest changed.
        let mut dirty = vec![false; n];
        let mut queue = Vec::new();
        for (r, direct) in directs {
            if self.rules[r as usize].direct != direct {
                self.rules[r as usize].direct = direct;
                if !dirty[r as usize] {
                    dirty[r as usize] = true;
                    queue.push(r);
                }
            }
        }
        while let Some(r) = queue.pop() {
            for &up in &rdeps[r as usize] {
                if !dirty[up as usize] {
                    dirty[up as usize] = true;
                    queue.push(up);
                }
            }
        }
        // Recompute dirty overall digests in dependency order (iterative post-order).
        let mut done = vec![false; n];
        let mut stack: Vec<(u32, u32)> = Vec::new();
        for root in 0..n {
            if !dirty[root] || done[root] {
                continue;
            }
            stack.push((root as u32, 0));
            while let Some(&mut (node, ref mut next)) = stack.last_mut() {
                let inputs = self.rule_inputs(&self.rules[node as usize]);
                let mut pushed = false;
                while let Some(&(_, resolution)) = inputs.get(*next as usize) {
                    *next += 1;
                    if let Resolution::Rule(dep) = Resolution::decode(resolution) {
                        if dirty[dep as usize] && !done[dep as usize] {
                            stack.push((dep, 0));
                            pushed = true;
                            break;
                        }
                    }
                }
                if pushed {
                    continue;
                }
                let overall = self.overall_digest(node as usize);
                self.rules[node as usize].overall = overall;
                done[node as usize] = true;
                stack.pop();
            }
        }
        Ok(self.hashes())
    }

    /// Encodes the state (header + body).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(
            self.strings.len() + self.rules.len() * 120 + self.inputs.len() * 8 + 1024,
        );
        b.extend_from_slice(&self.config_digest);
        b.extend_from_slice(&self.seed);
        b.push(u8::from(self.track_deps) | (u8::from(self.use_cquery) << 1));
        put_u32(&mut b, self.string_ends.len() as u32);
        for e in &self.string_ends {
            put_u32(&mut b, *e);
        }
        b.extend_from_slice(&(self.strings.len() as u64).to_le_bytes());
        b.extend_from_slice(self.strings.as_bytes());
        put_u32(&mut b, self.digests.len() as u32);
        for d in &self.digests {
            b.extend_from_slice(d);
        }
        put_u32(&mut b, self.rules.len() as u32);
        for r in &self.rules {
            put_u32(&mut b, r.label);
            put_u32(&mut b, r.seed);
            b.push(
                u8::from(r.always_affected)
                    | (u8::from(r.package_group) << 1)
                    | (u8::from(r.has_stack) << 2),
            );
            put_u32(&mut b, r.input_count);
            put_u32(&mut b, r.bzl.count);
            put_u32(&mut b, r.visibility.count);
            put_u32(&mut b, r.vis_added.count);
            b.extend_from_slice(&r.attribute);
            b.extend_from_slice(&r.direct);
            b.extend_from_slice(&r.overall);
        }
        put_pairs(&mut b, &self.inputs);
        for list in [&self.bzl_paths, &self.visibility, &self.vis_added] {
            put_u32(&mut b, list.len() as u32);
            for s in list {
                put_u32(&mut b, *s);
            }
        }
        put_u32(&mut b, self.sources.len() as u32);
        for s in &self.sources {
            put_u32(&mut b, s.label);
            put_u32(&mut b, s.package_seed);
            put_u32(&mut b, s.sub_count);
            b.extend_from_slice(&s.raw);
        }
        put_u32(&mut b, self.subincludes.len() as u32);
        for s in &self.subincludes {
            put_u32(&mut b, *s);
        }
        put_pairs(&mut b, &self.generated);
        put_pairs(&mut b, &self.soft);

        let mut out = Vec::with_capacity(HEADER_LEN + b.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(b.len() as u64).to_le_bytes());
        out.extend_from_slice(&Sha256::digest(&b));
        out.extend_from_slice(&b);
        out
    }

    /// Decodes and verifies a state written by [`GraphState::encode`].
    pub fn decode(bytes: &[u8]) -> Result<GraphState, StateError> {
        let corrupt = |m: &str| StateError::Corrupt(m.to_owned());
        if bytes.len() < HEADER_LEN || &bytes[..4] != MAGIC {
            return Err(corrupt("not a bazel-diff graph state (bad magic)"));
        }
        let version = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(StateError::Corrupt(format!(
                "format version {version}, this tool reads {FORMAT_VERSION}"
            )));
        }
        let len = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let body = &bytes[HEADER_LEN..];
        if body.len() as u64 != len {
            return Err(corrupt("truncated (body length mismatch)"));
        }
        if Sha256::digest(body).as_slice() != &bytes[16..48] {
            return Err(corrupt("checksum mismatch"));
        }
        let mut r = Reader { buf: body };
        let config_digest = r.digest()?;
        let seed = r.digest()?;
        let flags = r.u8()?;
        let string_count = r.u32()? as usize;
        let string_ends = r.u32s(string_count)?;
        let blob_len = usize::try_from(r.u64()?).map_err(|_| corrupt("blob too large"))?;
        let strings = std::str::from_utf8(r.take(blob_len)?)
            .map_err(|_| corrupt("strings are not UTF-8"))?
            .to_owned();
        let mut prev = 0;
        for &e in &string_ends {
            if e < prev || e as usize > strings.len() || !strings.is_char_boundary(e as usize) {
                return Err(corrupt("bad string table"));
            }
            prev = e;
        }
        let digest_count = r.u32()? as usize;
        let raw = r.take(
            digest_count
                .checked_mul(32)
                .ok_or_else(|| corrupt("size"))?,
        )?;
        let digests: Vec<Digest> = raw
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect();
        let rule_count = r.u32()? as usize;
        const RULE_LEN: usize = 4 + 4 + 1 + 4 * 4 + 96;
        let raw = r.take(
            rule_count
                .checked_mul(RULE_LEN)
                .ok_or_else(|| corrupt("size"))?,
        )?;
        let mut rules = Vec::with_capacity(rule_count);
        // Running starts of the inputs and of the three per-rule string lists.
        let mut starts = [0u32; 4];
        let mut next = |which: usize, count: u32| -> Result<Span, StateError> {
            let start = starts[which];
            starts[which] = start
                .checked_add(count)
                .ok_or_else(|| corrupt("count overflow"))?;
            Ok(Span { start, count })
        };
        for c in raw.chunks_exact(RULE_LEN) {
            let inputs = next(0, le32(&c[9..13]))?;
            rules.push(RuleState {
                label: le32(&c[0..4]),
                seed: le32(&c[4..8]),
                always_affected: c[8] & 1 != 0,
                package_group: c[8] & 2 != 0,
                has_stack: c[8] & 4 != 0,
                input_start: inputs.start,
                input_count: inputs.count,
                bzl: next(1, le32(&c[13..17]))?,
                visibility: next(2, le32(&c[17..21]))?,
                vis_added: next(3, le32(&c[21..25]))?,
                attribute: c[25..57].try_into().expect("32"),
                direct: c[57..89].try_into().expect("32"),
                overall: c[89..121].try_into().expect("32"),
            });
        }
        let inputs = r.pairs()?;
        if inputs.len() != starts[0] as usize {
            return Err(corrupt("input count mismatch"));
        }
        let mut lists = Vec::with_capacity(3);
        for total in &starts[1..] {
            let count = r.u32()? as usize;
            if count != *total as usize {
                return Err(corrupt("rule list count mismatch"));
            }
            lists.push(r.u32s(count)?);
        }
        let vis_added = lists.pop().unwrap_or_default();
        let visibility = lists.pop().unwrap_or_default();
        let bzl_paths = lists.pop().unwrap_or_default();
        let source_count = r.u32()? as usize;
        const SOURCE_LEN: usize = 12 + 32;
        let raw = r.take(
            source_count
                .checked_mul(SOURCE_LEN)
                .ok_or_else(|| corrupt("size"))?,
        )?;
        let mut sources = Vec::with_capacity(source_count);
        let mut sub_start = 0u32;
        for c in raw.chunks_exact(SOURCE_LEN) {
            let sub_count = le32(&c[8..12]);
            sources.push(SourceState {
                label: le32(&c[0..4]),
                package_seed: le32(&c[4..8]),
                sub_start,
                sub_count,
                raw: c[12..44].try_into().expect("32"),
            });
            sub_start = sub_start
                .checked_add(sub_count)
                .ok_or_else(|| corrupt("subinclude overflow"))?;
        }
        let sub_total = r.u32()? as usize;
        let subincludes = r.u32s(sub_total)?;
        if sub_total != sub_start as usize {
            return Err(corrupt("subinclude count mismatch"));
        }
        let generated = r.pairs()?;
        let soft = r.pairs()?;
        if !r.buf.is_empty() {
            return Err(corrupt("trailing bytes"));
        }
        let state = GraphState {
            config_digest,
            seed,
            track_deps: flags & 1 != 0,
            use_cquery: flags & 2 != 0,
            strings,
            string_ends,
            digests,
            rules,
            inputs,
            bzl_paths,
            visibility,
            vis_added,
            sources,
            subincludes,
            generated,
            soft,
        };
        state.validate().map_err(StateError::Corrupt)?;
        Ok(state)
    }

    /// Bounds checks on every index, so a state that passed the checksum but was written by a
    /// buggy encoder cannot panic later.
    fn validate(&self) -> Result<(), String> {
        let (ns, nd) = (self.string_ends.len() as u32, self.digests.len() as u32);
        let (nr, nsrc) = (self.rules.len() as u32, self.sources.len() as u32);
        let opt = |i: u32, n: u32| i == NONE || i < n;
        let rules_ok = self.rules.iter().all(|r| r.label < ns && opt(r.seed, nd));
        let inputs_ok = self.inputs.iter().all(|&(s, res)| {
            s < ns
                && match Resolution::decode(res) {
                    Resolution::Nothing => res == 0,
                    Resolution::Source(i) => i < nsrc,
                    Resolution::Rule(i) => i < nr,
                    Resolution::Soft(i) => i < nd,
                }
        });
        let sources_ok = self
            .sources
            .iter()
            .all(|s| s.label < ns && opt(s.package_seed, nd));
        let rest_ok = self.subincludes.iter().all(|&s| s < ns)
            && [&self.bzl_paths, &self.visibility, &self.vis_added]
                .iter()
                .all(|list| list.iter().all(|&s| s < ns))
            && self.generated.iter().all(|&(l, r)| l < ns && r < nr)
            && self.soft.iter().all(|&(l, d)| l < ns && opt(d, nd));
        if rules_ok && inputs_ok && sources_ok && rest_ok {
            Ok(())
        } else {
            Err("index out of range".into())
        }
    }

    /// Writes the state atomically (temp file in the same directory, then rename).
    pub fn write_to(&self, path: &Path) -> std::io::Result<()> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp{}",
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        let result = (|| {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&self.encode())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Reads and verifies a state file.
    pub fn read_from(path: &Path) -> Result<GraphState, StateError> {
        let bytes = std::fs::read(path).map_err(|source| StateError::Io {
            path: path.display().to_string(),
            source,
        })?;
        GraphState::decode(&bytes)
    }
}

/// The workspace-relative path of a main-repo source label (spec 4.3), before Latin-1 repair.
pub(crate) fn main_repo_key(label: &str) -> Option<String> {
    let rest = ["@@//", "@//", "//"]
        .iter()
        .find_map(|p| label.strip_prefix(p))?;
    Some(rest.strip_prefix(':').unwrap_or(rest).replace(':', "/"))
}

/// The relative path a soft digest reads (spec 4.4: only the first `:` is replaced).
pub(crate) fn soft_rel(label: &str) -> Option<String> {
    let rest = ["@@//", "@//", "//"]
        .iter()
        .find_map(|p| label.strip_prefix(p))?;
    Some(rest.replacen(':', "/", 1))
}

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_pairs(b: &mut Vec<u8>, pairs: &[(u32, u32)]) {
    put_u32(b, pairs.len() as u32);
    for &(x, y) in pairs {
        put_u32(b, x);
        put_u32(b, y);
    }
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().expect("4 bytes"))
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        if self.buf.len() < n {
            return Err(StateError::Corrupt("truncated body".into()));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, StateError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, StateError> {
        Ok(le32(self.take(4)?))
    }
    fn u64(&mut self) -> Result<u64, StateError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn digest(&mut self) -> Result<Digest, StateError> {
        Ok(self.take(32)?.try_into().expect("32"))
    }
    fn u32s(&mut self, n: usize) -> Result<Vec<u32>, StateError> {
        let raw = self.take(
            n.checked_mul(4)
                .ok_or_else(|| StateError::Corrupt("size".into()))?,
        )?;
        Ok(raw.chunks_exact(4).map(le32).collect())
    }
    fn pairs(&mut self) -> Result<Vec<(u32, u32)>, StateError> {
        let n = self.u32()? as usize;
        let raw = self.take(
            n.checked_mul(8)
                .ok_or_else(|| StateError::Corrupt("size".into()))?,
        )?;
        Ok(raw
            .chunks_exact(8)
            .map(|c| (le32(&c[..4]), le32(&c[4..])))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GraphBuilder;
    use bazel_diff_query::proto::{discriminator, GeneratedFile, Rule, SourceFile, Target};
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    fn rule(name: &str, inputs: &[&str]) -> Target {
        Target {
            r#type: discriminator::RULE,
            rule: Some(Rule {
                name: name.into(),
                rule_class: "genrule".into(),
                rule_input: inputs.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn targets() -> Vec<Target> {
        let source = |n: &str| Target {
            r#type: discriminator::SOURCE_FILE,
            source_file: Some(SourceFile {
                name: n.into(),
                subinclude: vec![],
            }),
            ..Default::default()
        };
        vec![
            source("//a:x.txt"),
            source("//a:y.txt"),
            source("//b:z.txt"),
            rule("//a:gen", &["//a:x.txt", "//a:y.txt"]),
            Target {
                r#type: discriminator::GENERATED_FILE,
                generated_file: Some(GeneratedFile {
                    name: "//a:out".into(),
                    generating_rule: "//a:gen".into(),
                }),
                ..Default::default()
            },
            rule("//b:use", &["//a:out", "//b:z.txt", "//b:loose.txt"]),
            rule("//c:top", &["//b:use", "//a:gen"]),
            rule("//c:other", &["//b:z.txt"]),
            rule("//external:repo", &["//a:y.txt"]),
            rule("//d:late", &["//d:later.txt"]),
        ]
    }

    fn run(ws: &Path, with_state: bool) -> (Vec<HashedTarget>, Option<GraphState>) {
        let mut config = HashConfig::new(ws);
        config.track_deps = true;
        let mut builder = GraphBuilder::new(Arc::new(config));
        for t in targets() {
            builder.add(t);
        }
        if with_state {
            let (h, s) = builder.finish_with_state().unwrap();
            (h, Some(s))
        } else {
            (builder.finish().unwrap(), None)
        }
    }

    #[test]
    fn round_trip_and_incremental_match_cold_runs() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path();
        for (p, c) in [
            ("a/x.txt", "1"),
            ("a/y.txt", "2"),
            ("b/z.txt", "3"),
            ("b/loose.txt", "4"),
        ] {
            std::fs::create_dir_all(ws.join(p).parent().unwrap()).unwrap();
            std::fs::write(ws.join(p), c).unwrap();
        }
        let (cold, state) = run(ws, true);
        let state = state.unwrap();
        assert_eq!(state.hashes(), cold);
        let bytes = state.encode();
        let mut loaded = GraphState::decode(&bytes).unwrap();
        assert_eq!(loaded, state);

        let config = HashConfig::new(ws);
        std::fs::write(ws.join("a/x.txt"), "changed").unwrap();
        let mode = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(ws.join("b/z.txt"), mode).unwrap();
        let changed = vec!["a/x.txt".to_owned(), "b/z.txt".to_owned()];
        let indices = loaded.resolve_changed(&config, &changed).unwrap();
        let incremental = loaded.update_sources(&config, &indices).unwrap();
        let (cold2, _) = run(ws, false);
        assert_ne!(cold2, cold);
        assert_eq!(incremental, cold2);

        assert_eq!(
            loaded.resolve_changed(&config, &["b/loose.txt".into()]),
            Err(Refusal::SoftDigested("b/loose.txt".into()))
        );
        assert_eq!(
            loaded.resolve_changed(&config, &["d/later.txt".into()]),
            Err(Refusal::SoftDigested("d/later.txt".into()))
        );
        assert_eq!(
            loaded.resolve_changed(&config, &["a/y.txt".into()]),
            Err(Refusal::RepositoryInput("//a:y.txt".into()))
        );
        assert_eq!(
            loaded.resolve_changed(&config, &["b/new.txt".into()]),
            Err(Refusal::UnknownPath("b/new.txt".into()))
        );
    }

    #[test]
    fn splicing_packages_back_in_matches_the_cold_run() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path();
        for (p, c) in [("a/x.txt", "1"), ("a/y.txt", "2"), ("b/z.txt", "3")] {
            std::fs::create_dir_all(ws.join(p).parent().unwrap()).unwrap();
            std::fs::write(ws.join(p), c).unwrap();
        }
        let (cold, state) = run(ws, true);
        let state = GraphState::decode(&state.unwrap().encode()).unwrap();
        let mut config = HashConfig::new(ws);
        config.track_deps = true;
        let config = Arc::new(config);
        // Package //a re-queried (with a file changed meanwhile), //b's source rehashed.
        std::fs::write(ws.join("a/x.txt"), "changed").unwrap();
        std::fs::write(ws.join("b/z.txt"), "changed too").unwrap();
        let mut builder = GraphBuilder::new(config.clone());
        for t in targets() {
            if crate::package_of_label(t.label().unwrap()) == "//a" {
                builder.add(t);
            }
        }
        let rehash: std::collections::HashSet<String> = ["b/z.txt".to_owned()].into();
        let (spliced, spliced_state) = builder
            .finish_spliced(
                &state,
                |l| crate::package_of_label(l) != "//a",
                &rehash,
                true,
            )
            .unwrap();
        let (cold2, _) = run(ws, false);
        assert_ne!(cold2, cold);
        assert_eq!(spliced, cold2);
        assert_eq!(spliced_state.unwrap().hashes(), cold2);
    }

    #[test]
    fn corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let (_, state) = run(dir.path(), true);
        let mut bytes = state.unwrap().encode();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let err = GraphState::decode(&bytes).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
        assert!(GraphState::decode(&bytes[..10]).is_err());
        bytes[0] = b'X';
        assert!(GraphState::decode(&bytes).is_err());
    }
}
