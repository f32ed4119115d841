//! Identity of the Bazel binary: the label that goes into the fingerprint's `bazelVersion`
//! component (spec 7) and the numeric version behind the feature gates (spec 3.3).
//!
//! # Build label first
//! For a released Bazel, `bazel version` prints `Build label: 8.5.1`; we use that label verbatim,
//! so the `bazelVersion` component equals upstream's.
//!
//! # A digest when there is no label
//! Debian's `bazel-bootstrap` 4.2.3 has no label: `bazel version` fails ("Version information not
//! available", exit 2), `bazel --version` prints `bazel no_version`, and `bazel info install_base`
//! is the fixed `/usr/share/bazel`. Upstream then keys every such Bazel as `unknown`, so a Bazel
//! upgrade would silently reuse snapshots. We instead name the installation by its contents:
//! `sha256:<hex>` over the SHA-256 of each file Bazel would run, without paths or mtimes (stable
//! across runs and across machines with the same packages, different as soon as one byte changes):
//!
//! 1. the executable, as the OS finds it (PATH for a bare name, the workspace for a relative path);
//! 2. if that is Bazel's own launcher-selecting wrapper script (`scripts/packages/bazel.sh`,
//!    installed as `/usr/bin/bazel` by Debian and by Bazel's apt repository), the launcher it
//!    selects, chosen the way the script chooses it (`$USE_BAZEL_VERSION`, `.bazelversion`,
//!    `bazel-real`, else the highest `bazel-<version>` beside it), plus `<workspace>/tools/bazel`
//!    when the script would hand over to it;
//! 3. the launcher's external install base key, `<launcher dir>/../share/bazel/install_base_key`
//!    (Debian: `/usr/share/bazel/install_base_key`). Bazel's build derives this key from the
//!    server jar, the client and the native tools (upstream: an MD5 over them; Debian generates it
//!    at package build time, patched for reproducibility in 4.2.3+ds-8), and Bazel itself uses it
//!    to tell install bases apart, so it stands for the 90 MB server jar without reading it.
//!    Self-extracting launchers (official builds) carry their install base inside the file
//!    hashed in 1 or 2.
//!
//! On Debian this is `/usr/bin/bazel`, `/usr/bin/bazel-4` and `/usr/share/bazel/install_base_key`:
//! about 1.3 MB read, and file digests are cached per process. Deciding that there is no label
//! costs one `bazel --version`, which the client answers without starting a server; we only run
//! `bazel version` (which starts one) when `--version` reports a numeric release.
//!
//! Limitation: any other wrapper script is hashed as it stands; what it runs is not followed.

use std::collections::HashMap;
use std::env;
use std::fs::{self, File};
use std::io::{self, Read, Seek};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// How long `bazel version` may take (upstream's fingerprint waits 60 s as well).
const VERSION_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of a failing command's stderr an error keeps.
const STDERR_TAIL_BYTES: usize = 2000;
/// Marks the Bazel wrapper script that selects a launcher by version.
const WRAPPER_MARKER: &[u8] = b"BAZEL_REAL=";
/// Versions the digest scheme, so a change to it never matches keys made by an older scheme.
const DIGEST_DOMAIN: &[u8] = b"bazel-diff bazel identity v1\n";

/// `(major, minor, patch)` as used by the feature gates of spec 3.3.
pub type Version = (u32, u32, u32);

/// What `bazel version` (or `bazel --version`) reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BazelVersion {
    /// Text after `Build label: ` (or after `bazel `), trimmed.
    pub label: String,
    /// The label parsed per spec 3.3; `None` when it is not a numeric release (e.g. `no_version`).
    pub version: Option<Version>,
}

/// Where [`BazelIdentity::label`] came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// The build label printed by `bazel version`.
    BuildLabel,
    /// A SHA-256 over the contents of these files, in this order (see the module docs).
    DigestOf(Vec<PathBuf>),
}

/// What identifies the Bazel binary in the fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BazelIdentity {
    /// The value hashed into the fingerprint's `bazelVersion` component.
    pub label: String,
    pub source: IdentitySource,
    /// The numeric version, known only from a build label.
    pub version: Option<Version>,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot find the Bazel executable `{}`", .program.display())]
    NotFound { program: PathBuf },
    #[error("cannot run `{command}`: {source}")]
    Run {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` did not finish within {} s; stderr: {stderr_tail}", .timeout.as_secs())]
    Timeout {
        command: String,
        timeout: Duration,
        stderr_tail: String,
    },
    #[error("`{command}` failed ({status}); stderr: {stderr_tail}")]
    Failed {
        command: String,
        status: ExitStatus,
        stderr_tail: String,
    },
    #[error("`{command}` printed no `Build label: ` or `bazel ` line; stderr: {stderr_tail}")]
    NoLabel {
        command: String,
        stderr_tail: String,
    },
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Runs `<bazel> version` in `workspace` (no startup options, stdin closed, 60 s timeout) and
/// parses its answer per spec 3.3.
pub fn bazel_version(bazel: &Path, workspace: &Path) -> Result<BazelVersion, IdentityError> {
    let program = resolve_executable(bazel, workspace)?;
    reported_version(&program, "version", workspace, VERSION_TIMEOUT)
}

/// Identifies the Bazel that `bazel` names: its build label when it has a release label,
/// otherwise a digest of the installation (see the module docs).
pub fn bazel_identity(bazel: &Path, workspace: &Path) -> Result<BazelIdentity, IdentityError> {
    let program = resolve_executable(bazel, workspace)?;
    // The client answers `--version` alone; `version` would start a server just to say the same.
    let worth_asking = match reported_version(&program, "--version", workspace, VERSION_TIMEOUT) {
        Ok(reported) => reported.version.is_some(),
        // Clients older than `--version` (or odd wrappers): let `bazel version` decide.
        Err(_) => true,
    };
    if worth_asking {
        match reported_version(&program, "version", workspace, VERSION_TIMEOUT) {
            Ok(BazelVersion {
                label,
                version: Some(version),
            }) => {
                return Ok(BazelIdentity {
                    label,
                    source: IdentitySource::BuildLabel,
                    version: Some(version),
                })
            }
            Ok(reported) => {
                tracing::debug!(label = %reported.label, "no release label; identifying Bazel by digest")
            }
            Err(err) => tracing::debug!(%err, "identifying Bazel by digest"),
        }
    }
    let files = installation_files(&program, workspace)?;
    let mut hasher = Sha256::new();
    hasher.update(DIGEST_DOMAIN);
    for (role, path) in &files {
        hasher.update(role.as_bytes());
        hasher.update([0]);
        hasher.update(file_digest(path)?);
    }
    Ok(BazelIdentity {
        label: format!("sha256:{}", hex::encode(hasher.finalize())),
        source: IdentitySource::DigestOf(files.into_iter().map(|(_, path)| path).collect()),
        version: None,
    })
}

/// Finds the file the OS would execute for `bazel` when run with `workspace` as cwd: a bare name
/// is looked up on PATH, a relative path is taken against the workspace. The result is absolute,
/// so running it does not depend on the child's cwd.
pub fn resolve_executable(bazel: &Path, workspace: &Path) -> Result<PathBuf, IdentityError> {
    let not_found = || IdentityError::NotFound {
        program: bazel.to_path_buf(),
    };
    let is_bare_name = bazel.components().count() == 1 && !bazel.has_root();
    let found = if is_bare_name {
        env::var_os("PATH").and_then(|path| {
            env::split_paths(&path)
                // POSIX: an empty PATH entry means the current directory.
                .map(|dir| workspace.join(dir).join(bazel))
                .find(|candidate| is_executable_file(candidate))
        })
    } else {
        Some(workspace.join(bazel)).filter(|candidate| candidate.exists())
    };
    std::path::absolute(found.ok_or_else(not_found)?).map_err(|_| not_found())
}

/// The label line of a `bazel version` / `bazel --version` answer (spec 3.3 and 7).
pub fn parse_label(stdout: &str) -> Option<String> {
    let after = |prefix: &str| {
        stdout
            .lines()
            .find_map(|line| line.strip_prefix(prefix))
            .map(|rest| rest.trim().to_string())
    };
    after("Build label: ").or_else(|| after("bazel "))
}

/// Spec 3.3: cut at the first `-`, split on `.`, take the leading digits of the first three parts
/// (`8.6.0rc1` gives 8.6.0). `None` where upstream would fail (fewer parts, no digits).
pub fn parse_version(label: &str) -> Option<Version> {
    let mut parts = label.split('-').next()?.split('.').map(|part| {
        let end = part
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(part.len());
        part[..end].parse::<u32>().ok()
    });
    Some((parts.next()??, parts.next()??, parts.next()??))
}

fn reported_version(
    program: &Path,
    arg: &str,
    workspace: &Path,
    timeout: Duration,
) -> Result<BazelVersion, IdentityError> {
    let output = run(program, arg, workspace, timeout)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let label = parse_label(&stdout).ok_or_else(|| IdentityError::NoLabel {
        command: output.command,
        stderr_tail: tail(&output.stderr),
    })?;
    Ok(BazelVersion {
        version: parse_version(&label),
        label,
    })
}

struct Output {
    command: String,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Runs `<program> <arg>` in `workspace` with stdin closed; a non-zero exit is an error.
fn run(
    program: &Path,
    arg: &str,
    workspace: &Path,
    timeout: Duration,
) -> Result<Output, IdentityError> {
    let command = format!("{} {arg}", program.display());
    let io_error = |source| IdentityError::Run {
        command: command.clone(),
        source,
    };
    // Files, not pipes: a server the client forks could inherit a pipe and hold it open.
    let mut stdout = tempfile::tempfile().map_err(io_error)?;
    let mut stderr = tempfile::tempfile().map_err(io_error)?;
    let mut child = Command::new(program)
        .arg(arg)
        .current_dir(workspace)
        .stdin(Stdio::null())
        .stdout(stdout.try_clone().map_err(io_error)?)
        .stderr(stderr.try_clone().map_err(io_error)?)
        .spawn()
        .map_err(io_error)?;
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(io_error)? {
            break status;
        }
        if Instant::now() >= deadline {
            // Best effort: the child may exit on its own between the check and the kill.
            let _ = child.kill();
            let _ = child.wait();
            return Err(IdentityError::Timeout {
                stderr_tail: tail(&read_back(&mut stderr).map_err(io_error)?),
                command,
                timeout,
            });
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    let stdout = read_back(&mut stdout).map_err(io_error)?;
    let stderr = read_back(&mut stderr).map_err(io_error)?;
    if !status.success() {
        return Err(IdentityError::Failed {
            command,
            status,
            stderr_tail: tail(&stderr),
        });
    }
    Ok(Output {
        command,
        stdout,
        stderr,
    })
}

fn read_back(file: &mut File) -> io::Result<Vec<u8>> {
    file.rewind()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn tail(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end();
    let mut start = text.len().saturating_sub(STDERR_TAIL_BYTES);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}

/// The files that make up the installation `program` runs, each with the role it plays.
fn installation_files(
    program: &Path,
    workspace: &Path,
) -> Result<Vec<(&'static str, PathBuf)>, IdentityError> {
    let entry = canonical(program)?;
    let mut files = Vec::new();
    if !is_bazel_wrapper(&entry)? {
        add_launcher(&mut files, entry)?;
        return Ok(files);
    }
    // The script looks for a `WORKSPACE` file upwards; without one it reads from "/".
    let root = workspace
        .ancestors()
        .find(|dir| dir.join("WORKSPACE").exists())
        .unwrap_or(Path::new("/"));
    let requested = env::var("USE_BAZEL_VERSION")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| first_line(&root.join(".bazelversion")));
    let selected = select_launcher(parent(&entry), requested.as_deref());
    files.push(("wrapper", entry));
    let tools_bazel = root.join("tools/bazel");
    if is_executable_file(&tools_bazel) {
        files.push(("tools/bazel", canonical(&tools_bazel)?));
    }
    match selected {
        Some(launcher) => add_launcher(&mut files, canonical(&launcher)?)?,
        None => tracing::warn!(?requested, "the Bazel wrapper has no launcher to run"),
    }
    Ok(files)
}

/// Adds the launcher and, when it has one beside it, its external install base key.
fn add_launcher(
    files: &mut Vec<(&'static str, PathBuf)>,
    launcher: PathBuf,
) -> Result<(), IdentityError> {
    let install_base_key = parent(&launcher).join("../share/bazel/install_base_key");
    files.push(("launcher", launcher));
    if install_base_key.is_file() {
        files.push(("install_base_key", canonical(&install_base_key)?));
    }
    Ok(())
}

/// Mirrors `bazel.sh`'s choice of launcher in `dir` for a requested version.
fn select_launcher(dir: &Path, requested: Option<&str>) -> Option<PathBuf> {
    let suffix = format!("-{}-{}", env::consts::OS, env::consts::ARCH);
    let version = match requested {
        Some(version) if !version.is_empty() && version != "latest" => version.to_string(),
        _ if is_executable_file(&dir.join("bazel-real")) => "real".to_string(),
        _ => {
            let names = installed_versions(dir);
            let latest = |with_suffix: bool| {
                names
                    .iter()
                    .filter(|name| !with_suffix || name.ends_with(&suffix))
                    .max_by(|a, b| version_order(a, b))
            };
            latest(true)
                .or_else(|| latest(false))?
                .strip_prefix("bazel-")?
                .to_string()
        }
    };
    [
        format!("bazel-{version}{suffix}"),
        format!("bazel-{version}"),
        "bazel-real".to_string(),
    ]
    .into_iter()
    .map(|name| dir.join(name))
    .find(|candidate| is_executable_file(candidate))
}

/// Regular files (not symlinks, as `find -type f`) named `bazel-<digit>...` in `dir`.
fn installed_versions(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| {
            name.strip_prefix("bazel-")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .collect()
}

/// `sort -V` for the names we compare: digit runs numerically, other runs bytewise.
fn version_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn runs(mut rest: &str) -> Vec<(bool, usize, &str)> {
        let mut runs = Vec::new();
        while let Some(first) = rest.chars().next() {
            let digits = first.is_ascii_digit();
            let end = rest
                .find(|c: char| c.is_ascii_digit() != digits)
                .unwrap_or(rest.len());
            let run = &rest[..end];
            runs.push(if digits {
                let number = run.trim_start_matches('0');
                (true, number.len(), number)
            } else {
                (false, 0, run)
            });
            rest = &rest[end..];
        }
        runs
    }
    runs(a).cmp(&runs(b))
}

fn is_bazel_wrapper(path: &Path) -> Result<bool, IdentityError> {
    let read_error = |source| IdentityError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(read_error)?;
    let mut magic = [0u8; 2];
    if file.read_exact(&mut magic).is_err() || &magic != b"#!" {
        return Ok(false);
    }
    let mut script = Vec::new();
    file.read_to_end(&mut script).map_err(read_error)?;
    Ok(script
        .windows(WRAPPER_MARKER.len())
        .any(|window| window == WRAPPER_MARKER))
}

fn first_line(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    Some(text.lines().next().unwrap_or("").trim().to_string()).filter(|line| !line.is_empty())
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("/"))
}

fn canonical(path: &Path) -> Result<PathBuf, IdentityError> {
    path.canonicalize().map_err(|source| IdentityError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn is_executable_file(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// SHA-256 of a file's contents, cached per process; an entry is reused only while the file's
/// inode, size and timestamps are unchanged.
fn file_digest(path: &Path) -> Result<[u8; 32], IdentityError> {
    type Stamp = (u64, u64, u64, i64, i64, i64, i64);
    type Cache = Mutex<HashMap<PathBuf, (Stamp, [u8; 32])>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let read_error = |source| IdentityError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(read_error)?;
    let stamp = (
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
    );
    let cache = CACHE.get_or_init(Default::default);
    if let Some((cached_stamp, digest)) = lock(cache).get(path) {
        if *cached_stamp == stamp {
            return Ok(*digest);
        }
    }
    let mut file = File::open(path).map_err(read_error)?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(read_error)?;
    let digest: [u8; 32] = hasher.finalize().into();
    lock(cache).insert(path.to_path_buf(), (stamp, digest));
    Ok(digest)
}

/// A poisoned cache only means another thread panicked mid-insert; its entries are still whole.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    type TestResult = Result<(), Box<dyn Error>>;

    /// Writes an executable `#!/bin/sh` script. `install` writes the final file from another
    /// process, so no write descriptor of ours can leak into a child forked meanwhile by a
    /// concurrent test (which would make executing the script fail with ETXTBSY).
    fn script(path: &Path, body: &str) -> Result<PathBuf, Box<dyn Error>> {
        fs::create_dir_all(parent(path))?;
        let source = path.with_extension("src");
        fs::write(&source, format!("#!/bin/sh\n{body}\n"))?;
        let status = Command::new("install")
            .arg("-m755")
            .arg(&source)
            .arg(path)
            .status()?;
        fs::remove_file(&source)?;
        assert!(status.success(), "install {}", path.display());
        Ok(path.to_path_buf())
    }

    fn write(path: &Path, content: &str) -> TestResult {
        fs::create_dir_all(parent(path))?;
        fs::write(path, content)?;
        Ok(())
    }

    fn make_executable(path: &Path) -> TestResult {
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
        Ok(())
    }

    /// Answers like Debian's bazel-bootstrap and logs every invocation beside itself.
    const DEBIAN_LIKE: &str = r#"echo "$1" >> "$(dirname "$0")/calls.log"
case "$1" in
  --version) echo "bazel no_version" ;;
  *) echo "ERROR: Version information not available" >&2; exit 2 ;;
esac"#;

    const RELEASE: &str = r#"case "$1" in
  --version) echo "bazel 8.5.1" ;;
  version) printf 'Bazelisk version: v1.25.0\nBuild label: 8.5.1\nBuild target: @@//src/main/java/com/google/devtools/build/lib/bazel:BazelServer\n' ;;
esac"#;

    fn digest_files(identity: &BazelIdentity) -> Vec<PathBuf> {
        match &identity.source {
            IdentitySource::DigestOf(files) => files.clone(),
            IdentitySource::BuildLabel => panic!("expected a digest identity: {identity:?}"),
        }
    }

    #[test]
    fn label_line_prefers_build_label_then_bazel_prefix() {
        let version = "Bazelisk version: v1\nbazel 1.0.0\nBuild label: 8.5.1 \nBuild label: 9\n";
        assert_eq!(parse_label(version).as_deref(), Some("8.5.1"));
        assert_eq!(parse_label("bazel 7.0.0\r\n").as_deref(), Some("7.0.0"));
        assert_eq!(parse_label("Build target: x\n"), None);
    }

    #[test]
    fn version_numbers_follow_spec_3_3() {
        assert_eq!(parse_version("8.5.1"), Some((8, 5, 1)));
        assert_eq!(parse_version("8.6.0rc1"), Some((8, 6, 0)));
        assert_eq!(parse_version("8.6.0-rc1"), Some((8, 6, 0)));
        assert_eq!(parse_version("9.0.0-pre.20250101.1"), Some((9, 0, 0)));
        assert_eq!(parse_version("4.2.3.1"), Some((4, 2, 3)));
        for unparsable in ["no_version", "", "7.1", "development version", "x.1.2"] {
            assert_eq!(parse_version(unparsable), None, "{unparsable}");
        }
    }

    #[test]
    fn launcher_versions_sort_like_sort_v() {
        let mut names = vec![
            "bazel-10.0.0",
            "bazel-4.2.3",
            "bazel-4",
            "bazel-5.0.0",
            "bazel-4.2",
        ];
        names.sort_by(|a, b| version_order(a, b));
        assert_eq!(
            names,
            [
                "bazel-4",
                "bazel-4.2",
                "bazel-4.2.3",
                "bazel-5.0.0",
                "bazel-10.0.0"
            ]
        );
    }

    #[test]
    fn release_bazel_is_identified_by_its_build_label() -> TestResult {
        let dir = tempfile::tempdir()?;
        let bazel = script(&dir.path().join("bin/bazel"), RELEASE)?;
        let identity = bazel_identity(&bazel, dir.path())?;
        assert_eq!(
            identity,
            BazelIdentity {
                label: "8.5.1".into(),
                source: IdentitySource::BuildLabel,
                version: Some((8, 5, 1)),
            }
        );
        assert_eq!(
            bazel_version(&bazel, dir.path())?,
            BazelVersion {
                label: "8.5.1".into(),
                version: Some((8, 5, 1))
            }
        );
        Ok(())
    }

    #[test]
    fn bazel_without_label_gets_a_stable_digest_and_no_server() -> TestResult {
        let dir = tempfile::tempdir()?;
        let bazel = script(&dir.path().join("bin/bazel"), DEBIAN_LIKE)?;
        let first = bazel_identity(&bazel, dir.path())?;
        let second = bazel_identity(&bazel, dir.path())?;
        assert_eq!(first, second);
        assert!(first.label.starts_with("sha256:"), "{}", first.label);
        assert_eq!(first.version, None);
        assert_eq!(digest_files(&first), [bazel.canonicalize()?]);
        // Only the client-side `--version` ran; `version` would have started a server.
        let calls = fs::read_to_string(dir.path().join("bin/calls.log"))?;
        assert_eq!(calls, "--version\n--version\n");
        Ok(())
    }

    #[test]
    fn digest_depends_on_content_not_location() -> TestResult {
        let one = tempfile::tempdir()?;
        let two = tempfile::tempdir()?;
        let a = script(&one.path().join("bin/bazel"), DEBIAN_LIKE)?;
        let b = script(&two.path().join("elsewhere/bazel"), DEBIAN_LIKE)?;
        let changed = script(
            &two.path().join("changed/bazel"),
            &format!("{DEBIAN_LIKE}\n# rebuilt"),
        )?;
        let label = |bazel: &Path, ws: &Path| bazel_identity(bazel, ws).map(|i| i.label);
        assert_eq!(label(&a, one.path())?, label(&b, two.path())?);
        assert_ne!(label(&a, one.path())?, label(&changed, two.path())?);
        Ok(())
    }

    /// Lays out what Debian installs: `bin/bazel` (Bazel's wrapper), `bin/bazel-4` (launcher)
    /// and `share/bazel/install_base_key`.
    fn debian_layout(root: &Path) -> Result<PathBuf, Box<dyn Error>> {
        let wrapper = script(
            &root.join("bin/bazel"),
            &format!(
                "# Bazel's wrapper execs \"$BAZEL_REAL\"; BAZEL_REAL=bin/bazel-<v>\n{DEBIAN_LIKE}"
            ),
        )?;
        write(&root.join("bin/bazel-4"), "launcher 4.2.3")?;
        make_executable(&root.join("bin/bazel-4"))?;
        write(
            &root.join("share/bazel/install_base_key"),
            "ee2c1e5edec0411c",
        )?;
        Ok(wrapper)
    }

    #[test]
    fn wrapper_is_followed_to_launcher_and_install_base() -> TestResult {
        let install = tempfile::tempdir()?;
        let ws = tempfile::tempdir()?;
        write(&ws.path().join("WORKSPACE"), "")?;
        let wrapper = debian_layout(install.path())?;
        let bin = install.path().join("bin").canonicalize()?;
        let identity = bazel_identity(&wrapper, ws.path())?;
        assert_eq!(
            digest_files(&identity),
            [
                bin.join("bazel"),
                bin.join("bazel-4"),
                bin.join("../share/bazel/install_base_key").canonicalize()?,
            ]
        );

        // Same packages elsewhere: same identity.
        let copy = tempfile::tempdir()?;
        let copied_wrapper = debian_layout(copy.path())?;
        assert_eq!(
            bazel_identity(&copied_wrapper, ws.path())?.label,
            identity.label
        );

        // A new server jar shows up as a new install base key.
        write(
            &install.path().join("share/bazel/install_base_key"),
            "0123456789abcdef0123",
        )?;
        let rebuilt = bazel_identity(&wrapper, ws.path())?;
        assert_ne!(rebuilt.label, identity.label);

        // A newer launcher is what the wrapper runs by default...
        write(&install.path().join("bin/bazel-5.0.0"), "launcher 5")?;
        make_executable(&install.path().join("bin/bazel-5.0.0"))?;
        let upgraded = bazel_identity(&wrapper, ws.path())?;
        assert_eq!(digest_files(&upgraded)[1], bin.join("bazel-5.0.0"));
        assert_ne!(upgraded.label, rebuilt.label);

        // ...unless `.bazelversion` asks for another one.
        write(&ws.path().join(".bazelversion"), "4\n")?;
        assert_eq!(bazel_identity(&wrapper, ws.path())?.label, rebuilt.label);

        // The wrapper hands over to an executable `tools/bazel`, so it belongs to the identity.
        script(
            &ws.path().join("tools/bazel"),
            "exec \"$BAZEL_REAL\" \"$@\"",
        )?;
        let handed_over = bazel_identity(&wrapper, ws.path())?;
        assert_eq!(
            digest_files(&handed_over)[1],
            ws.path().join("tools/bazel").canonicalize()?
        );
        assert_ne!(handed_over.label, rebuilt.label);
        Ok(())
    }

    #[test]
    fn failing_version_reports_command_and_stderr() -> TestResult {
        let dir = tempfile::tempdir()?;
        let bazel = script(&dir.path().join("bazel"), DEBIAN_LIKE)?;
        let err = bazel_version(&bazel, dir.path()).expect_err("Debian's bazel has no version");
        assert!(matches!(err, IdentityError::Failed { .. }), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains(&format!("{} version", bazel.display())),
            "{message}"
        );
        assert!(
            message.contains("Version information not available"),
            "{message}"
        );
        Ok(())
    }

    #[test]
    fn silent_version_is_a_no_label_error() -> TestResult {
        let dir = tempfile::tempdir()?;
        let bazel = script(&dir.path().join("bazel"), "echo oops >&2")?;
        let err = bazel_version(&bazel, dir.path()).expect_err("no label");
        assert!(matches!(err, IdentityError::NoLabel { .. }), "{err:?}");
        assert!(err.to_string().contains("oops"), "{err}");
        Ok(())
    }

    #[test]
    fn hung_command_times_out() -> TestResult {
        let dir = tempfile::tempdir()?;
        let bazel = script(
            &dir.path().join("bazel"),
            "echo starting >&2; exec sleep 30",
        )?;
        let started = Instant::now();
        let result = run(&bazel, "version", dir.path(), Duration::from_millis(300));
        let Err(IdentityError::Timeout { stderr_tail, .. }) = result else {
            panic!("expected a timeout");
        };
        assert_eq!(stderr_tail, "starting");
        assert!(started.elapsed() < Duration::from_secs(10));
        Ok(())
    }

    #[test]
    fn relative_and_missing_executables() -> TestResult {
        let dir = tempfile::tempdir()?;
        let bazel = script(&dir.path().join("tools/bazelw"), RELEASE)?;
        let resolved = resolve_executable(Path::new("tools/bazelw"), dir.path())?;
        assert_eq!(resolved.canonicalize()?, bazel.canonicalize()?);
        let missing = resolve_executable(Path::new("no-such-bazel-binary"), dir.path());
        assert!(matches!(missing, Err(IdentityError::NotFound { .. })));
        Ok(())
    }

    /// Against the Bazel installed on this machine (Debian's bazel-bootstrap here). On CI a
    /// missing Bazel is a failure, not a skip.
    #[test]
    fn real_bazel_identity_is_stable_and_fast() -> TestResult {
        let bazel = Path::new("/usr/bin/bazel");
        if !bazel.exists() {
            assert_ne!(
                env::var("CI").as_deref(),
                Ok("true"),
                "CI must have Bazel at /usr/bin/bazel"
            );
            eprintln!("skipped: no /usr/bin/bazel");
            return Ok(());
        }
        let ws = tempfile::tempdir()?;
        let started = Instant::now();
        let first = bazel_identity(bazel, ws.path())?;
        let elapsed = started.elapsed();
        let second = bazel_identity(bazel, ws.path())?;
        assert_eq!(first, second);
        match &first.source {
            IdentitySource::BuildLabel => assert!(first.version.is_some(), "{first:?}"),
            IdentitySource::DigestOf(files) => {
                assert!(first.label.starts_with("sha256:"), "{first:?}");
                let key = Path::new("/usr/share/bazel/install_base_key");
                if key.exists() {
                    assert!(files.iter().any(|f| f == key), "{files:?}");
                }
                assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
            }
        }
        eprintln!("{first:?} in {elapsed:?}");
        Ok(())
    }
}
