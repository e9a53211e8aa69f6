//! `serve`: a synchronous HTTP/1.1 server speaking the OpenCTI live-stream
//! protocol, one thread per connection, `Connection: close` on every answer.
//!
//! Endpoints: `GET /stream/<id>` (the live stream), `GET /storage/get/<key>`
//! (attached files), `GET /_sim/health`. What a stream sends is decided by
//! `plan.rs` and rendered by `model.rs`; this file owns the I/O around it:
//! status codes, fault injection (failures, drops, stalls), pacing, heartbeats
//! and live events.
//!
//! Live events follow one timeline shared by every connection: live event `j`
//! has id `<t0 + floor(j*1000/rate)>-<n>` where `t0` is the server's start
//! (or just after the history if that lies in the future) plus
//! `--live-after-ms`, and is sent once the wall clock reaches its millisecond.
//! A reconnecting client therefore gets the same live events again.

use std::io::{self, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::files;
use crate::graphql;
use crate::hash::h;
use crate::http::{self, Request};
use crate::id::{self, EventId};
use crate::jsonw;
use crate::model::Model;
use crate::plan::{self, Item, Plan, PlanError, Shape};

/// Write buffer of a stream connection, bytes.
const WRITE_BUFFER: usize = 256 * 1024;
/// At full speed the clock is read once per this many events.
const CLOCK_EVERY: u64 = 256;
/// Live events a second when `--rate` is 0.
const DEFAULT_LIVE_RATE: u64 = 10;
/// Deadline for a client to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

const HTML_PAGE: &str = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>OpenCTI - Cyber Threat Intelligence Platform</title></head><body><noscript>You need to enable JavaScript to run this app.</noscript><div id=\"root\"></div></body></html>\n";

/// Everything `serve` needs, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub model: Model,
    pub shape: Shape,
    /// 0 = an ephemeral port.
    pub port: u16,
    pub token: String,
    pub stream_id: String,
    pub heartbeat: Duration,
    /// The stream answers 410.
    pub stopped: bool,
    /// `(status, count)`: the first `count` stream requests answer `status`.
    pub fail: Option<(u16, u64)>,
    /// Close every connection after this many data events.
    pub drop_after: Option<u64>,
    /// The first stream goes silent after this many data events.
    pub stall_after: Option<u64>,
    /// Answer stream requests with an HTML page.
    pub html: bool,
    /// Data events a second for recovery and history; 0 = unlimited.
    pub rate: u64,
    /// Start live events this long after the server starts.
    pub live_after: Option<Duration>,
    /// Every K-th file request answers 500.
    pub file_fail_every: Option<u64>,
    /// Wait this long before answering each file request (an OpenCTI across
    /// a network).
    pub file_latency: Duration,
    /// Send the stream with `Transfer-Encoding: chunked`, one HTTP chunk
    /// per message, as OpenCTI (Node's `res.write` per event) does.
    pub chunked: bool,
    /// Send files with `Transfer-Encoding: chunked` and no length, as
    /// OpenCTI (a stored object piped into the response) does.
    pub file_chunked: bool,
    /// Every K-th file request trickles: one byte every `trickle_every.1`.
    pub trickle: Option<(u64, Duration)>,
    /// Append one line per request (`<method> <path> <token|-> <status>`) to
    /// this file.
    pub request_log: Option<std::path::PathBuf>,
    /// Log requests to stderr.
    pub verbose: bool,
    /// A connector the platform knows before any registration.
    pub connector: Option<graphql::Existing>,
    /// Every GraphQL request answers this status.
    pub graphql_status: Option<u16>,
    /// Every GraphQL request waits this long before its answer.
    pub graphql_delay: Option<Duration>,
}

impl Config {
    /// A configuration with the CLI defaults around `model`.
    #[cfg(test)]
    pub fn new(model: Model) -> Self {
        Config {
            model,
            shape: Shape::default(),
            port: 0,
            token: "sim-token".to_string(),
            stream_id: "live-sim".to_string(),
            heartbeat: Duration::from_millis(5000),
            stopped: false,
            fail: None,
            drop_after: None,
            stall_after: None,
            html: false,
            rate: 0,
            live_after: None,
            file_fail_every: None,
            file_latency: Duration::ZERO,
            chunked: false,
            file_chunked: false,
            trickle: None,
            request_log: None,
            verbose: false,
            connector: None,
            graphql_status: None,
            graphql_delay: None,
        }
    }
}

/// The live timeline.
#[derive(Debug, Clone, Copy)]
struct Live {
    t0_ms: u64,
    rate: u64,
}

impl Live {
    /// Millisecond offset of live event `j`.
    fn offset(&self, j: u64) -> u64 {
        (u128::from(j) * 1000 / u128::from(self.rate)) as u64
    }

    fn id(&self, j: u64) -> EventId {
        let off = self.offset(j);
        let first_in_ms = (u128::from(off) * u128::from(self.rate)).div_ceil(1000) as u64;
        EventId::new(self.t0_ms.saturating_add(off), j - first_in_ms)
    }

    /// How many live events are due at `now_ms` (saturating: a client may
    /// send any start id).
    fn due(&self, now_ms: u64) -> u64 {
        if now_ms < self.t0_ms {
            return 0;
        }
        let d = u128::from(now_ms - self.t0_ms) + 1;
        let n = (d * u128::from(self.rate)).div_ceil(1000);
        // Far enough that no id computation overflows.
        n.min(1 << 53) as u64
    }

    /// First live event with an id strictly after `after`.
    fn first_after(&self, after: EventId) -> u64 {
        let (mut lo, mut hi) = (0, self.due(after.ms));
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.id(mid) > after {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        lo
    }
}

struct Shared {
    cfg: Config,
    live: Option<Live>,
    /// Authorized stream requests so far (for `--fail-count`).
    stream_requests: AtomicU64,
    /// Streams that got a 200 (the first one may stall).
    streams: AtomicU64,
    /// Authorized file requests so far (for `--file-fail-every`).
    file_requests: AtomicU64,
    /// File requests being answered now, and the most at once so far
    /// (`/_sim/stats`): how many fetches a client really keeps in flight.
    files_in_flight: AtomicU64,
    files_in_flight_max: AtomicU64,
    /// The GraphQL side: connectors, and the headers seen.
    platform: graphql::Platform,
    /// `--request-log`, opened for appending.
    request_log: Option<std::sync::Mutex<std::fs::File>>,
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Shared {
    fn new(cfg: Config) -> Self {
        let live = cfg.live_after.map(|delay| {
            let p = cfg.model.params();
            let after_history = if p.events > 0 {
                cfg.model.id(p.events - 1).ms + 1
            } else {
                0
            };
            Live {
                t0_ms: wall_ms().max(after_history) + delay.as_millis() as u64,
                rate: if cfg.rate == 0 {
                    DEFAULT_LIVE_RATE
                } else {
                    cfg.rate
                },
            }
        });
        let platform = graphql::Platform::new(cfg.connector.clone(), cfg.graphql_status);
        Shared {
            platform,
            cfg,
            live,
            stream_requests: AtomicU64::new(0),
            streams: AtomicU64::new(0),
            file_requests: AtomicU64::new(0),
            files_in_flight: AtomicU64::new(0),
            files_in_flight_max: AtomicU64::new(0),
            request_log: None,
        }
    }

    /// Records a request in `--request-log`: method, path as received,
    /// whether it carried the token, and the status answered.
    fn record(&self, req: &Request, status: u16) {
        if let Some(f) = &self.request_log {
            let token = if req.bearer() == Some(self.cfg.token.as_str()) {
                "token"
            } else {
                "-"
            };
            let mut f = f.lock().expect("not poisoned");
            let _ = writeln!(f, "{} {} {token} {status}", req.method, req.path);
        }
    }

    fn log(&self, msg: impl FnOnce() -> String) {
        if self.cfg.verbose {
            eprintln!("opencti-stream-sim: {}", msg());
        }
    }
}

/// Binds `127.0.0.1:<port>`.
pub fn bind(cfg: &Config) -> io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(("127.0.0.1", cfg.port))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Serves `listener` forever on the calling thread.
pub fn run(listener: TcpListener, cfg: Config) {
    let mut shared = Shared::new(cfg);
    if let Some(path) = &shared.cfg.request_log {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => shared.request_log = Some(std::sync::Mutex::new(f)),
            Err(e) => eprintln!(
                "opencti-stream-sim: cannot open the request log `{}`: {e}",
                path.display()
            ),
        }
    }
    accept_loop(listener, Arc::new(shared));
}

/// Starts a server on a background thread; returns its address.
#[cfg(test)]
pub fn spawn(cfg: Config) -> io::Result<SocketAddr> {
    let (listener, addr) = bind(&cfg)?;
    thread::spawn(move || run(listener, cfg));
    Ok(addr)
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let sh = Arc::clone(&shared);
                let spawned = thread::Builder::new()
                    .name("sim-conn".to_string())
                    .spawn(move || handle(&sh, stream));
                if let Err(e) = spawned {
                    shared.log(|| format!("cannot start a connection thread: {e}"));
                }
            }
            Err(e) => {
                shared.log(|| format!("accept failed: {e}"));
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn handle(sh: &Shared, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(HEAD_TIMEOUT));
    let (mut req, rest) = match http::read_head_and_rest(&mut stream) {
        Ok(Some(r)) => r,
        _ => return,
    };
    if req.method == "POST" && req.path == "/graphql" {
        let body = http::read_body(&req, rest, &mut stream).ok().flatten();
        if let Some(delay) = sh.cfg.graphql_delay {
            thread::sleep(delay);
        }
        let (status, answer) = match body {
            Some(b) => sh.platform.answer(&req, &b, &sh.cfg.token),
            None => (400, "{\"errors\":[{\"message\":\"no body\"}]}".to_string()),
        };
        sh.log(|| format!("POST /graphql -> {status}"));
        let _ = http::respond(
            &mut stream,
            status,
            http::reason(status),
            "application/json; charset=utf-8",
            answer.as_bytes(),
        );
        return;
    }
    // Attached files are served on a kept-alive connection, as OpenCTI
    // does: a client fetching many files reuses one connection.
    while req.method == "GET"
        && req.path.starts_with("/storage/get/")
        && authorized(sh, &req)
        && !req
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
    {
        sh.platform.saw("file", &req);
        if file_keep_alive(sh, &req, &mut stream).is_err() {
            return;
        }
        req = match http::read_head(&mut stream) {
            Ok(Some(r)) => r,
            _ => return,
        };
    }
    let _ = stream.set_read_timeout(None);
    let result = route(sh, &req, stream);
    if let Err(e) = result {
        sh.log(|| format!("{} {}: connection ended: {e}", req.method, req.path));
    }
}

fn answer(
    sh: &Shared,
    req: &Request,
    mut stream: TcpStream,
    status: u16,
    reason: &str,
    body: &str,
) -> io::Result<()> {
    sh.log(|| format!("{} {} -> {status}", req.method, req.path));
    sh.record(req, status);
    http::respond(
        &mut stream,
        status,
        reason,
        "text/plain; charset=utf-8",
        body.as_bytes(),
    )
}

fn route(sh: &Shared, req: &Request, stream: TcpStream) -> io::Result<()> {
    if req.method != "GET" {
        return answer(sh, req, stream, 404, "Not Found", "not found\n");
    }
    if req.path == "/_sim/health" {
        return answer(sh, req, stream, 200, "OK", "ok");
    }
    if req.path == "/_sim/stats" {
        let mut stream = stream;
        let body = format!(
            "{{\"file_requests\":{},\"files_in_flight_max\":{}}}",
            sh.file_requests.load(Ordering::SeqCst),
            sh.files_in_flight_max.load(Ordering::SeqCst)
        );
        return http::respond(&mut stream, 200, "OK", "application/json", body.as_bytes());
    }
    if req.path == "/_sim/connectors" {
        let mut stream = stream;
        let body = sh.platform.record();
        return http::respond(&mut stream, 200, "OK", "application/json", body.as_bytes());
    }
    if let Some(id) = req.path.strip_prefix("/stream/") {
        sh.platform.saw("stream", req);
        return stream_endpoint(sh, req, id, stream);
    }
    if let Some(key) = req.path.strip_prefix("/storage/get/") {
        sh.platform.saw("file", req);
        return file_endpoint(sh, req, key, stream);
    }
    answer(sh, req, stream, 404, "Not Found", "not found\n")
}

fn authorized(sh: &Shared, req: &Request) -> bool {
    req.bearer() == Some(sh.cfg.token.as_str())
}

/// Answers one authorized file request and keeps the connection open.
fn file_keep_alive(sh: &Shared, req: &Request, stream: &mut TcpStream) -> io::Result<()> {
    let raw_key = req.path.strip_prefix("/storage/get/").unwrap_or("");
    serve_file(sh, req, raw_key, stream, false)
}

fn file_endpoint(
    sh: &Shared,
    req: &Request,
    raw_key: &str,
    mut stream: TcpStream,
) -> io::Result<()> {
    if !authorized(sh, req) {
        return answer(sh, req, stream, 401, "Unauthorized", "unauthorized\n");
    }
    serve_file(sh, req, raw_key, &mut stream, true)
}

/// A file request being answered, counted in `files_in_flight` while it lives.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(sh: &'a Shared) -> Self {
        let now = sh.files_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        sh.files_in_flight_max.fetch_max(now, Ordering::SeqCst);
        InFlight(sh)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.files_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Answers an authorized file request: after `--file-latency-ms`, an
/// injected 500, a redirect for `redirect/` keys, 404 for unknown keys, else
/// the file, streamed (trickled for every `--trickle-every`-th request).
fn serve_file(
    sh: &Shared,
    req: &Request,
    raw_key: &str,
    stream: &mut TcpStream,
    close: bool,
) -> io::Result<()> {
    use std::io::Write;
    let n = sh.file_requests.fetch_add(1, Ordering::SeqCst) + 1;
    let _in_flight = InFlight::enter(sh);
    if !sh.cfg.file_latency.is_zero() {
        thread::sleep(sh.cfg.file_latency);
    }
    let failing = sh
        .cfg
        .file_fail_every
        .is_some_and(|k| k > 0 && n.is_multiple_of(k));
    let key = http::percent_decode_str(raw_key);
    let connection = if close { "Connection: close\r\n" } else { "" };
    let small = |stream: &mut TcpStream, status: u16, extra: &str, body: &[u8]| {
        sh.log(|| format!("GET {} -> {status}", req.path));
        sh.record(req, status);
        write!(
            stream,
            "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{extra}{connection}\r\n",
            http::reason(status),
            body.len()
        )?;
        stream.write_all(body)?;
        stream.flush()
    };
    if failing {
        return small(stream, 500, "", b"injected failure\n");
    }
    let Some(key) = key.filter(|k| k.starts_with("redirect/") || files::exists(&sh.cfg.model, k))
    else {
        return small(stream, 404, "", b"no such file\n");
    };
    if key.starts_with("redirect/") {
        let location = format!(
            "Location: http://127.0.0.1:{}{}\r\n",
            stream.local_addr().map(|a| a.port()).unwrap_or(0),
            files::REDIRECT_TARGET
        );
        return small(stream, 302, &location, b"moved\n");
    }
    let len = files::served_len(&sh.cfg.model, &key);
    let trickle = sh
        .cfg
        .trickle
        .filter(|(every, _)| n.is_multiple_of(*every))
        .map(|(_, pause)| pause);
    sh.log(|| {
        format!(
            "GET {} -> 200 ({len} bytes{})",
            req.path,
            if trickle.is_some() { ", trickled" } else { "" }
        )
    });
    sh.record(req, 200);
    let chunked = sh.cfg.file_chunked;
    let length = if chunked {
        "Transfer-Encoding: chunked\r\n".to_string()
    } else {
        format!("Content-Length: {len}\r\n")
    };
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n{length}{connection}\r\n"
    )?;
    let mut w = BufWriter::with_capacity(64 << 10, &mut *stream);
    // One HTTP chunk per piece written, as Node writes each piece it pipes.
    let piece = |w: &mut BufWriter<&mut TcpStream>, b: &[u8]| -> io::Result<()> {
        if b.is_empty() {
            // A chunk of length 0 would end the body.
            Ok(())
        } else if chunked {
            write!(w, "{:x}\r\n", b.len())?;
            w.write_all(b)?;
            w.write_all(b"\r\n")
        } else {
            w.write_all(b)
        }
    };
    match trickle {
        Some(pause) => files::write_served(&sh.cfg.model, &key, 1, &mut |b| {
            piece(&mut w, b)?;
            w.flush()?;
            thread::sleep(pause);
            Ok(())
        })?,
        None => files::write_served(&sh.cfg.model, &key, 64 << 10, &mut |b| piece(&mut w, b))?,
    }
    if chunked {
        w.write_all(b"0\r\n\r\n")?;
    }
    w.flush()
}

fn stream_endpoint(
    sh: &Shared,
    req: &Request,
    raw_id: &str,
    mut stream: TcpStream,
) -> io::Result<()> {
    if sh.cfg.html {
        sh.log(|| format!("GET {} -> 200 (html)", req.path));
        return http::respond(
            &mut stream,
            200,
            "OK",
            "text/html; charset=utf-8",
            HTML_PAGE.as_bytes(),
        );
    }
    let not_authenticated = "You are not authenticated, please check your credentials";
    if http::percent_decode_str(raw_id).as_deref() != Some(sh.cfg.stream_id.as_str())
        || !authorized(sh, req)
    {
        return answer(sh, req, stream, 401, not_authenticated, "unauthorized\n");
    }
    if sh.cfg.stopped {
        return answer(
            sh,
            req,
            stream,
            410,
            "This live stream is stopped",
            "stopped\n",
        );
    }
    let n = sh.stream_requests.fetch_add(1, Ordering::SeqCst);
    if let Some((status, count)) = sh.cfg.fail {
        if n < count {
            return answer(
                sh,
                req,
                stream,
                status,
                http::reason(status),
                "injected failure\n",
            );
        }
    }
    // OpenCTI reads `from` from the query, then the `from` header, then
    // `Last-Event-ID`; `recover` from the query, then `recover` or
    // `recover-date` headers.
    let start = req
        .option("from")
        .or_else(|| req.header("last-event-id").filter(|v| !v.is_empty()));
    let recover = req
        .option("recover")
        .or_else(|| req.header("recover-date").filter(|v| !v.is_empty()));
    let request = plan::Request {
        start: start.and_then(id::parse_start),
        recover_ms: recover.and_then(id::parse_date),
        listen_delete: req.option("listen-delete") != Some("false"),
    };
    let plan = match Plan::new(&sh.cfg.model, &sh.cfg.shape, &request) {
        Ok(p) => p,
        Err(PlanError::RecoverWithoutStart) => {
            let reason = format!(
                "Error in stream {}: Recovery mode is only possible with a start date.",
                sh.cfg.stream_id
            );
            return answer(
                sh,
                req,
                stream,
                500,
                &reason,
                "recovery needs a start position\n",
            );
        }
    };
    sh.log(|| {
        format!(
            "GET {} -> 200 (start {:?}, recover {:?}, listen-delete {}, no-dependencies {:?}, with-inferences {:?}; {} recovery + {} history events)",
            req.path,
            start,
            recover,
            request.listen_delete,
            req.option("no-dependencies"),
            req.option("with-inferences"),
            plan.recovery.len(),
            plan.history.end - plan.history.start,
        )
    });
    sh.record(req, 200);
    let ordinal = sh.streams.fetch_add(1, Ordering::SeqCst);
    let w = Body {
        out: BufWriter::with_capacity(WRITE_BUFFER, stream.try_clone()?),
        chunk: sh.cfg.chunked.then(Vec::new),
    };
    let mut conn = Conn {
        sh,
        w,
        sock: stream,
        buf: Vec::with_capacity(64 * 1024),
        last_id: plan.live_after,
        last_data: None,
        sent: 0,
        hb_due: Instant::now() + sh.cfg.heartbeat,
        may_stall: ordinal == 0,
        listen_delete: plan.listen_delete,
    };
    let result = conn.run(&plan, ordinal);
    sh.log(|| format!("stream {ordinal}: {} data events sent", conn.sent));
    result
}

/// One stream connection.
/// A stream response body: written as it comes, or (`--chunked`) in HTTP/1.1
/// chunks of one message each.
struct Body {
    out: BufWriter<TcpStream>,
    /// The message being written, in chunked mode.
    chunk: Option<Vec<u8>>,
}

impl Body {
    /// The end of a message: in chunked mode, it goes out as one chunk.
    fn end_message(&mut self) -> io::Result<()> {
        match &mut self.chunk {
            Some(c) if !c.is_empty() => {
                write!(self.out, "{:x}\r\n", c.len())?;
                self.out.write_all(c)?;
                self.out.write_all(b"\r\n")?;
                c.clear();
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

impl Write for Body {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match &mut self.chunk {
            Some(c) => {
                c.extend_from_slice(b);
                Ok(b.len())
            }
            None => self.out.write(b),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.end_message()?;
        self.out.flush()
    }
}

struct Conn<'a> {
    sh: &'a Shared,
    w: Body,
    sock: TcpStream,
    buf: Vec<u8>,
    /// Id of the last message with an id (data or heartbeat), or the start.
    last_id: Option<EventId>,
    /// Id of the last data message.
    last_data: Option<EventId>,
    /// Data messages sent.
    sent: u64,
    hb_due: Instant,
    may_stall: bool,
    listen_delete: bool,
}

/// What sending one item did.
enum Sent {
    Yes,
    Filtered,
    /// The connection was dropped or stalled on purpose: stop.
    Stop,
}

impl Conn<'_> {
    fn run(&mut self, plan: &Plan, ordinal: u64) -> io::Result<()> {
        let cfg = &self.sh.cfg;
        self.w.out.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache, no-transform\r\nAccess-Control-Allow-Origin: *\r\nConnection: close\r\n",
        )?;
        if self.w.chunk.is_some() {
            self.w.out.write_all(b"Transfer-Encoding: chunked\r\n")?;
        }
        self.w.out.write_all(b"\r\n")?;
        let connected = self.connected_json(ordinal);
        self.w.write_all(b"event: connected\ndata: ")?;
        self.w.write_all(connected.as_bytes())?;
        self.w.write_all(b"\n\n")?;
        self.w.flush()?;

        let started = Instant::now();
        let mut n: u64 = 0;
        for item in plan.items() {
            if cfg.rate > 0 {
                let target = started + Duration::from_secs_f64(self.sent as f64 / cfg.rate as f64);
                self.pace_until(target)?;
            }
            if let Sent::Stop = self.send(item)? {
                return Ok(());
            }
            n += 1;
            if (cfg.rate > 0 || n.is_multiple_of(CLOCK_EVERY)) && Instant::now() >= self.hb_due {
                self.busy_heartbeat()?;
            }
        }

        let events = cfg.model.params().events;
        let live = self.sh.live;
        let mut next_live = match (live, plan.live_after) {
            (Some(l), Some(after)) => l.first_after(after),
            (Some(l), None) => l.due(wall_ms()),
            (None, _) => 0,
        };
        // The history is complete: say so right away.
        self.idle_heartbeat(live.map(|l| l.id(next_live)))?;
        self.w.flush()?;
        loop {
            if let Some(l) = live {
                let due = l.due(wall_ms());
                while next_live < due {
                    if let Sent::Stop =
                        self.send(Item::Live(events + next_live, l.id(next_live)))?
                    {
                        return Ok(());
                    }
                    next_live += 1;
                    if next_live % CLOCK_EVERY == 0 && Instant::now() >= self.hb_due {
                        self.busy_heartbeat()?;
                    }
                }
            }
            if Instant::now() >= self.hb_due {
                self.idle_heartbeat(live.map(|l| l.id(next_live)))?;
            }
            self.w.flush()?;
            let now = Instant::now();
            let mut wait = self.hb_due.saturating_duration_since(now);
            if let Some(l) = live {
                let next_ms = l.id(next_live).ms;
                wait = wait.min(Duration::from_millis(next_ms.saturating_sub(wall_ms())));
            }
            thread::sleep(wait.max(Duration::from_millis(1)));
        }
    }

    fn connected_json(&self, ordinal: u64) -> String {
        let m = &self.sh.cfg.model;
        let events = m.params().events;
        let first = self.sh.cfg.shape.first_retained(m);
        let mut size = events - first;
        let mut first_id = (first < events).then(|| m.id(first));
        let mut last_id = (events > 0).then(|| m.id(events - 1));
        if let Some(l) = self.sh.live {
            let due = l.due(wall_ms());
            if due > 0 {
                size += due;
                last_id = Some(l.id(due - 1));
                first_id = first_id.or(Some(l.id(0)));
            }
        }
        let first_id = first_id.unwrap_or(EventId::ZERO);
        let last_id = last_id.unwrap_or(EventId::ZERO);
        let mut conn_id = Vec::new();
        let seed = m.params().seed;
        jsonw::uuid(
            &mut conn_id,
            (h(seed, 0xc0, ordinal) & !0xf000) | 0x4000,
            (h(seed, 0xc1, ordinal) >> 2) | (0b10 << 62),
        );
        serde_json::json!({
            "lastEventId": last_id.to_string(),
            "firstEventId": first_id.to_string(),
            "firstEventDate": crate::iso::iso(first_id.ms),
            "lastEventDate": crate::iso::iso(last_id.ms),
            "streamSize": size,
            "connectionId": String::from_utf8_lossy(&conn_id),
        })
        .to_string()
    }

    /// Waits until `target`, sending heartbeats that fall due meanwhile.
    fn pace_until(&mut self, target: Instant) -> io::Result<()> {
        loop {
            let now = Instant::now();
            if now >= target {
                return Ok(());
            }
            if now >= self.hb_due {
                self.busy_heartbeat()?;
            }
            self.w.flush()?;
            thread::sleep(target.min(self.hb_due).saturating_duration_since(now));
        }
    }

    fn write_frame(&mut self, id: EventId, name: &str) -> io::Result<()> {
        let mut head = Vec::with_capacity(64);
        head.extend_from_slice(b"id: ");
        id.write(&mut head);
        head.extend_from_slice(b"\nevent: ");
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b"\ndata: ");
        self.w.write_all(&head)?;
        self.w.write_all(&self.buf)?;
        self.w.write_all(b"\n\n")?;
        self.w.end_message()
    }

    fn send(&mut self, item: Item) -> io::Result<Sent> {
        let cfg = &self.sh.cfg;
        let Some(msg) = plan::render(
            &cfg.model,
            &cfg.shape,
            item,
            self.listen_delete,
            &mut self.buf,
        ) else {
            return Ok(Sent::Filtered);
        };
        if self.may_stall && cfg.stall_after == Some(self.sent) {
            self.stall()?;
            return Ok(Sent::Stop);
        }
        if cfg.drop_after == Some(self.sent) {
            // Half of the next message, then the socket closes: a client must
            // not dispatch (nor resume after) a message without its blank line.
            let mut frame = format!("id: {}\nevent: {}\ndata: ", msg.id, msg.name).into_bytes();
            frame.extend_from_slice(&self.buf);
            frame.extend_from_slice(b"\n\n");
            self.w.write_all(&frame[..frame.len() / 2])?;
            self.w.flush()?;
            let _ = self.sock.shutdown(Shutdown::Both);
            self.sh
                .log(|| format!("dropped the connection after {} data events", self.sent));
            return Ok(Sent::Stop);
        }
        self.write_frame(msg.id, msg.name)?;
        self.sent += 1;
        self.last_data = Some(msg.id);
        self.last_id = Some(msg.id);
        Ok(Sent::Yes)
    }

    /// Sends nothing more and keeps the socket open until the client leaves.
    fn stall(&mut self) -> io::Result<()> {
        self.w.flush()?;
        self.sh
            .log(|| format!("stalling after {} data events", self.sent));
        let mut sink = [0u8; 1024];
        loop {
            match self.sock.read(&mut sink) {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => {}
            }
        }
    }

    fn write_heartbeat(&mut self, id: EventId) -> io::Result<()> {
        let mut frame = Vec::with_capacity(96);
        frame.extend_from_slice(b"id: ");
        id.write(&mut frame);
        frame.extend_from_slice(b"\nevent: heartbeat\ndata: ");
        jsonw::iso(&mut frame, id.ms);
        frame.extend_from_slice(b"\n\n");
        self.w.write_all(&frame)?;
        self.w.end_message()?;
        self.last_id = Some(id);
        self.hb_due = Instant::now() + self.sh.cfg.heartbeat;
        Ok(())
    }

    /// A heartbeat while messages are still pending: the last id sent.
    fn busy_heartbeat(&mut self) -> io::Result<()> {
        match self.last_id {
            Some(id) => self.write_heartbeat(id),
            None => {
                self.hb_due = Instant::now() + self.sh.cfg.heartbeat;
                Ok(())
            }
        }
    }

    /// A heartbeat once everything due is sent: `<now>-0`, which proves every
    /// id before it complete, unless a live event at or before that
    /// millisecond (`next_live`) is still to come.
    fn idle_heartbeat(&mut self, next_live: Option<EventId>) -> io::Result<()> {
        let mut ms = wall_ms();
        if let Some(d) = self.last_data {
            ms = ms.max(d.ms + 1);
        }
        if let Some(l) = self.last_id {
            ms = ms.max(l.ms);
        }
        if next_live.is_some_and(|n| n.ms <= ms) {
            return self.busy_heartbeat();
        }
        let id = EventId::new(ms, 0);
        match self.last_id {
            Some(last) if last > id => self.busy_heartbeat(),
            _ => self.write_heartbeat(id),
        }
    }
}

#[cfg(test)]
mod tests;
