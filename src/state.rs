//! The state file: where the export stands, saved atomically.
//!
//! Holds the reference exporter's keys (`start_from`, `recover_until`,
//! `last_written_msg_id`, `file_count`) with the same meaning, so a cursor can
//! be carried across by hand, plus ours: the pending upload, the last key
//! stamp, counters and the last run's outcome. Unknown keys are kept.
//!
//! Writes go to a temporary file that is fsynced, renamed over the state and
//! followed by an fsync of the directory; files are created mode 0600. A
//! state file that is a symbolic link (into a persistent volume) is written
//! through to its target: the link stays. Temporary files are created anew
//! with a name unique to the run, and neither they nor the lock file follow
//! a symbolic link someone else placed. A state that cannot be read is an
//! error, never a silent reset. The exclusive lock lives in a separate
//! `<state>.lock` file, because the state file itself is replaced on every
//! save.
//!
//! A state written by the reference exporter resumes where the reference
//! itself would: after `last_written_msg_id` (its `start_from` is the last
//! id *received*, ahead of what was written), keeping `file_count`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::{parent_dir, write_atomic};
use crate::id::EventId;

/// An upload that was started but not yet known to have finished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The file number it uses.
    pub file_number: u64,
    /// Its object key.
    pub key: String,
    /// The cursor to save once it is stored (`None`: keep the old one).
    pub cursor: Option<EventId>,
    /// Lines in it.
    pub events: u64,
    /// Its size in bytes.
    pub bytes: u64,
}

/// Figures of the last run, for `state show`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    /// When the run started (RFC 3339).
    pub started_at: String,
    /// When it ended (RFC 3339); empty while running.
    #[serde(default)]
    pub ended_at: String,
    /// How it ended: `running`, `completed`, `interrupted`, `failed: ...`.
    pub outcome: String,
    /// Lines exported.
    pub events: u64,
    /// Files stored.
    pub files: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// Dead letters kept.
    #[serde(default)]
    pub dead_letters: u64,
}

/// The saved state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Reference key: the id to resume after (every event up to it is stored).
    #[serde(default)]
    pub start_from: Option<String>,
    /// Reference key: recovery end date (ISO) while a snapshot is in progress, else `false`.
    #[serde(default, with = "recover_until")]
    pub recover_until: Option<String>,
    /// Reference key: same as `start_from` (the last id written to storage).
    #[serde(default)]
    pub last_written_msg_id: Option<String>,
    /// Reference key: number of the last stored file (the next is `file_count + 1`).
    #[serde(default)]
    pub file_count: u64,
    /// Millisecond stamp of the last key used; keys never go below it.
    #[serde(default)]
    pub last_key_ms: u64,
    /// The export this state belongs to (see [`crate::marker`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_id: Option<String>,
    /// The upload in progress, if the process stopped during one.
    #[serde(default)]
    pub pending: Option<Pending>,
    /// The live stream this state belongs to.
    #[serde(default)]
    pub stream_id: Option<String>,
    /// Dead letters kept since the state was created.
    #[serde(default)]
    pub dead_letters: u64,
    /// Events held back by the export policy, by reason.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub held_by_policy: std::collections::BTreeMap<String, u64>,
    /// Gaps on the server side that an operator accepted (`--accept-gap`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepted_gaps: Vec<String>,
    /// Last save (RFC 3339).
    #[serde(default)]
    pub updated_at: String,
    /// The last run's figures.
    #[serde(default)]
    pub last_run: Option<RunSummary>,
    /// Keys this version does not know, kept as they are.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

mod recover_until {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(date) => s.serialize_str(date),
            None => s.serialize_bool(false),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(Some(s)),
            serde_json::Value::Bool(false) | serde_json::Value::Null => Ok(None),
            other => Err(serde::de::Error::custom(format!(
                "`recover_until` must be a date or false, not {other}"
            ))),
        }
    }
}

impl State {
    /// The saved cursor as an id.
    pub fn cursor(&self) -> Result<Option<EventId>, String> {
        match &self.start_from {
            None => Ok(None),
            Some(s) => s
                .parse()
                .map(Some)
                .map_err(|e| format!("`start_from`: {e}")),
        }
    }

    /// Moves the cursor forward (never back) and mirrors it into `last_written_msg_id`.
    pub fn advance_cursor(&mut self, to: EventId) {
        let cur = self.cursor().ok().flatten();
        if cur.is_none_or(|c| to > c) {
            self.start_from = Some(to.to_string());
            self.last_written_msg_id = Some(to.to_string());
        }
        if let Some(until) = &self.recover_until {
            if crate::id::parse_iso_ms(until).is_ok_and(|ms| to.ms > ms) {
                self.recover_until = None;
            }
        }
    }
}

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Unreadable content: never reset silently.
    #[error("state file `{path}` is corrupt ({reason}): repair it, move it aside (the next run resumes from the export's own record in the destination), or run `opencti-stream-exporter state reset --start-from <position>`, which keeps the file numbering and key stamps the destination records")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another process holds the lock.
    #[error(
        "another run holds the lock on `{path}` (pid {holder}): wait for it to end, or stop it"
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// What the lock file says about its holder.
        holder: String,
    },
    /// The directory of the state file refuses us (permissions, read-only).
    #[error("cannot write the state in `{dir}` ({cause}, on `{path}`): give this user write access to that directory, or choose another state file with `--state PATH` (or `state.path`)")]
    Unwritable {
        /// The directory.
        dir: PathBuf,
        /// The file the call was about.
        path: PathBuf,
        /// The cause, in the message (not a `source`: it would be printed twice).
        cause: std::io::Error,
    },
    /// Any I/O failure.
    #[error("state file `{path}`: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn io_err(path: &Path, source: std::io::Error) -> StateError {
    use std::io::ErrorKind;
    if matches!(
        source.kind(),
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem
    ) {
        return StateError::Unwritable {
            dir: parent_dir(path),
            path: path.to_path_buf(),
            cause: source,
        };
    }
    StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the committer saves the state.
pub trait StateStore: Send {
    /// Saves `state` so that a crash leaves the old or the new one.
    fn save(&mut self, state: &State) -> Result<(), StateError>;
    /// Where it is, for messages.
    fn describe(&self) -> String;
}

/// The state file at a path.
#[derive(Debug, Clone)]
pub struct StateFile(pub PathBuf);

impl StateStore for StateFile {
    fn save(&mut self, state: &State) -> Result<(), StateError> {
        save(&self.0, state)
    }

    fn describe(&self) -> String {
        self.0.display().to_string()
    }
}

impl State {
    /// Whether this state was written by the reference exporter (it has
    /// none of the keys only this tool writes).
    pub fn is_reference(&self) -> bool {
        self.updated_at.is_empty()
            && self.last_key_ms == 0
            && self.export_id.is_none()
            && self.pending.is_none()
            && self.last_run.is_none()
    }

    /// Brings a reference state to this tool's meaning: the cursor is
    /// `last_written_msg_id` (what was stored), not `start_from` (what was
    /// received); with nothing written, the reference starts over from its
    /// configuration and so does this. Returns what changed, for the log.
    pub fn adopt_reference_cursor(&mut self) -> Option<String> {
        let written = self.last_written_msg_id.clone();
        match (&self.start_from, &written) {
            (Some(from), Some(w)) if from != w => {
                let note = format!(
                    "the state's `start_from` `{from}` is ahead of `last_written_msg_id` `{w}` (a state of the reference exporter: it saves the last id received): resuming after `{w}`, the last id stored, with file {} next",
                    self.file_count + 1
                );
                self.start_from = Some(w.clone());
                Some(note)
            }
            (Some(from), None) if self.is_reference() => {
                let note = format!(
                    "the state has `start_from` `{from}` but no `last_written_msg_id` (a state of the reference exporter that never stored a file): starting from the configuration, as the reference does, with file {} next",
                    self.file_count + 1
                );
                self.start_from = None;
                Some(note)
            }
            _ => None,
        }
    }
}

/// Reads the state; `Ok(None)` when there is no file yet.
pub fn load(path: &Path) -> Result<Option<State>, StateError> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path, e)),
    };
    if text.iter().all(u8::is_ascii_whitespace) {
        return Err(StateError::Corrupt {
            path: path.into(),
            reason: "the file is empty".into(),
        });
    }
    let mut state: State = serde_json::from_slice(&text).map_err(|e| StateError::Corrupt {
        path: path.into(),
        reason: e.to_string(),
    })?;
    if let Some(w) = &state.last_written_msg_id {
        w.parse::<EventId>().map_err(|e| StateError::Corrupt {
            path: path.into(),
            reason: format!("`last_written_msg_id`: {e}"),
        })?;
    }
    state.cursor().map_err(|reason| StateError::Corrupt {
        path: path.into(),
        reason,
    })?;
    if let Some(note) = state.adopt_reference_cursor() {
        log::warn!("{note}");
    }
    if let Some(p) = &state.pending {
        if crate::dest::naming::file_number(&p.key) != Some(p.file_number) {
            return Err(StateError::Corrupt {
                path: path.into(),
                reason: format!("pending key `{}` does not match its number", p.key),
            });
        }
    }
    Ok(Some(state))
}

/// Writes the state atomically: temp file, fsync, rename, fsync of the directory.
pub fn save(path: &Path, state: &State) -> Result<(), StateError> {
    let mut state = state.clone();
    state.updated_at = crate::id::ms_to_iso(crate::clock::now_ms());
    let mut body = serde_json::to_vec_pretty(&state).expect("state serialises");
    body.push(b'\n');
    write_atomic(path, &body, true).map_err(|e| io_err(path, e))
}

/// An exclusive lock on a state file, released when dropped (or when the
/// process dies, kill -9 included).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

impl StateLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The lock file of a state file.
pub fn lock_path(state: &Path) -> PathBuf {
    let mut name = state
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".lock");
    state.with_file_name(name)
}

/// Takes the exclusive lock without waiting.
pub fn lock(state: &Path) -> Result<StateLock, StateError> {
    let path = lock_path(state);
    fs::create_dir_all(parent_dir(&path)).map_err(|e| io_err(&path, e))?;
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Never through a link someone placed at the lock's name.
        opts.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let mut file = opts.open(&path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            io_err(
                &path,
                std::io::Error::other("it is a symbolic link; the lock file is never followed through one: remove the link"),
            )
        } else {
            io_err(&path, e)
        }
    })?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let holder = fs::read_to_string(&path)
                .unwrap_or_default()
                .trim()
                .to_string();
            let holder = if holder.is_empty() {
                "unknown".to_string()
            } else {
                holder
            };
            return Err(StateError::Locked { path, holder });
        }
        Err(fs::TryLockError::Error(e)) => return Err(io_err(&path, e)),
    }
    file.set_len(0).map_err(|e| io_err(&path, e))?;
    writeln!(file, "{}", std::process::id()).map_err(|e| io_err(&path, e))?;
    Ok(StateLock { _file: file, path })
}

/// True when some process holds the lock right now. Read-only: it creates
/// no file (no lock file is no holder) and does not write its pid.
pub fn is_locked(state: &Path) -> bool {
    let Ok(file) = File::open(lock_path(state)) else {
        return false;
    };
    matches!(file.try_lock_shared(), Err(fs::TryLockError::WouldBlock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_reference_keys_and_keeps_unknown_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        fs::write(&path, r#"{"start_from":"5-0","recover_until":false,"last_written_msg_id":"5-0","file_count":3,"connectorX":1}"#).unwrap();
        let mut s = load(&path).unwrap().unwrap();
        assert_eq!(s.cursor().unwrap(), Some(EventId { ms: 5, seq: 0 }));
        assert_eq!(s.file_count, 3);
        assert_eq!(s.recover_until, None);
        s.advance_cursor(EventId { ms: 7, seq: 1 });
        s.advance_cursor(EventId { ms: 6, seq: 0 });
        save(&path, &s).unwrap();
        let again = load(&path).unwrap().unwrap();
        assert_eq!(again.start_from.as_deref(), Some("7-1"));
        assert_eq!(again.last_written_msg_id.as_deref(), Some("7-1"));
        assert_eq!(again.extra.get("connectorX"), Some(&serde_json::json!(1)));
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"recover_until\": false"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    #[test]
    fn recovery_ends_once_the_cursor_passes_its_date() {
        let mut s = State {
            recover_until: Some("2023-11-14T22:13:20.100Z".into()),
            ..State::default()
        };
        s.advance_cursor(EventId {
            ms: 1_700_000_000_100,
            seq: 0,
        });
        assert!(s.recover_until.is_some());
        s.advance_cursor(EventId {
            ms: 1_700_000_000_101,
            seq: 0,
        });
        assert!(s.recover_until.is_none());
    }

    #[test]
    fn broken_state_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        for content in [
            "",
            "{\"start_from\":\"5-",
            "{\"start_from\":\"abc\"}",
            "[1]",
            "{\"file_count\":-1}",
        ] {
            fs::write(&path, content).unwrap();
            let e = load(&path).unwrap_err().to_string();
            assert!(
                e.contains("corrupt") && e.contains("s.json"),
                "{content}: {e}"
            );
        }
        assert!(load(&dir.path().join("missing.json")).unwrap().is_none());
    }

    #[test]
    fn a_reference_state_resumes_after_what_it_wrote_and_keeps_its_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        fs::write(&path, r#"{"start_from":"900-0","last_written_msg_id":"100-2","recover_until":false,"file_count":41}"#).unwrap();
        let s = load(&path).unwrap().unwrap();
        assert_eq!(s.cursor().unwrap(), Some(EventId { ms: 100, seq: 2 }));
        assert_eq!(s.file_count, 41);
        // Nothing written yet: the reference starts over from its configuration.
        fs::write(&path, r#"{"start_from":"900-0","file_count":0}"#).unwrap();
        assert_eq!(load(&path).unwrap().unwrap().cursor().unwrap(), None);
        fs::write(&path, r#"{"start_from":"900-0","last_written_msg_id":"x"}"#).unwrap();
        assert!(load(&path).is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_symlinked_state_is_written_through_and_links_are_never_followed_for_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let volume = dir.path().join("volume");
        fs::create_dir(&volume).unwrap();
        let target = volume.join("state.json");
        let link = dir.path().join("state.json");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let s = State {
            file_count: 3,
            ..State::default()
        };
        save(&link, &s).unwrap();
        save(&link, &s).unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(load(&target).unwrap().unwrap().file_count, 3);
        // No temporary file left in either directory.
        for d in [dir.path(), volume.as_path()] {
            let names: Vec<String> = fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(".tmp-"))
                .collect();
            assert!(names.is_empty(), "{names:?}");
        }
        // A link placed at the lock's name is not followed.
        let elsewhere = dir.path().join("elsewhere");
        std::os::unix::fs::symlink(&elsewhere, lock_path(&link)).unwrap();
        let e = lock(&link).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(!elsewhere.exists());
    }

    #[test]
    fn second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let first = lock(&path).unwrap();
        let e = lock(&path).unwrap_err();
        assert!(matches!(e, StateError::Locked { .. }), "{e}");
        assert!(is_locked(&path));
        drop(first);
        assert!(!is_locked(&path));
        lock(&path).unwrap();
    }

    #[test]
    fn asking_whether_it_is_locked_creates_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("s.json");
        assert!(!is_locked(&path));
        assert!(!dir.path().join("sub").exists());
    }
}
