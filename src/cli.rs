//! Command-line definitions. Their doc comments are the `--help` text and
//! the man pages (`man/`), and the completions (`completions/`) are
//! generated from them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// The exit statuses, shown by `--help` and in the man page.
pub const EXIT_STATUS_HELP: &str = "EXIT STATUS:
  0    success (a run stopped by one SIGINT/SIGTERM after committing is a success)
  1    runtime failure: storage refused, state unusable, a check failed
  2    usage or configuration error
  3    OpenCTI refused the token or the stream (HTTP 401 or 410)
  4    another run holds the state lock (already running)
  5    run --once gave up: OpenCTI or the storage failed for longer than
       run.once_max_outage_sec (300 s by default); cursor and files intact
  130  interrupted by a second signal";

/// Follow an OpenCTI live stream and export it, in ordered batches of
/// newline-delimited JSON, to MinIO/S3 or a local directory, for the
/// `stream-importer` of a second OpenCTI to read.
///
/// Configuration comes from a YAML file (`--config`, else `./config.yml`),
/// the environment variables of the reference stream-exporter (they win over
/// the file), and flags (they win over both). See config.example.yml.
#[derive(Debug, Parser)]
#[command(
    name = "opencti-stream-exporter",
    version,
    propagate_version = true,
    max_term_width = 100,
    after_long_help = EXIT_STATUS_HELP
)]
pub struct Cli {
    /// YAML configuration file [default: ./config.yml when present]
    #[arg(
        short,
        long,
        global = true,
        value_name = "PATH",
        env = "OPENCTI_STREAM_EXPORTER_CONFIG"
    )]
    pub config: Option<PathBuf>,

    /// State file [default: `state.path`, else next to the config file]
    #[arg(long, global = true, value_name = "PATH")]
    pub state: Option<PathBuf>,

    /// Print only warnings and errors
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Print more (-v: debug, -vv: trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// What to do
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Export the live stream: follow it, write batch files, save the cursor
    ///
    /// Without --once or --until it runs until stopped. SIGINT or SIGTERM
    /// stops reading, stores and commits what was received, and exits 0; a
    /// second signal exits 130 at once, keeping only what was committed.
    Run(RunArgs),
    /// Show or reset the saved state (cursor, file count)
    #[command(subcommand)]
    State(StateCommand),
    /// Check the configuration, OpenCTI, the stream and the storage, item by item
    CheckStream(CheckArgs),
}

/// Options of `run`.
#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// Start after this position on a first run: an ISO date with a zone, epoch milliseconds, or `<ms>-<seq>`
    ///
    /// Only valid when there is no saved state (use `state reset` first, or
    /// `--state` for a separate backfill). Turns off recovery: the retained
    /// live events are exported, not a snapshot.
    #[arg(long, value_name = "POSITION")]
    pub from: Option<String>,

    /// Stop once the stream has passed this position (a date, epoch ms, `<ms>-<seq>`, or `now`)
    #[arg(long, value_name = "POSITION")]
    pub until: Option<String>,

    /// Stop once caught up with the stream head announced at connection
    ///
    /// For cron: when OpenCTI or the storage fails for longer than
    /// `run.once_max_outage_sec` (300 s by default) with nothing getting
    /// through, the run gives up with exit status 5; what was committed stays
    /// committed and the next run resumes there. An HTTP 4xx answer other
    /// than 401, 408, 410 and 429 is a configuration error (status 2), not an
    /// outage. Without --once the run keeps retrying for as long as it takes.
    #[arg(long, conflicts_with = "until")]
    pub once: bool,

    /// Continue when the saved cursor is older than what the server retains, recording the gap in the state
    ///
    /// Without it such a run stops: events the server removed cannot be
    /// exported, and an operator must choose between accepting the gap and
    /// starting over with a snapshot (`state reset`).
    #[arg(long)]
    pub accept_gap: bool,

    /// At exit, write the metrics to this file (Prometheus text format, for node-exporter's textfile collector)
    #[arg(long, value_name = "PATH")]
    pub metrics_textfile: Option<PathBuf>,

    /// Write to this directory instead of the configured destination
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,

    /// Worker threads that turn events into lines [default: `connector.consumer_count`]
    #[arg(long, value_name = "N")]
    pub consumer_count: Option<String>,
}

/// `state` subcommands.
#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Print the saved state: cursor, next file number, pending upload, last run
    Show(ShowArgs),
    /// Reset the stream position (the file numbering is kept), optionally to a given cursor
    Reset(ResetArgs),
    /// Take over from the reference Python connector: read its state from OpenCTI and save it as this tool's state
    ///
    /// Reads the reference connector's `connector_state` through OpenCTI's
    /// GraphQL API (`connector(id)`), checks it has the reference's keys,
    /// and writes the state file: the next run resumes after the reference's
    /// `last_written_msg_id` (the last id it stored, not `start_from`, the
    /// last it received) and numbers files from its `file_count` + 1. Stop
    /// the reference first.
    Import(ImportArgs),
}

/// Options of `state show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Print JSON for scripts
    #[arg(long)]
    pub json: bool,
}

/// Options of `state reset`.
#[derive(Debug, Args)]
pub struct ResetArgs {
    /// Do not ask for confirmation
    #[arg(short, long)]
    pub yes: bool,

    /// Resume after this position: an ISO date with a zone, epoch milliseconds, or `<ms>-<seq>`
    #[arg(long, value_name = "POSITION")]
    pub start_from: Option<String>,

    /// Number of the last file the importer has read (the next file is N+1); never lower than what the export stored
    ///
    /// Without it the numbering is kept: a reset changes the stream position
    /// only. A lower number is refused unless `--importer-was-reset`.
    #[arg(long, value_name = "N")]
    pub file_count: Option<u64>,

    /// The importer's own file count was reset too: allow a `--file-count` lower than what the export stored
    ///
    /// Refused while the folder or the done location still holds a file
    /// numbered above it. The export gets a new identity.
    #[arg(long, requires = "file_count")]
    pub importer_was_reset: bool,
}

/// Options of `state import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Read the state from OpenCTI, where the reference connector kept it
    #[arg(long, required = true)]
    pub from_opencti: bool,

    /// Id of the reference connector on OpenCTI [default: `connector.id`]
    #[arg(long, value_name = "ID")]
    pub connector_id: Option<String>,

    /// Replace an existing state file (never with a lower file count)
    #[arg(long)]
    pub replace: bool,
}

/// Options of `check-stream`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print JSON for machines
    #[arg(long)]
    pub json: bool,

    /// Also read back every exported file: metadata, SHA-256, lines, and the number sequence
    #[arg(long)]
    pub verify: bool,
}

/// A section the man pages add after the options: a title and its entries
/// (`term`, `text`); an empty term is a plain paragraph.
#[derive(Debug, Clone)]
pub struct ManSection {
    /// `ENVIRONMENT`, `FILES`, `EXIT STATUS`, `EXAMPLES`.
    pub title: &'static str,
    /// Its entries, in order.
    pub entries: Vec<(String, String)>,
}

fn entries(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(t, x)| (t.to_string(), x.to_string()))
        .collect()
}

/// The extra sections of the man page of `page`: `""` for the main page,
/// else the subcommand path (`run`, `state show`, ...).
pub fn man_sections(page: &str) -> Vec<ManSection> {
    let env = env_entries();
    let files = file_entries();
    let exit = exit_entries();
    let examples = examples(page);
    vec![
        ManSection {
            title: "ENVIRONMENT",
            entries: env,
        },
        ManSection {
            title: "FILES",
            entries: files,
        },
        ManSection {
            title: "EXIT STATUS",
            entries: exit,
        },
        ManSection {
            title: "EXAMPLES",
            entries: entries(examples),
        },
    ]
}

/// The ENVIRONMENT entries: the variables read besides, then one per configuration key.
fn env_entries() -> Vec<(String, String)> {
    let mut env = vec![
        (
            String::new(),
            "Every configuration key can be set by an environment variable, the one the \
             reference Python stream-exporter reads where it has one; the environment wins \
             over the file and flags win over both. See config.example.yml for defaults."
                .to_string(),
        ),
        (
            "OPENCTI_STREAM_EXPORTER_CONFIG".to_string(),
            "The configuration file, like --config.".to_string(),
        ),
        (
            "OPENCTI_JSON_LOGGING".to_string(),
            "true: log JSON lines with pycti's fields (timestamp, level, name, message, \
             attributes); false: log text. Unset: text on a terminal, JSON otherwise."
                .to_string(),
        ),
        (
            "HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY".to_string(),
            "Proxies for outgoing requests. For OpenCTI (the stream, attached files and \
             GraphQL) chosen as pycti's requests does: by the scheme of opencti.url, \
             lower-case names first, http:// proxies only; the S3 side reads them too."
                .to_string(),
        ),
        (
            "NO_COLOR".to_string(),
            "Set: no colour in text logs.".to_string(),
        ),
    ];
    for k in crate::config::KEYS {
        env.push((
            k.env.to_string(),
            format!(
                "Sets `{}`{}.",
                k.path,
                if k.secret {
                    " (a secret: never printed)"
                } else {
                    ""
                }
            ),
        ));
    }
    env
}

/// The FILES entries: the configuration, state, lock and metrics files.
fn file_entries() -> Vec<(String, String)> {
    entries(&[
        (
            "./config.yml",
            "The configuration file read when --config is not given and the file exists.",
        ),
        (
            "<config dir>/opencti-stream-exporter.state.json",
            "The state file (state.path, --state): cursor, file count, pending upload, last \
             run. Written atomically, mode 0600. Keep it on persistent storage: losing it means \
             starting over.",
        ),
        (
            "<state file>.lock",
            "The lock a run holds; it holds the pid of that run. Created by run and state \
             reset only, never by read-only commands.",
        ),
        (
            "metrics.textfile, --metrics-textfile",
            "The metrics written at the end of a run, for node-exporter's textfile collector.",
        ),
    ])
}

/// The EXIT STATUS entries.
fn exit_entries() -> Vec<(String, String)> {
    entries(&[
        (
            "0",
            "Success (a run stopped by one SIGINT/SIGTERM after committing is a success).",
        ),
        (
            "1",
            "Runtime failure: storage refused, state unusable, a check failed.",
        ),
        ("2", "Usage or configuration error."),
        (
            "3",
            "OpenCTI refused the token or the stream (HTTP 401 or 410).",
        ),
        ("4", "Another run holds the state lock (already running)."),
        ("130", "Interrupted by a second signal."),
    ])
}

/// The EXAMPLES of `page`; none for a page without examples.
fn examples(page: &str) -> &'static [(&'static str, &'static str)] {
    match page {
        "" => &[
            ("opencti-stream-exporter check-stream", "Check the configuration, OpenCTI, the stream and the storage."),
            ("opencti-stream-exporter run", "Export until stopped (under systemd or in a container)."),
            ("opencti-stream-exporter run --once --metrics-textfile /var/lib/node_exporter/textfile/opencti-stream-exporter.prom", "Export until caught up, then exit (cron)."),
            ("opencti-stream-exporter state show", "Where the export stands."),
        ],
        "run" => &[
            ("opencti-stream-exporter run", "Follow the stream until SIGINT/SIGTERM."),
            ("opencti-stream-exporter run --once", "Export until caught up with the stream head announced at connection, then exit."),
            ("opencti-stream-exporter --state backfill.json run --from 2024-06-01T00:00:00Z --until 2024-06-02T00:00:00Z", "A one-day backfill with a state of its own."),
            ("OPENCTI_JSON_LOGGING=true opencti-stream-exporter run", "JSON logs on a terminal too."),
        ],
        "state" | "state show" => &[
            ("opencti-stream-exporter state show", "Cursor, next file number, pending upload, last run."),
            ("opencti-stream-exporter state show --json | jq .next_file", "The same for scripts."),
        ],
        "state reset" => &[
            ("opencti-stream-exporter state reset --yes", "Back to a first run (a snapshot, unless recovery is off)."),
            ("opencti-stream-exporter state reset --yes --start-from 1718445600000-0 --file-count 41", "Resume after a given id; the next file is number 42."),
        ],
        "check-stream" => &[
            ("opencti-stream-exporter check-stream", "Every check, one line each."),
            ("opencti-stream-exporter check-stream --verify", "Also read back every exported file as the importer will."),
            ("opencti-stream-exporter check-stream --json", "The same as JSON."),
        ],
        _ => &[],
    }
}
