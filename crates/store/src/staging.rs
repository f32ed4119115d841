//! Recording an entry: a private staging directory that becomes the entry in one rename.
//!
//! Crash safety rests on one fact: an entry is visible only once its directory has been
//! renamed from `.staging/` to `<fp>/<sha>/`, and that rename happens after every file,
//! including `metadata.json`, has been digested, made read-only and fsynced. A crash at
//! any earlier point leaves only a staging directory, which nobody reads and `gc` removes
//! once the record lock shows its owner is gone. Unlike upstream (finding F2) no marker
//! file can make a half-written entry look complete.
//!
//! A published entry is never replaced: the rename happens only if the entry does not
//! exist (checked under the entry lock), and the kernel itself refuses to rename a
//! directory over a non-empty one, which every entry is (finding F3).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rayon::prelude::*;

use crate::contract::{DIR_MODE, FILE_MODE, FORMAT_VERSION, METADATA_FILE};
use crate::error::{io_err, Result, StoreError};
use crate::fsutil::{fsync_dir, remove_tree, set_mode, unix_seconds};
use crate::key::EntryKey;
use crate::lock::{self, LockGuard, Mode};
use crate::metadata::{check_requires, FileRecord, Metadata, MetadataInput};
use crate::store::Store;
use crate::time::rfc3339_utc;
use crate::tree::{self, digest_file, kind_of, rel_string, Kind, Node};

/// How many times publication retries the rename when a concurrent `gc` removed the
/// (then empty) fingerprint directory between our `mkdir` and our `rename`.
const RENAME_ATTEMPTS: usize = 8;

/// An entry being recorded. Holds the key's record lock, so one key has at most one
/// recorder at a time; other recorders wait in [`Store::begin`].
///
/// Write the entry's files under [`path`](Self::path), close them, then call
/// [`publish`](Self::publish). Dropping a `Staging` without publishing deletes the staging
/// directory.
#[derive(Debug)]
pub struct Staging {
    store: Store,
    key: EntryKey,
    dir: PathBuf,
    /// Whether `dir` is still ours to delete on drop.
    owns_dir: bool,
    /// Declared last so it is released after `Drop::drop` removed the directory: a
    /// staging directory whose key is not record-locked is stale by definition.
    _record_lock: LockGuard,
}

/// Outcome of [`Staging::publish`].
#[derive(Debug, Clone)]
pub enum Published {
    /// Our staging directory is now the entry.
    Created {
        path: PathBuf,
        metadata: Box<Metadata>,
    },
    /// The key already had an entry (another recorder won); it was left untouched and our
    /// staging directory was deleted.
    AlreadyExisted { path: PathBuf },
}

impl Published {
    /// The entry directory.
    pub fn path(&self) -> &Path {
        match self {
            Published::Created { path, .. } | Published::AlreadyExisted { path } => path,
        }
    }

    /// Whether this call created the entry.
    pub fn is_created(&self) -> bool {
        matches!(self, Published::Created { .. })
    }
}

impl Staging {
    pub(crate) fn new(store: Store, key: EntryKey, dir: PathBuf, record_lock: LockGuard) -> Self {
        Self {
            store,
            key,
            dir,
            owns_dir: true,
            _record_lock: record_lock,
        }
    }

    /// The directory to write the entry's files into (on the store's filesystem, so
    /// reflinks and renames from elsewhere in the store work).
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The key being recorded.
    pub fn key(&self) -> &EntryKey {
        &self.key
    }

    /// Whether the key already has a published entry. A recorder that waited in
    /// [`Store::begin`] for another one should check this and skip the work.
    pub fn entry_exists(&self) -> Result<bool> {
        self.store.contains(&self.key)
    }

    /// Publishes the staging directory as the key's entry.
    ///
    /// Digests every regular file (in parallel), writes `metadata.json`, makes files 0444
    /// and directories 0555, fsyncs them, and renames the directory into place. All files
    /// must be complete and closed: a file that changes during publication fails it with
    /// [`StoreError::ModifiedDuringPublish`]. Files are frozen in place, so do not
    /// hard-link files that must stay writable elsewhere (a reflink clone is fine).
    ///
    /// Only regular files and directories are allowed; a symlink or special file fails
    /// publication, as does a top-level file named `metadata.json`. On any error the
    /// staging directory is deleted and nothing is published.
    pub fn publish(mut self, input: MetadataInput) -> Result<Published> {
        input
            .check()
            .and_then(|()| check_requires(&input.requires, &self.key))
            .map_err(|reason| StoreError::InvalidMetadata { reason })?;
        // Shared, not exclusive: it only keeps `remove`/`gc` away from the key while we
        // check and rename; readers of an existing entry are not disturbed.
        let entry_lock = lock::lock(
            &self.store.entry_lock_path(&self.key),
            Mode::Shared,
            self.store.lock_timeout(),
        )?;
        let entry = self.store.entry_path(&self.key);
        if self.store.contains(&self.key)? {
            return Ok(Published::AlreadyExisted { path: entry });
        }

        let Survey { files, mut dirs } = self.survey()?;
        let records = files
            .par_iter()
            .map(|(_, node)| digest(node))
            .collect::<Result<Vec<FileRecord>>>()?;

        let created_unix = unix_seconds(input.created.unwrap_or_else(SystemTime::now));
        let metadata = Metadata {
            format_version: FORMAT_VERSION,
            tool_version: input.tool_version,
            driver: input.driver,
            fingerprint: self.key.fingerprint().to_owned(),
            base_sha: self.key.base_sha().to_owned(),
            created_unix,
            created_at: rfc3339_utc(created_unix),
            total_bytes: records.iter().map(|r| r.size).sum(),
            files: files
                .iter()
                .map(|(rel, _)| rel.clone())
                .zip(records)
                .collect(),
            extra: input.extra,
            requires: input.requires,
        };
        let metadata_node = self.write_metadata(&metadata)?;

        // Freeze and make durable, children before parents.
        files
            .par_iter()
            .map(|(_, node)| node)
            .chain(rayon::iter::once(&metadata_node))
            .try_for_each(freeze_file)?;
        dirs.sort_by_key(|d| std::cmp::Reverse(d.rel.components().count()));
        for dir in &dirs {
            set_mode(&dir.abs, DIR_MODE).map_err(io_err("make read-only", &dir.abs))?;
            fsync_dir(&dir.abs).map_err(io_err("fsync", &dir.abs))?;
        }
        self.check_unchanged(&files, &dirs)?;
        fsync_dir(&self.dir).map_err(io_err("fsync", &self.dir))?;

        if !self.rename_into_place(&entry)? {
            return Ok(Published::AlreadyExisted { path: entry });
        }
        // From here on the entry is published and complete; what follows only settles the
        // top directory's mode and makes the rename durable.
        set_mode(&entry, DIR_MODE).map_err(io_err("make read-only", &entry))?;
        fsync_dir(&entry).map_err(io_err("fsync", &entry))?;
        let fp_dir = self.store.fingerprint_dir(self.key.fingerprint());
        fsync_dir(&fp_dir).map_err(io_err("fsync", &fp_dir))?;
        drop(entry_lock);
        tracing::debug!(entry = %entry.display(), bytes = metadata.total_bytes, "published snapshot entry");
        Ok(Published::Created {
            path: entry,
            metadata: Box::new(metadata),
        })
    }

    /// Lists the staging tree: regular files (with their metadata names) and directories.
    fn survey(&self) -> Result<Survey> {
        let nodes =
            tree::walk(&self.dir).map_err(io_err("list the staging directory", &self.dir))?;
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        for node in nodes {
            let Some(rel) = rel_string(&node.rel) else {
                return Err(StoreError::NonUtf8Name { path: node.abs });
            };
            match node.kind {
                Kind::File { .. } if rel == METADATA_FILE => {
                    return Err(StoreError::ReservedName { path: node.abs });
                }
                Kind::File { .. } => files.push((rel, node)),
                Kind::Dir => dirs.push(node),
                Kind::Other(kind) => {
                    return Err(StoreError::UnsupportedFileType {
                        path: node.abs,
                        kind,
                    });
                }
            }
        }
        Ok(Survey { files, dirs })
    }

    fn write_metadata(&self, metadata: &Metadata) -> Result<Node> {
        let path = self.dir.join(METADATA_FILE);
        let mut json =
            serde_json::to_vec_pretty(metadata).map_err(|source| StoreError::Serialize {
                path: path.clone(),
                source,
            })?;
        json.push(b'\n');
        let mut file = File::create_new(&path).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => StoreError::ReservedName { path: path.clone() },
            _ => io_err("create", &path)(e),
        })?;
        file.write_all(&json).map_err(io_err("write", &path))?;
        drop(file);
        let meta = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
        Ok(Node {
            rel: PathBuf::from(METADATA_FILE),
            abs: path,
            kind: kind_of(&meta),
        })
    }

    /// Fails if the tree gained or lost a path since [`survey`](Self::survey): an unlisted
    /// file would make the entry fail `verify` forever.
    fn check_unchanged(&self, files: &[(String, Node)], dirs: &[Node]) -> Result<()> {
        let now = tree::walk(&self.dir).map_err(io_err("list the staging directory", &self.dir))?;
        let mut expected: Vec<&Path> = files.iter().map(|(_, n)| n.rel.as_path()).collect();
        expected.extend(dirs.iter().map(|d| d.rel.as_path()));
        expected.push(Path::new(METADATA_FILE));
        expected.sort();
        let mut actual: Vec<&Path> = now.iter().map(|n| n.rel.as_path()).collect();
        actual.sort();
        if expected == actual {
            return Ok(());
        }
        let odd = actual
            .iter()
            .find(|p| expected.binary_search(p).is_err())
            .or_else(|| expected.iter().find(|p| actual.binary_search(p).is_err()))
            .map_or_else(|| self.dir.clone(), |p| self.dir.join(p));
        Err(StoreError::ModifiedDuringPublish { path: odd })
    }

    /// Renames the staging directory to `entry`; `false` if an entry got there first.
    fn rename_into_place(&mut self, entry: &Path) -> Result<bool> {
        let fp_dir = self.store.fingerprint_dir(self.key.fingerprint());
        for attempt in 1..=RENAME_ATTEMPTS {
            match fs::create_dir(&fp_dir) {
                Ok(()) => {
                    let root = self.store.root();
                    fsync_dir(root).map_err(io_err("fsync", root))?;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_err("create the fingerprint directory", &fp_dir)(e)),
            }
            match fs::rename(&self.dir, entry) {
                Ok(()) => {
                    self.owns_dir = false;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempt < RENAME_ATTEMPTS => {
                    tracing::debug!(dir = %fp_dir.display(), "fingerprint directory vanished; retrying");
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {
                    return Ok(false);
                }
                Err(e) => return Err(io_err("rename the staging directory to", entry)(e)),
            }
        }
        unreachable!("the last attempt returns")
    }
}

/// The staging tree as listed before publication.
struct Survey {
    /// Regular files with their metadata names.
    files: Vec<(String, Node)>,
    dirs: Vec<Node>,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.owns_dir {
            if let Err(e) = remove_tree(&self.dir) {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove staging directory; gc will");
            }
        }
    }
}

fn digest(node: &Node) -> Result<FileRecord> {
    let (size, sha256) = digest_file(&node.abs).map_err(io_err("read", &node.abs))?;
    match node.kind {
        Kind::File { size: listed, .. } if listed == size => Ok(FileRecord { size, sha256 }),
        _ => Err(StoreError::ModifiedDuringPublish {
            path: node.abs.clone(),
        }),
    }
}

/// Makes one file read-only and durable, and checks it did not change since it was listed.
fn freeze_file(node: &Node) -> Result<()> {
    set_mode(&node.abs, FILE_MODE).map_err(io_err("make read-only", &node.abs))?;
    let file = File::open(&node.abs).map_err(io_err("open", &node.abs))?;
    file.sync_all().map_err(io_err("fsync", &node.abs))?;
    let meta = file.metadata().map_err(io_err("stat", &node.abs))?;
    if kind_of(&meta) != node.kind {
        return Err(StoreError::ModifiedDuringPublish {
            path: node.abs.clone(),
        });
    }
    Ok(())
}
