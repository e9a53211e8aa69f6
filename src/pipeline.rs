//! The run: threads wired with bounded channels.
//!
//! ```text
//! [reader] --Work--> [prefetch] --Chunk, round robin--> [worker 1..n: transform] --Done--> [batcher] --Batch--> [committer]
//!  socket              gathers      (the window:           (consumer_count)          per       limits,    rendez-   store, then
//!  SSE parse           chunks,      queue.size events,      waits for its files      worker    id groups  vous      save state
//!                      submits      8 MiB of data)
//!                      files to the fetch pool (crate::fetch)
//! ```
//! The reader is `stream::reader::Reader` (the stream protocol: complete ids,
//! id groups across reconnects, the gap check); this module wires the threads.
//! The prefetch stage gathers what the reader hands on into chunks of up to
//! `CHUNK` events, admits them into the window (`crate::window`), submits
//! each event's attached files to the fetch pool in stream order, then hands
//! the chunk to the workers in turn; the batcher takes the results back in
//! the same turn, so output order equals stream order with no reorder
//! buffer. Files are fetched while the events wait in the window, so the
//! workers seldom wait for one. Every data channel is bounded: when storage
//! is slow the committer blocks the batcher, the workers, then the reader,
//! which stops reading the socket. The committer is the only writer of the
//! state, and stores file N while the batcher fills N+1.
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
use crate::fetch::{Fetcher, FileOutcome, Hold, Reserver, Ticket};
use crate::gather::{gather, Giver, Taker};
use crate::id::EventId;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::stream::client::{Start, StreamClient, StreamError};
use crate::stream::reader::{Reader, StopRule, Work, CHUNK};
use crate::transform::{self, FileFetcher, NoFiles, Transformed};
use crate::window::{Admitted, Window, WINDOW_BYTES};

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

/// A unit of work with the attached files fetched ahead for it.
struct Task {
    work: Work,
    files: Vec<Ticket>,
}

/// Work handed to a worker, with its room in the window.
struct Chunk {
    tasks: Vec<Task>,
    admitted: Admitted,
}

/// The fetch stage's front: submits the attached files of each data event,
/// in stream order, then hands the chunk to the next worker in turn (the
/// batcher takes results back in the same turn).
fn prefetch(
    rx: Taker<Work>,
    txs: Vec<Sender<Chunk>>,
    fetcher: Option<Fetcher>,
    policy: Arc<Policy>,
    window: Arc<Window>,
) {
    let mut next = 0;
    while let Some(chunk) = rx.take() {
        let bytes = chunk.iter().map(work_bytes).sum();
        let admitted = window.admit(chunk.len(), bytes);
        let tasks: Vec<Task> = chunk
            .into_iter()
            .map(|work| {
                let files = match (&fetcher, &work) {
                    (Some(f), Work::Data { event, data, .. }) => {
                        f.submit_event(&transform::files_to_fetch(event, data, &policy))
                    }
                    _ => Vec::new(),
                };
                Task { work, files }
            })
            .collect();
        if txs[next].send(Chunk { tasks, admitted }).is_err() {
            return;
        }
        next = (next + 1) % txs.len();
    }
}

/// Bytes of a unit of work charged to the window.
fn work_bytes(work: &Work) -> usize {
    match work {
        Work::Data { event, data, .. } => event.len() + data.len(),
        Work::Dead { letter, .. } => letter.raw.len(),
        Work::Mark(_) => 0,
    }
}

/// How long the prefetch stage waits for more of the stream to fill a
/// chunk: the reader hands on what each socket read gave (a few events, or
/// one when the server sends a chunk per event), and the fetch-ahead window
/// is counted in chunks, so small chunks would shrink it to a few files.
const GATHER: Duration = Duration::from_millis(2);

/// Gives an event's prefetched files to the transform, in list order.
struct Prefetched<'a> {
    tickets: std::cell::RefCell<std::collections::VecDeque<Ticket>>,
    enabled: bool,
    /// Charges the event's line to the fetch budget (`None`: no file of
    /// the event was requested).
    reserver: Option<Reserver>,
    /// What the worker has not handed on yet, handed on before any wait.
    pending: &'a Pending<'a>,
}

impl FileFetcher for Prefetched<'_> {
    fn fetch(&self, uri: &str) -> FileOutcome {
        if !self.enabled {
            return NoFiles.fetch(uri);
        }
        match self.tickets.borrow_mut().pop_front() {
            Some(t) if t.uri() == uri => {
                if !t.settled_now() {
                    self.pending.hand_on_holds();
                }
                t.wait()
            }
            _ => FileOutcome::Failed {
                reason: format!("`{uri}` was not fetched ahead (the file list changed)"),
                kept: None,
            },
        }
    }

    fn reserve(&self, bytes: usize) -> Option<Hold> {
        let r = self.reserver.as_ref()?;
        Some(r.try_reserve(bytes).unwrap_or_else(|| {
            self.pending.hand_on_holds();
            r.reserve(bytes)
        }))
    }
}

/// A worker's results not yet handed on to the batcher.
struct Pending<'a> {
    items: std::cell::RefCell<Vec<Item>>,
    holds: std::cell::RefCell<Vec<Hold>>,
    tx: &'a Sender<Done>,
    /// The batcher is gone.
    closed: std::cell::Cell<bool>,
}

impl Pending<'_> {
    /// Hands on the results that hold bytes of the fetch budget (lines with
    /// files, files kept aside), before the worker waits for a file or for
    /// room: once the batcher has them, the next event may pass as the
    /// oldest, so no wait is ever for room these bytes hold. Results with
    /// nothing charged wait for the end of the chunk: one message per
    /// chunk, not per file.
    fn hand_on_holds(&self) {
        if self.holds.borrow().is_empty() || self.closed.get() {
            return;
        }
        let part = Done {
            items: std::mem::take(&mut *self.items.borrow_mut()),
            holds: std::mem::take(&mut *self.holds.borrow_mut()),
            admitted: None,
        };
        if self.tx.send(part).is_err() {
            self.closed.set(true);
        }
    }
}

/// A worker's results for one chunk, with their room in the window (given
/// back once the batcher has taken them) and what their lines and kept
/// files were charged to the fetch budget (given back once their batch is
/// stored).
struct Done {
    items: Vec<Item>,
    holds: Vec<Hold>,
    /// The chunk's room, with its last results only: the end of the chunk
    /// (the batcher then turns to the next worker).
    admitted: Option<Admitted>,
}

/// A batch to store, with the fetch budget its bytes are charged to.
type ToStore = (Batch, Vec<Hold>);

fn worker(rx: Receiver<Chunk>, tx: Sender<Done>, ctx: Arc<WorkerContext>) {
    for Chunk {
        tasks: chunk,
        admitted,
    } in rx
    {
        let pending = Pending {
            items: std::cell::RefCell::new(Vec::with_capacity(chunk.len())),
            holds: std::cell::RefCell::new(Vec::new()),
            tx: &tx,
            closed: std::cell::Cell::new(false),
        };
        for task in chunk {
            if pending.closed.get() {
                // The batcher is gone: the run is ending.
                return;
            }
            work_item(task, &ctx, &pending);
        }
        if pending.closed.get() {
            return;
        }
        let done = Done {
            items: pending.items.into_inner(),
            holds: pending.holds.into_inner(),
            admitted: Some(admitted),
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

fn work_item(task: Task, ctx: &WorkerContext, pending: &Pending<'_>) {
    let Task { work, files } = task;
    let item = match work {
        Work::Mark(id) => Item::Mark { id },
        Work::Dead { id, letter } => Item::Dead { id, letter },
        Work::Data { id, event, data } => {
            let files = Prefetched {
                reserver: files.iter().find_map(Ticket::reserver),
                tickets: std::cell::RefCell::new(files.into()),
                enabled: ctx.fetching,
                pending,
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
                    let mut items = pending.items.borrow_mut();
                    let mut holds = pending.holds.borrow_mut();
                    for kept in line.kept {
                        items.push(kept_file_letter(id, &event, kept, &mut holds));
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
    pending.items.borrow_mut().push(item);
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
            raw: base64,
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
    let crashed = Arc::new(AtomicBool::new(false));
    let (work_tx, item_rx) = spawn_workers(&settings, files, &metrics, &crashed);
    let stream_error: Arc<Mutex<Option<StreamError>>> = Arc::new(Mutex::new(None));
    spawn_reader(
        client,
        work_tx,
        &settings,
        &metrics,
        &committer,
        stream_error.clone(),
        &crashed,
    );

    // A rendezvous: the batcher fills batch N+1 while N is stored, and at
    // most those two bodies exist.
    let (batch_tx, batch_rx) = bounded::<ToStore>(0);
    // Stored bodies go back to the batcher to be filled again.
    let (spare_tx, spare_rx) = bounded::<Vec<u8>>(1);
    let limits = settings.limits;
    let first_cut = settings.first_cut_after;
    let batch_stop = stop.clone();
    let result = std::thread::scope(|scope| {
        let batcher = scope.spawn(move || {
            let out = Handoff {
                batches: batch_tx,
                spares: spare_rx,
            };
            batcher_loop(item_rx, out, limits, first_cut, &batch_stop)
        });
        let spares = Spares {
            tx: spare_tx,
            capacity: crate::batch::body_capacity(&limits),
        };
        let stored = store_batches(&mut committer, &batch_rx, &spares);
        drop(batch_rx);
        if batcher.join().is_err() {
            crashed.store(true, Ordering::Relaxed);
        }
        stored
    });
    let (first_id, last_id, failure) = result;
    if let Some(e) = failure {
        return (committer, Err(e));
    }
    if crashed.load(Ordering::Relaxed) {
        // What was stored is committed; what was not is read again by the
        // next run. A run that lost a thread must not look finished.
        return (
            committer,
            Err(anyhow::anyhow!(
                "an exporter thread stopped on an internal error (its message is above): \
                 what was stored is committed and the next run resumes after it; please report it"
            )),
        );
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
    crashed: &Arc<AtomicBool>,
) -> (Giver<Work>, Vec<Receiver<Done>>) {
    let n = settings.workers.max(1);
    // The window bounds the events between the prefetch stage and the
    // batcher; the channels only need to hold what it admits.
    let window = Window::new(settings.queue_size, WINDOW_BYTES);
    let capacity = settings.queue_size.div_ceil(CHUNK) + 1;
    let ctx = Arc::new(WorkerContext {
        fetching: files.is_some(),
        policy: settings.policy.clone(),
        metrics: metrics.clone(),
        max_line: settings.max_line_bytes,
    });
    let mut task_tx = Vec::with_capacity(n);
    let mut item_rx = Vec::with_capacity(n);
    for _ in 0..n {
        let (ttx, trx) = bounded::<Chunk>(capacity);
        let (itx, irx) = bounded::<Done>(capacity);
        let ctx = ctx.clone();
        std::thread::Builder::new()
            .name("worker".into())
            .spawn({
                let guard = PanicGuard(crashed.clone());
                move || {
                    let _guard = guard;
                    worker(trx, itx, ctx)
                }
            })
            .expect("spawn worker");
        task_tx.push(ttx);
        item_rx.push(irx);
    }
    // About two chunks wait for the prefetch stage, as many as it sends on.
    let (work_tx, work_rx) = gather::<Work>(2 * CHUNK, CHUNK, GATHER);
    {
        let policy = settings.policy.clone();
        std::thread::Builder::new()
            .name("prefetch".into())
            .spawn({
                let guard = PanicGuard(crashed.clone());
                move || {
                    let _guard = guard;
                    prefetch(work_rx, task_tx, files, policy, window)
                }
            })
            .expect("spawn prefetch");
    }
    (work_tx, item_rx)
}

/// Starts the reader thread on `client`; a stream error or refused gap it
/// ends with is left in `stream_error`. Its end closes `work_tx`.
fn spawn_reader(
    client: StreamClient,
    work_tx: Giver<Work>,
    settings: &PipelineSettings,
    metrics: &Arc<Metrics>,
    committer: &Committer,
    stream_error: Arc<Mutex<Option<StreamError>>>,
    crashed: &Arc<AtomicBool>,
) {
    let mut reader = Reader::new(
        work_tx,
        metrics.clone(),
        settings.stop_rule,
        settings.start.after,
        settings.start.recover_until_ms,
        settings.accept_gap,
        committer.accepted_gaps(),
    );
    let start = settings.start;
    std::thread::Builder::new()
        .name("reader".into())
        .spawn({
            let guard = PanicGuard(crashed.clone());
            move || {
                let _guard = guard;
                let result = client.run(start, &mut reader);
                if let Some(e) = reader.end(result) {
                    *stream_error.lock().expect("not poisoned") = Some(e);
                }
                // Dropping the reader closes the work channels: the end of input.
            }
        })
        .expect("spawn reader");
}

/// Marks the run as failed when the thread that holds it panics (the
/// panic message is already on stderr): the run then ends with an error
/// instead of looking finished with part of the stream exported.
struct PanicGuard(Arc<AtomicBool>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// Stores the batches in the order they come until the batcher ends or a
/// store fails; returns the first and last ids stored and the failure.
fn store_batches(
    committer: &mut Committer,
    batch_rx: &Receiver<ToStore>,
    spares: &Spares,
) -> (Option<EventId>, Option<EventId>, Option<anyhow::Error>) {
    let mut first_id = None;
    let mut last_id = None;
    let mut failure = None;
    for (batch, holds) in batch_rx.iter() {
        let (f, l) = (batch.first_id, batch.last_id);
        let stored = committer.store(&batch);
        drop(holds);
        // Before the next batch is taken: the batcher finds the body as
        // soon as it has handed that batch on.
        if batch.body.capacity() == spares.capacity {
            let _ = spares.tx.try_send(batch.body);
        }
        match stored {
            Ok(None) => {}
            Ok(Some(_)) => {
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

/// Where stored bodies of a full batch's capacity go back to the batcher.
struct Spares {
    tx: Sender<Vec<u8>>,
    capacity: usize,
}

/// The batcher's way to the committer, and the stored bodies coming back.
struct Handoff {
    batches: Sender<ToStore>,
    spares: Receiver<Vec<u8>>,
}

impl Handoff {
    /// Hands `batch` on (waiting while the one before is stored) and readies
    /// the batcher for more; false once the committer is gone.
    fn send(&self, batcher: &mut Batcher, batch: Batch, holds: Vec<Hold>) -> bool {
        if self.batches.send((batch, holds)).is_err() {
            return false;
        }
        batcher.refill(self.spares.try_recv().ok());
        true
    }
}

fn batcher_loop(
    inputs: Vec<Receiver<Done>>,
    out: Handoff,
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
    // The fetch budget charged for what the batch being filled holds: it
    // goes with the batch and is given back once the batch is stored (a
    // batch cut in the middle of a chunk leaves that chunk's charges to
    // the next batch: given back later, never earlier).
    let mut holds: Vec<Hold> = Vec::new();
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let now = Instant::now();
        let wait = batcher
            .deadline()
            .map(|d| d.saturating_duration_since(now).min(tick))
            .unwrap_or(tick);
        match inputs[next].recv_timeout(wait) {
            Ok(done) => {
                let now = Instant::now();
                let Done {
                    items,
                    holds: taken,
                    admitted,
                } = done;
                if admitted.is_some() {
                    next = (next + 1) % inputs.len();
                }
                for item in items {
                    if let Some(b) = batcher.push(item, now) {
                        if !out.send(&mut batcher, b, std::mem::take(&mut holds)) {
                            return;
                        }
                    }
                }
                for mut h in taken {
                    h.batched();
                    holds.push(h);
                }
                // The chunk's room in the window is given back here.
                drop(admitted);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if let Some(b) = batcher.tick(Instant::now()) {
            if !out.send(&mut batcher, b, std::mem::take(&mut holds)) {
                return;
            }
        }
    }
    if batcher.backwards() > 0 {
        log::warn!("{} events arrived with an id lower than an earlier one; they were exported in stream order", batcher.backwards());
    }
    if let Some(b) = batcher.finish() {
        let _ = out.batches.send((b, holds));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_panics_marks_the_run_failed_and_one_that_ends_does_not() {
        let crashed = Arc::new(AtomicBool::new(false));
        let guard = PanicGuard(crashed.clone());
        std::thread::spawn(move || {
            let _guard = guard;
        })
        .join()
        .unwrap();
        assert!(!crashed.load(Ordering::Relaxed));
        let guard = PanicGuard(crashed.clone());
        let ended = std::thread::spawn(move || {
            let _guard = guard;
            panic!("a bug");
        })
        .join();
        assert!(ended.is_err());
        assert!(crashed.load(Ordering::Relaxed));
    }
}
