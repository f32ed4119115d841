//! Walking an entry (or staging) tree and digesting its files.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// What a walked path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A regular file, with the stat fields used to notice concurrent modification.
    File {
        size: u64,
        mtime: (i64, i64),
    },
    Dir,
    /// Anything else, named for messages: "symlink", "socket"...
    Other(&'static str),
}

/// One path under the walked root.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// Path relative to the root.
    pub rel: PathBuf,
    pub abs: PathBuf,
    pub kind: Kind,
}

/// Every path under `root` (not `root` itself), parents before children, siblings sorted.
/// Symlinks are reported, never followed.
pub(crate) fn walk(root: &Path) -> io::Result<Vec<Node>> {
    let mut out = Vec::new();
    walk_into(root, Path::new(""), &mut out)?;
    Ok(out)
}

fn walk_into(dir: &Path, rel: &Path, out: &mut Vec<Node>) -> io::Result<()> {
    let mut children = fs::read_dir(dir)?.collect::<io::Result<Vec<_>>>()?;
    children.sort_by_key(|c| c.file_name());
    for child in children {
        let abs = child.path();
        let rel = rel.join(child.file_name());
        let meta = fs::symlink_metadata(&abs)?;
        let kind = kind_of(&meta);
        out.push(Node {
            rel: rel.clone(),
            abs: abs.clone(),
            kind,
        });
        if kind == Kind::Dir {
            walk_into(&abs, &rel, out)?;
        }
    }
    Ok(())
}

pub(crate) fn kind_of(meta: &fs::Metadata) -> Kind {
    let t = meta.file_type();
    if t.is_file() {
        Kind::File {
            size: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    } else if t.is_dir() {
        Kind::Dir
    } else if t.is_symlink() {
        Kind::Other("symlink")
    } else if t.is_fifo() {
        Kind::Other("named pipe")
    } else if t.is_socket() {
        Kind::Other("socket")
    } else if t.is_block_device() {
        Kind::Other("block device")
    } else if t.is_char_device() {
        Kind::Other("character device")
    } else {
        Kind::Other("special file")
    }
}

/// Size and lowercase hex SHA-256 of the file at `path`. A symlink is not followed (the
/// open fails), so a listed name cannot be redirected outside the entry.
pub(crate) fn digest_file(path: &Path) -> io::Result<(u64, String)> {
    let mut file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut hasher = Sha256::new();
    // Large reads keep multi-GB memory images and disks near the hashing speed.
    let mut buf = vec![0u8; 1 << 20];
    let mut size: u64 = 0;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// The `/`-separated form of a relative path, `None` if it is not UTF-8.
pub(crate) fn rel_string(rel: &Path) -> Option<String> {
    // On Unix the separator already is '/', so the UTF-8 form is the metadata form.
    rel.to_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_parents_first_and_reports_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir_all(dir.path().join("b/c")).expect("mkdir");
        fs::write(dir.path().join("a"), "1").expect("write");
        fs::write(dir.path().join("b/c/d"), "22").expect("write");
        std::os::unix::fs::symlink("a", dir.path().join("s")).expect("symlink");
        let nodes = walk(dir.path()).expect("walk");
        let listed: Vec<_> = nodes
            .iter()
            .map(|n| (rel_string(&n.rel).expect("utf8"), n.kind))
            .collect();
        assert_eq!(listed.len(), 5);
        assert_eq!(listed[0].0, "a");
        assert!(matches!(listed[0].1, Kind::File { size: 1, .. }));
        assert_eq!((listed[1].0.as_str(), listed[1].1), ("b", Kind::Dir));
        assert_eq!((listed[2].0.as_str(), listed[2].1), ("b/c", Kind::Dir));
        assert_eq!(listed[3].0, "b/c/d");
        assert_eq!(
            (listed[4].0.as_str(), listed[4].1),
            ("s", Kind::Other("symlink"))
        );
    }

    #[test]
    fn digests_match_sha256() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        fs::write(&path, "abc").expect("write");
        let (size, digest) = digest_file(&path).expect("digest");
        assert_eq!(size, 3);
        assert_eq!(
            digest,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
