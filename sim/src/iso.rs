//! ISO-8601 dates <-> epoch milliseconds (UTC), without a date crate.
//!
//! Formatting always gives `YYYY-MM-DDTHH:MM:SS.mmmZ` (what JavaScript's
//! `toISOString` gives, so what OpenCTI sends). Parsing accepts what a client is
//! likely to send as a start or recovery date: a date alone, minutes, seconds,
//! a fraction, and `Z`, `±HH:MM`, `±HHMM` or no zone (read as UTC).

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn push2(out: &mut Vec<u8>, v: u32) {
    out.push(b'0' + (v / 10) as u8);
    out.push(b'0' + (v % 10) as u8);
}

/// Appends `YYYY-MM-DDTHH:MM:SS.mmmZ` for `ms` milliseconds since the epoch.
pub fn write_iso(out: &mut Vec<u8>, ms: u64) {
    let secs = ms / 1000;
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let sod = (secs % 86_400) as u32;
    let y = y.clamp(0, 9999) as u32;
    push2(out, y / 100);
    push2(out, y % 100);
    out.push(b'-');
    push2(out, mo);
    out.push(b'-');
    push2(out, d);
    out.push(b'T');
    push2(out, sod / 3600);
    out.push(b':');
    push2(out, sod / 60 % 60);
    out.push(b':');
    push2(out, sod % 60);
    out.push(b'.');
    let frac = (ms % 1000) as u32;
    out.push(b'0' + (frac / 100) as u8);
    push2(out, frac % 100);
    out.push(b'Z');
}

/// `ms` milliseconds since the epoch as an ISO-8601 string.
pub fn iso(ms: u64) -> String {
    let mut v = Vec::with_capacity(24);
    write_iso(&mut v, ms);
    String::from_utf8(v).expect("ascii")
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn digits(&mut self, n: usize) -> Option<u32> {
        let s = self.b.get(self.pos..self.pos + n)?;
        let mut v = 0u32;
        for &c in s {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u32::from(c - b'0');
        }
        self.pos += n;
        Some(v)
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.b.get(self.pos) == Some(&c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn done(&self) -> bool {
        self.pos == self.b.len()
    }
}

/// Milliseconds since the epoch of an ISO-8601 date, or `None` if `s` is not one
/// (or is before 1970).
pub fn parse_iso(s: &str) -> Option<u64> {
    let mut c = Cursor {
        b: s.trim().as_bytes(),
        pos: 0,
    };
    let y = c.digits(4)?;
    if !c.eat(b'-') {
        return None;
    }
    let mo = c.digits(2)?;
    if !c.eat(b'-') {
        return None;
    }
    let d = c.digits(2)?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let (mut hh, mut mi, mut ss, mut frac) = (0, 0, 0, 0);
    let mut offset_min: i64 = 0;
    if !c.done() {
        if !(c.eat(b'T') || c.eat(b't') || c.eat(b' ')) {
            return None;
        }
        hh = c.digits(2)?;
        if !c.eat(b':') {
            return None;
        }
        mi = c.digits(2)?;
        if c.eat(b':') {
            ss = c.digits(2)?;
            if c.eat(b'.') || c.eat(b',') {
                let start = c.pos;
                let mut scale = 100;
                while let Some(&b) = c.b.get(c.pos) {
                    if !b.is_ascii_digit() {
                        break;
                    }
                    frac += u32::from(b - b'0') * scale;
                    scale /= 10;
                    c.pos += 1;
                }
                if c.pos == start {
                    return None;
                }
            }
        }
        if hh > 23 || mi > 59 || ss > 60 {
            return None;
        }
        if c.eat(b'Z') || c.eat(b'z') {
        } else if let Some(&sign) = c.b.get(c.pos).filter(|b| **b == b'+' || **b == b'-') {
            c.pos += 1;
            let oh = c.digits(2)?;
            c.eat(b':');
            let om = c.digits(2)?;
            let total = i64::from(oh * 60 + om);
            offset_min = if sign == b'+' { total } else { -total };
        }
        if !c.done() {
            return None;
        }
    }
    let days = days_from_civil(i64::from(y), mo, d);
    let secs =
        days * 86_400 + i64::from(hh) * 3600 + i64::from(mi) * 60 + i64::from(ss) - offset_min * 60;
    let ms = secs * 1000 + i64::from(frac);
    u64::try_from(ms).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_javascript_to_iso_string() {
        assert_eq!(iso(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
        assert_eq!(iso(1_718_446_500_042), "2024-06-15T10:15:00.042Z");
        assert_eq!(iso(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn parses_the_forms_clients_send() {
        let cases: &[(&str, Option<u64>)] = &[
            ("2023-11-14T22:13:20.000Z", Some(1_700_000_000_000)),
            ("2023-11-14T22:13:20Z", Some(1_700_000_000_000)),
            ("2023-11-14T22:13:20.5Z", Some(1_700_000_000_500)),
            ("2023-11-14T22:13:20.123456Z", Some(1_700_000_000_123)),
            ("2023-11-14T22:13Z", Some(1_699_999_980_000)),
            ("2023-11-14T23:13:20+01:00", Some(1_700_000_000_000)),
            ("2023-11-14T21:13:20-0100", Some(1_700_000_000_000)),
            ("2023-11-14T22:13:20", Some(1_700_000_000_000)),
            ("2023-11-14 22:13:20", Some(1_700_000_000_000)),
            ("2023-11-14", Some(1_699_920_000_000)),
            ("1970-01-01T00:00:00Z", Some(0)),
            ("1700000000000", None),
            ("1700000000000-0", None),
            ("2023-13-01", None),
            ("2023-11-14T", None),
            ("2023-11-14T22:13:20Zjunk", None),
            ("", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_iso(s), *want, "{s}");
        }
    }

    #[test]
    fn format_and_parse_round_trip() {
        for ms in [0, 1, 999, 1_700_000_000_123, 4_102_444_800_000] {
            assert_eq!(parse_iso(&iso(ms)), Some(ms));
        }
    }
}
