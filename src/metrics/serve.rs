//! Serving the metrics: `GET /metrics` over HTTP from one detached thread,
//! and the file for node-exporter's textfile collector. What the text says
//! is [`super::exposition`]'s business.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Metrics;

/// How long a client may take to send its request, and to read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest request head read (bytes); longer ones get 431.
const MAX_HEAD: usize = 8 * 1024;

/// Serves `GET /metrics` (and `GET /`) on `addr` from one detached thread;
/// returns the bound address (port 0 picks a free one).
///
/// Requests are answered one at a time; a client gets 2 s to send its
/// request and 2 s to take the answer, so a slow or silent one delays the
/// next scrape by a few seconds at most, and the pipeline never (only
/// atomics are read).
pub(crate) fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    name: String,
) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen for metrics on `{addr}`: {e}"),
        )
    })?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || accept_loop(listener, metrics, name, IO_TIMEOUT))?;
    Ok(bound)
}

fn accept_loop(listener: TcpListener, metrics: Arc<Metrics>, name: String, timeout: Duration) {
    let mut last_warning: Option<Instant> = None;
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                if let Err(e) = answer(stream, &metrics, &name, timeout) {
                    log::debug!("metrics: request not answered ({e})");
                }
            }
            Err(e) => {
                // E.g. out of file descriptors: say so once a minute, and do
                // not spin.
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    log::warn!("metrics: cannot accept a connection ({e})");
                    last_warning = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Reads one request head (within `timeout` in all) and answers it.
fn answer(
    mut stream: TcpStream,
    metrics: &Metrics,
    name: &str,
    timeout: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    stream.set_write_timeout(Some(timeout))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break true;
        }
        if head.len() > MAX_HEAD {
            break false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "request too slow"));
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break head.contains(&b'\n');
        }
        head.extend_from_slice(&buf[..n]);
    };
    let (status, extra, body, send_body) = if !complete {
        (
            "431 Request Header Fields Too Large",
            "",
            String::new(),
            true,
        )
    } else {
        route(&head, metrics, name)
    };
    let content_type = if status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    if send_body {
        response.push_str(&body);
    }
    stream.write_all(response.as_bytes())?;
    stream.flush()?;
    // Closing with unread input would reset the connection and could lose
    // the answer (a request too long, a body): read what is left, briefly.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut drained = 0;
    while drained < 64 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

/// (status, extra header lines, body, whether to send the body).
fn route(head: &[u8], metrics: &Metrics, name: &str) -> (&'static str, &'static str, String, bool) {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return ("400 Bad Request", "", "bad request\n".into(), true);
    };
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if path != "/metrics" && path != "/" {
        return (
            "404 Not Found",
            "",
            "not found: try /metrics\n".into(),
            true,
        );
    }
    match method {
        "GET" => ("200 OK", "", metrics.render(name), true),
        "HEAD" => ("200 OK", "", metrics.render(name), false),
        _ => (
            "405 Method Not Allowed",
            "Allow: GET, HEAD\r\n",
            "method not allowed\n".into(),
            true,
        ),
    }
}

/// Writes the metrics for node-exporter's textfile collector: a temporary
/// file beside `path` (not ending in `.prom`, so never collected half
/// written), flushed to disk, then renamed over `path`.
pub(crate) fn write_textfile(path: &Path, metrics: &Metrics, name: &str) -> io::Result<()> {
    crate::fsutil::replace(path, metrics.render_run(name).as_bytes(), false).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot write the metrics file `{}`: {e}", path.display()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::{busy, check};
    use super::*;
    use std::fs;

    /// Sends `request` and reads the whole answer (5 s deadline).
    fn ask(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn serve_answers_a_real_get() {
        let m = Arc::new(busy());
        let addr = serve("127.0.0.1:0".parse().unwrap(), m.clone(), "exp".into()).unwrap();
        assert_ne!(addr.port(), 0);

        let answer = ask(
            addr,
            "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n",
        );
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
        check(body).unwrap_or_else(|e| panic!("{e}\n{body}"));
        assert!(body.contains("processed_messages_total{name=\"exp\",action=\"create\"} 2\n"));

        // Figures are read at each request.
        m.inc_processed("create");
        let answer = ask(addr, "GET /?x=1 HTTP/1.0\r\n\r\n");
        assert!(answer.contains("processed_messages_total{name=\"exp\",action=\"create\"} 3\n"));

        let answer = ask(addr, "HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(answer.ends_with("\r\n\r\n"), "no body for HEAD");

        let answer = ask(addr, "GET /nope HTTP/1.1\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
        let answer = ask(addr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(
            answer.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{answer}"
        );
        assert!(answer.contains("\r\nAllow: GET, HEAD\r\n"));
        let answer = ask(addr, "\r\n\r\n");
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        let answer = ask(
            addr,
            &format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000)),
        );
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    }

    #[test]
    fn a_silent_client_does_not_block_the_next_scrape_for_long() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let m = Arc::new(Metrics::new());
        std::thread::spawn(move || {
            accept_loop(listener, m, "x".into(), Duration::from_millis(200))
        });
        let _silent = TcpStream::connect(addr).unwrap();
        let started = Instant::now();
        let answer = ask(addr, "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"));
        // Bounded by the 5 s read deadline of `ask`; a hung server fails there.
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn serve_reports_an_address_in_use() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = serve(addr, Arc::new(Metrics::new()), "x".into()).unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[test]
    fn textfile_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("opencti_stream_exporter.prom");
        let m = busy();
        write_textfile(&path, &m, "exp").unwrap();
        let first = fs::read_to_string(&path).unwrap();
        check(&first).unwrap_or_else(|e| panic!("{e}\n{first}"));
        assert!(first.contains("written_files_total{name=\"exp\"} 4\n"));

        m.record_file(7, 70, Duration::from_millis(20));
        write_textfile(&path, &m, "exp").unwrap();
        let second = fs::read_to_string(&path).unwrap();
        check(&second).unwrap();
        assert!(second.contains("written_files_total{name=\"exp\"} 5\n"));

        // Only the target is left: no temporary file beside it.
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["opencti_stream_exporter.prom"]);

        let missing = dir.path().join("no/such/dir/x.prom");
        let err = write_textfile(&missing, &m, "exp").unwrap_err();
        assert!(err.to_string().contains("no/such/dir/x.prom"), "{err}");
        let names = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(names, 1);
    }
}
