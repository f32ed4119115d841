//! Command-line flags, compatible with upstream's picocli interface (spec section 2).
//!
//! Upstream has single-dash multi-letter options (`-so`, `-co`, `-sh`, `-fh`, `-tt`) that
//! clap cannot express; [`normalize_args`] rewrites them to their long names first.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Upstream's multi-letter short options and their long names.
const MULTI_LETTER_SHORTS: [(&str, &str); 5] = [
    ("-so", "--bazelStartupOptions"),
    ("-co", "--bazelCommandOptions"),
    ("-sh", "--startingHashes"),
    ("-fh", "--finalHashes"),
    ("-tt", "--targetType"),
];

/// Rewrites `-so x` / `-so=x` to `--bazelStartupOptions x` / `--bazelStartupOptions=x`.
pub fn normalize_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut after_separator = false;
    for arg in args {
        if after_separator {
            out.push(arg);
            continue;
        }
        if arg == "--" {
            after_separator = true;
            out.push(arg);
            continue;
        }
        let text = arg.to_string_lossy();
        let rewritten = MULTI_LETTER_SHORTS.iter().find_map(|(short, long)| {
            if text == *short {
                Some(OsString::from(*long))
            } else {
                text.strip_prefix(short)
                    .and_then(|rest| rest.strip_prefix('='))
                    .map(|value| OsString::from(format!("{long}={value}")))
            }
        });
        out.push(rewritten.unwrap_or(arg));
    }
    out
}

/// Splits on single spaces, dropping only trailing empty pieces (Java's `split(" ")`).
pub fn space_list(values: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for value in values {
        let mut pieces: Vec<&str> = value.split(' ').collect();
        while pieces.last() == Some(&"") {
            pieces.pop();
        }
        out.extend(pieces.into_iter().map(str::to_owned));
    }
    out
}

/// Splits on commas into an insertion-ordered set, dropping trailing empties.
pub fn comma_set(values: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for value in values {
        let mut pieces: Vec<&str> = value.split(',').collect();
        while pieces.last() == Some(&"") {
            pieces.pop();
        }
        for piece in pieces {
            if !out.iter().any(|p| p == piece) {
                out.push(piece.to_owned());
            }
        }
    }
    out
}

/// Lexically normalises a path (`a/./b/../c` to `a/c`) without making it absolute.
pub fn normalize_path(path: &std::path::Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

#[derive(Parser, Debug)]
#[command(
    name = "bazel-diff",
    version,
    about = "Finds the Bazel targets impacted between two revisions.",
    long_about = "Finds the Bazel targets impacted between two revisions.\n\n\
        Run `generate-hashes` at each revision, then `get-impacted-targets` on the two hash \
        files. Compatible with Tinder/bazel-diff's flags and file formats.\n\n\
        Exit codes: 0 success, 1 runtime failure (Bazel failed, bad input file, I/O), \
        2 usage error (unknown flag, missing or unreadable required input).",
    subcommand_required = true,
    arg_required_else_help = true
)]
pub struct Cli {
    /// Log progress and decisions to stderr (debug logs with `-vv`).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Hash every target of the workspace at its current checkout.
    #[command(name = "generate-hashes")]
    GenerateHashes(GenerateHashesArgs),
    /// Diff two hash files and print the impacted targets.
    #[command(name = "get-impacted-targets")]
    GetImpactedTargets(ImpactedArgs),
    /// Print the snapshot cache key: everything that can change query results.
    Fingerprint(FingerprintArgs),
    /// Record-side snapshot hook: generate base hashes and the fingerprint; exit 0 means
    /// the Bazel server is warm and the state is safe to snapshot.
    Warmup(WarmupArgs),
}

/// Flags that decide what is queried and how it is hashed (shared by generate-hashes,
/// warmup and fingerprint).
#[derive(Args, Debug, Clone, Default)]
pub struct QueryFlags {
    /// Startup options for every Bazel call, split on spaces (repeatable), e.g.
    /// `-so "--output_user_root=/tmp/x"`.
    #[arg(
        long = "bazelStartupOptions",
        value_name = "OPTIONS",
        allow_hyphen_values = true
    )]
    pub bazel_startup_options: Vec<String>,
    /// One startup option, taken whole (not split on spaces, so paths may contain them);
    /// repeatable, placed after `-so`'s. Not part of the fingerprint: it says where Bazel
    /// keeps its state, not what the query returns.
    #[arg(
        long = "bazelStartupOption",
        value_name = "OPTION",
        allow_hyphen_values = true
    )]
    pub bazel_startup_option: Vec<String>,
    /// Extra options for `bazel query`, split on spaces (repeatable).
    #[arg(
        long = "bazelCommandOptions",
        value_name = "OPTIONS",
        allow_hyphen_values = true
    )]
    pub bazel_command_options: Vec<String>,
    /// Extra options for `bazel cquery`, split on spaces (repeatable; needs --useCquery).
    #[arg(
        long = "cqueryCommandOptions",
        value_name = "OPTIONS",
        allow_hyphen_values = true
    )]
    pub cquery_command_options: Vec<String>,
    /// Build the graph with `cquery` instead of `query`.
    #[arg(long = "useCquery", overrides_with = "no_use_cquery")]
    pub use_cquery: bool,
    #[arg(long = "no-useCquery", hide = true)]
    pub no_use_cquery: bool,
    /// Custom cquery universe (default `deps(//...:all-targets)`).
    #[arg(long = "cqueryExpression", value_name = "EXPR")]
    pub cquery_expression: Option<String>,
    /// Prefix each hash with its target type (`Rule#...`).
    #[arg(long = "includeTargetType", overrides_with = "no_include_target_type")]
    pub include_target_type: bool,
    #[arg(long = "no-includeTargetType", hide = true)]
    pub no_include_target_type: bool,
    /// Keep only these target types in the output (comma list of Rule, SourceFile,
    /// GeneratedFile).
    #[arg(long = "targetType", value_name = "TYPES")]
    pub target_type: Vec<String>,
    /// External repos (with `@`) whose targets are hashed one by one (comma list).
    #[arg(long = "fineGrainedHashExternalRepos", value_name = "REPOS")]
    pub fine_grained_hash_external_repos: Vec<String>,
    /// Attribute names left out of rule hashes (comma list).
    #[arg(long = "ignoredRuleHashingAttributes", value_name = "NAMES")]
    pub ignored_rule_hashing_attributes: Vec<String>,
    /// Do not query `//external:all-targets`.
    #[arg(
        long = "excludeExternalTargets",
        overrides_with = "no_exclude_external_targets"
    )]
    pub exclude_external_targets: bool,
    #[arg(long = "no-excludeExternalTargets", hide = true)]
    pub no_exclude_external_targets: bool,
    /// Pass `--keep_going` to Bazel and accept its partial-result exit code 3.
    #[arg(short = 'k', long = "keep_going", overrides_with = "no_keep_going")]
    pub keep_going: bool,
    #[arg(long = "no-keep_going", hide = true)]
    pub no_keep_going: bool,
}

impl QueryFlags {
    /// Every startup option: `-so` lists split on spaces, then the unsplit ones.
    pub fn startup_options(&self) -> Vec<String> {
        let mut options = space_list(&self.bazel_startup_options);
        options.extend(self.bazel_startup_option.iter().cloned());
        options
    }
}

#[derive(Args, Debug, Clone)]
pub struct WorkspaceArgs {
    /// Workspace root: cwd of every Bazel call and base of source paths.
    #[arg(short = 'w', long = "workspacePath", value_name = "PATH")]
    pub workspace_path: PathBuf,
    /// Bazel binary (looked up on PATH when bare).
    #[arg(
        short = 'b',
        long = "bazelPath",
        value_name = "PATH",
        default_value = "bazel"
    )]
    pub bazel_path: PathBuf,
}

/// generate-hashes inputs that change hashes but not the query; the fingerprint covers
/// their contents too, so it accepts them all.
#[derive(Args, Debug, Clone, Default)]
pub struct HashingInputArgs {
    /// File with one repo per line (alternative to --fineGrainedHashExternalRepos).
    #[arg(long = "fineGrainedHashExternalReposFile", value_name = "FILE")]
    pub fine_grained_hash_external_repos_file: Option<PathBuf>,
    /// File listing seed files (paths relative to the current directory) whose contents
    /// are mixed into every hash.
    #[arg(short = 's', long = "seed-filepaths", value_name = "FILE")]
    pub seed_filepaths: Option<PathBuf>,
    /// JSON map from path to a precomputed content hash used instead of the file bytes.
    #[arg(long = "contentHashPath", value_name = "FILE")]
    pub content_hash_path: Option<PathBuf>,
    /// Experimental: file of workspace-relative paths; only their contents are read.
    #[arg(short = 'm', long = "modified-filepaths", value_name = "FILE")]
    pub modified_filepaths: Option<PathBuf>,
    /// Query expression removed from the universe with `except`.
    #[arg(long = "excludeTargetsQuery", value_name = "EXPR")]
    pub exclude_targets_query: Option<String>,
    /// Rules with any of these tags (comma list) are impacted on every run.
    #[arg(long = "alwaysAffectedTags", value_name = "TAGS")]
    pub always_affected_tags: Vec<String>,
    /// Also write the dependency-edge JSON (needed for distances).
    #[arg(short = 'd', long = "depEdgesFile", value_name = "FILE")]
    pub dep_edges_file: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct GenerateHashesArgs {
    #[command(flatten)]
    pub workspace: WorkspaceArgs,
    #[command(flatten)]
    pub query: QueryFlags,
    #[command(flatten)]
    pub inputs: HashingInputArgs,
    #[command(flatten)]
    pub incremental: IncrementalArgs,
    /// Where to write the hashes JSON (default: stdout).
    #[arg(value_name = "outputPath")]
    pub output_path: Option<PathBuf>,
}

/// The graph state for incremental runs (issue 6: graph-stable and package-local paths).
#[derive(Args, Debug, Clone, Default)]
pub struct IncrementalArgs {
    /// Also write the computed graph in compact binary form (atomically) for later
    /// `--incremental-from` runs.
    #[arg(long = "write-graph-state", value_name = "FILE")]
    pub write_graph_state: Option<PathBuf>,
    /// Start from this graph state instead of querying the whole workspace: no query when
    /// only contents of existing source files changed, a query of the affected packages when
    /// BUILD files, `.bzl` files or the set of files changed (falls back to the full query
    /// otherwise, saying why on stderr).
    #[arg(
        long = "incremental-from",
        value_name = "FILE",
        requires = "incremental_changed"
    )]
    pub incremental_from: Option<PathBuf>,
    /// File listing the workspace-relative paths changed since the state was written, one
    /// per line.
    #[arg(
        long = "incremental-changed",
        value_name = "FILE",
        requires = "incremental_from"
    )]
    pub incremental_changed: Option<PathBuf>,
    /// After an incremental run, also run the full query and fail (exit 1, naming the first
    /// differing target) unless both hash lists are identical: the canary for trusting the
    /// incremental paths on a repository.
    #[arg(long = "incremental-verify", requires = "incremental_from")]
    pub incremental_verify: bool,
}

#[derive(Args, Debug, Clone)]
pub struct WarmupArgs {
    #[command(flatten)]
    pub generate: GenerateHashesArgs,
    /// Where the base hashes go (replaces the output path).
    #[arg(
        long = "base-hashes",
        value_name = "FILE",
        default_value = "/snap/base_hashes.json"
    )]
    pub base_hashes: PathBuf,
    /// Where the fingerprint JSON goes.
    #[arg(
        long = "fingerprint-output",
        value_name = "FILE",
        default_value = "/snap/fingerprint.json"
    )]
    pub fingerprint_output: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct FingerprintArgs {
    #[command(flatten)]
    pub workspace: WorkspaceArgs,
    #[command(flatten)]
    pub query: QueryFlags,
    #[command(flatten)]
    pub inputs: HashingInputArgs,
    /// Output file (`-` or absent: stdout).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Print only the key, not the JSON with every component.
    #[arg(long = "key-only", conflicts_with = "json")]
    pub key_only: bool,
    /// Print the JSON with every component and its digest (the default, as upstream).
    #[arg(long = "json")]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ImpactedArgs {
    /// Workspace and Bazel: only used when Bazel is really needed (module-graph changes).
    #[command(flatten)]
    pub workspace: WorkspaceArgs,
    /// Startup options for the Bazel calls made here (split on spaces, repeatable).
    #[arg(
        long = "bazelStartupOptions",
        value_name = "OPTIONS",
        allow_hyphen_values = true
    )]
    pub bazel_startup_options: Vec<String>,
    /// Hashes JSON of the base revision.
    #[arg(long = "startingHashes", value_name = "FILE")]
    pub starting_hashes: PathBuf,
    /// Hashes JSON of the final revision.
    #[arg(long = "finalHashes", value_name = "FILE")]
    pub final_hashes: PathBuf,
    /// Dependency-edge JSON of the final revision: switches output to JSON with distances.
    #[arg(short = 'd', long = "depEdgesFile", value_name = "FILE")]
    pub dep_edges_file: Option<PathBuf>,
    /// Only report these target types (comma list; needs types in the final hashes).
    #[arg(long = "targetType", value_name = "TYPES")]
    pub target_type: Vec<String>,
    /// Output file (default: stdout).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Drop `//external:` labels from the output (default: on under Bzlmod).
    #[arg(
        long = "excludeExternalTargets",
        overrides_with = "no_exclude_external_targets"
    )]
    pub exclude_external_targets: bool,
    #[arg(long = "no-excludeExternalTargets", hide = true)]
    pub no_exclude_external_targets: bool,
    /// Accepted for compatibility; has no effect (as upstream).
    #[arg(long = "noBazelrc", overrides_with = "no_no_bazelrc", hide = true)]
    pub no_bazelrc: bool,
    #[arg(long = "no-noBazelrc", hide = true)]
    pub no_no_bazelrc: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn multi_letter_shorts_are_rewritten() {
        let got = normalize_args(os(&[
            "x", "-so", "--a=b", "-co=--c", "-tt", "Rule", "--", "-sh",
        ]));
        assert_eq!(
            got,
            os(&[
                "x",
                "--bazelStartupOptions",
                "--a=b",
                "--bazelCommandOptions=--c",
                "--targetType",
                "Rule",
                "--",
                "-sh"
            ])
        );
    }

    #[test]
    fn space_list_keeps_inner_empties() {
        assert_eq!(
            space_list(&["a  b ".into(), "c".into()]),
            ["a", "", "b", "c"]
        );
        assert!(space_list(&[String::new()]).is_empty());
    }

    #[test]
    fn comma_set_is_ordered_and_unique() {
        assert_eq!(comma_set(&["b,a,".into(), "a,c".into()]), ["b", "a", "c"]);
    }

    #[test]
    fn paths_are_normalized_lexically() {
        assert_eq!(normalize_path("a/./b/../c".as_ref()), PathBuf::from("a/c"));
        assert_eq!(normalize_path("./".as_ref()), PathBuf::from("."));
    }

    #[test]
    fn negatable_flags() {
        let cli = Cli::try_parse_from(normalize_args(os(&[
            "bazel-diff",
            "generate-hashes",
            "-w",
            "/ws",
            "--useCquery",
            "--no-useCquery",
            "-k",
            "-so",
            "--x=1 --y",
        ])))
        .unwrap();
        let Command::GenerateHashes(args) = cli.command else {
            panic!()
        };
        // The later of a negatable pair wins.
        assert!(!args.query.use_cquery && args.query.keep_going);
        assert_eq!(
            space_list(&args.query.bazel_startup_options),
            ["--x=1", "--y"]
        );
    }
}
