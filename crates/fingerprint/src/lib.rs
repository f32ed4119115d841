//! The snapshot cache key ("fingerprint", spec 7; `fingerprint.json`, spec 5.7): one SHA-256
//! over everything that can change what `generate-hashes` would query, so a warmed-up snapshot is
//! reused only where a cold run would see the same inputs.
//!
//! # Components
//! Each component is the lowercase hex SHA-256 of a byte stream with no separators:
//!
//! | component | stream |
//! |---|---|
//! | `bazelDiffVersion` | the tool version |
//! | `bazelVersion` | the Bazel identity label (`bazel-diff-bazel`'s `identity`) |
//! | `moduleLock` | `absent`, or `present` then the bytes of `MODULE.bazel.lock` |
//! | `bazelrc` | for each rc file by path: path, bytes |
//! | `flags` | for each of the 11 canonical flags by key: key, value |
//! | `moduleBazel` | like `moduleLock`, for `MODULE.bazel` |
//! | `workspaceFiles` | for `WORKSPACE`, `WORKSPACE.bazel`, `WORKSPACE.bzlmod`: name, then the 64-hex `moduleLock`-style digest of that file |
//! | `bazelignore` | like `moduleLock`, for `.bazelignore` |
//!
//! `fingerprint` hashes `name || hex` of every component, sorted by name as Java sorts strings.
//!
//! # Knowing differences from upstream 37.0.0
//! * The first five components are upstream's, byte for byte, with one extension: `bazelrc`
//!   follows `import`/`try-import` recursively (upstream reads one level), cycle-safe, paths
//!   lexically normalised, files outside the workspace keyed by absolute path (upstream: `../..`).
//!   For a `.bazelrc` whose imports are in the workspace and import nothing further, the value
//!   equals upstream's.
//! * `moduleBazel`, `workspaceFiles` and `bazelignore` are ours: they change the build graph
//!   without touching any upstream input. They follow the upstream five in `components`, and
//!   being part of `fingerprint` they make our key differ from upstream's, so a snapshot recorded
//!   by upstream never matches ours (a cold run, never a wrong reuse).
//! * Where Bazel reports no release label, `bazelVersion` hashes a digest of the installation
//!   instead of upstream's shared `unknown`.

mod bazelrc;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use bazel_diff_format::cmp_utf16;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

const BAZEL_DIFF_VERSION: &str = "bazelDiffVersion";
const BAZEL_VERSION: &str = "bazelVersion";
const MODULE_LOCK: &str = "moduleLock";
const BAZELRC: &str = "bazelrc";
const FLAGS: &str = "flags";
const MODULE_BAZEL: &str = "moduleBazel";
const WORKSPACE_FILES: &str = "workspaceFiles";
const BAZELIGNORE: &str = "bazelignore";
const HASHING_INPUTS: &str = "hashingInputs";

/// The files behind `workspaceFiles`, in the order they are hashed.
const WORKSPACE_FILE_NAMES: [&str; 3] = ["WORKSPACE", "WORKSPACE.bazel", "WORKSPACE.bzlmod"];

#[derive(Debug, thiserror::Error)]
pub enum FingerprintError {
    #[error("cannot open workspace {}: {source}", .path.display())]
    Workspace {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid fingerprint JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid fingerprint JSON: {0}")]
    Shape(&'static str),
}

/// The 11 query-affecting flag values that go into the key (spec 2.4, 7).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FingerprintFlags {
    pub bazel_startup_options: Vec<String>,
    pub bazel_command_options: Vec<String>,
    pub cquery_command_options: Vec<String>,
    pub use_cquery: bool,
    pub cquery_expression: Option<String>,
    pub include_target_type: bool,
    /// `-tt`; `None` when not given.
    pub target_type: Option<Vec<String>>,
    /// As given by the user, before the repo auto-expansion of spec 3.5.
    pub fine_grained_hash_external_repos: Vec<String>,
    pub ignored_rule_hashing_attributes: Vec<String>,
    pub exclude_external_targets: bool,
    pub keep_going: bool,
    /// Inputs that change hashes without changing the query (seed file contents,
    /// `--contentHashPath`, `--excludeTargetsQuery`, ...), by name. Upstream leaves them out
    /// of the key, so stored base hashes could silently disagree with a cold run (finding F8);
    /// they form our `hashingInputs` component and are not among the 11 flags.
    pub hashing_inputs: BTreeMap<String, Vec<u8>>,
}

impl FingerprintFlags {
    /// The canonical strings: lists space-joined in order, sets sorted, deduplicated and
    /// comma-joined, booleans `true`/`false`, missing values empty.
    pub fn canonical(&self) -> BTreeMap<String, String> {
        let list = |items: &[String]| items.join(" ");
        let set = |items: &[String]| {
            let mut sorted: Vec<&str> = items.iter().map(String::as_str).collect();
            sorted.sort_by(|a, b| cmp_utf16(a, b));
            sorted.dedup();
            sorted.join(",")
        };
        [
            ("bazelStartupOptions", list(&self.bazel_startup_options)),
            ("bazelCommandOptions", list(&self.bazel_command_options)),
            ("cqueryCommandOptions", list(&self.cquery_command_options)),
            ("useCquery", self.use_cquery.to_string()),
            (
                "cqueryExpression",
                self.cquery_expression.clone().unwrap_or_default(),
            ),
            ("includeTargetType", self.include_target_type.to_string()),
            (
                "targetType",
                self.target_type.as_deref().map_or_else(String::new, set),
            ),
            (
                "fineGrainedHashExternalRepos",
                set(&self.fine_grained_hash_external_repos),
            ),
            (
                "ignoredRuleHashingAttributes",
                set(&self.ignored_rule_hashing_attributes),
            ),
            (
                "excludeExternalTargets",
                self.exclude_external_targets.to_string(),
            ),
            ("keepGoing", self.keep_going.to_string()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect()
    }
}

/// A computed (or read back) fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// 64 lowercase hex.
    pub fingerprint: String,
    /// `(name, hex)` in `fingerprint.json` order: upstream's five, then ours.
    pub components: Vec<(String, String)>,
    /// The canonical flag strings.
    pub flags: BTreeMap<String, String>,
}

impl Fingerprint {
    pub fn component(&self, name: &str) -> Option<&str> {
        self.components
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, hex)| hex.as_str())
    }

    /// `fingerprint.json`: pretty JSON (2-space indent) plus a trailing newline.
    pub fn to_json_pretty(&self) -> String {
        let mut root = Map::new();
        root.insert(
            "fingerprint".into(),
            Value::String(self.fingerprint.clone()),
        );
        root.insert(
            "components".into(),
            string_object(self.components.iter().map(|(k, v)| (k, v))),
        );
        root.insert("flags".into(), string_object(self.flags.iter()));
        format!("{:#}\n", Value::Object(root))
    }

    /// Reads `fingerprint.json` back, ours or upstream's (which lacks our extra components).
    pub fn from_json(text: &str) -> Result<Self, FingerprintError> {
        let root: Value = serde_json::from_str(text)?;
        let strings = |key: &str, shape: &'static str| {
            root.get(key)
                .and_then(Value::as_object)
                .ok_or(FingerprintError::Shape(shape))?
                .iter()
                .map(|(k, v)| {
                    let v = v.as_str().ok_or(FingerprintError::Shape(shape))?;
                    Ok((k.clone(), v.to_string()))
                })
                .collect::<Result<Vec<_>, FingerprintError>>()
        };
        Ok(Self {
            fingerprint: root
                .get("fingerprint")
                .and_then(Value::as_str)
                .ok_or(FingerprintError::Shape("`fingerprint` must be a string"))?
                .to_string(),
            components: strings("components", "`components` must be an object of strings")?,
            flags: strings("flags", "`flags` must be an object of strings")?
                .into_iter()
                .collect(),
        })
    }
}

fn string_object<'a>(pairs: impl Iterator<Item = (&'a String, &'a String)>) -> Value {
    Value::Object(
        pairs
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// Reads the workspace's inputs and computes the fingerprint. `identity_label` is the Bazel
/// identity label, `tool_version` bazel-diff's version (`unknown` if missing, as upstream).
pub fn gather(
    workspace: &Path,
    identity_label: &str,
    tool_version: &str,
    flags: &FingerprintFlags,
) -> Result<Fingerprint, FingerprintError> {
    // Absolute and symlink-free, so `%workspace%` and relative imports resolve one way only.
    let workspace = workspace
        .canonicalize()
        .map_err(|source| FingerprintError::Workspace {
            path: workspace.to_path_buf(),
            source,
        })?;
    let file = |name: &str| read_optional(&workspace.join(name));
    let workspace_files = WORKSPACE_FILE_NAMES
        .iter()
        .map(|name| Ok((*name, file(name)?)))
        .collect::<Result<_, FingerprintError>>()?;
    Ok(compute(&Inputs {
        tool_version,
        bazel_version: identity_label,
        module_lock: file("MODULE.bazel.lock")?,
        bazelrc: bazelrc::read_bazelrcs(&workspace)?,
        flags: flags.canonical(),
        module_bazel: file("MODULE.bazel")?,
        workspace_files,
        bazelignore: file(".bazelignore")?,
        hashing_inputs: &flags.hashing_inputs,
    }))
}

/// Says which components differ between a recorded fingerprint and the current one (empty when
/// the fingerprints match), naming the flags that changed.
pub fn explain_mismatch(recorded: &Fingerprint, current: &Fingerprint) -> Vec<String> {
    let mut reasons = Vec::new();
    for (name, hex) in &recorded.components {
        match current.component(name) {
            None => reasons.push(format!(
                "`{name}` is only in the recorded fingerprint (written by another bazel-diff?)"
            )),
            Some(now) if now != hex => {
                reasons.push(format!("`{name}` differs: {} changed", describe(name)));
                if name == FLAGS {
                    reasons.extend(flag_changes(&recorded.flags, &current.flags));
                }
            }
            Some(_) => {}
        }
    }
    for (name, _) in &current.components {
        if recorded.component(name).is_none() {
            reasons.push(format!(
                "`{name}` is not in the recorded fingerprint (written by another bazel-diff?)"
            ));
        }
    }
    if reasons.is_empty() && recorded.fingerprint != current.fingerprint {
        reasons.push("`fingerprint` differs although every component matches".to_string());
    }
    reasons
}

fn describe(component: &str) -> &'static str {
    match component {
        BAZEL_DIFF_VERSION => "the bazel-diff version",
        BAZEL_VERSION => "the Bazel binary",
        MODULE_LOCK => "MODULE.bazel.lock",
        BAZELRC => ".bazelrc or a file it imports",
        FLAGS => "a query-affecting flag",
        MODULE_BAZEL => "MODULE.bazel",
        WORKSPACE_FILES => "WORKSPACE, WORKSPACE.bazel or WORKSPACE.bzlmod",
        BAZELIGNORE => ".bazelignore",
        HASHING_INPUTS => "a seed file, content-hash file or other hashing input",
        _ => "an input unknown to this version",
    }
}

fn flag_changes<'a>(
    recorded: &'a BTreeMap<String, String>,
    current: &'a BTreeMap<String, String>,
) -> impl Iterator<Item = String> + 'a {
    let keys: BTreeSet<&String> = recorded.keys().chain(current.keys()).collect();
    let show = |value: Option<&String>| value.map_or("(unset)".to_string(), |v| format!("{v:?}"));
    keys.into_iter().filter_map(move |key| {
        let (was, now) = (recorded.get(key), current.get(key));
        (was != now).then(|| {
            format!(
                "  flag `{key}`: recorded {}, current {}",
                show(was),
                show(now)
            )
        })
    })
}

/// Everything the key covers, read from disk by [`gather`].
struct Inputs<'a> {
    tool_version: &'a str,
    bazel_version: &'a str,
    module_lock: Option<Vec<u8>>,
    /// `(key, bytes)` in any order.
    bazelrc: Vec<(String, Vec<u8>)>,
    flags: BTreeMap<String, String>,
    module_bazel: Option<Vec<u8>>,
    workspace_files: Vec<(&'static str, Option<Vec<u8>>)>,
    bazelignore: Option<Vec<u8>>,
    hashing_inputs: &'a BTreeMap<String, Vec<u8>>,
}

/// SHA-256 over length-framed `(name, bytes)` pairs, so no two inputs share a byte stream.
fn framed_hex(pairs: &BTreeMap<String, Vec<u8>>) -> String {
    let frames = pairs.iter().flat_map(|(name, bytes)| {
        [
            (name.len() as u64).to_be_bytes().to_vec(),
            name.as_bytes().to_vec(),
            (bytes.len() as u64).to_be_bytes().to_vec(),
            bytes.clone(),
        ]
    });
    let frames: Vec<Vec<u8>> = frames.collect();
    sha256_hex(frames.iter().map(Vec::as_slice))
}

fn compute(inputs: &Inputs) -> Fingerprint {
    let mut rcs: Vec<&(String, Vec<u8>)> = inputs.bazelrc.iter().collect();
    rcs.sort_by(|a, b| cmp_utf16(&a.0, &b.0));
    let workspace_files: Vec<(&str, String)> = inputs
        .workspace_files
        .iter()
        .map(|(name, content)| (*name, presence_hex(content.as_deref())))
        .collect();
    let components: Vec<(String, String)> = [
        (
            BAZEL_DIFF_VERSION,
            sha256_hex([inputs.tool_version.as_bytes()]),
        ),
        (BAZEL_VERSION, sha256_hex([inputs.bazel_version.as_bytes()])),
        (MODULE_LOCK, presence_hex(inputs.module_lock.as_deref())),
        (
            BAZELRC,
            sha256_hex(
                rcs.iter()
                    .flat_map(|(path, bytes)| [path.as_bytes(), bytes.as_slice()]),
            ),
        ),
        // Flag keys are fixed ASCII names, so the map's byte order is Java's order.
        (
            FLAGS,
            sha256_hex(
                inputs
                    .flags
                    .iter()
                    .flat_map(|(k, v)| [k.as_bytes(), v.as_bytes()]),
            ),
        ),
        (MODULE_BAZEL, presence_hex(inputs.module_bazel.as_deref())),
        (
            WORKSPACE_FILES,
            sha256_hex(
                workspace_files
                    .iter()
                    .flat_map(|(name, hex)| [name.as_bytes(), hex.as_bytes()]),
            ),
        ),
        (BAZELIGNORE, presence_hex(inputs.bazelignore.as_deref())),
        (HASHING_INPUTS, framed_hex(inputs.hashing_inputs)),
    ]
    .into_iter()
    .map(|(name, hex)| (name.to_string(), hex))
    .collect();
    Fingerprint {
        fingerprint: combine(&components),
        components,
        flags: inputs.flags.clone(),
    }
}

/// Upstream's final step: `name || hex` of each component, sorted by name.
fn combine(components: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = components.iter().collect();
    sorted.sort_by(|a, b| cmp_utf16(&a.0, &b.0));
    sha256_hex(
        sorted
            .iter()
            .flat_map(|(name, hex)| [name.as_bytes(), hex.as_bytes()]),
    )
}

/// Tags presence so that a missing file never collides with an empty one.
fn presence_hex(content: Option<&[u8]>) -> String {
    match content {
        None => sha256_hex([b"absent".as_slice()]),
        Some(bytes) => sha256_hex([b"present".as_slice(), bytes]),
    }
}

fn sha256_hex<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hex::encode(hasher.finalize())
}

/// Upstream sorts with Java's `String.compareTo`, i.e. by UTF-16 code units; this differs from
/// Rust's byte order only for characters above U+FFFF.
/// The bytes of `path` if it is a regular file (following symlinks), else `None`, as upstream.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, FingerprintError> {
    if !fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return Ok(None);
    }
    fs::read(path)
        .map(Some)
        .map_err(|source| FingerprintError::Read {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod hashing_input_tests {
    use super::*;

    #[test]
    fn hashing_inputs_are_framed_and_change_the_key() {
        let empty = framed_hex(&BTreeMap::new());
        let a = framed_hex(&BTreeMap::from([("ab".into(), b"c".to_vec())]));
        let b = framed_hex(&BTreeMap::from([("a".into(), b"bc".to_vec())]));
        assert_ne!(a, b, "framing keeps name/content boundaries");
        assert_ne!(a, empty);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    type TestResult = Result<(), Box<dyn Error>>;

    // Spec 7's vector: 37.0.0, Bazel 8.5.1, no lock, no .bazelrc, default flags.
    const VECTOR: [(&str, &str); 5] = [
        (
            "bazelDiffVersion",
            "688d4da895fec1b3d0aa8effb0c098c361d629fbef15d2369ae6574a9105b2b4",
        ),
        (
            "bazelVersion",
            "12438df761b83c4b17d59155bbb2a716dfeec12397e500cd1fde22e2e8e906d2",
        ),
        (
            "moduleLock",
            "5ad38304b535c2987dbd24657c1a11b884984ff600d9f389deb0d4e634fee792",
        ),
        (
            "bazelrc",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ),
        (
            "flags",
            "d7052ec2aa453cc2b8035ca43c1701d5498ff7082eb42c4a7edcd1461ea477a2",
        ),
    ];
    const VECTOR_FINGERPRINT: &str =
        "599563a3e8b931acb687b9cf324696d3448be03ef71ea3f1c8c4337ed5eb070f";

    static NO_HASHING_INPUTS: BTreeMap<String, Vec<u8>> = BTreeMap::new();

    fn vector_inputs() -> Inputs<'static> {
        Inputs {
            hashing_inputs: &NO_HASHING_INPUTS,
            tool_version: "37.0.0",
            bazel_version: "8.5.1",
            module_lock: None,
            bazelrc: Vec::new(),
            flags: FingerprintFlags::default().canonical(),
            module_bazel: None,
            workspace_files: WORKSPACE_FILE_NAMES.iter().map(|n| (*n, None)).collect(),
            bazelignore: None,
        }
    }

    fn upstream_five(fingerprint: &Fingerprint) -> Vec<(&str, &str)> {
        fingerprint.components[..5]
            .iter()
            .map(|(n, h)| (n.as_str(), h.as_str()))
            .collect()
    }

    fn write(path: &Path, content: &str) -> TestResult {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(path, content)?;
        Ok(())
    }

    fn workspace() -> Result<(tempfile::TempDir, PathBuf), Box<dyn Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().canonicalize()?;
        Ok((dir, path))
    }

    fn gather_default(workspace: &Path) -> Result<Fingerprint, FingerprintError> {
        gather(workspace, "8.5.1", "37.0.0", &FingerprintFlags::default())
    }

    fn bazelrc_keys(workspace: &Path) -> Result<Vec<String>, FingerprintError> {
        let mut keys: Vec<String> = bazelrc::read_bazelrcs(workspace)?
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        keys.sort();
        Ok(keys)
    }

    #[test]
    fn upstream_test_vector() {
        let fingerprint = compute(&vector_inputs());
        assert_eq!(upstream_five(&fingerprint), VECTOR);
        assert_eq!(combine(&fingerprint.components[..5]), VECTOR_FINGERPRINT);
        // The extra components are part of our key.
        assert_ne!(fingerprint.fingerprint, VECTOR_FINGERPRINT);
        assert_eq!(fingerprint.fingerprint, combine(&fingerprint.components));
    }

    #[test]
    fn gathering_an_empty_workspace_reproduces_the_vector() -> TestResult {
        let (_dir, ws) = workspace()?;
        let fingerprint = gather_default(&ws)?;
        assert_eq!(upstream_five(&fingerprint), VECTOR);
        assert_eq!(combine(&fingerprint.components[..5]), VECTOR_FINGERPRINT);
        assert_eq!(fingerprint, compute(&vector_inputs()));
        Ok(())
    }

    #[test]
    fn canonical_flags() {
        let flags = FingerprintFlags {
            bazel_startup_options: vec!["--output_user_root=/r".into(), "--batch".into()],
            bazel_command_options: vec!["--a".into(), String::new(), "--b".into()],
            cquery_command_options: Vec::new(),
            use_cquery: true,
            cquery_expression: Some("deps(//...)".into()),
            include_target_type: true,
            target_type: Some(vec!["SourceFile".into(), "Rule".into()]),
            fine_grained_hash_external_repos: vec!["@b".into(), "@a".into(), "@b".into()],
            ignored_rule_hashing_attributes: vec!["tags".into()],
            exclude_external_targets: false,
            keep_going: true,
            hashing_inputs: BTreeMap::from([("seed".into(), b"x".to_vec())]),
        };
        let expected = [
            ("bazelCommandOptions", "--a  --b"),
            ("bazelStartupOptions", "--output_user_root=/r --batch"),
            ("cqueryCommandOptions", ""),
            ("cqueryExpression", "deps(//...)"),
            ("excludeExternalTargets", "false"),
            ("fineGrainedHashExternalRepos", "@a,@b"),
            ("ignoredRuleHashingAttributes", "tags"),
            ("includeTargetType", "true"),
            ("keepGoing", "true"),
            ("targetType", "Rule,SourceFile"),
            ("useCquery", "true"),
        ];
        let canonical = flags.canonical();
        let canonical: Vec<(&str, &str)> = canonical
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(canonical, expected);
        let unset = FingerprintFlags::default().canonical();
        assert_eq!(unset.len(), 11);
        assert_eq!(unset["targetType"], "");
        assert_eq!(unset["keepGoing"], "false");
    }

    #[test]
    fn deterministic_and_insensitive_to_insertion_order() {
        let mut one = vector_inputs();
        one.bazelrc = vec![
            (".bazelrc".into(), b"import a.rc".to_vec()),
            ("a.rc".into(), b"build --x".to_vec()),
        ];
        let mut two = vector_inputs();
        two.bazelrc = one.bazelrc.iter().rev().cloned().collect();
        assert_eq!(compute(&one), compute(&one));
        assert_eq!(compute(&one), compute(&two));
    }

    #[test]
    fn each_input_changes_its_component() {
        let base = compute(&vector_inputs());
        type Edit = fn(&mut Inputs<'static>);
        let changed = |edit: Edit| {
            let mut inputs = vector_inputs();
            edit(&mut inputs);
            explain_mismatch(&base, &compute(&inputs))
        };
        let cases: [(&str, Edit); 7] = [
            ("bazelVersion", |i| i.bazel_version = "8.6.0"),
            ("bazelDiffVersion", |i| i.tool_version = "38.0.0"),
            ("moduleLock", |i| i.module_lock = Some(b"{}".to_vec())),
            ("flags", |i| {
                i.flags = FingerprintFlags {
                    use_cquery: true,
                    ..Default::default()
                }
                .canonical()
            }),
            ("moduleBazel", |i| i.module_bazel = Some(Vec::new())),
            ("workspaceFiles", |i| {
                i.workspace_files[1].1 = Some(Vec::new())
            }),
            ("bazelignore", |i| {
                i.bazelignore = Some(b"node_modules".to_vec())
            }),
        ];
        for (component, edit) in cases {
            let reasons = changed(edit);
            assert!(
                reasons[0].starts_with(&format!("`{component}` differs")),
                "{component}: {reasons:?}"
            );
            if component != "flags" {
                assert_eq!(reasons.len(), 1, "{reasons:?}");
            }
        }
    }

    #[test]
    fn absent_lock_differs_from_empty_lock() {
        let absent = compute(&vector_inputs());
        let mut inputs = vector_inputs();
        inputs.module_lock = Some(Vec::new());
        let empty = compute(&inputs);
        assert_ne!(
            absent.component("moduleLock"),
            empty.component("moduleLock")
        );
        assert_ne!(absent.fingerprint, empty.fingerprint);
        inputs.module_lock = Some(b"{}".to_vec());
        assert_ne!(compute(&inputs).fingerprint, empty.fingerprint);
    }

    #[test]
    fn one_level_imports_match_upstream() -> TestResult {
        let (_dir, ws) = workspace()?;
        let root = "build --a\nimport %workspace%/tools/ci.rc\ntry-import user.rc\n";
        write(&ws.join(".bazelrc"), root)?;
        write(&ws.join("tools/ci.rc"), "build --ci\n")?;
        write(&ws.join("user.rc"), "build --user\n")?;
        let expected = sha256_hex([
            ".bazelrc".as_bytes(),
            root.as_bytes(),
            b"tools/ci.rc",
            b"build --ci\n",
            b"user.rc",
            b"build --user\n",
        ]);
        assert_eq!(
            gather_default(&ws)?.component("bazelrc"),
            Some(expected.as_str())
        );
        Ok(())
    }

    #[test]
    fn imports_are_followed_recursively() -> TestResult {
        let (_dir, ws) = workspace()?;
        write(&ws.join(".bazelrc"), "  import tools/a.rc  \r\n")?;
        write(
            &ws.join("tools/a.rc"),
            "try-import %workspace%/tools/../tools/b.rc\ntry-import %workspace%/missing.rc\n",
        )?;
        write(&ws.join("tools/b.rc"), "build --b=1\n")?;
        assert_eq!(bazelrc_keys(&ws)?, [".bazelrc", "tools/a.rc", "tools/b.rc"]);
        let before = gather_default(&ws)?;
        write(&ws.join("tools/b.rc"), "build --b=2\n")?;
        let after = gather_default(&ws)?;
        assert_eq!(
            explain_mismatch(&before, &after),
            ["`bazelrc` differs: .bazelrc or a file it imports changed"]
        );
        Ok(())
    }

    #[test]
    fn import_cycles_terminate() -> TestResult {
        let (_dir, ws) = workspace()?;
        write(&ws.join(".bazelrc"), "import a.rc\nimport .bazelrc\n")?;
        write(&ws.join("a.rc"), "import ./b.rc\n")?;
        write(
            &ws.join("b.rc"),
            "import %workspace%/a.rc\ntry-import .bazelrc\n",
        )?;
        assert_eq!(bazelrc_keys(&ws)?, [".bazelrc", "a.rc", "b.rc"]);
        Ok(())
    }

    #[test]
    fn imports_outside_the_workspace_are_keyed_by_absolute_path() -> TestResult {
        let (_dir, ws) = workspace()?;
        let (_other, outside) = workspace()?;
        let shared = outside.join("shared.rc");
        write(&shared, "build --shared\n")?;
        write(
            &ws.join(".bazelrc"),
            &format!("import {}\n", shared.display()),
        )?;
        let keys = bazelrc_keys(&ws)?;
        assert_eq!(keys, [".bazelrc".to_string(), shared.display().to_string()]);
        Ok(())
    }

    #[test]
    fn stable_across_workspace_locations() -> TestResult {
        let mut fingerprints = Vec::new();
        for _ in 0..2 {
            let (dir, ws) = workspace()?;
            write(&ws.join(".bazelrc"), "import %workspace%/tools/ci.rc\n")?;
            write(&ws.join("tools/ci.rc"), "try-import tools/more.rc\n")?;
            write(&ws.join("tools/more.rc"), "build --more\n")?;
            write(&ws.join("MODULE.bazel.lock"), "{}")?;
            write(&ws.join("WORKSPACE"), "workspace(name = 'x')\n")?;
            fingerprints.push(gather_default(&ws)?);
            drop(dir);
        }
        assert_eq!(fingerprints[0], fingerprints[1]);
        Ok(())
    }

    #[test]
    fn workspace_files_are_told_apart() -> TestResult {
        let (_a, one) = workspace()?;
        let (_b, two) = workspace()?;
        write(&one.join("WORKSPACE"), "")?;
        write(&two.join("WORKSPACE.bazel"), "")?;
        let (one, two) = (gather_default(&one)?, gather_default(&two)?);
        assert_eq!(
            explain_mismatch(&one, &two),
            ["`workspaceFiles` differs: WORKSPACE, WORKSPACE.bazel or WORKSPACE.bzlmod changed"]
        );
        Ok(())
    }

    #[test]
    fn missing_workspace_is_an_error_naming_it() {
        let err = gather_default(Path::new("/no/such/workspace")).expect_err("missing");
        assert!(err.to_string().contains("/no/such/workspace"), "{err}");
    }

    #[test]
    fn json_shape_and_round_trip() -> TestResult {
        let fingerprint = compute(&vector_inputs());
        let names: Vec<&str> = fingerprint
            .components
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "bazelDiffVersion",
                "bazelVersion",
                "moduleLock",
                "bazelrc",
                "flags",
                "moduleBazel",
                "workspaceFiles",
                "bazelignore",
                "hashingInputs",
            ]
        );
        let object = |pairs: Vec<(&String, &String)>| {
            pairs
                .iter()
                .map(|(k, v)| format!("    \"{k}\": \"{v}\""))
                .collect::<Vec<_>>()
                .join(",\n")
        };
        let expected = format!(
            "{{\n  \"fingerprint\": \"{}\",\n  \"components\": {{\n{}\n  }},\n  \"flags\": {{\n{}\n  }}\n}}\n",
            fingerprint.fingerprint,
            object(fingerprint.components.iter().map(|(k, v)| (k, v)).collect()),
            object(fingerprint.flags.iter().collect()),
        );
        let json = fingerprint.to_json_pretty();
        assert_eq!(json, expected);
        assert_eq!(Fingerprint::from_json(&json)?, fingerprint);
        Ok(())
    }

    #[test]
    fn reads_upstream_json_and_explains_the_extras() -> TestResult {
        let upstream = format!(
            "{{\n  \"fingerprint\": \"{VECTOR_FINGERPRINT}\",\n  \"components\": {{\n{}\n  }},\n  \"flags\": {{}}\n}}\n",
            VECTOR
                .iter()
                .map(|(n, h)| format!("    \"{n}\": \"{h}\""))
                .collect::<Vec<_>>()
                .join(",\n")
        );
        let recorded = Fingerprint::from_json(&upstream)?;
        assert_eq!(upstream_five(&recorded), VECTOR);
        let reasons = explain_mismatch(&recorded, &compute(&vector_inputs()));
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert!(reasons[0].starts_with("`moduleBazel` is not in the recorded"));
        Ok(())
    }

    #[test]
    fn malformed_json_is_rejected() {
        for bad in [
            "not json",
            "{}",
            r#"{"fingerprint": "x", "components": [], "flags": {}}"#,
            r#"{"fingerprint": "x", "components": {"a": 1}, "flags": {}}"#,
        ] {
            assert!(Fingerprint::from_json(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mismatch_names_changed_flags() {
        let recorded = compute(&vector_inputs());
        assert!(explain_mismatch(&recorded, &recorded).is_empty());
        let mut inputs = vector_inputs();
        inputs.flags = FingerprintFlags {
            keep_going: true,
            ..Default::default()
        }
        .canonical();
        assert_eq!(
            explain_mismatch(&recorded, &compute(&inputs)),
            [
                "`flags` differs: a query-affecting flag changed",
                "  flag `keepGoing`: recorded \"false\", current \"true\"",
            ]
        );
        let mut tampered = recorded.clone();
        tampered.fingerprint = "0".repeat(64);
        assert_eq!(
            explain_mismatch(&tampered, &recorded),
            ["`fingerprint` differs although every component matches"]
        );
    }
}
