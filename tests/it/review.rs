//! Regression tests for the faults an adversarial review found (hostile
//! servers, hostile configs, odd moments), each on the real binary.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const SHORT: Duration = Duration::from_secs(60);

fn state(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap()
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn an_unknown_control_frame_with_a_synthetic_id_is_neither_exported_nor_the_cursor() {
    let body = [
        connected("1-0", "2-0"),
        create("1-0", "indicator--1"),
        create("2-0", "indicator--2"),
        // A frame of a kind this exporter does not know, with the idle
        // form of id the server gives control frames: `<now>-0`.
        sse(Some("1800000000000-0"), "consumer_status", r#"{"lag":0}"#),
    ]
    .concat();
    let server = Hostile::start(move |_| Answer::Stream(body.clone().into_bytes()));
    let dir = tempfile::tempdir().unwrap();
    let cfg = hostile_config(dir.path(), &server.url(), &[]);
    let out = exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(SHORT);
    out.assert_success();
    let lines = all_lines(&read_export_lines_dir(&dir.path().join("out"), "opencti"));
    let ids: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["1-0", "2-0"], "{out}");
    assert!(
        files_under(&dir.path().join("out-dead-letter")).is_empty(),
        "a control frame is no dead letter\n{out}"
    );
    let st = state(dir.path());
    assert_eq!(st["start_from"], "2-0", "{st}\n{out}");
    assert_eq!(st["dead_letters"], 0, "{st}");
}

#[test]
fn a_byte_order_mark_before_the_first_frame_is_ignored() {
    let mut body = b"\xef\xbb\xbf".to_vec();
    body.extend(
        [
            connected("1-0", "2-0"),
            create("1-0", "indicator--1"),
            create("2-0", "indicator--2"),
        ]
        .concat()
        .into_bytes(),
    );
    let server = Hostile::start(move |_| Answer::Stream(body.clone()));
    let dir = tempfile::tempdir().unwrap();
    let cfg = hostile_config(dir.path(), &server.url(), &[]);
    // Without the fix `connected` is lost, so `--once` never knows the head
    // and never ends: the deadline fails the test.
    let out = exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(Duration::from_secs(30));
    out.assert_success();
    assert!(out.stderr.contains("stream connected"), "{out}");
    let lines = all_lines(&read_export_lines_dir(&dir.path().join("out"), "opencti"));
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        files_under(&dir.path().join("out-dead-letter")).is_empty(),
        "{out}"
    );
}

#[test]
fn a_refused_recovery_does_not_hide_a_cursor_older_than_the_retention() {
    // The first run asks for a snapshot from 1000-0; the server refuses it
    // (`no-recover`) and only retains events from 5000-0 on.
    let body = [
        connected("5000-0", "5001-0"),
        sse(
            Some("1700000000000-0"),
            "no-recover",
            r#"{"stream":"s","message":"recovery refused","resume_from":"1700000000000-0"}"#,
        ),
        create("5000-0", "indicator--1"),
        create("5001-0", "indicator--2"),
    ]
    .concat();
    let server = Hostile::start(move |_| Answer::Stream(body.clone().into_bytes()));
    let dir = tempfile::tempdir().unwrap();
    let cfg = hostile_config(
        dir.path(),
        &server.url(),
        &[
            ("connector.live_stream_recover_iso_date", "true"),
            ("connector.live_stream_start_timestamp", "\"1000-0\""),
        ],
    );
    let out = exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(SHORT);
    out.assert_code(1);
    assert!(
        out.stderr
            .contains("older than the first event the server still retains"),
        "{out}"
    );
    // With --accept-gap the run goes on and the gap is recorded.
    let out = exporter()
        .config_file(&cfg)
        .args(["run", "--once", "--accept-gap"])
        .run(SHORT);
    out.assert_success();
    let st = state(dir.path());
    assert_eq!(
        st["accepted_gaps"].as_array().map(Vec::len),
        Some(1),
        "{st}\n{out}"
    );
}

/// `hostile_config` keys that send the export to `bucket` on `weed`.
fn to_s3<'a>(weed: &'a Seaweed, bucket: &'a str, port: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("output.kind", "s3"),
        ("minio.endpoint", weed.endpoint()),
        ("minio.port", port),
        ("minio.bucket", bucket),
        ("minio.access_key", weed.access_key()),
        ("minio.secret_key", weed.secret_key()),
        ("minio.secure", "false"),
    ]
}

#[test]
fn run_creates_the_s3_dead_letter_bucket_for_its_first_dead_letter() {
    let weed = Seaweed::start();
    let sim = Sim::start(&[
        "--events",
        "40",
        "--heartbeat-ms",
        "300",
        "--malformed-every",
        "10",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &s3_config(&sim, &weed, "export", "opencti", dir.path()),
    );
    let out = exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(SHORT);
    out.assert_success();
    let letters = weed.list_keys("export-dead-letter", "");
    assert!(!letters.is_empty(), "{out}");
    assert!(
        letters
            .iter()
            .all(|k| k.starts_with("opencti/dead-letter/")),
        "{letters:?}"
    );
    let st = state(dir.path());
    assert_eq!(
        st["dead_letters"].as_u64(),
        Some(letters.len() as u64),
        "{st}"
    );
    assert!(!weed.list_keys("export", "opencti/").is_empty(), "{out}");
}

#[test]
fn dead_letter_ids_with_blanks_or_non_ascii_are_stored_with_encoded_metadata() {
    let weed = Seaweed::start();
    let body = [
        connected("1-0", "9-0"),
        create("1-0", "indicator--1"),
        create("5-0 ", "indicator--5"),
        create("6-0-été", "indicator--6"),
        create("7-0", "indicator--7"),
    ]
    .concat();
    let server = Hostile::start(move |_| Answer::Stream(body.clone().into_bytes()));
    // Made beforehand, so that this test is about the metadata alone.
    weed.create_bucket("export-dead-letter");
    let dir = tempfile::tempdir().unwrap();
    let port = weed.port().to_string();
    let cfg = hostile_config(dir.path(), &server.url(), &to_s3(&weed, "export", &port));
    let out = exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(SHORT);
    out.assert_success();
    let letters = weed.list_keys("export-dead-letter", "");
    assert_eq!(letters.len(), 2, "{letters:?}\n{out}");
    let mut ids: Vec<String> = letters
        .iter()
        .map(|k| {
            let meta = weed.stat_metadata("export-dead-letter", k);
            let first = meta
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("first-id"))
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("no first-id on `{k}`: {meta:?}"));
            assert!(first.is_ascii() && !first.contains(' '), "{first:?}");
            first
        })
        .collect();
    ids.sort();
    assert_eq!(ids, ["5-0%20", "6-0-%C3%A9t%C3%A9"]);
    let lines = all_lines(&read_export_lines_s3(&weed, "export", "opencti"));
    let exported: Vec<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(exported, ["1-0", "7-0"], "{out}");
    exporter()
        .config_file(&cfg)
        .args(["check-stream", "--verify"])
        .run(SHORT)
        .assert_success();
}

/// A directory this process cannot write to, restored on drop: mode 0555
/// for a normal user; for root (whom modes do not stop), the immutable
/// attribute, else a read-only tmpfs mounted over it.
struct Unwritable {
    dir: std::path::PathBuf,
    undo: Vec<&'static str>,
}

impl Unwritable {
    fn make(dir: &Path) -> Unwritable {
        use std::process::Command;
        std::fs::create_dir_all(dir).unwrap();
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        let ok = |cmd: &mut Command| cmd.status().is_ok_and(|s| s.success());
        let undo = if !root {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
            vec!["chmod"]
        } else if ok(Command::new("chattr").arg("+i").arg(dir)) {
            vec!["chattr"]
        } else if ok(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
            .arg(dir))
        {
            vec!["umount"]
        } else {
            panic!(
                "cannot make `{}` unwritable: running as root, and neither `chattr +i` nor a read-only tmpfs mount works here",
                dir.display()
            );
        };
        let probe = dir.join("probe");
        assert!(
            std::fs::write(&probe, b"x").is_err(),
            "`{}` is still writable",
            dir.display()
        );
        Unwritable {
            dir: dir.to_path_buf(),
            undo,
        }
    }
}

impl Drop for Unwritable {
    fn drop(&mut self) {
        use std::process::Command;
        for how in &self.undo {
            let _ = match *how {
                "chmod" => Command::new("chmod").arg("755").arg(&self.dir).status(),
                "chattr" => Command::new("chattr").arg("-i").arg(&self.dir).status(),
                _ => Command::new("umount").arg(&self.dir).status(),
            };
        }
    }
}

#[test]
fn an_unwritable_state_directory_is_named_with_the_way_out() {
    let server = Hostile::start(|_| Answer::Stream(connected("1-0", "1-0").into_bytes()));
    let dir = tempfile::tempdir().unwrap();
    let locked = dir.path().join("locked");
    let _guard = Unwritable::make(&locked);
    let state = locked.join("state.json");
    let cfg = hostile_config(
        dir.path(),
        &server.url(),
        &[(
            "state.path",
            &serde_json::to_string(state.to_str().unwrap()).unwrap(),
        )],
    );
    let out = exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(SHORT);
    out.assert_code(1);
    assert!(
        out.stderr
            .contains(&format!("cannot write the state in `{}`", locked.display())),
        "{out}"
    );
    assert!(out.stderr.contains("--state"), "{out}");
    let cause = [
        "Permission denied",
        "Operation not permitted",
        "Read-only file system",
    ]
    .iter()
    .map(|c| out.stderr.matches(c).count())
    .sum::<usize>();
    assert_eq!(cause, 1, "the cause once, not repeated\n{out}");
    assert_eq!(
        out.stderr
            .lines()
            .filter(|l| l.contains("cannot write the state"))
            .count(),
        1,
        "{out}"
    );
}

#[test]
fn a_password_in_the_opencti_url_is_never_printed() {
    let body = [connected("1-0", "1-0"), create("1-0", "indicator--1")].concat();
    let server = Hostile::start(move |_| Answer::Stream(body.clone().into_bytes()));
    let url = server
        .url()
        .replace("http://", "http://exporter:pa55w0rd-xyz@");
    let dir = tempfile::tempdir().unwrap();
    let cfg = hostile_config(dir.path(), &url, &[]);
    let run = exporter()
        .config_file(&cfg)
        .args(["-v", "run", "--once"])
        .run(SHORT);
    run.assert_success();
    let check = exporter()
        .config_file(&cfg)
        .args(["check-stream"])
        .run(SHORT);
    let check_json = exporter()
        .config_file(&cfg)
        .args(["check-stream", "--json"])
        .run(SHORT);
    let show = exporter()
        .config_file(&cfg)
        .args(["state", "show"])
        .run(SHORT);
    for out in [&run, &check, &check_json, &show] {
        assert!(!out.stdout.contains("pa55w0rd-xyz"), "{out}");
        assert!(!out.stderr.contains("pa55w0rd-xyz"), "{out}");
    }
    // It is masked, not dropped: the operator still sees which URL.
    assert!(check.stdout.contains("exporter:***@127.0.0.1"), "{check}");
    let state = std::fs::read_to_string(dir.path().join("state.json")).unwrap();
    assert!(!state.contains("pa55w0rd-xyz"), "{state}");
    // A bad value of the key is shown masked too.
    let bad = hostile_config(dir.path(), "ftp://exporter:pa55w0rd-xyz@host", &[]);
    let out = exporter().config_file(&bad).args(["run"]).run(SHORT);
    out.assert_code(2);
    assert!(!out.stderr.contains("pa55w0rd-xyz"), "{out}");
}

#[test]
fn an_error_body_echoing_the_request_is_cut_flattened_and_scrubbed() {
    let echo = "GET /stream/s HTTP/1.1\r\nAuthorization: Bearer t0ken-value-xyz\r\n\
                Proxy-Authorization: Basic cHJveHk6c2VjcmV0\r\n\
                \n2026-01-01T00:00:00Z [ERROR] forged line from the server\n"
        .to_string()
        + &"padding ".repeat(200);
    let body = [connected("1-0", "1-0"), create("1-0", "indicator--1")].concat();
    let server = Hostile::start(move |n| {
        if n < 2 {
            Answer::Status(503, echo.clone().into_bytes())
        } else {
            Answer::Stream(body.clone().into_bytes())
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = hostile_config(dir.path(), &server.url(), &[]);
    // Text logs: the format where a raw newline would start a new line.
    let out = exporter()
        .config_file(&cfg)
        .env("OPENCTI_JSON_LOGGING", "false")
        .args(["-v", "run", "--once"])
        .run(SHORT);
    out.assert_success();
    assert!(
        server.requests()[0].contains("Bearer t0ken-value-xyz"),
        "the server did get the token"
    );
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains("t0ken-value-xyz"), "{out}");
        assert!(!text.contains("cHJveHk6c2VjcmV0"), "{out}");
    }
    let warn = out
        .stderr
        .lines()
        .find(|l| l.contains("HTTP 503"))
        .unwrap_or_else(|| panic!("the 503 is reported\n{out}"));
    assert!(warn.contains("Bearer ***"), "{warn}");
    assert!(warn.len() < 600, "the body is cut: {warn}");
    assert!(
        !out.stderr
            .lines()
            .any(|l| l.starts_with("2026-01-01T00:00:00Z [ERROR] forged")),
        "a server cannot forge a log line\n{out}"
    );
}

#[test]
fn a_4xx_stream_answer_is_a_configuration_error_not_an_outage() {
    for code in [400u16, 403, 404] {
        let server = Hostile::start(move |_| Answer::Status(code, b"no such route".to_vec()));
        let dir = tempfile::tempdir().unwrap();
        let cfg = hostile_config(dir.path(), &server.url(), &[]);
        // Without --once too: retrying cannot fix a wrong URL.
        for args in [&["run", "--once"][..], &["run"][..]] {
            let out = exporter().config_file(&cfg).args(args).run(SHORT);
            out.assert_code(2);
            assert!(out.stderr.contains(&format!("HTTP {code}")), "{out}");
            assert!(out.stderr.contains("opencti.url"), "{out}");
        }
        assert_eq!(server.requests().len(), 2, "one request per run");
    }
}

/// A state and files from a first, successful run against `server`.
fn first_export(dir: &Path, url: &str, extra: &[(&str, &str)]) -> (Value, Vec<std::path::PathBuf>) {
    let cfg = hostile_config(dir, url, extra);
    exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(SHORT)
        .assert_success();
    let mut files = files_under(&dir.join("out"));
    files.sort();
    assert!(!files.is_empty());
    (state(dir), files)
}

#[test]
fn run_once_gives_up_on_an_unreachable_or_failing_opencti_with_status_5() {
    let body = [
        connected("1-0", "2-0"),
        create("1-0", "indicator--1"),
        create("2-0", "indicator--2"),
    ]
    .concat();
    let up = Hostile::start(move |_| Answer::Stream(body.clone().into_bytes()));
    let dir = tempfile::tempdir().unwrap();
    let limit = [("run.once_max_outage_sec", "2")];
    let (before, files) = first_export(dir.path(), &up.url(), &limit);
    drop(up);

    let down_url = format!("http://127.0.0.1:{}", free_port());
    let failing = Hostile::start(|_| Answer::Status(503, b"maintenance".to_vec()));
    for url in [down_url, failing.url()] {
        let cfg = hostile_config(dir.path(), &url, &limit);
        let out = exporter()
            .config_file(&cfg)
            .args(["run", "--once"])
            .run(SHORT);
        out.assert_code(5);
        assert!(out.stderr.contains("gave up after 2 s"), "{out}");
        assert!(out.stderr.contains("OpenCTI"), "{out}");
        let after = state(dir.path());
        assert_eq!(after["start_from"], before["start_from"], "{out}");
        assert_eq!(after["file_count"], before["file_count"], "{out}");
        let mut now = files_under(&dir.path().join("out"));
        now.sort();
        assert_eq!(now, files, "{out}");
    }

    // Without --once the same outage is waited out.
    let cfg = hostile_config(dir.path(), &failing.url(), &limit);
    let mut running = exporter().config_file(&cfg).arg("run").spawn();
    std::thread::sleep(Duration::from_secs(4));
    assert!(running.is_running(), "{}", running.snapshot());
    running.sigterm();
    running.wait(SHORT).assert_success();
}

#[test]
fn run_once_gives_up_on_unreachable_storage_with_status_5() {
    let mut weed = Seaweed::start();
    let body = [
        connected("1-0", "2-0"),
        create("1-0", "indicator--1"),
        create("2-0", "indicator--2"),
    ]
    .concat();
    let server = Hostile::start(move |_| Answer::Stream(body.clone().into_bytes()));
    let dir = tempfile::tempdir().unwrap();
    let port = weed.port().to_string();
    let mut keys = to_s3(&weed, "export", &port);
    keys.push(("run.once_max_outage_sec", "2"));
    keys.push(("minio.timeout_sec", "2"));
    let cfg = hostile_config(dir.path(), &server.url(), &keys);
    exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(SHORT)
        .assert_success();
    let before = state(dir.path());
    let objects = weed.list_keys("export", "");
    weed.stop();
    let out = exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(SHORT);
    out.assert_code(5);
    assert!(out.stderr.contains("the storage"), "{out}");
    let after = state(dir.path());
    assert_eq!(after["start_from"], before["start_from"], "{out}");
    assert_eq!(after["file_count"], before["file_count"], "{out}");
    weed.start_again();
    assert_eq!(weed.list_keys("export", ""), objects);
}
