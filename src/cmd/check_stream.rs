//! `check-stream`: the pre-flight an operator runs before trusting a setup,
//! and the command to run when something is wrong. One line per item, with
//! the fix when it fails. Reads the state but never changes it.

use std::io::Read;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::cli::CheckArgs;
use crate::config::{Config, OpenCti, Output};
use crate::dest::{Destination, ObjectMeta};
use crate::exit;
use crate::id::EventId;
use crate::state::{self, State, StateError};
use crate::stream::client::{ConnectError, StreamClient, StreamError};
use crate::stream::reader::Connected;
use crate::stream::sse::SseParser;

/// One checked item.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Check {
    /// What was checked.
    pub(crate) item: String,
    /// Whether it passed.
    pub(crate) ok: bool,
    /// What was found, or what is wrong and the fix.
    pub(crate) detail: String,
}

struct Report(Vec<Check>);

impl Report {
    fn add(&mut self, item: &str, result: Result<String, String>) -> bool {
        let ok = result.is_ok();
        let detail = result.unwrap_or_else(|e| e);
        self.0.push(Check {
            item: item.to_string(),
            ok,
            detail,
        });
        ok
    }
}

/// Runs the checks; exit 0 when all pass.
pub(crate) fn check(cfg: &Config, args: &CheckArgs) -> Result<i32> {
    let mut r = Report(Vec::new());
    let config_ok = report_config(cfg, &mut r);

    let saved = state::load(&cfg.state_path);
    let cursor = report_state(cfg, &mut r, &saved);

    if config_ok {
        check_stream(cfg, &mut r, cursor);
        check_storage(cfg, &mut r);
        if args.verify {
            let file_count = saved
                .as_ref()
                .ok()
                .and_then(|s| s.as_ref())
                .map(|s| s.file_count);
            verify_files(cfg, &mut r, file_count);
        }
    }

    let all_ok = r.0.iter().all(|c| c.ok);
    print_report(&r, all_ok, args.json)?;
    Ok(if all_ok { exit::OK } else { exit::FAILURE })
}

/// Reports the configuration, the export policy, the line size and the live stream id;
/// whether the configuration is valid for `run`.
fn report_config(cfg: &Config, r: &mut Report) -> bool {
    let config_ok = r.add(
        "configuration",
        cfg.check_for_run()
            .map(|_| match &cfg.file {
                Some(f) => format!("valid (`{}` and the environment)", f.display()),
                None => "valid (environment only)".to_string(),
            })
            .map_err(|e| e.to_string()),
    );
    r.add(
        "export policy",
        Ok(if cfg.policy.is_active() {
            cfg.policy.describe().replace('\n', "; ")
        } else {
            "none: every event is exported".to_string()
        }),
    );
    r.add("line size", Ok(line_size_advice(cfg.max_line_bytes)));
    if let Ok(stream) = cfg.stream() {
        r.add("live stream id", Ok(format!("`{}`", stream.live_stream_id)));
    } else if let Err(e) = cfg.stream() {
        r.add("live stream id", Err(e.to_string()));
    }
    config_ok
}

/// Reports the saved state; its cursor and whether a snapshot is in progress.
fn report_state(
    cfg: &Config,
    r: &mut Report,
    saved: &Result<Option<State>, StateError>,
) -> Option<(EventId, bool)> {
    match saved {
        Ok(Some(s)) => {
            let c = s.cursor().ok().flatten();
            r.add(
                "state",
                Ok(format!(
                    "`{}`: cursor `{}`, next file {}{}",
                    cfg.state_path.display(),
                    c.map(|c| c.to_string()).unwrap_or_else(|| "none".into()),
                    s.file_count + 1,
                    if s.recover_until.is_some() {
                        ", snapshot in progress"
                    } else {
                        ""
                    }
                )),
            );
            c.map(|c| (c, s.recover_until.is_some()))
        }
        Ok(None) => {
            r.add(
                "state",
                Ok(format!(
                    "none yet at `{}`: the next run is a first run",
                    cfg.state_path.display()
                )),
            );
            None
        }
        Err(e) => {
            r.add("state", Err(e.to_string()));
            None
        }
    }
}

/// Prints the checks, as JSON or one line each, secrets scrubbed, then the verdict.
fn print_report(r: &Report, all_ok: bool, json: bool) -> Result<()> {
    if json {
        println!(
            "{}",
            crate::secret::scrub_all(&serde_json::to_string_pretty(
                &serde_json::json!({"ok": all_ok, "checks": r.0})
            )?)
        );
    } else {
        for c in &r.0 {
            println!(
                "{} {}: {}",
                if c.ok { "ok  " } else { "FAIL" },
                c.item,
                crate::secret::scrub_all(&c.detail)
            );
        }
        println!(
            "{}",
            if all_ok {
                "all checks passed"
            } else {
                "some checks failed"
            }
        );
    }
    Ok(())
}

/// RabbitMQ 4's default `max_message_size`.
const RABBITMQ_DEFAULT_MAX_MESSAGE: usize = 16 << 20;

/// The largest message the stream-importer publishes for lines of up to
/// `max_line` bytes: base64 of the line, 4/3 of it, plus about 150 bytes.
pub(crate) fn importer_message_bytes(max_line: usize) -> usize {
    max_line.div_ceil(3) * 4 + 150
}

/// What `output.max_line_bytes` means for the importer's broker, and how
/// to raise it.
pub(crate) fn line_size_advice(max_line: usize) -> String {
    let message = importer_message_bytes(max_line);
    format!(
        "lines up to {max_line} bytes (`output.max_line_bytes`): the stream-importer publishes each \
         base64-encoded, messages of up to {message} bytes, which RabbitMQ 4 accepts by default \
         (`max_message_size` 16 MiB) for lines up to {} bytes; to carry larger attachments raise \
         `output.max_line_bytes` and the broker's `max_message_size` together \
         (`max_message_size` >= 4/3 x `output.max_line_bytes` + 1 KiB){}",
        crate::config::DEFAULT_MAX_LINE_BYTES,
        if message > RABBITMQ_DEFAULT_MAX_MESSAGE {
            "; WARNING: above RabbitMQ's default, make sure the broker was raised"
        } else {
            ""
        }
    )
}

/// Reports whether OpenCTI answers, the stream runs, and the saved cursor is still retained.
fn check_stream(cfg: &Config, r: &mut Report, cursor: Option<(EventId, bool)>) {
    let (Ok(opencti), Ok(stream)) = (cfg.opencti(), cfg.stream()) else {
        return;
    };
    let mut settings = stream.clone();
    settings.idle_timeout = Duration::from_secs(15);
    let client = match StreamClient::new(opencti, &settings, Arc::new(AtomicBool::new(false))) {
        Ok(c) => c,
        Err(e) => {
            r.add("OpenCTI", Err(e.to_string()));
            return;
        }
    };
    let Some(resp) = open_stream(opencti, &client, r) else {
        return;
    };
    let connected = read_connected(resp, Duration::from_secs(15));
    let Some(c) = connected else {
        r.add(
            "connected event",
            Err(
                "no `connected` event within 15 s: the stream is not answering as OpenCTI does"
                    .into(),
            ),
        );
        return;
    };
    r.add("connected event", Ok(c.describe()));
    r.add("cursor within retention", retention(&c, cursor));
}

/// Connects to the stream and reports whether OpenCTI answers, accepts the token and runs the
/// stream; the response when all three hold.
fn open_stream(opencti: &OpenCti, client: &StreamClient, r: &mut Report) -> Option<ureq::Response> {
    let resp = match client.connect(Some(EventId::default()), None) {
        Ok(resp) => resp,
        Err(ConnectError::Fatal(e @ StreamError::Unauthorized { .. })) => {
            r.add(
                "OpenCTI",
                Ok(format!(
                    "`{}` answers",
                    crate::secret::redact_url(&opencti.url)
                )),
            );
            r.add("token and stream access", Err(e.to_string()));
            return None;
        }
        Err(ConnectError::Fatal(e @ StreamError::Gone { .. })) => {
            r.add(
                "OpenCTI",
                Ok(format!(
                    "`{}` answers",
                    crate::secret::redact_url(&opencti.url)
                )),
            );
            r.add("token and stream access", Ok("accepted".into()));
            r.add("stream running", Err(e.to_string()));
            return None;
        }
        Err(ConnectError::Fatal(e)) => {
            r.add("OpenCTI", Err(e.to_string()));
            return None;
        }
        Err(ConnectError::NotAStream(ct)) => {
            r.add(
                "OpenCTI",
                Err(format!(
                    "`{}` answered with `{ct}` instead of an event stream: check `opencti.url`",
                    client.url()
                )),
            );
            return None;
        }
        Err(ConnectError::Retry(why)) => {
            r.add(
                "OpenCTI",
                Err(format!(
                    "cannot reach `{}`: {why}; check `opencti.url`, the network and the proxy",
                    crate::secret::redact_url(&opencti.url)
                )),
            );
            return None;
        }
    };
    r.add(
        "OpenCTI",
        Ok(format!(
            "`{}` answers",
            crate::secret::redact_url(&opencti.url)
        )),
    );
    r.add("token and stream access", Ok("accepted".into()));
    r.add("stream running", Ok(format!("`{}`", client.url())));
    Some(resp)
}

/// Whether the saved cursor is still within what the server retains, given its `connected` event.
fn retention(c: &Connected, cursor: Option<(EventId, bool)>) -> Result<String, String> {
    match cursor.map(|(cur, recovering)| (cur, recovering, c.gap_after(cur))) {
        Some((cur, recovering, Some(first))) => {
            if recovering {
                Ok(format!(
                    "cursor `{cur}` ({}) is older than the first retained event `{first}` ({}), but a snapshot is in progress: objects are sent again from the database",
                    cur.date(),
                    first.date()
                ))
            } else {
                Err(format!(
                    "cursor `{cur}` ({}) is older than the first event the server retains, `{first}` ({}): events between them were LOST on the server side and cannot be exported; raise the stream's retention, or start over with a snapshot (`state reset`, which keeps the file numbering)",
                    cur.date(),
                    first.date()
                ))
            }
        }
        Some((cur, _, None)) => Ok(format!("cursor `{cur}` ({}) is retained", cur.date())),
        None => Ok("no cursor yet".into()),
    }
}

fn read_connected(resp: ureq::Response, limit: Duration) -> Option<Connected> {
    let deadline = Instant::now() + limit;
    let mut reader = resp.into_reader();
    let mut parser = SseParser::new(1 << 20);
    let mut buf = vec![0u8; 16 * 1024];
    let mut found = None;
    while found.is_none() && Instant::now() < deadline {
        let n = match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        parser.feed(&buf[..n], &mut |m| {
            if m.event == "connected" && found.is_none() {
                found = Some(serde_json::from_slice(&m.data).unwrap_or_default());
            }
        });
    }
    found
}

fn check_storage(cfg: &Config, r: &mut Report) {
    let dests = match super::destinations(cfg) {
        Ok(d) => d,
        Err(e) => {
            r.add("storage", Err(format!("{e:#}")));
            return;
        }
    };
    let mut files = dests.files;
    let what = files.describe();
    if let Err(e) = files.prepare() {
        r.add("storage", Err(format!("{what}: {e}")));
        return;
    }
    r.add("storage", Ok(format!("{what} is reachable and exists")));
    // The importer reads every key that sorts after the folder name, so the
    // probe uses a key that sorts before it.
    let key = probe_key(&cfg.folder);
    let body = format!("opencti-stream-exporter probe {}\n", crate::clock::now_ms()).into_bytes();
    let meta = crate::dest::ObjectMeta::of_body(&body);
    let result = files
        .put(&key, &body, &meta)
        .and_then(|_| files.get(&key))
        .and_then(|got| {
            if got == body {
                Ok(())
            } else {
                Err(crate::dest::DestError::Permanent(
                    "read back different bytes".into(),
                ))
            }
        })
        .and_then(|_| files.delete(&key));
    r.add(
        "storage write, read, delete",
        result
            .map(|_| format!("probe `{key}` written, read back and deleted"))
            .map_err(|e| format!("{what}: {e}")),
    );
    // Another export folder whose name starts with this one's (or the
    // other way round) is read by the wrong importer.
    let own = format!("{}/", crate::marker::OWN_PREFIX);
    let clashes = files
        .list(&cfg.folder)
        .and_then(|prefixed| Ok((prefixed, files.list(&own)?)))
        .map(|(prefixed, markers)| crate::marker::folder_clashes(&cfg.folder, &prefixed, &markers));
    r.add(
        "folder read alone by its importer",
        match clashes {
            Ok(c) if c.is_empty() => Ok(format!(
                "no other key or export folder starts with `{}`",
                cfg.folder
            )),
            Ok(c) => Err(format!(
                "{}; give each export a folder whose name is not the start of another's",
                c.join("; ")
            )),
            Err(e) => Err(format!("{what}: {e}")),
        },
    );
    let mut dead = dests.dead;
    let dwhat = dead.describe();
    r.add(
        "dead-letter storage",
        dead.prepare()
            .map(|_| format!("{dwhat} is ready"))
            .map_err(|e| format!("{dwhat}: {e}")),
    );
    if let Ok(Output::S3 {
        bucket_done: Some(b),
        ..
    }) = cfg.output()
    {
        r.add(
            "importer done bucket",
            Ok(format!(
                "`{b}` is checked when settling an unconfirmed upload"
            )),
        );
    }
}

/// Reads back every exported object under the folder and checks it the way
/// the importer will read it: names, number sequence, key order, metadata,
/// SHA-256 and that every line is JSON.
fn verify_files(cfg: &Config, r: &mut Report, file_count: Option<u64>) {
    let mut dest = match super::destinations(cfg) {
        Ok(d) => d.files,
        Err(e) => {
            r.add("verify files", Err(format!("{e:#}")));
            return;
        }
    };
    let prefix = format!("{}/", cfg.folder);
    let keys = match dest.list(&prefix) {
        Ok(k) => k,
        Err(e) => {
            r.add("verify files", Err(e.to_string()));
            return;
        }
    };
    let mut problems = Vec::new();
    let mut numbers = Vec::new();
    let (mut lines_total, mut bytes_total) = (0u64, 0u64);
    for key in &keys {
        let Some(n) = crate::dest::naming::file_number(key) else {
            problems.push(format!(
                "`{key}` is not named `stream_<ms>_<N>.json`: the importer would stop on it"
            ));
            continue;
        };
        numbers.push(n);
        if let Some((lines, bytes)) = verify_object(dest.as_mut(), key, &mut problems) {
            lines_total += lines;
            bytes_total += bytes;
        }
    }
    problems.extend(numbering_problems(&numbers, file_count));
    let summary = format!(
        "{} files ({}), {} lines, {} bytes under `{prefix}`",
        keys.len(),
        match (numbers.first(), numbers.last()) {
            (Some(a), Some(b)) => format!("numbers {a}..{b}"),
            _ => "none".to_string(),
        },
        lines_total,
        bytes_total
    );
    r.add("verify files", files_verdict(summary, &problems));
}

/// Reads one stored file and checks each line is JSON and the stored
/// metadata matches the body; pushes what is wrong to `problems`. Returns
/// the file's lines and bytes, `None` when it cannot be read.
fn verify_object(
    dest: &mut dyn Destination,
    key: &str,
    problems: &mut Vec<String>,
) -> Option<(u64, u64)> {
    let body = match dest.get(key) {
        Ok(b) => b,
        Err(e) => {
            problems.push(e.to_string());
            return None;
        }
    };
    let recomputed = ObjectMeta::of_body(&body);
    let lines = body.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    for (i, line) in lines.enumerate() {
        if serde_json::from_slice::<serde::de::IgnoredAny>(line).is_err() {
            problems.push(format!("`{key}` line {}: not JSON", i + 1));
        }
    }
    match dest.meta(key) {
        Ok(Some(stored)) => problems.extend(metadata_problems(key, &stored, &recomputed)),
        Ok(None) => problems.push(format!("`{key}` has no metadata")),
        Err(e) => problems.push(e.to_string()),
    }
    Some((recomputed.events, body.len() as u64))
}

/// What differs between the metadata stored with `key` and the metadata
/// recomputed from its body.
fn metadata_problems(key: &str, stored: &ObjectMeta, body: &ObjectMeta) -> Vec<String> {
    let mut problems = Vec::new();
    if stored.sha256_hex != body.sha256_hex {
        problems.push(format!(
            "`{key}`: SHA-256 `{}` differs from its metadata `{}`",
            body.sha256_hex, stored.sha256_hex
        ));
    }
    if stored.events != body.events
        || stored.first_id != body.first_id
        || stored.last_id != body.last_id
    {
        problems.push(format!(
            "`{key}`: metadata says {} events `{}`..`{}`, the body holds {} `{}`..`{}`",
            stored.events,
            stored.first_id,
            stored.last_id,
            body.events,
            body.first_id,
            body.last_id
        ));
    }
    problems
}

/// The numbering rules the importer relies on: file numbers (in key order)
/// consecutive, and the last one the state's file count.
fn numbering_problems(numbers: &[u64], file_count: Option<u64>) -> Vec<String> {
    let mut problems = Vec::new();
    for pair in numbers.windows(2) {
        if pair[1] != pair[0] + 1 {
            problems.push(format!(
                "file numbers jump from {} to {} (in key order): the importer would stop there",
                pair[0], pair[1]
            ));
        }
    }
    if let (Some(last), Some(count)) = (numbers.last(), file_count) {
        if *last != count {
            problems.push(format!(
                "the last file is number {last} but the state counts {count}"
            ));
        }
    }
    problems
}

/// The summary alone, or the summary and the first 20 problems.
fn files_verdict(summary: String, problems: &[String]) -> Result<String, String> {
    if problems.is_empty() {
        return Ok(summary);
    }
    let shown = &problems[..problems.len().min(20)];
    let more = problems.len() - shown.len();
    Err(format!(
        "{summary}; {} problems: {}{}",
        problems.len(),
        shown.join("; "),
        if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        }
    ))
}

/// A key that the importer never reads: it sorts before `folder`.
pub(crate) fn probe_key(folder: &str) -> String {
    let mut bytes = folder.as_bytes().to_vec();
    if let Some(b) = bytes.first_mut() {
        *b = b.saturating_sub(1).max(b'!');
    }
    let head: String = String::from_utf8_lossy(&bytes)
        .chars()
        .take_while(|c| *c != '/')
        .collect();
    format!(
        "{head}.opencti-stream-exporter-probe-{}",
        std::process::id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_line_limit_fits_the_brokers_default_message_size() {
        let default = crate::config::DEFAULT_MAX_LINE_BYTES;
        // A line of that size (newline included) makes a message RabbitMQ
        // takes, with room to spare for the importer's envelope; 12 MiB
        // exactly would not.
        assert!(importer_message_bytes(default) + 1000 <= RABBITMQ_DEFAULT_MAX_MESSAGE);
        assert!(importer_message_bytes(12 << 20) > RABBITMQ_DEFAULT_MAX_MESSAGE);
        assert!(!line_size_advice(default).contains("WARNING"));
        assert!(line_size_advice(12 << 20).contains("WARNING"));
    }

    #[test]
    fn file_numbers_must_be_consecutive_and_end_at_the_state_count() {
        assert!(numbering_problems(&[1, 2, 3], Some(3)).is_empty());
        assert!(numbering_problems(&[], Some(0)).is_empty());
        assert!(numbering_problems(&[4, 5], None).is_empty());
        let p = numbering_problems(&[1, 2, 4], Some(4));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("jump from 2 to 4"), "{p:?}");
        let p = numbering_problems(&[1, 2], Some(3));
        assert_eq!(
            p,
            ["the last file is number 2 but the state counts 3".to_string()]
        );
    }

    #[test]
    fn metadata_that_differs_from_the_body_is_named() {
        let body = ObjectMeta::of_body(b"{\"id\":\"1-0\"}\n{\"id\":\"2-0\"}\n");
        assert!(metadata_problems("k", &body, &body).is_empty());
        let mut stored = body.clone();
        stored.sha256_hex = "00".repeat(32);
        stored.last_id = "3-0".into();
        let p = metadata_problems("f/k", &stored, &body);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("`f/k`: SHA-256"), "{p:?}");
        assert!(
            p[1].contains("metadata says 2 events `1-0`..`3-0`"),
            "{p:?}"
        );
    }

    #[test]
    fn the_verdict_shows_twenty_problems_and_counts_the_rest() {
        assert_eq!(files_verdict("s".into(), &[]), Ok("s".into()));
        let problems: Vec<String> = (1..=23).map(|n| format!("p{n}")).collect();
        let text = files_verdict("s".into(), &problems).unwrap_err();
        assert!(text.starts_with("s; 23 problems: p1; p2;"), "{text}");
        assert!(text.contains("p20; and 3 more"), "{text}");
        assert!(!text.contains("p21"), "{text}");
    }

    #[test]
    fn probe_key_sorts_before_the_folder() {
        for folder in ["opencti", "a", "exports/opencti", "0x"] {
            let k = probe_key(folder);
            assert!(k.as_str() < folder, "{k} !< {folder}");
        }
    }
}
