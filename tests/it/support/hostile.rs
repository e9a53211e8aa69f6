//! A small hostile HTTP server: each connection gets a scripted answer (a
//! status with a body, or an event stream of given bytes followed by
//! heartbeats), whatever it asked. It stands in for an OpenCTI, a proxy or
//! a storage server that misbehaves in ways the simulator does not.
//!
//! Every request head is recorded, so a test can check what the exporter
//! sent. Dropping the server stops it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What one connection is answered with.
#[derive(Clone, Debug)]
pub enum Answer {
    /// An HTTP status with a `text/plain` body, then the connection closes.
    Status(u16, Vec<u8>),
    /// `200 text/event-stream`, these bytes, then a heartbeat every 100 ms
    /// (ids from `1900000000000-0` up, later than any id a test uses) until
    /// the client leaves.
    Stream(Vec<u8>),
}

type Script = dyn Fn(usize) -> Answer + Send + Sync;

/// A running hostile server on 127.0.0.1.
pub struct Hostile {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl Hostile {
    /// Starts a server; `script(n)` answers the n-th connection (from 0).
    pub fn start(script: impl Fn(usize) -> Answer + Send + Sync + 'static) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let script: Arc<Script> = Arc::new(script);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let requests = requests.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for (n, conn) in listener.incoming().enumerate() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let script = script.clone();
                    let requests = requests.clone();
                    let stop = stop.clone();
                    std::thread::spawn(move || serve(conn, n, &*script, &requests, &stop));
                }
            });
        }
        Hostile {
            url: format!("http://{addr}"),
            requests,
            stop,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The request heads received so far (request line and headers).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
    }
}

fn serve(
    mut conn: TcpStream,
    n: usize,
    script: &Script,
    requests: &Mutex<Vec<String>>,
    stop: &AtomicBool,
) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone the socket"));
    let mut head = String::new();
    let mut line = String::new();
    while reader.read_line(&mut line).is_ok_and(|r| r > 0) && line != "\r\n" {
        head.push_str(&line);
        line.clear();
    }
    if stop.load(Ordering::Relaxed) || head.is_empty() {
        return;
    }
    requests.lock().unwrap().push(head);
    match script(n) {
        Answer::Status(code, body) => {
            let _ = write!(
                conn,
                "HTTP/1.1 {code} Scripted\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(&body);
        }
        Answer::Stream(body) => {
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
            );
            if conn.write_all(&body).is_err() {
                return;
            }
            for i in 0..600u64 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let hb = format!(
                    "id: {}-0\nevent: heartbeat\ndata: \"2030-03-17T17:46:40.000Z\"\n\n",
                    1_900_000_000_000u64 + i
                );
                if conn.write_all(hb.as_bytes()).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// One SSE message.
pub fn sse(id: Option<&str>, name: &str, data: &str) -> String {
    match id {
        Some(id) => format!("id: {id}\nevent: {name}\ndata: {data}\n\n"),
        None => format!("event: {name}\ndata: {data}\n\n"),
    }
}

/// The `connected` message announcing a stream from `first` to `last`.
pub fn connected(first: &str, last: &str) -> String {
    sse(
        None,
        "connected",
        &format!(r#"{{"firstEventId":"{first}","lastEventId":"{last}","streamSize":3}}"#),
    )
}

/// A data message of a small object.
pub fn create(id: &str, object: &str) -> String {
    sse(
        Some(id),
        "create",
        &format!(r#"{{"type":"create","data":{{"id":"{object}","type":"indicator"}}}}"#),
    )
}

/// Writes `<dir>/config.yml` reading the stream `s` of `url` with token
/// `t0ken-value-xyz`, no recovery, into `<dir>/out` (state `<dir>/state.json`),
/// a batch a second and reconnects within a second; `extra` adds or replaces
/// keys (`("stream.max_event_bytes", "2048")`).
pub fn hostile_config(dir: &Path, url: &str, extra: &[(&str, &str)]) -> PathBuf {
    let q = |s: &str| serde_json::to_string(s).unwrap();
    let mut keys: Vec<(String, String)> = vec![
        ("opencti.url".into(), q(url)),
        ("opencti.token".into(), q("t0ken-value-xyz")),
        ("connector.live_stream_id".into(), q("s")),
        (
            "connector.live_stream_recover_iso_date".into(),
            "false".into(),
        ),
        ("write.every_sec".into(), "1".into()),
        ("output.kind".into(), "directory".into()),
        (
            "output.directory".into(),
            q(dir.join("out").to_str().unwrap()),
        ),
        (
            "state.path".into(),
            q(dir.join("state.json").to_str().unwrap()),
        ),
        ("stream.reconnect_max_sec".into(), "1".into()),
    ];
    for (k, v) in extra {
        keys.retain(|(known, _)| known != k);
        keys.push((k.to_string(), v.to_string()));
    }
    let mut sections: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in keys {
        let (section, name) = k.split_once('.').unwrap();
        sections
            .entry(section.to_string())
            .or_default()
            .push_str(&format!("  {name}: {v}\n"));
    }
    let yaml: String = sections
        .into_iter()
        .map(|(s, body)| format!("{s}:\n{body}"))
        .collect();
    super::write_config(dir, &yaml)
}
