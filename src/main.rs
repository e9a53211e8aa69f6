//! Parse, set up logging, dispatch, map the error to an exit status.

use clap::Parser;

use opencti_stream_exporter::{cli::Cli, cmd, exit, logging};

fn main() {
    let cli = Cli::parse();
    logging::init(cli.quiet, cli.verbose);
    let code = match cmd::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            log::error!("{e:#}");
            exit::code_for(&e)
        }
    };
    std::process::exit(code);
}
