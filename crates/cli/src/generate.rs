//! `generate-hashes`: query the workspace and hash every target (spec 2.2, 3, 4).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bazel_diff_bazel::{Bazel, BazelError, QueryExpression, QueryOutput};
use bazel_diff_hash::{GraphBuilder, GraphState, HashConfig, HashedTarget, RepoRoots};
use bazel_diff_query::{FrameReader, QueryDecodeError, TargetStream};
use sha2::{Digest as _, Sha256};

use crate::args::{comma_set, normalize_path, space_list, GenerateHashesArgs, QueryFlags};
use crate::exit::UsageError;
use crate::progress::Progress;

/// The resolved settings of one generate-hashes run.
pub struct GenerateSettings {
    pub bazel: Bazel,
    pub flags: QueryFlags,
    pub command_options: Vec<String>,
    pub cquery_options: Vec<String>,
    pub fine_grained_repos: Vec<String>,
    pub exclude_targets_query: Option<String>,
    pub target_types: Option<HashSet<String>>,
    pub dep_edges_file: Option<PathBuf>,
    pub hash_config: Arc<HashConfig>,
    /// Identifies the settings a graph state must have been written with.
    pub graph_config_digest: [u8; 32],
}

/// Reads a text file of entries, one per line.
pub fn read_lines(path: &Path, what: &str) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {what} file {}", path.display()))?;
    Ok(text.lines().map(str::to_owned).collect())
}

pub fn global_seed(list: Option<&Path>) -> Result<[u8; 32]> {
    let mut h = Sha256::new();
    if let Some(list) = list {
        let mut seen = HashSet::new();
        for (n, line) in read_lines(list, "seed list")?.into_iter().enumerate() {
            if line.is_empty() {
                bail!(UsageError(format!(
                    "seed list {} has a blank line {} (each line must name a seed file)",
                    list.display(),
                    n + 1
                )));
            }
            if seen.insert(line.clone()) {
                let content = std::fs::read(&line).with_context(|| {
                    format!("reading seed file {line} listed in {}", list.display())
                })?;
                h.update(content);
            }
        }
    }
    Ok(h.finalize().into())
}

fn target_types(values: &[String]) -> Result<Option<HashSet<String>>> {
    let types = comma_set(values);
    if types.is_empty() {
        return Ok(None);
    }
    for t in &types {
        if !matches!(t.as_str(), "Rule" | "SourceFile" | "GeneratedFile") {
            bail!(UsageError(format!(
                "unknown target type {t:?} in --targetType (expected Rule, SourceFile or GeneratedFile)"
            )));
        }
    }
    Ok(Some(types.into_iter().collect()))
}

/// Validates the workspace path given with `-w`.
pub fn check_workspace(path: &Path) -> Result<PathBuf> {
    let path = normalize_path(path);
    if !path.is_dir() {
        bail!(UsageError(format!(
            "workspace {} does not exist or is not a directory",
            path.display()
        )));
    }
    Ok(path)
}

struct LazyRepoRoots {
    bazel: Bazel,
    output_base: std::sync::OnceLock<Option<PathBuf>>,
    roots: std::sync::Mutex<HashMap<String, PathBuf>>,
}

impl RepoRoots for LazyRepoRoots {
    fn root(&self, repo: &str) -> PathBuf {
        if let Some(root) = self.roots.lock().ok().and_then(|r| r.get(repo).cloned()) {
            return root;
        }
        let output_base = self
            .output_base
            .get_or_init(|| match self.bazel.output_base() {
                Ok(base) => Some(base),
                Err(e) => {
                    tracing::warn!("cannot find the output base for external repos: {e}");
                    None
                }
            });
        let root = match output_base {
            Some(base) => self.bazel.external_repo_root(base, repo),
            None => PathBuf::from("/nonexistent-output-base/external").join(repo),
        };
        if let Ok(mut roots) = self.roots.lock() {
            roots.insert(repo.to_owned(), root.clone());
        }
        root
    }
}

impl GenerateSettings {
    pub fn from_args(args: &GenerateHashesArgs) -> Result<Self> {
        let workspace = check_workspace(&args.workspace.workspace_path)?;
        let bazel = Bazel::new(&args.workspace.bazel_path, &workspace)
            .with_startup_options(args.query.startup_options());
        let mut fine_grained_repos = comma_set(&args.query.fine_grained_hash_external_repos);
        if let Some(file) = &args.inputs.fine_grained_hash_external_repos_file {
            if !fine_grained_repos.is_empty() {
                bail!(UsageError(
                    "Error: --fineGrainedHashExternalRepos and --fineGrainedHashExternalReposFile are mutually exclusive".into()
                ));
            }
            for line in read_lines(file, "fine-grained repos")? {
                let line = line.trim();
                if !line.is_empty() && !fine_grained_repos.iter().any(|r| r == line) {
                    fine_grained_repos.push(line.to_owned());
                }
            }
        }
        let mut hash_config = HashConfig::new(&workspace);
        hash_config.seed = global_seed(args.inputs.seed_filepaths.as_deref())?;
        if let Some(path) = &args.inputs.content_hash_path {
            hash_config.content_hashes = bazel_diff_format::read_content_hashes(path)
                .map_err(|e| UsageError(format!("--contentHashPath: {e}")))?;
        }
        if let Some(path) = &args.inputs.modified_filepaths {
            hash_config.modified_files = read_lines(path, "modified file list")?
                .into_iter()
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let mut joined = workspace.as_os_str().to_owned();
                    joined.push("/");
                    joined.push(l);
                    PathBuf::from(joined)
                })
                .collect();
        }
        hash_config.fine_grained_repos = fine_grained_repos.clone();
        hash_config.ignored_attributes = comma_set(&args.query.ignored_rule_hashing_attributes)
            .into_iter()
            .collect();
        hash_config.always_affected_tags = comma_set(&args.inputs.always_affected_tags)
            .into_iter()
            .collect();
        if !hash_config.always_affected_tags.is_empty() {
            hash_config.salt = random_salt();
        }
        hash_config.use_cquery = args.query.use_cquery;
        hash_config.track_deps = args.inputs.dep_edges_file.is_some();
        if !fine_grained_repos.is_empty() {
            hash_config.repo_roots = Some(Box::new(LazyRepoRoots {
                bazel: bazel.clone(),
                output_base: Default::default(),
                roots: Default::default(),
            }));
        }
        Ok(GenerateSettings {
            bazel,
            command_options: space_list(&args.query.bazel_command_options),
            cquery_options: space_list(&args.query.cquery_command_options),
            fine_grained_repos,
            exclude_targets_query: args.inputs.exclude_targets_query.clone(),
            target_types: target_types(&args.query.target_type)?,
            dep_edges_file: args.inputs.dep_edges_file.clone(),
            flags: args.query.clone(),
            graph_config_digest: graph_config_digest(args, &hash_config),
            hash_config: Arc::new(hash_config),
        })
    }
}

/// A per-run salt for always-affected rules; upstream uses a random UUID's text.
fn random_salt() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    format!("{:016x}-{:x}", h.finish(), std::process::id())
}

/// Runs one query and feeds its targets to `builder`, filtered by `keep`.
pub(crate) fn stream_query(
    settings: &GenerateSettings,
    output: &QueryOutput,
    expression: &str,
    options: &[String],
    builder: &mut GraphBuilder,
    keep: Option<&HashSet<String>>,
    progress: &Progress,
) -> std::result::Result<(), QueryFailure> {
    let mut process = settings
        .bazel
        .start_query(output, expression, settings.flags.keep_going, options, true)
        .map_err(QueryFailure::Bazel)?;
    let stdout = process.take_stdout().expect("stdout is piped");
    let mut frames = FrameReader::new(stdout, process.framing);
    let decode_error = |e: QueryDecodeError| QueryFailure::Decode(e.into());
    if keep.is_none() && !settings.hash_config.use_cquery && process.framing.messages_are_targets()
    {
        // Nothing to filter or de-duplicate by label: the pool decodes, and this thread only
        // reads, so it takes as little CPU as possible from Bazel's serializer.
        loop {
            let index = frames.index();
            let Some(message) = frames.next_message().map_err(decode_error)? else {
                break;
            };
            if index == 0 {
                tracing::debug!("first target arrived");
            }
            progress.inc();
            builder.add_message(message, index);
        }
    } else {
        for target in TargetStream::from_frames(frames) {
            let target = target.map_err(decode_error)?;
            if let Some(keep) = keep {
                if !target.label().is_some_and(|l| keep.contains(l)) {
                    continue;
                }
            }
            progress.inc();
            builder.add(target);
        }
    }
    tracing::debug!("query output ended");
    process.wait().map_err(QueryFailure::Bazel)
}

pub(crate) enum QueryFailure {
    Bazel(BazelError),
    Decode(anyhow::Error),
}

impl QueryFailure {
    pub(crate) fn into_error(self) -> anyhow::Error {
        match self {
            QueryFailure::Bazel(e) => anyhow::Error::new(e),
            QueryFailure::Decode(e) => e.context("decoding the query output"),
        }
    }
}

/// Query mode (spec 3.6, with the 3.8 fallback and a `proto` fallback for Bazels without
/// `streamed_proto`).
fn query_mode(settings: &GenerateSettings, progress: &Progress) -> Result<GraphBuilder> {
    let mut expression = QueryExpression {
        include_external: !settings.flags.exclude_external_targets,
        fine_grained_repos: settings.fine_grained_repos.clone(),
        exclude_query: settings.exclude_targets_query.clone(),
    };
    let mut output = QueryOutput::streamed_query();
    loop {
        let mut builder = GraphBuilder::new(settings.hash_config.clone());
        let text = expression.query_mode();
        match stream_query(
            settings,
            &output,
            &text,
            &settings.command_options,
            &mut builder,
            None,
            progress,
        ) {
            Ok(()) => return Ok(builder),
            Err(QueryFailure::Bazel(e))
                if e.is_external_unavailable() && expression.include_external =>
            {
                tracing::warn!(
                    "//external is not available in this workspace; querying without it"
                );
                expression.include_external = false;
            }
            Err(QueryFailure::Bazel(e))
                if output.framing == bazel_diff_query::Framing::StreamedTargets
                    && matches!(&e, BazelError::Failed { stderr_tail, .. } if stderr_tail.contains("streamed_proto")) =>
            {
                tracing::warn!("this Bazel has no --output=streamed_proto; using --output=proto");
                output = QueryOutput::proto_query();
            }
            Err(failure) => return Err(failure.into_error()),
        }
        progress.reset();
    }
}

/// Starlark formatter of the cquery compatibility pass (spec 3.7): prints the labels of
/// targets compatible with the target platform.
const COMPATIBILITY_STARLARK: &str = r#"def format(target):
    p = providers(target)
    if p == None or "IncompatiblePlatformProvider" in p:
        return ""
    r = repr(target)
    if "<alias target" in r:
        return r.split(" ")[2]
    return str(target.label)
"#;

/// Cquery mode (spec 3.7): a compatibility pass, the main pass filtered by it, then a plain
/// query for `//external` (first occurrence of a label wins).
fn cquery_mode(settings: &GenerateSettings, progress: &Progress) -> Result<GraphBuilder> {
    let features = crate::features::cquery_features(&settings.bazel);
    let expression = QueryExpression {
        include_external: !settings.flags.exclude_external_targets,
        fine_grained_repos: Vec::new(),
        exclude_query: settings.exclude_targets_query.clone(),
    };
    let text = expression.cquery_mode(settings.flags.cquery_expression.as_deref());
    let compatible = compatible_targets(settings, &text, features.consistent_labels)?;
    let mut builder = GraphBuilder::new(settings.hash_config.clone());
    let output = QueryOutput::cquery(features.streamed_proto, features.consistent_labels);
    stream_query(
        settings,
        &output,
        &text,
        &settings.cquery_options,
        &mut builder,
        Some(&compatible),
        progress,
    )
    .map_err(QueryFailure::into_error)?;
    if expression.include_external {
        let external = "'//external:all-targets'";
        match stream_query(
            settings,
            &QueryOutput::streamed_query(),
            external,
            &settings.command_options,
            &mut builder,
            None,
            progress,
        ) {
            Ok(()) => {}
            Err(QueryFailure::Bazel(e)) if e.is_external_unavailable() => {
                tracing::warn!("//external is not available in this workspace");
            }
            Err(failure) => return Err(failure.into_error()),
        }
    }
    Ok(builder)
}

fn compatible_targets(
    settings: &GenerateSettings,
    expression: &str,
    consistent_labels: bool,
) -> Result<HashSet<String>> {
    let mut starlark = tempfile::Builder::new()
        .prefix("bazel-diff")
        .suffix(".cquery")
        .tempfile()?;
    std::io::Write::write_all(&mut starlark, COMPATIBILITY_STARLARK.as_bytes())?;
    let output = QueryOutput::starlark_cquery(starlark.path(), consistent_labels);
    let mut process = settings.bazel.start_query(
        &output,
        expression,
        settings.flags.keep_going,
        &settings.cquery_options,
        true,
    )?;
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut process.take_stdout().expect("stdout is piped"),
        &mut text,
    )
    .context("reading the cquery compatibility pass")?;
    process.wait()?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Runs the query (or cquery) and hashes every target; with `want_state` also returns the
/// graph state (unfiltered by `--targetType`, with its config digest filled in).
pub fn hash_workspace_with_state(
    settings: &GenerateSettings,
    want_state: bool,
) -> Result<(Vec<HashedTarget>, Option<GraphState>)> {
    let started = Instant::now();
    let progress = Progress::counter("querying and hashing", "targets");
    let builder = if settings.flags.use_cquery {
        cquery_mode(settings, &progress)?
    } else {
        query_mode(settings, &progress)?
    };
    crate::workers::full_speed();
    let queried = started.elapsed();
    let (mut hashed, state) = if want_state {
        let (hashed, mut state) = builder.finish_with_state()?;
        state.config_digest = settings.graph_config_digest;
        (hashed, Some(state))
    } else {
        (builder.finish()?, None)
    };
    progress.finish();
    tracing::info!(
        "hashed {} targets (query stream {:.2?}, graph pass {:.2?})",
        hashed.len(),
        queried,
        started.elapsed() - queried
    );
    settings.filter_types(&mut hashed);
    Ok((hashed, state))
}

impl GenerateSettings {
    /// Applies `--targetType`.
    pub fn filter_types(&self, hashed: &mut Vec<HashedTarget>) {
        if let Some(types) = &self.target_types {
            hashed.retain(|t| types.contains(t.kind.as_str()));
        }
    }
}

/// Digest of every setting that shapes the graph or its hashes besides the tree itself: a
/// graph state is only reused by a run whose digest matches.
fn graph_config_digest(args: &GenerateHashesArgs, config: &HashConfig) -> [u8; 32] {
    fn sorted<'a>(items: impl IntoIterator<Item = &'a String>) -> Vec<&'a String> {
        let mut v: Vec<&String> = items.into_iter().collect();
        v.sort();
        v
    }
    let q = &args.query;
    let mut content: Vec<(&String, &String)> = config.content_hashes.iter().collect();
    content.sort();
    let mut modified: Vec<&Path> = config.modified_files.iter().map(PathBuf::as_path).collect();
    modified.sort();
    let text = format!(
        "{}|{}|{:?}|{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
        env!("CARGO_PKG_VERSION"),
        bazel_diff_hash::ALGORITHM_VERSION,
        hex::encode(config.seed),
        q.use_cquery,
        q.exclude_external_targets,
        q.keep_going,
        space_list(&q.bazel_command_options),
        space_list(&q.cquery_command_options),
        q.cquery_expression,
        config.fine_grained_repos,
        sorted(&config.ignored_attributes),
        sorted(&config.always_affected_tags),
        args.inputs.exclude_targets_query,
        config.track_deps,
        content,
        modified,
        args.workspace.bazel_path,
    );
    Sha256::digest(text.as_bytes()).into()
}

pub fn run(args: &GenerateHashesArgs) -> Result<()> {
    let settings = GenerateSettings::from_args(args)?;
    let inc = &args.incremental;
    let want_state = inc.write_graph_state.is_some();
    let mut result = None;
    if let (Some(state_path), Some(changed_path)) =
        (&inc.incremental_from, &inc.incremental_changed)
    {
        match crate::incremental::try_incremental(&settings, state_path, changed_path, want_state)?
        {
            Ok((mut hashed, state)) => {
                settings.filter_types(&mut hashed);
                if inc.incremental_verify {
                    let (full, _) = hash_workspace_with_state(&settings, false)?;
                    crate::incremental::verify(&hashed, &full)?;
                    eprintln!("bazel-diff: incremental: verified: identical to the full query");
                }
                result = Some((hashed, state));
            }
            Err(reason) => {
                eprintln!("bazel-diff: incremental: full query: {reason}");
            }
        }
    }
    let (hashed, state) = match result {
        Some(done) => done,
        None => hash_workspace_with_state(&settings, want_state)?,
    };
    crate::output::write_hashes(&settings, &hashed, args.output_path.as_deref())?;
    if let (Some(path), Some(state)) = (&inc.write_graph_state, &state) {
        state
            .write_to(path)
            .with_context(|| format!("writing the graph state {}", path.display()))?;
    }
    bazel_diff_hash::keep_until_exit((hashed, state));
    Ok(())
}
