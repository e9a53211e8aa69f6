//! `run`: export the stream until stopped, caught up (`--once`) or past `--until`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cli::RunArgs;
use crate::clock::WakeFlag;
use crate::commit::Committer;
use crate::config::{Config, ConfigError, OpenCti, StreamSettings};
use crate::exit::{self, GaveUp};
use crate::fetch::Fetcher;
use crate::http;
use crate::id::{self, EventId};
use crate::metrics::{self, Metrics, RetryCause, Snapshot};
use crate::opencti::connector::{Pinger, PING_PERIOD};
use crate::opencti::graphql::PingInfo;
use crate::pipeline::{self, Outcome, PipelineSettings};
use crate::progress::Progress;
use crate::state::{self, RunSummary, State};
use crate::stream::client::{Start, StreamClient};
use crate::stream::reader::StopRule;

/// Under `--once`, watches the figures of the run: once OpenCTI or the
/// storage has been failing (retries counted) for `limit` with nothing
/// getting through (no event received, no file or dead letter stored), it
/// stops the reader and the committer's retries and says why. Watching the
/// figures keeps the retry loops unaware of `--once`.
fn watch_outage(
    limit: Duration,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    abort: Arc<AtomicBool>,
    done: Arc<WakeFlag>,
) -> Arc<Mutex<Option<GaveUp>>> {
    let verdict = Arc::new(Mutex::new(None));
    let out = verdict.clone();
    let progress = move |m: &Metrics| {
        let s = m.snapshot();
        (s.received, s.files_written, s.dead_letters)
    };
    let failures = |m: &Metrics| {
        (
            m.retries(RetryCause::Stream),
            m.retries(RetryCause::Storage),
        )
    };
    let _ = std::thread::Builder::new()
        .name("outage-watch".into())
        .spawn(move || {
            let (mut last_progress, mut last_failures) = (progress(&metrics), failures(&metrics));
            let mut since: Option<(Instant, (u64, u64))> = None;
            while !done.sleep(Duration::from_millis(100)) {
                let (p, f) = (progress(&metrics), failures(&metrics));
                if p != last_progress {
                    since = None;
                } else if f != last_failures && since.is_none() {
                    since = Some((Instant::now(), last_failures));
                }
                (last_progress, last_failures) = (p, f);
                let Some((t, before)) = since else { continue };
                if t.elapsed() < limit {
                    continue;
                }
                let what = match (f.0 > before.0, f.1 > before.1) {
                    (true, true) => "OpenCTI and the storage",
                    (true, false) => "OpenCTI",
                    _ => "the storage",
                };
                let gave_up = GaveUp {
                    limit_secs: limit.as_secs().max(1),
                    what: what.to_string(),
                };
                log::warn!(
                    "{what} failing for {} under `--once`: stopping",
                    crate::text::secs(gave_up.limit_secs)
                );
                *out.lock().expect("not poisoned") = Some(gave_up);
                stop.store(true, Ordering::Relaxed);
                abort.store(true, Ordering::Relaxed);
                return;
            }
        });
    verdict
}

fn flag_error(flag: &str, message: String) -> ConfigError {
    ConfigError {
        key: flag.to_string(),
        origin: "command line".into(),
        message,
    }
}

/// Runs the export; returns the exit status.
pub(crate) fn run(cfg: &Config, args: &RunArgs, quiet: bool) -> Result<i32> {
    cfg.check_for_run()?;
    let opencti = cfg.opencti()?;
    let stream = cfg.stream()?;
    let (from, until) = window(args)?;

    let _lock = state::lock(&cfg.state_path)?;
    let saved = state::load(&cfg.state_path)?;
    check_saved(cfg, saved.as_ref(), from, stream)?;
    let dests = super::destinations(cfg)?;
    let abort = Arc::new(AtomicBool::new(false));
    let mut committer = Committer::new(
        Box::new(state::StateFile(cfg.state_path.clone())),
        saved,
        first_state(cfg, from)?,
        cfg.folder.clone(),
        dests,
        abort.clone(),
    );
    let metrics = Arc::new(Metrics::default());
    committer.set_metrics(metrics.clone());
    let started_at = id::ms_to_iso(crate::clock::now_ms());
    committer.set_explicit_start(from.is_some());
    let stop = Arc::new(AtomicBool::new(false));
    let watch_done = WatchDone(Arc::new(WakeFlag::default()));
    let gave_up = args.once.then(|| {
        watch_outage(
            cfg.once_max_outage,
            metrics.clone(),
            stop.clone(),
            abort.clone(),
            watch_done.0.clone(),
        )
    });
    let gave_up_error = || {
        gave_up
            .as_ref()
            .and_then(|g| g.lock().expect("not poisoned").take())
    };
    // One folder, one writer: the lease is held before anything is read
    // or written, and renewed by its own thread (with its own destination).
    let run_id = crate::clock::run_id().to_string();
    let lease_lost = Arc::new(AtomicBool::new(false));
    let mut lease_dest = super::destinations(cfg)?.files;
    let lease = match take_lease(cfg, lease_dest.as_mut(), &run_id, &stop, &metrics) {
        Ok(l) => l,
        Err(e) => return Err(gave_up_error().map(Into::into).unwrap_or(e)),
    };
    let _lease = crate::lease::keep(lease_dest, lease, run_id, stop.clone(), lease_lost.clone());
    committer.set_lease_lost(lease_lost);
    let first_cut_after = match committer.start() {
        Ok(cut) => cut,
        Err(e) => return Err(gave_up_error().map(Into::into).unwrap_or(e)),
    };
    start_metrics(cfg, &metrics, committer.state())?;
    let start = start_position(cfg, committer.state(), from)?;
    committer.update_state(|s| s.last_run = Some(running(&started_at)))?;
    install_signal_handlers(&stop)?;

    let pinger = start_pinger(cfg, args, opencti)?;
    let client = StreamClient::new(opencti, stream, stop.clone())?;
    let files = start_fetcher(cfg, opencti, &metrics)?;
    log_start(cfg, &client, &start);
    let settings = pipeline_settings(cfg, args, start, until, first_cut_after);
    let progress = (!quiet).then(|| Progress::start(metrics.clone(), stop.clone(), cfg.log_every));
    let (mut committer, result) =
        pipeline::run(client, settings, committer, files, stop, metrics.clone());
    if let Some(p) = progress {
        p.finish();
    }
    drop(watch_done);
    let gave_up = gave_up_error();
    let ended_at = id::ms_to_iso(crate::clock::now_ms());
    let totals = metrics.snapshot();
    let last_run = last_run(
        started_at,
        ended_at,
        outcome_text(&result, gave_up.as_ref()),
        &totals,
    );
    let _ = committer.update_state(|s| s.last_run = Some(last_run));
    if let Some(p) = pinger {
        p.stop();
    }
    write_metrics_textfile(cfg, &metrics);
    if let Some(g) = gave_up {
        return Err(g.into());
    }
    let outcome = result?;
    if !quiet {
        println!("{}", summary(&totals, &outcome, committer.state()));
    }
    if let Some(e) = outcome.stream_error {
        return Err(e.into());
    }
    Ok(exit::OK)
}

/// The `--from` and `--until` positions; `--until` must come after `--from`.
fn window(args: &RunArgs) -> Result<(Option<EventId>, Option<EventId>)> {
    let from = args
        .from
        .as_deref()
        .map(|s| id::parse_position(s).map_err(|e| flag_error("--from", e)))
        .transpose()?;
    let until = match args.until.as_deref() {
        None => None,
        Some("now") => Some(EventId::at_ms(crate::clock::now_ms())),
        Some(s) => Some(id::parse_position(s).map_err(|e| flag_error("--until", e))?),
    };
    if let (Some(f), Some(u)) = (from, until) {
        if u <= f {
            return Err(flag_error(
                "--until",
                format!("`{u}` is not after `--from` `{f}`: the window is empty"),
            )
            .into());
        }
    }
    Ok((from, until))
}

/// Refuses a saved state that `--from` would override or that belongs to another stream.
fn check_saved(
    cfg: &Config,
    saved: Option<&State>,
    from: Option<EventId>,
    stream: &StreamSettings,
) -> Result<()> {
    let Some(s) = saved else { return Ok(()) };
    if from.is_some() {
        return Err(from_with_state(cfg).into());
    }
    if let Some(sid) = &s.stream_id {
        if sid != &stream.live_stream_id {
            return Err(flag_error(
                "connector.live_stream_id",
                format!(
                    "the state at `{}` belongs to stream `{sid}`, not `{}`: use another `--state`, or `state reset` to start over (it keeps the file numbering)",
                    cfg.state_path.display(),
                    stream.live_stream_id
                ),
            )
            .into());
        }
    }
    Ok(())
}

/// Sets the cursor gauge from the settled state, serves the metrics when
/// `connector.metrics_port` is set, and logs an active export policy.
fn start_metrics(cfg: &Config, metrics: &Arc<Metrics>, state: &State) -> Result<()> {
    if let Some(c) = state.cursor().ok().flatten() {
        metrics.set_cursor_ms(c.ms);
    }
    if let Some(port) = cfg.metrics_port {
        let addr = std::net::SocketAddr::from(([0, 0, 0, 0], port));
        let bound = metrics::serve(addr, metrics.clone(), cfg.connector_name.clone())
            .with_context(|| {
                format!("serving metrics on port {port} (`connector.metrics_port`)")
            })?;
        log::info!("metrics at http://{bound}/metrics");
    }
    if cfg.policy.is_active() {
        log::info!(
            "export policy: {}",
            cfg.policy.describe().replace('\n', "; ")
        );
    }
    Ok(())
}

/// Where the stream starts; read after settling, as a stored pending file moves the cursor.
fn start_position(cfg: &Config, state: &State, from: Option<EventId>) -> Result<Start> {
    Ok(Start {
        after: state
            .cursor()
            .map_err(anyhow::Error::msg)?
            .or(if state.start_from.is_none() {
                first_start(cfg, from)
            } else {
                None
            }),
        recover_until_ms: state
            .recover_until
            .as_deref()
            .and_then(|d| id::parse_iso_ms(d).ok()),
    })
}

/// SIGINT and SIGTERM set `stop`; a second one exits at once.
fn install_signal_handlers(stop: &Arc<AtomicBool>) -> Result<()> {
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, exit::INTERRUPTED, stop.clone())
            .context("installing signal handlers")?;
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    Ok(())
}

/// Starts pinging OpenCTI as a connector when one is configured.
fn start_pinger(cfg: &Config, args: &RunArgs, opencti: &OpenCti) -> Result<Option<Pinger>> {
    let Some(c) = &cfg.connector else {
        return Ok(None);
    };
    let info = PingInfo {
        run_and_terminate: args.once || args.until.is_some(),
    };
    Ok(Some(Pinger::start(
        opencti,
        c,
        &cfg.state_path,
        PING_PERIOD,
        info,
    )?))
}

/// Starts fetching the files of events when `fetch_files` is on.
fn start_fetcher(
    cfg: &Config,
    opencti: &OpenCti,
    metrics: &Arc<Metrics>,
) -> Result<Option<Fetcher>> {
    if !cfg.fetch_files {
        return Ok(None);
    }
    Ok(Some(Fetcher::start(
        http::files_agent(
            opencti,
            cfg.files.concurrency,
            cfg.files.deadline.min(Duration::from_secs(30)),
        )?,
        &opencti.url,
        opencti.token.expose(),
        cfg.files,
        metrics.clone(),
    )))
}

/// Logs what is exported, where to, and from which position.
fn log_start(cfg: &Config, client: &StreamClient, start: &Start) {
    log::info!(
        "exporting `{}` to {} under `{}/` starting after `{}`{}",
        client.url(),
        committer_describe(cfg),
        cfg.folder,
        start
            .after
            .map(|a| a.to_string())
            .unwrap_or_else(|| "now".into()),
        start
            .recover_until_ms
            .map(|ms| format!(" with a snapshot up to {}", id::ms_to_iso(ms)))
            .unwrap_or_default()
    );
}

/// The pipeline's settings for this run.
fn pipeline_settings(
    cfg: &Config,
    args: &RunArgs,
    start: Start,
    until: Option<EventId>,
    first_cut_after: Option<EventId>,
) -> PipelineSettings {
    PipelineSettings {
        start,
        stop_rule: StopRule {
            once: args.once,
            until,
        },
        workers: cfg.consumer_count,
        queue_size: cfg.queue_size,
        limits: cfg.batch,
        accept_gap: args.accept_gap,
        first_cut_after,
        policy: cfg.policy.clone(),
        max_line_bytes: cfg.max_line_bytes,
    }
}

/// The run's outcome as saved in the state, secrets scrubbed; giving up overrides the rest.
fn outcome_text(result: &Result<Outcome>, gave_up: Option<&GaveUp>) -> String {
    let text = match result {
        Ok(o) => match &o.stream_error {
            Some(e) => format!("failed: {e}"),
            None if o.interrupted => "interrupted".to_string(),
            None => "completed".to_string(),
        },
        Err(e) => format!("failed: {e:#}"),
    };
    let text = match gave_up {
        Some(g) => format!("failed: {g}"),
        None => text,
    };
    crate::secret::scrub_all(&text)
}

/// The summary saved in the state while the run goes on.
fn running(started_at: &str) -> RunSummary {
    RunSummary {
        started_at: started_at.to_string(),
        outcome: "running".into(),
        ..RunSummary::default()
    }
}

/// The summary of the finished run saved in the state.
fn last_run(
    started_at: String,
    ended_at: String,
    outcome: String,
    totals: &Snapshot,
) -> RunSummary {
    RunSummary {
        started_at,
        ended_at,
        outcome,
        events: totals.events_written,
        files: totals.files_written,
        bytes: totals.bytes_written,
        dead_letters: totals.dead_letters,
    }
}

/// Writes the metrics textfile when `connector.metrics_textfile` is set; a failure is only logged.
fn write_metrics_textfile(cfg: &Config, metrics: &Metrics) {
    if let Some(path) = &cfg.metrics_textfile {
        match metrics::write_textfile(path, metrics, &cfg.connector_name) {
            Ok(()) => log::info!("metrics written to `{}`", path.display()),
            Err(e) => log::warn!(
                "cannot write the metrics textfile `{}`: {e}",
                path.display()
            ),
        }
    }
}

/// The summary printed at the end of a run.
fn summary(totals: &Snapshot, outcome: &Outcome, state: &State) -> String {
    format!(
        "exported {} events in {} files ({} bytes) in {:.1} s; first `{}`, last `{}`; {} dead letters, {} files not fetched, {} reconnects; peak memory {}\n{}; next file {}",
        totals.events_written,
        totals.files_written,
        totals.bytes_written,
        outcome.elapsed.as_secs_f64(),
        outcome.first_id.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
        outcome.last_id.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
        totals.dead_letters,
        totals.file_fetch_failures,
        totals.reconnects,
        crate::metrics::process::peak_resident_bytes()
            .map(|b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64))
            .unwrap_or_else(|| "unknown".into()),
        explain_cursor(state.start_from.as_deref(), outcome.last_id),
        state.file_count + 1,
    )
}

/// Ends the outage watch when dropped, whichever way `run` returns.
struct WatchDone(Arc<WakeFlag>);

impl Drop for WatchDone {
    fn drop(&mut self) {
        self.0.set();
    }
}

/// The saved cursor, and why it can stand before the last id exported: an
/// event's id is only known complete once a later id arrives (OpenCTI sends
/// an object's dependencies under the same id), so the last group of a run
/// stays open and the next run starts after the cursor, sending it again.
pub(crate) fn explain_cursor(cursor: Option<&str>, last: Option<EventId>) -> String {
    let Some(cursor) = cursor else {
        return "cursor: none saved yet (the next run starts from the beginning)".into();
    };
    match last {
        Some(l) if cursor.parse::<EventId>().is_ok_and(|c| c < l) => format!(
            "cursor `{cursor}`: the last id known complete; `{l}` is not, as more events may share its id, so the next run starts after `{cursor}` and sends `{l}` again"
        ),
        _ => format!("cursor `{cursor}`: the next run starts after it"),
    }
}

fn committer_describe(cfg: &Config) -> String {
    match cfg.output() {
        Ok(crate::config::Output::S3 { settings, .. }) => format!("bucket `{}`", settings.bucket),
        Ok(crate::config::Output::Directory { root, .. }) => {
            format!("directory `{}`", root.display())
        }
        Err(_) => "?".into(),
    }
}

/// Takes the folder's lease, waiting out storage trouble as a commit does.
fn take_lease(
    cfg: &Config,
    d: &mut dyn crate::dest::Destination,
    run_id: &str,
    stop: &AtomicBool,
    metrics: &Metrics,
) -> Result<crate::lease::Lease> {
    use crate::lease::{Lease, LeaseError};
    let what = d.describe();
    let me = crate::lease::state_identity(&cfg.state_path);
    let mut backoff = crate::retry::Backoff::new(
        std::time::Duration::from_millis(500),
        std::time::Duration::from_secs(30),
    );
    loop {
        let result = d
            .prepare()
            .map_err(LeaseError::from)
            .and_then(|_| Lease::acquire(d, &cfg.folder, run_id, &me));
        match result {
            Ok(l) => return Ok(l),
            Err(LeaseError::Dest(e)) if e.is_transient() => {
                // Counted, so that `--once` gives up on a long outage here too.
                metrics.inc_retry(RetryCause::Storage);
                let delay = backoff.next_delay();
                log::warn!(
                    "cannot take the lease of folder `{}` in {what}: {e}; retrying in {:.1} s",
                    cfg.folder,
                    delay.as_secs_f64()
                );
                if !crate::retry::sleep_unless(delay, stop) {
                    return Err(anyhow::anyhow!(
                        "stopped while taking the lease of folder `{}` in {what}: {e}",
                        cfg.folder
                    ));
                }
            }
            Err(e) => return Err(anyhow::anyhow!("folder `{}` in {what}: {e}", cfg.folder)),
        }
    }
}

/// Where a first run starts: `--from`, else `live_stream_start_timestamp`, else `0-0`.
fn first_start(cfg: &Config, from: Option<EventId>) -> Option<EventId> {
    let stream = cfg.stream().ok()?;
    Some(from.or(stream.start).unwrap_or_default())
}

fn from_with_state(cfg: &Config) -> ConfigError {
    flag_error(
        "--from",
        format!(
            "a saved state exists at `{}`: `--from` only applies to a first run; run `opencti-stream-exporter state reset --start-from ...` (it keeps the file numbering), or give a backfill its own `--state` and folder",
            cfg.state_path.display()
        ),
    )
}

/// The state of a first run; the committer saves it once the destination
/// shows no trace of this export.
fn first_state(cfg: &Config, from: Option<EventId>) -> Result<State> {
    let stream = cfg.stream()?;
    let recover_until = if from.is_some() {
        None
    } else {
        stream
            .recover
            .until_ms(crate::clock::now_ms())
            .map(id::ms_to_iso)
    };
    Ok(State {
        recover_until,
        stream_id: Some(stream.live_stream_id.clone()),
        export_id: Some(crate::clock::unique_name("export")),
        ..State::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_says_why_the_cursor_stands_before_the_last_id() {
        let last = "1700000012742-0".parse().ok();
        let text = explain_cursor(Some("1700000012738-1"), last);
        assert!(text.contains("the last id known complete"), "{text}");
        assert!(text.contains("sends `1700000012742-0` again"), "{text}");
        assert_eq!(
            explain_cursor(Some("1700000012742-0"), last),
            "cursor `1700000012742-0`: the next run starts after it"
        );
        assert!(explain_cursor(None, None).contains("none saved yet"));
    }
}
