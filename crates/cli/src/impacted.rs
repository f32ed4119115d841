//! `get-impacted-targets`: diff two hash files (spec 2.3, 6). Bazel is started only when
//! the Bzlmod module graph changed and the rdeps query is really needed.

use std::path::Path;

use anyhow::{Context, Result};
use bazel_diff_bazel::{Bazel, QueryOutput};
use bazel_diff_format::{
    read_dep_edges, write_impacted_distances, write_impacted_labels, HashFile, Output, ReadError,
    TargetType,
};
use bazel_diff_impact::{
    impacted_targets, impacted_targets_with_distances, rdeps_expression, OutputFilter,
};
use bazel_diff_query::TargetStream;

use crate::args::{comma_set, normalize_path, space_list, ImpactedArgs};
use crate::exit::UsageError;

/// Loads an input file: unreadable is a usage error (exit 2, as upstream), bad content a
/// runtime error (exit 1).
fn load<T>(what: &str, path: &Path, read: impl Fn(&Path) -> Result<T, ReadError>) -> Result<T> {
    read(path).map_err(|e| match e {
        ReadError::Io { .. } => anyhow::Error::new(UsageError(format!("Incorrect {what}: {e}"))),
        ReadError::Parse { .. } => anyhow::Error::new(e).context(format!("Incorrect {what}")),
    })
}

fn target_types(values: &[String]) -> Result<Option<Vec<TargetType>>> {
    let names = comma_set(values);
    if names.is_empty() {
        return Ok(None);
    }
    names
        .iter()
        .map(|n| {
            TargetType::parse(n)
                .map_err(|e| anyhow::Error::new(UsageError(format!("--targetType: {e}"))))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

pub fn run(args: &ImpactedArgs) -> Result<()> {
    // The two files are independent: parse them on two threads.
    let (from, to) = std::thread::scope(|s| {
        let from = s.spawn(|| load("starting hashes", &args.starting_hashes, HashFile::read));
        let to = load("final hashes", &args.final_hashes, HashFile::read);
        (
            from.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
            to,
        )
    });
    let (from, to) = (from?, to?);
    let dep_edges = match &args.dep_edges_file {
        Some(path) => Some(load("dep edges file", path, read_dep_edges)?),
        None => None,
    };
    // Upstream asks Bazel whether Bzlmod is on; a hash file carries a module graph exactly
    // when it was generated with Bzlmod on, so the files answer without starting Bazel.
    let bzlmod = from.module_graph_json.is_some() || to.module_graph_json.is_some();
    let filter = OutputFilter {
        target_types: target_types(&args.target_type)?,
        exclude_external: if args.exclude_external_targets || args.no_exclude_external_targets {
            args.exclude_external_targets
        } else {
            bzlmod
        },
    };
    let bazel = Bazel::new(
        &args.workspace.bazel_path,
        normalize_path(&args.workspace.workspace_path),
    )
    .with_startup_options(space_list(&args.bazel_startup_options));
    let rdeps = |repos: &[String]| rdeps_query(&bazel, repos);
    let mut out = Output::from_arg(args.output.as_deref())?;
    match &dep_edges {
        Some(edges) => {
            let targets = impacted_targets_with_distances(&from, &to, edges, &rdeps, &filter)?;
            write_impacted_distances(&mut out, &targets)
        }
        None => {
            let labels = impacted_targets(&from, &to, &rdeps, &filter)?;
            write_impacted_labels(&mut out, &labels)
        }
    }
    .context("writing the impacted targets")?;
    out.commit()?;
    Ok(())
}

/// The module-change rdeps query (spec 3.12): plain query mode, no `-co`, no keep_going.
fn rdeps_query(bazel: &Bazel, repos: &[String]) -> Result<Vec<String>> {
    let mut process = bazel.start_query(
        &QueryOutput::streamed_query(),
        &rdeps_expression(repos),
        false,
        &[],
        true,
    )?;
    let stdout = process.take_stdout().context("query stdout")?;
    let mut labels = Vec::new();
    for target in TargetStream::new(stdout, process.framing) {
        if let Some(label) = target?.label() {
            labels.push(label.to_owned());
        }
    }
    process.wait()?;
    Ok(labels)
}
