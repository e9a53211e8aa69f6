//! A string that must never be printed: tokens, secret keys, passwords in
//! URLs.
//!
//! `Debug` and `Display` print `***`; the value is only reachable through
//! [`Secret::expose`], which keeps every use greppable. Text that comes from
//! outside (error bodies, library messages) goes through [`clean_external`]
//! before any output, and every log line and printed report through
//! [`scrub_all`], which masks every secret [`register`]ed at start-up.

use std::fmt;
use std::sync::RwLock;

/// Secrets of this run, masked in every log line and report.
static REGISTERED: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// A secret value (API token, S3 secret key). Prints as `***`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The raw value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no value was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Replaces every occurrence of the secret in `text` by `***`, for
    /// messages that come from libraries and might echo a request.
    pub fn scrub(&self, text: &str) -> String {
        if self.0.len() < 4 {
            return text.to_string();
        }
        text.replace(&self.0, "***")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Adds `value` to the secrets [`scrub_all`] masks. Values shorter than 4
/// characters are not masked in free text (too many false hits); they are
/// still masked where they are known to be, e.g. in URLs ([`redact_url`]).
pub fn register(value: &str) {
    if value.chars().count() < 4 {
        return;
    }
    let mut all = REGISTERED.write().unwrap_or_else(|e| e.into_inner());
    if !all.iter().any(|v| v == value) {
        all.push(value.to_string());
        // Longest first, so that a secret containing another is masked whole.
        all.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }
}

/// `text` with every registered secret replaced by `***`, and the password
/// of every URL in it masked.
pub fn scrub_all(text: &str) -> String {
    let mut out = redact_urls(text);
    let all = REGISTERED.read().unwrap_or_else(|e| e.into_inner());
    for secret in all.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "***");
        }
    }
    out
}

/// The password of a URL's `user:password@`, when there is one
/// (percent-decoded as a server would read it is not needed: the raw text is
/// what could be printed).
pub fn url_password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

/// `url` with the password of its `user:password@` part replaced by `***`.
pub fn redact_url(url: &str) -> String {
    redact_urls(url)
}

/// Every `scheme://user:password@` in `text` with the password masked.
fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace() || c == '`')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":***@");
                    out.push_str(host);
                }
                None => out.push_str(authority),
            },
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Text a server sent back (an error body, a frame it called an error),
/// made safe to show: at most `max_chars` characters, control characters
/// (newlines included, which would let a server forge log lines) shown as
/// escapes, credentials after `Bearer`/`Basic` masked, and every registered
/// secret masked.
pub fn clean_external(text: &str, max_chars: usize) -> String {
    let mut cut: String = text.trim().chars().take(max_chars).collect();
    if text.trim().chars().count() > max_chars {
        cut.push('…');
    }
    let mut flat = String::with_capacity(cut.len());
    for c in cut.chars() {
        if c.is_control() {
            flat.extend(c.escape_default());
        } else {
            flat.push(c);
        }
    }
    scrub_all(&mask_credentials(&flat))
}

/// `Bearer <x>` and `Basic <x>` (any case) with `<x>` masked: what an echoed
/// `Authorization` header carries, whatever the token.
fn mask_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let lower = rest.to_ascii_lowercase();
        let found = ["bearer ", "basic "]
            .iter()
            .filter_map(|w| lower.find(w).map(|p| (p, w.len())))
            .min();
        let Some((pos, len)) = found else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..pos + len]);
        let after = &rest[pos + len..];
        let token_len = after
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == ',' || c == '\\')
            .unwrap_or(after.len());
        if token_len > 0 {
            out.push_str("***");
        }
        rest = &after[token_len..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_passwords_are_found_and_masked() {
        assert_eq!(url_password("http://user:pa:ss@host:4000/x"), Some("pa:ss"));
        assert_eq!(url_password("https://host/a@b"), None);
        assert_eq!(url_password("https://user@host"), None);
        assert_eq!(
            redact_url("http://user:s3cr3t@host:4000/stream/x"),
            "http://user:***@host:4000/stream/x"
        );
        assert_eq!(
            scrub_all("cannot reach `https://u:pw@h/a` nor http://v:x@g: down"),
            "cannot reach `https://u:***@h/a` nor http://v:***@g: down"
        );
        assert_eq!(
            redact_url("https://opencti.example.org"),
            "https://opencti.example.org"
        );
    }

    #[test]
    fn external_text_is_cut_flattened_and_scrubbed() {
        register("registered-token-123");
        let body = "GET /stream/s HTTP/1.1\r\nAuthorization: Bearer registered-token-123\r\n\
                    X-Other: basic QWxhZGRpbjpvcGVu\n[ERROR] forged line\x1b[31m";
        let clean = clean_external(body, 500);
        assert!(!clean.contains("registered-token-123"), "{clean}");
        assert!(!clean.contains("QWxhZGRpbjpvcGVu"), "{clean}");
        assert!(!clean.contains('\n') && !clean.contains('\r') && !clean.contains('\x1b'));
        assert!(clean.contains("Bearer ***"), "{clean}");
        assert!(clean.contains("\\n[ERROR] forged line"), "{clean}");
        let long = "x".repeat(1000);
        assert_eq!(clean_external(&long, 200).chars().count(), 201);
        // An unregistered token right after `Bearer` is masked too.
        assert_eq!(clean_external("bearer abc.def", 100), "bearer ***");
        assert_eq!(scrub_all("a registered-token-123 b"), "a *** b");
    }
}
