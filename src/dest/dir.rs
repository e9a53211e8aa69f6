//! The directory destination: the same key layout as S3, under a root path.
//!
//! Each file is written under a hidden temporary name in its final
//! directory, fsynced, renamed into place and the directory fsynced, so a
//! reader (or a transfer tool) sees a whole file or none. Temporary names
//! are unique to the run; those left by a killed run are removed by
//! [`Destination::clean_temporaries`], under the export's own folder only. Metadata is
//! not stored beside the files (a sidecar would be read by transfer tools as
//! data); `meta()` recomputes it from the body.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{CondPut, DestError, Destination, ObjectMeta, Precondition};

/// Files under a local directory.
#[derive(Debug, Clone)]
pub(crate) struct DirDestination {
    root: PathBuf,
}

impl DirDestination {
    /// Files go below `root`.
    pub(crate) fn new(root: impl Into<PathBuf>) -> Self {
        DirDestination { root: root.into() }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    fn err(&self, what: &str, path: &Path, e: std::io::Error) -> DestError {
        let msg = format!("{what} `{}`: {e}", path.display());
        match e.kind() {
            // A full disk or quota may be freed by the operator: keep trying.
            ErrorKind::StorageFull
            | ErrorKind::QuotaExceeded
            | ErrorKind::Interrupted
            | ErrorKind::TimedOut => {
                DestError::Transient(format!("{msg} (free some space; retrying)"))
            }
            ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => {
                DestError::Permanent(format!(
                    "{msg}: give the exporter's user write access to `{}`",
                    self.root.display()
                ))
            }
            _ if e.raw_os_error() == Some(28) => {
                DestError::Transient(format!("{msg} (free some space; retrying)"))
            }
            _ => DestError::Permanent(msg),
        }
    }
}

fn is_temp(name: &str) -> bool {
    name.starts_with('.') && name.contains(".tmp-")
}

impl Destination for DirDestination {
    fn describe(&self) -> String {
        format!("directory `{}`", self.root.display())
    }

    fn prepare(&mut self) -> Result<(), DestError> {
        fs::create_dir_all(&self.root)
            .map_err(|e| self.err("cannot create directory", &self.root, e))
    }

    fn clean_temporaries(&mut self, prefix: &str) -> Result<(), DestError> {
        // `prefix` is a folder (`<folder>/`): its directory and below.
        let mut stack = vec![self.root.join(prefix.trim_end_matches('/'))];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let p = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(p);
                } else if is_temp(&name) {
                    let _ = fs::remove_file(&p);
                }
            }
        }
        Ok(())
    }

    fn put(&mut self, key: &str, body: &[u8], _meta: &ObjectMeta) -> Result<(), DestError> {
        let path = self.path(key);
        crate::fsutil::write_atomic(&path, body, false)
            .map_err(|e| self.err("cannot write", &path, e))
    }

    /// Create-only: a hard link of a complete temporary file, which fails
    /// when the name exists. Compare-and-swap: the body's SHA-256 is its
    /// tag, compared then replaced; two writers racing within that moment
    /// are not told apart (the directory destination is one host's).
    fn put_if(
        &mut self,
        key: &str,
        body: &[u8],
        cond: &Precondition,
    ) -> Result<CondPut, DestError> {
        let path = self.path(key);
        let tag = crate::text::hex(&Sha256::digest(body));
        match cond {
            Precondition::Absent => {
                let dir = crate::fsutil::parent_dir(&path);
                fs::create_dir_all(&dir).map_err(|e| self.err("cannot create", &dir, e))?;
                let tmp = dir.join(format!(".lease.tmp-{}", crate::clock::run_id()));
                let _ = fs::remove_file(&tmp);
                let r = fs::write(&tmp, body)
                    .and_then(|_| fs::File::open(&tmp)?.sync_all())
                    .and_then(|_| fs::hard_link(&tmp, &path));
                let _ = fs::remove_file(&tmp);
                match r {
                    Ok(()) => Ok(CondPut::Stored(tag)),
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                        Ok(CondPut::PreconditionFailed)
                    }
                    Err(e) => Err(self.err("cannot write", &path, e)),
                }
            }
            Precondition::Matches(old) => match self.get_tagged(key)? {
                Some((_, now)) if &now == old => {
                    crate::fsutil::write_atomic(&path, body, false)
                        .map_err(|e| self.err("cannot write", &path, e))?;
                    Ok(CondPut::Stored(tag))
                }
                _ => Ok(CondPut::PreconditionFailed),
            },
        }
    }

    fn exists(&mut self, key: &str) -> Result<bool, DestError> {
        let path = self.path(key);
        match fs::metadata(&path) {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.err("cannot check", &path, e)),
        }
    }

    fn list(&mut self, prefix: &str) -> Result<Vec<String>, DestError> {
        let mut keys = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(self.err("cannot list", &dir, e)),
            };
            for entry in entries.flatten() {
                let p = entry.path();
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(p);
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                if is_temp(&name) {
                    continue;
                }
                if let Ok(rel) = p.strip_prefix(&self.root) {
                    let key = rel.to_string_lossy().replace('\\', "/");
                    if key.starts_with(prefix) {
                        keys.push(key);
                    }
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn get(&mut self, key: &str) -> Result<Vec<u8>, DestError> {
        let path = self.path(key);
        fs::read(&path).map_err(|e| self.err("cannot read", &path, e))
    }

    fn stores_checksum(&self) -> bool {
        false
    }

    fn meta(&mut self, key: &str) -> Result<Option<ObjectMeta>, DestError> {
        let body = self.get(key)?;
        Ok(Some(ObjectMeta::of_body(&body)))
    }

    fn delete(&mut self, key: &str) -> Result<(), DestError> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err("cannot delete", &path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_lists_and_cleans_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DirDestination::new(dir.path().join("out"));
        d.prepare().unwrap();
        let meta = ObjectMeta::of_body(b"{\"id\":\"1-0\"}\n");
        d.put("f/stream_0000000000002_2.json", b"b\n", &meta)
            .unwrap();
        d.put("f/stream_0000000000001_1.json", b"a\n", &meta)
            .unwrap();
        fs::write(dir.path().join("out/f/.stream_3_3.json.tmp-1"), b"half").unwrap();
        // Another export's temporary file in the same root: not ours to remove.
        fs::create_dir_all(dir.path().join("out/g")).unwrap();
        fs::write(dir.path().join("out/g/.stream_1_1.json.tmp-2"), b"live").unwrap();
        assert_eq!(
            d.list("f/").unwrap(),
            vec![
                "f/stream_0000000000001_1.json",
                "f/stream_0000000000002_2.json"
            ]
        );
        d.clean_temporaries("f/").unwrap();
        assert!(!dir.path().join("out/f/.stream_3_3.json.tmp-1").exists());
        assert!(dir.path().join("out/g/.stream_1_1.json.tmp-2").exists());
        assert!(d.exists("f/stream_0000000000001_1.json").unwrap());
        assert!(!d.exists("f/nope").unwrap());
        assert_eq!(d.get("f/stream_0000000000002_2.json").unwrap(), b"b\n");
        d.delete("f/stream_0000000000002_2.json").unwrap();
        assert!(!d.exists("f/stream_0000000000002_2.json").unwrap());
        // Deleting what is already gone is not an error.
        d.delete("f/stream_0000000000002_2.json").unwrap();
        assert_eq!(d.list("f/").unwrap(), vec!["f/stream_0000000000001_1.json"]);
        assert_eq!(meta.first_id, "1-0");
        assert_eq!(meta.events, 1);
    }
}
