//! `fingerprint` and `warmup`: the snapshot hooks (spec 2.4, 2.5, 7).

use std::path::Path;

use anyhow::{Context, Result};
use bazel_diff_bazel::identity::bazel_identity;
use bazel_diff_fingerprint::{gather, Fingerprint, FingerprintFlags};

use crate::args::{comma_set, space_list, FingerprintArgs, QueryFlags, WarmupArgs};
use crate::generate::{check_workspace, hash_workspace, GenerateSettings};
use crate::output::{write_bytes, write_hashes};

/// The tool version that goes into the fingerprint.
pub const TOOL_VERSION: &str = env!("CARGO_PKG_VERSION");

fn fingerprint_flags(flags: &QueryFlags) -> FingerprintFlags {
    let target_type = comma_set(&flags.target_type);
    FingerprintFlags {
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
    }
}

/// Computes the fingerprint of a workspace for the given flags.
pub fn compute(workspace: &Path, bazel: &Path, flags: &QueryFlags) -> Result<Fingerprint> {
    // Unlike upstream, an unidentifiable Bazel is an error: "unknown" would let different
    // Bazels share snapshots.
    let identity = bazel_identity(bazel, workspace)
        .with_context(|| format!("identifying the Bazel binary {}", bazel.display()))?;
    gather(
        workspace,
        &identity.label,
        TOOL_VERSION,
        &fingerprint_flags(flags),
    )
    .with_context(|| format!("fingerprinting workspace {}", workspace.display()))
}

pub fn run(args: &FingerprintArgs) -> Result<()> {
    let workspace = check_workspace(&args.workspace.workspace_path)?;
    let fingerprint = compute(&workspace, &args.workspace.bazel_path, &args.query)?;
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
    )?;
    let hashed = hash_workspace(&settings)?;
    for path in [&args.base_hashes, &args.fingerprint_output] {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating directory {}", parent.display()))?;
        }
    }
    write_hashes(&settings, &hashed, Some(&args.base_hashes))?;
    write_bytes(
        Some(&args.fingerprint_output),
        fingerprint.to_json_pretty().as_bytes(),
    )
}
