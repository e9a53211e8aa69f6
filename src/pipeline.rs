//! The run: threads wired with bounded channels.
//!
//! ```text
//! [reader] --Work--> [prefetch] --Task, round robin--> [worker 1..n: transform] --Item--> [batcher] --Batch--> [committer]
//!  socket              submits      bounded per worker    (consumer_count)          bounded   limits,    bounded   store, then
//!  SSE parse           files to     (the fetch-ahead      waits for its files       per worker id groups  (1)      save state
//!                      the fetch    window)
//!                      pool (crate::fetch)
//! ```
//! The prefetch stage submits each event's attached files to the fetch pool
//! in stream order, then hands work to the workers in turn; the batcher takes
//! the results back in the same turn, so output order equals stream order
//! with no reorder buffer. Files are fetched while the events wait in the
//! workers' queues, so the workers seldom wait for one. Every data channel is bounded: when storage is slow the
//! committer blocks the batcher, the workers, then the reader, which stops
//! reading the socket. The committer is the only writer of the state, and
//! stores file N while the batcher fills N+1.
//!
//! A first SIGINT/SIGTERM stops reading: what was received is flushed,
//! stored and committed, then the run ends. The reader and the workers are
//! not joined (the reader may sit in a socket read); their work that was not
//! committed is simply read again next time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

use crate::batch::{Batch, Batcher, DeadLetter, Item};
use crate::commit::Committer;
use crate::config::BatchLimits;
use crate::fetch::{Fetcher, FileOutcome, Hold, Ticket};
use crate::id::EventId;
use crate::metrics::{Metrics, RetryCause};
use crate::policy::Policy;
use crate::stream::client::{Flow, Handler, Start, StreamClient, StreamError};
use crate::stream::sse::SseMessage;
use crate::transform::{self, FileFetcher, NoFiles, Transformed, DATA_EVENTS};

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

/// What a pipeline run needs besides the committer.
pub(crate) struct PipelineSettings {
    /// Where to start.
    pub(crate) start: Start,
    /// When to end.
    pub(crate) stop_rule: StopRule,
    /// Worker threads.
    pub(crate) workers: usize,
    /// Events in flight.
    pub(crate) queue_size: usize,
    /// Batch limits.
    pub(crate) limits: BatchLimits,
    /// Continue past a gap on the server side instead of stopping.
    pub(crate) accept_gap: bool,
    /// End the first batch as soon as this id is complete.
    pub(crate) first_cut_after: Option<EventId>,
    /// What may leave.
    pub(crate) policy: Arc<Policy>,
    /// Longest line (`output.max_line_bytes`).
    pub(crate) max_line_bytes: usize,
}

/// How a run ended.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The stream stopped us (401/410/not a stream).
    pub(crate) stream_error: Option<StreamError>,
    /// Stopped by a signal.
    pub(crate) interrupted: bool,
    /// First and last id stored.
    pub(crate) first_id: Option<EventId>,
    /// Last id stored.
    pub(crate) last_id: Option<EventId>,
    /// Wall time.
    pub(crate) elapsed: Duration,
}

enum Work {
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
const CHUNK: usize = 128;

/// The events of an open id group the reader holds back, at most: past
/// this the group is handed on, and a resend of it after a dropped
/// connection is recognised by count instead.
const OPEN_GROUP_MAX_EVENTS: usize = 4 * CHUNK;
/// The same bound in bytes of data.
const OPEN_GROUP_MAX_BYTES: usize = 8 << 20;

struct Reader {
    senders: Vec<Sender<Vec<Work>>>,
    next: usize,
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

    /// Hands the pending chunk to the next worker in turn.
    fn flush(&mut self) -> Flow {
        if self.pending.is_empty() {
            return Flow::Continue;
        }
        let chunk = std::mem::replace(&mut self.pending, Vec::with_capacity(CHUNK));
        let i = self.next;
        self.next = (self.next + 1) % self.senders.len();
        if self.senders[i].send(chunk).is_err() {
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
    fn finish(&mut self) -> Flow {
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

/// Chunks of work a worker may have waiting, counted over all workers: the
/// attached files of that many events are fetched ahead (2,048 events; at
/// 15,000 events/s that hides up to ~130 ms per file request).
const FETCH_AHEAD_CHUNKS: usize = 16;

/// A unit of work with the attached files fetched ahead for it.
struct Task {
    work: Work,
    files: Vec<Ticket>,
}

/// The fetch stage's front: submits the attached files of each data event,
/// in stream order, then hands the chunk to the next worker in turn (the
/// batcher takes results back in the same turn).
fn prefetch(
    rx: Receiver<Vec<Work>>,
    txs: Vec<Sender<Vec<Task>>>,
    fetcher: Option<Fetcher>,
    policy: Arc<Policy>,
) {
    let mut next = 0;
    for chunk in rx {
        let tasks: Vec<Task> = chunk
            .into_iter()
            .map(|work| {
                let files = match (&fetcher, &work) {
                    (Some(f), Work::Data { event, data, .. }) => {
                        transform::files_to_fetch(event, data, &policy)
                            .iter()
                            .map(|uri| f.submit(uri))
                            .collect()
                    }
                    _ => Vec::new(),
                };
                Task { work, files }
            })
            .collect();
        if txs[next].send(tasks).is_err() {
            return;
        }
        next = (next + 1) % txs.len();
    }
}

/// Gives an event's prefetched files to the transform, in list order.
struct Prefetched {
    tickets: std::cell::RefCell<std::collections::VecDeque<Ticket>>,
    enabled: bool,
}

impl FileFetcher for Prefetched {
    fn fetch(&self, uri: &str) -> FileOutcome {
        if !self.enabled {
            return NoFiles.fetch(uri);
        }
        match self.tickets.borrow_mut().pop_front() {
            Some(t) if t.uri() == uri => t.wait(),
            _ => FileOutcome::Failed {
                reason: format!("`{uri}` was not fetched ahead (the file list changed)"),
                kept: None,
            },
        }
    }
}

/// A worker's results for one chunk, with the fetch budget their file
/// contents were charged to: given back once the batcher has taken them.
struct Done {
    items: Vec<Item>,
    _holds: Vec<Hold>,
}

fn worker(rx: Receiver<Vec<Task>>, tx: Sender<Done>, ctx: Arc<WorkerContext>) {
    for chunk in rx {
        let mut items = Vec::with_capacity(chunk.len());
        let mut holds = Vec::new();
        for task in chunk {
            work_item(task, &ctx, &mut items, &mut holds);
        }
        let done = Done {
            items,
            _holds: holds,
        };
        if tx.send(done).is_err() {
            return;
        }
    }
}

/// What every worker shares.
struct WorkerContext {
    fetching: bool,
    policy: Arc<Policy>,
    metrics: Arc<Metrics>,
    max_line: usize,
}

fn work_item(task: Task, ctx: &WorkerContext, items: &mut Vec<Item>, holds: &mut Vec<Hold>) {
    let Task { work, files } = task;
    let item = match work {
        Work::Mark(id) => Item::Mark { id },
        Work::Dead { id, letter } => Item::Dead { id, letter },
        Work::Data { id, event, data } => {
            let files = Prefetched {
                tickets: std::cell::RefCell::new(files.into()),
                enabled: ctx.fetching,
            };
            match transform::transform_with_policy(
                &id,
                &event,
                &data,
                &files,
                &ctx.policy,
                ctx.max_line,
            ) {
                Ok(Transformed::Line(line)) => {
                    ctx.metrics.inc_processed(&event);
                    if line.files_failed > 0 {
                        ctx.metrics
                            .add_file_fetch_failures(line.files_failed as u64);
                    }
                    // The received bytes of files left out go first: they
                    // are stored before the cursor passes this event.
                    for kept in line.kept {
                        items.push(kept_file_letter(id, &event, kept, holds));
                    }
                    holds.extend(line.holds);
                    Item::Line {
                        id,
                        bytes: line.bytes,
                    }
                }
                Ok(Transformed::Held(reason)) => {
                    ctx.metrics.inc_held(reason);
                    log::debug!("event `{id}` ({event}) held back by the export policy: {reason}");
                    Item::Held { id, reason }
                }
                Err(reject) => Item::Dead {
                    id: Some(id),
                    letter: DeadLetter {
                        id: Some(id.to_string()),
                        event,
                        reason: reject.reason,
                        size: data.len(),
                        raw: data,
                        base64: false,
                    },
                },
            }
        }
    };
    items.push(item);
}

/// The record kept beside the dead letters for an attached file exported
/// without its content: the event id, the uri, the reason, and the bytes
/// received (base64, as encoded while they arrived).
fn kept_file_letter(
    id: EventId,
    event: &str,
    kept: transform::KeptFile,
    holds: &mut Vec<Hold>,
) -> Item {
    let size = kept.content.size() as usize;
    let (base64, hold) = kept.content.into_parts();
    holds.push(hold);
    Item::Dead {
        id: Some(id),
        letter: DeadLetter {
            id: Some(id.to_string()),
            event: event.to_string(),
            reason: format!(
                "attached file `{}` exported without content: {}",
                kept.uri, kept.reason
            ),
            raw: base64.into_bytes(),
            size,
            base64: true,
        },
    }
}

/// Runs the pipeline until the stream ends the run, a stop rule is met, a
/// signal arrives (`stop`), or storage fails for good. `files` is the fetch
/// stage (`None`: attached files are exported without content).
pub(crate) fn run(
    client: StreamClient,
    settings: PipelineSettings,
    mut committer: Committer,
    files: Option<Fetcher>,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) -> (Committer, Result<Outcome>) {
    let started = Instant::now();
    let (work_tx, item_rx) = spawn_workers(&settings, files, &metrics);
    let stream_error: Arc<Mutex<Option<StreamError>>> = Arc::new(Mutex::new(None));
    spawn_reader(
        client,
        vec![work_tx],
        &settings,
        &metrics,
        &committer,
        stream_error.clone(),
    );

    // A rendezvous: the batcher fills batch N+1 while N is stored, and at
    // most those two bodies exist; stored bodies go back to the batcher.
    let (batch_tx, batch_rx) = bounded::<Batch>(0);
    let (spare_tx, spare_rx) = bounded::<Vec<u8>>(1);
    let limits = settings.limits;
    let first_cut = settings.first_cut_after;
    let batch_stop = stop.clone();
    let result = std::thread::scope(|scope| {
        let batcher = scope.spawn(move || {
            batcher_loop(item_rx, batch_tx, spare_rx, limits, first_cut, &batch_stop)
        });
        let stored = store_batches(&mut committer, &batch_rx, &spare_tx);
        drop(batch_rx);
        let _ = batcher.join();
        stored
    });
    let (first_id, last_id, failure) = result;
    if let Some(e) = failure {
        return (committer, Err(e));
    }
    let outcome = Outcome {
        stream_error: stream_error.lock().expect("not poisoned").take(),
        interrupted: stop.load(Ordering::Relaxed),
        first_id,
        last_id,
        elapsed: started.elapsed(),
    };
    (committer, Ok(outcome))
}

/// Starts the worker threads and the prefetch stage; returns the reader's
/// way in and the workers' outputs, one per worker in order.
fn spawn_workers(
    settings: &PipelineSettings,
    files: Option<Fetcher>,
    metrics: &Arc<Metrics>,
) -> (Sender<Vec<Work>>, Vec<Receiver<Done>>) {
    let n = settings.workers.max(1);
    // Capacities count chunks of up to CHUNK events: queue.size events in
    // flight between the reader and the batcher, at least two chunks a side,
    // and enough waiting for the workers to fetch files ahead.
    let per_worker = (settings.queue_size / (2 * n * CHUNK)).max(2);
    let ahead = per_worker.max(FETCH_AHEAD_CHUNKS.div_ceil(n));
    let ctx = Arc::new(WorkerContext {
        fetching: files.is_some(),
        policy: settings.policy.clone(),
        metrics: metrics.clone(),
        max_line: settings.max_line_bytes,
    });
    let mut task_tx = Vec::with_capacity(n);
    let mut item_rx = Vec::with_capacity(n);
    for _ in 0..n {
        let (ttx, trx) = bounded::<Vec<Task>>(ahead);
        let (itx, irx) = bounded::<Done>(per_worker);
        let ctx = ctx.clone();
        std::thread::Builder::new()
            .name("worker".into())
            .spawn(move || worker(trx, itx, ctx))
            .expect("spawn worker");
        task_tx.push(ttx);
        item_rx.push(irx);
    }
    let (work_tx, work_rx) = bounded::<Vec<Work>>(2);
    {
        let policy = settings.policy.clone();
        std::thread::Builder::new()
            .name("prefetch".into())
            .spawn(move || prefetch(work_rx, task_tx, files, policy))
            .expect("spawn prefetch");
    }
    (work_tx, item_rx)
}

/// Starts the reader thread on `client`; a stream error or refused gap it
/// ends with is left in `stream_error`. Its end closes `work_tx`.
fn spawn_reader(
    client: StreamClient,
    work_tx: Vec<Sender<Vec<Work>>>,
    settings: &PipelineSettings,
    metrics: &Arc<Metrics>,
    committer: &Committer,
    stream_error: Arc<Mutex<Option<StreamError>>>,
) {
    let connected = Arc::new(Mutex::new(None));
    let mut reader = Reader {
        senders: work_tx,
        next: 0,
        pending: Vec::with_capacity(CHUNK),
        metrics: metrics.clone(),
        last_seen: None,
        complete: None,
        heartbeat: None,
        stop_rule: settings.stop_rule,
        recover_until_ms: settings.start.recover_until_ms,
        once_target: None,
        connected: connected.clone(),
        start_after: settings.start.after,
        accept_gap: settings.accept_gap,
        gap: None,
        accepted_gaps: committer.accepted_gaps(),
        unknown_frames: Default::default(),
        open: Vec::new(),
        open_bytes: 0,
        open_handed: 0,
        resend_skip: None,
        open_stale: false,
    };
    let start = settings.start;
    std::thread::Builder::new()
        .name("reader".into())
        .spawn(move || {
            let result = client.run(start, &mut reader);
            reader.metrics.set_stream_connected(false);
            reader.finish();
            if let Some(e) = reader.gap.take().map(Err).unwrap_or(result).err() {
                *stream_error.lock().expect("not poisoned") = Some(e);
            }
            // Dropping the reader closes the work channels: the end of input.
        })
        .expect("spawn reader");
}

/// Stores the batches in the order they come until the batcher ends or a
/// store fails; returns the first and last ids stored and the failure.
fn store_batches(
    committer: &mut Committer,
    batch_rx: &Receiver<Batch>,
    spare_tx: &Sender<Vec<u8>>,
) -> (Option<EventId>, Option<EventId>, Option<anyhow::Error>) {
    let mut first_id = None;
    let mut last_id = None;
    let mut failure = None;
    for batch in batch_rx.iter() {
        let (f, l) = (batch.first_id, batch.last_id);
        match committer.store(batch) {
            Ok((None, body)) => {
                let _ = spare_tx.try_send(body);
            }
            Ok((Some(_), body)) => {
                let _ = spare_tx.try_send(body);
                first_id = first_id.or(f);
                last_id = l.or(last_id);
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    (first_id, last_id, failure)
}

fn batcher_loop(
    inputs: Vec<Receiver<Done>>,
    out: Sender<Batch>,
    spares: Receiver<Vec<u8>>,
    limits: BatchLimits,
    first_cut: Option<EventId>,
    stop: &AtomicBool,
) {
    let mut batcher = Batcher::new(limits);
    if let Some(id) = first_cut {
        batcher.cut_after(id);
    }
    let mut next = 0;
    let tick = Duration::from_millis(200);
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let now = Instant::now();
        let wait = batcher
            .deadline()
            .map(|d| d.saturating_duration_since(now).min(tick))
            .unwrap_or(tick);
        if let Ok(body) = spares.try_recv() {
            batcher.recycle(body);
        }
        match inputs[next].recv_timeout(wait) {
            Ok(done) => {
                next = (next + 1) % inputs.len();
                let now = Instant::now();
                // The lines are copied into the batch body; their holds on
                // the fetch budget go with `done` at the end of this arm.
                for item in done.items {
                    if let Some(b) = batcher.push(item, now) {
                        if out.send(b).is_err() {
                            return;
                        }
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if let Some(b) = batcher.tick(Instant::now()) {
            if out.send(b).is_err() {
                return;
            }
        }
    }
    if batcher.backwards() > 0 {
        log::warn!("{} events arrived with an id lower than an earlier one; they were exported in stream order", batcher.backwards());
    }
    if let Some(b) = batcher.finish() {
        let _ = out.send(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn reader(tx: Sender<Vec<Work>>) -> Reader {
        Reader {
            senders: vec![tx],
            next: 0,
            pending: Vec::new(),
            metrics: Arc::default(),
            last_seen: None,
            complete: None,
            heartbeat: None,
            stop_rule: StopRule::default(),
            recover_until_ms: None,
            once_target: None,
            connected: Arc::default(),
            start_after: None,
            accept_gap: false,
            gap: None,
            accepted_gaps: Arc::default(),
            unknown_frames: Default::default(),
            open: Vec::new(),
            open_bytes: 0,
            open_handed: 0,
            resend_skip: None,
            open_stale: false,
        }
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
    fn handed_on(mut r: Reader, rx: &Receiver<Vec<Work>>) -> Vec<String> {
        r.finish();
        drop(r);
        rx.iter()
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
        let (tx, rx) = bounded(1000);
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
        let (tx, rx) = bounded(10_000);
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
        let (tx, rx) = bounded(1000);
        let mut r = reader(tx);
        r.on_message(msg("create", "1-0", "a"));
        r.on_message(msg("create", "2-0", "b"));
        r.on_disconnect("dropped");
        // The server answers 410 on reconnect: the run ends.
        assert_eq!(handed_on(r, &rx), vec!["1-0:a", "2-0:b"]);
    }

    #[test]
    fn an_id_lower_than_the_open_group_keeps_the_stream_order() {
        let (tx, rx) = bounded(1000);
        let mut r = reader(tx);
        r.on_message(msg("create", "8-0", "a"));
        r.on_message(msg("create", "7-0", "b"));
        r.on_message(msg("create", "9-0", "c"));
        assert_eq!(handed_on(r, &rx), vec!["8-0:a", "7-0:b", "9-0:c"]);
    }

    #[test]
    fn a_drop_after_a_complete_group_skips_nothing() {
        let (tx, rx) = bounded(1000);
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
