//! The wall clock, in the one unit the exporter uses for it: milliseconds
//! since the epoch (stream ids, object key stamps, state dates, lags). Pure
//! modules take the time as an argument; only I/O shells read it here.

/// Milliseconds since the epoch, now (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A name unique to this process among runs on any host: the clock in
/// nanoseconds, the process id and the host's name, hashed. The same for
/// the whole run.
pub fn run_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| unique_name("run"))
}

/// A new name, unique among every other one made here or elsewhere.
pub fn unique_name(kind: &str) -> String {
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
}
