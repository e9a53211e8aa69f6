//! Metrics (Prometheus endpoint, textfile) and the export policy, on the
//! real binary against the simulator and SeaweedFS.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

const LONG: Duration = Duration::from_secs(240);

/// Parses the Prometheus text format the way a scraper does, checking the
/// rules node-exporter's textfile collector enforces: `# HELP`/`# TYPE`
/// before a family's samples, one family once, `name{labels} value` lines,
/// no timestamps. Returns `series -> value`.
fn parse_exposition(text: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split_whitespace().next().unwrap().to_string();
            assert!(typed.insert(name.clone()), "family `{name}` typed twice");
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line}"));
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        assert!(
            typed.contains(name) || typed.contains(family),
            "sample before its TYPE: {line}"
        );
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in: {line}"));
        out.insert(series.to_string(), v);
    }
    out
}

fn sum_of(m: &HashMap<String, f64>, prefix: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn metrics_are_served_during_a_run_and_match_the_export() {
    let sim = Sim::start(&[
        "--events",
        "3000",
        "--heartbeat-ms",
        "300",
        "--rate",
        "3000",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let port = free_port();
    let yaml = dir_config(&sim, &out_dir, dir.path()).replace(
        "connector:\n",
        &format!(
            "connector:\n  name: \"exporter-a\"\n  expose_metrics: true\n  metrics_port: {port}\n"
        ),
    );
    let cfg = write_config(dir.path(), &yaml);
    let mut running = exporter().config_file(&cfg).arg("run").spawn();
    let url = format!("http://127.0.0.1:{port}/metrics");
    wait_until("every event is exported", LONG, || {
        read_export_lines_dir(&out_dir, "opencti")
            .iter()
            .map(|(_, l)| l.len())
            .sum::<usize>()
            == 3000
    });
    // The last file is committed just after it is visible: let the gauges settle.
    std::thread::sleep(Duration::from_millis(500));
    let text = ureq::get(&url)
        .call()
        .unwrap_or_else(|e| panic!("{e}\n{}", running.outcome()))
        .into_string()
        .unwrap();
    let m = parse_exposition(&text);
    let files = read_export_lines_dir(&out_dir, "opencti");
    // The export folder only: the marker beside it is not a data file.
    let bytes: u64 = walk_bytes(&out_dir.join("opencti"));
    assert_eq!(sum_of(&m, "processed_messages_total{"), 3000.0, "{text}");
    assert_eq!(
        m.get("written_files_total{name=\"exporter-a\"}"),
        Some(&(files.len() as f64)),
        "{text}"
    );
    assert_eq!(
        sum_of(&m, "opencti_stream_exporter_bytes_written_total"),
        bytes as f64,
        "{text}"
    );
    let last_id = files.last().unwrap().1.last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let last_ms: f64 = last_id.split('-').next().unwrap().parse().unwrap();
    assert_eq!(sum_of(&m, "last_written_state"), last_ms, "{text}");
    running.sigterm();
    running.wait(LONG).assert_success();
}

fn walk_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            if e.path().is_dir() {
                walk_bytes(&e.path())
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            }
        })
        .sum()
}

#[test]
fn a_once_run_writes_the_metrics_textfile() {
    let sim = Sim::start(&["--events", "1000", "--heartbeat-ms", "300"]);
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let cfg = write_config(dir.path(), &dir_config(&sim, &out_dir, dir.path()));
    let prom = dir.path().join("textfile").join("exporter.prom");
    std::fs::create_dir_all(prom.parent().unwrap()).unwrap();
    exporter()
        .config_file(&cfg)
        .args([
            "run",
            "--once",
            "--metrics-textfile",
            prom.to_str().unwrap(),
        ])
        .run(LONG)
        .assert_success();
    let text = std::fs::read_to_string(&prom).unwrap();
    let m = parse_exposition(&text);
    let files = read_export_lines_dir(&out_dir, "opencti");
    assert_eq!(
        sum_of(&m, "written_files_total{"),
        files.len() as f64,
        "{text}"
    );
    assert_eq!(sum_of(&m, "processed_messages_total{"), 1000.0, "{text}");
    let leftovers: Vec<_> = std::fs::read_dir(prom.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "only the .prom file: {leftovers:?}");
}

const TLP: [(&str, u8); 5] = [
    (
        "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9",
        0,
    ),
    (
        "marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da",
        1,
    ),
    (
        "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82",
        2,
    ),
    (
        "marking-definition--826578e1-40ad-459f-bc73-ede076f81f37",
        3,
    ),
    (
        "marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed",
        4,
    ),
];

fn level(object: &Value) -> Option<u8> {
    let refs = object["object_marking_refs"].as_array()?;
    refs.iter()
        .filter_map(|r| TLP.iter().find(|(id, _)| r == id).map(|(_, l)| *l))
        .max()
        .or(Some(0))
}

#[test]
fn nothing_above_the_tlp_ceiling_reaches_the_bucket() {
    let weed = Seaweed::start();
    let sim = Sim::start(&["--events", "4000", "--heartbeat-ms", "300"]);
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{}policy:\n  tlp_ceiling: \"TLP:GREEN\"\n  deny_types: [\"vulnerability\"]\n",
        s3_config(&sim, &weed, "export", "opencti", dir.path())
    );
    let cfg = write_config(dir.path(), &yaml);
    let out = exporter()
        .config_file(&cfg)
        .args(["run", "--once"])
        .run(LONG);
    out.assert_success();
    let lines: Vec<Value> = read_export_lines_s3(&weed, "export", "opencti")
        .into_iter()
        .flat_map(|(_, l)| l)
        .collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let data = &line["data"];
        assert!(
            level(data).is_some_and(|l| l <= 1),
            "above TLP:GREEN: {}",
            line["id"]
        );
        assert_ne!(
            data["type"], "vulnerability",
            "denied type exported: {}",
            line["id"]
        );
        for source in line["context"]["sources"].as_array().into_iter().flatten() {
            assert!(
                level(source).is_some_and(|l| l <= 1),
                "merge source above TLP:GREEN: {}",
                line["id"]
            );
        }
    }
    let dumped = sim_dump(&["--events", "4000"]);
    let above = dumped
        .iter()
        .filter(|d| level(&d["data"]["data"]).is_some_and(|l| l > 1))
        .count();
    assert!(
        above > 100,
        "the simulator sends objects above the ceiling ({above})"
    );
    let show = exporter()
        .config_file(&cfg)
        .args(["state", "show", "--json"])
        .run(LONG);
    let state: Value = serde_json::from_str(&show.stdout).unwrap();
    let held: u64 = state["state"]["held_by_policy"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        lines.len() as u64 + held,
        4000,
        "every event is exported or held: {}",
        state["state"]["held_by_policy"]
    );
    // The cursor moved past held events too.
    assert_eq!(state["state"]["start_from"], dumped.last().unwrap()["id"]);
    let check = exporter().config_file(&cfg).arg("check-stream").run(LONG);
    assert!(
        check.stdout.contains("export policy") && check.stdout.contains("TLP:GREEN"),
        "{check}"
    );
}
