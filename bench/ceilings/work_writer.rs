//! Work ceiling of the benchmark: the least work an exporter must do, done
//! by one thread. It reads the simulator's live stream, frames the SSE
//! messages, checks that each data event's payload is UTF-8 JSON (parsed by
//! serde_json into `IgnoredAny`, so nothing is built), writes each payload as
//! one line to a file through an 8 MiB buffer, and fsyncs the file once at
//! the end.
//!
//! It does not do what the exporter adds on top: no id or type spliced into
//! the line, no attached files fetched, no batch files, no state, no
//! threads. Framing splits lines at `\n` only (what the simulator sends). A
//! multi-line `data` is joined with a space where the SSE rules say `\n`:
//! in valid JSON a raw line break can only be whitespace between tokens, so
//! the payload means the same and stays on one line.
//!
//! `bench/run` compiles it with `rustc -O` against the serde, serde_json and
//! memchr that `cargo build --release` built for the exporter, so both parse
//! JSON with the very same code.
//!
//! Usage: `work_writer <host:port> <stream-id> <token> <output-file> <events>`.
//! It stops after `<events>` data events, at the first heartbeat after the
//! history, or at the end of the connection, and prints one JSON object to
//! stdout: `{"bytes_read", "events", "invalid", "bytes_written"}`. Exit
//! status 0 when `<events>` valid events were written, 1 otherwise.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;

use serde::de::IgnoredAny;

/// Smallest free space offered to each `read`, bytes.
const READ_SIZE: usize = 1 << 20;
/// Output buffer: payloads reach the file in writes of this size, bytes.
const WRITE_BUFFER: usize = 8 << 20;

const DATA_EVENTS: [&[u8]; 4] = [b"create", b"update", b"delete", b"merge"];

#[derive(Default)]
struct Counts {
    bytes_read: u64,
    events: u64,
    invalid: u64,
    bytes_written: u64,
}

enum Next {
    Continue,
    Done,
}

struct Writer {
    out: BufWriter<File>,
    /// A multi-line `data` field, joined by spaces; unused for the usual single line.
    joined: Vec<u8>,
    want: u64,
    counts: Counts,
}

impl Writer {
    /// Handles one message (its lines, without the blank line that ends it).
    fn message(&mut self, msg: &[u8]) -> std::io::Result<Next> {
        let mut event: &[u8] = b"message";
        let mut data: Option<&[u8]> = None;
        let mut data_lines = 0;
        self.joined.clear();
        for line in msg.split(|b| *b == b'\n') {
            let (field, value) = match memchr::memchr(b':', line) {
                Some(0) => continue, // a comment
                Some(p) => {
                    let v = &line[p + 1..];
                    (&line[..p], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (line, &b""[..]),
            };
            match field {
                b"event" => event = value,
                b"data" => {
                    data_lines += 1;
                    match data_lines {
                        1 => data = Some(value),
                        2 => {
                            self.joined.extend_from_slice(data.unwrap_or_default());
                            self.joined.push(b' ');
                            self.joined.extend_from_slice(value);
                        }
                        _ => {
                            self.joined.push(b' ');
                            self.joined.extend_from_slice(value);
                        }
                    }
                }
                _ => {}
            }
        }
        if event == b"heartbeat" && self.counts.events > 0 {
            return Ok(Next::Done);
        }
        if !DATA_EVENTS.contains(&event) {
            return Ok(Next::Continue);
        }
        let data = if data_lines > 1 {
            &self.joined[..]
        } else {
            data.unwrap_or_default()
        };
        let valid = std::str::from_utf8(data)
            .ok()
            .is_some_and(|text| serde_json::from_str::<IgnoredAny>(text).is_ok());
        if !valid {
            self.counts.invalid += 1;
        } else {
            self.out.write_all(data)?;
            self.out.write_all(b"\n")?;
            self.counts.bytes_written += data.len() as u64 + 1;
        }
        self.counts.events += 1;
        Ok(if self.counts.events >= self.want {
            Next::Done
        } else {
            Next::Continue
        })
    }
}

fn run(addr: &str, stream_id: &str, token: &str, path: &str, want: u64) -> std::io::Result<Counts> {
    let file = File::create(path)?;
    let mut w = Writer {
        out: BufWriter::with_capacity(WRITE_BUFFER, file),
        joined: Vec::new(),
        want,
        counts: Counts::default(),
    };
    let mut sock = TcpStream::connect(addr)?;
    sock.set_nodelay(true)?;
    write!(
        sock,
        "GET /stream/{stream_id} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Accept: text/event-stream\r\nLast-Event-ID: 0-0\r\nlisten-delete: true\r\n\
         Connection: close\r\n\r\n"
    )?;

    // `buf[start..end]` is unread input; messages are cut out of it in place.
    let mut buf: Vec<u8> = vec![0; 4 * READ_SIZE];
    let (mut start, mut end) = (0, 0);
    // Where the search for the end of the current message resumes.
    let mut scanned = 0;
    let mut in_head = true;
    loop {
        if in_head {
            if let Some(p) = memchr::memmem::find(&buf[start..end], b"\r\n\r\n") {
                let head = &buf[start..start + p];
                let status = head.split(|b| *b == b'\n').next().unwrap_or_default();
                if !status.starts_with(b"HTTP/1.1 200") {
                    return Err(std::io::Error::other(format!(
                        "the stream answered `{}`",
                        String::from_utf8_lossy(status).trim_end()
                    )));
                }
                if memchr::memmem::find(head, b"chunked").is_some() {
                    return Err(std::io::Error::other("chunked bodies are not supported"));
                }
                start += p + 4;
                scanned = start;
                w.counts.bytes_read = (end - start) as u64;
                in_head = false;
            }
        }
        if !in_head {
            // Every complete message in the buffer.
            while let Some(p) = memchr::memmem::find(&buf[scanned..end], b"\n\n") {
                let stop = scanned + p;
                let next = w.message(&buf[start..stop])?;
                start = stop + 2;
                scanned = start;
                if let Next::Done = next {
                    return finish(w);
                }
            }
            // The tail may hold the first `\n` of a `\n\n`.
            scanned = end.saturating_sub(1).max(start);
        }
        if buf.len() - end < READ_SIZE {
            // Move the unfinished message to the front; grow only for a
            // message larger than the buffer.
            buf.copy_within(start..end, 0);
            scanned -= start;
            end -= start;
            start = 0;
            if buf.len() - end < READ_SIZE {
                buf.resize(end + READ_SIZE, 0);
            }
        }
        let n = sock.read(&mut buf[end..])?;
        if n == 0 {
            return finish(w);
        }
        end += n;
        if !in_head {
            w.counts.bytes_read += n as u64;
        }
    }
}

fn finish(mut w: Writer) -> std::io::Result<Counts> {
    w.out.flush()?;
    w.out.get_ref().sync_all()?;
    Ok(w.counts)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let want = args.get(5).and_then(|s| s.parse::<u64>().ok());
    let (6, Some(want)) = (args.len(), want) else {
        eprintln!("usage: work_writer <host:port> <stream-id> <token> <output-file> <events>");
        return ExitCode::from(2);
    };
    match run(&args[1], &args[2], &args[3], &args[4], want) {
        Ok(c) => {
            println!(
                "{{\"bytes_read\": {}, \"events\": {}, \"invalid\": {}, \"bytes_written\": {}}}",
                c.bytes_read, c.events, c.invalid, c.bytes_written
            );
            if c.events == want && c.invalid == 0 {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "work_writer: {} events read ({} invalid), {want} expected",
                    c.events, c.invalid
                );
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("work_writer: {}: {e}", args[1]);
            ExitCode::from(1)
        }
    }
}
