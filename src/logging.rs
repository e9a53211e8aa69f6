//! Logging to stderr with simplelog. The level comes from `-q`/`-v`, else
//! from `connector.log_level` once the config is read. Every record is
//! scrubbed of the run's secrets and kept on one line (a newline inside a
//! message, e.g. from a server's text, could forge a log line).

use simplelog::{ColorChoice, ConfigBuilder, LevelFilter, TermLogger, TerminalMode};

static FLAGS_SET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

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
    FLAGS_SET.store(quiet || verbose > 0, std::sync::atomic::Ordering::Relaxed);
    let config = ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .add_filter_allow_str("opencti_stream_exporter")
        .build();
    use std::io::IsTerminal;
    let color = if std::io::stderr().is_terminal() {
        ColorChoice::Auto
    } else {
        ColorChoice::Never
    };
    let inner = TermLogger::new(LevelFilter::Trace, config, TerminalMode::Stderr, color);
    let _ = log::set_boxed_logger(Box::new(Scrubbing(inner)));
    log::set_max_level(level);
}

/// Masks secrets and control characters in every record, then hands it on.
struct Scrubbing(Box<TermLogger>);

impl log::Log for Scrubbing {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let text = crate::secret::scrub_all(&record.args().to_string());
        let text: String = text
            .chars()
            .flat_map(|c| {
                let escape = c.is_control() && c != '\t';
                let mut one = if escape {
                    c.escape_default().collect()
                } else {
                    String::new()
                };
                if !escape {
                    one.push(c);
                }
                one.chars().collect::<Vec<_>>()
            })
            .collect();
        self.0
            .log(&record.to_builder().args(format_args!("{text}")).build());
    }

    fn flush(&self) {
        self.0.flush()
    }
}

/// Applies `connector.log_level` unless a flag already chose the level.
pub fn apply_config_level(level: log::LevelFilter) {
    if !FLAGS_SET.load(std::sync::atomic::Ordering::Relaxed) {
        log::set_max_level(level);
    }
}
