//! The commit protocol: the only writer of the state file.
//!
//! For each batch: keep its dead letters, then (if it has lines) record the
//! pending file (number, key, cursor) in the state, store the object, and
//! commit (file count, cursor, pending cleared). At start-up a pending file
//! left by a killed run is settled by asking the destination whether the
//! object exists: stored → committed; absent → forgotten, and its number is
//! used again (the importer never saw it). So after a kill -9 at any
//! instant, no event is lost (the cursor only covers stored events) and no
//! file number is skipped or reused. Key stamps never go backwards.
//!
//! Transient storage errors are retried with capped backoff for as long as
//! it takes, with the cursor frozen; permanent ones stop the run.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use sha2::{Digest, Sha256};

use crate::batch::{Batch, DeadLetter};
use crate::clock::now_ms;
use crate::dest::naming::{dead_letter_key, key_ms, next_key_ms, object_key};
use crate::dest::{DestError, Destination, Destinations, ObjectMeta};
use crate::id::EventId;
use crate::metrics::{Metrics, RetryCause};
use crate::policy::Reason;
use crate::retry::{self, Failure, Verdict};
use crate::state::{self, Pending, State};

/// How long to wait before looking again for a pending file that was not
/// found: an upload cut by a kill can still complete on the server.
const SETTLE_GRACE: Duration = Duration::from_secs(2);

/// Stores batches and saves the state.
pub struct Committer {
    state_path: PathBuf,
    state: State,
    folder: String,
    dest: Box<dyn Destination>,
    dead: Box<dyn Destination>,
    /// Where the importer moves files it has read, checked when settling.
    done: Option<Box<dyn Destination>>,
    stop: Arc<AtomicBool>,
    retry_max: Duration,
    fault: Option<(String, u64)>,
    /// The key of a pending file that was not found: used again.
    reuse_key: Option<String>,
    gaps: Arc<std::sync::Mutex<Vec<String>>>,
    metrics: Arc<Metrics>,
}

impl Committer {
    /// A committer over `state`, which is saved to `state_path`, storing
    /// into `dests`; `stop` ends retry waits.
    pub fn new(
        state_path: PathBuf,
        state: State,
        folder: String,
        dests: Destinations,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Committer {
            state_path,
            state,
            folder,
            dest: dests.files,
            dead: dests.dead,
            done: dests.done,
            stop,
            retry_max: Duration::from_secs(30),
            fault: fault_point(),
            reuse_key: None,
            gaps: Arc::default(),
            metrics: Arc::default(),
        }
    }

    /// Where the reader reports gaps an operator accepted; they are recorded
    /// in the state with the next save.
    pub fn accepted_gaps(&self) -> Arc<std::sync::Mutex<Vec<String>>> {
        self.gaps.clone()
    }

    fn take_gaps(&mut self) {
        let mut gaps = self.gaps.lock().expect("not poisoned");
        self.state.accepted_gaps.append(&mut gaps);
    }

    /// Counts what is stored into `metrics`.
    pub fn set_metrics(&mut self, metrics: Arc<Metrics>) {
        self.metrics = metrics;
    }

    /// The state as last saved.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Changes the state outside a batch (run summary) and saves it.
    pub fn update_state(&mut self, f: impl FnOnce(&mut State)) -> Result<()> {
        self.take_gaps();
        f(&mut self.state);
        state::save(&self.state_path, &self.state).map_err(Into::into)
    }

    /// Makes the destination ready and settles a pending upload. Returns
    /// the cursor the first batch must end at when the pending file was not
    /// found (see the private `settle`).
    pub fn start(&mut self) -> Result<Option<EventId>> {
        let what = self.dest.describe();
        retry_loop(
            &format!("prepare {what}"),
            &self.stop,
            self.retry_max,
            &self.metrics,
            || self.dest.prepare(),
        )?;
        let cut = self.settle()?;
        self.check_no_file_ahead()?;
        Ok(cut)
    }

    /// Refuses to start when the folder already holds a file numbered past
    /// this state's count: another state writes to the same folder (a
    /// backfill pointed at the live export), or the state was reset while its
    /// files remain. Going on would give the importer two files with the
    /// same number.
    fn check_no_file_ahead(&mut self) -> Result<()> {
        let prefix = format!("{}/", self.folder);
        let what = self.dest.describe();
        let keys = retry_loop(
            &format!("list {what}"),
            &self.stop,
            self.retry_max,
            &self.metrics,
            || self.dest.list(&prefix),
        )?;
        let count = self.state.file_count;
        let ahead = keys
            .iter()
            .filter(|k| {
                k[prefix.len()..].starts_with("stream_") && !k[prefix.len()..].contains('/')
            })
            .filter(|k| self.reuse_key.as_deref() != Some(k.as_str()))
            .filter_map(|k| crate::dest::naming::file_number(k).map(|n| (n, k)))
            .filter(|(n, _)| *n > count)
            .max();
        if let Some((n, key)) = ahead {
            return Err(anyhow!(
                "{what} already holds `{key}` (file {n}) but the state `{}` counts {count} stored files: another run or state writes to the same folder, or the state was reset while its files remain, and the importer would see two files numbered {}. Give a backfill its own `minio.folder` (or output directory); if those files are this export's, run `opencti-stream-exporter state reset --file-count {n}`",
                self.state_path.display(),
                count + 1
            ));
        }
        Ok(())
    }

    /// Settles the upload a stopped run left pending. Found (in the bucket,
    /// or in the importer's done bucket): committed. Not found: an upload cut
    /// by a kill may still land on the server a moment later, so the check is
    /// repeated after a grace period, and then the file is uploaded again
    /// under the same key and number, ending at the same cursor: whichever
    /// copy lands last holds the same events, and no number is used twice.
    fn settle(&mut self) -> Result<Option<EventId>> {
        let Some(p) = self.state.pending.clone() else {
            return Ok(None);
        };
        let key = p.key.clone();
        let mut stored = false;
        for attempt in 0..3 {
            if attempt > 0 {
                std::thread::sleep(SETTLE_GRACE);
            }
            stored = retry_loop(
                &format!("look for `{key}`"),
                &self.stop,
                self.retry_max,
                &self.metrics,
                || self.dest.exists(&key),
            )?;
            if !stored {
                if let Some(done) = self.done.as_mut() {
                    stored = retry_loop(
                        &format!("look for `{key}` in the done bucket"),
                        &self.stop,
                        self.retry_max,
                        &self.metrics,
                        || done.exists(&key),
                    )?;
                }
            }
            if stored {
                break;
            }
        }
        let cut = if stored {
            log::info!(
                "file {} (`{key}`) was stored before the last run stopped: committing it",
                p.file_number
            );
            self.commit(&p);
            None
        } else {
            log::info!(
                "file {} (`{key}`) was not stored before the last run stopped: its events are exported again under the same key",
                p.file_number
            );
            self.reuse_key = Some(key);
            p.cursor
        };
        state::save(&self.state_path, &self.state)?;
        Ok(cut)
    }

    fn commit(&mut self, p: &Pending) {
        self.state.file_count = p.file_number;
        self.state.last_key_ms = self.state.last_key_ms.max(key_ms(&p.key).unwrap_or(0));
        if let Some(c) = p.cursor {
            self.state.advance_cursor(c);
        }
        self.state.pending = None;
    }

    /// Stores one batch and commits it. Returns the key written, if any, and
    /// the batch's body buffer for reuse.
    pub fn store(&mut self, batch: Batch) -> Result<(Option<String>, Vec<u8>)> {
        self.take_gaps();
        for letter in &batch.dead {
            self.keep_dead_letter(letter)?;
        }
        for reason in Reason::ALL {
            let n = batch.held[reason.index()];
            if n > 0 {
                *self
                    .state
                    .held_by_policy
                    .entry(reason.as_str().to_string())
                    .or_default() += n;
            }
        }
        if batch.events == 0 {
            if let Some(c) = batch.cursor {
                self.state.advance_cursor(c);
            }
            state::save(&self.state_path, &self.state)?;
            self.record_commit();
            return Ok((None, batch.body));
        }
        let number = self.state.file_count + 1;
        let (key, ms) = match self.reuse_key.take() {
            Some(k) => {
                let ms = key_ms(&k).unwrap_or(self.state.last_key_ms);
                (k, ms)
            }
            None => {
                let ms = next_key_ms(now_ms(), self.state.last_key_ms);
                (object_key(&self.folder, ms, number), ms)
            }
        };
        let pending = Pending {
            file_number: number,
            key: key.clone(),
            cursor: batch.cursor,
            events: batch.events,
            bytes: batch.body.len() as u64,
        };
        self.state.pending = Some(pending.clone());
        self.state.last_key_ms = self.state.last_key_ms.max(ms);
        state::save(&self.state_path, &self.state).context("saving the pending upload")?;

        let meta = ObjectMeta {
            events: batch.events,
            first_id: batch.first_id.map(|i| i.to_string()).unwrap_or_default(),
            last_id: batch.last_id.map(|i| i.to_string()).unwrap_or_default(),
            sha256_hex: if self.dest.stores_checksum() {
                crate::text::hex(&Sha256::digest(&batch.body))
            } else {
                String::new()
            },
        };
        let body = batch.body;
        self.crash_if("before-upload", number);
        let upload_started = std::time::Instant::now();
        retry_loop(
            &format!("store `{key}`"),
            &self.stop,
            self.retry_max,
            &self.metrics,
            || self.dest.put(&key, &body, &meta),
        )?;
        self.crash_if("after-upload", number);

        let upload_time = upload_started.elapsed();
        self.commit(&pending);
        state::save(&self.state_path, &self.state).context("saving the state after an upload")?;
        self.metrics
            .record_file(batch.events, body.len() as u64, upload_time);
        self.record_commit();
        log::info!(
            "stored file {number} `{key}`: {} events, {} bytes, up to `{}`",
            batch.events,
            body.len(),
            meta.last_id
        );
        Ok((Some(key), body))
    }

    fn record_commit(&self) {
        let cursor_ms = self
            .state
            .cursor()
            .ok()
            .flatten()
            .map(|c| c.ms)
            .unwrap_or(0);
        self.metrics.record_commit(cursor_ms, now_ms());
        let until = self
            .state
            .recover_until
            .as_deref()
            .and_then(|d| crate::id::parse_iso_ms(d).ok())
            .unwrap_or(0);
        self.metrics.set_recover_until_ms(until);
    }

    /// Dies on the spot, as a kill -9 would, at a chosen point of the
    /// protocol: lets the crash tests hit the narrow windows on purpose.
    fn crash_if(&self, point: &str, number: u64) {
        if self
            .fault
            .as_ref()
            .is_some_and(|(p, n)| p == point && *n == number)
        {
            eprintln!("fault injection: dying at {point} of file {number}");
            std::process::abort();
        }
    }

    fn keep_dead_letter(&mut self, letter: &DeadLetter) -> Result<()> {
        let key = dead_letter_key(
            &self.folder,
            letter.id.as_deref().unwrap_or("no-id"),
            now_ms(),
            self.state.dead_letters,
        );
        let record = dead_letter_record(letter);
        let meta = ObjectMeta {
            events: 1,
            first_id: letter.id.clone().unwrap_or_default(),
            last_id: letter.id.clone().unwrap_or_default(),
            sha256_hex: crate::text::hex(&Sha256::digest(&record)),
        };
        let what = format!("keep dead letter `{key}` in {}", self.dead.describe());
        retry_loop(&what, &self.stop, self.retry_max, &self.metrics, || {
            self.dead.put(&key, &record, &meta)
        })?;
        log::warn!(
            "event `{}` ({}) kept aside as a dead letter `{key}`: {}",
            letter.id.as_deref().unwrap_or("without id"),
            letter.event,
            letter.reason
        );
        self.state.dead_letters += 1;
        self.metrics.inc_dead_letter();
        Ok(())
    }
}

/// `OPENCTI_STREAM_EXPORTER_FAULT=<point>:<file number>` (testing aid):
/// `before-upload` (pending saved, nothing stored) or `after-upload`
/// (object stored, state not yet committed).
fn fault_point() -> Option<(String, u64)> {
    let v = std::env::var("OPENCTI_STREAM_EXPORTER_FAULT").ok()?;
    let (p, n) = v.split_once(':')?;
    Some((p.to_string(), n.parse().ok()?))
}

/// Retries a storage call as [`retry::run`] does, for as long as it takes
/// (or until the run is stopped); a permanent error stops the run. Every
/// failed call counts as a write error.
fn retry_loop<T>(
    what: &str,
    stop: &AtomicBool,
    max: Duration,
    metrics: &Metrics,
    mut f: impl FnMut() -> Result<T, DestError>,
) -> Result<T> {
    let policy = retry::Policy {
        first: Duration::from_millis(500),
        max,
        attempts: None,
    };
    let attempt = || {
        f().map_err(|e| {
            metrics.inc_write_error();
            match e {
                DestError::Transient(m) => Verdict::Retry(m),
                DestError::Permanent(m) => Verdict::GiveUp(m),
            }
        })
    };
    let on_retry = |m: &String, n: u32, wait: Duration| {
        metrics.inc_retry(RetryCause::Storage);
        log::warn!(
            "cannot {what} (attempt {n}): {m}; retrying in {:.1} s",
            wait.as_secs_f64()
        );
    };
    retry::run(policy, stop, attempt, on_retry).map_err(|f| match f {
        Failure::GaveUp(m) | Failure::Exhausted(m) => anyhow!("cannot {what}: {m}"),
        Failure::Stopped(m) => anyhow!("stopped while trying to {what}: {m}"),
    })
}

/// The JSON document kept for a dead letter: raw bytes as text when they
/// are UTF-8, else base64, with the reason.
pub fn dead_letter_record(letter: &DeadLetter) -> Vec<u8> {
    use base64::Engine as _;
    #[derive(serde::Serialize)]
    struct Record<'a> {
        id: &'a Option<String>,
        event: &'a str,
        reason: &'a str,
        size: usize,
        truncated: bool,
        received_at: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        data_base64: Option<std::borrow::Cow<'a, str>>,
    }
    let text = if letter.base64 {
        None
    } else {
        std::str::from_utf8(&letter.raw).ok()
    };
    let data_base64 = match (text, letter.base64) {
        (Some(_), _) => None,
        // Already base64 (an attached file's bytes): written as is.
        (None, true) => Some(String::from_utf8_lossy(&letter.raw)),
        (None, false) => Some(std::borrow::Cow::Owned(
            base64::engine::general_purpose::STANDARD.encode(&letter.raw),
        )),
    };
    let received = if letter.base64 {
        // base64 of n bytes is 4 * ceil(n / 3) long.
        letter.raw.len() / 4 * 3
    } else {
        letter.raw.len()
    };
    let record = Record {
        id: &letter.id,
        event: &letter.event,
        reason: &letter.reason,
        size: letter.size,
        truncated: received < letter.size,
        received_at: crate::id::ms_to_iso(now_ms()),
        data: text,
        data_base64,
    };
    let mut out = Vec::with_capacity(letter.raw.len() * 11 / 10 + 256);
    serde_json::to_writer(&mut out, &record).expect("serialises");
    out.push(b'\n');
    out
}
