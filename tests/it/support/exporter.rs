//! Runs the real `opencti-stream-exporter` binary: a builder over
//! [`std::process::Command`] that starts from an empty environment, runs with
//! a deadline or in the background, and reports the command line, exit status,
//! stdout and stderr whenever something is not as expected.
//!
//! Output goes to files, never pipes, so a chatty child cannot block and the
//! output stays readable while it runs.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::process::{kill_and_reap, read_lossy, send_signal, shell_quote, wait_timeout};

/// The exporter binary cargo built for these tests.
pub fn exporter_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_opencti-stream-exporter"))
}

/// A command running the exporter binary.
pub fn exporter() -> ExporterCmd {
    ExporterCmd::with_program(exporter_bin())
}

/// A command to run: program, arguments, and the only environment variables
/// the child sees (besides `PATH` and `HOME`, passed through).
#[derive(Clone, Debug)]
pub struct ExporterCmd {
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    current_dir: Option<PathBuf>,
}

impl ExporterCmd {
    /// The same builder for another program: used by the harness's own tests.
    pub fn with_program(program: impl Into<PathBuf>) -> ExporterCmd {
        ExporterCmd {
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            current_dir: None,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Appends `--config <path>`.
    pub fn config_file(self, path: impl AsRef<Path>) -> Self {
        self.arg("--config").arg(path.as_ref())
    }

    /// Sets an environment variable for the child (the last value wins).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        let key = key.as_ref().to_os_string();
        self.envs.retain(|(k, _)| *k != key);
        self.envs.push((key, value.as_ref().to_os_string()));
        self
    }

    /// Runs the child in `dir` (default: the test's working directory).
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// The command as a shell line, the variables the test set first.
    pub fn command_line(&self) -> String {
        self.envs
            .iter()
            .map(|(k, v)| format!("{}={}", k.to_string_lossy(), shell_quote(v)))
            .chain(std::iter::once(shell_quote(self.program.as_os_str())))
            .chain(self.args.iter().map(|a| shell_quote(a)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Runs to completion and returns the outcome, whatever the exit status.
    /// Past `deadline` the child is killed and the test fails with its output.
    pub fn run(&self, deadline: Duration) -> Outcome {
        let mut running = self.spawn();
        match running.wait_timeout(deadline) {
            Some(_) => running.outcome(),
            None => {
                running.kill9();
                panic!(
                    "did not finish within {deadline:?} (killed)\n{}",
                    running.outcome()
                );
            }
        }
    }

    /// Starts the child in the background.
    pub fn spawn(&self) -> RunningExporter {
        let dir = tempfile::Builder::new()
            .prefix("it-exporter-")
            .tempdir()
            .expect("a temporary directory for the exporter's output");
        let stdout = dir.path().join("stdout");
        let stderr = dir.path().join("stderr");
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("stdout file"))
            .stderr(File::create(&stderr).expect("stderr file"));
        for key in ["PATH", "HOME"] {
            if let Some(value) = std::env::var_os(key) {
                command.env(key, value);
            }
        }
        command.envs(self.envs.iter().map(|(k, v)| (k, v)));
        if let Some(dir) = &self.current_dir {
            command.current_dir(dir);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{}`: {e}", self.command_line()));
        RunningExporter {
            child,
            status: None,
            command_line: self.command_line(),
            stdout,
            stderr,
            _dir: dir,
        }
    }
}

/// A child started by [`ExporterCmd::spawn`]; dropping it kills the process.
pub struct RunningExporter {
    child: Child,
    status: Option<ExitStatus>,
    command_line: String,
    stdout: PathBuf,
    stderr: PathBuf,
    _dir: TempDir,
}

impl RunningExporter {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `deadline` for the child to exit; `None` if it still runs.
    pub fn wait_timeout(&mut self, deadline: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = wait_timeout(&mut self.child, deadline);
        }
        self.status
    }

    /// Waits up to `deadline` for the child to exit and returns its outcome;
    /// past the deadline it is killed and the test fails with its output.
    pub fn wait(&mut self, deadline: Duration) -> Outcome {
        if self.wait_timeout(deadline).is_none() {
            self.kill9();
            panic!(
                "did not exit within {deadline:?} (killed)\n{}",
                self.outcome()
            );
        }
        self.outcome()
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        self.wait_timeout(Duration::ZERO).is_none()
    }

    /// Kills the child with SIGKILL (a crash) and reaps it.
    pub fn kill9(&mut self) {
        if self.status.is_none() {
            kill_and_reap(&mut self.child);
            self.status = self.child.try_wait().ok().flatten();
        }
    }

    /// Sends SIGTERM (a polite stop); wait for the exit afterwards.
    pub fn sigterm(&mut self) {
        self.signal("TERM");
    }

    /// Sends SIGINT (Ctrl-C); wait for the exit afterwards.
    pub fn sigint(&mut self) {
        self.signal("INT");
    }

    fn signal(&mut self, name: &str) {
        assert!(
            self.is_running(),
            "cannot send SIG{name}: the child already exited\n{}",
            self.outcome()
        );
        send_signal(self.child.id(), name);
    }

    /// Everything the child printed on stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout)
    }

    /// Everything the child printed on stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr)
    }

    /// Waits until stdout or stderr contains `needle`; fails with the output
    /// if the deadline passes or the child exits without printing it.
    pub fn wait_for_output(&mut self, needle: &str, deadline: Duration) {
        let start = Instant::now();
        loop {
            // Looked at before the output is read, so that whatever the child
            // printed before exiting is seen.
            let exited = !self.is_running();
            if self.stdout().contains(needle) || self.stderr().contains(needle) {
                return;
            }
            if exited {
                panic!(
                    "the child exited before printing `{needle}`\n{}",
                    self.outcome()
                );
            }
            if start.elapsed() >= deadline {
                panic!(
                    "timed out after {deadline:?} waiting for `{needle}` in the output\n{}",
                    self.snapshot()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The outcome of the exited child. Panics if it is still running.
    pub fn outcome(&self) -> Outcome {
        let status = self
            .status
            .unwrap_or_else(|| panic!("outcome of a running child\n{}", self.snapshot()));
        Outcome {
            command: self.command_line.clone(),
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }

    /// The command line and output so far, for failure messages while it runs.
    pub fn snapshot(&self) -> String {
        format!(
            "command: {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command_line,
            self.status
                .map(describe_status)
                .unwrap_or_else(|| "running".to_string()),
            self.stdout(),
            self.stderr()
        )
    }
}

impl Drop for RunningExporter {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// How a finished child ended, with everything it printed. Its `Display` is
/// the failure report: command, status, stdout, stderr.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// The command line, variables set by the test first.
    pub command: String,
    /// How it ended.
    pub status: ExitStatus,
    /// Everything printed on stdout (lossy UTF-8).
    pub stdout: String,
    /// Everything printed on stderr (lossy UTF-8).
    pub stderr: String,
}

impl Outcome {
    /// The exit code; `None` when a signal ended the process.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics with the report unless the exit code is 0.
    pub fn assert_success(&self) -> &Self {
        assert!(self.status.success(), "expected success\n{self}");
        self
    }

    /// Panics with the report unless the exit code is `code`.
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.status.code(),
            Some(code),
            "expected exit code {code}\n{self}"
        );
        self
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "command: {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            describe_status(self.status),
            self.stdout,
            self.stderr
        )
    }
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    }
}
