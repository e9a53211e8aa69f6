//! The decisions of the commit protocol, without I/O.
//!
//! The shell ([`super::Committer`]) asks these functions what to do and then
//! does it: which number and key the next file gets, what a commit changes
//! in the state, whether a pending upload left by a stopped run counts as
//! stored, and what the export's marker says.

use crate::dest::naming::{key_ms, next_key_ms, object_key};
use crate::id::EventId;
use crate::marker::Marker;
use crate::state::{Pending, State};

/// The pending record of the next file: its number, key and stamp.
///
/// `reuse_key` is the key of a pending upload that was not found at
/// start-up: the same number and key are used again, so the importer never
/// sees a hole.
pub fn plan_file(
    state: &State,
    reuse_key: Option<String>,
    folder: &str,
    now_ms: u64,
    cursor: Option<EventId>,
    events: u64,
    bytes: u64,
) -> (Pending, u64) {
    let number = state.file_count + 1;
    let (key, ms) = match reuse_key {
        Some(k) => {
            let ms = key_ms(&k).unwrap_or(state.last_key_ms);
            (k, ms)
        }
        None => {
            let ms = next_key_ms(now_ms, state.last_key_ms);
            (object_key(folder, ms, number), ms)
        }
    };
    (
        Pending {
            file_number: number,
            key,
            cursor,
            events,
            bytes,
        },
        ms,
    )
}

/// Records that `p` is stored: the count, the key stamp and the cursor move
/// on, and nothing is pending any more.
pub fn apply_commit(state: &mut State, p: &Pending) {
    state.file_count = state.file_count.max(p.file_number);
    state.last_key_ms = state.last_key_ms.max(key_ms(&p.key).unwrap_or(0));
    if let Some(c) = p.cursor {
        state.advance_cursor(c);
    }
    state.pending = None;
}

/// How a pending upload left by a stopped run is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// It was stored (or its number was used): commit it.
    Stored,
    /// It was not stored and its number never used: upload its events
    /// again under the same key and number.
    Again,
}

/// Settles pending file `p`: `found` says whether its key is in the folder
/// or the done location; `used_up_to` is the highest number the export's
/// other traces (marker, folder, done) show as used. A number that was used
/// is never used again, even when its object cannot be found.
pub fn settle(p: &Pending, found: bool, used_up_to: u64) -> Settle {
    if found || p.file_number <= used_up_to {
        Settle::Stored
    } else {
        Settle::Again
    }
}

/// The marker that describes `state` after a commit.
pub fn marker_of(state: &State) -> Marker {
    Marker {
        export_id: state.export_id.clone().unwrap_or_default(),
        stream_id: state.stream_id.clone(),
        next_file: state.file_count + 1,
        last_key_ms: state.last_key_ms,
        cursor: state.cursor().ok().flatten().map(|c| c.to_string()),
        recover_until: state.recover_until.clone(),
        updated_at: String::new(),
    }
}

/// The position just before `id`: resuming after it gets `id`'s whole id
/// group again (a file may end inside a group; its cursor then stays
/// before the group).
pub fn before(id: EventId) -> EventId {
    if id.seq > 0 {
        EventId {
            ms: id.ms,
            seq: id.seq - 1,
        }
    } else {
        EventId {
            ms: id.ms.saturating_sub(1),
            seq: u64::MAX,
        }
    }
}

/// What `state reset` is asked.
#[derive(Debug, Clone, Default)]
pub struct ResetRequest {
    /// The position to resume after (`None`: the configured start).
    pub start_from: Option<EventId>,
    /// The snapshot's end date, when the new position asks for one.
    pub recover_until: Option<String>,
    /// `--file-count`: the number of the last file the importer has read.
    pub file_count: Option<u64>,
    /// `--importer-was-reset`: the importer's count went back too.
    pub importer_was_reset: bool,
    /// The stream exported.
    pub stream_id: Option<String>,
    /// The name of the new export, used when the numbering starts anew.
    pub new_export_id: String,
}

/// The state `state reset` writes: a new stream position; the numbering,
/// the key stamp and the export's identity are kept. `old` is the state
/// being reset; `marker` the export's marker; `stored` the highest number
/// the folder or the done location hold; `stamp` the highest key stamp of
/// their files.
pub fn reset(
    old: Option<&State>,
    marker: Option<&Marker>,
    stored: u64,
    stamp: u64,
    req: &ResetRequest,
) -> Result<State, String> {
    let recorded = marker.map(|m| m.file_count()).unwrap_or(0);
    let stamp = stamp.max(marker.map(|m| m.last_key_ms).unwrap_or(0));
    let old_count = old.map(|o| o.file_count).unwrap_or(0);
    let kept = old_count.max(recorded).max(stored);
    let file_count = match req.file_count {
        Some(n) if n < kept && !req.importer_was_reset => {
            return Err(format!(
                "`--file-count {n}` is lower than the {kept} files this export has stored: the importer accepts only file {} next, and would stop at a lower number. Add `--importer-was-reset` only if the importer's own count was reset too",
                kept + 1
            ))
        }
        Some(n) if n < stored => {
            return Err(format!(
                "`--file-count {n}` with `--importer-was-reset`: the destination still holds file {stored}; the importer would see two files with one number. Remove the files numbered above {n} (folder and done location) first"
            ))
        }
        Some(n) => n,
        None if req.importer_was_reset => {
            return Err("`--importer-was-reset` needs `--file-count N` (the importer's count)".into())
        }
        None => kept,
    };
    let renumbered = file_count < kept;
    let mut new = State {
        stream_id: req.stream_id.clone(),
        file_count,
        recover_until: req.recover_until.clone(),
        export_id: if renumbered {
            Some(req.new_export_id.clone())
        } else {
            old.and_then(|o| o.export_id.clone())
                .or_else(|| marker.map(|m| m.export_id.clone()))
                .or_else(|| Some(req.new_export_id.clone()))
        },
        // Keys never go back, even across a reset: the importer lists by key.
        last_key_ms: old.map(|o| o.last_key_ms).unwrap_or(0).max(stamp),
        ..State::default()
    };
    if let Some(s) = req.start_from {
        new.start_from = Some(s.to_string());
        new.last_written_msg_id = Some(s.to_string());
    }
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_used_number_is_never_planned_again() {
        let p = Pending {
            file_number: 4,
            key: "f/stream_0000000000010_4.json".into(),
            cursor: None,
            events: 1,
            bytes: 1,
        };
        assert_eq!(settle(&p, false, 3), Settle::Again);
        assert_eq!(settle(&p, true, 3), Settle::Stored);
        assert_eq!(settle(&p, false, 4), Settle::Stored);
        assert_eq!(settle(&p, false, 9), Settle::Stored);
    }

    #[test]
    fn a_reset_keeps_the_numbering_unless_told_the_importer_was_reset() {
        let old = State {
            file_count: 5,
            last_key_ms: 90,
            export_id: Some("e".into()),
            start_from: Some("50-0".into()),
            ..State::default()
        };
        let req = ResetRequest {
            start_from: Some(EventId::at_ms(3)),
            new_export_id: "n".into(),
            ..ResetRequest::default()
        };
        let m = Marker {
            export_id: "e".into(),
            next_file: 8,
            ..Marker::default()
        };
        let r = reset(Some(&old), Some(&m), 6, 95, &req).unwrap();
        assert_eq!((r.file_count, r.last_key_ms), (7, 95));
        assert_eq!(r.export_id.as_deref(), Some("e"));
        assert_eq!(r.start_from.as_deref(), Some("3-0"));

        let lower = ResetRequest {
            file_count: Some(2),
            ..req.clone()
        };
        let e = reset(Some(&old), None, 0, 0, &lower).unwrap_err();
        assert!(
            e.contains("lower than the 5 files") && e.contains("--importer-was-reset"),
            "{e}"
        );
        let renumber = ResetRequest {
            importer_was_reset: true,
            ..lower
        };
        let e = reset(Some(&old), None, 4, 0, &renumber).unwrap_err();
        assert!(e.contains("still holds file 4"), "{e}");
        let r = reset(Some(&old), Some(&m), 2, 0, &renumber).unwrap();
        assert_eq!(r.file_count, 2);
        assert_eq!(r.export_id.as_deref(), Some("n"));
        assert_eq!(r.last_key_ms, 90);
        let higher = ResetRequest {
            file_count: Some(9),
            ..req
        };
        assert_eq!(reset(None, None, 0, 0, &higher).unwrap().file_count, 9);
    }

    #[test]
    fn plans_follow_the_count_and_never_lower_the_stamp() {
        let mut s = State {
            file_count: 2,
            last_key_ms: 100,
            ..State::default()
        };
        let (p, ms) = plan_file(&s, None, "f", 50, Some(EventId::at_ms(7)), 3, 9);
        assert_eq!((p.file_number, ms), (3, 101));
        assert_eq!(p.key, "f/stream_0000000000101_3.json");
        apply_commit(&mut s, &p);
        assert_eq!((s.file_count, s.last_key_ms), (3, 101));
        assert_eq!(s.cursor().unwrap(), Some(EventId::at_ms(7)));
        let (again, _) = plan_file(&s, Some(p.key.clone()), "f", 500, None, 1, 1);
        assert_eq!(again.key, p.key);
        assert_eq!(before(EventId { ms: 5, seq: 2 }), EventId { ms: 5, seq: 1 });
        assert_eq!(
            before(EventId { ms: 5, seq: 0 }),
            EventId {
                ms: 4,
                seq: u64::MAX
            }
        );
    }
}
