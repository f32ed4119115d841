//! Digests of source files (spec 4.3 and 4.4).

use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::{Digest, HashConfig, HashError, EMPTY_DIGEST};

const MAIN_REPO_PREFIXES: [&str; 3] = ["@@//", "@//", "//"];

/// `0x01` when the owner-execute bit is set (git's 644/755 model), else `0x00`.
pub fn exec_byte(meta: &std::fs::Metadata) -> u8 {
    u8::from(meta.permissions().mode() & 0o100 != 0)
}

/// The workspace-relative part of a main-repo label, or `None` for other labels.
fn main_repo_rest(label: &str) -> Option<&str> {
    MAIN_REPO_PREFIXES
        .iter()
        .find_map(|prefix| label.strip_prefix(prefix))
}

/// Where a source label's file lives and under which key `--contentHashPath` names it.
pub enum FileLocation {
    /// A file to read: `(path, content-hash lookup key)`.
    File { path: PathBuf, key: String },
    /// Upstream hashes nothing at all for this label: the digest is `H("")`.
    Nothing,
}

/// Resolves a source label to its file (spec 4.3 step 1).
pub fn file_digest_key(config: &HashConfig, label: &str) -> FileLocation {
    if let Some(rest) = main_repo_rest(label) {
        let rel = rest.strip_prefix(':').unwrap_or(rest).replace(':', "/");
        let path = string_join(&config.workspace, &rel);
        if let Some(repaired) = latin1_repair(&rel) {
            let repaired_path = string_join(&config.workspace, &repaired);
            if !path.exists() && repaired_path.exists() {
                return FileLocation::File {
                    path: repaired_path,
                    key: repaired,
                };
            }
        }
        return FileLocation::File { path, key: rel };
    }
    let Some(stripped) = label.strip_prefix('@') else {
        return FileLocation::Nothing;
    };
    let stripped = stripped.trim_start_matches('@');
    // Java's `split("//")` drops trailing empty parts; anything but two parts is invalid.
    let mut parts: Vec<&str> = stripped.split("//").collect();
    while parts.last() == Some(&"") {
        parts.pop();
    }
    let [repo, rest] = parts[..] else {
        tracing::info!("Invalid source label {label}");
        return FileLocation::Nothing;
    };
    let fine_grained = config
        .fine_grained_repos
        .iter()
        .any(|r| r.trim_start_matches('@') == repo);
    let Some(roots) = config.repo_roots.as_ref().filter(|_| fine_grained) else {
        return FileLocation::Nothing;
    };
    let rel = rest.strip_prefix(':').unwrap_or(rest).replace(':', "/");
    FileLocation::File {
        path: roots.root(repo).join(&rel),
        key: format!("external/{repo}/{rel}"),
    }
}

/// Bazels running with `-Dfile.encoding=ISO-8859-1` (4.2.3 among them) print a UTF-8 file
/// name's bytes as Latin-1 characters (`été` arrives as `Ã©tÃ©`). Undoes that when the
/// text is made of Latin-1 characters whose bytes are valid UTF-8; `None` otherwise.
fn latin1_repair(text: &str) -> Option<String> {
    if text.is_ascii() || text.chars().any(|c| u32::from(c) > 0xff) {
        return None;
    }
    let bytes: Vec<u8> = text.chars().map(|c| c as u8).collect();
    String::from_utf8(bytes)
        .ok()
        .filter(|repaired| repaired != text)
}

/// Joins as strings, never letting an absolute `rel` replace the base (spec 4.4 NOTE).
fn string_join(base: &Path, rel: &str) -> PathBuf {
    let mut joined = base.as_os_str().to_owned();
    joined.push("/");
    joined.push(rel);
    PathBuf::from(joined)
}

/// Computes raw and soft source digests for one configuration.
pub struct SourceHasher<'a> {
    config: &'a HashConfig,
}

impl<'a> SourceHasher<'a> {
    pub fn new(config: &'a HashConfig) -> Self {
        SourceHasher { config }
    }

    /// Raw digest of a SourceFile target (spec 4.3): `subincludes` are the `.bzl` labels a
    /// BUILD file loads.
    pub fn raw_digest(&self, label: &str, subincludes: &[String]) -> Result<Digest, HashError> {
        let mut seed = Sha256::new();
        seed.update(label.as_bytes());
        for s in subincludes {
            seed.update(s.as_bytes());
        }
        let file_seed: Digest = seed.finalize().into();
        match file_digest_key(self.config, label) {
            FileLocation::Nothing => Ok(EMPTY_DIGEST),
            FileLocation::File { path, key } => {
                self.digest_file(label, &path, &key, Some(&file_seed))
            }
        }
    }

    /// Soft digest (spec 4.4): only for main-repo labels whose file exists as a regular file.
    pub fn soft_digest(&self, label: &str) -> Result<Option<Digest>, HashError> {
        let Some(rest) = main_repo_rest(label) else {
            return Ok(None);
        };
        let rel = rest.replacen(':', "/", 1);
        match std::fs::metadata(string_join(&self.config.workspace, &rel)) {
            Ok(meta) if meta.is_file() => {}
            _ => return Ok(None),
        }
        match file_digest_key(self.config, label) {
            FileLocation::File { path, key } => {
                self.digest_file(label, &path, &key, None).map(Some)
            }
            FileLocation::Nothing => Ok(None),
        }
    }

    fn digest_file(
        &self,
        label: &str,
        path: &Path,
        key: &str,
        file_seed: Option<&Digest>,
    ) -> Result<Digest, HashError> {
        let read_error = |source| HashError::SourceRead {
            label: label.to_owned(),
            path: path.to_owned(),
            source,
        };
        let mut hasher = Sha256::new();
        // One path lookup per file (open, then fstat): at 10^5 files the lookups dominate.
        let opened = match open_source(path) {
            Ok(opened) => Some(opened),
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => None,
            Err(e) => return Err(read_error(e)),
        };
        if let Some(content_hash) = self.config.content_hashes.get(key) {
            hasher.update(content_hash.as_bytes());
            hasher.update([1, opened.as_ref().map_or(0, |(_, meta)| exec_byte(meta))]);
        } else if let Some((file, meta)) = opened {
            if meta.is_file() {
                let wanted = self.config.modified_files.is_empty()
                    || self.config.modified_files.contains(path);
                if wanted {
                    hash_contents(&mut hasher, file, meta.len()).map_err(read_error)?;
                }
                hasher.update([1, exec_byte(&meta)]);
            }
        } else {
            tracing::warn!("File {} not found", path.display());
            hasher.update([0]);
        }
        if let Some(seed) = file_seed {
            hasher.update(seed);
        }
        hasher.update(label.as_bytes());
        Ok(hasher.finalize().into())
    }
}

/// Opens a path for hashing. Non-blocking, so a FIFO in the workspace cannot hang us (it is
/// not a regular file and is not read).
fn open_source(path: &Path) -> std::io::Result<(File, std::fs::Metadata)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    Ok((file, meta))
}

/// Hashes a regular file's bytes; `size` (from fstat) saves the final zero-length read.
fn hash_contents(hasher: &mut Sha256, mut file: File, size: u64) -> std::io::Result<()> {
    thread_local! {
        // Reused: zeroing a fresh 64 KiB buffer per file cost more than reading most files.
        static BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 64 * 1024]);
    }
    BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        let mut total = 0u64;
        loop {
            match file.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    total += n as u64;
                    if total == size && n < buf.len() {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::to_hex;

    fn workspace_with(files: &[(&str, &str, u32)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (rel, content, mode) in files {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, content).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        dir
    }

    #[test]
    fn spec_vector_source_file() {
        let ws = workspace_with(&[("pkg/a.txt", "hello\n", 0o644)]);
        let config = HashConfig::new(ws.path());
        let raw = SourceHasher::new(&config)
            .raw_digest("//pkg:a.txt", &[])
            .unwrap();
        assert_eq!(
            to_hex(&raw),
            "c8926307ec327a6ea94f1cb79078d5bc67d9a6058b8868fcbaa0c373eb12f80e"
        );
        let mut h = Sha256::new();
        h.update(raw);
        h.update(EMPTY_DIGEST);
        assert_eq!(
            hex::encode(h.finalize()),
            "bbcda89f5986d5c32f3b5662b262419254fbb3b11b9aaaaf2f2492b130c90501"
        );
    }

    #[test]
    fn double_encoded_non_ascii_names_are_found() {
        let ws = workspace_with(&[("d/\u{e9}t\u{e9}.txt", "x", 0o644)]);
        let config = HashConfig::new(ws.path());
        let mangled = "//d:\u{c3}\u{a9}t\u{c3}\u{a9}.txt";
        let FileLocation::File { path, key } = file_digest_key(&config, mangled) else {
            panic!("a main-repo label has a file");
        };
        assert!(path.exists(), "{}", path.display());
        assert_eq!(key, "d/\u{e9}t\u{e9}.txt");
        assert_eq!(latin1_repair("plain"), None);
        assert_eq!(
            latin1_repair("\u{e9}"),
            None,
            "a lone Latin-1 byte is not UTF-8"
        );
    }

    #[test]
    fn spec_vector_missing_file() {
        let ws = workspace_with(&[]);
        let config = HashConfig::new(ws.path());
        let raw = SourceHasher::new(&config)
            .raw_digest("//pkg:a.txt", &[])
            .unwrap();
        assert_eq!(
            to_hex(&raw),
            "16d462906fa5a7329da309ffa098b9b78b004464724cbfb1a610af7644dfbf35"
        );
    }

    #[test]
    fn exec_bit_and_content_hash_override() {
        let ws = workspace_with(&[("a.sh", "x", 0o755), ("b.sh", "x", 0o644)]);
        let mut config = HashConfig::new(ws.path());
        let hasher = SourceHasher::new(&config);
        let a = hasher.raw_digest("//:a.sh", &[]).unwrap();
        let b = hasher.raw_digest("//:a.sh", &[]).unwrap();
        assert_eq!(a, b);
        let b_plain = hasher.raw_digest("//:b.sh", &[]).unwrap();
        assert_ne!(a, b_plain);
        config.content_hashes.insert("a.sh".into(), "abc".into());
        let overridden = SourceHasher::new(&config)
            .raw_digest("//:a.sh", &[])
            .unwrap();
        assert_ne!(a, overridden);
    }

    #[test]
    fn external_labels_outside_fine_grained_set_hash_to_empty() {
        let config = HashConfig::new("/nonexistent");
        let hasher = SourceHasher::new(&config);
        for label in ["@maven//:a.jar", "@@repo+//x:y", "@bad", "weird"] {
            assert_eq!(
                hasher.raw_digest(label, &[]).unwrap(),
                EMPTY_DIGEST,
                "{label}"
            );
        }
    }

    #[test]
    fn soft_digest_only_for_existing_main_repo_files() {
        let ws = workspace_with(&[("tools/defs.bzl", "def f(): pass\n", 0o644)]);
        let config = HashConfig::new(ws.path());
        let hasher = SourceHasher::new(&config);
        assert!(hasher.soft_digest("//tools/defs.bzl").unwrap().is_some());
        assert!(hasher.soft_digest("//tools:defs.bzl").unwrap().is_some());
        assert!(hasher.soft_digest("//tools/missing.bzl").unwrap().is_none());
        assert!(
            hasher.soft_digest("//tools").unwrap().is_none(),
            "directory"
        );
        assert!(hasher.soft_digest("@x//tools:defs.bzl").unwrap().is_none());
        // An absolute path from an instantiation stack must not escape the workspace.
        let abs = ws.path().join("tools/defs.bzl");
        assert!(hasher
            .soft_digest(&format!("//{}", abs.display()))
            .unwrap()
            .is_none());
    }
}
