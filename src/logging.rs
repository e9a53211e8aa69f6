//! Logging to stderr with simplelog. The level comes from `-q`/`-v`, else
//! from `connector.log_level` once the config is read.

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
    let _ = TermLogger::init(LevelFilter::Trace, config, TerminalMode::Stderr, color);
    log::set_max_level(level);
}

/// Applies `connector.log_level` unless a flag already chose the level.
pub fn apply_config_level(level: log::LevelFilter) {
    if !FLAGS_SET.load(std::sync::atomic::Ordering::Relaxed) {
        log::set_max_level(level);
    }
}
