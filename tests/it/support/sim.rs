//! The stream simulator (`opencti-stream-sim`, the workspace's `sim/` crate)
//! as a child process: `serve` for a server speaking the OpenCTI live-stream
//! protocol, `dump` for the events a given seed generates.
//!
//! The binary is looked for next to the exporter binary, where
//! `cargo build --workspace --bins` (run by `scripts/test`) puts it: `cargo
//! test` alone does not build another package's binaries.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use tempfile::TempDir;

use super::process::{command_line, kill_and_reap, read_lossy, tail, wait_timeout};

/// How long the simulator may take to print its `listening on` line.
const LISTEN_DEADLINE: Duration = Duration::from_secs(10);
/// How long a `dump` may run.
const DUMP_DEADLINE: Duration = Duration::from_secs(60);

/// The token the simulator accepts unless `--token` says otherwise.
pub const DEFAULT_TOKEN: &str = "sim-token";
/// The live stream id the simulator serves unless `--stream-id` says otherwise.
pub const DEFAULT_STREAM_ID: &str = "live-sim";

/// The `opencti-stream-sim` binary next to the exporter binary; panics with a
/// hint when it has not been built.
pub fn sim_bin() -> PathBuf {
    let exporter = Path::new(env!("CARGO_BIN_EXE_opencti-stream-exporter"));
    let path = exporter
        .parent()
        .expect("the exporter binary has a parent directory")
        .join("opencti-stream-sim");
    if !path.is_file() {
        panic!(
            "the stream simulator is not built at `{}`: run `scripts/test`, or \
             `cargo build --workspace --bins` before `cargo test`",
            path.display()
        );
    }
    path
}

/// A running `opencti-stream-sim serve`; dropping it kills the process.
pub struct Sim {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
    /// Deleted once `drop` has killed the process.
    dir: TempDir,
}

impl Sim {
    /// Starts `opencti-stream-sim serve --port 0 <args>` and waits for its
    /// `listening on 127.0.0.1:<port>` line.
    pub fn start(args: &[&str]) -> Sim {
        let dir = tempfile::Builder::new()
            .prefix("it-sim-")
            .tempdir()
            .expect("a temporary directory for the simulator");
        let mut sim = Sim {
            child: None,
            port: 0,
            args: args.iter().map(|a| a.to_string()).collect(),
            dir,
        };
        sim.spawn(0);
        sim
    }

    /// The base URL to configure as `opencti.url`: `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port the simulator listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The bearer token it accepts (`--token`, else `sim-token`).
    pub fn token(&self) -> String {
        flag_value(&self.args, "--token").unwrap_or_else(|| DEFAULT_TOKEN.to_string())
    }

    /// The live stream id it serves (`--stream-id`, else `live-sim`).
    pub fn stream_id(&self) -> String {
        flag_value(&self.args, "--stream-id").unwrap_or_else(|| DEFAULT_STREAM_ID.to_string())
    }

    /// The full stream URL, `<url>/stream/<stream id>`.
    pub fn stream_url(&self) -> String {
        format!("{}/stream/{}", self.url(), self.stream_id())
    }

    /// The arguments it was (last) started with, after `serve --port N`.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills the simulator (SIGKILL): the exporter sees its connection drop
    /// and new connections refused.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// Stops the simulator and starts it again on the same port with new
    /// arguments (which must not contain `--port`).
    pub fn restart_with(&mut self, args: &[&str]) {
        self.stop();
        self.args = args.iter().map(|a| a.to_string()).collect();
        let port = self.port;
        self.spawn(port);
        assert_eq!(self.port, port, "the simulator came back on another port");
    }

    /// What the simulator printed so far (stdout after its first line, then
    /// stderr), for failure messages.
    pub fn output(&self) -> String {
        format!(
            "--- simulator stdout ---\n{}\n--- simulator stderr ---\n{}",
            tail(&self.dir.path().join("stdout"), 100),
            tail(&self.dir.path().join("stderr"), 100)
        )
    }

    fn spawn(&mut self, port: u16) {
        let bin = sim_bin();
        let mut command = Command::new(&bin);
        command
            .arg("serve")
            .args(["--port", &port.to_string()])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Appended to, so that the output of earlier runs stays visible.
            .stderr(append(&self.dir.path().join("stderr")));
        let line = command_line(command.get_program(), &command_args(&command));
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{line}`: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let first = read_first_line_then_drain(stdout, self.dir.path().join("stdout"));
        let first = match first.recv_timeout(LISTEN_DEADLINE) {
            Ok(first) => first,
            Err(_) => {
                kill_and_reap(&mut child);
                panic!(
                    "`{line}` printed no line within {LISTEN_DEADLINE:?}\n{}",
                    self.output()
                );
            }
        };
        let parsed = first
            .as_deref()
            .and_then(|l| l.trim().strip_prefix("listening on 127.0.0.1:"))
            .and_then(|p| p.parse::<u16>().ok());
        match parsed {
            Some(port) => {
                self.port = port;
                self.child = Some(child);
            }
            None => {
                let status = wait_timeout(&mut child, Duration::from_millis(500));
                kill_and_reap(&mut child);
                panic!(
                    "`{line}` did not start: first stdout line {first:?}, expected \
                     `listening on 127.0.0.1:<port>`; process {}\n{}",
                    match status {
                        Some(status) => format!("exited with {status}"),
                        None => "was running (killed)".to_string(),
                    },
                    self.output()
                );
            }
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads the first line of `stdout` on a thread and sends it (`None` at end of
/// file), then copies the rest to `rest`: the simulator must never block on a
/// full pipe.
fn read_first_line_then_drain(
    stdout: ChildStdout,
    rest: PathBuf,
) -> mpsc::Receiver<Option<String>> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut first = String::new();
        let first = match reader.read_line(&mut first) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(first),
        };
        let at_end = first.is_none();
        // The receiver may have given up already; the copy goes on regardless.
        let _ = sender.send(first);
        if at_end {
            return;
        }
        let mut file = append(&rest);
        let _ = std::io::copy(&mut reader, &mut file);
        let _ = file.flush();
    });
    receiver
}

fn append(path: &Path) -> File {
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open `{}`: {e}", path.display()))
}

fn command_args(command: &Command) -> Vec<std::ffi::OsString> {
    command.get_args().map(|a| a.to_os_string()).collect()
}

/// The value of `--flag value` or `--flag=value` in `args`, the last one wins.
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let mut value = None;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        if arg == flag {
            value = iter.next().cloned();
        } else if let Some(v) = arg.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
            value = Some(v.to_string());
        }
    }
    value
}

/// Runs `opencti-stream-sim <args>` to completion (bounded by 60 s) and returns
/// its stdout; panics with the command line, status and stderr on failure.
fn run_sim(args: &[&str]) -> String {
    let bin = sim_bin();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut command = Command::new(&bin);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"));
    let line = command_line(command.get_program(), &command_args(&command));
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{line}`: {e}"));
    let Some(status) = wait_timeout(&mut child, DUMP_DEADLINE) else {
        kill_and_reap(&mut child);
        panic!(
            "`{line}` did not finish within {DUMP_DEADLINE:?}\n--- stderr ---\n{}",
            read_lossy(&err_path)
        );
    };
    if !status.success() {
        panic!(
            "`{line}` failed: {status}\n--- stderr ---\n{}",
            read_lossy(&err_path)
        );
    }
    fs::read_to_string(&out_path).unwrap_or_else(|e| panic!("`{line}` printed invalid UTF-8: {e}"))
}

fn parse_json_lines(args: &[&str], stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).unwrap_or_else(|e| {
                panic!(
                    "`opencti-stream-sim {}` line {}: not JSON ({e}): {line}",
                    args.join(" "),
                    i + 1
                )
            })
        })
        .collect()
}

/// The data events `opencti-stream-sim dump <args>` generates, one JSON
/// object `{"id","event","data"}` each, in stream order.
pub fn sim_dump(args: &[&str]) -> Vec<serde_json::Value> {
    let full: Vec<&str> = std::iter::once("dump")
        .chain(args.iter().copied())
        .collect();
    parse_json_lines(&full, &run_sim(&full))
}

/// The attached files `opencti-stream-sim dump --files <args>` generates:
/// storage key → content in standard base64.
pub fn sim_dump_files(args: &[&str]) -> HashMap<String, String> {
    let full: Vec<&str> = ["dump", "--files"]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    parse_json_lines(&full, &run_sim(&full))
        .into_iter()
        .map(|line| {
            let field = |name: &str| {
                line.get(name)
                    .and_then(|v| v.as_str())
                    .unwrap_or_else(|| {
                        panic!("`dump --files` line without string `{name}`: {line}")
                    })
                    .to_string()
            };
            (field("key"), field("base64"))
        })
        .collect()
}
