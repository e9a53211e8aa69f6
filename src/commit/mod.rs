//! The commit protocol: the only writer of the state file.
//!
//! For each batch: keep its dead letters, then (if it has lines) record the
//! pending file (number, key, cursor) in the state, store the object,
//! commit (file count, cursor, pending cleared), and record the new
//! position in the export's marker. At start-up the position is reconciled
//! from every source (the state, the marker, the folder, the importer's
//! done location: see [`reconcile`]); a pending file left by a killed run is
//! settled by asking the destination whether the object exists: stored →
//! committed; absent and its number never used → its events are stored
//! again under the same key and number (the importer never saw it). So
//! after a kill -9 at any instant, no event is lost (the cursor only covers
//! stored events) and no file number is skipped or reused. Key stamps never
//! go backwards.
//!
//! The decisions are pure functions in [`core`] and [`reconcile`]; this
//! module is the shell that does the I/O they call for. Transient storage
//! errors are retried with capped backoff for as long as it takes, with the
//! cursor frozen; permanent ones stop the run.

pub(crate) mod core;
pub(crate) mod reconcile;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use sha2::{Digest, Sha256};

use crate::batch::{Batch, DeadLetter};
use crate::clock::now_ms;
use crate::dest::naming::{dead_letter_key, file_number};
use crate::dest::{DestError, Destination, Destinations, ObjectMeta};
use crate::id::EventId;
use crate::marker::{marker_key, Marker};
use crate::metrics::{Metrics, RetryCause};
use crate::policy::Reason;
use crate::retry::{self, Failure, Verdict};
use crate::state::{State, StateStore};
use crate::text::hex;

use self::core::Settle;
use self::reconcile::{Sources, Trace};

/// How long to wait before looking again for a pending file that was not
/// found: an upload cut by a kill can still complete on the server.
const SETTLE_GRACE: Duration = Duration::from_secs(2);

/// Stores batches and saves the state.
pub(crate) struct Committer {
    store: Box<dyn StateStore>,
    /// The saved state, or before [`Committer::start`], the local state as
    /// loaded (`None`: no state file).
    state: State,
    local: Option<State>,
    /// The state of a first run, used when no source knows the export.
    fresh: State,
    folder: String,
    dest: Box<dyn Destination>,
    dead: Box<dyn Destination>,
    /// Where the importer moves files it has read, checked when settling.
    done: Option<Box<dyn Destination>>,
    stop: Arc<AtomicBool>,
    retry_max: Duration,
    settle_grace: Duration,
    /// The key of a pending file that was not found: used again.
    reuse_key: Option<String>,
    /// What start-up settled, for the caller.
    notes: Vec<String>,
    /// The first run was given its own start: never continue an export.
    explicit_start: bool,
    /// Set when another run took the folder's lease over.
    lease_lost: Arc<AtomicBool>,
    gaps: Arc<std::sync::Mutex<Vec<String>>>,
    metrics: Arc<Metrics>,
}

impl Committer {
    /// A committer that saves through `store`, storing into `dests`. `local`
    /// is the state file as loaded (`None`: there is none); `fresh` is the
    /// state of a first run (its `export_id` names a new export). `stop`
    /// ends retry waits. Nothing is read or written before [`Self::start`].
    pub(crate) fn new(
        store: Box<dyn StateStore>,
        local: Option<State>,
        fresh: State,
        folder: String,
        dests: Destinations,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Committer {
            store,
            state: local.clone().unwrap_or_else(|| fresh.clone()),
            local,
            fresh,
            folder,
            dest: dests.files,
            dead: dests.dead,
            done: dests.done,
            stop,
            retry_max: Duration::from_secs(30),
            settle_grace: SETTLE_GRACE,
            reuse_key: None,
            notes: Vec::new(),
            explicit_start: false,
            lease_lost: Arc::default(),
            gaps: Arc::default(),
            metrics: Arc::default(),
        }
    }

    /// Where the reader reports gaps an operator accepted; they are recorded
    /// in the state with the next save.
    pub(crate) fn accepted_gaps(&self) -> Arc<std::sync::Mutex<Vec<String>>> {
        self.gaps.clone()
    }

    fn take_gaps(&mut self) {
        let mut gaps = self.gaps.lock().expect("not poisoned");
        self.state.accepted_gaps.append(&mut gaps);
    }

    /// Says that the run was given its own start position (`run --from`):
    /// it begins a new export and refuses to continue one found in the
    /// destination.
    pub(crate) fn set_explicit_start(&mut self, explicit: bool) {
        self.explicit_start = explicit;
    }

    /// The flag that says another run took the folder's lease over: from
    /// then on nothing more is stored.
    pub(crate) fn set_lease_lost(&mut self, lost: Arc<AtomicBool>) {
        self.lease_lost = lost;
    }

    /// Counts what is stored into `metrics`.
    pub(crate) fn set_metrics(&mut self, metrics: Arc<Metrics>) {
        self.metrics = metrics;
    }

    /// The state as last saved.
    pub(crate) fn state(&self) -> &State {
        &self.state
    }

    /// Changes the state outside a batch (run summary) and saves it.
    pub(crate) fn update_state(&mut self, f: impl FnOnce(&mut State)) -> Result<()> {
        self.take_gaps();
        f(&mut self.state);
        self.save("")
    }

    fn save(&mut self, what: &str) -> Result<()> {
        let r = self.store.save(&self.state);
        if what.is_empty() {
            r.map_err(Into::into)
        } else {
            r.with_context(|| what.to_string())
        }
    }

    fn retry<T>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&mut dyn Destination) -> Result<T, DestError>,
    ) -> Result<T> {
        let dest = self.dest.as_mut();
        retry_loop(what, &self.stop, self.retry_max, &self.metrics, || f(dest))
    }

    /// Makes the destination ready, reconciles the position from every
    /// source, settles a pending upload and saves the state (the first save
    /// of a first run too). Returns the cursor the first batch must end at
    /// when the pending file was not found (see [`core::settle`]).
    pub(crate) fn start(&mut self) -> Result<Option<EventId>> {
        let what = self.dest.describe();
        if crate::marker::collides_with_folder(&self.folder) {
            return Err(anyhow!(
                "the folder `{}` sorts after this exporter's own keys (`{}`), so its importer would read them: choose a folder name that starts with a letter or a digit",
                self.folder,
                marker_key(&self.folder)
            ));
        }
        self.retry(&format!("prepare {what}"), |d| d.prepare())?;
        let clashes = self.folder_clashes()?;
        if !clashes.is_empty() {
            return Err(anyhow!(
                "the folder `{}` in {what} is not the only one its importer reads:\n  {}\ngive each export a folder whose name is not the start of another's (e.g. `opencti-live` and `opencti-backfill`, not `opencti` and `opencti-backfill`)",
                self.folder,
                clashes.join("\n  ")
            ));
        }
        let mut src = self.read_sources()?;
        let used = src
            .marker
            .as_ref()
            .map(|m| m.file_count())
            .unwrap_or(0)
            .max(src.stored_high());
        let mut cut = None;
        if let Some(mut local) = self.local.clone() {
            cut = self.settle(&mut local, used)?;
            src.local = Some(local);
        }
        let resolved = reconcile::reconcile(&src, &self.fresh).map_err(anyhow::Error::new)?;
        self.clean_temporaries()?;
        for n in &resolved.notes {
            log::warn!("{n}");
        }
        if !resolved.notes.is_empty() {
            // The cursor of the pending file no longer applies.
            cut = None;
            self.reuse_key = None;
        }
        self.notes = resolved.notes;
        self.state = resolved.state;
        self.save("saving the state at start-up")?;
        // The marker is rewritten when it would say something new.
        let mut recorded = core::marker_of(&self.state);
        if let Some(m) = &src.marker {
            recorded.updated_at = m.updated_at.clone();
        }
        let up_to_date = match &src.marker {
            Some(m) => *m == recorded,
            None => self.state.file_count == 0,
        };
        if !up_to_date {
            self.write_marker()?;
        }
        Ok(cut)
    }

    /// What keeps this export's folder from being read alone by its
    /// importer (see [`crate::marker::folder_clashes`]), one sentence each.
    pub(crate) fn folder_clashes(&mut self) -> Result<Vec<String>> {
        let folder = self.folder.clone();
        let own = format!("{}/", crate::marker::OWN_PREFIX);
        let what = self.dest.describe();
        let (prefixed, markers) = self.retry(&format!("list {what}"), |d| {
            Ok((d.list(&folder)?, d.list(&own)?))
        })?;
        Ok(crate::marker::folder_clashes(&folder, &prefixed, &markers))
    }

    /// Makes the destination ready and reads what it records of this
    /// export (marker, folder, done location), for `state reset`.
    pub(crate) fn survey(&mut self) -> Result<Sources> {
        let what = self.dest.describe();
        self.retry(&format!("prepare {what}"), |d| d.prepare())?;
        self.read_sources()
    }

    /// Deletes the export's marker (`state reset --importer-was-reset`
    /// starts a new export).
    pub(crate) fn forget_marker(&mut self) -> Result<()> {
        let key = marker_key(&self.folder);
        self.retry(&format!("delete `{key}`"), |d| d.delete(&key))
    }

    /// Removes what killed runs of this export left half-written.
    fn clean_temporaries(&mut self) -> Result<()> {
        let folder = format!("{}/", self.folder);
        let own = format!("{}/{}/", crate::marker::OWN_PREFIX, self.folder);
        let what = self.dest.describe();
        self.retry(&format!("clean temporary files in {what}"), |d| {
            d.clean_temporaries(&folder)?;
            d.clean_temporaries(&own)
        })?;
        let dead = self.dead.as_mut();
        retry_loop(
            "clean temporary dead letters",
            &self.stop,
            self.retry_max,
            &self.metrics,
            || dead.clean_temporaries(&folder),
        )
    }

    fn read_sources(&mut self) -> Result<Sources> {
        let what = self.dest.describe();
        let folder = self.folder.clone();
        let mkey = marker_key(&folder);
        let marker = match self.retry(&format!("read `{mkey}` in {what}"), |d| {
            if d.exists(&mkey)? {
                d.get(&mkey).map(Some)
            } else {
                Ok(None)
            }
        })? {
            None => None,
            Some(body) => Some(Marker::from_body(&body).map_err(|why| {
                anyhow!(
                    "the export's marker `{mkey}` in {what} is unreadable ({why}): it is rewritten after each stored file; delete it to let the local state and the folder decide"
                )
            })?),
        };
        let folder_trace = highest_trace(
            self.dest.as_mut(),
            &folder,
            &self.stop,
            self.retry_max,
            &self.metrics,
        )?;
        let (done_trace, done_at) = match self.done.as_mut() {
            Some(d) => (
                highest_trace(
                    d.as_mut(),
                    &folder,
                    &self.stop,
                    self.retry_max,
                    &self.metrics,
                )?,
                d.describe(),
            ),
            None => (None, String::new()),
        };
        Ok(Sources {
            local: self.local.clone(),
            local_path: self.store.describe(),
            marker,
            marker_at: format!("`{mkey}` in {what}"),
            folder: folder_trace,
            folder_at: format!("`{folder}/` in {what}"),
            done: done_trace,
            done_at,
            stream_id: self.fresh.stream_id.clone().unwrap_or_default(),
            explicit_start: self.explicit_start,
        })
    }

    /// Writes the export's marker from the saved state.
    fn write_marker(&mut self) -> Result<()> {
        let mut m = core::marker_of(&self.state);
        m.updated_at = crate::id::ms_to_iso(now_ms());
        let body = m.to_body();
        let key = marker_key(&self.folder);
        let meta = ObjectMeta {
            events: 0,
            first_id: String::new(),
            last_id: String::new(),
            sha256_hex: hex(&Sha256::digest(&body)),
        };
        let what = self.dest.describe();
        self.retry(&format!("record the position in `{key}` in {what}"), |d| {
            d.put(&key, &body, &meta)
        })
    }

    /// Settles the upload a stopped run left pending in `local`. Found (in
    /// the bucket, or in the importer's done bucket), or its number used
    /// (`used`, from the other traces): committed. Not found: an upload cut
    /// by a kill may still land on the server a moment later, so the check is
    /// repeated after a grace period, and then the file is uploaded again
    /// under the same key and number, ending at the same cursor: whichever
    /// copy lands last holds the same events, and no number is used twice.
    fn settle(&mut self, local: &mut State, used: u64) -> Result<Option<EventId>> {
        let Some(p) = local.pending.clone() else {
            return Ok(None);
        };
        let key = p.key.clone();
        let mut found = false;
        for attempt in 0..3 {
            if core::settle(&p, found, used) == Settle::Stored {
                break;
            }
            if attempt > 0 {
                std::thread::sleep(self.settle_grace);
            }
            found = self.retry(&format!("look for `{key}`"), |d| d.exists(&key))?;
            if !found {
                if let Some(done) = self.done.as_mut() {
                    found = retry_loop(
                        &format!("look for `{key}` in the done bucket"),
                        &self.stop,
                        self.retry_max,
                        &self.metrics,
                        || done.exists(&key),
                    )?;
                }
            }
        }
        Ok(match core::settle(&p, found, used) {
            Settle::Stored => {
                log::info!(
                    "file {} (`{key}`) was stored before the last run stopped: committing it",
                    p.file_number
                );
                core::apply_commit(local, &p);
                None
            }
            Settle::Again => {
                log::info!(
                    "file {} (`{key}`) was not stored before the last run stopped: its events are exported again under the same key",
                    p.file_number
                );
                self.reuse_key = Some(key);
                local.pending = None;
                p.cursor
            }
        })
    }

    /// Stores one batch and commits it. Returns the key written, if any.
    /// The caller keeps the body: the pipeline hands it back to the batcher
    /// to fill again.
    pub(crate) fn store(&mut self, batch: &Batch) -> Result<Option<String>> {
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
            self.save("")?;
            self.record_commit();
            return Ok(None);
        }
        let (pending, ms) = core::plan_file(
            &self.state,
            self.reuse_key.take(),
            &self.folder,
            now_ms(),
            batch.cursor,
            batch.events,
            batch.body.len() as u64,
        );
        let (number, key) = (pending.file_number, pending.key.clone());
        self.state.pending = Some(pending.clone());
        self.state.last_key_ms = self.state.last_key_ms.max(ms);
        self.save("saving the pending upload")?;

        let meta = ObjectMeta {
            events: batch.events,
            first_id: batch.first_id.map(|i| i.to_string()).unwrap_or_default(),
            last_id: batch.last_id.map(|i| i.to_string()).unwrap_or_default(),
            sha256_hex: if self.dest.stores_checksum() {
                hex(&Sha256::digest(&batch.body))
            } else {
                String::new()
            },
        };
        let body = &batch.body;
        if self.lease_lost.load(Ordering::Relaxed) {
            return Err(anyhow!(
                "another exporter took over this folder's lease: file {number} was not stored, and this run stops"
            ));
        }
        let upload_started = std::time::Instant::now();
        self.retry(&format!("store `{key}`"), |d| d.put(&key, body, &meta))?;

        let upload_time = upload_started.elapsed();
        core::apply_commit(&mut self.state, &pending);
        self.save("saving the state after an upload")?;
        self.write_marker()?;
        self.metrics
            .record_file(batch.events, body.len() as u64, upload_time);
        self.record_commit();
        log::info!(
            "stored file {number} `{key}`: {} events, {} bytes, up to `{}`",
            batch.events,
            body.len(),
            meta.last_id
        );
        Ok(Some(key))
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
            sha256_hex: hex(&Sha256::digest(&record)),
        };
        let what = format!("keep dead letter `{key}` in {}", self.dead.describe());
        let dead = self.dead.as_mut();
        retry_loop(&what, &self.stop, self.retry_max, &self.metrics, || {
            dead.put(&key, &record, &meta)
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

/// The highest data file directly in `folder` (by the importer's rule),
/// with the last id its metadata records.
fn highest_trace(
    d: &mut dyn Destination,
    folder: &str,
    stop: &AtomicBool,
    max: Duration,
    metrics: &Metrics,
) -> Result<Option<Trace>> {
    let prefix = format!("{folder}/");
    let what = d.describe();
    let keys = retry_loop(&format!("list {what}"), stop, max, metrics, || {
        d.list(&prefix)
    })?;
    let Some((number, key)) = keys
        .iter()
        .filter(|k| {
            let name = &k[prefix.len()..];
            name.starts_with("stream_") && !name.contains('/')
        })
        .filter_map(|k| file_number(k).map(|n| (n, k.clone())))
        .max()
    else {
        return Ok(None);
    };
    let meta = retry_loop(
        &format!("read the metadata of `{key}` in {what}"),
        stop,
        max,
        metrics,
        || d.meta(&key),
    )?;
    let last_id = meta.and_then(|m| m.last_id.parse().ok());
    Ok(Some(Trace {
        number,
        key,
        last_id,
    }))
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
pub(crate) fn dead_letter_record(letter: &DeadLetter) -> Vec<u8> {
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
    }
    let text = if letter.base64 {
        None
    } else {
        std::str::from_utf8(&letter.raw).ok()
    };
    let data_base64: Option<std::borrow::Cow<'_, [u8]>> = match (text, letter.base64) {
        (Some(_), _) => None,
        // Already base64 (an attached file's bytes): written as is.
        (None, true) => Some(std::borrow::Cow::Borrowed(&letter.raw)),
        (None, false) => Some(std::borrow::Cow::Owned(
            base64::engine::general_purpose::STANDARD
                .encode(&letter.raw)
                .into_bytes(),
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
    };
    let mut out = Vec::with_capacity(letter.raw.len() * 11 / 10 + 256);
    serde_json::to_writer(&mut out, &record).expect("serialises");
    if let Some(b64) = data_base64 {
        // Base64 needs no escaping: copied in as is, last member.
        out.pop();
        out.extend_from_slice(b",\"data_base64\":\"");
        out.extend_from_slice(&b64);
        out.extend_from_slice(b"\"}");
    }
    out.push(b'\n');
    out
}
