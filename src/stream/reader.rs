//! The stream protocol as the run reads it: the `connected` event and the
//! one retention rule, the stop rules, and the [`Reader`] that turns SSE
//! messages into work in stream order. The reader decides when an id is
//! complete (a later id, or a heartbeat past it), holds the open id group
//! back so that a dropped connection's resend replaces it (no line twice),
//! checks the gap against what the server retains, and tells data from
//! control frames. It does no I/O of its own: the client feeds it, and it
//! hands chunks of [`Work`] to a channel (see `pipeline`).

use std::sync::{Arc, Mutex};

use crate::batch::DeadLetter;
use crate::gather::Giver;
use crate::id::EventId;
use crate::metrics::{Metrics, RetryCause};
use crate::stream::client::{Flow, Handler, StreamError};
use crate::stream::sse::SseMessage;
use crate::transform::DATA_EVENTS;

/// What the stream's `connected` event said.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Connected {
    /// Newest id in the stream.
    #[serde(default)]
    pub(crate) last_event_id: Option<String>,
    /// Oldest id the server still retains.
    #[serde(default)]
    pub(crate) first_event_id: Option<String>,
    /// Date of the oldest retained event.
    #[serde(default)]
    pub(crate) first_event_date: Option<String>,
    /// Date of the newest event.
    #[serde(default)]
    pub(crate) last_event_date: Option<String>,
    /// Events retained.
    #[serde(default)]
    pub(crate) stream_size: Option<u64>,
}

impl Connected {
    /// One line: how many events, from which id and date to which.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{} events retained, from `{}` ({}) to `{}` ({})",
            self.stream_size
                .map(|s| s.to_string())
                .unwrap_or_else(|| "?".into()),
            self.first_event_id.as_deref().unwrap_or("?"),
            self.first_event_date.as_deref().unwrap_or("?"),
            self.last_event_id.as_deref().unwrap_or("?"),
            self.last_event_date.as_deref().unwrap_or("?"),
        )
    }

    /// The retention rule: resuming after `cursor` misses events when the
    /// cursor is older than the oldest event the server retains; then that
    /// oldest id. `0-0` (the start of the stream) misses nothing; whether a
    /// snapshot in progress sends the missed objects again is the caller's
    /// to say. `None` too when the server did not name its oldest event.
    pub(crate) fn gap_after(&self, cursor: EventId) -> Option<EventId> {
        let first: EventId = self.first_event_id.as_deref()?.parse().ok()?;
        (cursor != EventId::default() && cursor < first).then_some(first)
    }
}

/// When a run ends by itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StopRule {
    /// End once the stream head announced at connection is complete.
    pub(crate) once: bool,
    /// End once the stream passes this id; later events are not exported.
    pub(crate) until: Option<EventId>,
}

pub(crate) enum Work {
    Data {
        id: EventId,
        event: String,
        data: Vec<u8>,
    },
    Dead {
        id: Option<EventId>,
        letter: DeadLetter,
    },
    Mark(EventId),
}

/// Work items handed over at once: one channel message per chunk instead
/// of per event.
pub(crate) const CHUNK: usize = 128;

/// The events of an open id group the reader holds back, at most: past
/// this the group is handed on, and a resend of it after a dropped
/// connection is recognised by count instead.
const OPEN_GROUP_MAX_EVENTS: usize = 4 * CHUNK;
/// The same bound in bytes of data.
const OPEN_GROUP_MAX_BYTES: usize = 8 << 20;

pub(crate) struct Reader {
    out: Giver<Work>,
    pending: Vec<Work>,
    metrics: Arc<Metrics>,
    last_seen: Option<EventId>,
    complete: Option<EventId>,
    /// The last heartbeat id greater than every data id seen.
    heartbeat: Option<EventId>,
    stop_rule: StopRule,
    recover_until_ms: Option<u64>,
    once_target: Option<EventId>,
    connected: Arc<Mutex<Option<Connected>>>,
    start_after: Option<EventId>,
    accept_gap: bool,
    /// A gap found and refused: the reason the run stops.
    gap: Option<StreamError>,
    /// Gaps found and accepted, for the committer to record in the state.
    accepted_gaps: Arc<Mutex<Vec<String>>>,
    /// Names of unknown control frames already logged (a few at most).
    unknown_frames: std::collections::HashSet<String>,
    /// The events of the open id group (`last_seen`, above `complete`),
    /// held back: after a dropped connection the server sends the whole
    /// group again, so what was not handed on is dropped and taken from
    /// the resend, and no line is written twice.
    open: Vec<Work>,
    /// Data bytes in `open`.
    open_bytes: usize,
    /// Events of the open group already handed on (it outgrew the bounds).
    open_handed: u64,
    /// After a reconnect inside a group: that group's id, and how many of
    /// its resent events were handed on before and are skipped.
    resend_skip: Option<(EventId, u64)>,
    /// The events held in `open` came before the connection dropped: the
    /// server's resend replaces them. Should the run end before it comes
    /// (a 401, a 410, a stop), they are handed on as received.
    open_stale: bool,
}

impl Reader {
    /// A reader that hands its work to `out`, starting
    /// after `start_after` (with a snapshot up to `recover_until_ms`), and
    /// records the gaps it is told to accept in `accepted_gaps`.
    pub(crate) fn new(
        out: Giver<Work>,
        metrics: Arc<Metrics>,
        stop_rule: StopRule,
        start_after: Option<EventId>,
        recover_until_ms: Option<u64>,
        accept_gap: bool,
        accepted_gaps: Arc<Mutex<Vec<String>>>,
    ) -> Reader {
        Reader {
            out,
            pending: Vec::with_capacity(CHUNK),
            metrics,
            last_seen: None,
            complete: None,
            heartbeat: None,
            stop_rule,
            recover_until_ms,
            once_target: None,
            connected: Arc::default(),
            start_after,
            accept_gap,
            gap: None,
            accepted_gaps,
            unknown_frames: Default::default(),
            open: Vec::new(),
            open_bytes: 0,
            open_handed: 0,
            resend_skip: None,
            open_stale: false,
        }
    }

    /// Ends the input after the client returned `result`: hands on what is
    /// held, and gives the error the run ends with (a refused gap first).
    pub(crate) fn end(&mut self, result: Result<(), StreamError>) -> Option<StreamError> {
        self.metrics.set_stream_connected(false);
        self.finish();
        self.gap.take().map(Err).unwrap_or(result).err()
    }

    /// Compares where this connection resumes with what the server retains.
    fn check_gap(&mut self, c: &Connected) -> Flow {
        let Some(resume) = self.complete.or(self.start_after) else {
            return Flow::Continue;
        };
        let Some(first) = c.gap_after(resume) else {
            return Flow::Continue;
        };
        if self.recovering() {
            return Flow::Continue;
        }
        let gap = StreamError::Gap {
            cursor: resume.to_string(),
            cursor_date: resume.date(),
            first: first.to_string(),
            first_date: first.date(),
        };
        if self.accept_gap {
            let note = format!(
                "{} .. {} accepted at {}",
                resume,
                first,
                crate::id::ms_to_iso(crate::clock::now_ms())
            );
            log::warn!("gap accepted (`--accept-gap`): events between `{resume}` and `{first}` may be missing from the export");
            self.accepted_gaps.lock().expect("not poisoned").push(note);
            Flow::Continue
        } else {
            self.gap = Some(gap);
            Flow::Stop
        }
    }

    /// Whether this connection asked for a snapshot that covers the resume
    /// point (the server then sends objects, not retained events).
    fn recovering(&self) -> bool {
        let resume = self.complete.or(self.start_after).unwrap_or_default();
        self.recover_until_ms.is_some_and(|ms| resume.ms <= ms)
    }

    fn send(&mut self, w: Work) -> Flow {
        self.pending.push(w);
        if self.pending.len() >= CHUNK {
            return self.flush();
        }
        Flow::Continue
    }

    /// Hands what is pending on.
    fn flush(&mut self) -> Flow {
        if self.out.give(&mut self.pending).is_err() {
            return Flow::Stop;
        }
        Flow::Continue
    }

    fn track(&mut self, id: EventId) -> Flow {
        let mut flow = Flow::Continue;
        match self.last_seen {
            Some(last) if id > last => {
                // The open group is complete: hand it on.
                flow = self.release_open();
                self.complete = Some(last);
                self.last_seen = Some(id);
            }
            None => self.last_seen = Some(id),
            _ => {}
        }
        if let Some(c) = self.complete {
            self.metrics.set_received_ms(c.ms);
        }
        flow
    }

    /// Holds `w` back when it belongs to the open group, else hands it on.
    fn hand_on(&mut self, id: EventId, w: Work) -> Flow {
        let open = self.last_seen == Some(id) && self.complete.is_none_or(|c| id > c);
        if !open {
            // An id lower than the open group's (a server out of order):
            // what is held goes first, to keep the stream's order.
            if !self.open.is_empty() && self.hand_on_open() == Flow::Stop {
                return Flow::Stop;
            }
            return self.send(w);
        }
        self.open_bytes += match &w {
            Work::Data { data, .. } => data.len(),
            Work::Dead { letter, .. } => letter.raw.len(),
            Work::Mark(_) => 0,
        };
        self.open.push(w);
        if self.open.len() >= OPEN_GROUP_MAX_EVENTS || self.open_bytes >= OPEN_GROUP_MAX_BYTES {
            return self.hand_on_open();
        }
        Flow::Continue
    }

    /// Hands on what is held of the open group; it stays open.
    fn hand_on_open(&mut self) -> Flow {
        self.open_handed += self.open.len() as u64;
        self.open_bytes = 0;
        self.open_stale = false;
        for w in std::mem::take(&mut self.open) {
            if self.send(w) == Flow::Stop {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    /// The open group is complete (or the run ends): hands it on.
    fn release_open(&mut self) -> Flow {
        let flow = self.hand_on_open();
        self.open_handed = 0;
        self.resend_skip = None;
        flow
    }

    /// Whether `id` is a resent event of a group that was already handed on.
    fn is_resent(&mut self, id: EventId) -> bool {
        match &mut self.resend_skip {
            Some((g, n)) if *g == id && *n > 0 => {
                *n -= 1;
                true
            }
            Some((g, _)) if *g != id => {
                self.resend_skip = None;
                false
            }
            _ => false,
        }
    }

    /// End of the run: everything held is handed on (the batcher keeps the
    /// cursor before a group that was never completed).
    pub(crate) fn finish(&mut self) -> Flow {
        if self.release_open() == Flow::Stop {
            return Flow::Stop;
        }
        self.flush()
    }

    fn done(&self) -> bool {
        let proven = self.complete.max(self.heartbeat);
        let Some(proven) = proven else {
            return false;
        };
        if self
            .complete
            .is_some_and(|c| self.stop_rule.until.is_some_and(|u| c >= u))
        {
            return true;
        }
        self.stop_rule.once && self.once_target.is_some_and(|t| proven >= t)
    }

    fn dead(&mut self, id: Option<EventId>, msg: &SseMessage, reason: String) -> Flow {
        let letter = DeadLetter {
            id: msg.id.clone(),
            event: msg.event.clone(),
            reason,
            raw: msg.data.clone(),
            size: msg.oversized.unwrap_or(msg.data.len()),
            base64: false,
        };
        match id {
            Some(i) => self.hand_on(i, Work::Dead { id, letter }),
            None => self.send(Work::Dead { id, letter }),
        }
    }

    /// A `connected` frame: records the head, fixes the `once` target on the
    /// first connection, and checks the resume point against the retention.
    fn on_connected(&mut self, msg: &SseMessage) -> Flow {
        let c: Connected = serde_json::from_slice(&msg.data).unwrap_or_default();
        log::info!("stream connected: {}", c.describe());
        let head: EventId = c
            .last_event_id
            .as_deref()
            .and_then(|s| s.parse().ok())
            .unwrap_or_default();
        self.metrics.set_head_ms(head.ms);
        if self.once_target.is_none() {
            let recover = self
                .recover_until_ms
                .map(EventId::at_ms)
                .unwrap_or_default();
            self.once_target = Some(head.max(recover));
        }
        let flow = self.check_gap(&c);
        *self.connected.lock().expect("not poisoned") = Some(c);
        flow
    }

    /// A heartbeat `h` above every data id seen: what was sent is complete;
    /// past the window's end it also stops the run.
    fn on_heartbeat(&mut self, h: EventId) -> Flow {
        if self.stop_rule.until.is_some_and(|u| h > u) {
            // Past the window's end: everything in it is complete.
            let _ = self.release_open();
            let _ = self.send(Work::Mark(h));
            return Flow::Stop;
        }
        // Everything sent so far is complete; the heartbeat id
        // itself is no resume point (it can run ahead of a
        // snapshot in progress).
        if self.release_open() == Flow::Stop {
            return Flow::Stop;
        }
        if let Some(l) = self.last_seen {
            self.complete = Some(l);
            self.metrics.set_received_ms(l.ms);
        }
        self.heartbeat = Some(h);
        self.send(Work::Mark(h))
    }

    /// A `no-recover` frame: no snapshot is coming, so the retention check
    /// skipped at `connected` for the recovery applies now.
    fn on_no_recover(&mut self, msg: &SseMessage) -> Flow {
        log::warn!(
            "the server refused recovery: {}; continuing with live events",
            crate::secret::clean_external(&String::from_utf8_lossy(&msg.data), 500)
        );
        // No snapshot is coming: the retention check skipped at
        // `connected` for the recovery applies now.
        let was_recovering = self.recovering();
        self.recover_until_ms = None;
        let connected = self.connected.lock().expect("not poisoned").clone();
        match connected {
            Some(c) if was_recovering => self.check_gap(&c),
            _ => Flow::Continue,
        }
    }

    /// A data event with a valid id `id`, not a skipped resend: replaces a
    /// stale held group, applies the window's end, then hands it on (or dead-letters it).
    fn on_data(&mut self, id: EventId, msg: SseMessage) -> Flow {
        if self.open_stale && self.last_seen == Some(id) {
            // The resend has come: it replaces what was held.
            self.open.clear();
            self.open_bytes = 0;
            self.open_stale = false;
        }
        if let Some(u) = self.stop_rule.until {
            if id > u {
                // Not exported: it only proves the window complete.
                let _ = self.release_open();
                let _ = self.send(Work::Mark(id));
                return Flow::Stop;
            }
        }
        if self.track(id) == Flow::Stop {
            return Flow::Stop;
        }
        if let Some(size) = msg.oversized {
            let reason = format!("event of {size} bytes exceeds `stream.max_event_bytes`");
            self.dead(Some(id), &msg, reason)
        } else {
            self.hand_on(
                id,
                Work::Data {
                    id,
                    event: msg.event,
                    data: msg.data,
                },
            )
        }
    }
}

impl Handler for Reader {
    fn on_message(&mut self, msg: SseMessage) -> Flow {
        let parsed: Option<EventId> = msg.id.as_deref().and_then(|s| s.parse().ok());
        let flow = match msg.event.as_str() {
            "connected" => self.on_connected(&msg),
            "heartbeat" => match parsed {
                Some(h) if self.last_seen.is_none_or(|l| h > l) => self.on_heartbeat(h),
                _ => Flow::Continue,
            },
            "consumer_metrics" => Flow::Continue,
            "no-recover" => self.on_no_recover(&msg),
            "error" => {
                log::warn!(
                    "the stream reported an error: {}",
                    crate::secret::clean_external(&String::from_utf8_lossy(&msg.data), 500)
                );
                Flow::Continue
            }
            name if DATA_EVENTS.contains(&name) => {
                self.metrics.inc_received();
                match parsed {
                    Some(id) => {
                        if self.is_resent(id) {
                            return Flow::Continue;
                        }
                        self.on_data(id, msg)
                    }
                    None => {
                        let reason = match &msg.id {
                            None => "data event without an id".to_string(),
                            Some(bad) => format!("data event with a malformed id `{bad}`"),
                        };
                        self.dead(None, &msg, reason)
                    }
                }
            }
            // Every name outside the data events is a control frame
            // (PROTOCOL.md §2): never exported, and its id (often a
            // synthetic `<now>-0`) is never a resume point.
            other => {
                if self.unknown_frames.len() < 16 && self.unknown_frames.insert(other.to_string()) {
                    log::info!("ignoring control frames named `{other}` (not a data event)");
                }
                Flow::Continue
            }
        };
        if flow == Flow::Continue && self.done() {
            return Flow::Stop;
        }
        flow
    }

    fn resume_after(&self) -> Option<EventId> {
        self.complete
    }

    fn on_connect(&mut self) {
        self.metrics.set_stream_connected(true);
    }

    fn on_disconnect(&mut self, _why: &str) {
        self.metrics.set_stream_connected(false);
        self.metrics.inc_reconnect();
        self.metrics.inc_retry(RetryCause::Stream);
        // The server resumes after `complete`: the open group comes again.
        let Some(group) = self
            .last_seen
            .filter(|l| self.complete.is_none_or(|c| *l > c))
        else {
            return;
        };
        let dropped = self.open.len();
        self.open_stale = dropped > 0;
        self.resend_skip = Some((group, self.open_handed));
        if dropped > 0 || self.open_handed > 0 {
            log::info!(
                "the connection dropped inside id group `{group}`: its {dropped} events not yet handed on are taken from the server's resend instead{}",
                if self.open_handed > 0 {
                    format!(", whose first {} events (handed on already) are skipped", self.open_handed)
                } else {
                    String::new()
                }
            );
        }
    }

    fn on_read_end(&mut self) -> Flow {
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gather::{gather, Taker};

    #[test]
    fn a_cursor_older_than_the_oldest_retained_event_is_a_gap() {
        let c = Connected {
            first_event_id: Some("1000-5".into()),
            ..Connected::default()
        };
        let id = |s: &str| s.parse::<EventId>().unwrap();
        let cases = [
            ("999-9", Some("1000-5")),
            ("1000-4", Some("1000-5")),
            ("1000-5", None),
            ("1000-6", None),
            ("2000-0", None),
            // The start of the stream misses nothing.
            ("0-0", None),
        ];
        for (cursor, want) in cases {
            assert_eq!(c.gap_after(id(cursor)), want.map(id), "{cursor}");
        }
        // A server that does not name its oldest event: no rule to apply.
        assert_eq!(Connected::default().gap_after(id("1-0")), None);
        let odd = Connected {
            first_event_id: Some("soon".into()),
            ..Connected::default()
        };
        assert_eq!(odd.gap_after(id("1-0")), None);
    }

    fn hand_over() -> (Giver<Work>, Taker<Work>) {
        gather(1 << 20, CHUNK, std::time::Duration::ZERO)
    }

    fn reader(tx: Giver<Work>) -> Reader {
        Reader::new(
            tx,
            Arc::default(),
            StopRule::default(),
            None,
            None,
            false,
            Arc::default(),
        )
    }

    fn msg(event: &str, id: &str, data: &str) -> SseMessage {
        SseMessage {
            id: Some(id.into()),
            event: event.into(),
            data: data.as_bytes().to_vec(),
            oversized: None,
        }
    }

    /// The data handed on, as `id:data`, once the reader has finished.
    fn handed_on(mut r: Reader, rx: &Taker<Work>) -> Vec<String> {
        r.finish();
        drop(r);
        std::iter::from_fn(|| rx.take())
            .flatten()
            .filter_map(|w| match w {
                Work::Data { id, data, .. } => {
                    Some(format!("{id}:{}", String::from_utf8_lossy(&data)))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_group_open_when_the_connection_drops_is_taken_from_the_resend_once() {
        let (tx, rx) = hand_over();
        let mut r = reader(tx);
        r.on_message(msg("create", "1-0", "a"));
        r.on_message(msg("create", "2-0", "b"));
        r.on_message(msg("create", "2-0", "c"));
        r.on_disconnect("dropped");
        assert_eq!(r.resume_after(), Some(EventId::at_ms(1)));
        // The server resends group 2 whole, then goes on.
        r.on_message(msg("create", "2-0", "b"));
        r.on_message(msg("create", "2-0", "c"));
        r.on_message(msg("create", "3-0", "d"));
        r.on_message(msg("heartbeat", "4-0", "\"now\""));
        assert_eq!(handed_on(r, &rx), vec!["1-0:a", "2-0:b", "2-0:c", "3-0:d"]);
    }

    #[test]
    fn a_group_too_large_to_hold_skips_what_was_handed_on_from_the_resend() {
        let (tx, rx) = hand_over();
        let mut r = reader(tx);
        let n = OPEN_GROUP_MAX_EVENTS + 3;
        r.on_message(msg("create", "1-0", "a"));
        for i in 0..n {
            r.on_message(msg("create", "2-0", &i.to_string()));
        }
        r.on_disconnect("dropped");
        // A second drop in the middle of the resend.
        for i in 0..5 {
            r.on_message(msg("create", "2-0", &i.to_string()));
        }
        r.on_disconnect("dropped again");
        for i in 0..n {
            r.on_message(msg("create", "2-0", &i.to_string()));
        }
        r.on_message(msg("update", "3-0", "z"));
        let got = handed_on(r, &rx);
        let mut want = vec!["1-0:a".to_string()];
        want.extend((0..n).map(|i| format!("2-0:{i}")));
        want.push("3-0:z".into());
        assert_eq!(got, want);
    }

    #[test]
    fn a_group_held_when_the_run_ends_before_the_resend_is_kept() {
        let (tx, rx) = hand_over();
        let mut r = reader(tx);
        r.on_message(msg("create", "1-0", "a"));
        r.on_message(msg("create", "2-0", "b"));
        r.on_disconnect("dropped");
        // The server answers 410 on reconnect: the run ends.
        assert_eq!(handed_on(r, &rx), vec!["1-0:a", "2-0:b"]);
    }

    #[test]
    fn an_id_lower_than_the_open_group_keeps_the_stream_order() {
        let (tx, rx) = hand_over();
        let mut r = reader(tx);
        r.on_message(msg("create", "8-0", "a"));
        r.on_message(msg("create", "7-0", "b"));
        r.on_message(msg("create", "9-0", "c"));
        assert_eq!(handed_on(r, &rx), vec!["8-0:a", "7-0:b", "9-0:c"]);
    }

    #[test]
    fn a_drop_after_a_complete_group_skips_nothing() {
        let (tx, rx) = hand_over();
        let mut r = reader(tx);
        r.on_message(msg("create", "1-0", "a"));
        r.on_message(msg("heartbeat", "1-5", "\"now\""));
        r.on_disconnect("dropped");
        assert_eq!(r.resume_after(), Some(EventId::at_ms(1)));
        r.on_message(msg("create", "2-0", "b"));
        r.on_message(msg("create", "2-0", "c"));
        assert_eq!(handed_on(r, &rx), vec!["1-0:a", "2-0:b", "2-0:c"]);
    }
}
