//! Operating the real binary as a service: the log formats
//! (`OPENCTI_JSON_LOGGING`), read-only commands that leave no file behind,
//! the acknowledgement of a stop signal, and the `process_*` and
//! `stream_connected` metrics.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const LONG: Duration = Duration::from_secs(120);

fn files_under(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        out.insert(p.strip_prefix(dir).unwrap().display().to_string());
        if p.is_dir() {
            for sub in files_under(&p) {
                out.insert(format!("{}/{sub}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

#[test]
fn off_a_terminal_every_log_line_is_a_pycti_json_line_without_secrets() {
    let sim = Sim::start(&["--events", "2000", "--heartbeat-ms", "300"]);
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir_config(&sim, &dir.path().join("out"), dir.path())
        .replace("connector:\n", "connector:\n  name: \"exporter-json\"\n");
    let cfg = write_config(dir.path(), &yaml);
    let out = exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(LONG);
    out.assert_success();
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert!(lines.len() >= 3, "{out}");
    let mut levels = BTreeSet::new();
    for line in &lines {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\n{out}"));
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["timestamp", "level", "name", "message", "attributes"],
            "{line}"
        );
        let ts = v["timestamp"].as_str().unwrap();
        assert!(
            ts.len() == 27 && ts.ends_with('Z') && &ts[10..11] == "T",
            "{line}"
        );
        assert_eq!(v["name"], "exporter-json", "{line}");
        levels.insert(v["level"].as_str().unwrap().to_string());
    }
    assert!(levels.contains("INFO"), "{levels:?}");
    for l in &levels {
        assert!(
            ["DEBUG", "INFO", "WARNING", "ERROR"].contains(&l.as_str()),
            "{l}"
        );
    }
    assert!(!out.stderr.contains(&sim.token()), "{out}");
    assert!(!out.stdout.contains(&sim.token()), "{out}");
}

#[test]
fn opencti_json_logging_false_gives_text_and_a_bad_value_is_named() {
    let sim = Sim::start(&["--events", "500", "--heartbeat-ms", "300"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &dir_config(&sim, &dir.path().join("out"), dir.path()),
    );
    let out = exporter()
        .config_file(&cfg)
        .env("OPENCTI_JSON_LOGGING", "false")
        .args(["run", "--once"])
        .run(LONG);
    out.assert_success();
    assert!(out.stderr.lines().count() >= 2, "{out}");
    for line in out.stderr.lines() {
        assert!(serde_json::from_str::<Value>(line).is_err(), "{line}");
        assert!(
            line.contains(" INFO ") || line.contains(" WARNING "),
            "{line}"
        );
    }
    assert!(!out.stderr.contains(&sim.token()), "{out}");
    let bad = exporter()
        .config_file(&cfg)
        .env("OPENCTI_JSON_LOGGING", "maybe")
        .args(["state", "show"])
        .run(LONG);
    bad.assert_success();
    let first: Value = serde_json::from_str(bad.stderr.lines().next().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}\n{bad}"));
    assert_eq!(first["level"], "WARNING");
    assert!(
        first["message"]
            .as_str()
            .unwrap()
            .contains("OPENCTI_JSON_LOGGING=maybe"),
        "{bad}"
    );
}

#[test]
fn a_secret_echoed_in_an_error_is_scrubbed_in_both_formats() {
    // A token in the URL's password place: the connection error names the
    // URL; neither format may show the password.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let yaml = format!(
        "opencti:\n  url: \"http://user:pw-secret-4242@127.0.0.1:{port}\"\n  token: \"tok-secret-4242\"\n\
         connector:\n  live_stream_id: \"live\"\n  live_stream_recover_iso_date: false\n\
         output:\n  kind: directory\n  directory: {out:?}\n\
         state:\n  path: {state:?}\n",
        out = dir.path().join("out"),
        state = dir.path().join("state.json"),
    );
    let cfg = write_config(dir.path(), &yaml);
    for json in ["true", "false"] {
        let out = exporter()
            .config_file(&cfg)
            .env("OPENCTI_JSON_LOGGING", json)
            .args(["-v", "check-stream"])
            .run(LONG);
        assert_ne!(out.code(), Some(0), "{out}");
        for secret in ["pw-secret-4242", "tok-secret-4242"] {
            assert!(
                !out.stderr.contains(secret) && !out.stdout.contains(secret),
                "{json}: {secret} shown\n{out}"
            );
        }
    }
}

#[test]
fn read_only_commands_create_no_file() {
    let sim = Sim::start(&["--events", "10"]);
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("state-dir");
    let cfg = write_config(
        dir.path(),
        &dir_config(&sim, &dir.path().join("out"), &state_dir),
    );
    let before = files_under(dir.path());
    for args in [
        &["state", "show"][..],
        &["state", "show", "--json"],
        &["--help"],
        &["run", "--help"],
    ] {
        exporter()
            .config_file(&cfg)
            .args(args)
            .current_dir(dir.path())
            .run(LONG)
            .assert_success();
        assert_eq!(files_under(dir.path()), before, "after {args:?}");
    }
    // With a state written by a run, `state show` still adds nothing: no
    // lock file next to it.
    exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(LONG)
        .assert_success();
    let lock = state_dir.join("state.json.lock");
    let _ = std::fs::remove_file(&lock);
    let before = files_under(dir.path());
    exporter()
        .config_file(&cfg)
        .args(["state", "show"])
        .run(LONG)
        .assert_success();
    assert_eq!(files_under(dir.path()), before);
    assert!(!lock.exists());
}

#[test]
fn a_first_signal_is_acknowledged_and_the_summary_explains_the_cursor() {
    let sim = Sim::start(&[
        "--events",
        "100000",
        "--heartbeat-ms",
        "300",
        "--rate",
        "2000",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let cfg = write_config(dir.path(), &dir_config(&sim, &out_dir, dir.path()));
    let mut running = exporter()
        .config_file(&cfg)
        .env("OPENCTI_JSON_LOGGING", "false")
        .arg("run")
        .spawn();
    wait_until("a first file", LONG, || {
        !read_export_lines_dir(&out_dir, "opencti").is_empty()
    });
    running.sigint();
    let out = running.wait(LONG);
    out.assert_success();
    assert!(
        out.stderr
            .contains("stopping on a signal: storing and committing what was received"),
        "{out}"
    );
    assert!(out.stdout.contains("cursor `"), "{out}");
    assert!(out.stdout.contains("the next run starts after"), "{out}");
}

fn scrape(port: u16) -> Option<String> {
    ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .ok()?
        .into_string()
        .ok()
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn process_series_and_the_connected_gauge_are_served() {
    let mut sim = Sim::start(&["--events", "500", "--heartbeat-ms", "300"]);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let yaml = dir_config(&sim, &dir.path().join("out"), dir.path()).replace(
        "connector:\n",
        &format!("connector:\n  expose_metrics: true\n  metrics_port: {port}\n"),
    );
    let cfg = write_config(dir.path(), &yaml);
    let mut running = exporter().config_file(&cfg).arg("run").spawn();
    let text = wait_for("connected", LONG, || {
        scrape(port).filter(|t| value(t, "opencti_stream_exporter_stream_connected{") == Some(1.0))
    });
    let rss = value(&text, "process_resident_memory_bytes{").unwrap();
    assert!(rss > 1e6, "{text}");
    assert!(value(&text, "process_cpu_seconds_total{").unwrap() >= 0.0);
    assert!(value(&text, "process_open_fds{").unwrap() >= 3.0);
    let start = value(&text, "process_start_time_seconds{").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(start <= now + 1.0 && start > now - 300.0, "{start} {now}");
    sim.stop();
    wait_until("disconnected", LONG, || {
        scrape(port).and_then(|t| value(&t, "opencti_stream_exporter_stream_connected{"))
            == Some(0.0)
    });
    running.sigterm();
    running.wait(LONG).assert_success();
}

/// Runs `command` on a pseudo-terminal of 80 columns with `script`, and
/// returns everything written to it, escape sequences included.
fn on_an_80_column_terminal(command: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("typescript");
    let status = std::process::Command::new("script")
        .args(["-q", "-e", "-c"])
        .arg(format!("stty cols 80 rows 24; {command}"))
        .arg(&log)
        .env_remove("OPENCTI_JSON_LOGGING")
        .stdin(std::process::Stdio::null())
        .status()
        .expect("`script` (util-linux) runs");
    assert!(status.success(), "{command}: {status}");
    String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned()
}

#[test]
fn on_a_terminal_the_status_line_fits_80_columns_and_is_cleared() {
    let sim = Sim::start(&[
        "--events",
        "5000",
        "--heartbeat-ms",
        "300",
        "--rate",
        // About five seconds of stream: several redraws even on a loaded
        // machine (one a second).
        "1000",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &dir_config(&sim, &dir.path().join("out"), dir.path()),
    );
    let screen = on_an_80_column_terminal(&format!(
        "{} --config {} run --once",
        exporter_bin().display(),
        cfg.display()
    ));
    // Every draw starts with "\r\x1b[2K" (back to column 0, clear the line).
    let draws: Vec<&str> = screen
        .split("\r\u{1b}[2K")
        .skip(1)
        .map(|piece| piece.split(['\r', '\n']).next().unwrap())
        .filter(|text| text.contains(" received ("))
        .collect();
    assert!(draws.len() >= 2, "no status line drawn:\n{screen}");
    for d in &draws {
        assert!(
            d.chars().count() <= 77,
            "{} columns: {d:?}",
            d.chars().count()
        );
        assert!(d.contains("; cursor "), "{d:?}");
    }
    // Text logs on a terminal, each one starting on a cleared line when the
    // status line was up, and the status line gone before the summary.
    assert!(screen.contains(" INFO    "), "{screen}");
    assert!(!screen.contains("{\"timestamp\""), "{screen}");
    let summary = screen.find("exported 5000 events").expect("the summary");
    let last_draw = screen.rfind(" received (").unwrap();
    assert!(last_draw < summary);
    assert!(
        screen[last_draw..summary].contains("\r\u{1b}[2K"),
        "the status line is not cleared before the summary:\n{:?}",
        &screen[last_draw..summary]
    );
}
