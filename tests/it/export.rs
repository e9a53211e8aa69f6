//! `run` end to end: the real exporter against the simulator and SeaweedFS.
//! Every test checks the export the way the stream-importer reads it (files
//! in key order, numbered 1..N) against the simulator's own record of what
//! it sent (`opencti-stream-sim dump`).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const EXT: &str = "extension-definition--ea279b3e-5c71-4632-ac08-831c66a786ba";
const LONG: Duration = Duration::from_secs(240);

fn check_file_contents(lines: &[Value], files: &HashMap<String, String>) -> usize {
    let mut checked = 0;
    for line in lines {
        let Some(entries) = line["data"]["extensions"][EXT]["files"].as_array() else {
            continue;
        };
        for f in entries {
            let uri = f["uri"].as_str().unwrap_or("");
            if let Some(key) = uri.strip_prefix("/storage/get/") {
                let want = files
                    .get(key)
                    .unwrap_or_else(|| panic!("simulator has no file `{key}`"));
                assert_eq!(
                    f["data"].as_str(),
                    Some(want.as_str()),
                    "content of `{key}` in event {}",
                    line["id"]
                );
                checked += 1;
            }
        }
        assert_eq!(
            line["data"]["files"], line["data"]["extensions"][EXT]["files"],
            "data.files mirrors the extension"
        );
    }
    checked
}

fn dump(events: u64, extra: &[&str]) -> Vec<Value> {
    let n = events.to_string();
    let mut args = vec!["--events", n.as_str()];
    args.extend_from_slice(extra);
    sim_dump(&args)
}

#[test]
fn exports_20000_events_to_s3_in_stream_order_with_files() {
    let weed = Seaweed::start();
    let sim = Sim::start(&["--events", "20000", "--heartbeat-ms", "500"]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &s3_config(&sim, &weed, "export", "opencti", dir.path()),
    );
    let out = exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(LONG);
    out.assert_success();
    assert!(out.stdout.contains("exported 20000 events"), "{out}");

    let files = read_export_lines_s3(&weed, "export", "opencti");
    let keys: Vec<&String> = files.iter().map(|(k, _)| k).collect();
    assert_importer_sequence(&keys);
    let lines = all_lines(&files);
    assert_eq!(
        assert_no_loss(&lines, &dump(20000, &[])),
        0,
        "a clean run repeats nothing"
    );
    let checked = check_file_contents(&lines, &sim_dump_files(&["--events", "20000"]));
    assert!(checked > 100, "only {checked} attached files were checked");

    // Every object carries its metadata, and the checksum is the body's.
    let (key, first) = &files[0];
    let meta = weed.stat_metadata("export", key);
    assert_eq!(
        meta.get("events").map(String::as_str),
        Some(first.len().to_string().as_str()),
        "{meta:?}"
    );
    assert_eq!(
        meta.get("first-id").map(String::as_str),
        first[0]["id"].as_str()
    );
    use sha2::Digest;
    let body = weed.get_object("export", key);
    let sha: String = sha2::Sha256::digest(&body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(meta.get("sha256"), Some(&sha));

    // Nothing but export files under the importer's prefix; beside them,
    // outside that prefix, only the export's marker.
    let all = weed.list_keys("export", "");
    assert_eq!(weed.list_keys("export", "opencti").len(), files.len());
    let others: Vec<&String> = all.iter().filter(|k| !k.starts_with("opencti")).collect();
    assert_eq!(others, vec![".opencti-stream-exporter/opencti/marker.json"]);
    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).unwrap()).unwrap();
    assert_eq!(state["file_count"], files.len());
    assert_eq!(state["start_from"], lines.last().unwrap()["id"]);
    assert_eq!(state["pending"], Value::Null);

    // A second run finds nothing new: no file, no number used.
    let again = exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(LONG);
    again.assert_success();
    assert_eq!(
        read_export_lines_s3(&weed, "export", "opencti").len(),
        files.len(),
        "{again}"
    );
}

#[test]
fn restart_resumes_after_the_last_stored_event() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let mut sim = Sim::start(&["--events", "6000", "--heartbeat-ms", "500"]);
    let cfg = write_config(dir.path(), &dir_config(&sim, &out_dir, dir.path()));
    exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(LONG)
        .assert_success();
    let first = read_export_lines_dir(&out_dir, "opencti");

    // The stream grows; the same history with 4000 more events.
    sim.restart_with(&["--events", "10000", "--heartbeat-ms", "500"]);
    let cfg = write_config(dir.path(), &dir_config(&sim, &out_dir, dir.path()));
    exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(LONG)
        .assert_success();
    let files = read_export_lines_dir(&out_dir, "opencti");
    assert!(files.len() > first.len());
    let keys: Vec<&String> = files.iter().map(|(k, _)| k).collect();
    assert_importer_sequence(&keys);
    assert_eq!(assert_no_loss(&all_lines(&files), &dump(10000, &[])), 0);
}

#[test]
fn kill_9_at_any_moment_loses_nothing_and_never_reuses_a_number() {
    let weed = Seaweed::start();
    let sim = Sim::start(&[
        "--events",
        "12000",
        "--heartbeat-ms",
        "300",
        "--rate",
        "4000",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let yaml = s3_config(&sim, &weed, "export", "opencti", dir.path());
    let yaml = format!(
        "{}queue:\n  size: 200\n",
        with_write_limit(&yaml, "max_events: 700")
    );
    let cfg = write_config(dir.path(), &yaml);
    let mut restarts = 0;
    // Killed mid-batch, at chosen points of the commit protocol, then at random.
    for fault in [
        "before-upload:2",
        "after-upload:3",
        "after-upload:5",
        "",
        "",
        "",
    ] {
        let mut cmd = exporter().config_file(&cfg).arg("run");
        if !fault.is_empty() {
            cmd = cmd.env("OPENCTI_STREAM_EXPORTER_FAULT", fault);
        }
        let mut running = cmd.spawn();
        if fault.is_empty() {
            std::thread::sleep(Duration::from_millis(700 + 300 * restarts as u64));
            running.kill9();
        } else {
            let status = running
                .wait_timeout(LONG)
                .expect("the fault point was reached");
            assert!(!status.success(), "{}", running.outcome());
            assert!(
                running.stderr().contains("fault injection"),
                "{}",
                running.outcome()
            );
        }
        restarts += 1;
    }
    exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(LONG)
        .assert_success();
    let files = read_export_lines_s3(&weed, "export", "opencti");
    let keys: Vec<&String> = files.iter().map(|(k, _)| k).collect();
    assert_importer_sequence(&keys);
    let replayed = assert_no_loss(&all_lines(&files), &dump(12000, &[]));
    assert!(
        replayed <= 4 * restarts,
        "{replayed} lines repeated over {restarts} restarts"
    );
}

/// `run --once` to `out_dir` against a simulator that drops its
/// connections, reconnecting within a second; it must succeed, reconnecting.
fn export_across_drops(sim: &Sim, root: &Path, out_dir: &Path) -> Outcome {
    let yaml = dir_config(sim, out_dir, root);
    let yaml = format!("{yaml}stream:\n  reconnect_max_sec: 1\n");
    let cfg = write_config(root, &yaml);
    let out = exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(LONG);
    out.assert_success();
    assert!(out.stderr.contains("reconnecting"), "{out}");
    out
}

#[test]
fn dropped_connections_resume_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let sim = Sim::start(&[
        "--events",
        "8000",
        "--heartbeat-ms",
        "500",
        "--drop-after",
        "1500",
    ]);
    export_across_drops(&sim, dir.path(), &out_dir);
    let files = read_export_lines_dir(&out_dir, "opencti");
    let replayed = assert_no_loss(&all_lines(&files), &dump(8000, &[]));
    assert!(
        replayed <= 4 * 6,
        "{replayed} lines repeated over 5 reconnects"
    );
}

/// OpenCTI's server writes each event as its own HTTP chunk: a read then
/// gives one event, and a connection dropped mid-message leaves half a
/// chunk. The export is the same, with every attached file.
#[test]
fn a_stream_sent_in_one_http_chunk_per_event_exports_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let sim = Sim::start(&[
        "--events",
        "6000",
        "--heartbeat-ms",
        "500",
        "--chunked",
        "--drop-after",
        "2500",
    ]);
    let out = export_across_drops(&sim, dir.path(), &out_dir);
    assert!(out.stdout.contains("0 files not fetched"), "{out}");
    let files = read_export_lines_dir(&out_dir, "opencti");
    let lines = all_lines(&files);
    let replayed = assert_no_loss(&lines, &dump(6000, &[]));
    assert!(
        replayed <= 4 * 3,
        "{replayed} lines repeated over 2 reconnects"
    );
    let checked = check_file_contents(&lines, &sim_dump_files(&["--events", "6000"]));
    assert!(checked > 50, "only {checked} attached files were checked");
}

#[test]
fn storage_outage_mid_run_is_waited_out() {
    let mut weed = Seaweed::start();
    let sim = Sim::start(&[
        "--events",
        "8000",
        "--heartbeat-ms",
        "300",
        "--rate",
        "1000",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &s3_config(&sim, &weed, "export", "opencti", dir.path()),
    );
    let mut running = exporter().config_file(&cfg).args(["run", "--once"]).spawn();
    wait_until("a first file is stored", LONG, || {
        weed.s3()
            .list_keys("export", "opencti/")
            .is_ok_and(|k| !k.is_empty())
    });
    weed.stop();
    std::thread::sleep(Duration::from_secs(20));
    assert!(
        running.is_running(),
        "the exporter must wait for storage, not die\n{}",
        running.outcome()
    );
    weed.start_again();
    let out = running.wait(LONG);
    out.assert_success();
    assert!(out.stderr.contains("retrying"), "{out}");
    let files = read_export_lines_s3(&weed, "export", "opencti");
    let keys: Vec<&String> = files.iter().map(|(k, _)| k).collect();
    assert_importer_sequence(&keys);
    assert_eq!(assert_no_loss(&all_lines(&files), &dump(8000, &[])), 0);
}

fn dir_export(sim: &Sim, root: &Path, consumers: &str) -> Vec<(String, Vec<Value>)> {
    let out_dir = root.join(format!("out-{consumers}"));
    let state_dir = root.join(format!("state-{consumers}"));
    std::fs::create_dir_all(&state_dir).unwrap();
    let cfg = write_config(&state_dir, &dir_config(sim, &out_dir, &state_dir));
    exporter()
        .config_file(&cfg)
        .args(["run", "--once", "--consumer-count", consumers])
        .run(LONG)
        .assert_success();
    read_export_lines_dir(&out_dir, "opencti")
}

#[test]
fn consumer_count_1_and_4_and_s3_give_the_same_lines() {
    let weed = Seaweed::start();
    let sim = Sim::start(&["--events", "5000", "--heartbeat-ms", "300"]);
    let dir = tempfile::tempdir().unwrap();
    let one = all_lines(&dir_export(&sim, dir.path(), "1"));
    let four = all_lines(&dir_export(&sim, dir.path(), "4"));
    assert_eq!(one.len(), 5000);
    assert!(
        one == four,
        "consumer_count 1 and 4 exported different lines"
    );
    let cfg = write_config(
        dir.path(),
        &s3_config(&sim, &weed, "export", "opencti", dir.path()),
    );
    exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(LONG)
        .assert_success();
    let s3 = all_lines(&read_export_lines_s3(&weed, "export", "opencti"));
    assert!(
        one == s3,
        "the directory and S3 destinations exported different lines"
    );
}
