//! Ordered batching: lines in stream order → batch files with limits.
//!
//! A batch is cut when the oldest buffered event reaches the age limit, or
//! when the next line would take it past the byte or event limit. Batches end
//! on id-group boundaries: OpenCTI gives an event's dependencies the same id,
//! so an id is *complete* only once a message with a greater id has arrived
//! (a data event or a heartbeat). Each batch carries the greatest complete id
//! it holds, the cursor the committer may save once the file is stored.
//! An open group only goes into a batch early when it alone fills one, or at
//! the end of the run; the cursor then stays before it, so after a restart
//! the group is sent again (duplicated, never lost).
//!
//! Pure: no I/O, the clock is passed in.

use std::time::Instant;

use crate::config::BatchLimits;
use crate::id::EventId;
use crate::policy::Reason;

/// Largest buffer reserved up front for a batch body, in bytes.
const FRESH_CAPACITY_MAX: usize = 64 << 20;

/// A malformed event kept aside with the reason it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeadLetter {
    /// The SSE id as received, if any.
    pub(crate) id: Option<String>,
    /// The SSE event name.
    pub(crate) event: String,
    /// Why it could not be exported.
    pub(crate) reason: String,
    /// The data bytes as received (capped for oversized events).
    pub(crate) raw: Vec<u8>,
    /// Size of the data as received, in bytes.
    pub(crate) size: usize,
    /// `raw` is already base64 text (the received bytes of an attached
    /// file, encoded as they arrived).
    pub(crate) base64: bool,
}

/// What the batcher receives, in stream order.
#[derive(Debug)]
pub(crate) enum Item {
    /// A line for the file.
    Line {
        /// Its SSE id.
        id: EventId,
        /// The JSON line, ending with `\n`.
        bytes: Vec<u8>,
    },
    /// A refused event; `id` is its position when it had a valid one.
    Dead {
        /// Its position in the stream, when known.
        id: Option<EventId>,
        /// The record to keep.
        letter: DeadLetter,
    },
    /// An event the export policy held back: no line, but its id counts.
    Held {
        /// Its SSE id.
        id: EventId,
        /// Why it was held back.
        reason: Reason,
    },
    /// A heartbeat (or any control frame with an id): proves every id below
    /// it complete.
    Mark {
        /// The frame's id.
        id: EventId,
    },
}

/// A batch ready to be stored and committed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Batch {
    /// The file body: JSON lines.
    pub(crate) body: Vec<u8>,
    /// Lines in `body`.
    pub(crate) events: u64,
    /// Id of the first line.
    pub(crate) first_id: Option<EventId>,
    /// Id of the last line.
    pub(crate) last_id: Option<EventId>,
    /// Greatest id whose whole group is in this batch or before it: the
    /// cursor to save once the batch is stored. `None`: keep the old cursor.
    pub(crate) cursor: Option<EventId>,
    /// Dead letters to keep before the cursor is saved.
    pub(crate) dead: Vec<DeadLetter>,
    /// Events held back by the export policy, by [`Reason::index`].
    pub(crate) held: [u64; 6],
}

impl Batch {
    /// True when there is no line, no dead letter and no held event.
    pub(crate) fn is_empty(&self) -> bool {
        self.events == 0 && self.dead.is_empty() && self.held_total() == 0
    }

    /// Events held back by the export policy.
    pub(crate) fn held_total(&self) -> u64 {
        self.held.iter().sum()
    }
}

/// The end of the last complete group inside the current batch.
#[derive(Debug, Default, Clone, Copy)]
struct Boundary {
    bytes: usize,
    events: u64,
    dead: usize,
    held: u64,
    /// Id of the last line before the boundary.
    last_line: Option<EventId>,
    /// The complete id the boundary stands for.
    cursor: Option<EventId>,
}

/// Accumulates items into batches.
#[derive(Debug)]
pub(crate) struct Batcher {
    limits: BatchLimits,
    cur: Batch,
    boundary: Boundary,
    /// Greatest id seen so far: the open group's id.
    open: Option<EventId>,
    /// First line id after the boundary.
    tail_first: Option<EventId>,
    /// When the batch's first item arrived.
    oldest: Option<Instant>,
    /// When the first item after the boundary arrived.
    tail_oldest: Option<Instant>,
    /// Events whose id was lower than one seen before.
    backwards: u64,
    /// Cut as soon as this id is complete (see [`Batcher::cut_after`]).
    cut_after: Option<EventId>,
    /// Bytes of the records kept aside in the batch being filled.
    dead_bytes: usize,
}

/// The capacity of a body sized for a full batch under `limits` (growing a
/// buffer by doubling would leave it up to twice too big): the only bodies
/// worth filling again. Another body (a line that filled a file by itself)
/// is freed once stored, not kept resident until the batcher turns it down.
pub(crate) fn body_capacity(limits: &BatchLimits) -> usize {
    limits.max_bytes.min(FRESH_CAPACITY_MAX)
}

impl Batcher {
    fn body_capacity(&self) -> usize {
        body_capacity(&self.limits)
    }

    /// Readies the batch being filled for more lines once a cut batch has
    /// been handed on: its contents (what a cut left over, usually a few
    /// lines) move into `spare`, the body of a batch already stored, or it
    /// is given a full batch's capacity. A recycled body costs no page
    /// faults, where a fresh one faults in every page it is written to;
    /// and since the leftover waits in a buffer of its own size until the
    /// stored body comes back, no more than two full bodies ever exist.
    pub(crate) fn refill(&mut self, spare: Option<Vec<u8>>) {
        let want = self.body_capacity();
        match spare {
            Some(mut spare) if spare.capacity() == want && self.cur.body.capacity() < want => {
                spare.clear();
                spare.extend_from_slice(&self.cur.body);
                self.cur.body = spare;
            }
            _ => {
                let len = self.cur.body.len();
                if self.cur.body.capacity() < want {
                    self.cur.body.reserve_exact(want - len);
                }
            }
        }
    }

    /// Makes the next batch end as soon as `id` is complete: after a kill,
    /// a file that may still land on the server is uploaded again with the
    /// same events.
    pub(crate) fn cut_after(&mut self, id: EventId) {
        self.cut_after = Some(id);
    }

    fn forced_cut(&mut self) -> Option<Batch> {
        let x = self.cut_after?;
        if self.boundary.cursor.is_some_and(|c| c >= x) {
            self.cut_after = None;
            return self.cut(true);
        }
        None
    }

    /// An empty batcher with these limits.
    pub(crate) fn new(limits: BatchLimits) -> Self {
        Batcher {
            limits,
            cur: Batch {
                body: Vec::with_capacity(body_capacity(&limits)),
                ..Batch::default()
            },
            boundary: Boundary::default(),
            open: None,
            tail_first: None,
            oldest: None,
            tail_oldest: None,
            backwards: 0,
            cut_after: None,
            dead_bytes: 0,
        }
    }

    /// Events seen with an id lower than an earlier one (kept in stream order).
    pub(crate) fn backwards(&self) -> u64 {
        self.backwards
    }

    /// Adds one item; returns a batch when a size limit was reached.
    pub(crate) fn push(&mut self, item: Item, now: Instant) -> Option<Batch> {
        match item {
            Item::Mark { id } => {
                self.see_mark(id);
                self.forced_cut()
            }
            Item::Held { id, reason } => {
                self.see(id);
                let out = self.forced_cut();
                self.note_arrival(now);
                self.cur.held[reason.index()] += 1;
                out
            }
            Item::Line { id, bytes } => {
                self.see(id);
                let mut out = self.forced_cut();
                let full = self.held_bytes() + bytes.len() > self.limits.max_bytes
                    || self.cur.events as usize >= self.limits.max_events;
                if out.is_none() && (self.cur.events > 0 || !self.cur.dead.is_empty()) && full {
                    out = self.cut(false);
                }
                self.note_arrival(now);
                self.cur.first_id.get_or_insert(id);
                self.tail_first.get_or_insert(id);
                self.cur.last_id = Some(id);
                if self.cur.body.is_empty() && bytes.len() >= self.limits.max_bytes {
                    // A line that fills a file by itself becomes the body:
                    // no second copy of a line that may carry large files.
                    self.cur.body = bytes;
                } else {
                    self.cur.body.extend_from_slice(&bytes);
                }
                self.cur.events += 1;
                out
            }
            Item::Dead { id, letter } => {
                if let Some(id) = id {
                    self.see(id);
                }
                let mut out = self.forced_cut();
                // Records kept aside (the received bytes of attached files
                // among them) count toward the batch's size: they are held
                // until it is stored.
                let full = self.held_bytes() + letter.raw.len() > self.limits.max_bytes;
                if out.is_none() && !self.cur.is_empty() && full {
                    out = self.cut(false);
                }
                self.note_arrival(now);
                self.dead_bytes += letter.raw.len();
                self.cur.dead.push(letter);
                out
            }
        }
    }

    /// Bytes the batch being filled holds: its body and its records kept aside.
    fn held_bytes(&self) -> usize {
        self.cur.body.len() + self.dead_bytes
    }

    /// Cuts at the last complete group if the oldest event reached the age limit.
    pub(crate) fn tick(&mut self, now: Instant) -> Option<Batch> {
        let old = self
            .oldest
            .is_some_and(|t| now.duration_since(t) >= self.limits.max_age);
        if old && !self.cur.is_empty() {
            return self.cut(true);
        }
        None
    }

    /// When the next [`tick`](Self::tick) may cut, if anything is buffered.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.oldest
            .filter(|_| !self.cur.is_empty())
            .map(|t| t + self.limits.max_age)
    }

    /// Everything buffered, open group included (end of run). The cursor
    /// stays before an open group.
    pub(crate) fn finish(&mut self) -> Option<Batch> {
        let mut batch = std::mem::take(&mut self.cur);
        batch.cursor = self.boundary.cursor;
        self.boundary = Boundary::default();
        self.tail_first = None;
        self.oldest = None;
        self.tail_oldest = None;
        self.dead_bytes = 0;
        (!batch.is_empty()).then_some(batch)
    }

    fn note_arrival(&mut self, now: Instant) {
        self.oldest.get_or_insert(now);
        self.tail_oldest.get_or_insert(now);
    }

    /// A data event's id (a line, a dead letter, a held event).
    fn see(&mut self, id: EventId) {
        match self.open {
            Some(open) if id > open => {
                self.complete_up_to(open);
                self.open = Some(id);
            }
            Some(open) if id < open => self.backwards += 1,
            Some(_) => {}
            None => self.open = Some(id),
        }
    }

    /// A heartbeat's id: proves the open group complete, but never becomes
    /// a cursor itself (a heartbeat id can be `<now>-0`, ahead of a snapshot
    /// still in progress).
    fn see_mark(&mut self, id: EventId) {
        if let Some(open) = self.open.filter(|o| id > *o) {
            self.complete_up_to(open);
        }
    }

    /// Everything buffered has an id <= `open`: all of it is complete.
    fn complete_up_to(&mut self, open: EventId) {
        self.boundary = Boundary {
            bytes: self.cur.body.len(),
            events: self.cur.events,
            dead: self.cur.dead.len(),
            held: self.cur.held_total(),
            last_line: self.cur.last_id,
            cursor: Some(open),
        };
        self.tail_first = None;
        self.tail_oldest = None;
    }

    /// Cuts at the boundary. With no complete group buffered: nothing when
    /// `only_complete`, else everything (one group fills a whole batch).
    fn cut(&mut self, only_complete: bool) -> Option<Batch> {
        let b = self.boundary;
        if b.events == 0 && b.dead == 0 && b.held == 0 {
            if only_complete {
                return None;
            }
            return self.finish();
        }
        let mut batch = std::mem::take(&mut self.cur);
        // What follows the boundary waits in a buffer of its own size until
        // `refill` gives it a full batch's room.
        let body = batch.body[b.bytes..].to_vec();
        batch.body.truncate(b.bytes);
        let tail = Batch {
            body,
            events: batch.events - b.events,
            first_id: self.tail_first,
            last_id: if batch.events > b.events {
                batch.last_id
            } else {
                None
            },
            cursor: None,
            dead: batch.dead.split_off(b.dead),
            held: [0; 6],
        };
        batch.events = b.events;
        batch.last_id = b.last_line;
        if batch.events == 0 {
            batch.first_id = None;
        }
        batch.cursor = b.cursor;
        self.boundary = Boundary::default();
        self.oldest = if tail.is_empty() {
            None
        } else {
            self.tail_oldest
        };
        self.dead_bytes = tail.dead.iter().map(|d| d.raw.len()).sum();
        self.cur = tail;
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn id(ms: u64, seq: u64) -> EventId {
        EventId { ms, seq }
    }

    fn line(ms: u64, seq: u64) -> Item {
        Item::Line {
            id: id(ms, seq),
            bytes: format!("{{\"id\":\"{ms}-{seq}\"}}\n").into_bytes(),
        }
    }

    fn limits(events: usize) -> BatchLimits {
        BatchLimits {
            max_age: Duration::from_secs(10),
            max_events: events,
            max_bytes: 1 << 20,
        }
    }

    fn ids(batch: &Batch) -> Vec<String> {
        String::from_utf8(batch.body.clone())
            .unwrap()
            .lines()
            .map(|l| {
                l.trim_start_matches("{\"id\":\"")
                    .trim_end_matches("\"}")
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn records_kept_aside_count_toward_the_batch_size() {
        let t = Instant::now();
        let mut b = Batcher::new(limits(1000));
        let kept = |ms: u64| Item::Dead {
            id: Some(id(ms, 0)),
            letter: DeadLetter {
                id: Some(format!("{ms}-0")),
                event: "create".into(),
                reason: "attached file kept aside".into(),
                raw: vec![b'A'; 600 << 10],
                size: 450 << 10,
                base64: true,
            },
        };
        assert!(b.push(line(1, 0), t).is_none());
        assert!(b.push(kept(2), t).is_none());
        // 1.2 MiB kept aside would pass the 1 MiB limit: the batch is cut
        // before the second record, with the first one in it.
        let first = b.push(kept(3), t).expect("cut on the bytes kept aside");
        assert_eq!(ids(&first), ["1-0"]);
        assert_eq!(first.dead.len(), 1);
        assert_eq!(first.cursor, Some(id(2, 0)));
        let rest = b.finish().expect("the second record");
        assert_eq!(rest.dead.len(), 1);
        assert_eq!(rest.events, 0);
    }

    #[test]
    fn a_stored_body_is_filled_again_with_what_the_cut_left_over() {
        let t = Instant::now();
        let mut b = Batcher::new(limits(2));
        assert!(b.push(line(1, 0), t).is_none());
        assert!(b.push(line(2, 0), t).is_none());
        // The third line goes after the cut, with the fourth (same ms).
        let first = b.push(line(3, 0), t).expect("cut at two events");
        assert!(b.push(line(3, 1), t).is_none());
        let full = 1 << 20;
        // What the cut left waits in a buffer of its own size...
        assert!(b.cur.body.capacity() < full);
        let spare = first.body;
        let at = spare.as_ptr();
        assert_eq!(spare.capacity(), full);
        // ...and moves into the stored body when it comes back.
        b.refill(Some(spare));
        assert_eq!(b.cur.body.as_ptr(), at, "the stored body is reused");
        assert_eq!(b.cur.body.capacity(), full);
        let rest = b.finish().expect("the rest");
        assert_eq!(ids(&rest), ["3-0", "3-1"]);
        // Without a body to reuse, the batch gets a full batch's room once
        // (growing by doubling could leave it twice too big).
        assert!(b.push(line(4, 0), t).is_none());
        b.refill(None);
        assert_eq!(b.cur.body.capacity(), full);
        // A body of another size (a line that filled a file by itself) is
        // not kept.
        let mut b = Batcher::new(limits(2));
        assert!(b.push(line(5, 0), t).is_none());
        b.cur.body.shrink_to_fit();
        b.refill(Some(Vec::with_capacity(8 * full)));
        assert_eq!(b.cur.body.capacity(), full);
        assert_eq!(ids(&b.finish().unwrap()), ["5-0"]);
    }

    #[test]
    fn a_line_that_fills_a_file_becomes_its_body_without_a_copy() {
        let t = Instant::now();
        let mut b = Batcher::new(limits(1000));
        let big = vec![b'x'; 2 << 20];
        let at = big.as_ptr();
        assert!(b
            .push(
                Item::Line {
                    id: id(1, 0),
                    bytes: big
                },
                t
            )
            .is_none());
        let batch = b.push(line(2, 0), t).expect("cut before the next line");
        assert_eq!(batch.body.as_ptr(), at, "the line was copied");
        assert_eq!(batch.events, 1);
    }

    #[test]
    fn cursor_covers_only_complete_groups() {
        let t = Instant::now();
        let mut b = Batcher::new(limits(4));
        assert!(b.push(line(1, 0), t).is_none());
        assert!(b.push(line(2, 0), t).is_none());
        assert!(b.push(line(2, 0), t).is_none()); // dependency: same id
        assert!(b.push(line(2, 0), t).is_none());
        // The fifth line would pass the limit: cut before group 2, which is still open.
        let batch = b.push(line(2, 0), t).unwrap();
        assert_eq!(ids(&batch), ["1-0"]);
        assert_eq!(batch.cursor, Some(id(1, 0)));
        assert_eq!(
            (batch.first_id, batch.last_id),
            (Some(id(1, 0)), Some(id(1, 0)))
        );
        // Group 2 completes when 3-0 arrives; the batch is full, so it is cut whole.
        let batch = b.push(line(3, 0), t).unwrap();
        assert!(b.push(line(4, 0), t).is_none());
        assert_eq!(ids(&batch), ["2-0", "2-0", "2-0", "2-0"]);
        assert_eq!(batch.cursor, Some(id(2, 0)));
        let rest = b.finish().unwrap();
        assert_eq!(ids(&rest), ["3-0", "4-0"]);
        // 4-0 is still open at the end: the cursor stays at 3-0.
        assert_eq!(rest.cursor, Some(id(3, 0)));
    }

    #[test]
    fn a_group_larger_than_a_batch_is_cut_whole_without_moving_the_cursor() {
        let t = Instant::now();
        let mut b = Batcher::new(limits(2));
        b.push(line(5, 0), t);
        b.push(line(5, 0), t);
        let batch = b.push(line(5, 0), t).unwrap();
        assert_eq!(ids(&batch), ["5-0", "5-0"]);
        assert_eq!(batch.cursor, None);
        b.push(Item::Mark { id: id(6, 0) }, t);
        let rest = b.finish().unwrap();
        assert_eq!(ids(&rest), ["5-0"]);
        assert_eq!(rest.cursor, Some(id(5, 0)));
    }

    #[test]
    fn age_limit_cuts_complete_groups_and_waits_for_the_open_one() {
        let t = Instant::now();
        let mut b = Batcher::new(limits(100));
        b.push(line(1, 0), t);
        assert_eq!(b.deadline(), Some(t + Duration::from_secs(10)));
        assert!(
            b.tick(t + Duration::from_secs(11)).is_none(),
            "1-0 is not known complete yet"
        );
        b.push(Item::Mark { id: id(1, 0) }, t); // same id: proves nothing
        assert!(b.tick(t + Duration::from_secs(11)).is_none());
        b.push(Item::Mark { id: id(9, 0) }, t);
        let batch = b.tick(t + Duration::from_secs(11)).unwrap();
        assert_eq!(batch.cursor, Some(id(1, 0)));
        assert!(b.finish().is_none());
    }

    #[test]
    fn tail_keeps_its_own_age() {
        let t = Instant::now();
        let mut b = Batcher::new(limits(100));
        b.push(line(1, 0), t);
        b.push(line(2, 0), t + Duration::from_secs(8));
        let batch = b.tick(t + Duration::from_secs(10)).unwrap();
        assert_eq!(ids(&batch), ["1-0"]);
        assert_eq!(b.deadline(), Some(t + Duration::from_secs(18)));
    }

    #[test]
    fn byte_limit_cuts_before_the_line_that_would_pass_it() {
        let t = Instant::now();
        let mut b = Batcher::new(BatchLimits {
            max_age: Duration::from_secs(10),
            max_events: 100,
            max_bytes: 40,
        });
        b.push(line(1, 0), t); // 13 bytes
        b.push(line(2, 0), t);
        b.push(line(3, 0), t);
        let batch = b.push(line(4, 0), t).unwrap();
        assert_eq!(ids(&batch), ["1-0", "2-0", "3-0"]);
        assert!(batch.body.len() <= 40);
    }

    #[test]
    fn dead_letters_travel_with_their_position() {
        let t = Instant::now();
        let mut b = Batcher::new(limits(100));
        let letter = DeadLetter {
            id: Some("2-0".into()),
            event: "create".into(),
            reason: "bad".into(),
            raw: vec![1],
            size: 1,
            base64: false,
        };
        b.push(line(1, 0), t);
        b.push(
            Item::Dead {
                id: Some(id(2, 0)),
                letter: letter.clone(),
            },
            t,
        );
        b.push(Item::Mark { id: id(3, 0) }, t);
        let batch = b.tick(t + Duration::from_secs(10)).unwrap();
        assert_eq!(batch.dead, vec![letter]);
        assert_eq!(batch.cursor, Some(id(2, 0)));
        assert_eq!(batch.last_id, Some(id(1, 0)));
    }

    #[test]
    fn cut_after_ends_the_first_batch_exactly_at_the_given_cursor() {
        let t = Instant::now();
        let mut b = Batcher::new(limits(100));
        b.cut_after(id(2, 0));
        assert!(b.push(line(1, 0), t).is_none());
        assert!(b.push(line(2, 0), t).is_none());
        assert!(b.push(line(2, 0), t).is_none());
        let batch = b.push(line(3, 0), t).unwrap();
        assert_eq!(ids(&batch), ["1-0", "2-0", "2-0"]);
        assert_eq!(batch.cursor, Some(id(2, 0)));
        assert!(
            b.push(line(4, 0), t).is_none(),
            "only the first batch is forced"
        );
    }

    #[test]
    fn heartbeats_complete_groups_but_never_become_the_cursor() {
        let t = Instant::now();
        let mut b = Batcher::new(limits(100));
        b.push(line(5, 0), t);
        b.push(
            Item::Mark {
                id: id(1_800_000_000_000, 0),
            },
            t,
        );
        b.push(
            Item::Mark {
                id: id(1_800_000_000_001, 0),
            },
            t,
        );
        let batch = b.tick(t + Duration::from_secs(10)).unwrap();
        assert_eq!(batch.cursor, Some(id(5, 0)));
        b.push(line(6, 0), t);
        assert_eq!(
            b.finish().unwrap().cursor,
            Some(id(5, 0)),
            "the cursor stays before the open 6-0"
        );
    }

    #[test]
    fn ids_going_backwards_stay_in_stream_order_and_never_lower_the_cursor() {
        let t = Instant::now();
        let mut b = Batcher::new(limits(100));
        b.push(line(5, 0), t);
        b.push(line(3, 0), t);
        b.push(line(6, 0), t);
        assert_eq!(b.backwards(), 1);
        let batch = b.finish().unwrap();
        assert_eq!(ids(&batch), ["5-0", "3-0", "6-0"]);
        assert_eq!(batch.cursor, Some(id(5, 0)));
    }
}
