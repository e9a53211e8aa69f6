//! opencti-stream-exporter: follow an OpenCTI live stream and export it as
//! ordered NDJSON batch files for the `stream-importer`.
//!
//! The binary (`main.rs`) only parses flags and dispatches to [`cmd`]. The
//! pure cores ([`stream::sse`], [`transform`], [`batch`], [`dest::naming`],
//! [`id`], [`text`]) do no I/O; [`pipeline`] wires them with threads.

pub mod batch;
pub mod cli;
pub mod clock;
pub mod cmd;
pub mod commit;
pub mod config;
pub mod dest;
pub mod exit;
pub mod fetch;
pub mod fsutil;
pub mod http;
pub mod id;
pub mod lease;
pub mod logging;
pub mod marker;
pub mod metrics;
pub mod opencti;
pub mod pipeline;
pub mod policy;
pub mod progress;
pub mod retry;
pub mod secret;
pub mod state;
pub mod stream;
pub mod text;
pub mod transform;
