//! Retry policy: capped exponential backoff with jitter, and sleeps that
//! wake up when the run is asked to stop. Which errors are worth a retry is
//! decided where they happen (see `dest::DestError`); this module only says
//! how long to wait.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Capped exponential backoff with ±25 % jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    seed: u64,
}

impl Backoff {
    /// Starts at `base`, doubles up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        let seed = std::process::id() as u64 ^ crate::id::now_ms();
        Backoff {
            base,
            max,
            attempt: 0,
            seed,
        }
    }

    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(20));
        let capped = exp.min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift: cheap jitter, no dependency.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let frac = (self.seed % 1000) as f64 / 1000.0; // 0..1
        capped.mul_f64(0.75 + 0.5 * frac)
    }

    /// Attempts made since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Sleeps for `d`, waking early when `stop` becomes true. Returns false if stopped.
pub fn sleep_unless(d: Duration, stop: &AtomicBool) -> bool {
    let end = Instant::now() + d;
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= end {
            return true;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_bounded_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let d: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(75) && d[0] <= Duration::from_millis(125));
        assert!(d[7] >= Duration::from_millis(1500) && d[7] <= Duration::from_millis(2500));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(125));
    }

    #[test]
    fn sleep_returns_false_at_once_when_already_stopped() {
        let stop = AtomicBool::new(true);
        let t = Instant::now();
        assert!(!sleep_unless(Duration::from_secs(10), &stop));
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn sleep_wakes_when_stop_is_set_during_the_sleep() {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let setter = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                stop.store(true, Ordering::Relaxed);
            })
        };
        let t = Instant::now();
        // Without the wake-up this would sleep the whole 30 s.
        assert!(!sleep_unless(Duration::from_secs(30), &stop));
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "woke after {:?}",
            t.elapsed()
        );
        setter.join().unwrap();
    }

    #[test]
    fn sleep_runs_its_course_when_not_stopped() {
        let stop = AtomicBool::new(false);
        let t = Instant::now();
        assert!(sleep_unless(Duration::from_millis(60), &stop));
        assert!(t.elapsed() >= Duration::from_millis(60));
    }
}
