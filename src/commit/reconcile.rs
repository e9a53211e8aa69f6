//! Reconciling the export's position at start-up, without I/O.
//!
//! Four sources can say where the export stands: the local state file, the
//! export's marker (see [`crate::marker`]), the folder (its highest file
//! and that file's `last-id`) and the importer's done location. The
//! numbering continues after the highest number any of them shows, the key
//! stamp after the highest stamp, and the cursor comes from the source that
//! holds the highest number. Sources that disagree in a way that cannot be
//! settled safely stop the run with a [`Conflict`] that names each source,
//! what it says, and the commands that choose.

use std::fmt;

use crate::dest::naming::key_ms;
use crate::id::EventId;
use crate::marker::Marker;
use crate::state::State;

use super::core::before;

/// The highest data file found in a location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Trace {
    /// Its number.
    pub(crate) number: u64,
    /// Its key.
    pub(crate) key: String,
    /// The id of its last line, from its metadata.
    pub(crate) last_id: Option<EventId>,
}

/// Everything reconciled, already read.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sources {
    /// The local state (after its pending upload was settled), and where it is.
    pub(crate) local: Option<State>,
    /// The state file's path, for messages.
    pub(crate) local_path: String,
    /// The marker, and where it is.
    pub(crate) marker: Option<Marker>,
    /// The marker's location, for messages.
    pub(crate) marker_at: String,
    /// The folder's highest file, and the folder.
    pub(crate) folder: Option<Trace>,
    /// The folder, for messages.
    pub(crate) folder_at: String,
    /// The done location's highest file of this folder, when configured.
    pub(crate) done: Option<Trace>,
    /// The done location, for messages (empty: not configured).
    pub(crate) done_at: String,
    /// The stream this run exports.
    pub(crate) stream_id: String,
    /// The run was given its own start (`run --from`): it must begin a new
    /// export, never continue one found in the destination.
    pub(crate) explicit_start: bool,
}

/// Where the run continues.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Resolved {
    /// The state to continue with.
    pub(crate) state: State,
    /// What was settled, for the log (empty when the sources agreed).
    pub(crate) notes: Vec<String>,
}

/// Sources that cannot be settled safely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Conflict {
    /// What is wrong, in one sentence.
    pub(crate) what: String,
    /// One line per source: where it is and what it says.
    pub(crate) sources: Vec<String>,
    /// The commands that choose.
    pub(crate) choices: Vec<String>,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.what)?;
        for s in &self.sources {
            writeln!(f, "  {s}")?;
        }
        write!(f, "to choose:")?;
        for c in &self.choices {
            write!(f, "\n  {c}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Conflict {}

fn cursor_text(c: Option<&str>) -> String {
    c.map(|c| format!("cursor `{c}`"))
        .unwrap_or_else(|| "no cursor".into())
}

impl Sources {
    fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        match &self.local {
            Some(s) => out.push(format!(
                "local state `{}`: {} files stored (next file {}), {}, export id `{}`",
                self.local_path,
                s.file_count,
                s.file_count + 1,
                cursor_text(s.start_from.as_deref()),
                s.export_id.as_deref().unwrap_or("none")
            )),
            None => out.push(format!("local state `{}`: missing", self.local_path)),
        }
        match &self.marker {
            Some(m) => out.push(format!(
                "marker {}: {} files stored (next file {}), {}, export id `{}`, stream `{}`",
                self.marker_at,
                m.file_count(),
                m.next_file,
                cursor_text(m.cursor.as_deref()),
                m.export_id,
                m.stream_id.as_deref().unwrap_or("?")
            )),
            None => out.push(format!("marker {}: missing", self.marker_at)),
        }
        let trace = |t: &Option<Trace>| match t {
            Some(t) => format!(
                "highest file {} `{}`{}",
                t.number,
                t.key,
                t.last_id
                    .map(|i| format!(" (last id `{i}`)"))
                    .unwrap_or_default()
            ),
            None => "no file".into(),
        };
        out.push(format!(
            "folder {}: {}",
            self.folder_at,
            trace(&self.folder)
        ));
        if !self.done_at.is_empty() {
            out.push(format!(
                "done location {}: {}",
                self.done_at,
                trace(&self.done)
            ));
        }
        out
    }

    /// The highest number the destination shows (folder or done).
    pub(crate) fn stored_high(&self) -> u64 {
        let f = self.folder.as_ref().map(|t| t.number).unwrap_or(0);
        let d = self.done.as_ref().map(|t| t.number).unwrap_or(0);
        f.max(d)
    }

    fn highest_trace(&self) -> Option<&Trace> {
        match (&self.folder, &self.done) {
            (Some(f), Some(d)) => Some(if d.number > f.number { d } else { f }),
            (f, d) => f.as_ref().or(d.as_ref()),
        }
    }

    fn conflict(&self, what: String, choices: Vec<String>) -> Conflict {
        Conflict {
            what,
            sources: self.describe(),
            choices,
        }
    }
}

const CMD: &str = "opencti-stream-exporter";

/// Decides where the run continues. `fresh` is the state of a first run,
/// used when no source knows the export; its `export_id` names the export
/// when no source has a name for it yet.
pub(crate) fn reconcile(src: &Sources, fresh: &State) -> Result<Resolved, Conflict> {
    let new_export_id = fresh.export_id.as_deref().unwrap_or_default();
    let marker_count = src.marker.as_ref().map(|m| m.file_count()).unwrap_or(0);
    let stored = src.stored_high();
    check_stream(src)?;

    let Some(local) = &src.local else {
        return resume_without_state(src, fresh, marker_count, stored);
    };

    let mut notes = Vec::new();
    let mut state = local.clone();
    let local_count = local.file_count;
    let same_export = same_export(src, local)?;
    let ahead = marker_count.max(stored);
    if ahead > local_count {
        if same_export != Some(true) {
            // Nothing says these files are this state's.
            return Err(src.conflict(
                format!(
                    "the destination holds file {ahead} but the local state counts {local_count} stored files: another run or state writes to the same folder, or the state was reset while its files remain, and the importer would see two files numbered {}",
                    local_count + 1
                ),
                vec![
                    "a backfill or a second exporter: give it its own `minio.folder` (or output directory)".into(),
                    format!("the files are this export's: move the state aside (`mv {0} {0}.old`) to resume after them, or run `{CMD} state reset --yes` to number after them and keep the cursor position you give with `--start-from`", src.local_path),
                ],
            ));
        }
        // This export's own record is ahead: the state is an older copy.
        let Some(traced) = from_traces(src, marker_count, stored, new_export_id)? else {
            unreachable!("ahead of a count implies traces")
        };
        notes.push(format!(
            "the state at `{}` is behind this export's own record ({} files stored, not {}): an older copy was restored; resuming after `{}`, next file {}",
            src.local_path,
            traced.file_count,
            local_count,
            traced.start_from.as_deref().unwrap_or("0-0"),
            traced.file_count + 1
        ));
        state.file_count = traced.file_count;
        state.start_from = traced.start_from.clone();
        state.last_written_msg_id = traced.last_written_msg_id.clone();
        state.recover_until = traced.recover_until.clone();
        state.pending = None;
    }
    state.last_key_ms = state.last_key_ms.max(key_stamp(src));
    if state.export_id.is_none() {
        state.export_id = Some(
            src.marker
                .as_ref()
                .map(|m| m.export_id.clone())
                .unwrap_or_else(|| new_export_id.to_string()),
        );
    }
    Ok(Resolved { state, notes })
}

/// Refuses a folder whose marker names another stream.
fn check_stream(src: &Sources) -> Result<(), Conflict> {
    if let Some(m) = &src.marker {
        if m.stream_id.as_deref().is_some_and(|s| s != src.stream_id) {
            return Err(src.conflict(
                format!(
                    "this folder holds the export of another stream (`{}`), not `{}`",
                    m.stream_id.as_deref().unwrap_or("?"),
                    src.stream_id
                ),
                vec![format!(
                    "give this export its own folder (`minio.folder` or the output directory)"
                )],
            ));
        }
    }
    Ok(())
}

/// Where a run without a local state continues: after the export's traces
/// in the destination, or from `fresh` when there are none.
fn resume_without_state(
    src: &Sources,
    fresh: &State,
    marker_count: u64,
    stored: u64,
) -> Result<Resolved, Conflict> {
    let new_export_id = fresh.export_id.as_deref().unwrap_or_default();
    let mut notes = Vec::new();
    if src.explicit_start && (src.marker.is_some() || stored > 0) {
        return Err(src.conflict(
            format!(
                "`--from` starts a new export, but the folder already holds an export ({} files): the importer would see numbers used twice",
                marker_count.max(stored)
            ),
            vec![
                "a backfill: give it its own `minio.folder` (or output directory)".into(),
                format!("to continue the export found there, run without `--from`: it resumes from the folder's record"),
            ],
        ));
    }
    // No local state: resume from the export's traces, if any.
    let Some(mut state) = from_traces(src, marker_count, stored, new_export_id)? else {
        return Ok(Resolved {
            state: fresh.clone(),
            notes,
        });
    };
    notes.push(format!(
        "no state file at `{}`, but the destination holds this export's traces: resuming from them after `{}`, next file {} ({})",
        src.local_path,
        state.start_from.as_deref().unwrap_or("0-0"),
        state.file_count + 1,
        if marker_count >= stored { "from the marker" } else { "from the highest file's metadata" }
    ));
    state.stream_id = Some(src.stream_id.clone());
    Ok(Resolved { state, notes })
}

/// Whether the folder's marker belongs to the local state's export (`None`:
/// no marker); refuses two different exports.
fn same_export(src: &Sources, local: &State) -> Result<Option<bool>, Conflict> {
    let local_count = local.file_count;
    let same_export = match (&src.marker, &local.export_id) {
        (None, _) => None,
        (Some(m), Some(id)) => Some(&m.export_id == id),
        // A state from before the marker existed: the marker is its own
        // only when it agrees with it.
        (Some(m), None) => Some(m.file_count() == local_count),
    };
    if same_export == Some(false) {
        return Err(src.conflict(
            "the local state and the folder's marker belong to two different exports: another state (a backfill?) writes to this folder, or the state was created anew".into(),
            vec![
                "a backfill or a second exporter: give it its own `minio.folder` (or output directory)".into(),
                format!("this state should continue the export recorded in the folder: move it aside (`mv {0} {0}.old`); the next run resumes from the marker", src.local_path),
            ],
        ));
    }
    Ok(same_export)
}

/// The highest key stamp any source shows.
fn key_stamp(src: &Sources) -> u64 {
    let m = src.marker.as_ref().map(|m| m.last_key_ms).unwrap_or(0);
    let t = [&src.folder, &src.done]
        .iter()
        .filter_map(|t| t.as_ref().and_then(|t| key_ms(&t.key)))
        .max()
        .unwrap_or(0);
    m.max(t)
}

/// The state the traces describe, `None` when there are none.
fn from_traces(
    src: &Sources,
    marker_count: u64,
    stored: u64,
    new_export_id: &str,
) -> Result<Option<State>, Conflict> {
    if src.marker.is_none() && stored == 0 {
        return Ok(None);
    }
    let mut state = State {
        export_id: Some(
            src.marker
                .as_ref()
                .map(|m| m.export_id.clone())
                .unwrap_or_else(|| new_export_id.to_string()),
        ),
        last_key_ms: key_stamp(src),
        ..State::default()
    };
    let cursor = if marker_count >= stored {
        let m = src.marker.as_ref().expect("a marker counts");
        state.file_count = marker_count;
        state.recover_until = m.recover_until.clone();
        m.cursor.clone()
    } else {
        // Stored after the last marker write: the file's last id says how
        // far it went (its last group may be incomplete: take it again).
        let t = src.highest_trace().expect("stored > 0");
        state.file_count = t.number;
        state.recover_until = src.marker.as_ref().and_then(|m| m.recover_until.clone());
        let Some(last) = t.last_id else {
            return Err(src.conflict(
                format!(
                    "file {} `{}` has no `last-id` metadata, so where the export stands cannot be told",
                    t.number, t.key
                ),
                vec![format!(
                    "give the position after which to resume; the numbering continues after file {}: `{CMD} state reset --yes --start-from <id or date>`",
                    t.number
                )],
            ));
        };
        let from_file = before(last);
        let from_marker = src
            .marker
            .as_ref()
            .and_then(|m| m.cursor.as_deref())
            .and_then(|c| c.parse::<EventId>().ok());
        Some(from_marker.max(Some(from_file)).expect("some").to_string())
    };
    if let Some(c) = &cursor {
        let id: EventId = c.parse().expect("checked when read");
        state.advance_cursor(id);
    }
    Ok(Some(state))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace(n: u64, ms: u64, last: &str) -> Trace {
        Trace {
            number: n,
            key: format!("f/stream_{ms:013}_{n}.json"),
            last_id: last.parse().ok(),
        }
    }

    fn marker(id: &str, next: u64, cursor: &str) -> Marker {
        Marker {
            export_id: id.into(),
            stream_id: Some("live".into()),
            next_file: next,
            last_key_ms: 50,
            cursor: Some(cursor.into()),
            ..Marker::default()
        }
    }

    fn fresh() -> State {
        State {
            export_id: Some("new".into()),
            stream_id: Some("live".into()),
            ..State::default()
        }
    }

    fn sources() -> Sources {
        Sources {
            local_path: "s.json".into(),
            marker_at: "m".into(),
            folder_at: "f".into(),
            stream_id: "live".into(),
            ..Sources::default()
        }
    }

    #[test]
    fn a_first_run_gets_a_new_identity() {
        let r = reconcile(&sources(), &fresh()).unwrap();
        assert_eq!(r.state.export_id.as_deref(), Some("new"));
        assert_eq!(r.state.file_count, 0);
        assert!(r.notes.is_empty());
    }

    #[test]
    fn a_lost_state_resumes_from_the_marker_or_a_later_file() {
        let mut s = sources();
        s.marker = Some(marker("e", 6, "40-0"));
        s.done = Some(trace(5, 49, "40-0"));
        let r = reconcile(&s, &fresh()).unwrap();
        assert_eq!(r.state.file_count, 5);
        assert_eq!(r.state.start_from.as_deref(), Some("40-0"));
        assert_eq!(r.state.export_id.as_deref(), Some("e"));
        assert!(r.notes[0].contains("from the marker"), "{:?}", r.notes);

        // File 6 stored, the marker not yet rewritten: its last group again.
        s.folder = Some(trace(6, 60, "45-2"));
        let r = reconcile(&s, &fresh()).unwrap();
        assert_eq!(r.state.file_count, 6);
        assert_eq!(r.state.start_from.as_deref(), Some("45-1"));
        assert_eq!(r.state.last_key_ms, 60);

        // Without its metadata, the position cannot be told.
        s.folder = Some(Trace {
            last_id: None,
            ..trace(6, 60, "")
        });
        let e = reconcile(&s, &fresh()).unwrap_err().to_string();
        assert!(e.contains("state reset --yes --start-from"), "{e}");
        assert!(e.contains("marker m: 5 files stored"), "{e}");
    }

    #[test]
    fn an_old_copy_of_the_state_catches_up_with_its_own_export() {
        let mut s = sources();
        s.local = Some(State {
            export_id: Some("e".into()),
            file_count: 2,
            start_from: Some("10-0".into()),
            last_key_ms: 20,
            ..State::default()
        });
        s.marker = Some(marker("e", 6, "40-0"));
        let r = reconcile(&s, &fresh()).unwrap();
        assert_eq!(r.state.file_count, 5);
        assert_eq!(r.state.start_from.as_deref(), Some("40-0"));
        assert_eq!(r.state.last_key_ms, 50);
        assert!(r.notes[0].contains("older copy"));
    }

    #[test]
    fn another_export_in_the_folder_is_refused_naming_every_source() {
        let mut s = sources();
        s.local = Some(State {
            export_id: Some("backfill".into()),
            ..State::default()
        });
        s.marker = Some(marker("live-export", 3, "9-0"));
        s.done_at = "d".into();
        let e = reconcile(&s, &fresh()).unwrap_err().to_string();
        for part in [
            "local state `s.json`",
            "marker m",
            "folder f",
            "done location d",
            "mv s.json",
        ] {
            assert!(e.contains(part), "{part}: {e}");
        }

        // A backfill (`--from`) with no state of its own on a live folder.
        let mut b = s.clone();
        b.local = None;
        b.explicit_start = true;
        let e = reconcile(&b, &fresh()).unwrap_err().to_string();
        assert!(
            e.contains("own `minio.folder`") && e.contains("already holds"),
            "{e}"
        );

        // No marker (an export from before markers) and files ahead: refused too.
        s.marker = None;
        s.folder = Some(trace(4, 5, "9-0"));
        let e = reconcile(&s, &fresh()).unwrap_err().to_string();
        assert!(e.contains("two files numbered 1"), "{e}");

        // Another stream's marker.
        let mut s = sources();
        s.marker = Some(Marker {
            stream_id: Some("other".into()),
            ..marker("e", 2, "1-0")
        });
        assert!(reconcile(&s, &fresh()).is_err());
    }

    #[test]
    fn the_key_stamp_never_goes_below_a_stored_key() {
        let mut s = sources();
        s.local = Some(State {
            export_id: Some("e".into()),
            file_count: 7,
            ..State::default()
        });
        s.folder = Some(trace(7, 9_000, "3-0"));
        s.marker = Some(marker("e", 8, "3-0"));
        let r = reconcile(&s, &fresh()).unwrap();
        assert_eq!(r.state.last_key_ms, 9_000);
        assert_eq!(r.state.file_count, 7);
    }
}
