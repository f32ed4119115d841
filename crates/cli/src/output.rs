//! Publishing generate-hashes results in upstream's formats (spec 5.1, 5.2).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use bazel_diff_format::{write_dep_edges, write_hash_entries, DepEdges, HashEntry, Output};
use bazel_diff_hash::HashedTarget;

use crate::generate::GenerateSettings;

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
    // The engine returns targets sorted by label, as the writer needs.
    let entries = hashed.iter().map(|target| HashEntry {
        label: &target.label,
        target_type: include_type.then(|| target.kind.as_str()),
        overall: &target.overall,
        direct: &target.direct,
    });
    tracing::debug!("hash file built");
    let mut out = Output::from_arg(path)?;
    write_hash_entries(&mut out, entries).context("writing the hashes file")?;
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
