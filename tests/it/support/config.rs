//! Configuration files for the exporter, pointing at the servers a test runs.
//!
//! Strings are written as JSON strings, which YAML reads as double-quoted
//! scalars, so paths and names need no further escaping.

use std::fs;
use std::path::{Path, PathBuf};

use super::seaweed::Seaweed;
use super::sim::Sim;

/// Writes `yaml` to `<dir>/config.yml` and returns that path.
pub fn write_config(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("config.yml");
    fs::write(&path, yaml).unwrap_or_else(|e| panic!("cannot write `{}`: {e}", path.display()));
    path
}

fn quoted(value: &str) -> String {
    serde_json::to_string(value).expect("a string serializes")
}

fn quoted_path(path: &Path) -> String {
    quoted(path.to_str().expect("test paths are UTF-8"))
}

/// The `opencti`, `connector`, `write` and `state` sections shared by both
/// destinations: the simulator's URL, token and stream, no recovery, two
/// consumers, a batch every second, state in `<state_dir>/state.json`.
fn common_sections(sim: &Sim, state_dir: &Path) -> (String, String) {
    let head = format!(
        "opencti:\n  url: {url}\n  token: {token}\n\
         connector:\n  live_stream_id: {stream}\n  live_stream_recover_iso_date: false\n  consumer_count: 2\n",
        url = quoted(&sim.url()),
        token = quoted(&sim.token()),
        stream = quoted(&sim.stream_id()),
    );
    let tail = format!(
        "write:\n  every_sec: 1\n\
         state:\n  path: {state}\n",
        state = quoted_path(&state_dir.join("state.json")),
    );
    (head, tail)
}

/// A configuration exporting the simulator's stream to `bucket`/`folder` on
/// `weed` as the read-write identity, with its state file in `state_dir`.
pub fn s3_config(
    sim: &Sim,
    weed: &Seaweed,
    bucket: &str,
    folder: &str,
    state_dir: &Path,
) -> String {
    let (head, tail) = common_sections(sim, state_dir);
    format!(
        "{head}\
         minio:\n  endpoint: {endpoint}\n  port: {port}\n  bucket: {bucket}\n  folder: {folder}\n  \
         access_key: {access}\n  secret_key: {secret}\n  secure: false\n\
         {tail}",
        endpoint = quoted(weed.endpoint()),
        port = weed.port(),
        bucket = quoted(bucket),
        folder = quoted(folder),
        access = quoted(weed.access_key()),
        secret = quoted(weed.secret_key()),
    )
}

/// A configuration exporting the simulator's stream into the directory
/// `out_dir`, with its state file in `state_dir`.
pub fn dir_config(sim: &Sim, out_dir: &Path, state_dir: &Path) -> String {
    let (head, tail) = common_sections(sim, state_dir);
    format!(
        "{head}\
         output:\n  kind: directory\n  directory: {out}\n\
         {tail}",
        out = quoted_path(out_dir),
    )
}

/// `yaml` (from [`s3_config`] or [`dir_config`]) with one more key in its
/// `write` section, e.g. `"max_events: 700"`.
pub fn with_write_limit(yaml: &str, key_value: &str) -> String {
    let section = "write:\n  every_sec: 1\n";
    assert!(
        yaml.contains(section),
        "no `write` section to extend in:\n{yaml}"
    );
    yaml.replacen(section, &format!("{section}  {key_value}\n"), 1)
}
