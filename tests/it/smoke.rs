//! The harness checks itself: SeaweedFS starts, signs and keeps data across a
//! restart; the simulator starts and dumps; the process runner reports exit
//! codes, deadlines, signals and output; the importer rules read keys right.

use std::io::Read;
use std::time::{Duration, Instant};

use crate::support::*;

#[test]
fn seaweed_stores_lists_and_returns_objects_with_metadata() {
    let weed = Seaweed::start();
    let s3 = weed.s3();
    assert!(!s3.bucket_exists("exports").unwrap());
    weed.create_bucket("exports");
    assert!(s3.bucket_exists("exports").unwrap());

    s3.put_object(
        "exports",
        "opencti/stream_1718446500000_1.json",
        b"{\"a\":1}\n".to_vec(),
        &[("first-id", "1718446500000-0")],
    )
    .unwrap();
    weed.put_object(
        "exports",
        "opencti/stream_1718446500001_2.json",
        b"{\"b\":2}\n",
    );
    weed.put_object("exports", "elsewhere/x.json", b"{}\n");

    assert_eq!(
        weed.list_keys("exports", "opencti/"),
        [
            "opencti/stream_1718446500000_1.json",
            "opencti/stream_1718446500001_2.json"
        ]
    );
    assert_eq!(weed.list_keys("exports", "").len(), 3);
    assert_eq!(
        weed.get_object("exports", "opencti/stream_1718446500000_1.json"),
        b"{\"a\":1}\n"
    );
    let metadata = weed.stat_metadata("exports", "opencti/stream_1718446500000_1.json");
    assert_eq!(
        metadata.get("first-id").map(String::as_str),
        Some("1718446500000-0"),
        "{metadata:?}"
    );

    let files = read_export_lines_s3(&weed, "exports", "opencti");
    assert_eq!(files.len(), 2);
    assert_eq!(files[1].1, [serde_json::json!({"b": 2})]);
    assert_importer_sequence(&files.iter().map(|(k, _)| k).collect::<Vec<_>>());

    weed.delete_object("exports", "elsewhere/x.json");
    assert!(weed.list_keys("exports", "elsewhere/").is_empty());
}

#[test]
fn seaweed_lists_all_pages() {
    let weed = Seaweed::start();
    weed.create_bucket("many");
    let s3 = weed.s3().with_page_size(10);
    for n in 1..=25 {
        s3.put_object("many", &format!("f/stream_0_{n:02}.json"), Vec::new(), &[])
            .unwrap();
    }
    let keys = s3.list_keys("many", "f/").unwrap();
    assert_eq!(keys.len(), 25, "{keys:?}");
    assert_importer_sequence(&keys);
}

/// Whether an S3 error names `code` (the minio crate lowercases codes it does
/// not know).
fn has_code(err: &anyhow::Error, code: &str) -> bool {
    format!("{err:#}")
        .to_lowercase()
        .contains(&code.to_lowercase())
}

#[test]
fn seaweed_checks_signatures_and_rights() {
    let weed = Seaweed::start();
    weed.create_bucket("guarded");

    let wrong_secret = S3::new(&weed.url(), weed.access_key(), "not-the-secret");
    let err = wrong_secret.list_keys("guarded", "").unwrap_err();
    assert!(has_code(&err, "SignatureDoesNotMatch"), "{err:#}");

    let unknown_key = S3::new(&weed.url(), "AKNOBODY", weed.secret_key());
    let err = unknown_key.list_keys("guarded", "").unwrap_err();
    assert!(has_code(&err, "InvalidAccessKeyId"), "{err:#}");

    weed.put_object("guarded", "k", b"v");
    let read_only = weed.s3_read_only();
    assert_eq!(read_only.list_keys("guarded", "").unwrap(), ["k"]);
    assert_eq!(read_only.get_object("guarded", "k").unwrap(), b"v");
    let err = read_only
        .put_object("guarded", "k2", b"v".to_vec(), &[])
        .unwrap_err();
    assert!(has_code(&err, "AccessDenied"), "{err:#}");

    // Not created on the fly, as on S3 and MinIO.
    let err = weed
        .s3()
        .put_object("missing-bucket", "k", b"v".to_vec(), &[])
        .unwrap_err();
    assert!(has_code(&err, "NoSuchBucket"), "{err:#}");
}

#[test]
fn seaweed_keeps_data_across_stop_and_start_again() {
    let mut weed = Seaweed::start();
    let port = weed.port();
    weed.create_bucket("durable");
    weed.put_object("durable", "before-stop", b"1");

    let stopping = Instant::now();
    weed.stop();
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "stop took {:?}",
        stopping.elapsed()
    );
    assert!(!weed.is_running());
    assert!(weed.s3().list_keys("durable", "").is_err());

    weed.start_again();
    assert_eq!(weed.port(), port);
    assert_eq!(weed.get_object("durable", "before-stop"), b"1");
    weed.put_object("durable", "before-kill", b"2");

    weed.kill();
    weed.start_again();
    assert_eq!(
        weed.list_keys("durable", ""),
        ["before-kill", "before-stop"]
    );
}

#[test]
fn sim_serves_health_and_the_stream() {
    let sim = Sim::start(&["--seed", "1", "--events", "5"]);
    assert_eq!(sim.token(), "sim-token");
    assert_eq!(sim.stream_id(), "live-sim");
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();

    let health = agent
        .get(&format!("{}/_sim/health", sim.url()))
        .call()
        .unwrap_or_else(|e| panic!("{e}\n{}", sim.output()));
    assert_eq!(health.status(), 200);

    let stream = agent
        .get(&sim.stream_url())
        .set("Authorization", &format!("Bearer {}", sim.token()))
        .set("Accept", "text/event-stream")
        .set("Last-Event-ID", "0-0")
        .call()
        .unwrap_or_else(|e| panic!("{e}\n{}", sim.output()));
    assert_eq!(stream.status(), 200);
    assert!(
        stream.content_type().starts_with("text/event-stream"),
        "{}",
        stream.content_type()
    );
    let mut first = [0u8; 64];
    let n = stream.into_reader().read(&mut first).unwrap();
    assert!(n > 0, "the stream sent nothing");

    match agent
        .get(&sim.stream_url())
        .set("Authorization", "Bearer wrong-token")
        .call()
    {
        Err(ureq::Error::Status(401, _)) => {}
        other => panic!("expected 401 for a wrong token, got {other:?}"),
    }
}

#[test]
fn sim_restarts_on_the_same_port_with_other_options() {
    let mut sim = Sim::start(&["--seed", "1", "--events", "5"]);
    let port = sim.port();
    sim.restart_with(&["--seed", "2", "--events", "5", "--token", "other"]);
    assert_eq!(sim.port(), port);
    assert_eq!(sim.token(), "other");
    ureq::get(&format!("{}/_sim/health", sim.url()))
        .timeout(Duration::from_secs(5))
        .call()
        .unwrap_or_else(|e| panic!("{e}\n{}", sim.output()));
    sim.stop();
    assert!(!sim.is_running());
}

#[test]
fn sim_dump_returns_the_requested_events() {
    let events = sim_dump(&["--seed", "7", "--events", "25"]);
    assert_eq!(events.len(), 25);
    for event in &events {
        for field in ["id", "event", "data"] {
            assert!(event.get(field).is_some(), "no `{field}` in {event}");
        }
    }
    assert_eq!(events, sim_dump(&["--seed", "7", "--events", "25"]));
}

#[test]
fn sim_dump_files_returns_base64_contents() {
    let files = sim_dump_files(&["--seed", "3", "--events", "50", "--files-ratio", "1"]);
    assert!(!files.is_empty(), "no attached files generated");
    for (key, content) in &files {
        assert!(!key.is_empty());
        assert!(
            content
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)),
            "`{key}`: not base64: {content}"
        );
    }
}

#[test]
fn runner_reports_exit_code_and_output() {
    let outcome = ExporterCmd::with_program("sh")
        .args(["-c", "echo out; echo err >&2; exit 3"])
        .run(Duration::from_secs(10));
    outcome.assert_code(3);
    assert_eq!(outcome.stdout, "out\n");
    assert_eq!(outcome.stderr, "err\n");
    let report = outcome.to_string();
    assert!(
        report.contains("exit code 3") && report.contains("sh -c"),
        "{report}"
    );
}

#[test]
fn runner_starts_from_an_empty_environment() {
    let outcome = ExporterCmd::with_program("sh")
        .args(["-c", "env"])
        .env("MINIO_BUCKET", "from-the-test")
        .run(Duration::from_secs(10));
    outcome.assert_success();
    let names: Vec<&str> = outcome
        .stdout
        .lines()
        .filter_map(|line| line.split_once('=').map(|(name, _)| name))
        // Set by the shell itself.
        .filter(|name| !["PWD", "SHLVL", "_", "OLDPWD"].contains(name))
        .collect();
    assert!(
        names
            .iter()
            .all(|name| ["PATH", "HOME", "MINIO_BUCKET"].contains(name)),
        "{outcome}"
    );
    assert!(
        outcome.stdout.contains("MINIO_BUCKET=from-the-test\n"),
        "{outcome}"
    );
}

#[test]
fn runner_kills_a_child_past_its_deadline_and_reports_it() {
    let started = Instant::now();
    let panic = std::panic::catch_unwind(|| {
        ExporterCmd::with_program("sleep")
            .arg("30")
            .run(Duration::from_millis(300))
    })
    .expect_err("a run past its deadline fails");
    assert!(started.elapsed() < Duration::from_secs(10));
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        message.contains("did not finish within") && message.contains("sleep 30"),
        "{message}"
    );
}

#[test]
fn runner_delivers_signals_and_waits_for_output() {
    let script = "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done";
    let mut child = ExporterCmd::with_program("sh").args(["-c", script]).spawn();
    child.wait_for_output("ready", Duration::from_secs(10));
    assert!(child.wait_timeout(Duration::from_millis(100)).is_none());
    child.sigterm();
    let outcome = child.wait(Duration::from_secs(10));
    outcome.assert_code(7);
    assert!(outcome.stdout.contains("got-term"), "{outcome}");

    let mut child = ExporterCmd::with_program("sleep").arg("30").spawn();
    child.kill9();
    let outcome = child.outcome();
    assert_eq!(outcome.code(), None, "{outcome}");
    assert!(
        outcome.to_string().contains("killed by signal 9"),
        "{outcome}"
    );
}

#[test]
fn exporter_binary_runs() {
    exporter()
        .arg("--help")
        .run(Duration::from_secs(30))
        .assert_success();
}

#[test]
fn file_number_follows_the_importer_rule() {
    for (key, number) in [
        ("opencti/stream_1718446500000_42.json", 42),
        ("stream_1_1.json", 1),
        ("a_b/stream_1718446500000_007.json", 7),
        ("folder/with_underscore/stream_1718446500000_3.json", 3),
    ] {
        assert_eq!(file_number(key), number, "{key}");
    }
}

#[test]
fn importer_sequence_accepts_only_one_to_n_in_key_order() {
    assert_importer_sequence::<&str>(&[]);
    assert_importer_sequence(&[
        "f/stream_1718446500001_2.json",
        "f/stream_1718446500000_1.json",
    ]);
    for bad in [
        &["f/stream_1718446500000_2.json"][..],
        &[
            "f/stream_1718446500000_1.json",
            "f/stream_1718446500001_3.json",
        ],
        &[
            "f/stream_1718446500000_1.json",
            "f/stream_1718446500001_1.json",
        ],
        // Key order disagrees with number order: the clock went backwards.
        &[
            "f/stream_1718446500001_1.json",
            "f/stream_1718446500000_2.json",
        ],
    ] {
        let result = std::panic::catch_unwind(|| assert_importer_sequence(bad));
        assert!(result.is_err(), "accepted {bad:?}");
    }
}

#[test]
fn config_helpers_point_at_the_servers() {
    let weed = Seaweed::start();
    let sim = Sim::start(&["--seed", "1", "--events", "1"]);
    let dir = tempfile::tempdir().unwrap();

    let yaml = s3_config(&sim, &weed, "bucket", "folder", dir.path());
    let config: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(config["opencti"]["url"].as_str(), Some(sim.url().as_str()));
    assert_eq!(config["opencti"]["token"].as_str(), Some("sim-token"));
    assert_eq!(
        config["connector"]["live_stream_id"].as_str(),
        Some("live-sim")
    );
    assert_eq!(
        config["minio"]["port"].as_u64(),
        Some(u64::from(weed.port()))
    );
    assert_eq!(config["minio"]["secure"].as_bool(), Some(false));
    assert_eq!(config["write"]["every_sec"].as_u64(), Some(1));
    let state = dir.path().join("state.json");
    assert_eq!(config["state"]["path"].as_str(), state.to_str());

    let out = dir.path().join("out dir");
    let yaml = dir_config(&sim, &out, dir.path());
    let config: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    assert!(config.get("minio").is_none());
    assert_eq!(config["output"]["kind"].as_str(), Some("directory"));
    assert_eq!(config["output"]["directory"].as_str(), out.to_str());

    let path = write_config(dir.path(), &yaml);
    assert_eq!(std::fs::read_to_string(path).unwrap(), yaml);
}

#[test]
fn export_lines_are_read_back_from_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("opencti");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("stream_2_2.json"), "{\"n\":3}\n").unwrap();
    std::fs::write(folder.join("stream_1_1.json"), "{\"n\":1}\n{\"n\":2}\n").unwrap();
    std::fs::write(folder.join(".stream_3_3.json.tmp"), "{\"partial").unwrap();
    let files = read_export_lines_dir(dir.path(), "opencti");
    let keys: Vec<&str> = files.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["opencti/stream_1_1.json", "opencti/stream_2_2.json"]);
    assert_eq!(files[0].1.len(), 2);
    assert_importer_sequence(&keys);
}

#[test]
fn ports_with_grpc_companions_are_distinct_and_free() {
    let ports = free_ports_with_grpc(5);
    let more = free_ports_with_grpc(5);
    let single = free_port();
    let mut all: Vec<u16> = ports
        .iter()
        .chain(&more)
        .flat_map(|p| [*p, p + 10_000])
        .chain([single])
        .collect();
    assert!(ports.iter().chain(&more).all(|p| *p < 55_000));
    let count = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), count, "a port was handed out twice");
}
