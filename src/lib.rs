//! opencti-stream-exporter: follow an OpenCTI live stream and export it as
//! ordered NDJSON batch files for the `stream-importer`.
//!
//! The binary (`main.rs`) only parses flags and calls [`main_with`], which
//! dispatches to `cmd`. The pure cores (`stream::sse`, `transform`, `batch`,
//! `dest::naming`, `id`, `text`, `commit::core`) do no I/O; `pipeline`
//! wires them with threads. Only the command line is public: the man pages
//! and completions are generated from it (`tests/generated.rs`).

mod batch;
pub mod cli;
mod clock;
mod cmd;
mod commit;
mod config;
mod dest;
mod exit;
mod fetch;
mod fsutil;
mod http;
mod id;
mod lease;
mod logging;
mod marker;
mod metrics;
mod opencti;
mod pipeline;
mod policy;
mod progress;
mod retry;
mod secret;
mod state;
mod stream;
mod text;
mod transform;

/// Sets up logging, runs the command, and returns the exit status.
pub fn main_with(cli: cli::Cli) -> i32 {
    logging::init(cli.quiet, cli.verbose);
    match cmd::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            log::error!("{e:#}");
            exit::code_for(&e)
        }
    }
}
