//! Counters and gauges of a run, and the three ways out of the process:
//! Prometheus text over HTTP ([`serve`]), a file for node-exporter's textfile
//! collector ([`write_textfile`]), and one log line ([`Metrics::summary_line`]).
//!
//! Every figure is an atomic updated with `Relaxed` ordering from any thread;
//! reading them never takes a lock, so a scrape can never slow the pipeline.
//! Figures are independent: a scrape may see a file counted whose bytes are
//! not yet added, never a torn number.
//!
//! Names (text exposition format 0.0.4). The reference `stream-exporter`'s
//! six metrics keep their names and labels (`stream/stream-exporter/src/
//! connector/metrics.py` in OpenCTI's connectors repository), with `name` the
//! connector name (`connector.name`): `processed_messages_total{name,action}`,
//! `written_files_total{name}`, `write_errors_total{name}`, and the gauges
//! `current_state`, `last_written_state`, `recover_until_state` (epoch
//! milliseconds). Ours are prefixed `opencti_stream_exporter_` and carry
//! `name` too, so that several exporters can share one textfile directory.
//! Every series exists from the start with value 0, except two gauges that
//! have no meaning yet: `cursor_lag_seconds` before the first commit of the
//! run and `last_commit_timestamp_seconds` before the first commit.
//!
//! This module does not decide *when* to record: the pipeline does.

use std::fmt::{self, Write as _};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::policy::Reason;

pub mod process;

/// Actions of `processed_messages_total`, the SSE names of data events.
pub const ACTIONS: [&str; 4] = crate::transform::DATA_EVENTS;

/// Upper bounds of the `events_per_file` buckets (events); `+Inf` follows.
pub const EVENTS_PER_FILE_BOUNDS: [u64; 6] = [1, 10, 100, 1_000, 10_000, 100_000];

/// Upper bounds of the `upload_duration_seconds` buckets, in microseconds
/// (0.01 s to 60 s); `+Inf` follows.
pub const UPLOAD_BOUNDS_US: [u64; 12] = [
    10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
    30_000_000, 60_000_000,
];

/// How long a client may take to send its request, and to read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest request head read (bytes); longer ones get 431.
const MAX_HEAD: usize = 8 * 1024;

const PREFIX: &str = "opencti_stream_exporter_";

/// What a retry was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryCause {
    /// Storing a file (S3 or directory).
    Storage,
    /// Reconnecting to the stream.
    Stream,
    /// Fetching an attached file from OpenCTI.
    FileFetch,
}

impl RetryCause {
    /// Every cause, in label order.
    pub const ALL: [RetryCause; 3] = [
        RetryCause::Storage,
        RetryCause::Stream,
        RetryCause::FileFetch,
    ];

    /// The `cause` label value: `storage`, `stream` or `file_fetch`.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryCause::Storage => "storage",
            RetryCause::Stream => "stream",
            RetryCause::FileFetch => "file_fetch",
        }
    }
}

/// A histogram of `N - 1` bounds plus `+Inf`; counts are per bucket (not
/// cumulative) so one observation touches one bucket.
#[derive(Debug)]
struct Histogram<const N: usize> {
    counts: [AtomicU64; N],
    sum: AtomicU64,
}

impl<const N: usize> Default for Histogram<N> {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum: AtomicU64::new(0),
        }
    }
}

impl<const N: usize> Histogram<N> {
    fn observe(&self, bounds: &[u64], value: u64) {
        debug_assert_eq!(bounds.len() + 1, N);
        let i = bounds.iter().position(|&b| value <= b).unwrap_or(N - 1);
        self.counts[i].fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
    }

    /// Cumulative counts (the last is the total) and the sum.
    fn read(&self) -> ([u64; N], u64) {
        let mut acc = 0;
        let cumulative = std::array::from_fn(|i| {
            acc += self.counts[i].load(Relaxed);
            acc
        });
        (cumulative, self.sum.load(Relaxed))
    }
}

/// A reading of the main figures, for people rather than scrapers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Data events received.
    pub received: u64,
    /// Millisecond part of the last complete id received.
    pub received_ms: u64,
    /// Millisecond part of the stream head announced at connection.
    pub head_ms: u64,
    /// Millisecond part of the committed cursor (0: none yet).
    pub cursor_ms: u64,
    /// Lines in the files written and committed.
    pub events_written: u64,
    /// Files written and committed.
    pub files_written: u64,
    /// Bytes written and committed.
    pub bytes_written: u64,
    /// Attached files exported without content.
    pub file_fetch_failures: u64,
    /// Lost stream connections.
    pub reconnects: u64,
    /// Dead letters kept.
    pub dead_letters: u64,
}

/// The figures of a run. Share it as `Arc<Metrics>`.
#[derive(Debug, Default)]
pub struct Metrics {
    processed: [AtomicU64; 4],
    written_files: AtomicU64,
    write_errors: AtomicU64,
    bytes_written: AtomicU64,
    last_file_events: AtomicU64,
    events_per_file: Histogram<7>,
    upload_us: Histogram<13>,
    retries: [AtomicU64; 3],
    dead_letters: AtomicU64,
    file_fetch_failures: AtomicU64,
    reconnects: AtomicU64,
    cursor_ms: AtomicU64,
    received_ms: AtomicU64,
    recover_until_ms: AtomicU64,
    last_commit_ms: AtomicU64,
    held: [AtomicU64; 6],
    /// Data events received (progress line only, not exported).
    received: AtomicU64,
    /// Millisecond part of the stream head announced at connection
    /// (progress line only, not exported).
    head_ms: AtomicU64,
    /// 1 while the stream is connected, else 0.
    stream_connected: AtomicU64,
}

impl Metrics {
    /// All figures at zero.
    pub fn new() -> Self {
        Metrics::default()
    }

    /// Counts one data event; `action` is its SSE name (other names are ignored).
    pub fn inc_processed(&self, action: &str) {
        if let Some(i) = ACTIONS.iter().position(|a| *a == action) {
            self.processed[i].fetch_add(1, Relaxed);
        }
    }

    /// Events counted for `action` so far.
    pub fn processed(&self, action: &str) -> u64 {
        ACTIONS
            .iter()
            .position(|a| *a == action)
            .map_or(0, |i| self.processed[i].load(Relaxed))
    }

    /// Records a file stored: its events, its size in bytes, and how long
    /// the successful store took.
    pub fn record_file(&self, events: u64, bytes: u64, upload: Duration) {
        self.written_files.fetch_add(1, Relaxed);
        self.bytes_written.fetch_add(bytes, Relaxed);
        self.last_file_events.store(events, Relaxed);
        self.events_per_file
            .observe(&EVENTS_PER_FILE_BOUNDS, events);
        let us = u64::try_from(upload.as_micros()).unwrap_or(u64::MAX);
        self.upload_us.observe(&UPLOAD_BOUNDS_US, us);
    }

    /// Counts one failed attempt to store a file (retried or not).
    pub fn inc_write_error(&self) {
        self.write_errors.fetch_add(1, Relaxed);
    }

    /// Counts one retry.
    pub fn inc_retry(&self, cause: RetryCause) {
        self.retries[cause as usize].fetch_add(1, Relaxed);
    }

    /// Retries counted so far for `cause`.
    pub fn retries(&self, cause: RetryCause) -> u64 {
        self.retries[cause as usize].load(Relaxed)
    }

    /// Counts one event set aside as a dead letter.
    pub fn inc_dead_letter(&self) {
        self.dead_letters.fetch_add(1, Relaxed);
    }

    /// Counts attached files that could not be fetched (exported without content).
    pub fn add_file_fetch_failures(&self, n: u64) {
        self.file_fetch_failures.fetch_add(n, Relaxed);
    }

    /// Counts one lost stream connection.
    pub fn inc_reconnect(&self) {
        self.reconnects.fetch_add(1, Relaxed);
    }

    /// Counts one event held back by the export policy.
    pub fn inc_held(&self, reason: Reason) {
        self.held[reason.index()].fetch_add(1, Relaxed);
    }

    /// Events held back so far for `reason`.
    pub fn held(&self, reason: Reason) -> u64 {
        self.held[reason.index()].load(Relaxed)
    }

    /// Sets the millisecond part of the last complete id received (never
    /// goes back).
    pub fn set_received_ms(&self, ms: u64) {
        self.received_ms.fetch_max(ms, Relaxed);
    }

    /// Records a commit: the millisecond part of the committed cursor and
    /// the time of the commit (epoch milliseconds).
    pub fn record_commit(&self, cursor_ms: u64, at_ms: u64) {
        self.cursor_ms.store(cursor_ms, Relaxed);
        self.last_commit_ms.store(at_ms, Relaxed);
    }

    /// Sets the committed cursor without a commit (e.g. from the saved state
    /// at start-up).
    pub fn set_cursor_ms(&self, ms: u64) {
        self.cursor_ms.store(ms, Relaxed);
    }

    /// Sets the end of the recovery (epoch milliseconds); 0 when none.
    pub fn set_recover_until_ms(&self, ms: u64) {
        self.recover_until_ms.store(ms, Relaxed);
    }

    /// Counts one data event received from the stream.
    pub fn inc_received(&self) {
        self.received.fetch_add(1, Relaxed);
    }

    /// Records that the stream connection is up (`true`) or lost.
    pub fn set_stream_connected(&self, up: bool) {
        self.stream_connected.store(u64::from(up), Relaxed);
    }

    /// Sets the millisecond part of the stream head the server announced.
    pub fn set_head_ms(&self, ms: u64) {
        self.head_ms.store(ms, Relaxed);
    }

    /// The figures the progress line and the run summary show.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            received: self.received.load(Relaxed),
            received_ms: self.received_ms.load(Relaxed),
            head_ms: self.head_ms.load(Relaxed),
            cursor_ms: self.cursor_ms.load(Relaxed),
            events_written: self.events_per_file.read().1,
            files_written: self.written_files.load(Relaxed),
            bytes_written: self.bytes_written.load(Relaxed),
            file_fetch_failures: self.file_fetch_failures.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            dead_letters: self.dead_letters.load(Relaxed),
        }
    }

    /// The text exposition format 0.0.4, for connector `name`, with the
    /// `process_*` series of this process (for a scrape).
    pub fn render(&self, name: &str) -> String {
        let mut out = self.exposition_at(name, crate::clock::now_ms());
        if let Some(p) = process::read() {
            process::render(&mut out, &p);
        }
        out.text
    }

    /// The run's figures without the `process_*` series: for the textfile,
    /// read after the process is gone, by a node-exporter that has its own.
    pub fn render_run(&self, name: &str) -> String {
        self.render_at(name, crate::clock::now_ms())
    }

    fn render_at(&self, name: &str, now_ms: u64) -> String {
        self.exposition_at(name, now_ms).text
    }

    fn exposition_at(&self, name: &str, now_ms: u64) -> Exposition {
        let mut out = Exposition::new(name);

        out.family(
            "processed_messages_total",
            "counter",
            "Number of processed messages",
        );
        for (i, action) in ACTIONS.iter().enumerate() {
            out.sample(
                "processed_messages_total",
                &[("action", action)],
                self.processed[i].load(Relaxed),
            );
        }
        out.counter(
            "written_files_total",
            "Number of files written to the destination and committed",
            &self.written_files,
        );
        out.counter(
            "write_errors_total",
            "Number of failed attempts to write a file to the destination",
            &self.write_errors,
        );
        out.gauge(
            "current_state",
            "Millisecond part of the id of the last complete event received",
            self.received_ms.load(Relaxed),
        );
        out.gauge(
            "last_written_state",
            "Millisecond part of the id up to which events are written and committed",
            self.cursor_ms.load(Relaxed),
        );
        out.gauge(
            "recover_until_state",
            "End of the recovery in epoch milliseconds (0 when none)",
            self.recover_until_ms.load(Relaxed),
        );

        let m = |s: &str| format!("{PREFIX}{s}");
        out.counter(
            &m("bytes_written_total"),
            "Bytes of the files written and committed",
            &self.bytes_written,
        );
        out.gauge(
            &m("last_file_events"),
            "Events in the last file written",
            self.last_file_events.load(Relaxed),
        );
        let (counts, sum) = self.events_per_file.read();
        let bounds = EVENTS_PER_FILE_BOUNDS.map(|b| b.to_string());
        out.histogram(
            &m("events_per_file"),
            "Events per file written",
            &bounds,
            &counts,
            &sum,
        );
        let (counts, sum_us) = self.upload_us.read();
        let bounds = UPLOAD_BOUNDS_US.map(|b| Seconds(b).to_string());
        out.histogram(
            &m("upload_duration_seconds"),
            "Time to store a file, successful attempt only",
            &bounds,
            &counts,
            &Seconds(sum_us),
        );
        let retries = m("retries_total");
        out.family(&retries, "counter", "Retries by cause");
        for cause in RetryCause::ALL {
            out.sample(
                &retries,
                &[("cause", cause.as_str())],
                self.retries[cause as usize].load(Relaxed),
            );
        }
        out.counter(
            &m("dead_letters_total"),
            "Events set aside as dead letters",
            &self.dead_letters,
        );
        out.counter(
            &m("file_fetch_failures_total"),
            "Attached files that could not be fetched and were exported without content",
            &self.file_fetch_failures,
        );
        out.counter(
            &m("reconnects_total"),
            "Lost stream connections",
            &self.reconnects,
        );
        let lag = m("cursor_lag_seconds");
        out.family(
            &lag,
            "gauge",
            "Seconds between now and the committed cursor (absent before the first cursor)",
        );
        let cursor = self.cursor_ms.load(Relaxed);
        if cursor > 0 {
            out.sample(&lag, &[], Seconds(now_ms.saturating_sub(cursor) * 1000));
        }
        let commit = m("last_commit_timestamp_seconds");
        out.family(
            &commit,
            "gauge",
            "Time of the last commit in epoch seconds (absent before the first)",
        );
        let at = self.last_commit_ms.load(Relaxed);
        if at > 0 {
            out.sample(&commit, &[], Seconds(at * 1000));
        }
        let held = m("policy_held_total");
        out.family(
            &held,
            "counter",
            "Events held back by the export policy, by reason",
        );
        for reason in Reason::ALL {
            out.sample(
                &held,
                &[("reason", reason.as_str())],
                self.held[reason.index()].load(Relaxed),
            );
        }
        out.gauge(
            &m("stream_connected"),
            "1 while connected to the live stream, 0 while connecting or reconnecting",
            self.stream_connected.load(Relaxed),
        );
        out
    }

    /// The main figures on one line, for a periodic info log.
    pub fn summary_line(&self) -> String {
        self.summary_line_at(crate::clock::now_ms())
    }

    fn summary_line_at(&self, now_ms: u64) -> String {
        let by_action: Vec<u64> = self.processed.iter().map(|a| a.load(Relaxed)).collect();
        let total: u64 = by_action.iter().sum();
        let held: u64 = self.held.iter().map(|a| a.load(Relaxed)).sum();
        let cursor = self.cursor_ms.load(Relaxed);
        let lag = if cursor == 0 {
            "not yet saved".to_string()
        } else {
            format!(
                "{} behind now",
                crate::text::secs(now_ms.saturating_sub(cursor) / 1000)
            )
        };
        format!(
            "{total} events ({} create, {} update, {} delete, {} merge), {} held by policy; \
             {} files, {:.1} MB written; {} write errors, {} dead letters, {} files not fetched, \
             {} reconnects; cursor {lag}",
            by_action[0],
            by_action[1],
            by_action[2],
            by_action[3],
            held,
            self.written_files.load(Relaxed),
            self.bytes_written.load(Relaxed) as f64 / 1e6,
            self.write_errors.load(Relaxed),
            self.dead_letters.load(Relaxed),
            self.file_fetch_failures.load(Relaxed),
            self.reconnects.load(Relaxed),
        )
    }
}

/// Microseconds printed as decimal seconds, without exponent or trailing zeros.
struct Seconds(u64);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / 1_000_000, self.0 % 1_000_000);
        if frac == 0 {
            write!(f, "{whole}")
        } else {
            let digits = format!("{frac:06}");
            write!(f, "{whole}.{}", digits.trim_end_matches('0'))
        }
    }
}

/// Builds the exposition text; every sample gets the `name` label first.
struct Exposition {
    text: String,
    name: String,
}

impl Exposition {
    fn new(name: &str) -> Self {
        Exposition {
            text: String::with_capacity(4096),
            name: escape_label(name),
        }
    }

    fn family(&mut self, metric: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {metric} {help}");
        let _ = writeln!(self.text, "# TYPE {metric} {kind}");
    }

    fn sample(&mut self, metric: &str, labels: &[(&str, &str)], value: impl fmt::Display) {
        let _ = write!(self.text, "{metric}{{name=\"{}\"", self.name);
        for (k, v) in labels {
            let _ = write!(self.text, ",{k}=\"{}\"", escape_label(v));
        }
        let _ = writeln!(self.text, "}} {value}");
    }

    fn counter(&mut self, metric: &str, help: &str, value: &AtomicU64) {
        self.family(metric, "counter", help);
        self.sample(metric, &[], value.load(Relaxed));
    }

    fn gauge(&mut self, metric: &str, help: &str, value: u64) {
        self.family(metric, "gauge", help);
        self.sample(metric, &[], value);
    }

    /// `bounds` as printed in `le`; `cumulative` has one more count (`+Inf`).
    fn histogram(
        &mut self,
        metric: &str,
        help: &str,
        bounds: &[String],
        cumulative: &[u64],
        sum: &dyn fmt::Display,
    ) {
        self.family(metric, "histogram", help);
        let bucket = format!("{metric}_bucket");
        let les = bounds.iter().map(String::as_str).chain(["+Inf"]);
        for (le, count) in les.zip(cumulative) {
            self.sample(&bucket, &[("le", le)], count);
        }
        self.sample(&format!("{metric}_sum"), &[], sum);
        // The count is the +Inf bucket itself, so the two always agree.
        let total = cumulative.last().copied().unwrap_or(0);
        self.sample(&format!("{metric}_count"), &[], total);
    }
}

/// Escapes a label value: backslash, double quote and line feed.
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Serves `GET /metrics` (and `GET /`) on `addr` from one detached thread;
/// returns the bound address (port 0 picks a free one).
///
/// Requests are answered one at a time; a client gets 2 s to send its
/// request and 2 s to take the answer, so a slow or silent one delays the
/// next scrape by a few seconds at most, and the pipeline never (only
/// atomics are read).
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>, name: String) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen for metrics on `{addr}`: {e}"),
        )
    })?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || accept_loop(listener, metrics, name, IO_TIMEOUT))?;
    Ok(bound)
}

fn accept_loop(listener: TcpListener, metrics: Arc<Metrics>, name: String, timeout: Duration) {
    let mut last_warning: Option<Instant> = None;
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                if let Err(e) = answer(stream, &metrics, &name, timeout) {
                    log::debug!("metrics: request not answered ({e})");
                }
            }
            Err(e) => {
                // E.g. out of file descriptors: say so once a minute, and do
                // not spin.
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    log::warn!("metrics: cannot accept a connection ({e})");
                    last_warning = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Reads one request head (within `timeout` in all) and answers it.
fn answer(
    mut stream: TcpStream,
    metrics: &Metrics,
    name: &str,
    timeout: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    stream.set_write_timeout(Some(timeout))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        if head.len() > MAX_HEAD {
            break false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "request too slow"));
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break head.contains(&b'\n');
        }
        head.extend_from_slice(&buf[..n]);
    };
    let (status, extra, body, send_body) = if !complete {
        (
            "431 Request Header Fields Too Large",
            "",
            String::new(),
            true,
        )
    } else {
        route(&head, metrics, name)
    };
    let content_type = if status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    if send_body {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes())?;
    stream.flush()?;
    // Closing with unread input would reset the connection and could lose
    // the answer (a request too long, a body): read what is left, briefly.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut drained = 0;
    while drained < 64 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

/// (status, extra header lines, body, whether to send the body).
fn route(head: &[u8], metrics: &Metrics, name: &str) -> (&'static str, &'static str, String, bool) {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return ("400 Bad Request", "", "bad request\n".into(), true);
    };
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if path != "/metrics" && path != "/" {
        return (
            "404 Not Found",
            "",
            "not found: try /metrics\n".into(),
            true,
        );
    }
    match method {
        "GET" => ("200 OK", "", metrics.render(name), true),
        "HEAD" => ("200 OK", "", metrics.render(name), false),
        _ => (
            "405 Method Not Allowed",
            "Allow: GET, HEAD\r\n",
            "method not allowed\n".into(),
            true,
        ),
    }
}

/// Writes the metrics for node-exporter's textfile collector: a temporary
/// file beside `path` (not ending in `.prom`, so never collected half
/// written), flushed to disk, then renamed over `path`.
pub fn write_textfile(path: &Path, metrics: &Metrics, name: &str) -> io::Result<()> {
    crate::fsutil::replace(path, metrics.render_run(name).as_bytes(), false).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot write the metrics file `{}`: {e}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashSet};
    use std::fs;

    const NOW: u64 = 1_700_000_100_000;

    /// Labels in order.
    type Labels = Vec<(String, String)>;
    /// One sample: metric name, labels, value.
    type Sample = (String, Labels, f64);
    /// A histogram's series: (le, cumulative count) buckets, sum, count.
    type Series = (Vec<(f64, f64)>, Option<f64>, Option<f64>);

    /// A strict reader of the text exposition format 0.0.4 as we write it:
    /// HELP and TYPE once per family and before its samples, samples of a
    /// family together, label values escaped, no timestamps, no duplicate
    /// series, histograms complete and cumulative.
    fn check(text: &str) -> Result<BTreeMap<String, (String, Vec<Sample>)>, String> {
        fn metric_name(s: &str) -> bool {
            let mut c = s.chars();
            c.next()
                .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
                && c.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        }
        fn label_name(s: &str) -> bool {
            let mut c = s.chars();
            c.next()
                .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
                && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        fn value(s: &str) -> Result<f64, String> {
            match s {
                "+Inf" => Ok(f64::INFINITY),
                "-Inf" => Ok(f64::NEG_INFINITY),
                "NaN" => Ok(f64::NAN),
                _ => s.parse().map_err(|_| format!("`{s}` is not a value")),
            }
        }
        /// Parses `{a="b",...}` at the start of `s`; returns labels and the rest.
        fn labels(s: &str) -> Result<(Labels, &str), String> {
            let mut out = Vec::new();
            let mut rest = s.strip_prefix('{').ok_or("no `{`")?;
            loop {
                if let Some(r) = rest.strip_prefix('}') {
                    return Ok((out, r));
                }
                let eq = rest.find('=').ok_or("label without `=`")?;
                let name = &rest[..eq];
                if !label_name(name) {
                    return Err(format!("bad label name `{name}`"));
                }
                let mut chars = rest[eq + 1..]
                    .strip_prefix('"')
                    .ok_or("unquoted label value")?
                    .char_indices();
                let mut v = String::new();
                let end = loop {
                    match chars.next() {
                        None => return Err("unterminated label value".into()),
                        Some((i, '"')) => break i,
                        Some((_, '\\')) => match chars.next() {
                            Some((_, '\\')) => v.push('\\'),
                            Some((_, '"')) => v.push('"'),
                            Some((_, 'n')) => v.push('\n'),
                            other => return Err(format!("bad escape {other:?}")),
                        },
                        Some((_, '\n')) => return Err("raw line feed in a label value".into()),
                        Some((_, c)) => v.push(c),
                    }
                };
                out.push((name.to_string(), v));
                rest = &rest[eq + 1..][end + 2..];
                if let Some(r) = rest.strip_prefix(',') {
                    rest = r;
                } else if !rest.starts_with('}') {
                    return Err("labels not separated by `,`".into());
                }
            }
        }

        if !text.ends_with('\n') {
            return Err("the text does not end with a line feed".into());
        }
        let mut families: BTreeMap<String, (String, Vec<Sample>)> = BTreeMap::new();
        let mut helped = HashSet::new();
        let mut closed = HashSet::new();
        let mut current: Option<String> = None;
        let mut series = HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').ok_or("HELP without text")?;
                if !metric_name(name) || !helped.insert(name.to_string()) {
                    return Err(format!("bad or repeated HELP `{name}`"));
                }
                if help.contains('\\') && help.replace("\\\\", "").replace("\\n", "").contains('\\')
                {
                    return Err(format!("bad escape in HELP of `{name}`"));
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').ok_or("TYPE without type")?;
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                    return Err(format!("bad type `{kind}`"));
                }
                if !helped.contains(name) || families.contains_key(name) {
                    return Err(format!("TYPE `{name}` without HELP first, or repeated"));
                }
                if let Some(prev) = current.replace(name.to_string()) {
                    closed.insert(prev);
                }
                families.insert(name.to_string(), (kind.to_string(), Vec::new()));
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                return Err(format!("unexpected line `{line}`"));
            }
            let end = line.find(['{', ' ']).ok_or(format!("no value: `{line}`"))?;
            let name = &line[..end];
            if !metric_name(name) {
                return Err(format!("bad metric name `{name}`"));
            }
            let (labels, rest) = if line[end..].starts_with('{') {
                labels(&line[end..]).map_err(|e| format!("{e}: `{line}`"))?
            } else {
                (Vec::new(), &line[end..])
            };
            let tokens: Vec<&str> = rest
                .strip_prefix(' ')
                .ok_or("no space before the value")?
                .split(' ')
                .collect();
            if tokens.len() != 1 {
                return Err(format!("timestamp or extra text: `{line}`"));
            }
            let v = value(tokens[0]).map_err(|e| format!("{e}: `{line}`"))?;
            let family = if families.contains_key(name) {
                name.to_string()
            } else {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .filter_map(|s| name.strip_suffix(s))
                    .find(|f| families.get(*f).is_some_and(|(k, _)| k == "histogram"))
                    .ok_or(format!("sample `{name}` of no declared family"))?
                    .to_string()
            };
            if current.as_deref() != Some(&family) || closed.contains(&family) {
                return Err(format!("sample `{name}` outside its family's block"));
            }
            if !series.insert(format!("{name}{labels:?}")) {
                return Err(format!("duplicate series `{line}`"));
            }
            families
                .get_mut(&family)
                .unwrap()
                .1
                .push((name.to_string(), labels, v));
        }
        if helped.len() != families.len() {
            return Err("a HELP without TYPE".into());
        }
        for (family, (kind, samples)) in &families {
            if kind != "histogram" {
                continue;
            }
            // Group by the labels other than `le`.
            let mut groups: BTreeMap<String, Series> = BTreeMap::new();
            for (name, labels, v) in samples {
                let key = format!(
                    "{:?}",
                    labels.iter().filter(|(k, _)| k != "le").collect::<Vec<_>>()
                );
                let g = groups.entry(key).or_default();
                if name.ends_with("_bucket") {
                    let le = labels
                        .iter()
                        .find(|(k, _)| k == "le")
                        .ok_or("bucket without le")?;
                    g.0.push((value(&le.1)?, *v));
                } else if name.ends_with("_sum") {
                    g.1 = Some(*v);
                } else {
                    g.2 = Some(*v);
                }
            }
            for (key, (buckets, sum, count)) in groups {
                let last = buckets.last().ok_or(format!("{family}{key}: no buckets"))?;
                if last.0 != f64::INFINITY {
                    return Err(format!("{family}{key}: last bucket is not +Inf"));
                }
                if buckets
                    .windows(2)
                    .any(|w| w[0].0 >= w[1].0 || w[0].1 > w[1].1)
                {
                    return Err(format!(
                        "{family}{key}: buckets not increasing and cumulative"
                    ));
                }
                if sum.is_none() || count != Some(last.1) {
                    return Err(format!(
                        "{family}{key}: _sum missing or _count != +Inf bucket"
                    ));
                }
            }
        }
        Ok(families)
    }

    fn value_of(text: &str, series: &str) -> Option<String> {
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')
                .map(str::to_string)
        })
    }

    fn busy() -> Metrics {
        let m = Metrics::new();
        for a in ["create", "create", "update", "delete", "merge", "heartbeat"] {
            m.inc_processed(a);
        }
        m.record_file(1, 100, Duration::from_millis(5));
        m.record_file(5, 200, Duration::from_secs(1));
        m.record_file(100, 300, Duration::from_millis(1500));
        m.record_file(200_000, 400, Duration::from_secs(90));
        m.inc_write_error();
        m.inc_retry(RetryCause::Storage);
        m.inc_retry(RetryCause::FileFetch);
        m.inc_retry(RetryCause::FileFetch);
        m.inc_dead_letter();
        m.add_file_fetch_failures(3);
        m.inc_reconnect();
        m.inc_held(Reason::AboveCeiling);
        m.inc_held(Reason::AboveCeiling);
        m.inc_held(Reason::TypeDenied);
        m.set_received_ms(NOW - 5_000);
        m.set_received_ms(NOW - 9_000); // never goes back
        m.record_commit(NOW - 12_500, NOW - 2_000);
        m.set_recover_until_ms(1_699_999_999_000);
        m
    }

    #[test]
    fn render_is_valid_exposition_with_the_reference_names() {
        let m = busy();
        let text = m.render_at("StreamExporter", NOW);
        let families = check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let kinds: Vec<(&str, &str)> = families
            .iter()
            .map(|(k, (t, _))| (k.as_str(), t.as_str()))
            .collect();
        for want in [
            ("processed_messages_total", "counter"),
            ("written_files_total", "counter"),
            ("write_errors_total", "counter"),
            ("current_state", "gauge"),
            ("last_written_state", "gauge"),
            ("recover_until_state", "gauge"),
            ("opencti_stream_exporter_bytes_written_total", "counter"),
            ("opencti_stream_exporter_last_file_events", "gauge"),
            ("opencti_stream_exporter_events_per_file", "histogram"),
            (
                "opencti_stream_exporter_upload_duration_seconds",
                "histogram",
            ),
            ("opencti_stream_exporter_retries_total", "counter"),
            ("opencti_stream_exporter_dead_letters_total", "counter"),
            (
                "opencti_stream_exporter_file_fetch_failures_total",
                "counter",
            ),
            ("opencti_stream_exporter_reconnects_total", "counter"),
            ("opencti_stream_exporter_cursor_lag_seconds", "gauge"),
            (
                "opencti_stream_exporter_last_commit_timestamp_seconds",
                "gauge",
            ),
            ("opencti_stream_exporter_policy_held_total", "counter"),
        ] {
            assert!(kinds.contains(&want), "{want:?} missing");
        }
        assert_eq!(kinds.len(), 18);
        let n = r#"name="StreamExporter""#;
        let expect = [
            (
                format!("processed_messages_total{{{n},action=\"create\"}}"),
                "2",
            ),
            (
                format!("processed_messages_total{{{n},action=\"merge\"}}"),
                "1",
            ),
            (format!("written_files_total{{{n}}}"), "4"),
            (format!("write_errors_total{{{n}}}"), "1"),
            (format!("current_state{{{n}}}"), "1700000095000"),
            (format!("last_written_state{{{n}}}"), "1700000087500"),
            (format!("recover_until_state{{{n}}}"), "1699999999000"),
            (
                format!("opencti_stream_exporter_bytes_written_total{{{n}}}"),
                "1000",
            ),
            (
                format!("opencti_stream_exporter_last_file_events{{{n}}}"),
                "200000",
            ),
            (
                format!("opencti_stream_exporter_events_per_file_bucket{{{n},le=\"1\"}}"),
                "1",
            ),
            (
                format!("opencti_stream_exporter_events_per_file_bucket{{{n},le=\"10\"}}"),
                "2",
            ),
            (
                format!("opencti_stream_exporter_events_per_file_bucket{{{n},le=\"100000\"}}"),
                "3",
            ),
            (
                format!("opencti_stream_exporter_events_per_file_bucket{{{n},le=\"+Inf\"}}"),
                "4",
            ),
            (
                format!("opencti_stream_exporter_events_per_file_sum{{{n}}}"),
                "200106",
            ),
            (
                format!("opencti_stream_exporter_events_per_file_count{{{n}}}"),
                "4",
            ),
            (
                format!(
                    "opencti_stream_exporter_upload_duration_seconds_bucket{{{n},le=\"0.01\"}}"
                ),
                "1",
            ),
            (
                format!("opencti_stream_exporter_upload_duration_seconds_bucket{{{n},le=\"1\"}}"),
                "2",
            ),
            (
                format!("opencti_stream_exporter_upload_duration_seconds_bucket{{{n},le=\"2.5\"}}"),
                "3",
            ),
            (
                format!("opencti_stream_exporter_upload_duration_seconds_bucket{{{n},le=\"60\"}}"),
                "3",
            ),
            (
                format!(
                    "opencti_stream_exporter_upload_duration_seconds_bucket{{{n},le=\"+Inf\"}}"
                ),
                "4",
            ),
            (
                format!("opencti_stream_exporter_upload_duration_seconds_sum{{{n}}}"),
                "92.505",
            ),
            (
                format!("opencti_stream_exporter_retries_total{{{n},cause=\"storage\"}}"),
                "1",
            ),
            (
                format!("opencti_stream_exporter_retries_total{{{n},cause=\"stream\"}}"),
                "0",
            ),
            (
                format!("opencti_stream_exporter_retries_total{{{n},cause=\"file_fetch\"}}"),
                "2",
            ),
            (
                format!("opencti_stream_exporter_dead_letters_total{{{n}}}"),
                "1",
            ),
            (
                format!("opencti_stream_exporter_file_fetch_failures_total{{{n}}}"),
                "3",
            ),
            (
                format!("opencti_stream_exporter_reconnects_total{{{n}}}"),
                "1",
            ),
            (
                format!("opencti_stream_exporter_cursor_lag_seconds{{{n}}}"),
                "12.5",
            ),
            (
                format!("opencti_stream_exporter_last_commit_timestamp_seconds{{{n}}}"),
                "1700000098",
            ),
            (
                format!(
                    "opencti_stream_exporter_policy_held_total{{{n},reason=\"above_ceiling\"}}"
                ),
                "2",
            ),
            (
                format!("opencti_stream_exporter_policy_held_total{{{n},reason=\"type_denied\"}}"),
                "1",
            ),
            (
                format!(
                    "opencti_stream_exporter_policy_held_total{{{n},reason=\"unknown_marking\"}}"
                ),
                "0",
            ),
        ];
        for (series, want) in expect {
            assert_eq!(
                value_of(&text, &series).as_deref(),
                Some(want),
                "{series}\n{text}"
            );
        }
    }

    #[test]
    fn fresh_metrics_have_every_series_but_the_two_without_meaning() {
        let text = Metrics::new().render_at("x", NOW);
        let families = check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        for (family, (_, samples)) in &families {
            let empty = family.ends_with("cursor_lag_seconds")
                || family.ends_with("last_commit_timestamp_seconds");
            assert_eq!(samples.is_empty(), empty, "{family}");
        }
        let held = &families["opencti_stream_exporter_policy_held_total"].1;
        assert_eq!(held.len(), Reason::ALL.len());
        assert_eq!(families["processed_messages_total"].1.len(), 4);
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        let text = Metrics::new().render_at("a\"b\\c\nd é", NOW);
        check(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(text.contains(r#"written_files_total{name="a\"b\\c\nd é"} 0"#));
        let families = check(&text).unwrap();
        assert_eq!(families["written_files_total"].1[0].1[0].1, "a\"b\\c\nd é");
    }

    #[test]
    fn the_checker_refuses_what_a_scraper_would() {
        let bad = [
            "x 1\n",                                                      // no HELP/TYPE
            "# HELP x h\n# TYPE x gauge\nx 1 1700000000000\n",            // timestamp
            "# HELP x h\n# TYPE x gauge\nx{a=\"b} 1\n",                   // unterminated
            "# HELP x h\n# TYPE x gauge\nx{a=\"\\q\"} 1\n",               // bad escape
            "# HELP x h\n# TYPE x gauge\nx 1\nx 2\n",                     // duplicate
            "# HELP x h\n# TYPE x gauge\nx one\n",                        // value
            "# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
            "# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
            "# HELP h h\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 2\n",
            "# HELP x h\n# TYPE x gauge\n# HELP y h\n# TYPE y gauge\ny 1\nx 1\n",
            "# HELP x h\n# TYPE x gauge\nx 1",
        ];
        for text in bad {
            assert!(check(text).is_err(), "accepted:\n{text}");
        }
        check("# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n").unwrap();
    }

    #[test]
    fn counters_add_up_across_threads() {
        let m = Arc::new(Metrics::new());
        std::thread::scope(|s| {
            for _ in 0..8 {
                let m = &m;
                s.spawn(move || {
                    for i in 0..10_000u64 {
                        m.inc_processed(ACTIONS[(i % 4) as usize]);
                        m.set_received_ms(i);
                    }
                });
            }
        });
        for a in ACTIONS {
            assert_eq!(m.processed(a), 20_000);
        }
        assert_eq!(m.received_ms.load(Relaxed), 9_999);
    }

    #[test]
    fn summary_line_has_the_main_figures() {
        let line = busy().summary_line_at(NOW);
        assert_eq!(
            line,
            "5 events (2 create, 1 update, 1 delete, 1 merge), 3 held by policy; \
             4 files, 0.0 MB written; 1 write errors, 1 dead letters, 3 files not fetched, \
             1 reconnects; cursor 12 s behind now"
        );
        assert!(Metrics::new()
            .summary_line_at(NOW)
            .ends_with("cursor not yet saved"));
    }

    #[test]
    fn seconds_print_without_exponent() {
        assert_eq!(Seconds(10_000).to_string(), "0.01");
        assert_eq!(Seconds(60_000_000).to_string(), "60");
        assert_eq!(Seconds(1_500_001).to_string(), "1.500001");
        assert_eq!(Seconds(0).to_string(), "0");
    }

    /// Sends `request` and reads the whole answer (5 s deadline).
    fn ask(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn serve_answers_a_real_get() {
        let m = Arc::new(busy());
        let addr = serve("127.0.0.1:0".parse().unwrap(), m.clone(), "exp".into()).unwrap();
        assert_ne!(addr.port(), 0);

        let answer = ask(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n",
        );
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
        check(body).unwrap_or_else(|e| panic!("{e}\n{body}"));
        assert!(body.contains("processed_messages_total{name=\"exp\",action=\"create\"} 2\n"));

        // Figures are read at each request.
        m.inc_processed("create");
        let answer = ask(addr, "GET /?x=1 HTTP/1.0\r\n\r\n");
        assert!(answer.contains("processed_messages_total{name=\"exp\",action=\"create\"} 3\n"));

        let answer = ask(addr, "HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(answer.ends_with("\r\n\r\n"), "no body for HEAD");

        let answer = ask(addr, "GET /nope HTTP/1.1\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
        let answer = ask(addr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(
            answer.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{answer}"
        );
        assert!(answer.contains("\r\nAllow: GET, HEAD\r\n"));
        let answer = ask(addr, "\r\n\r\n");
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        let answer = ask(
            addr,
            &format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000)),
        );
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    }

    #[test]
    fn a_silent_client_does_not_block_the_next_scrape_for_long() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let m = Arc::new(Metrics::new());
        std::thread::spawn(move || {
            accept_loop(listener, m, "x".into(), Duration::from_millis(200))
        });
        let _silent = TcpStream::connect(addr).unwrap();
        let started = Instant::now();
        let answer = ask(addr, "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"));
        // Bounded by the 5 s read deadline of `ask`; a hung server fails there.
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn serve_reports_an_address_in_use() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = serve(addr, Arc::new(Metrics::new()), "x".into()).unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[test]
    fn textfile_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("opencti_stream_exporter.prom");
        let m = busy();
        write_textfile(&path, &m, "exp").unwrap();
        let first = fs::read_to_string(&path).unwrap();
        check(&first).unwrap_or_else(|e| panic!("{e}\n{first}"));
        assert!(first.contains("written_files_total{name=\"exp\"} 4\n"));

        m.record_file(7, 70, Duration::from_millis(20));
        write_textfile(&path, &m, "exp").unwrap();
        let second = fs::read_to_string(&path).unwrap();
        check(&second).unwrap();
        assert!(second.contains("written_files_total{name=\"exp\"} 5\n"));

        // Only the target is left: no temporary file beside it.
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["opencti_stream_exporter.prom"]);

        let missing = dir.path().join("no/such/dir/x.prom");
        let err = write_textfile(&missing, &m, "exp").unwrap_err();
        assert!(err.to_string().contains("no/such/dir/x.prom"), "{err}");
        let names = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(names, 1);
    }
}
