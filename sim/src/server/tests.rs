//! The server over real loopback sockets, read by a raw `TcpStream` client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::*;
use crate::model::Params;

const DEADLINE: Duration = Duration::from_secs(20);

fn model(events: u64) -> Model {
    Model::new(Params {
        events,
        files_ratio: 0.2,
        group_ratio: 0.3,
        ..Params::default()
    })
}

fn config(events: u64) -> Config {
    let mut cfg = Config::new(model(events));
    // Long enough that only the heartbeat sent right after the history shows up.
    cfg.heartbeat = Duration::from_secs(60);
    cfg
}

fn start(cfg: Config) -> SocketAddr {
    spawn(cfg).expect("bind a loopback port")
}

/// A raw HTTP client reading one response.
struct Client {
    sock: TcpStream,
    buf: Vec<u8>,
    status: u16,
    headers: String,
}

/// One SSE message, fields as raw bytes.
#[derive(Debug, Clone, PartialEq)]
struct Sse {
    id: Option<String>,
    event: Option<String>,
    data: Vec<u8>,
}

fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Client {
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    sock.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let n = sock.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed before the response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..end].to_vec()).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let rest = buf[end + 4..].to_vec();
    Client {
        sock,
        buf: rest,
        status,
        headers: head.to_ascii_lowercase(),
    }
}

/// The data of an HTTP/1.1 chunked body, checked to end with its last
/// (empty) chunk.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size");
        let len = usize::from_str_radix(std::str::from_utf8(&raw[..eol]).unwrap(), 16).unwrap();
        if len == 0 {
            assert_eq!(
                &raw[eol..],
                b"\r\n\r\n",
                "the body ends after its last chunk"
            );
            return out;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + len]);
        assert_eq!(&raw[eol + 2 + len..eol + 4 + len], b"\r\n");
        raw = &raw[eol + 4 + len..];
    }
}

fn auth() -> (&'static str, &'static str) {
    ("Authorization", "Bearer sim-token")
}

impl Client {
    /// Reads the whole body (the server closes after it).
    fn body(mut self) -> Vec<u8> {
        self.sock.read_to_end(&mut self.buf).unwrap();
        self.buf
    }

    /// The next complete SSE message, or `None` at end of stream.
    fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(p) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..p + 2).collect();
                let mut msg = Sse {
                    id: None,
                    event: None,
                    data: Vec::new(),
                };
                for line in block[..p].split(|b| *b == b'\n') {
                    let (field, value) = match line.iter().position(|b| *b == b':') {
                        Some(c) => (
                            &line[..c],
                            line[c + 1..].strip_prefix(b" ").unwrap_or(&line[c + 1..]),
                        ),
                        None => (line, &b""[..]),
                    };
                    match field {
                        b"id" => msg.id = Some(String::from_utf8(value.to_vec()).unwrap()),
                        b"event" => msg.event = Some(String::from_utf8(value.to_vec()).unwrap()),
                        b"data" => msg.data.extend_from_slice(value),
                        other => panic!("unexpected field {:?}", String::from_utf8_lossy(other)),
                    }
                }
                return Some(msg);
            }
            let mut chunk = [0u8; 65536];
            match self.sock.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// Data messages up to (not including) the first heartbeat; returns them
    /// and that heartbeat.
    fn until_heartbeat(&mut self) -> (Vec<Sse>, Sse) {
        let mut data = Vec::new();
        loop {
            let m = self.next().expect("stream ended before a heartbeat");
            match m.event.as_deref() {
                Some("heartbeat") => return (data, m),
                Some("connected") => panic!("second connected message"),
                _ => data.push(m),
            }
        }
    }
}

fn open_stream(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Client {
    let mut c = get(addr, target, headers);
    assert_eq!(c.status, 200);
    assert!(c.headers.contains("content-type: text/event-stream"));
    let connected = c.next().unwrap();
    assert_eq!(connected.event.as_deref(), Some("connected"));
    assert_eq!(connected.id, None);
    c
}

/// The `dump` line a client-side message corresponds to.
fn as_dump_line(m: &Sse) -> Vec<u8> {
    let mut line = format!(
        "{{\"id\":\"{}\",\"event\":\"{}\",",
        m.id.as_deref().unwrap(),
        m.event.as_deref().unwrap()
    )
    .into_bytes();
    let json = std::str::from_utf8(&m.data)
        .ok()
        .is_some_and(|s| serde_json::from_str::<serde_json::Value>(s).is_ok());
    if json {
        line.extend_from_slice(b"\"data\":");
        line.extend_from_slice(&m.data);
    } else {
        line.extend_from_slice(b"\"raw\":");
        line.extend_from_slice(
            serde_json::to_string(&String::from_utf8_lossy(&m.data))
                .unwrap()
                .as_bytes(),
        );
    }
    line.extend_from_slice(b"}\n");
    line
}

fn dump(cfg: &Config, req: &plan::Request) -> Vec<u8> {
    let plan = Plan::new(&cfg.model, &cfg.shape, req).unwrap();
    let mut out = Vec::new();
    crate::dump::write_events(&cfg.model, &cfg.shape, &plan, &mut out).unwrap();
    out
}

fn id_of(m: &Sse) -> EventId {
    EventId::parse(m.id.as_deref().unwrap()).unwrap()
}

#[test]
fn dump_equals_what_serve_sends_from_the_start() {
    let mut cfg = config(800);
    cfg.shape.malformed_every = Some(13);
    let addr = start(cfg.clone());
    let mut c = open_stream(
        addr,
        "/stream/live-sim",
        &[auth(), ("Last-Event-ID", "0-0")],
    );
    let (data, hb) = c.until_heartbeat();
    let got: Vec<u8> = data.iter().flat_map(as_dump_line).collect();
    let want = dump(
        &cfg,
        &plan::Request {
            start: Some(EventId::ZERO),
            recover_ms: None,
            listen_delete: true,
        },
    );
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&want)
    );
    assert_eq!(data.len(), 800);
    // The heartbeat after the history proves every id before it complete.
    let last = id_of(data.last().unwrap());
    let hb_id = id_of(&hb);
    assert!(hb_id > last && hb_id.seq == 0, "{hb_id} after {last}");
    assert!(hb_id.ms + 60_000 > wall_ms());
}

#[test]
fn chunked_sends_each_message_as_one_http_chunk() {
    let cfg = config(300);
    let mut plain = open_stream(
        start(cfg.clone()),
        "/stream/live-sim",
        &[auth(), ("Last-Event-ID", "0-0")],
    );
    let (want, _) = plain.until_heartbeat();

    let mut chunked_cfg = cfg;
    chunked_cfg.chunked = true;
    let mut c = get(
        start(chunked_cfg),
        "/stream/live-sim",
        &[auth(), ("Last-Event-ID", "0-0")],
    );
    assert_eq!(c.status, 200);
    assert!(
        c.headers.contains("transfer-encoding: chunked"),
        "{}",
        c.headers
    );
    // Decode chunks until one holds a heartbeat.
    let mut raw = std::mem::take(&mut c.buf);
    let mut decoded = Vec::new();
    let mut chunks = 0;
    'read: loop {
        while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
            let len = usize::from_str_radix(std::str::from_utf8(&raw[..eol]).unwrap(), 16).unwrap();
            if raw.len() < eol + 2 + len + 2 {
                break;
            }
            let body = raw[eol + 2..eol + 2 + len].to_vec();
            assert_eq!(&raw[eol + 2 + len..eol + 4 + len], b"\r\n");
            raw.drain(..eol + 4 + len);
            // One whole message per chunk.
            assert!(
                body.ends_with(b"\n\n"),
                "{:?}",
                String::from_utf8_lossy(&body)
            );
            assert_eq!(body.windows(2).filter(|w| *w == b"\n\n").count(), 1);
            chunks += 1;
            decoded.extend_from_slice(&body);
            if body.windows(16).any(|w| w == b"event: heartbeat") {
                break 'read;
            }
        }
        let mut more = [0u8; 65536];
        let n = c.sock.read(&mut more).unwrap();
        assert!(n > 0, "the stream ended before a heartbeat");
        raw.extend_from_slice(&more[..n]);
    }
    // Read back as a plain stream: the same messages.
    c.buf = decoded;
    assert_eq!(c.next().unwrap().event.as_deref(), Some("connected"));
    let (got, _) = c.until_heartbeat();
    assert_eq!(got, want);
    assert_eq!(chunks, 300 + 2);
}

#[test]
fn dump_equals_what_serve_sends_with_recovery_and_no_deletes() {
    let cfg = config(1500);
    let m = &cfg.model;
    let start_id = m.id(300);
    let recover_ms = m.id(1000).ms;
    let addr = start(cfg.clone());
    let target = format!(
        "/stream/live-sim?recover={}&listen-delete=false",
        crate::iso::iso(recover_ms).replace(':', "%3A")
    );
    let start_text = start_id.to_string();
    let mut c = open_stream(
        addr,
        &target,
        &[
            auth(),
            ("Last-Event-ID", &start_text),
            ("no-dependencies", "true"),
        ],
    );
    let (data, _) = c.until_heartbeat();
    let got: Vec<u8> = data.iter().flat_map(as_dump_line).collect();
    let req = plan::Request {
        start: Some(start_id),
        recover_ms: Some(recover_ms),
        listen_delete: false,
    };
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(&dump(&cfg, &req))
    );
    let recovered = data
        .iter()
        .take_while(|m| {
            let v: serde_json::Value = serde_json::from_slice(&m.data).unwrap();
            v["origin"]["referer"] == "init-create"
        })
        .count();
    assert!(recovered > 100, "{recovered}");
    assert!(data.iter().all(|m| m.event.as_deref() != Some("delete")));
    assert!(id_of(&data[recovered]) > EventId::new(recover_ms, 0));
}

#[test]
fn the_from_query_parameter_wins_over_last_event_id() {
    let cfg = config(300);
    let addr = start(cfg.clone());
    let from = cfg.model.id(250).to_string();
    let mut c = open_stream(
        addr,
        &format!("/stream/live-sim?from={from}"),
        &[auth(), ("Last-Event-ID", "0-0")],
    );
    let (data, _) = c.until_heartbeat();
    assert!(data.iter().all(|m| id_of(m) > cfg.model.id(250)));
    assert!(data.len() < 50);
}

#[test]
fn live_only_gets_no_history_but_a_heartbeat_right_away() {
    let addr = start(config(300));
    let mut c = open_stream(addr, "/stream/live-sim", &[auth()]);
    let (data, hb) = c.until_heartbeat();
    assert!(data.is_empty());
    assert!(id_of(&hb).ms + 60_000 > wall_ms());
}

#[test]
fn heartbeats_keep_coming_with_growing_ids() {
    let mut cfg = config(10);
    cfg.heartbeat = Duration::from_millis(30);
    let addr = start(cfg);
    let mut c = open_stream(
        addr,
        "/stream/live-sim",
        &[auth(), ("Last-Event-ID", "0-0")],
    );
    let (data, first) = c.until_heartbeat();
    assert_eq!(data.len(), 10);
    let mut prev = id_of(&first);
    for _ in 0..3 {
        let (none, hb) = c.until_heartbeat();
        assert!(none.is_empty());
        assert!(id_of(&hb) >= prev);
        let v: serde_json::Value = serde_json::from_slice(&hb.data).unwrap();
        assert!(v.as_str().unwrap().ends_with('Z'));
        prev = id_of(&hb);
    }
}

#[test]
fn live_events_follow_the_history_and_never_undercut_a_heartbeat() {
    let mut cfg = config(20);
    cfg.heartbeat = Duration::from_millis(20);
    cfg.rate = 200;
    cfg.live_after = Some(Duration::ZERO);
    let addr = start(cfg);
    let mut c = open_stream(
        addr,
        "/stream/live-sim",
        &[auth(), ("Last-Event-ID", "0-0")],
    );
    let mut last_data = EventId::ZERO;
    let mut last_heartbeat = EventId::ZERO;
    let mut live = 0;
    let mut heartbeats = 0;
    let until = Instant::now() + Duration::from_millis(400);
    let mut data = 0;
    while Instant::now() < until {
        let m = c.next().unwrap();
        let id = id_of(&m);
        if m.event.as_deref() == Some("heartbeat") {
            heartbeats += 1;
            assert!(id >= last_data);
            last_heartbeat = last_heartbeat.max(id);
            continue;
        }
        assert!(
            id > last_heartbeat || id == last_data,
            "{id} after heartbeat {last_heartbeat}"
        );
        assert!(id >= last_data);
        data += 1;
        if data > 20 {
            live += 1;
            let v: serde_json::Value = serde_json::from_slice(&m.data).unwrap();
            assert_eq!(v["event_id"], id.to_string());
        }
        last_data = id;
    }
    assert!(live >= 20, "{live} live events");
    assert!(heartbeats >= 3, "{heartbeats} heartbeats");
}

#[test]
fn a_resume_after_a_live_id_gets_the_following_live_events() {
    let mut cfg = config(5);
    cfg.rate = 1000;
    cfg.live_after = Some(Duration::ZERO);
    let addr = start(cfg);
    let mut c = open_stream(
        addr,
        "/stream/live-sim",
        &[auth(), ("Last-Event-ID", "0-0")],
    );
    let mut ids = Vec::new();
    while ids.len() < 40 {
        let m = c.next().unwrap();
        if m.event.as_deref() != Some("heartbeat") {
            ids.push(id_of(&m));
        }
    }
    drop(c);
    let resume = ids[20].to_string();
    let mut c = open_stream(
        addr,
        "/stream/live-sim",
        &[auth(), ("Last-Event-ID", &resume)],
    );
    let mut again = Vec::new();
    while again.len() < 19 {
        let m = c.next().unwrap();
        if m.event.as_deref() != Some("heartbeat") {
            again.push(id_of(&m));
        }
    }
    assert_eq!(&again[..], &ids[21..40]);
}

#[test]
fn status_codes_before_the_stream() {
    let mut cfg = config(10);
    cfg.fail = Some((503, 2));
    let addr = start(cfg);
    let stream = "/stream/live-sim";
    assert_eq!(get(addr, stream, &[]).status, 401);
    assert_eq!(
        get(addr, stream, &[("Authorization", "Bearer nope")]).status,
        401
    );
    assert_eq!(get(addr, "/stream/other", &[auth()]).status, 401);
    assert_eq!(get(addr, stream, &[auth()]).status, 503);
    assert_eq!(get(addr, stream, &[auth()]).status, 503);
    let recover_only = format!("{stream}?recover=2030-01-01T00:00:00Z");
    assert_eq!(get(addr, &recover_only, &[auth()]).status, 500);
    assert_eq!(get(addr, stream, &[auth()]).status, 200);
    assert_eq!(get(addr, "/elsewhere", &[auth()]).status, 404);
    let health = get(addr, "/_sim/health", &[]);
    assert_eq!(health.status, 200);
    assert_eq!(health.body(), b"ok");

    let mut stopped = config(10);
    stopped.stopped = true;
    let addr = start(stopped);
    assert_eq!(get(addr, stream, &[auth()]).status, 410);
    assert_eq!(get(addr, stream, &[]).status, 401);

    let mut html = config(10);
    html.html = true;
    let addr = start(html);
    let c = get(addr, stream, &[auth()]);
    assert_eq!(c.status, 200);
    assert!(c.headers.contains("content-type: text/html"));
    assert!(c.body().starts_with(b"<!DOCTYPE html>"));
}

#[test]
fn drop_after_closes_every_connection_mid_message() {
    let mut cfg = config(100);
    cfg.drop_after = Some(5);
    let addr = start(cfg.clone());
    for _ in 0..2 {
        let mut c = open_stream(
            addr,
            "/stream/live-sim",
            &[auth(), ("Last-Event-ID", "0-0")],
        );
        let mut data = Vec::new();
        while let Some(m) = c.next() {
            assert_ne!(m.event.as_deref(), Some("heartbeat"));
            data.push(m);
        }
        assert_eq!(data.len(), 5);
        // Half a message is left over, without its blank line.
        assert!(
            c.buf.starts_with(b"id: "),
            "{:?}",
            String::from_utf8_lossy(&c.buf)
        );
        assert!(!c.buf.ends_with(b"\n\n"));
    }
}

#[test]
fn stall_after_silences_only_the_first_stream() {
    let mut cfg = config(50);
    cfg.heartbeat = Duration::from_millis(20);
    cfg.stall_after = Some(7);
    let addr = start(cfg);
    let mut first = open_stream(
        addr,
        "/stream/live-sim",
        &[auth(), ("Last-Event-ID", "0-0")],
    );
    let mut data = 0;
    while data < 7 {
        let m = first.next().unwrap();
        if m.event.as_deref() != Some("heartbeat") {
            data += 1;
        }
    }
    first
        .sock
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut chunk = [0u8; 1024];
    let err = first.sock.read(&mut chunk).unwrap_err();
    assert!(matches!(
        err.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ));
    assert!(first.buf.is_empty());
    let mut second = open_stream(
        addr,
        "/stream/live-sim",
        &[auth(), ("Last-Event-ID", "0-0")],
    );
    let (all, _) = second.until_heartbeat();
    assert_eq!(all.len(), 50);
}

#[test]
fn rate_limits_the_history() {
    let mut cfg = config(20);
    cfg.rate = 100;
    let addr = start(cfg);
    let t = Instant::now();
    let mut c = open_stream(
        addr,
        "/stream/live-sim",
        &[auth(), ("Last-Event-ID", "0-0")],
    );
    let (data, _) = c.until_heartbeat();
    assert_eq!(data.len(), 20);
    assert!(
        t.elapsed() >= Duration::from_millis(150),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn retention_trims_the_history_and_the_connected_message_says_so() {
    let mut cfg = config(100);
    cfg.shape.retention_first = 40;
    let addr = start(cfg.clone());
    let mut c = get(
        addr,
        "/stream/live-sim",
        &[auth(), ("Last-Event-ID", "0-0")],
    );
    let connected = c.next().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&connected.data).unwrap();
    assert_eq!(v["firstEventId"], cfg.model.id(40).to_string());
    assert_eq!(v["lastEventId"], cfg.model.id(99).to_string());
    assert_eq!(v["streamSize"], 60);
    assert_eq!(v["firstEventDate"], crate::iso::iso(cfg.model.id(40).ms));
    assert!(v["connectionId"].is_string());
    let (data, _) = c.until_heartbeat();
    assert_eq!(data.len(), 60);
    assert_eq!(id_of(&data[0]), cfg.model.id(40));
}

fn encode_path(key: &str) -> String {
    let mut out = String::new();
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[test]
fn files_are_served_by_percent_encoded_key_with_auth() {
    let mut cfg = config(1500);
    cfg.model = Model::new(Params {
        events: 1500,
        files_ratio: 0.5,
        ..Params::default()
    });
    let addr = start(cfg.clone());
    let plan = Plan::new(
        &cfg.model,
        &cfg.shape,
        &plan::Request {
            start: Some(EventId::ZERO),
            recover_ms: None,
            listen_delete: true,
        },
    )
    .unwrap();
    let mut out = Vec::new();
    crate::dump::write_files(&cfg.model, &plan, &mut out).unwrap();
    let lines: Vec<serde_json::Value> = std::str::from_utf8(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() > 100);
    let fancy = lines
        .iter()
        .filter(|l| l["key"].as_str().unwrap().contains(' '))
        .count();
    assert!(fancy > 0, "no key with a space");
    // Also as OpenCTI sends them: chunked, with no length, the same bytes.
    let mut chunked = cfg.clone();
    chunked.file_chunked = true;
    let addr_chunked = start(chunked);
    for l in &lines {
        let key = l["key"].as_str().unwrap();
        let want = l["base64"].as_str().unwrap();
        let target = format!("/storage/get/{}", encode_path(key));
        let c = get(addr, &target, &[auth()]);
        assert_eq!(c.status, 200, "{key}");
        assert!(c.headers.contains("application/octet-stream"));
        assert!(c.headers.contains("content-length"), "{}", c.headers);
        assert_eq!(files::base64(&c.body()), want, "{key}");
        let c = get(addr_chunked, &target, &[auth()]);
        assert_eq!(c.status, 200, "{key}");
        assert!(
            c.headers.contains("transfer-encoding: chunked"),
            "{}",
            c.headers
        );
        assert!(!c.headers.contains("content-length"), "{}", c.headers);
        assert_eq!(files::base64(&dechunk(&c.body())), want, "{key}");
    }
    let key = encode_path(lines[0]["key"].as_str().unwrap());
    assert_eq!(get(addr, &format!("/storage/get/{key}"), &[]).status, 401);
    assert_eq!(
        get(addr, &format!("/storage/get/{key}x"), &[auth()]).status,
        404
    );
    assert_eq!(
        get(addr, "/storage/get/import/Report/nope/a.pdf", &[auth()]).status,
        404
    );

    let mut flaky = cfg.clone();
    flaky.file_fail_every = Some(3);
    let addr = start(flaky);
    let statuses: Vec<u16> = (0..6)
        .map(|_| get(addr, &format!("/storage/get/{key}"), &[auth()]).status)
        .collect();
    assert_eq!(statuses, [200, 200, 500, 200, 200, 500]);
}

#[test]
fn the_live_timeline_is_strictly_increasing_and_searchable() {
    for rate in [1, 7, 10, 999, 1000, 2500] {
        let live = Live {
            t0_ms: 1_000_000,
            rate,
        };
        let mut prev = None;
        for j in 0..3000 {
            let id = live.id(j);
            assert!(prev.is_none_or(|p| id > p), "rate {rate}: {id}");
            assert_eq!(
                live.due(id.ms),
                live.first_after(EventId::new(id.ms, u64::MAX))
            );
            assert_eq!(live.first_after(id), j + 1);
            assert!(live.due(id.ms) > j);
            prev = Some(id);
        }
        assert_eq!(live.due(999_999), 0);
        assert_eq!(live.first_after(EventId::ZERO), 0);
        let far = live.first_after(EventId::new(u64::MAX, u64::MAX));
        assert!(live.id(far).ms >= 1_000_000);
    }
}
