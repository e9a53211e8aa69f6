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
