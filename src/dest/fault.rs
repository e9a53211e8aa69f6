//! A destination that dies on purpose, for the crash tests of the real
//! binary.
//!
//! `OPENCTI_STREAM_EXPORTER_FAULT=<point>:<file number>` wraps the files'
//! destination: `before-upload` aborts the process just before data file N
//! is stored (its pending record is saved, nothing stored), `after-upload`
//! just after (stored, the state not yet committed). A kill from outside
//! cannot aim at these windows, which last microseconds; the wrapper sits
//! at the destination seam, so the commit protocol itself holds no test
//! code. Without the variable nothing is wrapped.

use super::{naming, CondPut, DestError, Destination, ObjectMeta, Precondition};

/// The variable that arms a fault.
pub const FAULT_VAR: &str = "OPENCTI_STREAM_EXPORTER_FAULT";

/// Where to die.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// Before data file N is stored.
    BeforeUpload(u64),
    /// After data file N is stored.
    AfterUpload(u64),
}

impl Point {
    /// The point the environment asks for, if any.
    pub fn from_env() -> Option<Point> {
        let v = std::env::var(FAULT_VAR).ok()?;
        let (p, n) = v.split_once(':')?;
        let n = n.parse().ok()?;
        match p {
            "before-upload" => Some(Point::BeforeUpload(n)),
            "after-upload" => Some(Point::AfterUpload(n)),
            _ => None,
        }
    }
}

/// Wraps a destination; aborts the process at the chosen point.
pub struct Faulty {
    inner: Box<dyn Destination>,
    point: Point,
}

impl Faulty {
    /// `inner`, dying at `point`.
    pub fn new(inner: Box<dyn Destination>, point: Point) -> Self {
        Faulty { inner, point }
    }

    fn die_if(&self, point: Point, key: &str) {
        let data = key
            .rsplit('/')
            .next()
            .is_some_and(|n| n.starts_with("stream_"));
        let n = naming::file_number(key);
        let hit = match point {
            Point::BeforeUpload(_) => Point::BeforeUpload(n.unwrap_or(0)),
            Point::AfterUpload(_) => Point::AfterUpload(n.unwrap_or(0)),
        };
        if data && hit == self.point {
            eprintln!("fault injection: dying at {point:?} of `{key}`");
            std::process::abort();
        }
    }
}

impl Destination for Faulty {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn prepare(&mut self) -> Result<(), DestError> {
        self.inner.prepare()
    }
    fn clean_temporaries(&mut self, prefix: &str) -> Result<(), DestError> {
        self.inner.clean_temporaries(prefix)
    }
    fn put(&mut self, key: &str, body: &[u8], meta: &ObjectMeta) -> Result<(), DestError> {
        self.die_if(Point::BeforeUpload(0), key);
        self.inner.put(key, body, meta)?;
        self.die_if(Point::AfterUpload(0), key);
        Ok(())
    }
    fn put_if(
        &mut self,
        key: &str,
        body: &[u8],
        cond: &Precondition,
    ) -> Result<CondPut, DestError> {
        self.inner.put_if(key, body, cond)
    }
    fn get_tagged(&mut self, key: &str) -> Result<Option<(Vec<u8>, String)>, DestError> {
        self.inner.get_tagged(key)
    }
    fn exists(&mut self, key: &str) -> Result<bool, DestError> {
        self.inner.exists(key)
    }
    fn list(&mut self, prefix: &str) -> Result<Vec<String>, DestError> {
        self.inner.list(prefix)
    }
    fn get(&mut self, key: &str) -> Result<Vec<u8>, DestError> {
        self.inner.get(key)
    }
    fn meta(&mut self, key: &str) -> Result<Option<ObjectMeta>, DestError> {
        self.inner.meta(key)
    }
    fn delete(&mut self, key: &str) -> Result<(), DestError> {
        self.inner.delete(key)
    }
    fn stores_checksum(&self) -> bool {
        self.inner.stores_checksum()
    }
}
