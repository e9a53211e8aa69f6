//! Taking over from the Python reference exporter: its state, as the
//! platform keeps it (`connector_state` of its connector), becomes this
//! tool's state. Pure; `state import` fetches and saves.
//!
//! The reference's `start_from` is the last id it *received*, ahead of what
//! it wrote; `last_written_msg_id` is the last id in a stored file. The
//! imported cursor is therefore `last_written_msg_id`, and `file_count` is
//! kept so the importer sees the next number. The reference's own
//! `start_from` is kept under `imported_from` for the record.

use serde_json::{json, Value};

use crate::id::EventId;
use crate::state::State;

/// The reference's state turned into ours, or why it cannot be.
pub fn state_from_reference(
    remote: &Value,
    connector_id: &str,
    stream_id: Option<&str>,
    now_iso: &str,
) -> Result<State, String> {
    let obj = remote
        .as_object()
        .ok_or_else(|| format!("the state is not a JSON object: `{remote}`"))?;
    if !obj.contains_key("file_count") && !obj.contains_key("last_written_msg_id") {
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        return Err(format!(
            "the state has none of the reference exporter's keys (`last_written_msg_id`, `file_count`); it has {keys:?}: is this the stream-exporter's connector id?"
        ));
    }
    let file_count = match obj.get("file_count") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| format!("`file_count` is not a whole number: `{n}`"))?,
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map_err(|_| format!("`file_count` is not a whole number: `{s}`"))?,
        Some(other) => return Err(format!("`file_count` is not a number: `{other}`")),
    };
    let last_written: Option<EventId> = match obj.get("last_written_msg_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => Some(
            s.trim()
                .parse()
                .map_err(|e| format!("`last_written_msg_id`: {e}"))?,
        ),
        Some(other) => {
            return Err(format!(
                "`last_written_msg_id` is not a stream id: `{other}`"
            ))
        }
    };
    let Some(cursor) = last_written else {
        return Err(if file_count == 0 {
            "the reference exporter has stored no file yet (no `last_written_msg_id`, `file_count` 0): there is nothing to carry over; run this tool without importing".to_string()
        } else {
            format!("the state has `file_count` {file_count} but no `last_written_msg_id`: without the last stored id the export cannot resume without a gap or a repeat; set the position by hand with `state reset --start-from ID --file-count {file_count}`")
        });
    };
    if file_count == 0 {
        return Err(format!(
            "the state has `last_written_msg_id` `{cursor}` but `file_count` 0: the next file number is unknown; set it by hand with `state reset --start-from {cursor} --file-count N`"
        ));
    }
    let recover_until = match obj.get("recover_until") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s))
            if ["no", "none", "false"].contains(&s.trim().to_ascii_lowercase().as_str()) =>
        {
            None
        }
        Some(Value::String(s)) => {
            crate::id::parse_iso_ms(s.trim()).map_err(|e| format!("`recover_until`: {e}"))?;
            Some(s.trim().to_string())
        }
        Some(other) => return Err(format!("`recover_until` is not a date or false: `{other}`")),
    };
    let mut state = State {
        start_from: Some(cursor.to_string()),
        last_written_msg_id: Some(cursor.to_string()),
        file_count,
        recover_until: None,
        stream_id: stream_id.map(String::from),
        ..State::default()
    };
    // A snapshot still in progress stays in progress; one the cursor has
    // passed ends, as it would after a commit.
    state.recover_until = recover_until;
    state.advance_cursor(cursor);
    state.extra.insert(
        "imported_from".into(),
        json!({
            "connector_id": connector_id,
            "at": now_iso,
            "reference_state": remote,
        }),
    );
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn import(v: Value) -> Result<State, String> {
        state_from_reference(&v, "c1", Some("live-1"), "2026-01-01T00:00:00.000Z")
    }

    #[test]
    fn resumes_after_the_last_written_id_and_keeps_the_file_count() {
        let s = import(json!({
            "start_from": "1700000009000-0",
            "recover_until": false,
            "last_written_msg_id": "1700000005000-1",
            "file_count": 42,
        }))
        .unwrap();
        assert_eq!(s.start_from.as_deref(), Some("1700000005000-1"));
        assert_eq!(s.last_written_msg_id.as_deref(), Some("1700000005000-1"));
        assert_eq!(s.file_count, 42);
        assert_eq!(s.recover_until, None);
        assert_eq!(s.stream_id.as_deref(), Some("live-1"));
        assert_eq!(
            s.extra["imported_from"]["reference_state"]["start_from"],
            "1700000009000-0"
        );
    }

    #[test]
    fn a_snapshot_in_progress_stays_in_progress() {
        let s = import(json!({
            "start_from": "1700000009000-0",
            "recover_until": "2023-11-14T23:00:00.000Z",
            "last_written_msg_id": "1700000005000-0",
            "file_count": "3",
        }))
        .unwrap();
        assert_eq!(s.recover_until.as_deref(), Some("2023-11-14T23:00:00.000Z"));
        assert_eq!(s.file_count, 3);
        let s = import(json!({
            "recover_until": "None",
            "last_written_msg_id": "1700000005000-0",
            "file_count": 3,
        }))
        .unwrap();
        assert_eq!(s.recover_until, None);
    }

    #[test]
    fn states_that_cannot_be_carried_over_are_refused_with_the_reason() {
        let cases: &[(Value, &str)] = &[
            (json!("x"), "not a JSON object"),
            (
                json!({"start_from": "5-0"}),
                "none of the reference exporter's keys",
            ),
            (
                json!({"start_from": "5-0", "file_count": 0}),
                "stored no file yet",
            ),
            (json!({"file_count": 4}), "no `last_written_msg_id`"),
            (
                json!({"last_written_msg_id": "5-0", "file_count": 0}),
                "next file number is unknown",
            ),
            (
                json!({"last_written_msg_id": "abc", "file_count": 2}),
                "`last_written_msg_id`",
            ),
            (
                json!({"last_written_msg_id": "5-0", "file_count": -2}),
                "`file_count`",
            ),
            (
                json!({"last_written_msg_id": "5-0", "file_count": 2, "recover_until": "soon"}),
                "`recover_until`",
            ),
        ];
        for (v, want) in cases {
            let e = import(v.clone()).unwrap_err();
            assert!(e.contains(want), "{v}: {e}");
        }
    }
}
