//! Where a VM's files live and how the VM names them: directly (Firecracker runs in its run
//! directory and is given host paths), or in the jailer's chroot (`--jailer`), where every
//! file the VM opens must be inside `<chroot base>/<firecracker name>/<id>/root` and API
//! bodies name it from the jail's `/`.
//!
//! In the jail, entry files (read-only, mode 0444) are hard-linked when the chroot base is
//! on the store's filesystem, else cloned; files the VM writes (its disk clone, logs) are
//! owned by the jailer's uid/gid. The jail is removed with the VM (the firecracker crate).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// The jailer settings of the driver (`--jailer --jailer-uid --jailer-gid --chroot-base`).
#[derive(Debug, Clone)]
pub struct JailOptions {
    pub jailer: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub chroot_base: PathBuf,
}

/// One VM's file namespace.
#[derive(Debug, Clone)]
pub enum VmFiles {
    /// No jail: files live in the run directory and the VM gets host paths.
    Direct { run: PathBuf },
    /// The jailer's chroot: files live in `root` and the VM sees them at `/<name>`.
    Jail { root: PathBuf, uid: u32, gid: u32 },
}

impl VmFiles {
    /// Where `name` (a file of this VM) is on the host.
    pub fn host(&self, name: &str) -> PathBuf {
        match self {
            VmFiles::Direct { run } => run.join(name),
            VmFiles::Jail { root, .. } => root.join(name),
        }
    }

    /// How the VM names its file `name` in API bodies.
    pub fn api(&self, name: &str) -> String {
        match self {
            VmFiles::Direct { run } => run.join(name).to_string_lossy().into_owned(),
            VmFiles::Jail { .. } => format!("/{name}"),
        }
    }

    /// Makes the read-only host file `src` readable by the VM as `name`; returns the API
    /// path. Direct: `src` itself. Jail: a hard link (same filesystem, world-readable), else
    /// a clone owned by the jail's uid.
    pub fn expose(&self, src: &Path, name: &str) -> Result<String> {
        match self {
            VmFiles::Direct { .. } => Ok(src.to_string_lossy().into_owned()),
            VmFiles::Jail { .. } => {
                let dst = self.host(name);
                let readable = std::fs::metadata(src)
                    .with_context(|| format!("reading {}", src.display()))?
                    .mode()
                    & 0o004
                    != 0;
                if !(readable && std::fs::hard_link(src, &dst).is_ok()) {
                    crate::driver_fc::clone_file(src, &dst)?;
                    self.own(&dst)?;
                }
                Ok(self.api(name))
            }
        }
    }

    /// Gives a file this run created in the VM's namespace to the VM's user (jail only).
    pub fn own(&self, path: &Path) -> Result<()> {
        if let VmFiles::Jail { uid, gid, .. } = self {
            std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                .with_context(|| format!("giving {} to uid {uid} gid {gid}", path.display()))?;
        }
        Ok(())
    }

    /// Creates the empty file `name` (logs, metrics: Firecracker wants them to exist) owned
    /// by the VM's user; returns its API path.
    pub fn touch(&self, name: &str) -> Result<String> {
        let path = self.host(name);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        self.own(&path)?;
        Ok(self.api(name))
    }

    /// Moves `name`, which the VM wrote, to `dst` (rename, or clone and remove across
    /// filesystems).
    pub fn take(&self, name: &str, dst: &Path) -> Result<()> {
        let src = self.host(name);
        if std::fs::rename(&src, dst).is_ok() {
            return Ok(());
        }
        crate::driver_fc::clone_file(&src, dst)?;
        std::fs::remove_file(&src).with_context(|| format!("removing {}", src.display()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn direct_files_are_host_paths_and_jail_files_are_jail_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let direct = VmFiles::Direct {
            run: dir.path().join("run"),
        };
        assert_eq!(
            direct.api("v.sock"),
            dir.path().join("run/v.sock").to_string_lossy()
        );
        let src = dir.path().join("mem");
        std::fs::write(&src, b"memory").unwrap();
        assert_eq!(direct.expose(&src, "mem").unwrap(), src.to_string_lossy());

        let root = dir.path().join("jail/root");
        std::fs::create_dir_all(&root).unwrap();
        // SAFETY: geteuid and getegid only read the process's credentials.
        let (uid, gid) = (unsafe { libc::geteuid() }, unsafe { libc::getegid() });
        let jail = VmFiles::Jail {
            root: root.clone(),
            uid,
            gid,
        };
        assert_eq!(jail.api("mem"), "/mem");
        assert_eq!(jail.host("mem"), root.join("mem"));
        // Readable by all: hard-linked (same inode), never copied.
        let mut perms = std::fs::metadata(&src).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o444);
        std::fs::set_permissions(&src, perms).unwrap();
        assert_eq!(jail.expose(&src, "mem").unwrap(), "/mem");
        assert_eq!(
            std::fs::metadata(root.join("mem")).unwrap().ino(),
            std::fs::metadata(&src).unwrap().ino()
        );
        // Private: a clone owned by the VM's user.
        let private = dir.path().join("private");
        std::fs::write(&private, b"secret").unwrap();
        let mut perms = std::fs::metadata(&private).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
        std::fs::set_permissions(&private, perms).unwrap();
        jail.expose(&private, "private").unwrap();
        assert_ne!(
            std::fs::metadata(root.join("private")).unwrap().ino(),
            std::fs::metadata(&private).unwrap().ino()
        );
        assert_eq!(std::fs::read(root.join("private")).unwrap(), b"secret");
        assert_eq!(jail.touch("fc.log").unwrap(), "/fc.log");
        jail.take("fc.log", &dir.path().join("out.log")).unwrap();
        assert!(dir.path().join("out.log").is_file() && !root.join("fc.log").exists());
    }
}
