//! The harness every integration test uses: starts SeaweedFS, the stream
//! simulator and the exporter as child processes, inspects what they wrote,
//! and bounds every wait with a deadline.
//!
//! Each server is owned by a value that kills its process on drop, so a
//! failing test cleans up while it unwinds. Nothing here is shared between
//! tests except the port registry, so tests run in parallel.
//!
//! It does not know the exporter's internals: it only speaks to processes,
//! HTTP, S3 and files.

// Each test uses a different part of the harness; the unused rest is not dead.
#![allow(dead_code)]

mod config;
mod export;
mod exporter;
mod hostile;
mod oracle;
mod ports;
mod process;
mod proxy;
mod s3;
mod seaweed;
mod sim;
mod wait;

// Not every test binary module uses every helper.
#[allow(unused_imports)]
pub use self::{
    config::{dir_config, s3_config, with_write_limit, write_config},
    export::{
        assert_importer_sequence, file_number, parse_export_file, read_export_lines_dir,
        read_export_lines_s3,
    },
    exporter::{exporter, exporter_bin, ExporterCmd, Outcome, RunningExporter},
    hostile::{connected, create, hostile_config, sse, Answer, Hostile},
    oracle::{all_lines, assert_no_loss, expected_line, normalise},
    ports::{free_port, free_ports_with_grpc},
    proxy::Proxy,
    s3::S3,
    seaweed::{weed_bin, Seaweed},
    sim::{sim_bin, sim_dump, sim_dump_files, Sim},
    wait::{wait_for, wait_until},
};

use std::path::PathBuf;

/// The root of the repository (the exporter package's directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
