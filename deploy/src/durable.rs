//! Crash-safe file changes: the one implementation of "replace a file atomically and durably"
//! in the workspace. The agent's journal, replay store and health book and the engine's compose
//! overrides all go through it, so a reader (or the agent after `kill -9` or a power cut) sees
//! the old content or the new, never a torn file, and a change that returned `Ok` is on disk.
//!
//! It lives in `deploy` rather than the agent because the engine writes compose overrides and
//! `deploy` cannot depend on the agent; the agent uses it from here.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to a temporary file next to `path`, fsyncs it, renames it over `path` and fsyncs
/// the directory so the rename itself survives a power cut.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write(path, bytes, None)
}

/// [`write_atomic`] of a file other users read (the agent's metrics textfile): it has `mode`
/// from its first byte, whatever the process's umask.
pub fn write_atomic_with_mode(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write(path, bytes, Some(mode))
}

fn write(path: &Path, bytes: &[u8], mode: Option<u32>) -> io::Result<()> {
    let dir = parent_dir(path);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    // Unique per process and write, so two writers of one file never share a temporary.
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        if let Some(mode) = mode {
            // fchmod, which the umask does not narrow (unlike the mode given to open).
            f.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes `path` (already absent is fine) and fsyncs its directory, so the file does not
/// come back after a power cut.
pub fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(parent_dir(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// `fs::create_dir_all`, with the parent of every directory it creates fsynced: a file later
/// renamed into a new directory is only durable if the directory's own entry is.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_all(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => sync_dir(parent_dir(dir)),
        // Another writer created it meanwhile: its creator syncs the entry.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Leftovers of writes interrupted by a crash: harmless, but clutter.
pub fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".tmp") {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<std::ffi::OsString> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn replaces_content_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(names(dir.path()), ["x.json"]);
    }

    #[test]
    fn a_mode_given_is_the_files_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.prom");
        for mode in [0o600, 0o644] {
            write_atomic_with_mode(&p, b"a 1\n", mode).unwrap();
            assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, mode);
        }
        assert_eq!(names(dir.path()), ["x.prom"]);
    }

    #[test]
    fn a_failed_write_leaves_the_old_content_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        write_atomic(&p, b"old").unwrap();
        // A directory where the file should be: the rename fails after the temporary exists.
        let blocked = dir.path().join("blocked");
        fs::create_dir_all(blocked.join("inside")).unwrap();
        assert!(write_atomic(&blocked, b"new").is_err());
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["blocked", "x.json"]);
    }

    #[test]
    fn removal_tolerates_absence_and_directories_are_created_with_their_parents() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b/c");
        create_dir_all(&nested).unwrap();
        create_dir_all(&nested).unwrap();
        let p = nested.join("f");
        write_atomic(&p, b"x").unwrap();
        remove(&p).unwrap();
        remove(&p).unwrap();
        assert!(names(&nested).is_empty());
        assert!(remove(&nested).is_err(), "a directory is not a file");
    }

    #[test]
    fn stale_temporaries_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".x.json.1.0.tmp"), b"half").unwrap();
        fs::write(dir.path().join("x.json"), b"whole").unwrap();
        remove_stale_temporaries(dir.path());
        assert_eq!(names(dir.path()), ["x.json"]);
    }
}
