//! An in-memory destination for unit tests of pure logic, with a crash
//! switch: every write (and every state save through [`MemoryState`])
//! ticks one shared clock, and at the chosen tick the "process dies" —
//! that write and every later call fail, as after a kill -9. A write can
//! die before or after it is stored.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{DestError, Destination, ObjectMeta};
use crate::state::{State, StateError, StateStore};

/// When the process dies.
#[derive(Debug, Default)]
pub struct Crash {
    /// Writes done so far.
    pub ticks: u64,
    /// The write that dies, if any.
    pub at: Option<u64>,
    /// Whether the dying write is stored first (its answer is lost).
    pub after_store: bool,
    /// Set once dead: every call fails until the next run.
    pub dead: bool,
}

impl Crash {
    /// Ticks; tells whether this write dies, and whether it is stored first.
    fn tick(&mut self) -> Option<bool> {
        if self.dead {
            return Some(false);
        }
        self.ticks += 1;
        if self.at == Some(self.ticks) {
            self.dead = true;
            return Some(self.after_store);
        }
        None
    }
}

/// The shared crash switch.
pub type CrashSwitch = Arc<Mutex<Crash>>;

fn died() -> DestError {
    DestError::Permanent("the process died here".into())
}

/// Bodies and metadata by key.
pub type Objects = BTreeMap<String, (Vec<u8>, ObjectMeta)>;

/// Objects by key, shared so a test can look at them after a "crash".
#[derive(Clone, Default)]
pub struct Memory {
    /// The objects.
    pub objects: Arc<Mutex<Objects>>,
    /// Each key's bodies as written, in order.
    pub history: Arc<Mutex<BTreeMap<String, Vec<Vec<u8>>>>>,
    /// The crash switch.
    pub crash: CrashSwitch,
    /// Its name.
    pub name: String,
}

impl Memory {
    /// An empty store sharing `crash`.
    pub fn new(name: &str, crash: CrashSwitch) -> Self {
        Memory {
            name: name.into(),
            crash,
            ..Memory::default()
        }
    }

    /// Stores an object without a crash check (the importer's own writes).
    pub fn insert(&self, key: &str, body: Vec<u8>, meta: ObjectMeta) {
        self.objects
            .lock()
            .unwrap()
            .insert(key.to_string(), (body, meta));
    }

    /// Removes an object without a crash check.
    pub fn remove(&self, key: &str) -> Option<(Vec<u8>, ObjectMeta)> {
        self.objects.lock().unwrap().remove(key)
    }

    fn alive(&self) -> Result<(), DestError> {
        if self.crash.lock().unwrap().dead {
            Err(died())
        } else {
            Ok(())
        }
    }
}

impl Destination for Memory {
    fn describe(&self) -> String {
        format!("memory `{}`", self.name)
    }
    fn prepare(&mut self) -> Result<(), DestError> {
        self.alive()
    }
    fn put(&mut self, key: &str, body: &[u8], meta: &ObjectMeta) -> Result<(), DestError> {
        let dies = self.crash.lock().unwrap().tick();
        if dies == Some(false) {
            return Err(died());
        }
        self.insert(key, body.to_vec(), meta.clone());
        self.history
            .lock()
            .unwrap()
            .entry(key.to_string())
            .or_default()
            .push(body.to_vec());
        match dies {
            Some(true) => Err(died()),
            _ => Ok(()),
        }
    }
    fn exists(&mut self, key: &str) -> Result<bool, DestError> {
        self.alive()?;
        Ok(self.objects.lock().unwrap().contains_key(key))
    }
    fn list(&mut self, prefix: &str) -> Result<Vec<String>, DestError> {
        self.alive()?;
        Ok(self
            .objects
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }
    fn get(&mut self, key: &str) -> Result<Vec<u8>, DestError> {
        self.alive()?;
        self.objects
            .lock()
            .unwrap()
            .get(key)
            .map(|(b, _)| b.clone())
            .ok_or_else(|| DestError::Permanent(format!("no `{key}`")))
    }
    fn meta(&mut self, key: &str) -> Result<Option<ObjectMeta>, DestError> {
        self.alive()?;
        Ok(self
            .objects
            .lock()
            .unwrap()
            .get(key)
            .map(|(_, m)| m.clone()))
    }
    fn delete(&mut self, key: &str) -> Result<(), DestError> {
        self.alive()?;
        self.remove(key);
        Ok(())
    }
}

/// A state "file" in memory, saved through the same crash switch.
#[derive(Clone, Default)]
pub struct MemoryState {
    /// The saved state (`None`: no file).
    pub saved: Arc<Mutex<Option<State>>>,
    /// The crash switch.
    pub crash: CrashSwitch,
}

impl StateStore for MemoryState {
    fn save(&mut self, state: &State) -> Result<(), StateError> {
        let dies = self.crash.lock().unwrap().tick();
        let err = || StateError::Io {
            path: "memory".into(),
            source: std::io::Error::other("the process died here"),
        };
        if dies == Some(false) {
            return Err(err());
        }
        *self.saved.lock().unwrap() = Some(state.clone());
        match dies {
            Some(true) => Err(err()),
            _ => Ok(()),
        }
    }
    fn describe(&self) -> String {
        "memory-state.json".into()
    }
}
