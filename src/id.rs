//! Stream ids (`<epoch_ms>-<seq>`) and the start positions operators type.
//!
//! Ids order numerically by (ms, seq). A start position may be written as an
//! id, as epoch milliseconds, or as an ISO-8601 date with a zone; anything
//! that could be misread (epoch seconds, a date without a zone) is refused
//! with a message that says how to write it. Pure.

use std::fmt;
use std::str::FromStr;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A Redis-stream id as OpenCTI sends it: `<epoch_ms>-<seq>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(crate) struct EventId {
    /// Milliseconds since the Unix epoch.
    pub(crate) ms: u64,
    /// Sequence within the millisecond.
    pub(crate) seq: u64,
}

impl EventId {
    /// The id `<ms>-0`.
    pub(crate) fn at_ms(ms: u64) -> Self {
        EventId { ms, seq: 0 }
    }

    /// The id's millisecond part as an RFC 3339 date (UTC, milliseconds).
    pub(crate) fn date(&self) -> String {
        ms_to_iso(self.ms)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl EventId {
    /// Appends the id as a JSON string (`"<ms>-<seq>"`) to `out`, without
    /// the formatting machinery: it is written into every line.
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        let mut digits = itoa::Buffer::new();
        out.push(b'"');
        out.extend_from_slice(digits.format(self.ms).as_bytes());
        out.push(b'-');
        out.extend_from_slice(digits.format(self.seq).as_bytes());
        out.push(b'"');
    }
}

impl FromStr for EventId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (ms, seq) = s
            .split_once('-')
            .ok_or_else(|| format!("`{s}` is not a stream id of the form `<ms>-<seq>`"))?;
        let digits =
            |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(format!("`{s}` is not a stream id of the form `<ms>-<seq>`"));
        }
        Ok(EventId {
            ms: ms
                .parse()
                .map_err(|_| format!("`{s}`: millisecond part out of range"))?,
            seq: seq
                .parse()
                .map_err(|_| format!("`{s}`: sequence part out of range"))?,
        })
    }
}

impl serde::Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses a start position: `<ms>-<seq>`, epoch milliseconds (13 digits),
/// or an ISO-8601 date-time with a zone. Returns the id to resume after.
pub(crate) fn parse_position(input: &str) -> Result<EventId, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("empty position: give a date like `2024-06-15T10:00:00Z`, epoch milliseconds, or an id `<ms>-<seq>`".into());
    }
    if s.contains('-')
        && s.bytes().all(|b| b.is_ascii_digit() || b == b'-')
        && s.matches('-').count() == 1
    {
        return s.parse();
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return match s.len() {
            13 => Ok(EventId::at_ms(s.parse().map_err(|_| format!("`{s}` is out of range"))?)),
            9..=11 => Err(format!(
                "`{s}` looks like epoch seconds; give epoch milliseconds (`{s}000`), an ISO date or an id `<ms>-<seq>`"
            )),
            _ => Err(format!(
                "`{s}` is ambiguous: give epoch milliseconds (13 digits), an ISO date like `2024-06-15T10:00:00Z` or an id `<ms>-<seq>`"
            )),
        };
    }
    parse_iso_ms(s).map(EventId::at_ms)
}

/// Parses an ISO-8601 / RFC 3339 date-time with a zone into epoch ms.
pub(crate) fn parse_iso_ms(s: &str) -> Result<u64, String> {
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| {
        let b = s.as_bytes();
        let dated =
            b.len() >= 10 && b[4] == b'-' && b[7] == b'-' && b[..4].iter().all(u8::is_ascii_digit);
        let zoned = s.ends_with(['Z', 'z']) || s.get(19..).is_some_and(|t| t.contains(['+', '-']));
        if dated && !zoned {
            format!("`{s}` has no time zone: write it in full, e.g. `2024-06-15T10:00:00Z`")
        } else {
            format!("`{s}` is not an ISO-8601 date-time like `2024-06-15T10:00:00Z`")
        }
    })?;
    let ms = t.unix_timestamp_nanos() / 1_000_000;
    u64::try_from(ms).map_err(|_| format!("`{s}` is before 1970"))
}

/// Epoch milliseconds as an RFC 3339 UTC date with milliseconds.
pub(crate) fn ms_to_iso(ms: u64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_numerically() {
        let a: EventId = "9-10".parse().unwrap();
        let b: EventId = "10-0".parse().unwrap();
        let c: EventId = "10-2".parse().unwrap();
        assert!(a < b && b < c);
        assert_eq!(c.to_string(), "10-2");
    }

    #[test]
    fn positions_accept_ids_ms_and_zoned_dates() {
        let ok = [
            ("0-0", "0-0"),
            ("1718446500000-3", "1718446500000-3"),
            ("1718446500000", "1718446500000-0"),
            ("2024-06-15T10:15:00Z", "1718446500000-0"),
            ("2024-06-15T12:15:00+02:00", "1718446500000-0"),
            ("2024-06-15T10:15:00.250Z", "1718446500250-0"),
        ];
        for (input, want) in ok {
            assert_eq!(parse_position(input).unwrap().to_string(), want, "{input}");
        }
    }

    #[test]
    fn positions_refuse_what_could_be_misread() {
        let bad = [
            ("1718446500", "epoch seconds"),
            ("17184465", "ambiguous"),
            ("2024-06-15", "no time zone"),
            ("2024-06-15T10:15:00", "no time zone"),
            ("yesterday", "not an ISO-8601"),
            ("12-ab", "not an ISO-8601"),
            ("", "empty"),
        ];
        for (input, want) in bad {
            let err = parse_position(input).unwrap_err();
            assert!(err.contains(want), "{input}: {err}");
        }
    }

    #[test]
    fn ms_prints_as_utc_iso() {
        assert_eq!(ms_to_iso(1718446500250), "2024-06-15T10:15:00.250Z");
        assert_eq!(
            parse_iso_ms(&ms_to_iso(1700000000187)).unwrap(),
            1700000000187
        );
    }
}
