//! Appending JSON fragments to a byte buffer, fast.
//!
//! Payloads are written by hand rather than built as `serde_json::Value`s: the
//! benchmark needs hundreds of thousands of events a second from one core.
//! Strings that may need escaping go through `serde_json`; strings known to be
//! plain ASCII without quotes or backslashes are copied as they are.

/// Appends a raw fragment (the caller guarantees it is valid JSON in context).
pub fn raw(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
}

/// Appends `s` as a JSON string literal, escaped.
pub fn str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
    }
}

/// Appends the decimal form of `v`.
pub fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Appends `"<iso date of ms>"`.
pub fn iso(out: &mut Vec<u8>, ms: u64) {
    out.push(b'"');
    crate::iso::write_iso(out, ms);
    out.push(b'"');
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends the 36-character form of the uuid whose bits are `hi` then `lo`
/// (no quotes).
pub fn uuid(out: &mut Vec<u8>, hi: u64, lo: u64) {
    let v = (u128::from(hi) << 64) | u128::from(lo);
    for i in 0..32 {
        if matches!(i, 8 | 12 | 16 | 20) {
            out.push(b'-');
        }
        out.push(HEX[((v >> (124 - 4 * i)) & 0xf) as usize]);
    }
}

/// Parses the 36-character uuid form back into `(hi, lo)`.
pub fn parse_uuid(s: &str) -> Option<(u64, u64)> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut v: u128 = 0;
    for (i, &c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u128::from(d);
    }
    Some(((v >> 64) as u64, v as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_only_when_needed() {
        let mut out = Vec::new();
        str(&mut out, "plain été");
        str(&mut out, "a \"quoted\" \\ name\n");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#""plain été""a \"quoted\" \\ name\n""#
        );
    }

    #[test]
    fn numbers_and_uuids() {
        let mut out = Vec::new();
        push_u64(&mut out, 0);
        out.push(b' ');
        push_u64(&mut out, u64::MAX);
        out.push(b' ');
        uuid(&mut out, 0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210);
        let s = String::from_utf8(out).unwrap();
        assert_eq!(
            s,
            "0 18446744073709551615 01234567-89ab-cdef-fedc-ba9876543210"
        );
        assert_eq!(
            parse_uuid("01234567-89ab-cdef-fedc-ba9876543210"),
            Some((0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210))
        );
        assert_eq!(parse_uuid("01234567-89ab-cdef-fedc-ba987654321"), None);
        assert_eq!(parse_uuid("01234567x89ab-cdef-fedc-ba9876543210"), None);
    }
}
