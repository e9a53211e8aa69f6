//! The little HTTP/1.1 the simulator needs: read one request head, answer
//! with `Connection: close`. Parsing is pure (bytes in, [`Request`] out);
//! [`read_head`] is the only function that touches a socket.

use std::io::{self, Read, Write};

/// Largest request head accepted, bytes.
const MAX_HEAD: usize = 64 * 1024;

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path as sent (still percent-encoded), without the query.
    pub path: String,
    /// Query parameters, percent-decoded (`+` is kept: dates carry offsets).
    pub query: Vec<(String, String)>,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// First value of a header (name in lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// First value of a query parameter.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The query parameter, else the header, ignoring empty values (the way
    /// OpenCTI chains `req.query[x] || req.headers[x]`).
    pub fn option(&self, name: &str) -> Option<&str> {
        self.query(name)
            .filter(|v| !v.is_empty())
            .or_else(|| self.header(name).filter(|v| !v.is_empty()))
    }

    /// The bearer token of the `Authorization` header.
    pub fn bearer(&self) -> Option<&str> {
        let v = self.header("authorization")?.trim();
        let (scheme, token) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }
}

/// Decodes `%XX` escapes; `None` on a broken escape.
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hi = (hex[0] as char).to_digit(16)?;
            let lo = (hex[1] as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Decodes `%XX` escapes into UTF-8 text; `None` if broken or not UTF-8.
pub fn percent_decode_str(s: &str) -> Option<String> {
    String::from_utf8(percent_decode(s)?).ok()
}

/// Parses a request head (request line and headers, without the blank line).
pub fn parse_head(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let mut first = lines.next()?.split_ascii_whitespace();
    let method = first.next()?.to_string();
    let target = first.next()?;
    first.next()?.strip_prefix("HTTP/")?;
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let query = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                percent_decode_str(k).unwrap_or_else(|| k.to_string()),
                percent_decode_str(v).unwrap_or_else(|| v.to_string()),
            )
        })
        .collect();
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        let (n, v) = line.split_once(':')?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    Some(Request {
        method,
        path: path.to_string(),
        query,
        headers,
    })
}

/// Reads one request head from `r`. `Ok(None)`: the peer closed first or sent
/// something that is not HTTP.
pub fn read_head(r: &mut impl Read) -> io::Result<Option<Request>> {
    Ok(read_head_and_rest(r)?.map(|(req, _)| req))
}

/// As [`read_head`], also returning the bytes read past the head (the
/// start of a body).
pub fn read_head_and_rest(r: &mut impl Read) -> io::Result<Option<(Request, Vec<u8>)>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = r.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        let end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .or_else(|| buf.windows(2).position(|w| w == b"\n\n"));
        if let Some(end) = end {
            let sep = if buf[end..].starts_with(b"\r\n\r\n") {
                4
            } else {
                2
            };
            let rest = buf[end + sep..].to_vec();
            return Ok(parse_head(&buf[..end]).map(|req| (req, rest)));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

/// Writes a complete response with a body and `Connection: close`.
pub fn respond(
    w: &mut impl Write,
    status: u16,
    reason: &str,
    content_type: &str,
    body: &[u8],
) -> io::Result<()> {
    write!(
        w,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    w.write_all(body)?;
    w.flush()
}

/// Largest request body accepted, bytes.
const MAX_BODY: usize = 1024 * 1024;

/// Reads the body announced by `Content-Length`, after the `rest` already
/// read with the head. `Ok(None)`: no or a bad length, or too large.
pub fn read_body(req: &Request, rest: Vec<u8>, r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let Some(len) = req
        .header("content-length")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n <= MAX_BODY)
    else {
        return Ok(None);
    };
    let mut body = rest;
    body.truncate(len);
    let mut chunk = [0u8; 4096];
    while body.len() < len {
        let n = r.read(&mut chunk[..(len - body.len()).min(4096)])?;
        if n == 0 {
            return Ok(None);
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(body))
}

/// The usual reason phrase of a status code.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        410 => "Gone",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_handles_utf8_spaces_and_slashes() {
        let cases: &[(&str, Option<&str>)] = &[
            ("plain/path.pdf", Some("plain/path.pdf")),
            ("rapport%20%C3%A9t%C3%A9-3.pdf", Some("rapport été-3.pdf")),
            ("a%2Fb", Some("a/b")),
            ("a+b", Some("a+b")),
            ("%e2%82%ac", Some("€")),
            ("raw été", Some("raw été")),
            ("bad%2", None),
            ("bad%zz", None),
            ("%ff", None),
        ];
        for (s, want) in cases {
            assert_eq!(percent_decode_str(s).as_deref(), *want, "{s}");
        }
        assert_eq!(percent_decode("%ff"), Some(vec![0xff]));
    }

    #[test]
    fn parses_a_request_head() {
        let head = b"GET /stream/live-sim?recover=2024-06-15T10%3A15%3A00.000Z&from=0-0&x HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer  tok \r\nLast-Event-ID: 5-1\r\nlisten-delete: false\r\n";
        let r = parse_head(head).unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/stream/live-sim");
        assert_eq!(r.query("recover"), Some("2024-06-15T10:15:00.000Z"));
        assert_eq!(r.query("from"), Some("0-0"));
        assert_eq!(r.query("x"), Some(""));
        assert_eq!(r.header("last-event-id"), Some("5-1"));
        assert_eq!(r.bearer(), Some("tok"));
        assert_eq!(r.option("listen-delete"), Some("false"));
        assert_eq!(r.option("x"), None);
        assert!(parse_head(b"garbage").is_none());
        assert!(parse_head(b"GET / HTTP/1.1\r\nno colon\r\n").is_none());
    }

    #[test]
    fn reads_a_head_split_over_reads() {
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(3).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let raw = b"GET /_sim/health HTTP/1.1\r\nA: b\r\n\r\n";
        let r = read_head(&mut Trickle(raw)).unwrap().unwrap();
        assert_eq!(r.path, "/_sim/health");
        assert!(read_head(&mut Trickle(b"GET / HTTP/1.1\r\n"))
            .unwrap()
            .is_none());
    }
}
