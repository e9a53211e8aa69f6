//! Counters and gauges of a run (this file), and the three ways out of the
//! process: Prometheus text ([`Metrics::render`], in `exposition.rs`) over
//! HTTP ([`serve`]) or in a file for node-exporter's textfile collector
//! ([`write_textfile`], both in `serve.rs`), and one log line
//! ([`Metrics::summary_line`]). `process.rs` reads the `process_*` series.
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

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::policy::Reason;

mod exposition;
pub(crate) mod process;
mod serve;

use exposition::Exposition;
pub(crate) use serve::{serve, write_textfile};

/// Actions of `processed_messages_total`, the SSE names of data events
/// (the same list as `transform::DATA_EVENTS`, checked by a test; written
/// here so that the counters depend on no stage of the pipeline).
pub(crate) const ACTIONS: [&str; 4] = ["create", "update", "delete", "merge"];

/// Upper bounds of the `events_per_file` buckets (events); `+Inf` follows.
pub(crate) const EVENTS_PER_FILE_BOUNDS: [u64; 6] = [1, 10, 100, 1_000, 10_000, 100_000];

/// Upper bounds of the `upload_duration_seconds` buckets, in microseconds
/// (0.01 s to 60 s); `+Inf` follows.
pub(crate) const UPLOAD_BOUNDS_US: [u64; 12] = [
    10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
    30_000_000, 60_000_000,
];

/// What a retry was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RetryCause {
    /// Storing a file (S3 or directory).
    Storage,
    /// Reconnecting to the stream.
    Stream,
    /// Fetching an attached file from OpenCTI.
    FileFetch,
}

impl RetryCause {
    /// Every cause, in label order.
    pub(crate) const ALL: [RetryCause; 3] = [
        RetryCause::Storage,
        RetryCause::Stream,
        RetryCause::FileFetch,
    ];

    /// The `cause` label value: `storage`, `stream` or `file_fetch`.
    pub(crate) fn as_str(self) -> &'static str {
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
pub(crate) struct Snapshot {
    /// Data events received.
    pub(crate) received: u64,
    /// Millisecond part of the last complete id received.
    pub(crate) received_ms: u64,
    /// Millisecond part of the stream head announced at connection.
    pub(crate) head_ms: u64,
    /// Millisecond part of the committed cursor (0: none yet).
    pub(crate) cursor_ms: u64,
    /// Lines in the files written and committed.
    pub(crate) events_written: u64,
    /// Files written and committed.
    pub(crate) files_written: u64,
    /// Bytes written and committed.
    pub(crate) bytes_written: u64,
    /// Attached files exported without content.
    pub(crate) file_fetch_failures: u64,
    /// Lost stream connections.
    pub(crate) reconnects: u64,
    /// Dead letters kept.
    pub(crate) dead_letters: u64,
}

/// The figures of a run. Share it as `Arc<Metrics>`.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
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
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Metrics::default()
    }

    /// Counts one data event; `action` is its SSE name (other names are ignored).
    pub(crate) fn inc_processed(&self, action: &str) {
        if let Some(i) = ACTIONS.iter().position(|a| *a == action) {
            self.processed[i].fetch_add(1, Relaxed);
        }
    }

    /// Events counted for `action` so far.
    #[cfg(test)]
    pub(crate) fn processed(&self, action: &str) -> u64 {
        ACTIONS
            .iter()
            .position(|a| *a == action)
            .map_or(0, |i| self.processed[i].load(Relaxed))
    }

    /// Records a file stored: its events, its size in bytes, and how long
    /// the successful store took.
    pub(crate) fn record_file(&self, events: u64, bytes: u64, upload: Duration) {
        self.written_files.fetch_add(1, Relaxed);
        self.bytes_written.fetch_add(bytes, Relaxed);
        self.last_file_events.store(events, Relaxed);
        self.events_per_file
            .observe(&EVENTS_PER_FILE_BOUNDS, events);
        let us = u64::try_from(upload.as_micros()).unwrap_or(u64::MAX);
        self.upload_us.observe(&UPLOAD_BOUNDS_US, us);
    }

    /// Counts one failed attempt to store a file (retried or not).
    pub(crate) fn inc_write_error(&self) {
        self.write_errors.fetch_add(1, Relaxed);
    }

    /// Counts one retry.
    pub(crate) fn inc_retry(&self, cause: RetryCause) {
        self.retries[cause as usize].fetch_add(1, Relaxed);
    }

    /// Retries counted so far for `cause`.
    pub(crate) fn retries(&self, cause: RetryCause) -> u64 {
        self.retries[cause as usize].load(Relaxed)
    }

    /// Counts one event set aside as a dead letter.
    pub(crate) fn inc_dead_letter(&self) {
        self.dead_letters.fetch_add(1, Relaxed);
    }

    /// Counts attached files that could not be fetched (exported without content).
    pub(crate) fn add_file_fetch_failures(&self, n: u64) {
        self.file_fetch_failures.fetch_add(n, Relaxed);
    }

    /// Counts one lost stream connection.
    pub(crate) fn inc_reconnect(&self) {
        self.reconnects.fetch_add(1, Relaxed);
    }

    /// Counts one event held back by the export policy.
    pub(crate) fn inc_held(&self, reason: Reason) {
        self.held[reason.index()].fetch_add(1, Relaxed);
    }

    /// Sets the millisecond part of the last complete id received (never
    /// goes back).
    pub(crate) fn set_received_ms(&self, ms: u64) {
        self.received_ms.fetch_max(ms, Relaxed);
    }

    /// Records a commit: the millisecond part of the committed cursor and
    /// the time of the commit (epoch milliseconds).
    pub(crate) fn record_commit(&self, cursor_ms: u64, at_ms: u64) {
        self.cursor_ms.store(cursor_ms, Relaxed);
        self.last_commit_ms.store(at_ms, Relaxed);
    }

    /// Sets the committed cursor without a commit (e.g. from the saved state
    /// at start-up).
    pub(crate) fn set_cursor_ms(&self, ms: u64) {
        self.cursor_ms.store(ms, Relaxed);
    }

    /// Sets the end of the recovery (epoch milliseconds); 0 when none.
    pub(crate) fn set_recover_until_ms(&self, ms: u64) {
        self.recover_until_ms.store(ms, Relaxed);
    }

    /// Counts one data event received from the stream.
    pub(crate) fn inc_received(&self) {
        self.received.fetch_add(1, Relaxed);
    }

    /// Records that the stream connection is up (`true`) or lost.
    pub(crate) fn set_stream_connected(&self, up: bool) {
        self.stream_connected.store(u64::from(up), Relaxed);
    }

    /// Sets the millisecond part of the stream head the server announced.
    pub(crate) fn set_head_ms(&self, ms: u64) {
        self.head_ms.store(ms, Relaxed);
    }

    /// The figures the progress line and the run summary show.
    pub(crate) fn snapshot(&self) -> Snapshot {
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

    /// The main figures on one line, for a periodic info log.
    pub(crate) fn summary_line(&self) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashSet};
    use std::sync::Arc;

    pub(super) const NOW: u64 = 1_700_000_100_000;

    #[test]
    fn the_actions_are_the_data_events_of_the_transform() {
        assert_eq!(super::ACTIONS, crate::transform::DATA_EVENTS);
    }

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
    pub(super) fn check(text: &str) -> Result<BTreeMap<String, (String, Vec<Sample>)>, String> {
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

    pub(super) fn value_of(text: &str, series: &str) -> Option<String> {
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')
                .map(str::to_string)
        })
    }

    pub(super) fn busy() -> Metrics {
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
}
