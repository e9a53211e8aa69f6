//! Operator commands and run modes on the real binary: `state show`,
//! `state reset`, `check-stream`, `--until`, `--once`, the lock, exit
//! statuses, and the faults the stream can throw at a run.

use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const LONG: Duration = Duration::from_secs(180);

struct Setup {
    sim: Sim,
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(sim_args: &[&str]) -> Setup {
        Setup {
            sim: Sim::start(sim_args),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self, extra: &str) -> std::path::PathBuf {
        let yaml = dir_config(&self.sim, &self.dir.path().join("out"), self.dir.path());
        write_config(self.dir.path(), &format!("{yaml}{extra}"))
    }

    fn cmd(&self, args: &[&str]) -> ExporterCmd {
        exporter().config_file(self.config("")).args(args)
    }

    fn lines(&self) -> Vec<Value> {
        read_export_lines_dir(&self.dir.path().join("out"), "opencti")
            .into_iter()
            .flat_map(|(_, l)| l)
            .collect()
    }
}

#[test]
fn state_show_before_and_after_a_run() {
    let s = Setup::new(&["--events", "3000", "--heartbeat-ms", "300"]);
    let before = s.cmd(&["state", "show"]).run(LONG);
    before.assert_success();
    assert!(
        before
            .stdout
            .contains("no state yet: the next run starts from"),
        "{before}"
    );
    s.cmd(&["run", "--once"]).run(LONG).assert_success();
    let after = s.cmd(&["state", "show"]).run(LONG);
    after.assert_success();
    for needle in [
        "cursor:",
        "next file number",
        "last run:",
        "completed; 3000 events",
    ] {
        assert!(after.stdout.contains(needle), "missing `{needle}`\n{after}");
    }
    assert!(!after.stdout.contains("sim-token") && !after.stderr.contains("sim-token"));
    let json = s.cmd(&["state", "show", "--json"]).run(LONG);
    let v: Value = serde_json::from_str(&json.stdout).unwrap_or_else(|e| panic!("{e}\n{json}"));
    assert_eq!(v["exists"], true);
    assert_eq!(
        v["next_file"],
        v["state"]["file_count"].as_u64().unwrap() + 1
    );
    assert_eq!(v["state"]["start_from"], s.lines().last().unwrap()["id"]);
}

#[test]
fn state_reset_needs_yes_and_sets_cursor_and_file_count() {
    let s = Setup::new(&["--events", "2000", "--heartbeat-ms", "300"]);
    s.cmd(&["run", "--once"]).run(LONG).assert_success();
    let refused = s.cmd(&["state", "reset"]).run(LONG);
    refused.assert_code(2);
    assert!(refused.stderr.contains("--yes"), "{refused}");

    // Resume after the 1000th event, with the importer at file 41.
    let dumped = sim_dump(&["--events", "2000"]);
    let cut = dumped[999]["id"].as_str().unwrap().to_string();
    let out_dir = s.dir.path().join("out");
    std::fs::remove_dir_all(&out_dir).unwrap();
    let reset = s
        .cmd(&[
            "state",
            "reset",
            "--yes",
            "--start-from",
            &cut,
            "--file-count",
            "41",
        ])
        .run(LONG);
    reset.assert_success();
    assert!(reset.stdout.contains("first file is number 42"), "{reset}");
    s.cmd(&["run", "--once"]).run(LONG).assert_success();
    let files = read_export_lines_dir(&out_dir, "opencti");
    assert_eq!(file_number(&files[0].0), 42);
    let lines: Vec<Value> = files.into_iter().flat_map(|(_, l)| l).collect();
    let first_after = dumped
        .iter()
        .position(|d| d["id"].as_str().unwrap() > cut.as_str())
        .unwrap();
    assert_eq!(lines.len(), 2000 - first_after);
    assert_eq!(lines[0]["id"], dumped[first_after]["id"]);
}

#[test]
fn a_second_run_on_the_same_state_is_refused_with_its_own_status() {
    let s = Setup::new(&["--events", "1000", "--heartbeat-ms", "300"]);
    let mut first = s.cmd(&["run"]).spawn();
    wait_until("the first run holds the lock", LONG, || {
        s.dir.path().join("state.json").exists()
    });
    std::thread::sleep(Duration::from_millis(300));
    let second = s.cmd(&["run", "--once"]).run(LONG);
    second.assert_code(4);
    assert!(
        second.stderr.contains("another run holds the lock"),
        "{second}"
    );
    s.cmd(&["state", "reset", "--yes"]).run(LONG).assert_code(4);
    let show = s.cmd(&["state", "show"]).run(LONG);
    assert!(show.stdout.contains("a run holds it now"), "{show}");
    // SIGTERM: flush, commit, exit 0. How much the first run had received by
    // then depends on the machine's load; what it received is stored, and a
    // next run takes the rest without a loss.
    first.sigterm();
    let out = first.wait(LONG);
    out.assert_success();
    assert!(!s.lines().is_empty(), "{out}");
    s.cmd(&["run", "--once"]).run(LONG).assert_success();
    assert_no_loss(&s.lines(), &sim_dump(&["--events", "1000"]));
}

#[test]
fn backfill_window_exports_exactly_the_events_in_it() {
    let s = Setup::new(&["--events", "3000", "--heartbeat-ms", "300"]);
    let dumped = sim_dump(&["--events", "3000"]);
    let from = dumped[499]["id"].as_str().unwrap().to_string();
    let until = dumped[1999]["id"].as_str().unwrap().to_string();
    let out = s
        .cmd(&["run", "--from", &from, "--until", &until])
        .run(LONG);
    out.assert_success();
    let want: Vec<&Value> = dumped
        .iter()
        .filter(|d| {
            let id: (u64, u64) = split(d["id"].as_str().unwrap());
            id > split(&from) && id <= split(&until)
        })
        .collect();
    let got = s.lines();
    assert_eq!(got.len(), want.len(), "{out}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g["id"], w["id"]);
    }
    assert!(out.stdout.contains(&format!("last `{until}`")), "{out}");
}

fn split(id: &str) -> (u64, u64) {
    let (a, b) = id.split_once('-').unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

#[test]
fn check_stream_passes_then_names_each_failure() {
    let s = Setup::new(&["--events", "500", "--heartbeat-ms", "300"]);
    let ok = s.cmd(&["check-stream"]).run(LONG);
    ok.assert_success();
    assert!(ok.stdout.contains("all checks passed"), "{ok}");

    let bad_token = s
        .cmd(&["check-stream", "--json"])
        .env("OPENCTI_TOKEN", "wrong-token")
        .run(LONG);
    bad_token.assert_code(1);
    let v: Value = serde_json::from_str(&bad_token.stdout).unwrap();
    let failed: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["item"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["token and stream access"], "{bad_token}");
    assert!(!bad_token.stdout.contains("wrong-token"));

    let unreachable = s
        .cmd(&["check-stream"])
        .env("OPENCTI_URL", format!("http://127.0.0.1:{}", free_port()))
        .run(LONG);
    unreachable.assert_code(1);
    assert!(
        unreachable.stdout.contains("FAIL OpenCTI: cannot reach"),
        "{unreachable}"
    );

    let stopped = Setup::new(&["--events", "10", "--stopped"]);
    let out = stopped.cmd(&["check-stream"]).run(LONG);
    out.assert_code(1);
    assert!(
        out.stdout.contains("FAIL stream running") && out.stdout.contains("410"),
        "{out}"
    );
}

#[test]
fn check_stream_flags_a_cursor_older_than_the_retention_window() {
    let s = Setup::new(&[
        "--events",
        "2000",
        "--heartbeat-ms",
        "300",
        "--retention-first",
        "1500",
    ]);
    s.cmd(&["state", "reset", "--yes", "--start-from", "1700000000100-0"])
        .run(LONG)
        .assert_success();
    let out = s.cmd(&["check-stream"]).run(LONG);
    out.assert_code(1);
    assert!(
        out.stdout.contains("FAIL cursor within retention") && out.stdout.contains("LOST"),
        "{out}"
    );
}

#[test]
fn refused_token_and_stopped_stream_end_the_run_with_status_3() {
    let s = Setup::new(&["--events", "100"]);
    let out = s
        .cmd(&["run"])
        .env("OPENCTI_TOKEN", "revoked-token-value")
        .run(LONG);
    out.assert_code(3);
    assert!(
        out.stderr.contains("HTTP 401") && !out.stderr.contains("revoked-token-value"),
        "{out}"
    );
    let stopped = Setup::new(&["--events", "100", "--stopped"]);
    let out = stopped.cmd(&["run"]).run(LONG);
    out.assert_code(3);
    assert!(out.stderr.contains("HTTP 410"), "{out}");
}

#[test]
fn server_errors_html_and_stalls_end_in_a_resume_or_a_clear_stop() {
    // 500 on the first three connections: retried, then everything arrives.
    let s = Setup::new(&[
        "--events",
        "1500",
        "--heartbeat-ms",
        "300",
        "--fail-status",
        "500",
        "--fail-count",
        "3",
    ]);
    let cfg = s.config("stream:\n  reconnect_max_sec: 1\n");
    exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(LONG)
        .assert_success();
    assert_eq!(s.lines().len(), 1500);

    // A stall after 700 events: the idle timeout reconnects and resumes.
    let s = Setup::new(&[
        "--events",
        "1500",
        "--heartbeat-ms",
        "300",
        "--stall-after",
        "700",
    ]);
    let cfg = s.config("stream:\n  idle_timeout_sec: 6\n  reconnect_max_sec: 1\n");
    let out = exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(LONG);
    out.assert_success();
    assert!(out.stderr.contains("no data for 6 s"), "{out}");
    let n = s.lines().len();
    assert!(
        (1500..=1504).contains(&n),
        "{n} lines: at most the open group may repeat\n{out}"
    );

    // HTML instead of a stream: a clear stop, not a loop.
    let s = Setup::new(&["--events", "10", "--html"]);
    let cfg = s.config("stream:\n  reconnect_max_sec: 1\n");
    let out = exporter().config_file(&cfg).args(["run"]).run(LONG);
    out.assert_code(1);
    assert!(out.stderr.contains("instead of an event stream"), "{out}");
}

#[test]
fn malformed_events_become_dead_letters_and_the_rest_is_exported() {
    let s = Setup::new(&[
        "--events",
        "2000",
        "--heartbeat-ms",
        "300",
        "--malformed-every",
        "50",
    ]);
    let out = s.cmd(&["run", "--once"]).run(LONG);
    out.assert_success();
    let dumped = sim_dump(&["--events", "2000", "--malformed-every", "50"]);
    let good: Vec<&Value> = dumped
        .iter()
        .filter(|d| d.get("data").is_some_and(|x| x.get("data").is_some()) && d["event"] != "weird")
        .collect();
    let lines = s.lines();
    assert_eq!(lines.len(), good.len(), "{out}");
    let dl_dir = s.dir.path().join("out-dead-letter/opencti/dead-letter");
    let letters: Vec<Value> = std::fs::read_dir(&dl_dir)
        .unwrap_or_else(|e| panic!("{}: {e}\n{out}", dl_dir.display()))
        .map(|e| serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap())
        .collect();
    // Frames under an unknown name (`weird`) are control frames (PROTOCOL.md
    // §2): neither lines nor dead letters.
    let control = dumped.iter().filter(|d| d["event"] == "weird").count();
    assert!(control > 0);
    assert_eq!(
        letters.len() + lines.len() + control,
        2000,
        "every data event is either a line or a dead letter"
    );
    assert!(letters
        .iter()
        .all(|l| l["reason"].as_str().is_some_and(|r| !r.is_empty())));
    assert!(
        letters.iter().any(|l| l.get("data_base64").is_some()),
        "invalid UTF-8 kept as base64"
    );
    let show = s.cmd(&["state", "show"]).run(LONG);
    assert!(
        show.stdout
            .contains(&format!("dead letters:   {}", letters.len())),
        "{show}"
    );
}

#[test]
fn a_broken_state_file_is_refused_never_reset() {
    let s = Setup::new(&["--events", "100"]);
    let state = s.dir.path().join("state.json");
    for content in ["", "{\"start_from\": \"17000", "not json"] {
        std::fs::write(&state, content).unwrap();
        let out = s.cmd(&["run", "--once"]).run(LONG);
        out.assert_code(1);
        assert!(
            out.stderr.contains("is corrupt") && out.stderr.contains("state.json"),
            "{out}"
        );
        assert_eq!(
            std::fs::read_to_string(&state).unwrap(),
            content,
            "the state was changed"
        );
    }
}

#[test]
fn bad_config_values_exit_2_naming_the_key_and_the_fix() {
    let s = Setup::new(&["--events", "10"]);
    let cases = [
        ("WRITE_EVERY_SEC", "soon", "write.every_sec"),
        (
            "CONNECTOR_LIVE_STREAM_START_TIMESTAMP",
            "1718446500",
            "epoch seconds",
        ),
        ("MINIO_SECURE", "perhaps", "true or false"),
    ];
    for (var, value, needle) in cases {
        let out = s.cmd(&["run", "--once"]).env(var, value).run(LONG);
        out.assert_code(2);
        assert!(
            out.stderr.contains(needle) && out.stderr.contains(var),
            "{out}"
        );
    }
    let out = s.cmd(&["run", "--from", "2024-06-15"]).run(LONG);
    out.assert_code(2);
    assert!(out.stderr.contains("no time zone"), "{out}");
}

#[test]
fn check_stream_names_a_wrong_s3_secret_without_printing_it() {
    let weed = Seaweed::start();
    let sim = Sim::start(&["--events", "10", "--heartbeat-ms", "300"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &s3_config(&sim, &weed, "export", "opencti", dir.path()),
    );
    let ok = exporter().config_file(&cfg).arg("check-stream").run(LONG);
    ok.assert_success();
    assert!(
        ok.stdout.contains("probe") && weed.list_keys("export", "").is_empty(),
        "the probe is removed\n{ok}"
    );
    let wrong = "wrong-secret-key-123456";
    let out = exporter()
        .config_file(&cfg)
        .arg("check-stream")
        .env("MINIO_SECRET_KEY", wrong)
        .run(LONG);
    out.assert_code(1);
    assert!(
        out.stdout.contains("FAIL storage") && out.stdout.contains("SignatureDoesNotMatch"),
        "{out}"
    );
    assert!(
        !out.stdout.contains(wrong) && !out.stderr.contains(wrong),
        "{out}"
    );
    // A run with the wrong secret stops with a message naming the bucket, not a loop.
    let run = exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .env("MINIO_SECRET_KEY", wrong)
        .run(LONG);
    run.assert_code(1);
    assert!(
        run.stderr.contains("export") && run.stderr.contains("minio.secret_key"),
        "{run}"
    );
    assert!(
        !run.stderr.contains(wrong) && !run.stdout.contains(wrong),
        "{run}"
    );
}

#[test]
fn a_second_state_writing_to_the_same_folder_is_refused() {
    let s = Setup::new(&["--events", "2000", "--heartbeat-ms", "300"]);
    s.cmd(&["run", "--once"]).run(LONG).assert_success();
    let before = read_export_lines_dir(&s.dir.path().join("out"), "opencti").len();
    let other_state = s.dir.path().join("backfill.json");
    let out = s
        .cmd(&[
            "--state",
            other_state.to_str().unwrap(),
            "run",
            "--from",
            "1700000000100-0",
            "--until",
            "1700000000900-0",
        ])
        .run(LONG);
    out.assert_code(1);
    assert!(
        out.stderr.contains("its own `minio.folder`") && out.stderr.contains("already holds"),
        "{out}"
    );
    let after = read_export_lines_dir(&s.dir.path().join("out"), "opencti");
    assert_eq!(after.len(), before, "nothing was written");
    let keys: Vec<&String> = after.iter().map(|(k, _)| k).collect();
    assert_importer_sequence(&keys);
}
