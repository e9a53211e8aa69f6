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
mod gather;
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
mod window;

/// Sets up logging, runs the command, and returns the exit status.
pub fn main_with(cli: cli::Cli) -> i32 {
    return_large_buffers_at_once();
    logging::init(cli.quiet, cli.verbose);
    match cmd::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            log::error!("{e:#}");
            exit::code_for(&e)
        }
    }
}

/// Buffers of 1 MiB and more (batch bodies, lines with attached files,
/// fetched contents) get pages of their own, given back to the system when
/// freed. glibc's default raises that threshold to the largest buffer freed
/// so far, after which such buffers come from the threads' heaps, where the
/// holes they leave keep memory long after the buffers are gone.
///
/// And two heaps (arenas) in all, not one per thread up to 8 per core:
/// what one thread allocates another frees (a line made by a worker is
/// freed by the batcher, an event read by the reader by a worker), so every
/// heap keeps free memory of its own. Two keep 2 to 5 MiB less at peak in
/// runs with attached files (the more with large ones), for no CPU
/// measured.
fn return_large_buffers_at_once() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // this program starts any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}
