//! Command-line definitions (their doc comments are the `--help` text) and
//! their validation into the typed configurations the commands run on.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::graphql;
use crate::id;
use crate::model::{Model, Params};
use crate::plan::{self, Shape};
use crate::server::Config;

/// A local server that speaks the OpenCTI live-stream protocol, deterministic
/// from a seed; for tests, the demo and the benchmark of
/// opencti-stream-exporter (never installed with it).
#[derive(Debug, Parser)]
#[command(name = "opencti-stream-sim", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the stream, its files and a health check on 127.0.0.1.
    Serve(ServeArgs),
    /// Print what a client gets, one JSON object a line (the test oracle).
    Dump(DumpArgs),
}

/// What the history looks like.
#[derive(Debug, Args)]
pub struct GenArgs {
    /// Seed of every random choice: the same seed gives the same bytes.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of data events in the history.
    #[arg(long, default_value_t = 1000)]
    pub events: u64,
    /// Milliseconds since the epoch of the first event id.
    #[arg(long, default_value_t = 1_700_000_000_000)]
    pub base_ms: u64,
    /// Share of objects (so of their create/update events) carrying attached files, 0 to 1.
    #[arg(long, default_value_t = 0.05)]
    pub files_ratio: f64,
    /// Target mean payload size, bytes (payloads range from about 0.5 KB to 20 KB).
    #[arg(long, default_value_t = 1500)]
    pub avg_size: u64,
    /// Share of events that join the previous event's dependency group (same id), 0 to 1.
    #[arg(long, default_value_t = 0.1)]
    pub group_ratio: f64,
    /// Every K-th data event is broken, cycling: invalid JSON, no `data` key,
    /// invalid UTF-8, unknown event name `weird`.
    #[arg(long, value_name = "K")]
    pub malformed_every: Option<u64>,
    /// Events before index K are no longer retained (a trimmed stream): older
    /// start positions silently start at K.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub retention_first: u64,
    /// About one file key in K is served as a large file of `--large-file-bytes`.
    #[arg(long, value_name = "K")]
    pub large_file_every: Option<u64>,
    /// Size of the large files, bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 100 << 20)]
    pub large_file_bytes: u64,
    /// Every file list also carries entries a client must not fetch as is:
    /// uris escaping `/storage/get/` (`..`, `%2e%2e`, `%2f`, backslashes), a
    /// missing file (404) and a redirect to `/evil/redirected`.
    #[arg(long)]
    pub hostile_uris: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub gen: GenArgs,
    /// Port to listen on (0 = any free port; the line printed on start tells which).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Bearer token every request must carry.
    #[arg(long, default_value = "sim-token")]
    pub token: String,
    /// Id of the live stream (`/stream/<id>`); any other id answers 401.
    #[arg(long, default_value = "live-sim")]
    pub stream_id: String,
    /// Heartbeat period, milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub heartbeat_ms: u64,
    /// The stream is stopped: answer 410.
    #[arg(long)]
    pub stopped: bool,
    /// Status the first `--fail-count` stream requests answer (default 500 when
    /// only `--fail-count` is given).
    #[arg(long, value_name = "CODE")]
    pub fail_status: Option<u16>,
    /// How many stream requests answer `--fail-status` before the stream works
    /// (default 1 when only `--fail-status` is given).
    #[arg(long, value_name = "M")]
    pub fail_count: Option<u64>,
    /// Close every connection after K data events (sending half of the next one first).
    #[arg(long, value_name = "K")]
    pub drop_after: Option<u64>,
    /// The first stream sends nothing more after K data events (no heartbeats
    /// either) but keeps the socket open; later streams are normal.
    #[arg(long, value_name = "K")]
    pub stall_after: Option<u64>,
    /// Answer stream requests with 200 and an HTML page instead of a stream.
    #[arg(long)]
    pub html: bool,
    /// Data events a second (0 = as fast as possible); also the live rate.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Produce live events after the history, starting this many milliseconds
    /// after the server starts, at `--rate` (10 a second if 0).
    #[arg(long, value_name = "MS")]
    pub live_after_ms: Option<u64>,
    /// Every K-th file request answers 500.
    #[arg(long, value_name = "K")]
    pub file_fail_every: Option<u64>,
    /// Wait this long before answering each file request.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub file_latency_ms: u64,
    /// Send the stream in HTTP/1.1 chunks, one per message, as OpenCTI does
    /// (its Node server writes each event on its own).
    #[arg(long)]
    pub chunked: bool,
    /// Send files in HTTP/1.1 chunks with no `Content-Length`, as OpenCTI
    /// does (its `/storage/get/` pipes the stored object into the response).
    #[arg(long)]
    pub file_chunked: bool,
    /// Every K-th file request trickles: one byte every `--trickle-ms`.
    #[arg(long, value_name = "K")]
    pub trickle_every: Option<u64>,
    /// Pause between the bytes of a trickled file, milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub trickle_ms: u64,
    /// Append `<method> <path> <token|-> <status>` for every request to this file.
    #[arg(long, value_name = "PATH")]
    pub request_log: Option<std::path::PathBuf>,
    /// Log requests to stderr.
    #[arg(short, long)]
    pub verbose: bool,
    /// A connector the platform already knows (as the reference exporter
    /// left it), for `connector(id)` and `state import`.
    #[arg(long, value_name = "ID")]
    pub connector_id: Option<String>,
    /// The platform's state of `--connector-id`, JSON text.
    #[arg(long, value_name = "JSON", requires = "connector_id")]
    pub connector_state: Option<String>,
    /// The state of `--connector-id` was reset from the UI: the next ping
    /// answers with it instead of storing the state sent.
    #[arg(long, requires = "connector_state")]
    pub connector_state_reset: bool,
    /// Every GraphQL request answers this HTTP status (a platform that refuses).
    #[arg(long, value_name = "CODE")]
    pub graphql_status: Option<u16>,
    /// Every GraphQL request waits this many milliseconds before its answer
    /// (a platform that does not answer).
    #[arg(long, value_name = "MS")]
    pub graphql_delay_ms: Option<u64>,
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    #[command(flatten)]
    pub gen: GenArgs,
    /// Start position, as a client sends it: `0-0`, `<ms>-<seq>` or an ISO-8601 date.
    #[arg(long, default_value = "0-0")]
    pub from: String,
    /// Recovery date (ISO-8601), as the `recover` query parameter.
    #[arg(long, value_name = "DATE")]
    pub recover: Option<String>,
    /// `false` drops delete events, as the `listen-delete` header does.
    #[arg(long, default_value = "true")]
    pub listen_delete: String,
    /// Print `{"key","base64"}` for every file key referenced, instead of events.
    #[arg(long)]
    pub files: bool,
}

fn ratio(name: &str, v: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("`--{name}` must be between 0 and 1, got `{v}`"))
    }
}

fn nonzero(name: &str, v: Option<u64>) -> Result<Option<u64>, String> {
    match v {
        Some(0) => Err(format!("`--{name}` must be at least 1")),
        v => Ok(v),
    }
}

impl GenArgs {
    /// The validated model and stream shape.
    pub fn build(&self) -> Result<(Model, Shape), String> {
        let params = Params {
            seed: self.seed,
            events: self.events,
            base_ms: self.base_ms,
            files_ratio: ratio("files-ratio", self.files_ratio)?,
            avg_size: self.avg_size,
            group_ratio: ratio("group-ratio", self.group_ratio)?,
            large_file_every: nonzero("large-file-every", self.large_file_every)?,
            large_file_bytes: self.large_file_bytes,
            hostile_uris: self.hostile_uris,
        };
        if params.base_ms == 0 {
            return Err("`--base-ms` must be at least 1".to_string());
        }
        let shape = Shape {
            retention_first: self.retention_first,
            malformed_every: nonzero("malformed-every", self.malformed_every)?,
        };
        Ok((Model::new(params), shape))
    }
}

impl ServeArgs {
    /// The validated server configuration.
    pub fn build(&self) -> Result<Config, String> {
        let (model, shape) = self.gen.build()?;
        if self.heartbeat_ms == 0 {
            return Err("`--heartbeat-ms` must be at least 1".to_string());
        }
        let fail = match (self.fail_status, self.fail_count) {
            (None, None) => None,
            (status, count) => {
                let status = status.unwrap_or(500);
                if !(100..=599).contains(&status) || status == 200 {
                    return Err(format!(
                        "`--fail-status` must be an HTTP status other than 200, got `{status}`"
                    ));
                }
                Some((status, count.unwrap_or(1)))
            }
        };
        Ok(Config {
            model,
            shape,
            port: self.port,
            token: self.token.clone(),
            stream_id: self.stream_id.clone(),
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            stopped: self.stopped,
            fail,
            drop_after: self.drop_after,
            stall_after: self.stall_after,
            html: self.html,
            rate: self.rate,
            live_after: self.live_after_ms.map(Duration::from_millis),
            file_fail_every: nonzero("file-fail-every", self.file_fail_every)?,
            file_latency: Duration::from_millis(self.file_latency_ms),
            chunked: self.chunked,
            file_chunked: self.file_chunked,
            trickle: nonzero("trickle-every", self.trickle_every)?
                .map(|k| (k, Duration::from_millis(self.trickle_ms))),
            request_log: self.request_log.clone(),
            verbose: self.verbose,
            connector: self.connector_id.clone().map(|id| graphql::Existing {
                id,
                state: self.connector_state.clone(),
                reset: self.connector_state_reset,
            }),
            graphql_delay: self.graphql_delay_ms.map(Duration::from_millis),
            graphql_status: match self.graphql_status {
                Some(s) if !(100..=599).contains(&s) || s == 200 => {
                    return Err(format!(
                        "`--graphql-status` must be an HTTP status other than 200, got `{s}`"
                    ))
                }
                s => s,
            },
        })
    }
}

impl DumpArgs {
    /// The validated model, shape and request.
    pub fn build(&self) -> Result<(Model, Shape, plan::Request), String> {
        let (model, shape) = self.gen.build()?;
        let start = id::parse_start(&self.from).ok_or_else(|| {
            format!(
                "`--from {}` is not a start position: use `0-0`, `<ms>-<seq>` or an ISO-8601 date",
                self.from
            )
        })?;
        let recover_ms =
            match &self.recover {
                None => None,
                Some(r) => Some(id::parse_date(r).ok_or_else(|| {
                    format!("`--recover {r}` is not a date: use an ISO-8601 date")
                })?),
            };
        Ok((
            model,
            shape,
            plan::Request {
                start: Some(start),
                recover_ms,
                listen_delete: self.listen_delete != "false",
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_are_validated() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).unwrap();
        let Command::Serve(s) = parse(&["sim", "serve", "--fail-count", "3"]).command else {
            panic!()
        };
        assert_eq!(s.build().unwrap().fail, Some((500, 3)));
        let Command::Serve(s) = parse(&["sim", "serve", "--files-ratio", "1.5"]).command else {
            panic!()
        };
        assert!(s.build().unwrap_err().contains("files-ratio"));
        let Command::Dump(d) = parse(&["sim", "dump", "--from", "yesterday"]).command else {
            panic!()
        };
        assert!(d.build().unwrap_err().contains("--from yesterday"));
        let Command::Dump(d) = parse(&["sim", "dump", "--listen-delete", "false"]).command else {
            panic!()
        };
        assert!(!d.build().unwrap().2.listen_delete);
    }
}
