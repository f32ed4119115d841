//! Publishing generate-hashes results in upstream's formats (spec 5.1, 5.2).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use bazel_diff_format::{write_dep_edges, DepEdges, HashFile, Output, TargetHash, TypeTag};
use bazel_diff_hash::HashedTarget;
use rayon::prelude::*;

use crate::generate::GenerateSettings;

/// Lowercase hex of a digest, without allocating.
fn hex_str<'a>(digest: &[u8; 32], buf: &'a mut [u8; 64]) -> &'a str {
    // Both lengths are fixed, and hex digits are ASCII.
    hex::encode_to_slice(digest, buf).expect("64 bytes hold 32 in hex");
    std::str::from_utf8(buf).expect("hex is ASCII")
}

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
    let values: Vec<(&str, TargetHash)> = hashed
        .par_iter()
        .map(|target| {
            let tag = include_type
                .then(|| TypeTag::from_name(target.kind.as_str()))
                .flatten();
            let (mut overall, mut direct) = ([0u8; 64], [0u8; 64]);
            let overall = hex_str(&target.overall, &mut overall);
            let direct = hex_str(&target.direct, &mut direct);
            TargetHash::new(tag, overall, direct)
                .map(|value| (target.label.as_str(), value))
                .with_context(|| format!("hash value of {}", target.label))
        })
        .collect::<Result<_>>()?;
    let file = HashFile {
        hashes: values.into_iter().collect(),
        ..HashFile::default()
    };
    tracing::debug!("hash file built");
    let mut out = Output::from_arg(path)?;
    file.write(&mut out).context("writing the hashes file")?;
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
