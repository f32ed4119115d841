//! Publishing generate-hashes results in upstream's formats (spec 5.1, 5.2).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use bazel_diff_format::{
    format_hash_entries, write_dep_edges, write_hash_entry_runs, DepEdges, HashEntry, Output,
};
use bazel_diff_hash::HashedTarget;
use rayon::prelude::*;

use crate::generate::GenerateSettings;

/// Hash entries formatted per parallel task.
const ENTRIES_PER_RUN: usize = 8192;
/// A typical entry: a label, two 64-digit hex digests and punctuation.
const BYTES_PER_ENTRY: usize = 176;

/// Writes `bytes` to the file (atomically) or to stdout for `None`/`-`.
pub fn write_bytes(path: Option<&Path>, bytes: &[u8]) -> Result<()> {
    let mut out = Output::from_arg(path)?;
    out.write_all(bytes).context("writing output")?;
    out.commit()?;
    Ok(())
}

/// Writes the hashes file, then the dep-edges file when `-d` was given.
pub fn write_hashes(
    settings: &GenerateSettings,
    hashed: &[HashedTarget],
    path: Option<&Path>,
) -> Result<()> {
    let include_type = settings.flags.include_target_type;
    // Formatted in parallel runs (it is on the critical path after the graph pass); the
    // engine returns targets sorted by label, as the format needs.
    let runs: Vec<Vec<u8>> = hashed
        .par_chunks(ENTRIES_PER_RUN)
        .enumerate()
        .map(|(i, chunk)| {
            let entries = chunk.iter().map(|target| HashEntry {
                label: &target.label,
                target_type: include_type.then(|| target.kind.as_str()),
                overall: &target.overall,
                direct: &target.direct,
            });
            let mut run = Vec::with_capacity(chunk.len() * BYTES_PER_ENTRY);
            format_hash_entries(&mut run, entries, i == 0);
            run
        })
        .collect();
    tracing::debug!("hash file formatted");
    let mut out = Output::from_arg(path)?;
    write_hash_entry_runs(&mut out, &runs).context("writing the hashes file")?;
    out.commit()?;
    tracing::debug!("hash file written");
    if let Some(edges_path) = &settings.dep_edges_file {
        let edges: DepEdges = hashed
            .iter()
            .filter_map(|t| t.deps.clone().map(|deps| (t.label.clone(), deps)))
            .collect();
        let mut out = Output::from_arg(Some(edges_path))?;
        write_dep_edges(&mut out, &edges).context("writing the dep-edges file")?;
        out.commit()?;
    }
    Ok(())
}
