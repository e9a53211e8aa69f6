//! Stream ids (`<ms>-<seq>`, ordered as a pair of numbers, like Redis stream
//! ids) and how OpenCTI reads a start position or a recovery date from a
//! request.

use std::fmt;

use crate::iso;

/// A live-stream message id: `<ms>-<seq>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EventId {
    /// Milliseconds since the epoch.
    pub ms: u64,
    /// Sequence number within that millisecond.
    pub seq: u64,
}

impl EventId {
    pub const ZERO: EventId = EventId { ms: 0, seq: 0 };

    pub fn new(ms: u64, seq: u64) -> Self {
        EventId { ms, seq }
    }

    /// Parses `<digits>-<digits>`.
    pub fn parse(s: &str) -> Option<Self> {
        let (a, b) = s.split_once('-')?;
        let num = |t: &str| {
            if t.is_empty() || !t.bytes().all(|c| c.is_ascii_digit()) {
                None
            } else {
                t.parse().ok()
            }
        };
        Some(EventId::new(num(a)?, num(b)?))
    }

    /// Appends the textual form.
    pub fn write(&self, out: &mut Vec<u8>) {
        crate::jsonw::push_u64(out, self.ms);
        out.push(b'-');
        crate::jsonw::push_u64(out, self.seq);
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A start position (`Last-Event-ID`, `from`) as OpenCTI reads it: `0` and `0-0`
/// mean the beginning, `<ms>-<seq>` is taken as is, an ISO date becomes
/// `<date ms>-0`. Messages strictly after the returned id are sent. Anything
/// else is no position at all (live only).
pub fn parse_start(s: &str) -> Option<EventId> {
    let s = s.trim();
    if s == "0" || s == "0-0" {
        return Some(EventId::ZERO);
    }
    if s.split('-').count() == 2 {
        return EventId::parse(s);
    }
    iso::parse_iso(s).map(|ms| EventId::new(ms, 0))
}

/// A recovery date (`recover`) as OpenCTI reads it, in milliseconds: the same
/// forms as [`parse_start`], an id standing for its millisecond.
pub fn parse_date(s: &str) -> Option<u64> {
    parse_start(s).map(|id| id.ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_numerically() {
        let mut ids: Vec<EventId> = ["10-0", "9-5", "10-10", "10-2", "100-0"]
            .iter()
            .map(|s| EventId::parse(s).unwrap())
            .collect();
        ids.sort();
        let text: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        assert_eq!(text, ["9-5", "10-0", "10-2", "10-10", "100-0"]);
    }

    #[test]
    fn start_positions_read_like_opencti() {
        let cases: &[(&str, Option<EventId>)] = &[
            ("0", Some(EventId::ZERO)),
            ("0-0", Some(EventId::ZERO)),
            ("1700000000002-3", Some(EventId::new(1_700_000_000_002, 3))),
            (
                "2023-11-14T22:13:20.002Z",
                Some(EventId::new(1_700_000_000_002, 0)),
            ),
            ("1700000000002", None),
            ("abc-1", None),
            ("1-2-3", None),
            ("", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_start(s), *want, "{s}");
        }
        assert_eq!(parse_date("0"), Some(0));
        assert_eq!(parse_date("1700000000002-7"), Some(1_700_000_000_002));
    }
}
