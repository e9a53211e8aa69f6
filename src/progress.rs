//! How a run shows it is alive: on a terminal a status line at the bottom,
//! redrawn every second; elsewhere an info log line every
//! `metrics.log_every_sec`. Also acknowledges a stop signal.
//!
//! The status line and the logger share one lock ([`write_above`]): a log
//! line first clears the status line, is written whole, and the status line
//! is drawn again under it, so the screen never holds half-lines. The line
//! is cut to the terminal's width (a line that wraps could not be cleared
//! with one `\r`), and [`Progress::finish`] clears it for good before the run
//! summary is printed. A crate such as `indicatif` does the same with its own
//! draw thread and wrappers around every writer; one mutex and one escape
//! sequence are enough here.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::clock::WakeFlag;
use crate::metrics::Metrics;

struct Line {
    /// The status line is on the screen now.
    shown: bool,
    /// Its text, drawn again after each log line; empty when stopped.
    text: String,
}

static LINE: Mutex<Line> = Mutex::new(Line {
    shown: false,
    text: String::new(),
});

const CLEAR: &[u8] = b"\r\x1b[2K";

/// Writes `bytes` (whole log lines) to stderr above the status line.
pub(crate) fn write_above(bytes: &[u8]) {
    let line = LINE.lock().unwrap_or_else(|e| e.into_inner());
    let mut err = std::io::stderr().lock();
    if line.shown {
        let _ = err.write_all(CLEAR);
    }
    let _ = err.write_all(bytes);
    if line.shown {
        let _ = err.write_all(line.text.as_bytes());
    }
    let _ = err.flush();
}

fn draw(text: Option<String>) {
    let mut line = LINE.lock().unwrap_or_else(|e| e.into_inner());
    let mut err = std::io::stderr().lock();
    if line.shown {
        let _ = err.write_all(CLEAR);
    }
    match text {
        Some(t) => {
            let _ = err.write_all(t.as_bytes());
            line.text = t;
            line.shown = true;
        }
        None => {
            line.text.clear();
            line.shown = false;
        }
    }
    let _ = err.flush();
}

/// Columns of the terminal on stderr (80 when it cannot be told).
pub(crate) fn terminal_width() -> usize {
    // SAFETY: TIOCGWINSZ fills a `winsize` and touches nothing else.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        ws.ws_col as usize
    } else {
        80
    }
}

/// `text` cut to `width - 3` characters. The last columns stay free: a
/// character written in the last one makes some terminals wrap, and the
/// terminal echoes `^C` after the line when Ctrl-C is pressed; a line that
/// wrapped could no longer be cleared with one `\r`.
pub(crate) fn fit(text: &str, width: usize) -> String {
    let max = width.saturating_sub(3).max(1);
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// The figures of one status line.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Figures {
    /// Data events received.
    pub(crate) received: u64,
    /// Received per second since the last line.
    pub(crate) rate: f64,
    /// Lines stored.
    pub(crate) stored: u64,
    /// Files stored.
    pub(crate) files: u64,
    /// Bytes stored.
    pub(crate) bytes: u64,
    /// Seconds between now and the committed cursor (`None`: no cursor yet).
    pub(crate) cursor_behind: Option<u64>,
    /// Seconds since the start of the run.
    pub(crate) elapsed: u64,
}

/// The status line: one lag figure, the committed cursor's age.
pub(crate) fn status_text(f: &Figures) -> String {
    format!(
        "{} received ({:.0}/s); {} stored in {} files; cursor {}; {:.1} MB; {}",
        f.received,
        f.rate,
        f.stored,
        f.files,
        f.cursor_behind
            .map(|s| format!("{} behind now", crate::text::secs(s)))
            .unwrap_or_else(|| "not yet saved".into()),
        f.bytes as f64 / 1e6,
        crate::text::secs(f.elapsed),
    )
}

/// What a first stop signal does, said once.
pub(crate) fn stop_text(terminal: bool) -> &'static str {
    if terminal {
        "stopping: storing what was received (Ctrl-C again to quit now)"
    } else {
        "stopping on a signal: storing and committing what was received (a second signal quits at once, keeping only what was committed)"
    }
}

/// The running reporter. [`Progress::finish`] (or dropping it) stops it and
/// clears the status line.
pub(crate) struct Progress {
    done: Arc<WakeFlag>,
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts reporting `metrics`; `stop` is the run's signal flag, watched
    /// to acknowledge a first signal. `interval`: between two log lines when
    /// stderr is not a terminal.
    pub(crate) fn start(
        metrics: Arc<Metrics>,
        stop: Arc<AtomicBool>,
        interval: Duration,
    ) -> Progress {
        let done = Arc::new(WakeFlag::default());
        let tty = std::io::stderr().is_terminal();
        let thread = {
            let done = done.clone();
            std::thread::Builder::new()
                .name("progress".into())
                .spawn(move || report(metrics, stop, done, interval, tty))
                .ok()
        };
        Progress { done, thread }
    }

    /// Stops reporting and clears the status line.
    pub(crate) fn finish(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.done.set();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn report(
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    done: Arc<WakeFlag>,
    interval: Duration,
    tty: bool,
) {
    let started = Instant::now();
    let every = if tty {
        Duration::from_secs(1)
    } else {
        interval
    };
    let mut last_print = Instant::now();
    let mut last_events = 0u64;
    let mut acknowledged = false;
    let acknowledge = |acknowledged: &mut bool| {
        if !*acknowledged && stop.load(Ordering::Relaxed) {
            *acknowledged = true;
            log::info!("{}", stop_text(tty));
        }
    };
    while !done.sleep(Duration::from_millis(100)) {
        acknowledge(&mut acknowledged);
        if last_print.elapsed() < every {
            continue;
        }
        let now = metrics.snapshot();
        let rate =
            (now.received - last_events) as f64 / last_print.elapsed().as_secs_f64().max(0.001);
        last_events = now.received;
        last_print = Instant::now();
        if tty {
            let cursor_ms = now.cursor_ms;
            let figures = Figures {
                received: now.received,
                rate,
                stored: now.events_written,
                files: now.files_written,
                bytes: now.bytes_written,
                cursor_behind: (cursor_ms > 0)
                    .then(|| crate::clock::now_ms().saturating_sub(cursor_ms) / 1000),
                elapsed: started.elapsed().as_secs(),
            };
            if !done.is_set() {
                draw(Some(fit(&status_text(&figures), terminal_width())));
            }
        } else {
            log::info!(
                "progress: {rate:.0} events/s received; {}",
                metrics.summary_line()
            );
        }
    }
    // A run that ends within a tick of its signal still says why it stopped.
    acknowledge(&mut acknowledged);
    if tty {
        draw(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_status_line_is_cut_to_the_width() {
        let f = Figures {
            received: 123_456_789,
            rate: 98_765.0,
            stored: 123_000_000,
            files: 45_678,
            bytes: 987_654_321_000,
            cursor_behind: Some(7_300),
            elapsed: 86_400,
        };
        let text = status_text(&f);
        assert!(text.contains("cursor 2 h 1 min behind now"), "{text}");
        for width in [20, 40, 80] {
            let cut = fit(&text, width);
            assert!(cut.chars().count() <= width - 3, "{width}: {cut}");
        }
        assert_eq!(fit("short", 80), "short");
    }

    #[test]
    fn the_status_line_names_its_one_lag() {
        let text = status_text(&Figures::default());
        assert!(text.contains("cursor not yet saved"), "{text}");
        assert_eq!(text.matches("behind").count(), 0);
        assert!(stop_text(true).contains("Ctrl-C again to quit now"));
    }
}
