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
//! With `--files` it is the floor of the work with attached files: for each
//! valid event it also fetches every distinct `/storage/get/` uri the event
//! names, one after the other on one keep-alive connection (a bare HTTP/1.1
//! GET, percent-encoded key, bearer token), base64-encodes each body and
//! writes that encoding twice after the payload, as the exporter's line
//! carries each content twice (the bytes written cost the same; the line is
//! not valid JSON, which does not matter here). No threads, no retries, no
//! caps: the least an exporter that inlines files can do.
//!
//! Usage: `work_writer <host:port> <stream-id> <token> <output-file> <events> [--files]`.
//! It stops after `<events>` data events, at the first heartbeat after the
//! history, or at the end of the connection, and prints one JSON object to
//! stdout: `{"bytes_read", "events", "invalid", "bytes_written", "fetches"}`.
//! Exit status 0 when `<events>` valid events were written (and, with
//! `--files`, every file answered 200), 1 otherwise.

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
    fetches: u64,
}

/// A bare keep-alive HTTP/1.1 client for `/storage/get/` (`--files`).
struct Files {
    addr: String,
    token: String,
    sock: Option<TcpStream>,
    /// Response bytes read and not yet used.
    buf: Vec<u8>,
    /// The base64 of the last body.
    encoded: Vec<u8>,
    /// Uris of the current event, to fetch each once.
    seen: Vec<String>,
}

impl Files {
    /// GETs `uri` (`/storage/get/<key>`) and leaves its body's base64 in
    /// `self.encoded`.
    fn fetch(&mut self, uri: &str) -> std::io::Result<()> {
        let key = &uri["/storage/get/".len()..];
        let mut path = String::from("/storage/get/");
        for b in key.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                path.push(b as char);
            } else {
                path.push_str(&format!("%{b:02X}"));
            }
        }
        for attempt in 0..2 {
            if self.sock.is_none() {
                let s = TcpStream::connect(&self.addr)?;
                s.set_nodelay(true)?;
                self.sock = Some(s);
                self.buf.clear();
            }
            let sock = self.sock.as_mut().expect("connected");
            let sent = write!(
                sock,
                "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
                self.addr, self.token
            );
            match sent.and_then(|()| self.response()) {
                Ok(()) => return Ok(()),
                // A kept-alive connection the server closed: once more, anew.
                Err(_) if attempt == 0 => self.sock = None,
                Err(e) => return Err(e),
            }
        }
        unreachable!("the second attempt returns")
    }

    fn response(&mut self) -> std::io::Result<()> {
        let sock = self.sock.as_mut().expect("connected");
        let mut chunk = [0u8; 64 * 1024];
        let head_end = loop {
            if let Some(p) = memchr::memmem::find(&self.buf, b"\r\n\r\n") {
                break p;
            }
            let n = sock.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::other("closed before the response head"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") {
            return Err(std::io::Error::other(format!(
                "a file answered `{}`",
                head.lines().next().unwrap_or_default()
            )));
        }
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| std::io::Error::other("a file answered without Content-Length"))?;
        let close = head.lines().any(|l| l.starts_with("connection:") && l.contains("close"));
        self.buf.drain(..head_end + 4);
        while self.buf.len() < len {
            let n = sock.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::other("closed inside a file body"));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
        use base64::Engine;
        self.encoded.resize(len.div_ceil(3) * 4, 0);
        let n = base64::engine::general_purpose::STANDARD
            .encode_slice(&self.buf[..len], &mut self.encoded)
            .map_err(std::io::Error::other)?;
        self.encoded.truncate(n);
        self.buf.drain(..len);
        if close {
            self.sock = None;
        }
        Ok(())
    }

    /// Fetches the files `data` names and writes each content twice to `out`;
    /// returns the bytes written.
    fn inline(&mut self, data: &[u8], out: &mut BufWriter<File>, counts: &mut Counts) -> std::io::Result<u64> {
        const MARK: &[u8] = b"\"/storage/get/";
        self.seen.clear();
        let mut written = 0;
        let mut from = 0;
        while let Some(p) = memchr::memmem::find(&data[from..], MARK) {
            let start = from + p;
            // The JSON string from its opening quote to its closing one.
            let mut end = start + 1;
            while end < data.len() && data[end] != b'"' {
                end += if data[end] == b'\\' { 2 } else { 1 };
            }
            from = end + 1;
            let Ok(uri) = serde_json::from_slice::<String>(&data[start..=end.min(data.len() - 1)]) else {
                continue;
            };
            if self.seen.contains(&uri) {
                continue;
            }
            self.fetch(&uri)?;
            counts.fetches += 1;
            self.seen.push(uri);
            out.write_all(&self.encoded)?;
            out.write_all(&self.encoded)?;
            written += 2 * self.encoded.len() as u64;
        }
        Ok(written)
    }
}

enum Next {
    Continue,
    Done,
}

struct Writer {
    out: BufWriter<File>,
    /// `--files`: the attached files are fetched and written too.
    files: Option<Files>,
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
            if let Some(files) = &mut self.files {
                self.counts.bytes_written += files.inline(data, &mut self.out, &mut self.counts)?;
            }
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

fn run(addr: &str, stream_id: &str, token: &str, path: &str, want: u64, files: bool) -> std::io::Result<Counts> {
    let file = File::create(path)?;
    let mut w = Writer {
        out: BufWriter::with_capacity(WRITE_BUFFER, file),
        files: files.then(|| Files {
            addr: addr.to_string(),
            token: token.to_string(),
            sock: None,
            buf: Vec::new(),
            encoded: Vec::new(),
            seen: Vec::new(),
        }),
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
    let files = args.get(6).map(String::as_str) == Some("--files");
    let (6 | 7, Some(want)) = (args.len(), want) else {
        eprintln!("usage: work_writer <host:port> <stream-id> <token> <output-file> <events> [--files]");
        return ExitCode::from(2);
    };
    if args.len() == 7 && !files {
        eprintln!("work_writer: unknown option `{}`", args[6]);
        return ExitCode::from(2);
    }
    match run(&args[1], &args[2], &args[3], &args[4], want, files) {
        Ok(c) => {
            println!(
                "{{\"bytes_read\": {}, \"events\": {}, \"invalid\": {}, \"bytes_written\": {}, \"fetches\": {}}}",
                c.bytes_read, c.events, c.invalid, c.bytes_written, c.fetches
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
