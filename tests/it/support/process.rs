//! Small process helpers shared by the server and exporter wrappers: signals,
//! waiting with a deadline, log tails, command lines for failure messages.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Sends `signal` (a name such as `TERM`, `INT`, `KILL`) to `pid` with the
/// `kill` command; a process that already exited is not an error.
///
/// The `kill` command rather than `libc::kill`, to need no extra dependency.
pub fn send_signal(pid: u32, signal: &str) {
    // A non-zero exit means no such process: it is gone already, which is
    // what a caller about to wait for it wants anyway.
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run `kill -{signal} {pid}`: {e}"));
}

/// Waits up to `deadline` for `child` to exit; `None` if it is still running.
pub fn wait_timeout(child: &mut Child, deadline: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(e) => panic!("cannot wait for process {}: {e}", child.id()),
        }
        let elapsed = start.elapsed();
        if elapsed >= deadline {
            return None;
        }
        thread::sleep(pause.min(deadline - elapsed));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Kills `child` with SIGKILL and reaps it; does nothing if it already exited.
pub fn kill_and_reap(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    // SIGKILL cannot be ignored: this returns promptly.
    let _ = child.wait();
}

/// The last `lines` lines of a text file, or a note saying why there are none.
pub fn tail(path: &Path, lines: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// A file's whole content as text (lossy), or a note saying why not.
pub fn read_lossy(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// `program arg...` quoted for a shell, for failure messages.
pub fn command_line<'a>(
    program: &OsStr,
    args: impl IntoIterator<Item = &'a std::ffi::OsString>,
) -> String {
    std::iter::once(program)
        .chain(args.into_iter().map(|a| a.as_os_str()))
        .map(shell_quote)
        .collect::<Vec<_>>()
        .join(" ")
}

/// One word quoted for a POSIX shell when it needs to be.
pub fn shell_quote(word: &OsStr) -> String {
    let s = word.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}
