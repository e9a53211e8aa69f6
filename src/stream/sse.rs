//! Incremental Server-Sent Events parser (bytes in, messages out).
//!
//! Follows the WHATWG event-stream rules: one UTF-8 byte-order mark at the
//! very start of a stream is dropped, lines end with `\r\n`, `\n` or `\r`
//! (a `\r\n` split across two reads counts once), `:` starts a comment, a
//! field without a colon has an empty value, one space after the colon is
//! dropped, `data` lines are joined with `\n`, a blank line dispatches, and a
//! block without `data` is not dispatched. Unlike a browser it keeps `data`
//! as raw bytes so that invalid UTF-8 can be kept aside intact, it reports the
//! `id` given in the message block itself (not the inherited one), and it caps
//! the size of one message: bytes beyond `max_message_bytes` are counted but
//! not kept, and the message is flagged as oversized.
//!
//! Pure: no I/O, no clock. The stream client feeds it whatever the socket
//! returns.

use memchr::memchr2;

/// One dispatched SSE message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseMessage {
    /// The `id` field of this block, when it had one (a NUL makes it ignored).
    pub(crate) id: Option<String>,
    /// The `event` field; `message` when absent (the SSE default).
    pub(crate) event: String,
    /// The `data` lines joined with `\n`, raw bytes, without the final `\n`.
    pub(crate) data: Vec<u8>,
    /// Total size of the message's data in bytes when it exceeded the cap
    /// (then `data` holds only the first `max_message_bytes` bytes).
    pub(crate) oversized: Option<usize>,
}

/// Incremental parser; feed it chunks of any size.
#[derive(Debug)]
pub(crate) struct SseParser {
    max_message_bytes: usize,
    /// Bytes of the current, unfinished line.
    line: Vec<u8>,
    /// Length of the current line in bytes, including bytes not kept.
    line_len: usize,
    /// The previous chunk ended in `\r`: a leading `\n` is part of that end.
    after_cr: bool,
    id: Option<String>,
    event: Option<String>,
    data: Vec<u8>,
    has_data: bool,
    data_len: usize,
    /// Bytes of a byte-order mark matched at the start of the stream so far;
    /// `None` once the start is past.
    bom: Option<usize>,
}

/// The UTF-8 byte-order mark, dropped at the start of a stream.
const BOM: &[u8] = b"\xef\xbb\xbf";
/// Capacity of the data buffer the parser keeps between events.
const KEEP_DATA_CAPACITY: usize = 1 << 20;

impl SseParser {
    /// A parser that keeps at most `max_message_bytes` of one message's data.
    pub(crate) fn new(max_message_bytes: usize) -> Self {
        SseParser {
            max_message_bytes: max_message_bytes.max(1),
            line: Vec::with_capacity(8 * 1024),
            line_len: 0,
            after_cr: false,
            id: None,
            event: None,
            data: Vec::new(),
            has_data: false,
            data_len: 0,
            bom: Some(0),
        }
    }

    /// Feeds a chunk; calls `out` for every message it completes.
    pub(crate) fn feed(&mut self, mut chunk: &[u8], out: &mut impl FnMut(SseMessage)) {
        // A mark may arrive split across chunks: hold its bytes until it is
        // whole (dropped) or proven not to be one (parsed as they came).
        if let Some(matched) = self.bom {
            let mut taken = 0;
            let mut seen = matched;
            while seen < BOM.len() && taken < chunk.len() && chunk[taken] == BOM[seen] {
                seen += 1;
                taken += 1;
            }
            if seen == BOM.len() {
                self.bom = None;
                chunk = &chunk[taken..];
            } else if taken == chunk.len() {
                self.bom = Some(seen);
                return;
            } else {
                self.bom = None;
                chunk = &chunk[taken..];
                self.feed_bytes(&BOM[..seen], out);
            }
        }
        self.feed_bytes(chunk, out);
    }

    fn feed_bytes(&mut self, mut chunk: &[u8], out: &mut impl FnMut(SseMessage)) {
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        while !chunk.is_empty() {
            match memchr2(b'\n', b'\r', chunk) {
                Some(pos) => {
                    let ending_cr = chunk[pos] == b'\r';
                    if self.line.is_empty() && self.line_len == 0 {
                        // Whole line in this chunk: no copy into `line`.
                        self.process_line(&chunk[..pos], pos, out);
                    } else {
                        self.push_line_bytes(&chunk[..pos]);
                        let line = std::mem::take(&mut self.line);
                        let len = self.line_len;
                        self.process_line(&line, len, out);
                        self.line = line;
                        self.line.clear();
                    }
                    self.line_len = 0;
                    chunk = &chunk[pos + 1..];
                    if ending_cr {
                        match chunk.first() {
                            Some(b'\n') => chunk = &chunk[1..],
                            None => self.after_cr = true,
                            Some(_) => {}
                        }
                    }
                }
                None => {
                    self.push_line_bytes(chunk);
                    break;
                }
            }
        }
    }

    /// Ends the stream: a message not followed by a blank line is dropped,
    /// as the SSE rules say (the connection closed before it was complete).
    pub(crate) fn reset(&mut self) {
        self.bom = Some(0);
        self.line.clear();
        self.line_len = 0;
        self.after_cr = false;
        self.clear_message();
    }

    /// True when a message is partly received (bytes since the last blank line).
    #[cfg(test)]
    pub(crate) fn in_message(&self) -> bool {
        self.bom.is_some_and(|m| m > 0)
            || self.line_len > 0
            || self.has_data
            || self.id.is_some()
            || self.event.is_some()
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) {
        // Keep a little more than the cap so the field name and the kept part
        // of the value both fit; the rest is only counted.
        let cap = self.max_message_bytes.saturating_add(64);
        let room = cap.saturating_sub(self.line.len());
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.line_len += bytes.len();
    }

    fn process_line(&mut self, line: &[u8], full_len: usize, out: &mut impl FnMut(SseMessage)) {
        if full_len == 0 {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return;
        }
        let (field, value, value_len) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let mut start = colon + 1;
                if line.get(start) == Some(&b' ') {
                    start += 1;
                }
                (
                    &line[..colon],
                    &line[start.min(line.len())..],
                    full_len.saturating_sub(start),
                )
            }
            None => (line, &line[line.len()..], 0),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.push_data(b"\n", 1);
                }
                self.has_data = true;
                self.push_data(value, value_len);
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            b"id" if !value.contains(&0) => {
                self.id = Some(String::from_utf8_lossy(value).into_owned());
            }
            // `retry` is read and ignored: reconnection delays are ours
            // (`stream.reconnect_*`), and OpenCTI sends none.
            _ => {}
        }
    }

    fn push_data(&mut self, bytes: &[u8], full_len: usize) {
        let room = self.max_message_bytes.saturating_sub(self.data.len());
        self.data.extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.data_len += full_len;
    }

    fn dispatch(&mut self, out: &mut impl FnMut(SseMessage)) {
        if !self.has_data {
            self.clear_message();
            return;
        }
        let oversized = (self.data_len > self.max_message_bytes).then_some(self.data_len);
        // The event gets a buffer of its own size (it may wait in the
        // pipeline's window with thousands of others); the parser keeps its
        // buffer unless one huge event grew it.
        let data = self.data.clone();
        if self.data.capacity() > KEEP_DATA_CAPACITY {
            self.data = Vec::with_capacity(KEEP_DATA_CAPACITY);
        }
        out(SseMessage {
            id: self.id.take(),
            event: self.event.take().unwrap_or_else(|| "message".to_string()),
            data,
            oversized,
        });
        self.clear_message();
    }

    fn clear_message(&mut self) {
        self.id = None;
        self.event = None;
        self.data.clear();
        self.has_data = false;
        self.data_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]], cap: usize) -> Vec<SseMessage> {
        let mut p = SseParser::new(cap);
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut |m| out.push(m));
        }
        out
    }

    fn msg(id: Option<&str>, event: &str, data: &str) -> SseMessage {
        SseMessage {
            id: id.map(str::to_string),
            event: event.to_string(),
            data: data.as_bytes().to_vec(),
            oversized: None,
        }
    }

    const TRANSCRIPT: &[u8] = b": comment line\r\n\
event: connected\r\n\
data: {\"lastEventId\":\"5-0\"}\r\n\
\r\n\
id: 1-0\n\
event: create\n\
data: {\"a\":1}\n\
\n\
id: 2-0\r\
event: update\r\
data: line one\r\
data:line two\r\
\r\
id: 3-0\n\
event: heartbeat\n\
data: \"2024-01-01T00:00:00.000Z\"\n\
\n\
data\n\
\n\
id: 4-0\n\
event: delete\n\
\n\
id\n\
event: merge\n\
data: x\n\
field-without-meaning: 1\n\
\n";

    fn expected() -> Vec<SseMessage> {
        vec![
            msg(None, "connected", "{\"lastEventId\":\"5-0\"}"),
            msg(Some("1-0"), "create", "{\"a\":1}"),
            msg(Some("2-0"), "update", "line one\nline two"),
            msg(Some("3-0"), "heartbeat", "\"2024-01-01T00:00:00.000Z\""),
            msg(None, "message", ""),
            msg(Some(""), "merge", "x"),
        ]
    }

    #[test]
    fn parses_a_transcript_in_one_chunk() {
        assert_eq!(parse_all(&[TRANSCRIPT], 1 << 20), expected());
    }

    #[test]
    fn parses_a_transcript_split_at_every_byte_offset() {
        for cut in 0..=TRANSCRIPT.len() {
            let (a, b) = TRANSCRIPT.split_at(cut);
            assert_eq!(parse_all(&[a, b], 1 << 20), expected(), "split at {cut}");
        }
    }

    #[test]
    fn parses_a_transcript_fed_one_byte_at_a_time() {
        let chunks: Vec<&[u8]> = TRANSCRIPT.chunks(1).collect();
        assert_eq!(parse_all(&chunks, 1 << 20), expected());
    }

    #[test]
    fn parses_the_golden_transcript_at_every_split() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/reference-golden/stream.sse"
        );
        let bytes = std::fs::read(path).expect("golden transcript");
        let whole = parse_all(&[&bytes], 1 << 24);
        assert_eq!(whole.len(), 121);
        assert_eq!(whole.iter().filter(|m| m.event == "connected").count(), 1);
        // Every 97th offset keeps the test quick on a 228 KB transcript while
        // still cutting inside ids, names, data and line ends.
        for cut in (0..bytes.len()).step_by(97) {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(parse_all(&[a, b], 1 << 24), whole, "split at {cut}");
        }
    }

    #[test]
    fn crlf_split_between_chunks_counts_as_one_line_end() {
        let got = parse_all(&[b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n"], 1024);
        assert_eq!(
            got,
            vec![msg(None, "message", "a"), msg(None, "message", "b")]
        );
    }

    #[test]
    fn caps_an_oversized_message_and_reports_its_size() {
        let big = vec![b'x'; 10_000];
        let mut input = b"id: 9-0\nevent: create\ndata: ".to_vec();
        input.extend_from_slice(&big);
        input.extend_from_slice(b"\n\nid: 10-0\nevent: create\ndata: {}\n\n");
        for chunk in [7usize, 100, 4096, input.len()] {
            let chunks: Vec<&[u8]> = input.chunks(chunk).collect();
            let got = parse_all(&chunks, 1000);
            assert_eq!(got.len(), 2);
            assert_eq!(got[0].id.as_deref(), Some("9-0"));
            assert_eq!(got[0].oversized, Some(10_000));
            assert_eq!(got[0].data.len(), 1000);
            assert_eq!(got[1], msg(Some("10-0"), "create", "{}"));
        }
    }

    #[test]
    fn keeps_invalid_utf8_data_raw() {
        let got = parse_all(&[b"id: 1-0\nevent: create\ndata: \xff\xfe{\n\n"], 1024);
        assert_eq!(got[0].data, b"\xff\xfe{");
    }

    #[test]
    fn an_unfinished_message_is_not_dispatched() {
        let mut p = SseParser::new(1024);
        let mut out = Vec::new();
        p.feed(b"id: 1-0\nevent: create\ndata: {}\n", &mut |m| out.push(m));
        assert!(out.is_empty());
        assert!(p.in_message());
        p.reset();
        p.feed(b"id: 2-0\nevent: create\ndata: {}\n\n", &mut |m| {
            out.push(m)
        });
        assert_eq!(out, vec![msg(Some("2-0"), "create", "{}")]);
    }

    #[test]
    fn reads_retry_and_ignores_id_with_nul() {
        let mut p = SseParser::new(1024);
        let mut out = Vec::new();
        p.feed(
            b"retry: 2500\nid: a\0b\ndata: x\n\nretry: x1\n\n",
            &mut |m| out.push(m),
        );
        assert_eq!(out[0].id, None);
    }

    #[test]
    fn a_byte_order_mark_at_the_start_is_dropped_wherever_the_chunks_split() {
        let mut input = BOM.to_vec();
        input.extend_from_slice(TRANSCRIPT);
        for cut in 0..=8 {
            let (a, b) = input.split_at(cut);
            assert_eq!(parse_all(&[a, b], 1 << 20), expected(), "split at {cut}");
        }
        let chunks: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(parse_all(&chunks, 1 << 20), expected());
        // Only at the start of a stream: later it is part of a field name.
        let mut p = SseParser::new(1024);
        let mut out = Vec::new();
        p.feed(b"data: a\n\n\xef\xbb\xbfevent: x\ndata: b\n\n", &mut |m| {
            out.push(m)
        });
        assert_eq!(
            out,
            vec![msg(None, "message", "a"), msg(None, "message", "b")]
        );
        // Each connection (after `reset`) may start with one.
        p.reset();
        p.feed(b"\xef\xbb", &mut |m| out.push(m));
        p.feed(b"\xbfevent: y\ndata: c\n\n", &mut |m| out.push(m));
        assert_eq!(out[2], msg(None, "y", "c"));
        // A partial mark is kept as bytes of the line.
        let got = parse_all(&[b"\xef\xbb", b"data: d\n\n"], 1024);
        assert_eq!(got, vec![]);
    }
}
