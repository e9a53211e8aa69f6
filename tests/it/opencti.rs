//! The exporter as an OpenCTI connector, on the real binary against the
//! simulator: registration and pings with the committed state, a platform
//! that refuses, a platform state that is never taken, `state import` from
//! the reference connector, and OpenCTI's HTTP settings (custom headers, the
//! environment's proxy).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

const LONG: Duration = Duration::from_secs(120);
const CONNECTOR_ID: &str = "5b3f2a4e-7c1d-4e8f-9a0b-1c2d3e4f5a6b";

/// What the simulator recorded: connectors and the last headers per kind.
fn sim_record(sim: &Sim) -> Value {
    let text = ureq::get(&format!("{}/_sim/connectors", sim.url()))
        .timeout(Duration::from_secs(5))
        .call()
        .unwrap_or_else(|e| panic!("{e}\n{}", sim.output()))
        .into_string()
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn connector<'a>(record: &'a Value, id: &str) -> &'a Value {
    record["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("the simulator knows no connector `{id}`: {record}"))
}

fn read_state(dir: &Path) -> Value {
    let path = dir.join("state.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The reference's keys of a local state file.
fn reference_keys(state: &Value) -> Value {
    json!({
        "start_from": state["start_from"],
        "recover_until": state["recover_until"],
        "last_written_msg_id": state["last_written_msg_id"],
        "file_count": state["file_count"],
    })
}

fn config_with_connector(sim: &Sim, dir: &Path, id: &str) -> PathBuf {
    let yaml = dir_config(sim, &dir.join("out"), dir);
    let yaml = yaml.replacen(
        "connector:\n",
        &format!(
            "connector:\n  id: \"{id}\"\n  name: \"StreamExporterConnector\"\n  scope: \"stream-exporter\"\n  type: \"STREAM\"\n"
        ),
        1,
    );
    write_config(dir, &yaml)
}

fn exported_lines(dir: &Path) -> Vec<(String, Vec<Value>)> {
    read_export_lines_dir(&dir.join("out"), "opencti")
}

#[test]
fn registers_as_a_stream_connector_and_pings_with_the_committed_state() {
    let sim = Sim::start(&["--events", "600", "--files-ratio", "0.2"]);
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_connector(&sim, dir.path(), CONNECTOR_ID);
    let out = exporter()
        .config_file(&config)
        .env(
            "OPENCTI_CUSTOM_HEADERS",
            "X-Tenant:blue;X-Api-Key:k3y-s3cret",
        )
        .args(["run", "--once"])
        .run(LONG);
    out.assert_success();
    assert!(out.stderr.contains("registered with OpenCTI"), "{out}");
    for secret in [sim.token().as_str(), "k3y-s3cret"] {
        assert!(
            !out.stdout.contains(secret) && !out.stderr.contains(secret),
            "{out}"
        );
    }

    let record = sim_record(&sim);
    let c = connector(&record, CONNECTOR_ID);
    assert_eq!(c["type"], "STREAM", "{c}");
    assert_eq!(c["name"], "StreamExporterConnector", "{c}");
    assert_eq!(c["scope"], json!(["stream-exporter"]), "{c}");
    assert_eq!(c["input"]["auto"], false, "{c}");
    assert_eq!(c["input"]["only_contextual"], false, "{c}");
    assert_eq!(c["registrations"], 1, "{c}");
    // One ping at the start, one with the final state at the end.
    assert!(c["pings"].as_u64().unwrap() >= 2, "{c}");
    let state = read_state(dir.path());
    assert!(state["file_count"].as_u64().unwrap() >= 1, "{state}");
    assert_eq!(c["last_ping_state"], reference_keys(&state), "{c}");
    // `run --once` ends by itself, as pycti's CONNECTOR_RUN_AND_TERMINATE.
    assert_eq!(c["last_connector_info"]["run_and_terminate"], true, "{c}");

    // The custom headers went with every kind of OpenCTI request.
    for kind in ["stream", "file", "graphql"] {
        let headers = &record["headers"][kind];
        assert_eq!(headers["x-tenant"], "blue", "{kind}: {record}");
        assert_eq!(headers["x-api-key"], "k3y-s3cret", "{kind}: {record}");
    }
}

#[test]
fn a_run_that_follows_the_stream_pings_at_once_and_with_its_final_state_at_stop() {
    let sim = Sim::start(&["--events", "500", "--heartbeat-ms", "300"]);
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_connector(&sim, dir.path(), CONNECTOR_ID);
    let mut run = exporter().config_file(&config).arg("run").spawn();
    let first = wait_for("the first ping", LONG, || {
        let record = sim_record(&sim);
        let c = record["connectors"].as_array()?.first()?.clone();
        (c["pings"].as_u64()? >= 1).then_some(c)
    });
    // A run that follows the stream until stopped.
    assert_eq!(
        first["last_connector_info"]["run_and_terminate"], false,
        "{first}"
    );
    wait_until("everything is stored", LONG, || {
        exported_lines(dir.path())
            .iter()
            .map(|(_, l)| l.len())
            .sum::<usize>()
            == 500
    });
    run.sigterm();
    run.wait(LONG).assert_success();
    let record = sim_record(&sim);
    let c = connector(&record, CONNECTOR_ID);
    assert_eq!(
        c["last_ping_state"],
        reference_keys(&read_state(dir.path())),
        "{c}"
    );
    assert!(c["pings"].as_u64().unwrap() >= 2, "{c}");
}

#[test]
fn a_platform_that_refuses_registration_is_a_warning_not_a_stop() {
    let sim = Sim::start(&["--events", "300", "--graphql-status", "403"]);
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_connector(&sim, dir.path(), CONNECTOR_ID);
    let out = exporter()
        .config_file(&config)
        .args(["run", "--once"])
        .run(LONG);
    out.assert_success();
    assert!(
        out.stderr.contains("OpenCTI did not register connector")
            && out.stderr.contains("HTTP 403")
            && out.stderr.contains("the export goes on"),
        "{out}"
    );
    let lines: usize = exported_lines(dir.path())
        .iter()
        .map(|(_, l)| l.len())
        .sum();
    assert_eq!(lines, sim_dump(&["--events", "300"]).len(), "{out}");
    assert!(sim_record(&sim)["connectors"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn a_platform_that_does_not_answer_never_holds_up_the_export_or_its_stop() {
    // Each GraphQL answer would take two minutes: registration times out in
    // the background, and the stop waits a few seconds at most.
    let sim = Sim::start(&["--events", "300", "--graphql-delay-ms", "120000"]);
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_connector(&sim, dir.path(), CONNECTOR_ID);
    let out = exporter()
        .config_file(&config)
        .args(["run", "--once"])
        .run(Duration::from_secs(60));
    out.assert_success();
    let lines: usize = exported_lines(dir.path())
        .iter()
        .map(|(_, l)| l.len())
        .sum();
    assert_eq!(lines, sim_dump(&["--events", "300"]).len(), "{out}");
    // The registration was still waiting when the export ended: the stop
    // left it behind instead of waiting for its 20 s deadline.
    assert!(
        out.stderr
            .contains("OpenCTI did not answer within 8 s; stopping without waiting for it"),
        "{out}"
    );
}

#[test]
fn the_state_the_platform_answers_with_is_never_taken() {
    // The platform holds an older state, reset from its UI: pycti would adopt it.
    let platform_state = json!({"start_from": "0-0", "recover_until": false, "last_written_msg_id": null, "file_count": 0});
    let sim = Sim::start(&[
        "--events",
        "300",
        "--connector-id",
        CONNECTOR_ID,
        "--connector-state",
        &platform_state.to_string(),
        "--connector-state-reset",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_connector(&sim, dir.path(), CONNECTOR_ID);
    let run = || {
        exporter()
            .config_file(&config)
            .args(["run", "--once"])
            .run(LONG)
    };
    let first = run();
    first.assert_success();
    assert!(
        first.stderr.contains("OpenCTI holds another state") && first.stderr.contains("ignored"),
        "{first}"
    );
    let state = read_state(dir.path());
    // The platform said 0 files; the local state counts what was stored.
    let stored = state["file_count"].as_u64().unwrap();
    assert!(stored >= 1, "{state}");
    let c = sim_record(&sim);
    assert_eq!(
        connector(&c, CONNECTOR_ID)["last_ping_state"],
        reference_keys(&state)
    );
    // A second run continues from the local state, not the platform's.
    run().assert_success();
    let keys: Vec<String> = exported_lines(dir.path())
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        keys.len() as u64,
        stored,
        "nothing new to export, no file rewritten: {keys:?}"
    );
    assert_eq!(read_state(dir.path())["file_count"], stored);
}

#[test]
fn state_import_takes_over_from_the_reference_after_its_last_written_id() {
    let dumped = sim_dump(&["--events", "400"]);
    let written = dumped[199]["id"].as_str().unwrap().to_string();
    let received = dumped[299]["id"].as_str().unwrap().to_string();
    let reference = json!({
        "start_from": received,
        "recover_until": false,
        "last_written_msg_id": written,
        "file_count": 7,
    });
    let sim = Sim::start(&[
        "--events",
        "400",
        "--connector-id",
        "reference-exporter",
        "--connector-state",
        &reference.to_string(),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &dir_config(&sim, &dir.path().join("out"), dir.path()),
    );
    let import = |extra: &[&str]| {
        exporter()
            .config_file(&config)
            .args([
                "state",
                "import",
                "--from-opencti",
                "--connector-id",
                "reference-exporter",
            ])
            .args(extra)
            .run(LONG)
    };
    let out = import(&[]);
    out.assert_success();
    for needle in [
        "file_count:          7 (the next file is number 8)",
        &format!("last_written_msg_id: {written}"),
        &format!("the next run resumes after `{written}`"),
        &format!("`start_from` `{received}`"),
    ] {
        assert!(out.stdout.contains(needle), "{needle:?} in\n{out}");
    }
    let state = read_state(dir.path());
    assert_eq!(state["start_from"], written.as_str());
    assert_eq!(state["file_count"], 7);

    // A second import does not silently replace the state.
    let again = import(&[]);
    again.assert_code(2);
    assert!(again.stderr.contains("--replace"), "{again}");

    // The run resumes after what the reference wrote, numbering from 8.
    exporter()
        .config_file(&config)
        .args(["run", "--once"])
        .run(LONG)
        .assert_success();
    let files = exported_lines(dir.path());
    assert_eq!(
        file_number(&files[0].0),
        8,
        "{:?}",
        files.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    let got: Vec<Value> = files.into_iter().flat_map(|(_, l)| l).collect();
    let expected = sim_dump(&["--events", "400", "--from", &written]);
    assert_no_loss(&got, &expected);
    assert_eq!(got.len(), 200, "exactly the events after `{written}`");

    // A lower file count than the local state's is refused even with --replace.
    let lower = import(&["--replace"]);
    assert!(!lower.status.success(), "{lower}");
    assert!(lower.stderr.contains("numbers never go back"), "{lower}");
}

#[test]
fn state_import_refuses_a_state_without_the_reference_keys() {
    let sim = Sim::start(&[
        "--events",
        "10",
        "--connector-id",
        "other-connector",
        "--connector-state",
        r#"{"last_run": 1700000000}"#,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &dir_config(&sim, &dir.path().join("out"), dir.path()),
    );
    let cmd = |id: &str| {
        exporter()
            .config_file(&config)
            .args(["state", "import", "--from-opencti", "--connector-id", id])
            .run(LONG)
    };
    let out = cmd("other-connector");
    out.assert_code(1);
    assert!(
        out.stderr.contains("none of the reference exporter's keys"),
        "{out}"
    );
    let out = cmd("no-such-connector");
    out.assert_code(1);
    assert!(
        out.stderr
            .contains("knows no connector `no-such-connector`"),
        "{out}"
    );
    assert!(!dir.path().join("state.json").exists());
}

#[test]
fn opencti_requests_go_through_the_environment_proxy_unless_no_proxy_says_otherwise() {
    let sim = Sim::start(&["--events", "300", "--files-ratio", "0.3"]);
    let proxy = Proxy::start();
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_connector(&sim, dir.path(), CONNECTOR_ID);
    exporter()
        .config_file(&config)
        .env("http_proxy", proxy.url())
        .args(["run", "--once"])
        .run(LONG)
        .assert_success();
    let seen = proxy.seen();
    let base = sim.url();
    for path in ["/stream/live-sim", "/storage/get/", "/graphql"] {
        assert!(
            seen.iter().any(|l| l.contains(&format!("{base}{path}"))),
            "no request to `{path}` through the proxy: {seen:?}"
        );
    }
    let lines: usize = exported_lines(dir.path())
        .iter()
        .map(|(_, l)| l.len())
        .sum();
    assert_eq!(lines, sim_dump(&["--events", "300"]).len());

    let dir2 = tempfile::tempdir().unwrap();
    let config2 = config_with_connector(&sim, dir2.path(), CONNECTOR_ID);
    let before = proxy.seen().len();
    exporter()
        .config_file(&config2)
        .env("HTTP_PROXY", proxy.url())
        .env("NO_PROXY", "localhost,127.0.0.1")
        .args(["run", "--once"])
        .run(LONG)
        .assert_success();
    assert_eq!(proxy.seen().len(), before, "NO_PROXY was not honoured");
}
