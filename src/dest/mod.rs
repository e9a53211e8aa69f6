//! Destinations: where committed batch files go.
//!
//! One trait, two implementations: [`s3::S3Destination`] (MinIO or any S3
//! server, through the `minio` crate) and [`dir::DirDestination`] (a local
//! directory with the same key layout). A destination knows nothing of the
//! stream, the batcher or the state file: it stores, finds, reads and deletes
//! whole objects by key. Keys are full object keys (`<folder>/stream_<ms>_<N>.json`);
//! naming lives in [`naming`].

pub(crate) mod dir;
pub(crate) mod fault;
#[cfg(test)]
pub(crate) mod memory;
pub(crate) mod naming;
pub(crate) mod s3;

use std::fmt;

use sha2::Digest as _;

/// What we record beside every object (S3 user metadata, or a sidecar for the
/// directory destination is *not* written: the directory keeps the body only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObjectMeta {
    /// Number of lines (events) in the body.
    pub(crate) events: u64,
    /// SSE id of the first line.
    pub(crate) first_id: String,
    /// SSE id of the last line.
    pub(crate) last_id: String,
    /// Lower-case hex SHA-256 of the body.
    pub(crate) sha256_hex: String,
}

impl ObjectMeta {
    /// The metadata of a body of JSON lines, recomputed from it (what the
    /// directory destination reports, and what `check-stream --verify`
    /// compares with the stored metadata).
    pub(crate) fn of_body(body: &[u8]) -> ObjectMeta {
        let id_of = |line: &[u8]| -> String {
            serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string))
                .unwrap_or_default()
        };
        let lines: Vec<&[u8]> = body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        ObjectMeta {
            events: lines.len() as u64,
            first_id: lines.first().map(|l| id_of(l)).unwrap_or_default(),
            last_id: lines.last().map(|l| id_of(l)).unwrap_or_default(),
            sha256_hex: crate::text::hex(&sha2::Sha256::digest(body)),
        }
    }
}

/// Whether a failed storage call may succeed if tried again.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DestError {
    /// Network trouble, server busy, timeouts: retry with backoff.
    #[error("{0}")]
    Transient(String),
    /// Wrong credentials, no permission, bad bucket name, disk full on a
    /// path we cannot fix: stop and tell the operator.
    #[error("{0}")]
    Permanent(String),
}

impl DestError {
    /// True when the same call may succeed later.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self, DestError::Transient(_))
    }
}

/// The condition of a conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Precondition {
    /// Only if no object has the key (`If-None-Match: *`).
    Absent,
    /// Only if the object still has this tag (`If-Match: "<etag>"`).
    Matches(String),
}

/// What a conditional write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CondPut {
    /// Stored; the new object's tag.
    Stored(String),
    /// Not stored: the condition did not hold.
    PreconditionFailed,
    /// This destination cannot write conditionally.
    Unsupported,
}

/// A place that stores whole objects atomically: a reader sees an object in
/// full or not at all.
pub(crate) trait Destination: Send {
    /// Where the objects go, for logs and messages (`s3://bucket/folder`,
    /// `/path/to/dir`). Never contains a secret.
    fn describe(&self) -> String;
    /// Make the target usable: create the bucket (S3) or the directory if
    /// missing. Called once before the first upload.
    fn prepare(&mut self) -> Result<(), DestError>;
    /// Remove what killed runs left half-written under `prefix` (only this
    /// export's own keys: another exporter may be writing elsewhere in the
    /// same place). Nothing to do where writes are atomic (S3).
    fn clean_temporaries(&mut self, _prefix: &str) -> Result<(), DestError> {
        Ok(())
    }
    /// Store `body` under `key`, replacing any object of that key.
    fn put(&mut self, key: &str, body: &[u8], meta: &ObjectMeta) -> Result<(), DestError>;
    /// Whether a complete object exists under `key`.
    fn exists(&mut self, key: &str) -> Result<bool, DestError>;
    /// Every key that starts with `prefix`, in key order.
    fn list(&mut self, prefix: &str) -> Result<Vec<String>, DestError>;
    /// The whole body of `key`.
    fn get(&mut self, key: &str) -> Result<Vec<u8>, DestError>;
    /// The metadata stored with `key`, when the destination keeps any.
    fn meta(&mut self, key: &str) -> Result<Option<ObjectMeta>, DestError>;
    /// Remove `key`; removing a missing key is not an error.
    fn delete(&mut self, key: &str) -> Result<(), DestError>;
    /// Stores `body` under `key` only if `cond` holds, atomically with the
    /// check, where the store can.
    fn put_if(
        &mut self,
        _key: &str,
        _body: &[u8],
        _cond: &Precondition,
    ) -> Result<CondPut, DestError> {
        Ok(CondPut::Unsupported)
    }
    /// The body of `key` and its tag (what [`Precondition::Matches`]
    /// compares), `None` when there is no such object.
    fn get_tagged(&mut self, key: &str) -> Result<Option<(Vec<u8>, String)>, DestError> {
        if !self.exists(key)? {
            return Ok(None);
        }
        let body = self.get(key)?;
        let tag = crate::text::hex(&sha2::Sha256::digest(&body));
        Ok(Some((body, tag)))
    }
    /// Whether `put` stores [`ObjectMeta::sha256_hex`]; when not, the
    /// committer does not spend time hashing the body.
    fn stores_checksum(&self) -> bool {
        true
    }
}

impl fmt::Debug for dyn Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The destinations of a config: files, dead letters, and the importer's
/// done bucket when configured.
pub(crate) struct Destinations {
    /// Where batch files go.
    pub(crate) files: Box<dyn Destination>,
    /// Where dead letters go.
    pub(crate) dead: Box<dyn Destination>,
    /// The importer's done bucket.
    pub(crate) done: Option<Box<dyn Destination>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_of_a_body_counts_lines_and_names_the_first_and_last_ids() {
        let body = b"{\"id\":\"1-0\",\"x\":1}\n{\"id\":\"1-1\"}\n{\"id\":\"2-0\"}\n";
        let m = ObjectMeta::of_body(body);
        assert_eq!(m.events, 3);
        assert_eq!((m.first_id.as_str(), m.last_id.as_str()), ("1-0", "2-0"));
        assert_eq!(m.sha256_hex.len(), 64);
        assert_eq!(ObjectMeta::of_body(b"").events, 0);
        assert_eq!(
            ObjectMeta::of_body(b"").sha256_hex,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
