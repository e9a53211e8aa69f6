//! Values written as text: durations in the units a person reads best, and
//! bytes as lower-case hex. Pure; every figure a person reads (progress line,
//! run summary, `state show`, error messages) goes through here, so the same
//! lag is never printed two ways.

use std::time::Duration;

/// A duration in whole seconds, with at most two units: `42 s`,
/// `5 min 3 s`, `3 h 20 min`, `1106 days 4 h`. A zero second unit is left out.
pub fn secs(s: u64) -> String {
    let two = |big: u64, big_unit: &str, small: u64, small_unit: &str| {
        if small == 0 {
            format!("{big} {big_unit}")
        } else {
            format!("{big} {big_unit} {small} {small_unit}")
        }
    };
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => two(s / 60, "min", s % 60, "s"),
        7200..=172_799 => two(s / 3600, "h", s % 3600 / 60, "min"),
        _ => two(s / 86_400, "days", s % 86_400 / 3600, "h"),
    }
}

/// A [`Duration`]: as [`secs`], or in milliseconds when a short one has a
/// fraction of a second (`1500 ms`).
pub fn duration(d: Duration) -> String {
    if d.subsec_millis() != 0 && d < Duration::from_secs(120) {
        format!("{} ms", d.as_millis())
    } else {
        secs(d.as_secs())
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_use_at_most_two_units() {
        let cases = [
            (0, "0 s"),
            (119, "119 s"),
            (120, "2 min"),
            (4000, "66 min 40 s"),
            (7199, "119 min 59 s"),
            (7200, "2 h"),
            (90_000, "25 h"),
            (90_060, "25 h 1 min"),
            (172_800, "2 days"),
            // The lag the progress line once printed both as `1106 days`
            // and as `26560 h 42 min`.
            (95_618_520, "1106 days 16 h"),
        ];
        for (s, want) in cases {
            assert_eq!(secs(s), want, "{s}");
        }
    }

    #[test]
    fn short_durations_keep_their_milliseconds() {
        assert_eq!(duration(Duration::from_millis(1500)), "1500 ms");
        assert_eq!(duration(Duration::from_millis(250)), "250 ms");
        assert_eq!(duration(Duration::from_secs(30)), "30 s");
        assert_eq!(duration(Duration::from_millis(300_500)), "5 min");
    }

    #[test]
    fn hex_is_lower_case_two_digits_a_byte() {
        assert_eq!(hex(&[]), "");
        assert_eq!(hex(&[0, 1, 0xab, 0xff]), "0001abff");
    }
}
