//! The text exposition format 0.0.4: the counters of [`Metrics`] as the
//! Prometheus text a scrape or node-exporter's textfile collector reads.
//! Pure: the time is an argument, the text is returned; serving it is
//! [`super::serve`]'s job.

use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use super::{process, Metrics, RetryCause, ACTIONS, EVENTS_PER_FILE_BOUNDS, UPLOAD_BOUNDS_US};
use crate::policy::Reason;

const PREFIX: &str = "opencti_stream_exporter_";

impl Metrics {
    /// The text exposition format 0.0.4, for connector `name`, with the
    /// `process_*` series of this process (for a scrape).
    pub(crate) fn render(&self, name: &str) -> String {
        let mut out = self.exposition_at(name, crate::clock::now_ms());
        if let Some(p) = process::read() {
            process::render(&mut out, &p);
        }
        out.text
    }

    /// The run's figures without the `process_*` series: for the textfile,
    /// read after the process is gone, by a node-exporter that has its own.
    pub(crate) fn render_run(&self, name: &str) -> String {
        self.render_at(name, crate::clock::now_ms())
    }

    fn render_at(&self, name: &str, now_ms: u64) -> String {
        self.exposition_at(name, now_ms).text
    }

    fn exposition_at(&self, name: &str, now_ms: u64) -> Exposition {
        let mut out = Exposition::new(name);
        self.connector_series(&mut out);
        self.file_series(&mut out);
        self.progress_series(&mut out, now_ms);
        out
    }

    /// The series named as the OpenCTI connectors' own (no prefix), first.
    fn connector_series(&self, out: &mut Exposition) {
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
    }

    /// The prefixed series of the files written: sizes, times, retries, losses.
    fn file_series(&self, out: &mut Exposition) {
        out.counter(
            &prefixed("bytes_written_total"),
            "Bytes of the files written and committed",
            &self.bytes_written,
        );
        out.gauge(
            &prefixed("last_file_events"),
            "Events in the last file written",
            self.last_file_events.load(Relaxed),
        );
        let (counts, sum) = self.events_per_file.read();
        let bounds = EVENTS_PER_FILE_BOUNDS.map(|b| b.to_string());
        out.histogram(
            &prefixed("events_per_file"),
            "Events per file written",
            &bounds,
            &counts,
            &sum,
        );
        let (counts, sum_us) = self.upload_us.read();
        let bounds = UPLOAD_BOUNDS_US.map(|b| Seconds(b).to_string());
        out.histogram(
            &prefixed("upload_duration_seconds"),
            "Time to store a file, successful attempt only",
            &bounds,
            &counts,
            &Seconds(sum_us),
        );
        let retries = prefixed("retries_total");
        out.family(&retries, "counter", "Retries by cause");
        for cause in RetryCause::ALL {
            out.sample(
                &retries,
                &[("cause", cause.as_str())],
                self.retries[cause as usize].load(Relaxed),
            );
        }
        out.counter(
            &prefixed("dead_letters_total"),
            "Events set aside as dead letters",
            &self.dead_letters,
        );
        out.counter(
            &prefixed("file_fetch_failures_total"),
            "Attached files that could not be fetched and were exported without content",
            &self.file_fetch_failures,
        );
        out.counter(
            &prefixed("reconnects_total"),
            "Lost stream connections",
            &self.reconnects,
        );
    }

    /// The prefixed series of progress at `now_ms`: lag, last commit, policy, connection.
    fn progress_series(&self, out: &mut Exposition, now_ms: u64) {
        let lag = prefixed("cursor_lag_seconds");
        out.family(
            &lag,
            "gauge",
            "Seconds between now and the committed cursor (absent before the first cursor)",
        );
        let cursor = self.cursor_ms.load(Relaxed);
        if cursor > 0 {
            out.sample(&lag, &[], Seconds(now_ms.saturating_sub(cursor) * 1000));
        }
        let commit = prefixed("last_commit_timestamp_seconds");
        out.family(
            &commit,
            "gauge",
            "Time of the last commit in epoch seconds (absent before the first)",
        );
        let at = self.last_commit_ms.load(Relaxed);
        if at > 0 {
            out.sample(&commit, &[], Seconds(at * 1000));
        }
        let held = prefixed("policy_held_total");
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
            &prefixed("stream_connected"),
            "1 while connected to the live stream, 0 while connecting or reconnecting",
            self.stream_connected.load(Relaxed),
        );
    }
}

/// `s` with the exporter's own prefix.
fn prefixed(s: &str) -> String {
    format!("{PREFIX}{s}")
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
pub(super) struct Exposition {
    pub(super) text: String,
    name: String,
}

impl Exposition {
    pub(super) fn new(name: &str) -> Self {
        Exposition {
            text: String::with_capacity(4096),
            name: escape_label(name),
        }
    }

    pub(super) fn family(&mut self, metric: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {metric} {help}");
        let _ = writeln!(self.text, "# TYPE {metric} {kind}");
    }

    pub(super) fn sample(
        &mut self,
        metric: &str,
        labels: &[(&str, &str)],
        value: impl fmt::Display,
    ) {
        let _ = write!(self.text, "{metric}{{name=\"{}\"", self.name);
        for (k, v) in labels {
            let _ = write!(self.text, ",{k}=\"{}\"", escape_label(v));
        }
        let _ = writeln!(self.text, "}} {value}");
    }

    pub(super) fn counter(&mut self, metric: &str, help: &str, value: &AtomicU64) {
        self.family(metric, "counter", help);
        self.sample(metric, &[], value.load(Relaxed));
    }

    pub(super) fn gauge(&mut self, metric: &str, help: &str, value: u64) {
        self.family(metric, "gauge", help);
        self.sample(metric, &[], value);
    }

    /// `bounds` as printed in `le`; `cumulative` has one more count (`+Inf`).
    pub(super) fn histogram(
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

#[cfg(test)]
mod tests {
    use super::super::tests::{busy, check, value_of, NOW};
    use super::*;

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
    fn seconds_print_without_exponent() {
        assert_eq!(Seconds(10_000).to_string(), "0.01");
        assert_eq!(Seconds(60_000_000).to_string(), "60");
        assert_eq!(Seconds(1_500_001).to_string(), "1.500001");
        assert_eq!(Seconds(0).to_string(), "0");
    }
}
