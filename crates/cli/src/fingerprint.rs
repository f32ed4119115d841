//! `fingerprint` and `warmup`: the snapshot hooks (spec 2.4, 2.5, 7).

use std::path::Path;

use anyhow::{Context, Result};
use bazel_diff_bazel::identity::bazel_identity;
use bazel_diff_fingerprint::{gather, Fingerprint, FingerprintFlags};

use std::collections::BTreeMap;

use crate::args::{
    comma_set, space_list, FingerprintArgs, HashingInputArgs, QueryFlags, WarmupArgs,
};
use crate::generate::{check_workspace, global_seed, hash_workspace_with_state, GenerateSettings};
use crate::output::{write_bytes, write_hashes};

/// The tool version that goes into the fingerprint: the release and the hashing algorithm.
fn tool_version() -> String {
    format!(
        "{} (hash algorithm {})",
        env!("CARGO_PKG_VERSION"),
        bazel_diff_hash::ALGORITHM_VERSION
    )
}

fn read_input(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
}

/// Contents and values of the hashing inputs, for the `hashingInputs` component.
fn hashing_inputs(inputs: &HashingInputArgs) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut map = BTreeMap::new();
    if let Some(list) = &inputs.seed_filepaths {
        map.insert("seed".into(), global_seed(Some(list))?.to_vec());
    }
    if let Some(path) = &inputs.content_hash_path {
        map.insert(
            "contentHashPath".into(),
            read_input(path, "--contentHashPath")?,
        );
    }
    if let Some(path) = &inputs.fine_grained_hash_external_repos_file {
        map.insert(
            "fineGrainedHashExternalReposFile".into(),
            read_input(path, "--fineGrainedHashExternalReposFile")?,
        );
    }
    if let Some(path) = &inputs.modified_filepaths {
        map.insert(
            "modifiedFilepaths".into(),
            read_input(path, "--modified-filepaths")?,
        );
    }
    if let Some(query) = &inputs.exclude_targets_query {
        map.insert("excludeTargetsQuery".into(), query.clone().into_bytes());
    }
    let tags = comma_set(&inputs.always_affected_tags);
    if !tags.is_empty() {
        map.insert("alwaysAffectedTags".into(), tags.join(",").into_bytes());
    }
    Ok(map)
}

fn fingerprint_flags(flags: &QueryFlags, inputs: &HashingInputArgs) -> Result<FingerprintFlags> {
    let target_type = comma_set(&flags.target_type);
    Ok(FingerprintFlags {
        bazel_startup_options: space_list(&flags.bazel_startup_options),
        bazel_command_options: space_list(&flags.bazel_command_options),
        cquery_command_options: space_list(&flags.cquery_command_options),
        use_cquery: flags.use_cquery,
        include_target_type: flags.include_target_type,
        exclude_external_targets: flags.exclude_external_targets,
        keep_going: flags.keep_going,
        cquery_expression: flags.cquery_expression.clone(),
        target_type: (!target_type.is_empty()).then_some(target_type),
        fine_grained_hash_external_repos: comma_set(&flags.fine_grained_hash_external_repos),
        ignored_rule_hashing_attributes: comma_set(&flags.ignored_rule_hashing_attributes),
        hashing_inputs: hashing_inputs(inputs)?,
    })
}

/// Computes the fingerprint of a workspace for the given flags.
pub fn compute(
    workspace: &Path,
    bazel: &Path,
    flags: &QueryFlags,
    inputs: &HashingInputArgs,
) -> Result<Fingerprint> {
    let flags = fingerprint_flags(flags, inputs)?;
    // Unlike upstream, an unidentifiable Bazel is an error: "unknown" would let different
    // Bazels share snapshots.
    let identity = bazel_identity(bazel, workspace)
        .with_context(|| format!("identifying the Bazel binary {}", bazel.display()))?;
    gather(workspace, &identity.label, &tool_version(), &flags)
        .with_context(|| format!("fingerprinting workspace {}", workspace.display()))
}

pub fn run(args: &FingerprintArgs) -> Result<()> {
    let workspace = check_workspace(&args.workspace.workspace_path)?;
    let fingerprint = compute(
        &workspace,
        &args.workspace.bazel_path,
        &args.query,
        &args.inputs,
    )?;
    let text = if args.key_only {
        format!("{}\n", fingerprint.fingerprint)
    } else {
        fingerprint.to_json_pretty()
    };
    write_bytes(args.output.as_deref(), text.as_bytes())
}

/// Generates the base hashes exactly as `generate-hashes` would, then the fingerprint;
/// both files are published atomically and exit 0 means both are complete.
pub fn warmup(args: &WarmupArgs) -> Result<()> {
    let settings = GenerateSettings::from_args(&args.generate)?;
    // Computed first so a Bazel or rc-file problem fails before the long query; written
    // last so a fingerprint file always means the base hashes beside it are complete.
    let fingerprint = compute(
        &settings.bazel.workspace,
        &settings.bazel.binary,
        &args.generate.query,
        &args.generate.inputs,
    )?;
    let state_path = args.generate.incremental.write_graph_state.as_ref();
    let (hashed, state) = hash_workspace_with_state(&settings, state_path.is_some())?;
    for path in [&args.base_hashes, &args.fingerprint_output] {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating directory {}", parent.display()))?;
        }
    }
    write_hashes(&settings, &hashed, Some(&args.base_hashes))?;
    if let (Some(path), Some(state)) = (state_path, state) {
        state
            .write_to(path)
            .with_context(|| format!("writing the graph state {}", path.display()))?;
    }
    write_bytes(
        Some(&args.fingerprint_output),
        fingerprint.to_json_pretty().as_bytes(),
    )
}
