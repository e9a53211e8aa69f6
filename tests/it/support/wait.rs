//! Polling with a deadline: the only way the harness waits for a condition.

use std::thread;
use std::time::{Duration, Instant};

/// Polls `f` until it returns true; panics naming `what` if `deadline` passes
/// first. Polls quickly at first, then every 200 ms at most.
pub fn wait_until(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) {
    wait_for(what, deadline, || f().then_some(()))
}

/// Polls `f` until it returns `Some`, and returns that value; panics naming
/// `what` if `deadline` passes first.
pub fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(value) = f() {
            return value;
        }
        let elapsed = start.elapsed();
        if elapsed >= deadline {
            panic!("timed out after {deadline:?} waiting until {what}");
        }
        thread::sleep(pause.min(deadline - elapsed));
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}
