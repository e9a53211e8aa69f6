//! The fetch stage: attached files (PROTOCOL.md §4) fetched ahead of the
//! workers, many at a time, in bounded memory.
//!
//! ```text
//! [prefetch] --submit_event(uris)--> [fetch pool: files.concurrency threads] --outcome--> Ticket
//!  stream order                       keep-alive agent, retries with backoff           waited for by
//!                                     content base64-encoded as it arrives             the worker
//! ```
//! A [`Fetcher`] owns up to `files.concurrency` threads sharing one
//! keep-alive agent, started as files wait for one.
//! [`Fetcher::submit_event`] queues the files of an event and returns
//! a [`Ticket`] for each; the worker that builds the event's line waits on
//! them. Jobs are started in
//! submission (stream) order; a job to retry (5xx, timeout, dropped
//! connection) waits out its backoff in a side list, so it holds neither a
//! thread nor the files behind it.
//!
//! Memory: every byte of content held by a fetch is charged to one global
//! budget (`files.buffer_bytes`); so is the line a worker builds from the
//! contents, before it is allocated, and the record of a file kept aside.
//! The charges last until the batch that holds those bytes is stored,
//! whatever the number of workers. A fetch or a line that would exceed the
//! budget waits, except for the oldest event whose files or line the
//! batcher has not taken yet: the event the batcher waits for always
//! passes, so memory stays within the budget plus that one event.
//! A fetch takes its room before its request: one read's worth, then, once
//! the response announces its length, the whole file's at once. With no
//! room after a short wait it gives its thread back and is tried again
//! later, with the room it learnt it needs; that wait is not one of
//! `files.retries`, and a file is not asked for again and again while the
//! budget stays full.
//!
//! Limits: a file larger than `files.max_bytes`, or not received within
//! `files.deadline_sec` (the whole download, retries included), is given up;
//! the bytes received so far are handed back with the reason, for the worker
//! to keep aside. A 4xx answer (404, 403, ...) is final. Redirects are never
//! followed: the token only goes to the configured OpenCTI's `/storage/get/`.

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::config::FileSettings;
use crate::metrics::{Metrics, RetryCause};
use crate::retry::Backoff;

/// The content of an attached file as standard padded base64.
pub(crate) struct FileContent {
    /// ASCII only: encoded in place as the bytes arrive.
    base64: Vec<u8>,
    size: u64,
    _charge: Charge,
}

impl FileContent {
    /// Content encoded from `bytes` at once (fetchers without a budget).
    #[cfg(test)]
    pub(crate) fn from_bytes(bytes: &[u8]) -> Self {
        FileContent {
            base64: base64::engine::general_purpose::STANDARD
                .encode(bytes)
                .into_bytes(),
            size: bytes.len() as u64,
            _charge: Charge::none(),
        }
    }

    /// The base64 text.
    pub(crate) fn base64(&self) -> &[u8] {
        &self.base64
    }

    /// Bytes received (before encoding).
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The base64 text, and the hold on the budget it was charged to: keep
    /// the hold until the bytes made from the text (the line, the record
    /// kept aside) have left the pipeline's queues, so that memory stays
    /// bounded whatever the number of workers.
    pub(crate) fn into_parts(self) -> (Vec<u8>, Hold) {
        let FileContent {
            base64, _charge, ..
        } = self;
        (base64, Hold(_charge))
    }
}

/// Bytes charged to the fetch budget, given back when dropped.
pub(crate) struct Hold(Charge);

impl Hold {
    /// The batcher has taken what these bytes were charged for: they stay
    /// charged (until the batch is stored), but no longer keep their event
    /// among those not yet batched, so the next event may pass as the oldest.
    pub(crate) fn batched(&mut self) {
        if let (Some(b), Some(seq)) = (&self.0.budget, self.0.seq.take()) {
            b.leave(seq);
        }
    }
}

/// The right to charge more bytes for an event with fetched files: the
/// line built from their contents.
pub(crate) struct Reserver {
    budget: Arc<Budget>,
    seq: u64,
}

impl Reserver {
    /// Charges `bytes` if there is room now (or this is the oldest event not
    /// yet batched), without waiting.
    pub(crate) fn try_reserve(&self, bytes: usize) -> Option<Hold> {
        let mut charge = Charge::new(self.budget.clone(), self.seq);
        charge.grow_to(bytes, Duration::ZERO).then(|| Hold(charge))
    }

    /// Charges `bytes`, waiting for room in the budget unless this is the
    /// oldest event not yet batched (which always passes: the batcher waits
    /// for it).
    pub(crate) fn reserve(&self, bytes: usize) -> Hold {
        let mut charge = Charge::new(self.budget.clone(), self.seq);
        while !charge.grow_to(bytes, BUDGET_WAIT) {}
        Hold(charge)
    }
}

impl std::fmt::Debug for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Hold({} bytes)", self.0.bytes)
    }
}

impl std::fmt::Debug for FileContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FileContent({} bytes)", self.size)
    }
}

/// What became of an attached file.
#[derive(Debug)]
pub(crate) enum FileOutcome {
    /// Its whole content.
    Fetched(FileContent),
    /// Given up: why, and what was received when something was.
    Failed {
        /// One lowercase sentence.
        reason: String,
        /// The bytes received before giving up (over the size cap, past the
        /// deadline), to be kept aside.
        kept: Option<FileContent>,
    },
}

impl FileOutcome {
    fn failed(reason: impl Into<String>) -> Self {
        FileOutcome::Failed {
            reason: reason.into(),
            kept: None,
        }
    }
}

/// The request path for an attached file's `uri`: `storage/get/<key>` with
/// the key normalised (empty and `.` segments dropped), or why it must not
/// be requested. Whatever host the uri names, only the configured OpenCTI is
/// asked; a key that could leave `/storage/get/` once decoded by a server or
/// a proxy (`..`, a backslash, `%2e`, `%2f`, `%5c`, `%25`, a control
/// character) is refused.
pub(crate) fn storage_path(uri: &str) -> Result<String, String> {
    const MARK: &str = "storage/get/";
    let Some(pos) = uri.find(MARK) else {
        return Err(format!("uri `{uri}` is not under `/storage/get/`"));
    };
    let key = &uri[pos + MARK.len()..];
    if key.chars().any(|c| c == '\\' || c.is_control()) {
        return Err(format!(
            "uri `{}` has a backslash or a control character in its storage key",
            uri.escape_debug()
        ));
    }
    let bytes = key.as_bytes();
    for (i, _) in key.match_indices('%') {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            if matches!(b, b'.' | b'/' | b'\\' | b'%') || b < 0x20 {
                return Err(format!(
                    "uri `{uri}` has an encoded `.`, `/`, `\\` or `%` in its storage key"
                ));
            }
        }
    }
    let mut segments = Vec::new();
    for segment in key.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                return Err(format!(
                    "uri `{uri}` leaves `/storage/get/` (a `..` segment)"
                ))
            }
            s => segments.push(s),
        }
    }
    if segments.is_empty() {
        return Err(format!("uri `{uri}` has an empty storage key"));
    }
    Ok(format!("{MARK}{}", segments.join("/")))
}

/// Bytes of base64 for `n` bytes of content.
/// Appends the standard padded base64 of `bytes` to `out`, encoding straight
/// into its spare room (no temporary, no UTF-8 check of the result).
fn encode_into(bytes: &[u8], out: &mut Vec<u8>) {
    let at = out.len();
    out.resize(at + b64_len(bytes.len()), 0);
    let n = base64::engine::general_purpose::STANDARD
        .encode_slice(bytes, &mut out[at..])
        .expect("room for the whole encoding");
    out.truncate(at + n);
}

fn b64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// The global byte budget of fetched content.
struct Budget {
    limit: usize,
    state: Mutex<BudgetState>,
}

#[derive(Default)]
struct BudgetState {
    used: usize,
    /// Events not yet batched, by number: an event stays here while a
    /// ticket for one of its files or a charge made for it (a content, the
    /// line made from them) lives and has not been taken by the batcher.
    /// Counts per event.
    outstanding: BTreeMap<u64, usize>,
    /// Charges waiting for room (see [`Budget::changed`]).
    waiters: Vec<Waiter>,
}

/// A charge waiting for room: its event, its bytes, and what wakes it.
struct Waiter {
    seq: u64,
    n: usize,
    cv: Arc<Condvar>,
}

impl BudgetState {
    /// Whether `n` more bytes for event `seq` pass: there is room, or it is
    /// the oldest event not yet batched.
    fn grants(&self, seq: u64, n: usize, limit: usize) -> bool {
        self.used + n <= limit
            || self
                .outstanding
                .first_key_value()
                .is_none_or(|(&s, _)| s >= seq)
    }
}

impl Budget {
    /// Charges `n` bytes for event `seq`, waiting up to `wait` for room.
    /// The oldest event not yet batched is always granted.
    fn charge(&self, seq: u64, n: usize, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        let mut st = self.state.lock().expect("not poisoned");
        let mut cv: Option<Arc<Condvar>> = None;
        loop {
            if st.grants(seq, n, self.limit) {
                st.used += n;
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            let mine = cv.get_or_insert_with(Default::default).clone();
            st.waiters.push(Waiter {
                seq,
                n,
                cv: mine.clone(),
            });
            st = mine.wait_timeout(st, until - now).expect("not poisoned").0;
            st.waiters.retain(|w| !Arc::ptr_eq(&w.cv, &mine));
        }
    }

    fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut st = self.state.lock().expect("not poisoned");
        st.used = st.used.saturating_sub(n);
        self.changed(st);
    }

    /// Wakes the charges that may pass after a change, and only those: up
    /// to `files.concurrency` fetches may wait, and waking them all at each
    /// release or batched event cost more CPU than the fetches themselves.
    fn changed(&self, st: std::sync::MutexGuard<'_, BudgetState>) {
        for w in &st.waiters {
            if st.grants(w.seq, w.n, self.limit) {
                w.cv.notify_one();
            }
        }
    }

    /// Event `seq` is outstanding once more (a ticket or a charge for it).
    fn enter(&self, seq: u64) {
        *self
            .state
            .lock()
            .expect("not poisoned")
            .outstanding
            .entry(seq)
            .or_default() += 1;
    }

    /// One ticket or charge for event `seq` is gone or batched.
    fn leave(&self, seq: u64) {
        let mut st = self.state.lock().expect("not poisoned");
        if let Some(n) = st.outstanding.get_mut(&seq) {
            *n -= 1;
            if *n == 0 {
                st.outstanding.remove(&seq);
            }
        }
        self.changed(st);
    }
}

/// Bytes charged to the budget for event `seq`, given back on drop.
struct Charge {
    budget: Option<Arc<Budget>>,
    bytes: usize,
    /// The event, while it is not yet batched.
    seq: Option<u64>,
}

impl Charge {
    fn none() -> Self {
        Charge {
            budget: None,
            bytes: 0,
            seq: None,
        }
    }

    /// No bytes yet, for event `seq` (outstanding while this lives).
    fn new(budget: Arc<Budget>, seq: u64) -> Self {
        budget.enter(seq);
        Charge {
            budget: Some(budget),
            bytes: 0,
            seq: Some(seq),
        }
    }

    /// Charges what lacks for `total` bytes in all, waiting up to `wait`
    /// for room; `false` when there was none (nothing more is charged).
    fn grow_to(&mut self, total: usize, wait: Duration) -> bool {
        let more = total.saturating_sub(self.bytes);
        if more > 0 {
            if let (Some(b), Some(seq)) = (&self.budget, self.seq) {
                if !b.charge(seq, more, wait) {
                    return false;
                }
            }
            self.bytes += more;
        }
        true
    }

    /// Gives back what was charged beyond `total` bytes.
    fn trim_to(&mut self, total: usize) {
        let unused = self.bytes.saturating_sub(total);
        if unused > 0 {
            self.bytes -= unused;
            if let Some(b) = &self.budget {
                b.release(unused);
            }
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.release(self.bytes);
            if let Some(seq) = self.seq {
                b.leave(seq);
            }
        }
    }
}

struct Job {
    /// Submission number: jobs start in this order.
    seq: u64,
    /// The event's number for the budget (every file of an event shares it).
    event: u64,
    uri: String,
    /// `storage/get/<key>`, normalised and percent-encoded.
    path: String,
    cancelled: AtomicBool,
    progress: Mutex<Progress>,
    result: Mutex<Slot>,
    done: Condvar,
}

/// Where a job's outcome waits for its ticket.
#[derive(Default)]
struct Slot {
    outcome: Option<FileOutcome>,
    /// The ticket is waiting: only then is it woken.
    waiting: bool,
}

struct Progress {
    attempts: u32,
    first_start: Option<Instant>,
    backoff: Backoff,
    /// Room in the budget the file needs before it is asked for: one read,
    /// or its whole base64 once a response announced its length.
    room: usize,
}

impl Job {
    fn finish(&self, outcome: FileOutcome) {
        let mut slot = self.result.lock().expect("not poisoned");
        slot.outcome = Some(outcome);
        let wake = slot.waiting;
        drop(slot);
        if wake {
            self.done.notify_all();
        }
    }
}

/// A file submitted to the fetch stage; [`Ticket::wait`] gives its outcome.
pub(crate) struct Ticket {
    job: Arc<Job>,
    budget: Option<Arc<Budget>>,
}

impl Ticket {
    /// A ticket already settled (a uri that is never requested).
    fn settled(uri: &str, outcome: FileOutcome) -> Self {
        let job = Arc::new(Job {
            seq: 0,
            event: 0,
            uri: uri.to_string(),
            path: String::new(),
            cancelled: AtomicBool::new(false),
            progress: Mutex::new(Progress {
                attempts: 0,
                first_start: None,
                backoff: Backoff::new(Duration::ZERO, Duration::ZERO),
                room: 0,
            }),
            result: Mutex::new(Slot {
                outcome: Some(outcome),
                waiting: false,
            }),
            done: Condvar::new(),
        });
        Ticket { job, budget: None }
    }

    /// The uri as written in the event.
    pub(crate) fn uri(&self) -> &str {
        &self.job.uri
    }

    /// What charges the line built with this file's content, when the file
    /// was requested at all.
    pub(crate) fn reserver(&self) -> Option<Reserver> {
        self.budget.as_ref().map(|budget| Reserver {
            budget: budget.clone(),
            seq: self.job.event,
        })
    }

    /// Whether the file is fetched or given up ([`Ticket::wait`] returns at
    /// once).
    pub(crate) fn settled_now(&self) -> bool {
        self.job
            .result
            .lock()
            .expect("not poisoned")
            .outcome
            .is_some()
    }

    /// Blocks until the file is fetched or given up.
    pub(crate) fn wait(self) -> FileOutcome {
        let mut slot = self.job.result.lock().expect("not poisoned");
        loop {
            if let Some(outcome) = slot.outcome.take() {
                return outcome;
            }
            slot.waiting = true;
            slot = self.job.done.wait(slot).expect("not poisoned");
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.job.cancelled.store(true, Ordering::Relaxed);
        if let Some(b) = &self.budget {
            b.leave(self.job.event);
        }
    }
}

#[derive(Default)]
struct Queue {
    ready: BTreeMap<u64, Arc<Job>>,
    delayed: Vec<(Instant, Arc<Job>)>,
    closed: bool,
    /// Threads started (at most `files.concurrency`): one more starts when
    /// a job is queued and no thread is free to take it, so an OpenCTI
    /// that answers at once keeps only a few.
    threads: usize,
    /// Threads waiting for a job, with no time limit.
    idle: usize,
    /// The one thread waiting for the next delayed job's time, if any:
    /// until when. The others wait to be woken, so that a job coming due
    /// wakes one thread, not all the idle ones.
    timer: Option<Instant>,
}

struct Inner {
    agent: ureq::Agent,
    base: String,
    auth: String,
    settings: FileSettings,
    queue: Mutex<Queue>,
    /// Wakes an idle thread.
    cv: Condvar,
    /// Wakes the timer thread ([`Queue::timer`]).
    timer_cv: Condvar,
    budget: Arc<Budget>,
    next_seq: AtomicU64,
    next_event: AtomicU64,
    metrics: Arc<Metrics>,
}

/// The fetch pool. Dropping it stops its threads once the files already
/// submitted are done.
pub(crate) struct Fetcher {
    inner: Arc<Inner>,
}

/// How long a fetch waits for room in the budget before giving its thread
/// back (it is tried again after [`BUDGET_RETRY`]).
const BUDGET_WAIT: Duration = Duration::from_millis(100);
const BUDGET_RETRY: Duration = Duration::from_millis(50);
/// Bytes read from the socket at a time (a multiple of 3: no padding inside).
const READ_CHUNK: usize = 15 * 1024;

impl Fetcher {
    /// Starts fetching from `base_url` (the configured `opencti.url`) with
    /// `agent`, sending `token`: one thread at first, up to
    /// `settings.concurrency` as files wait for one.
    pub(crate) fn start(
        agent: ureq::Agent,
        base_url: &str,
        token: &str,
        settings: FileSettings,
        metrics: Arc<Metrics>,
    ) -> Fetcher {
        let inner = Arc::new(Inner {
            agent,
            base: base_url.trim_end_matches('/').to_string(),
            auth: format!("Bearer {token}"),
            settings,
            queue: Mutex::new(Queue::default()),
            cv: Condvar::new(),
            timer_cv: Condvar::new(),
            budget: Arc::new(Budget {
                limit: settings.buffer_bytes,
                state: Mutex::new(BudgetState::default()),
            }),
            next_seq: AtomicU64::new(1),
            next_event: AtomicU64::new(1),
            metrics,
        });
        inner.queue.lock().expect("not poisoned").threads = 1;
        spawn_fetch_thread(&inner).expect("spawn fetch thread");
        Fetcher { inner }
    }

    /// Whether one more thread is to start, now that a job was queued in
    /// `q`: the jobs ready outnumber the threads free to take them, and
    /// fewer than `files.concurrency` run. Counts it as started.
    fn one_more_thread(&self, q: &mut Queue) -> bool {
        let free = q.idle + usize::from(q.timer.is_some());
        if q.ready.len() <= free || q.threads >= self.inner.settings.concurrency.max(1) {
            return false;
        }
        q.threads += 1;
        true
    }

    /// Starts the thread [`Fetcher::one_more_thread`] counted.
    fn start_thread(&self) {
        if let Err(e) = spawn_fetch_thread(&self.inner) {
            // The threads already started go on with the queue.
            self.inner.queue.lock().expect("not poisoned").threads -= 1;
            log::warn!("cannot start one more thread for attached files ({e})");
        }
    }

    /// Queues the attached files `uris` of one event (as written in it), in
    /// order; a uri that must not be requested gives a ticket already
    /// failed. The files of an event share one number in the budget: the
    /// event the batcher waits for gets all its files, whatever the room.
    pub(crate) fn submit_event(&self, uris: &[String]) -> Vec<Ticket> {
        let event = self.inner.next_event.fetch_add(1, Ordering::Relaxed);
        uris.iter().map(|uri| self.submit(uri, event)).collect()
    }

    fn submit(&self, uri: &str, event: u64) -> Ticket {
        let path = match storage_path(uri) {
            Ok(p) => crate::http::encode_path(&p),
            Err(reason) => return Ticket::settled(uri, FileOutcome::failed(reason)),
        };
        let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
        let job = Arc::new(Job {
            seq,
            event,
            uri: uri.to_string(),
            path,
            cancelled: AtomicBool::new(false),
            progress: Mutex::new(Progress {
                attempts: 0,
                first_start: None,
                backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(5)),
                room: b64_len(READ_CHUNK),
            }),
            result: Mutex::new(Slot::default()),
            done: Condvar::new(),
        });
        self.inner.budget.enter(event);
        let (wake, more) = {
            let mut q = self.inner.queue.lock().expect("not poisoned");
            q.ready.insert(seq, job.clone());
            (Wake::one_for_a_ready_job(&q), self.one_more_thread(&mut q))
        };
        self.inner.wake(wake);
        if more {
            self.start_thread();
        }
        Ticket {
            job,
            budget: Some(self.inner.budget.clone()),
        }
    }
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        self.inner.queue.lock().expect("not poisoned").closed = true;
        self.inner.cv.notify_all();
        self.inner.timer_cv.notify_all();
    }
}

fn spawn_fetch_thread(inner: &Arc<Inner>) -> std::io::Result<()> {
    let inner = inner.clone();
    std::thread::Builder::new()
        .name("fetch".into())
        .stack_size(512 << 10)
        .spawn(move || inner.run())
        .map(drop)
}

/// Which waiting fetch thread a change wakes.
enum Wake {
    Nobody,
    /// One of those waiting with no time limit.
    Idle,
    /// The one waiting for the next delayed job's time.
    Timer,
}

impl Wake {
    /// For a job made ready: an idle thread, else the timer, which is free
    /// to take it too.
    fn one_for_a_ready_job(q: &Queue) -> Wake {
        if q.idle > 0 {
            Wake::Idle
        } else if q.timer.is_some() {
            Wake::Timer
        } else {
            Wake::Nobody
        }
    }
}

/// What one attempt came to.
enum Attempt {
    Done(FileOutcome),
    /// Worth another attempt after a backoff.
    Retry(String),
    /// No room in the budget: try again soon, as if not started.
    Requeue,
}

impl Inner {
    fn run(&self) {
        // One read buffer per thread, for every file it fetches.
        let mut buf = vec![0u8; READ_CHUNK + 2];
        while let Some(job) = self.next_job() {
            if job.cancelled.load(Ordering::Relaxed) {
                continue;
            }
            match self.attempt(&job, &mut buf) {
                Attempt::Done(outcome) => job.finish(outcome),
                Attempt::Requeue => {
                    // Not an attempt: waiting for room in the budget must
                    // not use up `files.retries`, nor the deadline.
                    let mut p = job.progress.lock().expect("not poisoned");
                    p.first_start = None;
                    p.attempts -= 1;
                    drop(p);
                    self.delay(job, BUDGET_RETRY);
                }
                Attempt::Retry(reason) => {
                    let (attempts, left, delay) = {
                        let mut p = job.progress.lock().expect("not poisoned");
                        let elapsed = p.first_start.map(|t| t.elapsed()).unwrap_or_default();
                        let delay = p.backoff.next_delay();
                        (
                            p.attempts,
                            self.settings.deadline.saturating_sub(elapsed),
                            delay,
                        )
                    };
                    if attempts >= self.settings.retries || left <= delay {
                        job.finish(FileOutcome::failed(format!(
                            "{reason} (gave up after {attempts} attempts)"
                        )));
                    } else {
                        self.metrics.inc_retry(RetryCause::FileFetch);
                        log::debug!(
                            "attached file `{}`: {reason}; trying again in {:.1} s",
                            job.uri,
                            delay.as_secs_f64()
                        );
                        self.delay(job, delay);
                    }
                }
            }
        }
    }

    fn delay(&self, job: Arc<Job>, d: Duration) {
        let due = Instant::now() + d;
        let wake = {
            let mut q = self.queue.lock().expect("not poisoned");
            q.delayed.push((due, job));
            match q.timer {
                // The timer sleeps past this job's time.
                Some(until) if due < until => Wake::Timer,
                Some(_) => Wake::Nobody,
                // An idle thread becomes the timer.
                None if q.idle > 0 => Wake::Idle,
                None => Wake::Nobody,
            }
        };
        self.wake(wake);
    }

    /// A wake-up is a system call even with nobody waiting: only when due.
    fn wake(&self, wake: Wake) {
        match wake {
            Wake::Nobody => {}
            Wake::Idle => self.cv.notify_one(),
            Wake::Timer => self.timer_cv.notify_one(),
        }
    }

    /// The oldest job ready to start; `None` once the pool is closed.
    fn next_job(&self) -> Option<Arc<Job>> {
        let mut q = self.queue.lock().expect("not poisoned");
        loop {
            // Once closed, the jobs already submitted are still done: a
            // worker may be waiting for them.
            if q.closed && q.ready.is_empty() && q.delayed.is_empty() {
                return None;
            }
            let now = Instant::now();
            let mut i = 0;
            while i < q.delayed.len() {
                if q.delayed[i].0 <= now {
                    let (_, job) = q.delayed.swap_remove(i);
                    q.ready.insert(job.seq, job);
                } else {
                    i += 1;
                }
            }
            if let Some((_, job)) = q.ready.pop_first() {
                // What is left for others: one more thread goes on (and
                // wakes the next, or becomes the timer).
                let wake = if !q.ready.is_empty() {
                    Wake::one_for_a_ready_job(&q)
                } else if !q.delayed.is_empty() && q.timer.is_none() && q.idle > 0 {
                    Wake::Idle
                } else {
                    Wake::Nobody
                };
                self.wake(wake);
                return Some(job);
            }
            let next_due = q.delayed.iter().map(|(t, _)| *t).min();
            match next_due {
                Some(due) if q.timer.is_none() => {
                    q.timer = Some(due);
                    let wait = due.saturating_duration_since(now);
                    q = self
                        .timer_cv
                        .wait_timeout(q, wait.max(Duration::from_millis(1)))
                        .expect("not poisoned")
                        .0;
                    q.timer = None;
                }
                _ => {
                    q.idle += 1;
                    // The time limit is only a safety net.
                    q = self
                        .cv
                        .wait_timeout(q, Duration::from_secs(1))
                        .expect("not poisoned")
                        .0;
                    q.idle -= 1;
                }
            }
        }
    }

    fn attempt(&self, job: &Job, buf: &mut [u8]) -> Attempt {
        let (started, room) = {
            let mut p = job.progress.lock().expect("not poisoned");
            p.attempts += 1;
            (*p.first_start.get_or_insert_with(Instant::now), p.room)
        };
        let deadline = started + self.settings.deadline;
        if Instant::now() >= deadline {
            return Attempt::Done(FileOutcome::failed(self.past_deadline()));
        }
        // Its room is taken before it is asked for (one read, while its
        // length is not known): a file received with no room for it would
        // be dropped and asked for again, as often as the budget stays full.
        let mut content = FileContent {
            base64: Vec::new(),
            size: 0,
            _charge: Charge::new(self.budget.clone(), job.event),
        };
        if !content._charge.grow_to(room, BUDGET_WAIT) {
            return Attempt::Requeue;
        }
        let url = format!("{}/{}", self.base, job.path);
        let resp = match self.request(&url, deadline) {
            Ok(r) => r,
            Err(attempt) => return attempt,
        };
        let announced: Option<u64> = resp
            .header("Content-Length")
            .and_then(|v| v.trim().parse().ok());
        let cap = self.settings.max_bytes;
        content.base64.reserve_exact(b64_len(
            announced.unwrap_or(0).min(cap.saturating_add(3)) as usize
        ));
        // A file of announced length takes its whole room at once or none:
        // files charged a read at a time could fill the budget together,
        // each with a part, and all be dropped to be asked for again.
        if let Some(len) = announced {
            let whole = b64_len(len.min(cap) as usize);
            if !content._charge.grow_to(whole, BUDGET_WAIT) {
                job.progress.lock().expect("not poisoned").room = whole;
                return Attempt::Requeue;
            }
        }
        let (content, carry, over) =
            match self.receive(job, resp.into_reader(), content, buf, deadline, &url) {
                Ok(received) => received,
                Err(attempt) => return attempt,
            };
        self.received(content, &buf[..carry], over, announced, &url)
    }

    /// Why a file not received by `files.deadline_sec` failed.
    fn past_deadline(&self) -> String {
        format!(
            "not received within `files.deadline_sec` ({} s)",
            self.settings.deadline.as_secs()
        )
    }

    /// Sends the GET for `url`; a status outside 2xx or a transport error is
    /// the attempt's end (`Err`), retried only where it may pass.
    fn request(&self, url: &str, deadline: Instant) -> Result<ureq::Response, Attempt> {
        // No per-request timeout: ureq would then set the socket's timeouts
        // before every buffered read (a dozen system calls per file). The
        // agent's read timeout (the deadline, at most 30 s) bounds a silent
        // server, and the deadline is checked after every read.
        match self.agent.get(url).set("Authorization", &self.auth).call() {
            Ok(r) if (200..300).contains(&r.status()) => Ok(r),
            Ok(r) => Err(Attempt::Done(FileOutcome::failed(format!(
                "`{url}` answered HTTP {} (redirects are not followed)",
                r.status()
            )))),
            Err(ureq::Error::Status(code, _)) => {
                let reason = format!("`{url}` answered HTTP {code}");
                Err(if code >= 500 || code == 408 || code == 429 {
                    Attempt::Retry(reason)
                } else {
                    Attempt::Done(FileOutcome::failed(reason))
                })
            }
            Err(ureq::Error::Transport(t)) => {
                if Instant::now() >= deadline {
                    return Err(Attempt::Done(FileOutcome::failed(self.past_deadline())));
                }
                Err(Attempt::Retry(format!(
                    "`{url}`: {}",
                    crate::http::transport_message(&t)
                )))
            }
        }
    }

    /// Reads the body into `content` (base64, charged to the budget) up to
    /// one byte past `files.max_bytes`; returns it with the count of bytes
    /// left unencoded at the start of `buf` and whether the cap was passed.
    fn receive(
        &self,
        job: &Job,
        mut reader: impl Read,
        mut content: FileContent,
        buf: &mut [u8],
        deadline: Instant,
        url: &str,
    ) -> Result<(FileContent, usize, bool), Attempt> {
        let cap = self.settings.max_bytes;
        let mut carry = 0usize;
        let mut over = false;
        loop {
            if job.cancelled.load(Ordering::Relaxed) {
                return Err(Attempt::Done(FileOutcome::failed("no longer needed")));
            }
            // One byte past the cap tells a file over it from one at it.
            let room = (cap + 1).saturating_sub(content.size + carry as u64);
            let want = (READ_CHUNK as u64).min(room) as usize;
            let n = match reader.read(&mut buf[carry..carry + want]) {
                Ok(0) => break,
                Ok(n) if content.size + (carry + n) as u64 > cap => {
                    // Over the cap: keep exactly the cap's worth.
                    over = true;
                    (cap - content.size) as usize - carry
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if Instant::now() >= deadline {
                        return Err(self.late(content, &buf[..carry]));
                    }
                    return Err(Attempt::Retry(format!("reading `{url}`: {e}")));
                }
            };
            let have = carry + n;
            let whole = have / 3 * 3;
            let add = b64_len(whole);
            if add > 0 {
                let total = content.base64.len() + add;
                if !content._charge.grow_to(total, BUDGET_WAIT) {
                    // Of unknown length: next time, wait for this much.
                    let mut p = job.progress.lock().expect("not poisoned");
                    p.room = p.room.max(total);
                    return Err(Attempt::Requeue);
                }
                encode_into(&buf[..whole], &mut content.base64);
                content.size += whole as u64;
            }
            buf.copy_within(whole..have, 0);
            carry = have - whole;
            if over {
                break;
            }
            if Instant::now() >= deadline {
                return Err(self.late(content, &buf[..carry]));
            }
        }
        Ok((content, carry, over))
    }

    /// The end of an attempt past the deadline: failed, keeping what was
    /// received (`content` and the unencoded `tail`).
    fn late(&self, content: FileContent, tail: &[u8]) -> Attempt {
        let received = self.keep(content, tail);
        Attempt::Done(FileOutcome::Failed {
            reason: format!(
                "{} ({} bytes received)",
                self.past_deadline(),
                received.as_ref().map(|c| c.size).unwrap_or(0)
            ),
            kept: received,
        })
    }

    /// The end of an attempt whose body was read: over the cap (first bytes
    /// kept), short of the announced length (retried), or fetched.
    fn received(
        &self,
        content: FileContent,
        tail: &[u8],
        over: bool,
        announced: Option<u64>,
        url: &str,
    ) -> Attempt {
        let cap = self.settings.max_bytes;
        if over {
            let received = self.keep(content, tail);
            let reason = match announced {
                Some(len) => format!(
                    "{len} bytes is over `files.max_bytes` ({cap}); its first {cap} bytes are kept"
                ),
                None => format!("over `files.max_bytes` ({cap}); its first {cap} bytes are kept"),
            };
            return Attempt::Done(FileOutcome::Failed {
                reason,
                kept: received,
            });
        }
        if let Some(len) = announced {
            if len != content.size + tail.len() as u64 {
                return Attempt::Retry(format!(
                    "`{url}` announced {len} bytes and sent {}",
                    content.size + tail.len() as u64
                ));
            }
        }
        let content = self.keep(content, tail).unwrap_or(FileContent {
            base64: Vec::new(),
            size: 0,
            _charge: Charge::none(),
        });
        Attempt::Done(FileOutcome::Fetched(content))
    }

    /// Encodes the last bytes (with padding) and returns the content, or
    /// `None` when nothing was received.
    fn keep(&self, mut content: FileContent, tail: &[u8]) -> Option<FileContent> {
        if !tail.is_empty() {
            let add = b64_len(tail.len());
            let more = (content.base64.len() + add).saturating_sub(content._charge.bytes);
            self.budget.state.lock().expect("not poisoned").used += more;
            content._charge.bytes += more;
            encode_into(tail, &mut content.base64);
            content.size += tail.len() as u64;
        }
        // Room taken for more than came (a shorter body) is given back.
        content._charge.trim_to(content.base64.len());
        (content.size > 0).then_some(content)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file server answering every request after `delay`, on kept-alive
    /// connections; returns its address.
    fn slow_server(delay: Duration) -> String {
        server(move |_, _| {
            std::thread::sleep(delay);
            (200, "abc")
        })
        .0
    }

    /// Requests received so far, by path.
    type Seen = Arc<Mutex<std::collections::HashMap<String, u32>>>;

    /// A file server on kept-alive connections: `answer(path, n)` gives the
    /// status and body of the `n`th request (from 1) for `path`. Returns its
    /// address and the requests it received.
    fn server(
        answer: impl Fn(&str, u32) -> (u16, &'static str) + Send + Sync + 'static,
    ) -> (String, Seen) {
        use std::collections::HashMap;
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = Arc::new(answer);
        let seen: Seen = Arc::new(Mutex::new(HashMap::new()));
        let received = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (answer, seen) = (answer.clone(), seen.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut conn = conn;
                    loop {
                        let mut path = String::new();
                        let mut line = String::new();
                        loop {
                            line.clear();
                            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                                return;
                            }
                            if path.is_empty() {
                                path = line.split(' ').nth(1).unwrap_or("").to_string();
                            }
                            if line == "\r\n" {
                                break;
                            }
                        }
                        let n = {
                            let mut seen = seen.lock().unwrap();
                            let n = seen.entry(path.clone()).or_default();
                            *n += 1;
                            *n
                        };
                        let (status, body) = answer(&path, n);
                        let head = format!(
                            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        );
                        if conn.write_all(head.as_bytes()).is_err()
                            || conn.write_all(body.as_bytes()).is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        (format!("http://{addr}"), received)
    }

    fn threads(f: &Fetcher) -> usize {
        f.inner.queue.lock().unwrap().threads
    }

    #[test]
    fn threads_start_as_files_wait_for_one_up_to_the_concurrency() {
        let settings = FileSettings {
            concurrency: 4,
            ..FileSettings::default()
        };
        let start = |delay| {
            Fetcher::start(
                ureq::AgentBuilder::new().build(),
                &slow_server(delay),
                "t",
                settings,
                Arc::new(Metrics::default()),
            )
        };
        // Answered at once, one file at a time (the thread back to waiting
        // before the next): one thread does.
        let quick = start(Duration::ZERO);
        for n in 0..5 {
            std::thread::sleep(Duration::from_millis(50));
            let ticket = quick
                .submit_event(&[format!("/storage/get/f{n}")])
                .pop()
                .unwrap();
            assert!(matches!(ticket.wait(), FileOutcome::Fetched(c) if c.base64() == b"YWJj"));
        }
        assert_eq!(threads(&quick), 1);
        // Slow answers, many files at once: up to the concurrency, no more.
        let slow = start(Duration::from_millis(100));
        let uris: Vec<String> = (0..12).map(|n| format!("/storage/get/s{n}")).collect();
        let tickets = slow.submit_event(&uris);
        assert_eq!(threads(&slow), 4);
        for t in tickets {
            assert!(matches!(t.wait(), FileOutcome::Fetched(_)));
        }
        assert_eq!(threads(&slow), 4);
    }

    #[test]
    fn storage_paths_are_normalised() {
        for (uri, want) in [
            (
                "/storage/get/import/Report/x/a.pdf",
                "storage/get/import/Report/x/a.pdf",
            ),
            (
                "storage/get/import//Report/./x/a b.pdf",
                "storage/get/import/Report/x/a b.pdf",
            ),
            ("http://elsewhere/storage/get/k", "storage/get/k"),
            (
                "/storage/get/import/x/rapport%20été.pdf",
                "storage/get/import/x/rapport%20été.pdf",
            ),
        ] {
            assert_eq!(storage_path(uri).as_deref(), Ok(want), "{uri}");
        }
    }

    #[test]
    fn keys_that_escape_storage_get_are_refused() {
        for uri in [
            "/storage/get/../../../evil/collect",
            "/storage/get/import/../../evil",
            "/storage/get/%2e%2e/%2E%2E/evil",
            "/storage/get/..%2f..%2fevil",
            "/storage/get/import%5c..%5cevil",
            "/storage/get/import\\..\\evil",
            "/storage/get/%252e%252e/evil",
            "/storage/get/a/%00/b",
            "/storage/get/",
            "/storage/get//./",
            "unknown",
            "/elsewhere/file",
        ] {
            assert!(storage_path(uri).is_err(), "{uri} was accepted");
        }
    }

    #[test]
    fn the_oldest_file_is_always_granted_and_others_wait_for_room() {
        let budget = Budget {
            limit: 100,
            state: Mutex::new(BudgetState::default()),
        };
        budget.enter(1);
        budget.enter(2);
        assert!(budget.charge(2, 80, Duration::ZERO));
        assert!(!budget.charge(2, 80, Duration::ZERO), "over the limit");
        assert!(budget.charge(1, 500, Duration::ZERO), "the oldest passes");
        budget.release(580);
        budget.leave(1);
        assert!(budget.charge(2, 500, Duration::ZERO), "now the oldest");
    }

    #[test]
    fn a_waiting_charge_is_woken_by_the_room_or_the_turn_it_waits_for() {
        let budget = Arc::new(Budget {
            limit: 100,
            state: Mutex::new(BudgetState::default()),
        });
        budget.enter(1);
        budget.enter(2);
        budget.enter(3);
        assert!(budget.charge(1, 100, Duration::ZERO));
        // Long waits: a wake-up that is lost shows as a wait to the end.
        let long = Duration::from_secs(60);
        let waiter = |seq, n| {
            let b = budget.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                (b.charge(seq, n, long), t.elapsed())
            })
        };
        let wait_until_waiting = |count| {
            while budget.state.lock().unwrap().waiters.len() < count {
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        // Event 3 waits for 50 bytes of room, event 2 for 500 (it can only
        // pass as the oldest).
        let small = waiter(3, 50);
        let large = waiter(2, 500);
        wait_until_waiting(2);
        budget.release(60);
        let (passed, waited) = small.join().unwrap();
        assert!(passed && waited < Duration::from_secs(10), "{waited:?}");
        // Room for 50 is no turn for 500: still waiting.
        wait_until_waiting(1);
        budget.leave(1);
        let (passed, waited) = large.join().unwrap();
        assert!(passed && waited < Duration::from_secs(10), "{waited:?}");
        assert!(budget.state.lock().unwrap().waiters.is_empty());
    }

    #[test]
    fn an_event_stays_the_oldest_until_what_was_charged_for_it_is_batched() {
        let budget = Arc::new(Budget {
            limit: 100,
            state: Mutex::new(BudgetState::default()),
        });
        // Event 1's ticket, then its content and its line: the ticket goes
        // once the worker has the content, the charges stay.
        budget.enter(1);
        budget.enter(2);
        let content = Charge::new(budget.clone(), 1);
        let line = Reserver {
            budget: budget.clone(),
            seq: 1,
        }
        .reserve(300);
        budget.leave(1);
        drop(content);
        assert!(
            !budget.charge(2, 10, Duration::ZERO),
            "event 2 passed while event 1's line, over the budget, is not batched"
        );
        let mut line = line;
        line.batched();
        assert!(
            budget.charge(2, 10, Duration::ZERO),
            "event 2 is the oldest once event 1's line is batched"
        );
        budget.release(10);
        drop(line);
        assert_eq!(budget.state.lock().unwrap().used, 0);
        budget.leave(2);
        assert!(budget.state.lock().unwrap().outstanding.is_empty());
    }

    #[test]
    fn a_file_waits_for_room_in_the_budget_without_requests_or_retries() {
        // One retry allowed; a budget that one file fills.
        let settings = FileSettings {
            concurrency: 2,
            retries: 2,
            buffer_bytes: 10,
            ..FileSettings::default()
        };
        // `b` is refused with a 500 at its first request.
        let (base, seen) = server(|path, n| match (path, n) {
            ("/storage/get/b", 1) => (500, "busy"),
            _ => (200, "0123456789012345678901234567890123456789"),
        });
        let f = Fetcher::start(
            ureq::AgentBuilder::new().build(),
            &base,
            "t",
            settings,
            Arc::new(Metrics::default()),
        );
        // Event 1's file, the oldest, passes and fills the budget while
        // its ticket is not taken.
        let a = f
            .submit_event(&["/storage/get/a".to_string()])
            .pop()
            .unwrap();
        while !a.settled_now() {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Event 2's file waits for room, again and again, asking nothing.
        let b = f
            .submit_event(&["/storage/get/b".to_string()])
            .pop()
            .unwrap();
        std::thread::sleep(Duration::from_millis(600));
        assert!(!b.settled_now(), "given up while waiting for room");
        assert_eq!(seen.lock().unwrap().get("/storage/get/b"), None);
        // Room: its 500 is its first attempt, and its one retry passes.
        drop(a.wait());
        match b.wait() {
            FileOutcome::Fetched(c) => assert_eq!(c.size(), 40),
            FileOutcome::Failed { reason, .. } => {
                panic!("given up after waiting for room: {reason}")
            }
        }
        assert_eq!(seen.lock().unwrap()["/storage/get/b"], 2);
    }
}
