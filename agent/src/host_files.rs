//! The host's answers about the files an order names ([`proto::policy::HostFiles`]): where
//! a path leads once symlinks are resolved, what it is, who owns it and who may write it.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use proto::policy::{FileKind, FileLook, HostFiles};

/// The real filesystem, as the agent's user sees it.
pub struct Filesystem {
    /// The agent's own (effective) user: besides root, the one owner a file may have.
    own_uid: Option<u32>,
}

impl Filesystem {
    pub fn new() -> Self {
        // /proc/self belongs to the process's effective user; no unsafe geteuid needed.
        Filesystem {
            own_uid: std::fs::metadata("/proc/self").ok().map(|m| m.uid()),
        }
    }
}

impl Default for Filesystem {
    fn default() -> Self {
        Self::new()
    }
}

impl HostFiles for Filesystem {
    fn look(&self, path: &str) -> FileLook {
        let resolved = resolve(Path::new(path)).display().to_string();
        match std::fs::metadata(path) {
            Ok(meta) => FileLook {
                resolved,
                kind: if meta.is_file() {
                    FileKind::File
                } else {
                    FileKind::Other
                },
                owner_trusted: meta.uid() == 0 || Some(meta.uid()) == self.own_uid,
                mode: meta.mode() & 0o7777,
            },
            Err(_) => FileLook {
                resolved,
                kind: FileKind::Missing,
                owner_trusted: false,
                mode: 0,
            },
        }
    }
}

/// `path` with the symlinks of its longest existing prefix resolved: the engine creates a
/// missing bind source, so where it would land is decided by the part that exists.
fn resolve(path: &Path) -> PathBuf {
    let mut existing = path;
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            return rest.iter().rev().fold(real, |acc, part| acc.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                existing = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::*;

    #[test]
    fn files_are_seen_as_they_are() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let file = root.join("app.env");
        std::fs::write(&file, "A=1\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o620)).unwrap();
        symlink("/etc", root.join("out")).unwrap();
        let fs = Filesystem::new();

        let look = fs.look(file.to_str().unwrap());
        assert_eq!(look.kind, FileKind::File);
        assert!(look.owner_trusted, "the test's own file");
        assert_eq!(look.mode, 0o620);
        assert_eq!(look.resolved, file.display().to_string());

        let dir_look = fs.look(root.to_str().unwrap());
        assert_eq!(dir_look.kind, FileKind::Other);

        let through_link = fs.look(root.join("out/not-yet/there").to_str().unwrap());
        assert_eq!(through_link.kind, FileKind::Missing);
        assert_eq!(through_link.resolved, "/etc/not-yet/there");
    }
}
