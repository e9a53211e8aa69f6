//! The wall clock, in the one unit the exporter uses for it: milliseconds
//! since the epoch (stream ids, object key stamps, state dates, lags). Pure
//! modules take the time as an argument; only I/O shells read it here.

/// Milliseconds since the epoch, now (0 if the clock is before 1970).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A name unique to this process among runs on any host: the clock in
/// nanoseconds, the process id and the host's name, hashed. The same for
/// the whole run.
pub(crate) fn run_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| unique_name("run"))
}

/// A new name, unique among every other one made here or elsewhere.
pub(crate) fn unique_name(kind: &str) -> String {
    use sha2::{Digest, Sha256};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let seed = format!(
        "{kind}:{nanos}:{}:{}:{host}:{:p}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed),
        &COUNT
    );
    crate::text::hex(&Sha256::digest(seed.as_bytes())[..8])
}

/// A flag set once that wakes the threads sleeping on it: a thread that
/// wakes up now and then to work until the run ends (the lease keeper, the
/// progress reports) sees the end at once instead of at its next tick, and
/// the run does not wait for it to finish a sleep.
#[derive(Default)]
pub(crate) struct WakeFlag {
    set: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
}

impl WakeFlag {
    /// Sets the flag and wakes every sleeper.
    pub(crate) fn set(&self) {
        *self.set.lock().expect("not poisoned") = true;
        self.cv.notify_all();
    }

    /// Whether the flag is set.
    pub(crate) fn is_set(&self) -> bool {
        *self.set.lock().expect("not poisoned")
    }

    /// Sleeps for `d`, or less if the flag is set meanwhile; true when set.
    pub(crate) fn sleep(&self, d: std::time::Duration) -> bool {
        let until = std::time::Instant::now() + d;
        let mut set = self.set.lock().expect("not poisoned");
        while !*set {
            let now = std::time::Instant::now();
            if now >= until {
                return false;
            }
            set = self
                .cv
                .wait_timeout(set, until - now)
                .expect("not poisoned")
                .0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_milliseconds_since_the_epoch() {
        let a = now_ms();
        // After 2020-01-01 and well before the year 2200 in milliseconds.
        assert!(a > 1_577_836_800_000 && a < 7_258_118_400_000, "{a}");
        assert!(now_ms() >= a);
    }

    #[test]
    fn a_sleeper_wakes_as_soon_as_the_flag_is_set() {
        use std::sync::Arc;
        use std::time::{Duration, Instant};
        let flag = Arc::new(WakeFlag::default());
        assert!(!flag.sleep(Duration::from_millis(1)));
        let sleeper = {
            let flag = flag.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                (flag.sleep(Duration::from_secs(60)), t.elapsed())
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        flag.set();
        let (woken, slept) = sleeper.join().unwrap();
        assert!(woken && flag.is_set());
        assert!(slept < Duration::from_secs(30), "{slept:?}");
        assert!(flag.sleep(Duration::from_secs(60)), "set stays set");
    }
}
