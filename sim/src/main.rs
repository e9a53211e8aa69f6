//! `opencti-stream-sim`: parse the command line, run `serve` or `dump`, map
//! the outcome to an exit code (0 ok, 1 I/O failure, 2 bad usage).

mod cli;
mod dump;
mod files;
mod graphql;
mod hash;
mod http;
mod id;
mod iso;
mod jsonw;
mod model;
mod plan;
mod server;

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command};

fn usage(msg: &str) -> ExitCode {
    eprintln!("opencti-stream-sim: error: {msg}");
    ExitCode::from(2)
}

fn failure(what: &str, e: &io::Error) -> ExitCode {
    eprintln!("opencti-stream-sim: error: {what}: {e}");
    ExitCode::from(1)
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve(args) => {
            let cfg = match args.build() {
                Ok(c) => c,
                Err(msg) => return usage(&msg),
            };
            let (listener, addr) = match server::bind(&cfg) {
                Ok(b) => b,
                Err(e) => return failure(&format!("cannot listen on port `{}`", cfg.port), &e),
            };
            let mut out = io::stdout().lock();
            if let Err(e) = writeln!(out, "listening on {addr}").and_then(|()| out.flush()) {
                return failure("cannot write to stdout", &e);
            }
            drop(out);
            server::run(listener, cfg);
            ExitCode::SUCCESS
        }
        Command::Dump(args) => {
            let (model, shape, request) = match args.build() {
                Ok(b) => b,
                Err(msg) => return usage(&msg),
            };
            let plan = match plan::Plan::new(&model, &shape, &request) {
                Ok(p) => p,
                Err(plan::PlanError::RecoverWithoutStart) => {
                    return usage("`--recover` needs a start position")
                }
            };
            let mut out = io::BufWriter::with_capacity(256 * 1024, io::stdout().lock());
            let result = if args.files {
                dump::write_files(&model, &plan, &mut out)
            } else {
                dump::write_events(&model, &shape, &plan, &mut out)
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                // `dump | head` is a normal way to look at the start.
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => failure("cannot write to stdout", &e),
            }
        }
    }
}
