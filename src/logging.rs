//! Logging to stderr, as text or as pycti's JSON lines.
//!
//! The format follows `OPENCTI_JSON_LOGGING` as pycti's connectors do, with
//! one difference: when the variable is not set, a terminal gets text and
//! anything else (a container, systemd, a pipe) gets JSON. `true` forces
//! JSON, `false` forces text, everywhere.
//!
//! A JSON line has pycti's fields, in its order: `timestamp`
//! (`%Y-%m-%dT%H:%M:%S.%fZ`, UTC), `level` (`DEBUG`, `INFO`, `WARNING`,
//! `ERROR`), `name` (`connector.name`), `message`, and `attributes` (here:
//! the module that logged). Trace records are logged as `DEBUG`.
//!
//! Every message, in either format, is scrubbed of the secrets registered
//! with [`crate::secret::register`] (the token, the S3 secret key, passwords
//! in URLs) and kept on one line (control characters escaped), on top of the
//! scrubbing the messages already get where they are made. A line is
//! written with one `write` under the status line's lock, which clears the
//! status line first ([`crate::progress`]).
//!
//! The level comes from `-q`/`-v`, else from `connector.log_level` once the
//! config is read.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use log::{Level, LevelFilter, Log, Metadata, Record};

static FLAGS_SET: AtomicBool = AtomicBool::new(false);
static NAME: RwLock<String> = RwLock::new(String::new());

/// The variable pycti reads to choose JSON logs.
pub const JSON_VAR: &str = "OPENCTI_JSON_LOGGING";

/// The two formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `2024-06-15T10:00:00.123Z INFO  message`.
    Text,
    /// One JSON object a line, with pycti's fields.
    Json,
}

/// The format for the value of `OPENCTI_JSON_LOGGING` (if set) and whether
/// stderr is a terminal. An unreadable value is reported in `Err` with the
/// format used instead.
pub fn choose_format(var: Option<&str>, terminal: bool) -> Result<Format, (Format, String)> {
    let default = if terminal { Format::Text } else { Format::Json };
    let Some(value) = var else {
        return Ok(default);
    };
    match value.trim().to_ascii_lowercase().as_str() {
        "" => Ok(default),
        "true" | "yes" | "1" | "on" => Ok(Format::Json),
        "false" | "no" | "0" | "off" => Ok(Format::Text),
        _ => Err((
            default,
            format!("`{JSON_VAR}={value}` is neither true nor false; logging as {default:?}, the default here"),
        )),
    }
}

struct Logger {
    format: Format,
    color: bool,
}

/// Starts logging; `-q` and `-v` fix the level for the whole run.
pub fn init(quiet: bool, verbose: u8) {
    let level = if quiet {
        LevelFilter::Warn
    } else {
        match verbose {
            0 => LevelFilter::Info,
            1 => LevelFilter::Debug,
            _ => LevelFilter::Trace,
        }
    };
    FLAGS_SET.store(quiet || verbose > 0, Ordering::Relaxed);
    let terminal = std::io::stderr().is_terminal();
    let var = std::env::var(JSON_VAR).ok();
    let (format, complaint) = match choose_format(var.as_deref(), terminal) {
        Ok(f) => (f, None),
        Err((f, why)) => (f, Some(why)),
    };
    let logger = Logger {
        format,
        color: terminal && format == Format::Text && std::env::var_os("NO_COLOR").is_none(),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
    if let Some(why) = complaint {
        log::warn!("{why}");
    }
}

/// Applies `connector.log_level` unless a flag already chose the level.
pub fn apply_config_level(level: LevelFilter) {
    if !FLAGS_SET.load(Ordering::Relaxed) {
        log::set_max_level(level);
    }
}

/// Sets the `name` field of JSON lines (`connector.name`).
pub fn set_name(name: &str) {
    *NAME.write().unwrap_or_else(|e| e.into_inner()) = name.to_string();
}

/// `text` with control characters (newlines included) written as escapes.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Error => "ERROR",
        Level::Warn => "WARNING",
        Level::Info => "INFO",
        Level::Debug | Level::Trace => "DEBUG",
    }
}

/// One JSON line (with its `\n`) in pycti's shape.
pub fn json_line(timestamp: &str, level: Level, name: &str, message: &str, module: &str) -> String {
    let mut doc = serde_json::Map::new();
    doc.insert("timestamp".into(), timestamp.into());
    doc.insert("level".into(), level_name(level).into());
    doc.insert("name".into(), name.into());
    doc.insert("message".into(), message.into());
    doc.insert("attributes".into(), serde_json::json!({ "module": module }));
    let mut line = serde_json::Value::Object(doc).to_string();
    line.push('\n');
    line
}

fn now(micros: bool) -> String {
    let t = time::OffsetDateTime::now_utc();
    let (h, m, s) = (t.hour(), t.minute(), t.second());
    let frac = if micros {
        format!("{:06}", t.microsecond())
    } else {
        format!("{:03}", t.millisecond())
    };
    format!(
        "{:04}-{:02}-{:02}T{h:02}:{m:02}:{s:02}.{frac}Z",
        t.year(),
        u8::from(t.month()),
        t.day()
    )
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.target().starts_with("opencti_stream_exporter")
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        // Scrubbed of every registered secret, and kept on one line: a
        // newline inside a message (a server's text) could forge a log line.
        let message = one_line(&crate::secret::scrub_all(&record.args().to_string()));
        let module = record
            .target()
            .strip_prefix("opencti_stream_exporter::")
            .unwrap_or("main");
        let line = match self.format {
            Format::Json => {
                let name = NAME.read().unwrap_or_else(|e| e.into_inner());
                let name = if name.is_empty() {
                    "StreamExporter"
                } else {
                    name.as_str()
                };
                json_line(&now(true), record.level(), name, &message, module)
            }
            Format::Text => {
                let level = level_name(record.level());
                let level = if self.color {
                    match record.level() {
                        Level::Error => format!("\x1b[31m{level:<7}\x1b[0m"),
                        Level::Warn => format!("\x1b[33m{level:<7}\x1b[0m"),
                        _ => format!("{level:<7}"),
                    }
                } else {
                    format!("{level:<7}")
                };
                format!("{} {level} {message}\n", now(false))
            }
        };
        crate::progress::write_above(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_follows_the_variable_then_the_terminal() {
        assert_eq!(choose_format(None, true), Ok(Format::Text));
        assert_eq!(choose_format(None, false), Ok(Format::Json));
        assert_eq!(choose_format(Some("true"), true), Ok(Format::Json));
        assert_eq!(choose_format(Some("False"), false), Ok(Format::Text));
        assert_eq!(choose_format(Some(""), false), Ok(Format::Json));
        let (f, why) = choose_format(Some("maybe"), false).unwrap_err();
        assert_eq!(f, Format::Json);
        assert!(why.contains("OPENCTI_JSON_LOGGING=maybe"), "{why}");
    }

    #[test]
    fn a_json_line_has_pyctis_fields_in_its_order() {
        let line = json_line(
            "2024-06-15T10:00:00.000001Z",
            Level::Warn,
            "StreamExporter",
            "a \"quoted\"\nmessage",
            "pipeline",
        );
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["timestamp", "level", "name", "message", "attributes"]
        );
        assert_eq!(v["level"], "WARNING");
        assert_eq!(v["message"], "a \"quoted\"\nmessage");
        assert_eq!(v["attributes"]["module"], "pipeline");
        assert_eq!(level_name(Level::Trace), "DEBUG");
    }

    #[test]
    fn timestamps_are_utc_with_microseconds_like_pycti() {
        let t = now(true);
        assert_eq!(t.len(), "2024-06-15T10:00:00.000001Z".len(), "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
    }

    #[test]
    fn a_message_stays_on_one_line() {
        assert_eq!(one_line("a\nb\r\tc"), "a\\nb\\r\tc");
        assert_eq!(one_line("été"), "été");
    }
}
