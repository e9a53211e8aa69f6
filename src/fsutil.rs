//! File-system helpers shared by the state file, the directory destination
//! and the metrics textfile: the one atomic write, and the directory a path
//! lives in. Knows nothing of what the bytes mean.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `body` to `path` so that a reader sees the old or the new content,
/// never a mix (see [`replace`]), creating the missing parent directories
/// first. `private` creates the file mode 0600.
pub fn write_atomic(path: &Path, body: &[u8], private: bool) -> io::Result<()> {
    let path = &resolve_links(path)?;
    fs::create_dir_all(parent_dir(path))?;
    replace(path, body, private)
}

/// The file a path names once symbolic links are followed (a dangling
/// link names its target, which a write creates): a state file linked into
/// a persistent volume is written there, and the link stays.
pub fn resolve_links(path: &Path) -> io::Result<PathBuf> {
    let mut p = path.to_path_buf();
    for _ in 0..40 {
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(&p)?;
                p = if target.is_absolute() {
                    target
                } else {
                    parent_dir(&p).join(target)
                };
            }
            _ => return Ok(p),
        }
    }
    Err(io::Error::other(format!(
        "`{}`: too many levels of symbolic links",
        path.display()
    )))
}

/// Replaces `path` with `body` in a directory that must exist: a hidden
/// temporary file (`.<name>.tmp-<run id>-<n>`, unique to the run across
/// hosts, which the directory destination recognises and never lists)
/// created anew (a link placed at that name is never followed) in the same
/// directory, fsynced, renamed over `path`, then the directory fsynced so
/// the rename survives a crash. A `path` that is a symbolic link is written
/// through to its target. On failure the temporary file is removed.
/// `private` creates it mode 0600.
pub fn replace(path: &Path, body: &[u8], private: bool) -> io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let path = &resolve_links(path)?;
    let Some(name) = path.file_name() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path names no file",
        ));
    };
    let dir = parent_dir(path);
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        crate::clock::run_id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = create(&tmp, private)?;
        f.write_all(body)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        sync_dir(&dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The directory a path lives in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Flushes a directory entry change to disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn create(path: &Path, private: bool) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    // O_EXCL: never through a link someone placed at the temporary name.
    opts.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_the_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"first, longer content\n", false).unwrap();
        write_atomic(&path, b"second\n", false).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second\n");
        assert_eq!(names(dir.path()), ["state.json"]);
    }

    #[test]
    fn write_atomic_creates_parents_and_replace_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("a/b/c.json");
        write_atomic(&deep, b"x", false).unwrap();
        assert_eq!(fs::read(&deep).unwrap(), b"x");

        let missing = dir.path().join("no/such/dir/x.prom");
        let err = replace(&missing, b"x", false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(names(dir.path()), ["a"]);
    }

    #[test]
    fn a_failed_rename_removes_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        // A non-empty directory where the file should go: the rename fails.
        let target = dir.path().join("taken");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inside"), b"").unwrap();
        assert!(replace(&target, b"x", false).is_err());
        assert_eq!(names(dir.path()), ["taken"]);
    }

    #[test]
    fn a_path_without_a_file_name_is_refused() {
        let err = replace(Path::new("/"), b"x", false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[cfg(unix)]
    #[test]
    fn private_files_are_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.json");
        write_atomic(&path, b"x", true).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn bare_file_names_live_in_the_current_directory() {
        assert_eq!(parent_dir(Path::new("state.json")), PathBuf::from("."));
        assert_eq!(parent_dir(Path::new("a/state.json")), PathBuf::from("a"));
    }
}
