//! The live-stream connection: request, read, reconnect.
//!
//! Sends the headers of PROTOCOL.md §1 (bearer token, `Last-Event-ID`,
//! `listen-delete`, `no-dependencies`, `with-inferences`, and `recover` while
//! a snapshot is in progress), feeds the body to the SSE parser and hands
//! every message to a [`Handler`]. A dropped connection, a server error or
//! `idle_timeout` without a byte leads to a reconnect after a capped,
//! jittered backoff, resuming after the handler's last complete id. 401,
//! 410 and other 4xx answers (but 408 and 429) stop with a [`StreamError`].
//! Knows nothing of batches or storage.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{OpenCti, StreamSettings};
use crate::id::EventId;
use crate::retry::{sleep_unless, Backoff};
use crate::stream::sse::{SseMessage, SseParser};

/// Why reading the stream stopped for good.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    /// 401: bad token, unknown stream or no access.
    #[error("OpenCTI refused the token for `{url}` (HTTP 401): check `opencti.token` and that `connector.live_stream_id` names a stream this user can read")]
    Unauthorized {
        /// The stream URL.
        url: String,
    },
    /// 410: the live stream exists but is stopped.
    #[error("the live stream at `{url}` is stopped (HTTP 410): start it in OpenCTI (Data sharing > Live streams), then run again")]
    Gone {
        /// The stream URL.
        url: String,
    },
    /// The server answers, but not with an event stream.
    #[error("`{url}` answered with `{content_type}` instead of an event stream {attempts} times: check `opencti.url` (a proxy or login page may be in the way)")]
    NotAStream {
        /// The stream URL.
        url: String,
        /// What it answered with.
        content_type: String,
        /// How many times.
        attempts: u32,
    },
    /// The saved cursor is older than what the server retains.
    #[error("the cursor `{cursor}` ({cursor_date}) is older than the first event the server still retains, `{first}` ({first_date}): events in between may have been removed by the server and cannot be exported. Choose one: run again with `--accept-gap` to continue from `{first}` and record the gap in the state; or `opencti-stream-exporter state reset` to start over with a full snapshot (it keeps the file numbering, so the importer goes on); and raise the stream's retention")]
    Gap {
        /// The resume position.
        cursor: String,
        /// Its date.
        cursor_date: String,
        /// The first id the server retains.
        first: String,
        /// Its date.
        first_date: String,
    },
    /// A 4xx other than 401, 408, 410 and 429: the request is wrong, not
    /// the server down (a path after the host in `opencti.url`, a proxy
    /// rule, a stream id the server does not know).
    #[error("`{url}` answered HTTP {code} {body}: a refusal, not an outage; check `opencti.url` (the base URL of OpenCTI, nothing after it), `connector.live_stream_id`, and that the token's user may read this stream")]
    Refused {
        /// The stream URL.
        url: String,
        /// The status.
        code: u16,
        /// The start of the body, cleaned.
        body: String,
    },
    /// The HTTP client could not be set up (TLS files).
    #[error("{0}")]
    Setup(String),
}

/// What the handler wants after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Keep reading.
    Continue,
    /// Stop reading; the run is over.
    Stop,
}

/// Receives what the stream sends, in order.
pub(crate) trait Handler {
    /// One complete SSE message.
    fn on_message(&mut self, msg: SseMessage) -> Flow;
    /// Where to resume after a dropped connection: the last complete id.
    fn resume_after(&self) -> Option<EventId>;
    /// A connection was opened (the server answered with an event stream).
    fn on_connect(&mut self) {}
    /// A connection was lost (for counting); `why` is for the log.
    fn on_disconnect(&mut self, _why: &str) {}
    /// Everything one read returned has been handed over: a moment to pass
    /// buffered work on.
    fn on_read_end(&mut self) -> Flow {
        Flow::Continue
    }
}

/// Where the first connection starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Start {
    /// Resume strictly after this id; `None` means live from now.
    pub(crate) after: Option<EventId>,
    /// Snapshot up to this date (epoch ms) while the cursor is before it.
    pub(crate) recover_until_ms: Option<u64>,
}

/// A blocking live-stream reader.
pub(crate) struct StreamClient {
    agent: ureq::Agent,
    /// The URL requests go to.
    request_url: String,
    /// `request_url` as printed: a password in `opencti.url` masked.
    url: String,
    auth: String,
    settings: StreamSettings,
    shutdown: Arc<AtomicBool>,
}

impl StreamClient {
    /// A client for the configured stream; `shutdown` ends reconnect waits.
    pub(crate) fn new(
        opencti: &OpenCti,
        settings: &StreamSettings,
        shutdown: Arc<AtomicBool>,
    ) -> Result<Self, StreamError> {
        let agent = crate::http::agent(opencti, settings.idle_timeout)
            .map_err(|e| StreamError::Setup(format!("{e:#}")))?;
        let url = format!("{}/stream/{}", opencti.url, settings.live_stream_id);
        Ok(StreamClient {
            agent,
            url: crate::secret::redact_url(&url),
            request_url: url,
            auth: format!("Bearer {}", opencti.token.expose()),
            settings: settings.clone(),
            shutdown,
        })
    }

    /// The stream URL as printed (a password in it masked).
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Opens one connection; the response when the server accepted it.
    pub(crate) fn connect(
        &self,
        after: Option<EventId>,
        recover_until_ms: Option<u64>,
    ) -> Result<ureq::Response, ConnectError> {
        let mut url = self.request_url.clone();
        if let (Some(ms), Some(after)) = (recover_until_ms, after) {
            if after.ms <= ms {
                url.push_str("?recover=");
                url.push_str(&crate::id::ms_to_iso(ms));
            }
        }
        let mut req = self
            .agent
            .get(&url)
            .set("Authorization", &self.auth)
            .set("Accept", "text/event-stream")
            .set("Cache-Control", "no-cache")
            .set(
                "listen-delete",
                if self.settings.listen_delete {
                    "true"
                } else {
                    "false"
                },
            )
            .set(
                "no-dependencies",
                if self.settings.no_dependencies {
                    "true"
                } else {
                    "false"
                },
            )
            .set(
                "with-inferences",
                if self.settings.with_inferences {
                    "true"
                } else {
                    "false"
                },
            );
        if let Some(after) = after {
            req = req.set("Last-Event-ID", &after.to_string());
        }
        match req.call() {
            Ok(resp) => {
                let ct = resp.content_type().to_string();
                if ct.starts_with("text/event-stream") {
                    Ok(resp)
                } else {
                    Err(ConnectError::NotAStream(ct))
                }
            }
            Err(ureq::Error::Status(401, _)) => {
                Err(ConnectError::Fatal(StreamError::Unauthorized {
                    url: self.url.clone(),
                }))
            }
            Err(ureq::Error::Status(410, _)) => Err(ConnectError::Fatal(StreamError::Gone {
                url: self.url.clone(),
            })),
            Err(ureq::Error::Status(code, resp)) => {
                // Some proxies echo the request, token included, and a
                // server may put anything in its body: read a little, and
                // clean it before it reaches any output.
                let mut body = Vec::new();
                let _ = resp.into_reader().take(4096).read_to_end(&mut body);
                let text = crate::secret::clean_external(&String::from_utf8_lossy(&body), 200);
                if (400..500).contains(&code) && code != 408 && code != 429 {
                    return Err(ConnectError::Fatal(StreamError::Refused {
                        url: self.url.clone(),
                        code,
                        body: text,
                    }));
                }
                Err(ConnectError::Retry(format!("HTTP {code} {text}")))
            }
            Err(ureq::Error::Transport(t)) => Err(ConnectError::Retry(
                crate::secret::clean_external(&crate::http::transport_message(&t), 500),
            )),
        }
    }

    /// Reads until the handler says stop, shutdown is requested, or a fatal
    /// error. Reconnects on everything else.
    pub(crate) fn run(&self, start: Start, handler: &mut dyn Handler) -> Result<(), StreamError> {
        let mut backoff = Backoff::new(Duration::from_millis(500), self.settings.reconnect_max);
        let mut wrong_type = 0u32;
        let mut parser = SseParser::new(self.settings.max_event_bytes);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            if self.shutdown.load(Ordering::Relaxed) {
                return Ok(());
            }
            let after = handler.resume_after().or(start.after);
            let why = match self.connect(after, start.recover_until_ms) {
                Ok(resp) => {
                    wrong_type = 0;
                    handler.on_connect();
                    log::info!(
                        "connected to `{}`{}",
                        self.url,
                        after.map(|a| format!(" after `{a}`")).unwrap_or_default()
                    );
                    let mut reader = resp.into_reader();
                    parser.reset();
                    let mut got_message = false;
                    let mut stop = false;
                    let why = loop {
                        match reader.read(&mut buf) {
                            Ok(0) => break "the server closed the connection".to_string(),
                            Ok(n) => {
                                parser.feed(&buf[..n], &mut |msg| {
                                    got_message = true;
                                    if !stop && handler.on_message(msg) == Flow::Stop {
                                        stop = true;
                                    }
                                });
                                if !stop && handler.on_read_end() == Flow::Stop {
                                    stop = true;
                                }
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                                ) =>
                            {
                                break format!(
                                    "no data for {} s",
                                    self.settings.idle_timeout.as_secs()
                                )
                            }
                            Err(e) => break format!("read error: {e}"),
                        }
                        if stop || self.shutdown.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                    };
                    if got_message {
                        backoff.reset();
                    }
                    why
                }
                Err(ConnectError::Fatal(e)) => return Err(e),
                Err(ConnectError::NotAStream(ct)) => {
                    wrong_type += 1;
                    if wrong_type >= 3 {
                        return Err(StreamError::NotAStream {
                            url: self.url.clone(),
                            content_type: ct,
                            attempts: wrong_type,
                        });
                    }
                    format!("answered with `{ct}` instead of an event stream")
                }
                Err(ConnectError::Retry(why)) => why,
            };
            handler.on_disconnect(&why);
            let delay = backoff.next_delay();
            log::warn!(
                "stream `{}`: {why}; reconnecting in {:.1} s after `{}`",
                self.url,
                delay.as_secs_f64(),
                handler
                    .resume_after()
                    .or(start.after)
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "now".into())
            );
            if !sleep_unless(delay, &self.shutdown) {
                return Ok(());
            }
        }
    }
}

/// Why one connection attempt failed.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// Stop for good.
    Fatal(StreamError),
    /// 200 but not `text/event-stream`.
    NotAStream(String),
    /// Worth another try.
    Retry(String),
}

#[cfg(test)]
mod tests {
    //! The client against a loopback server that answers from a script:
    //! the request it sends (headers, resume position, recovery), how it
    //! sorts the answers, and the resume after a dropped connection.

    use super::*;
    use crate::config::Recover;
    use crate::secret::Secret;
    use std::io::Write;
    use std::net::TcpListener;
    use std::sync::mpsc;

    const EVENT_STREAM: &str =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";

    /// Answers one connection per entry of `answers`, in order, then stops;
    /// each request head (lower-cased) comes out of the receiver.
    fn scripted(answers: Vec<String>) -> (String, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for answer in answers {
                let Ok((mut sock, _)) = listener.accept() else {
                    return;
                };
                sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && sock.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let _ = tx.send(String::from_utf8_lossy(&head).to_lowercase());
                let _ = sock.write_all(answer.as_bytes());
            }
        });
        (base, rx)
    }

    fn client(base: &str) -> StreamClient {
        let opencti = OpenCti {
            url: base.to_string(),
            token: Secret::new("tok-123"),
            ssl_verify: true,
            ca_file: None,
            extra_ca_pem: None,
            custom_headers: Vec::new(),
            proxy: None,
        };
        let settings = StreamSettings {
            live_stream_id: "live".into(),
            start: None,
            recover: Recover::Off,
            listen_delete: true,
            no_dependencies: false,
            with_inferences: true,
            idle_timeout: Duration::from_secs(5),
            max_event_bytes: 1 << 20,
            reconnect_max: Duration::from_millis(50),
        };
        StreamClient::new(&opencti, &settings, Arc::new(AtomicBool::new(false))).unwrap()
    }

    fn id(s: &str) -> EventId {
        s.parse().unwrap()
    }

    #[test]
    fn the_request_carries_the_protocol_headers_and_the_resume_position() {
        let (base, heads) = scripted(vec![EVENT_STREAM.into(); 3]);
        let c = client(&base);

        // Resuming inside the snapshot window: `recover` asked, after the cursor.
        c.connect(Some(id("1000-2")), Some(5_000)).unwrap();
        let head = heads.recv().unwrap();
        assert!(
            head.starts_with("get /stream/live?recover=1970-01-01t00:00:05.000z http/1.1"),
            "{head}"
        );
        for line in [
            "authorization: bearer tok-123",
            "accept: text/event-stream",
            "last-event-id: 1000-2",
            "listen-delete: true",
            "no-dependencies: false",
            "with-inferences: true",
        ] {
            assert!(head.contains(&format!("\r\n{line}\r\n")), "{line}: {head}");
        }

        // Past the snapshot window: no `recover`.
        c.connect(Some(id("6000-0")), Some(5_000)).unwrap();
        let head = heads.recv().unwrap();
        assert!(head.starts_with("get /stream/live http/1.1"), "{head}");
        assert!(head.contains("\r\nlast-event-id: 6000-0\r\n"), "{head}");

        // Live from now: no position at all.
        c.connect(None, None).unwrap();
        let head = heads.recv().unwrap();
        assert!(!head.contains("last-event-id"), "{head}");
        assert!(!head.contains("recover="), "{head}");
    }

    #[test]
    fn answers_are_sorted_into_stop_and_try_again() {
        let status = |code: &str| {
            format!("HTTP/1.1 {code}\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope")
        };
        let answers = vec![
            status("401 Unauthorized"),
            status("410 Gone"),
            status("403 Forbidden"),
            status("408 Request Timeout"),
            status("429 Too Many Requests"),
            status("503 Service Unavailable"),
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi".into(),
        ];
        let (base, _heads) = scripted(answers);
        let c = client(&base);
        let mut got = Vec::new();
        for _ in 0..7 {
            got.push(match c.connect(None, None) {
                Err(ConnectError::Fatal(StreamError::Unauthorized { .. })) => "unauthorized".into(),
                Err(ConnectError::Fatal(StreamError::Gone { .. })) => "gone".into(),
                Err(ConnectError::Fatal(StreamError::Refused { code, body, .. })) => {
                    format!("refused {code} {body}")
                }
                Err(ConnectError::Retry(why)) => format!("retry {why}"),
                Err(ConnectError::NotAStream(ct)) => format!("not a stream {ct}"),
                Err(ConnectError::Fatal(e)) => format!("other fatal {e}"),
                Ok(_) => "connected".into(),
            });
        }
        assert_eq!(
            got,
            [
                "unauthorized",
                "gone",
                "refused 403 nope",
                "retry HTTP 408 nope",
                "retry HTTP 429 nope",
                "retry HTTP 503 nope",
                "not a stream text/html",
            ]
        );
    }

    /// Records the messages; stops at `stop_at`.
    struct Recorder {
        seen: Vec<(Option<String>, String)>,
        last: Option<EventId>,
        stop_at: &'static str,
        disconnects: u32,
    }

    impl Handler for Recorder {
        fn on_message(&mut self, msg: SseMessage) -> Flow {
            if let Some(i) = msg.id.as_deref().and_then(|s| s.parse().ok()) {
                self.last = Some(i);
            }
            let stop = msg.id.as_deref() == Some(self.stop_at);
            self.seen.push((msg.id, msg.event));
            if stop {
                Flow::Stop
            } else {
                Flow::Continue
            }
        }
        fn resume_after(&self) -> Option<EventId> {
            self.last
        }
        fn on_disconnect(&mut self, _why: &str) {
            self.disconnects += 1;
        }
    }

    #[test]
    fn a_dropped_connection_resumes_after_the_last_id_received() {
        let answers = vec![
            format!("{EVENT_STREAM}id: 1-0\nevent: create\ndata: {{}}\n\nid: 2-0\nevent: update\ndata: {{}}\n\n"),
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
            format!("{EVENT_STREAM}id: 3-0\nevent: delete\ndata: {{}}\n\n"),
        ];
        let (base, heads) = scripted(answers);
        let c = client(&base);
        let mut h = Recorder {
            seen: Vec::new(),
            last: None,
            stop_at: "3-0",
            disconnects: 0,
        };
        let start = Start {
            after: Some(id("0-0")),
            recover_until_ms: None,
        };
        c.run(start, &mut h).unwrap();
        let events: Vec<&str> = h.seen.iter().map(|(_, e)| e.as_str()).collect();
        assert_eq!(events, ["create", "update", "delete"]);
        assert_eq!(h.disconnects, 2);
        let heads: Vec<String> = heads.try_iter().collect();
        assert_eq!(heads.len(), 3);
        assert!(
            heads[0].contains("\r\nlast-event-id: 0-0\r\n"),
            "{}",
            heads[0]
        );
        assert!(
            heads[1].contains("\r\nlast-event-id: 2-0\r\n"),
            "{}",
            heads[1]
        );
        assert!(
            heads[2].contains("\r\nlast-event-id: 2-0\r\n"),
            "{}",
            heads[2]
        );
    }
}
