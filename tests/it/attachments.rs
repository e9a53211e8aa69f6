//! Attached files (PROTOCOL.md §4) at field scale: fetched concurrently, in
//! stream order, within deadlines and size caps, never from outside
//! `/storage/get/`, and never into a line the importer cannot carry. Each
//! test runs the real exporter against the simulator, with the simulator's
//! request log (`--request-log`) as the witness of what was asked.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;

use crate::support::*;

const EXT: &str = "extension-definition--ea279b3e-5c71-4632-ac08-831c66a786ba";
const DEADLINE: Duration = Duration::from_secs(120);

/// A directory export of `sim` with `extra` YAML appended (sections of its
/// own) and `output_extra` lines added to the `output` section.
struct Run {
    _dir: tempfile::TempDir,
    out: PathBuf,
    dead: PathBuf,
    cfg: PathBuf,
}

impl Run {
    fn new(sim: &Sim, output_extra: &str, extra: &str) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let mut yaml = dir_config(sim, &out, dir.path());
        if !output_extra.is_empty() {
            yaml = yaml.replacen("output:\n", &format!("output:\n  {output_extra}\n"), 1);
        }
        yaml.push_str(extra);
        let cfg = write_config(dir.path(), &yaml);
        Run {
            dead: dir.path().join("out-dead-letter"),
            out,
            cfg,
            _dir: dir,
        }
    }

    fn once(&self) -> Outcome {
        let outcome = exporter()
            .config_file(&self.cfg)
            .args(["run", "--once"])
            .run(DEADLINE);
        outcome.assert_success();
        outcome
    }

    fn lines(&self) -> Vec<Value> {
        all_lines(&read_export_lines_dir(&self.out, "opencti"))
    }

    /// Every line of every export file, raw, with its newline.
    fn raw_lines(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for path in files_under(&self.out.join("opencti")) {
            let body = std::fs::read(&path).unwrap();
            out.extend(body.split_inclusive(|b| *b == b'\n').map(<[u8]>::to_vec));
        }
        out
    }

    /// The records kept beside the dead letters.
    fn dead_letters(&self) -> Vec<Value> {
        files_under(&self.dead)
            .iter()
            .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
            .collect()
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The simulator's request log: (method, path, carried the token, status).
fn request_log(path: &Path) -> Vec<(String, String, bool, u16)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (
                f[0].to_string(),
                f[1].to_string(),
                f[2] == "token",
                f[3].parse().unwrap(),
            )
        })
        .collect()
}

/// The attached-file entries of the exported lines: (event id, entry).
fn entries(lines: &[Value]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for line in lines {
        if let Some(list) = line["data"]["extensions"][EXT]["files"].as_array() {
            for e in list {
                out.push((line["id"].as_str().unwrap().to_string(), e.clone()));
            }
        }
    }
    out
}

fn decode(b64: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

#[test]
fn a_trickling_file_server_cannot_stall_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.log");
    let sim_args = ["--events", "200", "--files-ratio", "0.1"];
    let mut args = sim_args.to_vec();
    args.extend([
        "--heartbeat-ms",
        "300",
        "--trickle-every",
        "1",
        "--trickle-ms",
        "200",
        "--request-log",
        log.to_str().unwrap(),
    ]);
    let sim = Sim::start(&args);
    let run = Run::new(&sim, "", "files:\n  deadline_sec: 2\n");
    let started = std::time::Instant::now();
    let outcome = run.once();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the run ended, but only after {:?}",
        started.elapsed()
    );
    let lines = run.lines();
    assert_no_loss(&lines, &sim_dump(&sim_args));
    let fetchable: Vec<_> = entries(&lines)
        .into_iter()
        .filter(|(_, e)| e["uri"] != "unknown")
        .collect();
    assert!(!fetchable.is_empty(), "the stream has attached files");
    for (id, e) in &fetchable {
        assert!(
            e.get("data").is_none(),
            "event {id}: a trickled file has data"
        );
    }
    let summary = format!("{}{}", outcome.stdout, outcome.stderr);
    assert!(
        summary.contains(&format!("{} files not fetched", fetchable.len())),
        "the run counts the files not fetched:\n{summary}"
    );
    // Every trickled file is kept aside with the bytes received.
    let kept = run.dead_letters();
    assert_eq!(kept.len(), fetchable.len(), "{kept:?}");
    let served = sim_dump_files(&sim_args);
    for k in &kept {
        let reason = k["reason"].as_str().unwrap();
        assert!(reason.contains("files.deadline_sec"), "{reason}");
        let uri = reason.split('`').nth(1).unwrap();
        let key = uri.strip_prefix("/storage/get/").unwrap();
        let got = decode(k["data_base64"].as_str().unwrap());
        let whole = decode(&served[key]);
        assert!(
            !got.is_empty() && whole.starts_with(&got),
            "the {} bytes kept are not the first bytes of `{key}`",
            got.len()
        );
        assert!(fetchable.iter().any(|(id, _)| k["id"] == *id.as_str()));
    }
}

#[test]
fn hostile_uris_are_never_requested_and_redirects_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.log");
    let gen = ["--events", "300", "--files-ratio", "0.2", "--hostile-uris"];
    let mut args = gen.to_vec();
    args.extend([
        "--heartbeat-ms",
        "300",
        "--request-log",
        log.to_str().unwrap(),
    ]);
    let sim = Sim::start(&args);
    let run = Run::new(&sim, "", "files:\n  retries: 5\n");
    run.once();
    let lines = run.lines();
    assert_no_loss(&lines, &sim_dump(&gen));

    let requests = request_log(&log);
    assert!(!requests.is_empty());
    for (method, path, token, status) in &requests {
        let lower = path.to_ascii_lowercase();
        assert!(
            !lower.contains("evil")
                && !lower.contains("..")
                && !lower.contains("%2e")
                && !lower.contains("%2f")
                && !lower.contains("%5c")
                && !lower.contains('\\'),
            "{method} {path} ({status}) was requested"
        );
        assert!(
            path.starts_with("/stream/") || path.starts_with("/storage/get/"),
            "{path} was requested"
        );
        assert!(token, "{path} was requested without the token");
    }
    // Each hostile entry is exported without content.
    let all = entries(&lines);
    let hostile: Vec<_> = all
        .iter()
        .filter(|(_, e)| {
            let uri = e["uri"].as_str().unwrap();
            uri.contains("evil") || uri.contains("missing") || uri.contains("redirect")
        })
        .collect();
    assert!(hostile.len() >= 6, "{}", hostile.len());
    for (id, e) in &hostile {
        assert!(e.get("data").is_none(), "event {id}: {e} has data");
    }
    // A 404 is final and a redirect is not followed: one request each.
    let asked = |needle: &str| requests.iter().filter(|r| r.1.contains(needle)).count();
    let listed = |needle: &str| {
        hostile
            .iter()
            .filter(|(_, e)| e["uri"].as_str().unwrap().contains(needle))
            .count()
    };
    assert_eq!(asked("missing/gone.pdf"), listed("missing/gone.pdf"));
    assert!(requests
        .iter()
        .filter(|r| r.1.contains("missing/gone.pdf"))
        .all(|r| r.3 == 404));
    assert_eq!(asked("redirect/moved.pdf"), listed("redirect/moved.pdf"));
    // The real files were all fetched.
    let served = sim_dump_files(&gen);
    let mut fetched = 0;
    for (id, e) in &all {
        if hostile.iter().any(|(_, h)| h["name"] == e["name"]) {
            continue;
        }
        if let Some(key) = e["uri"].as_str().unwrap().strip_prefix("/storage/get/") {
            assert_eq!(e["data"].as_str(), Some(served[key].as_str()), "{id} {key}");
            fetched += 1;
        }
    }
    assert!(fetched > 0);
}

#[test]
fn server_errors_are_retried_and_output_keeps_stream_order() {
    errors_retried_in_stream_order(&[]);
}

/// The same with files sent as OpenCTI sends them, chunked with no length:
/// their room in the budget is only known as they arrive.
#[test]
fn server_errors_are_retried_with_files_of_unknown_length() {
    errors_retried_in_stream_order(&["--file-chunked"]);
}

/// A run with 1 file request in 3 failing with 500, files 20 ms away and
/// the smallest fetch budget: every event in order, every file fetched,
/// each about once; `sim_extra` is added to the simulator's arguments.
fn errors_retried_in_stream_order(sim_extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.log");
    let gen = ["--events", "800", "--files-ratio", "0.3"];
    let mut args = gen.to_vec();
    args.extend(sim_extra);
    args.extend([
        "--heartbeat-ms",
        "300",
        "--file-latency-ms",
        "20",
        "--file-fail-every",
        "3",
        "--request-log",
        log.to_str().unwrap(),
    ]);
    let sim = Sim::start(&args);
    // The smallest fetch budget (1 MiB): files wait for room most of the
    // time, and that waiting must use up neither retries nor requests.
    let run = Run::new(
        &sim,
        "",
        "files:\n  retries: 12\n  concurrency: 16\n  buffer_bytes: 1048576\n",
    );
    let outcome = run.once();
    let said = format!("{}{}", outcome.stdout, outcome.stderr);
    assert!(said.contains(" 0 files not fetched"), "{said}");
    // Order: every event, in the simulator's order, with many fetches in flight.
    let lines = run.lines();
    assert_no_loss(&lines, &sim_dump(&gen));
    let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    let dumped = sim_dump(&gen);
    let want: Vec<&str> = dumped.iter().map(|d| d["id"].as_str().unwrap()).collect();
    assert_eq!(ids, want, "lines in stream order");
    // Every file fetched despite one request in three failing with 500.
    let served = sim_dump_files(&gen);
    let mut checked = 0;
    for (id, e) in entries(&lines) {
        if let Some(key) = e["uri"].as_str().unwrap().strip_prefix("/storage/get/") {
            assert_eq!(e["data"].as_str(), Some(served[key].as_str()), "{id} {key}");
            checked += 1;
        }
    }
    assert!(checked > 150, "{checked}");
    let requests = request_log(&log);
    let failed: Vec<_> = requests.iter().filter(|r| r.3 == 500).collect();
    assert!(!failed.is_empty());
    // With the budget this small, files wait for room before they are
    // asked for, not after: each is received about once, not again and
    // again as long as the budget stays full.
    let received = requests
        .iter()
        .filter(|r| r.1.starts_with("/storage/get/") && r.3 == 200)
        .count();
    assert!(
        received <= checked + checked / 20,
        "{received} files received for {checked} exported"
    );
    for f in failed {
        assert!(
            requests.iter().any(|r| r.1 == f.1 && r.3 == 200),
            "{} failed with 500 and was not tried again",
            f.1
        );
    }
}

#[test]
fn files_over_the_cap_and_lines_over_the_limit_are_kept_aside() {
    let gen = [
        "--events",
        "600",
        "--files-ratio",
        "0.3",
        "--avg-size",
        "5000",
    ];
    let mut args = gen.to_vec();
    args.extend(["--heartbeat-ms", "300"]);
    let sim = Sim::start(&args);
    let max_line = 16_000;
    let cap = 8192;
    let run = Run::new(
        &sim,
        &format!("max_line_bytes: {max_line}"),
        &format!("files:\n  max_bytes: {cap}\n"),
    );
    run.once();
    for line in run.raw_lines() {
        assert!(line.len() <= max_line, "a line of {} bytes", line.len());
    }
    let dumped = sim_dump(&gen);
    let served = sim_dump_files(&gen);
    let kept = run.dead_letters();
    let mut over_cap = 0;
    let mut over_line = 0;
    let mut whole_events = 0;
    for k in &kept {
        let reason = k["reason"].as_str().unwrap();
        if reason.starts_with("attached file") {
            let uri = reason.split('`').nth(1).unwrap();
            let key = uri.strip_prefix("/storage/get/").unwrap();
            let whole = decode(&served[key]);
            let got = decode(k["data_base64"].as_str().unwrap());
            if reason.contains("files.max_bytes") {
                assert!(whole.len() > cap, "{key} is under the cap");
                assert!(
                    got == whole[..cap],
                    "{} bytes kept of {key}, not its first {cap}",
                    got.len()
                );
                over_cap += 1;
            } else {
                assert!(reason.contains("output.max_line_bytes"), "{reason}");
                assert!(
                    got == whole,
                    "{} bytes kept of {key}, not all {}",
                    got.len(),
                    whole.len()
                );
                over_line += 1;
            }
        } else {
            assert!(reason.contains("output.max_line_bytes"), "{reason}");
            whole_events += 1;
        }
    }
    assert!(
        over_cap > 0 && over_line > 0 && whole_events > 0,
        "files over the cap: {over_cap}, files over the line limit: {over_line}, events over it: {whole_events}"
    );
    // Every event is either a line or a dead letter, in stream order.
    let lines = run.lines();
    assert_eq!(lines.len() + whole_events, dumped.len());
    // The events kept as dead letters, by id and payload (a dependency
    // group shares an id).
    let dead_events: Vec<(String, Value)> = kept
        .iter()
        .filter(|k| !k["reason"].as_str().unwrap().starts_with("attached file"))
        .map(|k| {
            (
                k["id"].as_str().unwrap().to_string(),
                serde_json::from_str(k["data"].as_str().unwrap()).unwrap(),
            )
        })
        .collect();
    let rest: Vec<Value> = dumped
        .iter()
        .filter(|d| {
            !dead_events
                .iter()
                .any(|(id, payload)| d["id"] == *id.as_str() && *payload == d["data"])
        })
        .cloned()
        .collect();
    assert_eq!(rest.len(), dumped.len() - whole_events);
    assert_no_loss(&lines, &rest);
    // Files left out of a line have no data there and are kept aside,
    // unless the event alone is near the limit (then they are not fetched);
    // the others are whole.
    let mut near_limit = 0;
    for line in &lines {
        let id = line["id"].as_str().unwrap();
        let len = serde_json::to_string(line).unwrap().len();
        let Some(list) = line["data"]["extensions"][EXT]["files"].as_array() else {
            continue;
        };
        for e in list {
            let Some(key) = e["uri"].as_str().unwrap().strip_prefix("/storage/get/") else {
                continue;
            };
            match e["data"].as_str() {
                Some(d) => assert_eq!(d, served[key], "{id} {key}"),
                None if kept
                    .iter()
                    .any(|k| k["id"] == id && k["reason"].as_str().unwrap().contains(key)) => {}
                None => {
                    assert!(
                        len + 2048 > max_line,
                        "{id}: `{key}` is neither in the line of {len} bytes nor kept aside"
                    );
                    near_limit += 1;
                }
            }
        }
    }
    assert!(near_limit < over_line + over_cap);
}

/// The peak memory a run's summary reports, in MiB.
fn peak_memory_mib(outcome: &Outcome) -> f64 {
    let text = format!("{}{}", outcome.stdout, outcome.stderr);
    let at = text
        .find("peak memory ")
        .unwrap_or_else(|| panic!("no peak memory in the summary:\n{text}"));
    text[at + "peak memory ".len()..]
        .split(" MiB")
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unreadable peak memory:\n{text}"))
}

/// A run with `consumer_count` workers.
fn once_with_workers(run: &Run, workers: &str) -> Outcome {
    let outcome = exporter()
        .config_file(&run.cfg)
        .args(["run", "--once", "--consumer-count", workers])
        .run(DEADLINE);
    outcome.assert_success();
    outcome
}

/// With every file request answered after 40 ms, as from an OpenCTI across
/// a network, the files of the events waiting for the workers are fetched
/// meanwhile: the simulator sees `files.concurrency` requests at once, even
/// with one worker. (Fetched one chunk of a socket read at a time, it saw
/// a handful.)
#[test]
fn file_requests_are_kept_in_flight_ahead_of_the_workers() {
    let gen = ["--events", "3000", "--files-ratio", "0.05"];
    let mut args = gen.to_vec();
    args.extend(["--heartbeat-ms", "300", "--file-latency-ms", "40"]);
    let sim = Sim::start(&args);
    let run = Run::new(&sim, "", "files:\n  concurrency: 32\n");
    let outcome = once_with_workers(&run, "1");
    assert_no_loss(&run.lines(), &sim_dump(&gen));
    let summary = format!("{}{}", outcome.stdout, outcome.stderr);
    assert!(summary.contains(", 0 files not fetched"), "{summary}");
    let stats: Value = serde_json::from_str(
        &ureq::get(&format!("{}/_sim/stats", sim.url()))
            .call()
            .unwrap()
            .into_string()
            .unwrap(),
    )
    .unwrap();
    let most = stats["files_in_flight_max"].as_u64().unwrap();
    assert!(
        most >= 24,
        "at most {most} file requests in flight of the 32 allowed ({stats})"
    );
}

/// Large attachments with 16 workers: memory stays within 2 ×
/// `output.max_line_bytes` (12 MiB less 1 KiB) + 32 MiB whatever the number of
/// workers, for files that fit a line (1.5 MB, a line of about 4 MB each)
/// and for files over `files.max_bytes` (6 MB: their first 4 MiB are kept
/// aside). Each run reports its peak memory; nothing is lost. (Before the
/// budget charged lines and kept records until stored, such runs took
/// 100 to 270 MiB.)
#[test]
fn large_attachments_stay_within_the_memory_bound() {
    const BOUND_MIB: f64 = 2.0 * 12.0 + 32.0;
    for (bytes, over_cap) in [("1500000", false), ("6000000", true)] {
        let gen = [
            "--events",
            "200",
            "--files-ratio",
            "0.3",
            "--large-file-every",
            "2",
            "--large-file-bytes",
            bytes,
        ];
        let mut args = gen.to_vec();
        args.extend(["--heartbeat-ms", "300"]);
        let sim = Sim::start(&args);
        let run = Run::new(&sim, "", "");
        let outcome = once_with_workers(&run, "16");
        let lines = run.lines();
        assert_no_loss(&lines, &sim_dump(&gen));
        let large = entries(&lines)
            .into_iter()
            .filter(|(_, e)| {
                e.get("data")
                    .is_some_and(|d| d.as_str().unwrap_or("").len() > 1_500_000)
            })
            .count();
        let kept = run.dead_letters();
        if over_cap {
            assert!(kept.len() >= 10, "{} files kept aside", kept.len());
            assert_eq!(large, 0, "a file over the cap was exported whole");
        } else {
            assert!(large >= 10, "{large} large files exported");
            assert!(kept.is_empty(), "{kept:?}");
        }
        let peak = peak_memory_mib(&outcome);
        assert!(
            peak <= BOUND_MIB,
            "{bytes}-byte files: peak memory {peak} MiB, over the bound of {BOUND_MIB} MiB"
        );
    }
}
