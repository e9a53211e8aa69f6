//! Parse the command line, hand it to the library, exit with its status.

use clap::Parser;

fn main() {
    let cli = opencti_stream_exporter::cli::Cli::parse();
    std::process::exit(opencti_stream_exporter::main_with(cli));
}
