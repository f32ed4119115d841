//! `.bazelrc` and every file it imports, recursively: the inputs of the `bazelrc` component.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use crate::{read_optional, FingerprintError};

/// Reads `<workspace>/.bazelrc` and, transitively, each existing file named by an `import` or
/// `try-import` line, as `(key, bytes)`: the key is the workspace-relative path, or the absolute
/// path for files outside the workspace. `workspace` must be absolute and canonical.
pub(crate) fn read_bazelrcs(workspace: &Path) -> Result<Vec<(String, Vec<u8>)>, FingerprintError> {
    let mut found = Vec::new();
    let mut visited = HashSet::new();
    let mut pending = vec![workspace.join(".bazelrc")];
    while let Some(path) = pending.pop() {
        // Cycles (and files imported twice) are read once.
        if !visited.insert(path.clone()) {
            continue;
        }
        // A missing import is skipped either way, as upstream does: Bazel fails on a missing
        // `import`, so such a workspace produces no snapshot to reuse.
        let Some(bytes) = read_optional(&path)? else {
            continue;
        };
        pending.extend(imports(&bytes, workspace));
        found.push((key(&path, workspace), bytes));
    }
    Ok(found)
}

/// The files an rc file imports, parsed as upstream does: a trimmed line starting with
/// `import ` or `try-import `, its rest trimmed, `%workspace%` replaced, relative to the workspace.
fn imports(content: &[u8], workspace: &Path) -> Vec<PathBuf> {
    let text = String::from_utf8_lossy(content);
    let workspace_text = workspace.to_string_lossy();
    text.split(['\n', '\r'])
        .filter_map(|line| {
            let line = line.trim();
            if !(line.starts_with("import ") || line.starts_with("try-import ")) {
                return None;
            }
            let (_, target) = line.split_once(' ')?;
            let target = target.trim().replace("%workspace%", &workspace_text);
            Some(normalize(&workspace.join(target)))
        })
        .collect()
}

/// Resolves `.` and `..` lexically, so one file has one key and cycles are recognised.
fn normalize(path: &Path) -> PathBuf {
    let mut normal = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                normal.pop();
            }
            other => normal.push(other),
        }
    }
    normal
}

fn key(path: &Path, workspace: &Path) -> String {
    path.strip_prefix(workspace)
        .unwrap_or(path)
        .to_string_lossy()
        .into_owned()
}
