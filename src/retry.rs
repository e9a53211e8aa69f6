//! Retry policy: capped exponential backoff with jitter, sleeps that wake
//! up when the run is asked to stop, and the one loop that retries an
//! operation ([`run`]). Which errors are worth a retry is decided where they
//! happen (the caller turns its error into a [`Verdict`], e.g. from
//! `dest::DestError`); this module only says how long to wait and when to
//! give up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Capped exponential backoff with ±25 % jitter.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
    seed: u64,
}

impl Backoff {
    /// Starts at `base`, doubles up to `max`.
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        // The process id once per process (a system call), the clock and a
        // count: backoffs started together still jitter apart.
        static PID: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let pid = *PID.get_or_init(|| u64::from(std::process::id()));
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let seed = (pid ^ crate::clock::now_ms() ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
        Backoff {
            base,
            max,
            attempt: 0,
            seed,
        }
    }

    /// The next wait.
    pub(crate) fn next_delay(&mut self) -> Duration {
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

    /// Back to the first delay (after a success).
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Sleeps for `d`, waking early when `stop` becomes true. Returns false if stopped.
pub(crate) fn sleep_unless(d: Duration, stop: &AtomicBool) -> bool {
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

/// What the code where an error happened says about trying again.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict<E> {
    /// May succeed if tried again (network, server busy, full disk).
    Retry(E),
    /// Will fail the same way: give up now.
    GiveUp(E),
}

/// Why [`run`] ended without a result; each carries the last error.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Failure<E> {
    /// The attempt said it cannot succeed.
    GaveUp(E),
    /// The stop flag was set while waiting to try again.
    Stopped(E),
    /// The allowed number of attempts was used up.
    Exhausted(E),
}

/// How to retry: the first and the longest wait, and how many attempts in
/// all (`None`: for as long as it takes).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    /// The first wait.
    pub(crate) first: Duration,
    /// The longest wait.
    pub(crate) max: Duration,
    /// Attempts in all, the first included; `None` for no limit.
    pub(crate) attempts: Option<u32>,
}

/// Calls `attempt` until it succeeds, it gives up, the attempts run out or
/// `stop` is set, waiting between attempts as `policy` says. Before each
/// wait, `on_retry` hears the error, the number of the attempt that failed
/// and the wait (to log it and count it).
pub(crate) fn run<T, E>(
    policy: Policy,
    stop: &AtomicBool,
    mut attempt: impl FnMut() -> Result<T, Verdict<E>>,
    mut on_retry: impl FnMut(&E, u32, Duration),
) -> Result<T, Failure<E>> {
    let mut backoff = Backoff::new(policy.first, policy.max);
    let mut made = 0u32;
    loop {
        made = made.saturating_add(1);
        let e = match attempt() {
            Ok(v) => return Ok(v),
            Err(Verdict::GiveUp(e)) => return Err(Failure::GaveUp(e)),
            Err(Verdict::Retry(e)) => e,
        };
        if policy.attempts.is_some_and(|n| made >= n) {
            return Err(Failure::Exhausted(e));
        }
        let wait = backoff.next_delay();
        on_retry(&e, made, wait);
        if !sleep_unless(wait, stop) {
            return Err(Failure::Stopped(e));
        }
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

    const QUICK: Policy = Policy {
        first: Duration::ZERO,
        max: Duration::ZERO,
        attempts: None,
    };

    /// An attempt that fails with each verdict of `script` in turn, then succeeds.
    fn scripted(script: Vec<Verdict<u32>>) -> impl FnMut() -> Result<&'static str, Verdict<u32>> {
        let mut script = script.into_iter();
        move || match script.next() {
            Some(v) => Err(v),
            None => Ok("done"),
        }
    }

    #[test]
    fn retries_until_success_telling_each_failure() {
        let stop = AtomicBool::new(false);
        let mut heard = Vec::new();
        let got = run(
            QUICK,
            &stop,
            scripted(vec![Verdict::Retry(1), Verdict::Retry(2)]),
            |e, n, _| heard.push((*e, n)),
        );
        assert_eq!(got, Ok("done"));
        assert_eq!(heard, [(1, 1), (2, 2)]);
    }

    #[test]
    fn gives_up_at_once_when_the_error_says_so() {
        let stop = AtomicBool::new(false);
        let mut retries = 0;
        let got = run(
            QUICK,
            &stop,
            scripted(vec![
                Verdict::Retry(1),
                Verdict::GiveUp(2),
                Verdict::Retry(3),
            ]),
            |_, _, _| retries += 1,
        );
        assert_eq!(got, Err(Failure::GaveUp(2)));
        assert_eq!(retries, 1);
    }

    #[test]
    fn stops_after_the_allowed_attempts() {
        let stop = AtomicBool::new(false);
        let policy = Policy {
            attempts: Some(3),
            ..QUICK
        };
        let mut calls = 0;
        let got: Result<(), _> = run(
            policy,
            &stop,
            || {
                calls += 1;
                Err(Verdict::Retry(calls))
            },
            |_, _, _| {},
        );
        assert_eq!(got, Err(Failure::Exhausted(3)));
        assert_eq!(calls, 3);
    }

    #[test]
    fn a_stop_ends_the_waiting_with_the_last_error() {
        let stop = AtomicBool::new(false);
        let policy = Policy {
            first: Duration::from_secs(30),
            max: Duration::from_secs(30),
            attempts: None,
        };
        let t = Instant::now();
        let got: Result<(), _> = run(
            policy,
            &stop,
            || Err(Verdict::Retry("busy")),
            |_, _, _| stop.store(true, Ordering::Relaxed),
        );
        assert_eq!(got, Err(Failure::Stopped("busy")));
        assert!(t.elapsed() < Duration::from_secs(10));
    }
}
