//! The file number never goes back: the seven cases of a lost, reset,
//! migrated, symlinked or shared state and of a dropped connection, each on
//! the real binary (SeaweedFS where the case is about S3).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const LONG: Duration = Duration::from_secs(180);

fn dump(events: u64, extra: &[&str]) -> Vec<Value> {
    let n = events.to_string();
    let mut args = vec!["--events", n.as_str()];
    args.extend_from_slice(extra);
    sim_dump(&args)
}

fn state_of(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap()
}

fn keys_of(files: &[(String, Vec<Value>)]) -> Vec<String> {
    files.iter().map(|(k, _)| k.clone()).collect()
}

/// Case 1: the state file is lost after the importer moved the files to its
/// done bucket. The next run resumes from the export's own record: the
/// numbering goes on, no event is skipped or repeated, and the log says so.
#[test]
fn a_lost_state_resumes_from_the_export_after_the_importer_moved_its_files() {
    let weed = Seaweed::start();
    weed.create_bucket("done");
    let mut sim = Sim::start(&["--events", "3000", "--heartbeat-ms", "300"]);
    let dir = tempfile::tempdir().unwrap();
    let yaml = s3_config(&sim, &weed, "export", "opencti", dir.path());
    let yaml = with_write_limit(&yaml, "max_events: 700").replace(
        "  secure: false\n",
        "  secure: false\n  bucket_done: \"done\"\n",
    );
    let cfg = write_config(dir.path(), &yaml);
    exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(LONG)
        .assert_success();
    let first = read_export_lines_s3(&weed, "export", "opencti");
    assert!(first.len() >= 4, "{} files", first.len());
    // The importer reads every file and moves it to its done bucket.
    for (key, _) in &first {
        weed.put_object("done", key, &weed.get_object("export", key));
        weed.delete_object("export", key);
    }
    std::fs::remove_file(dir.path().join("state.json")).unwrap();

    sim.restart_with(&["--events", "5000", "--heartbeat-ms", "300"]);
    let cfg = write_config(
        dir.path(),
        &yaml.replace(&sim_port_marker(&yaml), &sim.url()),
    );
    let out = exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(LONG);
    out.assert_success();
    assert!(
        out.stderr.contains("no state file") && out.stderr.contains("resuming from them"),
        "{out}"
    );
    let second = read_export_lines_s3(&weed, "export", "opencti");
    let done = read_export_lines_s3(&weed, "done", "opencti");
    let mut all = done.clone();
    all.extend(second.iter().cloned());
    assert_importer_sequence(&keys_of(&all));
    assert_eq!(file_number(&second[0].0), first.len() as u64 + 1);
    let replayed = assert_no_loss(&all_lines(&all), &dump(5000, &[]));
    assert_eq!(replayed, 0, "the marker's cursor is exact");
}

/// The simulator's URL as written in a config (it changes on restart only
/// when the port does; kept for clarity).
fn sim_port_marker(yaml: &str) -> String {
    let start = yaml.find("http://127.0.0.1:").unwrap();
    let end = yaml[start..].find('"').unwrap() + start;
    yaml[start..end].to_string()
}

/// Case 2: `state reset` resets the stream position, not the numbering; a
/// lower `--file-count` is refused, and going back needs the explicit flag,
/// refused while the destination holds higher numbers.
#[test]
fn state_reset_keeps_the_numbering_and_refuses_to_go_back() {
    let sim = Sim::start(&["--events", "2000", "--heartbeat-ms", "300"]);
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let yaml = with_write_limit(&dir_config(&sim, &out_dir, dir.path()), "max_events: 600");
    let cfg = write_config(dir.path(), &yaml);
    let run = || {
        exporter()
            .config_file(&cfg)
            .args(["run", "--once"])
            .run(LONG)
            .assert_success()
            .clone()
    };
    run();
    let first = read_export_lines_dir(&out_dir, "opencti").len() as u64;
    assert!(first >= 3);

    let reset = exporter()
        .config_file(&cfg)
        .args(["state", "reset", "--yes"])
        .run(LONG);
    reset.assert_success();
    assert!(
        reset
            .stdout
            .contains(&format!("its first file is number {}", first + 1))
            && reset.stdout.contains("kept: the file numbering"),
        "{reset}"
    );
    run();
    let files = read_export_lines_dir(&out_dir, "opencti");
    assert!(files.len() as u64 > first);
    assert_importer_sequence(&keys_of(&files));

    let lower = exporter()
        .config_file(&cfg)
        .args(["state", "reset", "--yes", "--file-count", "1"])
        .run(LONG);
    lower.assert_code(2);
    assert!(lower.stderr.contains("lower than the"), "{lower}");
    let back = exporter()
        .config_file(&cfg)
        .args([
            "state",
            "reset",
            "--yes",
            "--file-count",
            "0",
            "--importer-was-reset",
        ])
        .run(LONG);
    back.assert_code(2);
    assert!(back.stderr.contains("still holds file"), "{back}");
    // A corrupt state's message says what a reset keeps.
    std::fs::write(dir.path().join("state.json"), "{").unwrap();
    let corrupt = exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(LONG);
    corrupt.assert_code(1);
    assert!(
        corrupt.stderr.contains("keeps the file numbering"),
        "{corrupt}"
    );
}

/// Case 3: a state of the reference exporter resumes after
/// `last_written_msg_id` (not `start_from`, the last id it received) and
/// keeps `file_count`.
#[test]
fn a_reference_state_resumes_after_what_it_wrote_and_keeps_its_count() {
    let sim = Sim::start(&["--events", "2000", "--heartbeat-ms", "300"]);
    let dumped = dump(2000, &[]);
    let written = dumped[999]["id"].as_str().unwrap().to_string();
    let received = dumped[1499]["id"].as_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    std::fs::write(
        dir.path().join("state.json"),
        format!(
            r#"{{"start_from":"{received}","last_written_msg_id":"{written}","recover_until":false,"file_count":7}}"#
        ),
    )
    .unwrap();
    let cfg = write_config(dir.path(), &dir_config(&sim, &out_dir, dir.path()));
    let out = exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(LONG);
    out.assert_success();
    assert!(out.stderr.contains("last_written_msg_id"), "{out}");
    let files = read_export_lines_dir(&out_dir, "opencti");
    // The importer has read up to file 7: it goes on with 8, 9, ...
    let numbers: Vec<u64> = files.iter().map(|(k, _)| file_number(k)).collect();
    let want: Vec<u64> = (8..8 + files.len() as u64).collect();
    assert_eq!(numbers, want);
    let lines: Vec<Value> = files.iter().flat_map(|(_, l)| l.iter().cloned()).collect();
    let first_after = dumped
        .iter()
        .position(|l| l["id"].as_str() > Some(written.as_str()))
        .unwrap();
    assert_eq!(
        lines[0]["id"], dumped[first_after]["id"],
        "resumed after what was written"
    );
    assert_eq!(assert_no_loss(&lines, &dumped[first_after..]), 0);
}

/// Case 4: a state file that is a symbolic link (into a persistent volume)
/// stays a link; its target holds the saved state.
#[cfg(unix)]
#[test]
fn a_symlinked_state_file_is_written_through_to_its_target() {
    let sim = Sim::start(&["--events", "1500", "--heartbeat-ms", "300"]);
    let dir = tempfile::tempdir().unwrap();
    let volume = dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    std::fs::write(volume.join("state.json"), "{}").unwrap();
    std::os::unix::fs::symlink(volume.join("state.json"), dir.path().join("state.json")).unwrap();
    let cfg = write_config(
        dir.path(),
        &dir_config(&sim, &dir.path().join("out"), dir.path()),
    );
    for _ in 0..2 {
        exporter()
            .config_file(&cfg)
            .args(["run", "--once"])
            .run(LONG)
            .assert_success();
    }
    let link = std::fs::symlink_metadata(dir.path().join("state.json")).unwrap();
    assert!(link.file_type().is_symlink(), "the link was replaced");
    let target: Value =
        serde_json::from_slice(&std::fs::read(volume.join("state.json")).unwrap()).unwrap();
    assert!(target["file_count"].as_u64().unwrap() >= 1, "{target}");
    assert_eq!(target["file_count"], state_of(dir.path())["file_count"]);
}

/// Case 5: two writers. Two states on one folder at once: the second is
/// refused by the folder's lease. A second exporter in the same output root leaves
/// the first one's temporary files alone; a folder whose name starts
/// another export folder's is refused at start and reported by
/// check-stream; a second state (a backfill) on the live folder is refused.
#[test]
fn a_second_writer_never_shares_or_shadows_a_folder() {
    let weed = Seaweed::start();
    let sim = Sim::start(&["--events", "1500", "--heartbeat-ms", "300"]);
    let dir = tempfile::tempdir().unwrap();
    let live = write_config(
        dir.path(),
        &s3_config(&sim, &weed, "export", "opencti", dir.path()),
    );
    // Two states on one folder at the same time: the second is refused by
    // the folder's lease (a create-only write on SeaweedFS).
    weed.create_bucket("export");
    let mut first = exporter().config_file(&live).arg("run").spawn();
    wait_until("the first run holds the lease", LONG, || {
        !weed
            .list_keys("export", ".opencti-stream-exporter/opencti/lease.json")
            .is_empty()
    });
    let twin = tempfile::tempdir().unwrap();
    let twin_cfg = write_config(
        twin.path(),
        &s3_config(&sim, &weed, "export", "opencti", twin.path()),
    );
    let out = exporter()
        .config_file(&twin_cfg)
        .args(["run", "--once"])
        .run(LONG);
    out.assert_code(1);
    assert!(out.stderr.contains("holds its lease until"), "{out}");
    // Killed, the same exporter takes its own lease over at once.
    first.kill9();
    let again = exporter()
        .config_file(&live)
        .args(["run", "--once"])
        .run(LONG);
    again.assert_success();
    assert!(!first.stderr().contains("advisory"), "{}", first.stderr());
    assert!(
        weed.list_keys("export", ".opencti-stream-exporter/opencti/lease.json")
            .is_empty(),
        "the lease is given up at the end of a run"
    );

    let other = tempfile::tempdir().unwrap();
    let backfill = write_config(
        other.path(),
        &s3_config(&sim, &weed, "export", "opencti-backfill", other.path()),
    );
    let out = exporter()
        .config_file(&backfill)
        .args(["run", "--once"])
        .run(LONG);
    out.assert_code(1);
    assert!(
        out.stderr
            .contains("this folder's name starts with the export folder `opencti`"),
        "{out}"
    );
    assert!(weed.list_keys("export", "opencti-backfill").is_empty());
    let check = exporter()
        .config_file(&backfill)
        .args(["check-stream"])
        .run(LONG);
    assert!(
        check.stdout.contains("folder read alone by its importer")
            && check
                .stdout
                .contains("starts with the export folder `opencti`"),
        "{check}"
    );

    // A backfill state on the live folder.
    let third = tempfile::tempdir().unwrap();
    let same = write_config(
        third.path(),
        &s3_config(&sim, &weed, "export", "opencti", third.path()),
    );
    let out = exporter()
        .config_file(&same)
        .args([
            "run",
            "--from",
            "1700000000100-0",
            "--until",
            "1700000000900-0",
        ])
        .run(LONG);
    out.assert_code(1);
    assert!(out.stderr.contains("already holds an export"), "{out}");

    // The directory destination: another exporter's temporary file in the
    // same root is not removed.
    let root = dir.path().join("root");
    let theirs = root.join("live").join(".stream_1_1.json.tmp-someone");
    std::fs::create_dir_all(theirs.parent().unwrap()).unwrap();
    std::fs::write(&theirs, "half").unwrap();
    let yaml = dir_config(&sim, &root, other.path());
    let cfg = write_config(other.path(), &yaml);
    exporter()
        .config_file(&cfg)
        .args([
            "--state",
            other.path().join("dir.json").to_str().unwrap(),
            "run",
            "--once",
        ])
        .run(LONG)
        .assert_success();
    assert!(
        theirs.exists(),
        "another export's temporary file was removed"
    );
}

/// Case 6: a corrupt state is reset; its last key stamp is not lost. The
/// stamps of the files written before are ahead of this host's clock (as
/// when the clock went a day back): the new keys still sort after them.
#[test]
fn a_reset_of_a_corrupt_state_keeps_the_key_stamps() {
    let sim = Sim::start(&["--events", "1500", "--heartbeat-ms", "300"]);
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let day_ahead = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 86_400_000;
    std::fs::write(
        dir.path().join("state.json"),
        format!(
            r#"{{"start_from":null,"file_count":0,"last_key_ms":{day_ahead},"updated_at":"x"}}"#
        ),
    )
    .unwrap();
    let yaml = with_write_limit(&dir_config(&sim, &out_dir, dir.path()), "max_events: 600");
    let cfg = write_config(dir.path(), &yaml);
    exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(LONG)
        .assert_success();
    let before = read_export_lines_dir(&out_dir, "opencti").len();
    std::fs::write(dir.path().join("state.json"), "{\"start_from\":").unwrap();
    exporter()
        .config_file(&cfg)
        .args(["state", "reset", "--yes", "--start-from", "1700000000500-0"])
        .run(LONG)
        .assert_success();
    exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(LONG)
        .assert_success();
    let files = read_export_lines_dir(&out_dir, "opencti");
    assert!(files.len() > before);
    assert_importer_sequence(&keys_of(&files));
}

/// Case 7: a dropped connection inside an id group writes no line twice.
#[test]
fn a_dropped_connection_writes_no_line_twice() {
    let args = ["--group-ratio", "0.6"];
    let sim = Sim::start(&[
        "--events",
        "8000",
        "--heartbeat-ms",
        "500",
        "--drop-after",
        "1500",
        "--group-ratio",
        "0.6",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let yaml = format!(
        "{}stream:\n  reconnect_max_sec: 1\n",
        dir_config(&sim, &out_dir, dir.path())
    );
    let cfg = write_config(dir.path(), &yaml);
    let out = exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(LONG);
    out.assert_success();
    assert!(out.stderr.contains("inside id group"), "{out}");
    let files = read_export_lines_dir(&out_dir, "opencti");
    let replayed = assert_no_loss(&all_lines(&files), &dump(8000, &args));
    assert_eq!(replayed, 0, "lines written twice across reconnects");
}
