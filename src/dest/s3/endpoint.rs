//! The S3 server's address: `minio.endpoint` (a host, `host:port`, or either
//! with `http://` / `https://`), `minio.port` and `minio.secure` turned into
//! one scheme, host and port. Pure.

use std::fmt;
use std::net::Ipv6Addr;

use super::strip_prefix_ignore_case;

/// Scheme, host and port of the S3 server; displays as `scheme://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Endpoint {
    pub(super) https: bool,
    /// Host name or IP; an IPv6 address is kept in brackets.
    pub(super) host: String,
    pub(super) port: u16,
}

impl Endpoint {
    /// `endpoint` is `host`, `host:port` or either with `http://` / `https://`
    /// (which overrides `secure`); a trailing `/` is allowed, a path is not.
    /// `port` must agree with a port written in `endpoint`.
    pub(super) fn parse(
        endpoint: &str,
        port: Option<u16>,
        secure: bool,
    ) -> Result<Endpoint, String> {
        let raw = endpoint.trim();
        let bad = |why: &str| format!("invalid S3 endpoint `{endpoint}`: {why}");
        if raw.is_empty() {
            return Err(bad("it is empty"));
        }
        let (https, rest) = if let Some(rest) = strip_prefix_ignore_case(raw, "https://") {
            (true, rest)
        } else if let Some(rest) = strip_prefix_ignore_case(raw, "http://") {
            (false, rest)
        } else if raw.contains("://") {
            return Err(bad("the scheme must be `http://` or `https://`"));
        } else {
            (secure, raw)
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(bad(
                "give only the host and port (the bucket goes in `minio.bucket`)",
            ));
        }

        let (host, written_port) = if let Some(inner) = rest.strip_prefix('[') {
            let (addr, after) = inner
                .split_once(']')
                .ok_or_else(|| bad("`[` without `]`"))?;
            if addr.parse::<Ipv6Addr>().is_err() {
                return Err(bad("not an IPv6 address between `[` and `]`"));
            }
            let written = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad("unexpected text after `]`"))?,
                ),
            };
            (format!("[{addr}]"), written)
        } else if rest.parse::<Ipv6Addr>().is_ok() {
            (format!("[{rest}]"), None)
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host.to_string(), Some(port)),
                None => (rest.to_string(), None),
            }
        };
        if host.is_empty() || host == "[]" {
            return Err(bad("no host"));
        }
        if !host.starts_with('[')
            && !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        {
            return Err(bad(
                "the host may hold only letters, digits, `-`, `.` and `_`",
            ));
        }
        let written_port = match written_port {
            None => None,
            Some(text) => match text.parse::<u16>() {
                Ok(p) if p > 0 => Some(p),
                _ => return Err(bad(&format!("`{text}` is not a port number"))),
            },
        };
        if port == Some(0) {
            return Err(bad("port 0"));
        }
        let port = match (written_port, port) {
            (Some(written), Some(given)) if written != given => {
                return Err(bad(&format!(
                    "it says port {written} but the port setting says {given}"
                )))
            }
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) if https => 443,
            (None, None) => 80,
        };
        Ok(Endpoint { https, host, port })
    }

    /// The base URL given to the `minio` crate, port always written.
    pub(super) fn base_url(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minio::s3::http::BaseUrl;

    #[test]
    fn endpoint_parsing_gives_the_base_url() {
        let cases: &[(&str, Option<u16>, bool, &str)] = &[
            (
                "minio.example.com",
                None,
                true,
                "https://minio.example.com:443",
            ),
            (
                "minio.example.com",
                None,
                false,
                "http://minio.example.com:80",
            ),
            (
                "minio.example.com",
                Some(9000),
                false,
                "http://minio.example.com:9000",
            ),
            (
                "minio.example.com:9000",
                None,
                true,
                "https://minio.example.com:9000",
            ),
            (
                "minio.example.com:9000",
                Some(9000),
                true,
                "https://minio.example.com:9000",
            ),
            ("http://minio:9000", None, true, "http://minio:9000"),
            ("HTTPS://minio", None, false, "https://minio:443"),
            ("https://minio/", Some(8443), false, "https://minio:8443"),
            (
                "  http://127.0.0.1:18333  ",
                None,
                true,
                "http://127.0.0.1:18333",
            ),
            ("::1", Some(9000), false, "http://[::1]:9000"),
            ("[::1]:9000", None, false, "http://[::1]:9000"),
            ("https://[fe80::1]", None, false, "https://[fe80::1]:443"),
            (
                "s3.eu-west-1.amazonaws.com",
                None,
                true,
                "https://s3.eu-west-1.amazonaws.com:443",
            ),
        ];
        for (endpoint, port, secure, want) in cases {
            let got = Endpoint::parse(endpoint, *port, *secure)
                .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
            assert_eq!(got.base_url(), *want, "{endpoint} {port:?} {secure}");
            got.base_url()
                .parse::<BaseUrl>()
                .unwrap_or_else(|e| panic!("minio refuses {want}: {e}"));
        }
    }

    #[test]
    fn endpoint_parsing_refuses_what_is_not_host_and_port() {
        let cases: &[(&str, Option<u16>, &str)] = &[
            ("", None, "empty"),
            ("   ", None, "empty"),
            ("ftp://minio", None, "scheme"),
            ("http://minio/bucket", None, "bucket"),
            ("http://user:pw@minio", None, "host and port"),
            ("minio:port", None, "not a port"),
            ("minio:70000", None, "not a port"),
            ("minio:0", None, "not a port"),
            ("minio", Some(0), "port 0"),
            ("minio:9000", Some(9001), "9000"),
            ("http://", None, "no host"),
            ("[::1", None, "without"),
            ("[zz]:9000", None, "IPv6"),
            ("[::1]x", None, "after"),
            ("min io", None, "letters"),
        ];
        for (endpoint, port, needle) in cases {
            let err = Endpoint::parse(endpoint, *port, false)
                .expect_err(&format!("{endpoint:?} should be refused"));
            assert!(err.contains(needle), "{endpoint:?}: {err}");
            assert!(err.contains(&format!("`{endpoint}`")), "{err}");
        }
    }
}
