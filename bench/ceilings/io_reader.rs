//! I/O ceiling of the benchmark: reads the simulator's live stream and
//! throws it away, to measure what the socket and the simulator alone allow.
//!
//! Single-threaded, std only, compiled by `bench/run` with `rustc -O`. It
//! sends the request the exporter sends (bearer token, `Last-Event-ID: 0-0`,
//! `listen-delete: true`), then reads the body in 1 MiB reads without looking
//! at it, except for the last bytes of each read: it stops at the first
//! `heartbeat` message, which the simulator sends as soon as the history is
//! out (`bench/run` starts it with a heartbeat period longer than any run, so
//! no heartbeat comes earlier). It does not frame or count messages; that is
//! the work ceiling's job.
//!
//! Usage: `io_reader <host:port> <stream-id> <token>`. Prints one JSON object
//! to stdout: `{"bytes": <body bytes read>, "heartbeat": true|false}`.
//! Exit status 0 when the heartbeat was seen, 1 otherwise.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;

/// Bytes asked of each `read`.
const READ_SIZE: usize = 1 << 20;
/// The end of a read is searched this far back for the heartbeat message
/// (about 70 bytes long).
const TAIL: usize = 256;
const HEARTBEAT: &[u8] = b"\nevent: heartbeat\n";

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Whether `tail` ends with a complete message that is a heartbeat.
fn ends_with_heartbeat(tail: &[u8]) -> bool {
    if !tail.ends_with(b"\n\n") {
        return false;
    }
    let body = &tail[..tail.len() - 2];
    let start = body
        .windows(2)
        .rposition(|w| w == b"\n\n")
        .map_or(0, |p| p + 1);
    // The message's own first line starts after its leading `\n`.
    find(&tail[start..], HEARTBEAT).is_some()
}

fn run(addr: &str, stream_id: &str, token: &str) -> std::io::Result<(u64, bool)> {
    let mut sock = TcpStream::connect(addr)?;
    sock.set_nodelay(true)?;
    write!(
        sock,
        "GET /stream/{stream_id} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Accept: text/event-stream\r\nLast-Event-ID: 0-0\r\nlisten-delete: true\r\n\
         Connection: close\r\n\r\n"
    )?;
    let mut buf = vec![0u8; READ_SIZE];
    // The response head, then whatever body bytes came with it.
    let mut head = Vec::new();
    let body_start = loop {
        let n = sock.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other(
                "connection closed before the response head ended",
            ));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(p) = find(&head, b"\r\n\r\n") {
            break p + 4;
        }
    };
    let status_line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    if !status_line.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "the stream answered `{}`",
            String::from_utf8_lossy(status_line).trim_end()
        )));
    }
    let mut bytes = (head.len() - body_start) as u64;
    let mut tail: Vec<u8> = head[body_start..].to_vec();
    loop {
        if ends_with_heartbeat(&tail) {
            return Ok((bytes, true));
        }
        let n = sock.read(&mut buf)?;
        if n == 0 {
            return Ok((bytes, false));
        }
        bytes += n as u64;
        // Keep the last TAIL bytes across reads: a message may straddle two.
        if n >= TAIL {
            tail.clear();
            tail.extend_from_slice(&buf[n - TAIL..n]);
        } else {
            tail.extend_from_slice(&buf[..n]);
            let excess = tail.len().saturating_sub(TAIL);
            tail.drain(..excess);
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: io_reader <host:port> <stream-id> <token>");
        return ExitCode::from(2);
    }
    match run(&args[1], &args[2], &args[3]) {
        Ok((bytes, heartbeat)) => {
            println!("{{\"bytes\": {bytes}, \"heartbeat\": {heartbeat}}}");
            if heartbeat {
                ExitCode::SUCCESS
            } else {
                eprintln!("io_reader: the stream ended before its heartbeat");
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("io_reader: {addr}: {e}", addr = args[1]);
            ExitCode::from(1)
        }
    }
}
