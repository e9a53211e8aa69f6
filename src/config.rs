//! Configuration: YAML file + environment + command-line flags → one
//! validated, typed [`Config`].
//!
//! Every key of the reference `stream-exporter` keeps its name, its
//! environment variable and its meaning (PROTOCOL.md §7); our own keys follow
//! the same `section.key` / `SECTION_KEY` style. The environment wins over
//! the file and flags win over both. Values are checked once here; a bad one
//! is a [`ConfigError`] naming the key, where it came from, the value (a
//! secret is masked) and the fix. Nothing downstream re-validates. `Debug`
//! never shows a secret.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::id::{self, EventId};
use crate::policy::{Policy, PolicySettings, UnknownMarking};
use crate::secret::Secret;

/// A configuration value that cannot be used, with the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConfigError {
    /// The key, e.g. `minio.port`.
    pub(crate) key: String,
    /// Where the value came from (`MINIO_PORT`, `config.yml`, `--from`), or
    /// where to set a missing one.
    pub(crate) origin: String,
    /// What is wrong and what to do.
    pub(crate) message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "config `{}` ({}): {}",
            self.key, self.origin, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

/// Where a key's value came from.
#[derive(Debug, Clone)]
struct Raw {
    value: String,
    origin: String,
}

/// One key of the configuration: YAML path and environment variable.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Key {
    /// `section.key` as written in the YAML file.
    pub(crate) path: &'static str,
    /// The environment variable that overrides it.
    pub(crate) env: &'static str,
    /// True for a token or a secret key: its value is never printed.
    pub(crate) secret: bool,
    /// True when the YAML value may be a list (a sequence); every other key
    /// takes a single value.
    pub(crate) list: bool,
}

const fn key(path: &'static str, env: &'static str) -> Key {
    Key {
        path,
        env,
        secret: false,
        list: false,
    }
}

const fn secret_key(path: &'static str, env: &'static str) -> Key {
    Key {
        secret: true,
        ..key(path, env)
    }
}

const fn list_key(path: &'static str, env: &'static str) -> Key {
    Key {
        list: true,
        ..key(path, env)
    }
}

/// Keys of the reference connector's sample configuration (and of pycti's
/// connector settings) that this exporter accepts in a file and ignores, so
/// that a config copied from the reference still loads.
pub(crate) const IGNORED_KEYS: &[&str] = &[
    "connector.auto",
    "connector.run_and_terminate",
    "connector.duration_period",
    "connector.queue_threshold",
    "opencti.json_logging",
];

/// Every key we read, in documentation order (`config.example.yml`).
pub(crate) const KEYS: &[Key] = &[
    key("opencti.url", "OPENCTI_URL"),
    secret_key("opencti.token", "OPENCTI_TOKEN"),
    key("opencti.ssl_verify", "OPENCTI_SSL_VERIFY"),
    key("opencti.ca_file", "OPENCTI_CA_FILE"),
    secret_key("opencti.custom_headers", "OPENCTI_CUSTOM_HEADERS"),
    key("opencti.https_ca_certificates", "HTTPS_CA_CERTIFICATES"),
    key("connector.id", "CONNECTOR_ID"),
    key("connector.name", "CONNECTOR_NAME"),
    key("connector.scope", "CONNECTOR_SCOPE"),
    key("connector.type", "CONNECTOR_TYPE"),
    key(
        "connector.auto_create_service_account",
        "CONNECTOR_AUTO_CREATE_SERVICE_ACCOUNT",
    ),
    key("connector.confidence_level", "CONNECTOR_CONFIDENCE_LEVEL"),
    key("connector.log_level", "CONNECTOR_LOG_LEVEL"),
    key("connector.consumer_count", "CONNECTOR_CONSUMER_COUNT"),
    key("connector.live_stream_id", "CONNECTOR_LIVE_STREAM_ID"),
    key(
        "connector.live_stream_start_timestamp",
        "CONNECTOR_LIVE_STREAM_START_TIMESTAMP",
    ),
    key(
        "connector.live_stream_recover_iso_date",
        "CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE",
    ),
    key(
        "connector.live_stream_listen_delete",
        "CONNECTOR_LIVE_STREAM_LISTEN_DELETE",
    ),
    key(
        "connector.live_stream_no_dependencies",
        "CONNECTOR_LIVE_STREAM_NO_DEPENDENCIES",
    ),
    key(
        "connector.live_stream_with_inferences",
        "CONNECTOR_LIVE_STREAM_WITH_INFERENCES",
    ),
    key("minio.endpoint", "MINIO_ENDPOINT"),
    key("minio.port", "MINIO_PORT"),
    key("minio.bucket", "MINIO_BUCKET"),
    key("minio.folder", "MINIO_FOLDER"),
    key("minio.access_key", "MINIO_ACCESS_KEY"),
    secret_key("minio.secret_key", "MINIO_SECRET_KEY"),
    key("minio.secure", "MINIO_SECURE"),
    key("minio.cert_check", "MINIO_CERT_CHECK"),
    key("minio.ca_file", "MINIO_CA_FILE"),
    key("minio.region", "MINIO_REGION"),
    key("minio.bucket_done", "MINIO_BUCKET_DONE"),
    key("minio.timeout_sec", "MINIO_TIMEOUT_SEC"),
    key("write.every_sec", "WRITE_EVERY_SEC"),
    key("write.max_events", "WRITE_MAX_EVENTS"),
    key("write.max_bytes", "WRITE_MAX_BYTES"),
    key("queue.size", "QUEUE_SIZE"),
    key("output.kind", "OUTPUT_KIND"),
    key("output.directory", "OUTPUT_DIRECTORY"),
    key("output.max_line_bytes", "OUTPUT_MAX_LINE_BYTES"),
    key("state.path", "STATE_PATH"),
    key("stream.idle_timeout_sec", "STREAM_IDLE_TIMEOUT_SEC"),
    key("stream.max_event_bytes", "STREAM_MAX_EVENT_BYTES"),
    key("stream.reconnect_max_sec", "STREAM_RECONNECT_MAX_SEC"),
    key("files.fetch", "FILES_FETCH"),
    key("files.retries", "FILES_RETRIES"),
    key("files.concurrency", "FILES_CONCURRENCY"),
    key("files.max_bytes", "FILES_MAX_BYTES"),
    key("files.deadline_sec", "FILES_DEADLINE_SEC"),
    key("files.buffer_bytes", "FILES_BUFFER_BYTES"),
    key("dead_letter.bucket", "DEAD_LETTER_BUCKET"),
    key("dead_letter.directory", "DEAD_LETTER_DIRECTORY"),
    key("connector.expose_metrics", "CONNECTOR_EXPOSE_METRICS"),
    key("connector.metrics_port", "CONNECTOR_METRICS_PORT"),
    key("metrics.textfile", "METRICS_TEXTFILE"),
    key("metrics.log_every_sec", "METRICS_LOG_EVERY_SEC"),
    key("run.once_max_outage_sec", "RUN_ONCE_MAX_OUTAGE_SEC"),
    list_key("policy.allow_types", "POLICY_ALLOW_TYPES"),
    list_key("policy.deny_types", "POLICY_DENY_TYPES"),
    list_key("policy.require_labels", "POLICY_REQUIRE_LABELS"),
    list_key("policy.forbid_labels", "POLICY_FORBID_LABELS"),
    key("policy.tlp_ceiling", "POLICY_TLP_CEILING"),
    key("policy.unknown_marking", "POLICY_UNKNOWN_MARKING"),
];

/// Where the stream starts when there is no saved state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Recover {
    /// Snapshot of every object up to the moment the run starts, then live.
    UntilNow,
    /// Snapshot of every object up to this date (epoch ms), then live.
    Until(u64),
    /// No snapshot: replay the retained live events only.
    Off,
}

impl Recover {
    /// The end of the snapshot a new state records, as `recover_until`:
    /// `None` without a snapshot; `UntilNow` ends at `now_ms`, the time the
    /// state is made.
    pub(crate) fn until_ms(&self, now_ms: u64) -> Option<u64> {
        match self {
            Recover::Off => None,
            Recover::UntilNow => Some(now_ms),
            Recover::Until(ms) => Some(*ms),
        }
    }
}

/// The OpenCTI side.
#[derive(Debug, Clone)]
pub(crate) struct OpenCti {
    /// Base URL without a trailing `/`.
    pub(crate) url: String,
    /// API token, sent as `Authorization: Bearer`.
    pub(crate) token: Secret,
    /// Verify the server's TLS certificate.
    pub(crate) ssl_verify: bool,
    /// Extra trusted CA certificates (PEM).
    pub(crate) ca_file: Option<PathBuf>,
    /// More trusted CA certificates (`HTTPS_CA_CERTIFICATES`), as PEM text:
    /// given inline, or read from the path given.
    pub(crate) extra_ca_pem: Option<ExtraCa>,
    /// Headers added to every OpenCTI request (`OPENCTI_CUSTOM_HEADERS`,
    /// pycti's `name1:value1;name2:value2`); values may be secrets.
    pub(crate) custom_headers: Vec<(String, Secret)>,
    /// The proxy for `url`, from the environment as Python's requests reads
    /// it (`HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` by scheme, lower case
    /// first, `NO_PROXY`); may carry a password.
    pub(crate) proxy: Option<Secret>,
}

/// CA certificates given by `HTTPS_CA_CERTIFICATES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExtraCa {
    /// PEM text given in the variable itself.
    Inline(String),
    /// A PEM file.
    File(PathBuf),
}

/// How this exporter shows itself on the platform's connectors page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConnectorSettings {
    /// `connector.id`: the connector's id on the platform (a UUID).
    pub(crate) id: String,
    /// `connector.name`.
    pub(crate) name: String,
    /// `connector.scope`, split on commas as pycti does.
    pub(crate) scope: Vec<String>,
}

/// The live stream and how to read it.
#[derive(Debug, Clone)]
pub(crate) struct StreamSettings {
    /// The live stream id (`connector.live_stream_id`).
    pub(crate) live_stream_id: String,
    /// Start position for a first run (`connector.live_stream_start_timestamp`).
    pub(crate) start: Option<EventId>,
    /// Recovery for a first run.
    pub(crate) recover: Recover,
    /// `listen-delete` header.
    pub(crate) listen_delete: bool,
    /// `no-dependencies` header.
    pub(crate) no_dependencies: bool,
    /// `with-inferences` header.
    pub(crate) with_inferences: bool,
    /// Reconnect when no byte arrived for this long.
    pub(crate) idle_timeout: Duration,
    /// Largest event kept whole, in bytes; larger ones become dead letters.
    pub(crate) max_event_bytes: usize,
    /// Longest wait between two reconnection attempts.
    pub(crate) reconnect_max: Duration,
}

/// When a batch file is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchLimits {
    /// Cut when the oldest buffered event is this old.
    pub(crate) max_age: Duration,
    /// Cut at this many events.
    pub(crate) max_events: usize,
    /// Cut before the body would exceed this many bytes (a single larger
    /// event still gets a file of its own).
    pub(crate) max_bytes: usize,
}

/// How to reach one bucket of an S3 server (given to `dest::s3`). `Debug` shows `***` for the secret key.
#[derive(Clone, Debug)]
pub(crate) struct S3Settings {
    /// Host name or IP, optionally with a scheme (`http://` / `https://`),
    /// which then overrides `secure`, and optionally with `:port`.
    pub(crate) endpoint: String,
    /// TCP port; `None` = the port in `endpoint`, else 443 (https) or 80 (http).
    pub(crate) port: Option<u16>,
    /// Use https when `endpoint` has no scheme.
    pub(crate) secure: bool,
    /// `false` accepts any server certificate (an explicit, insecure opt-out).
    pub(crate) cert_check: bool,
    /// Extra trusted CA certificates (PEM), beside the bundled Mozilla roots.
    pub(crate) ca_file: Option<PathBuf>,
    /// Signing region; `None` = `us-east-1`.
    pub(crate) region: Option<String>,
    /// Bucket that receives the objects; created by `prepare` when missing.
    pub(crate) bucket: String,
    /// Access key id.
    pub(crate) access_key: String,
    /// Secret key; never printed.
    pub(crate) secret_key: Secret,
    /// Limit on each S3 call (each page of a listing is one call).
    pub(crate) timeout: Duration,
}

/// Where files go.
#[derive(Debug, Clone)]
pub(crate) enum Output {
    /// S3 / MinIO.
    S3 {
        /// Connection settings and bucket.
        settings: S3Settings,
        /// The importer's `MINIO_BUCKET_DONE`, checked when settling a pending file.
        bucket_done: Option<String>,
        /// Bucket for dead letters.
        dead_letter_bucket: String,
    },
    /// A local directory with the same key layout.
    Directory {
        /// Root directory; keys are paths below it.
        root: PathBuf,
        /// Directory for dead letters.
        dead_letter_root: PathBuf,
    },
}

/// The default `output.max_line_bytes`: 12 MiB less 1 KiB. The importer
/// publishes each line to RabbitMQ base64-encoded (4/3 of the line plus
/// about 150 bytes), and RabbitMQ 4 refuses messages over 16 MiB by
/// default: a line of 12 MiB exactly would make a message 150 bytes too
/// long, the 1 KiB leaves room for the importer's envelope.
pub(crate) const DEFAULT_MAX_LINE_BYTES: usize = (12 << 20) - 1024;

/// What the fetch stage of attached files is allowed to do (`files.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileSettings {
    /// Requests in flight at most (threads of the pool).
    pub(crate) concurrency: usize,
    /// Largest file, in bytes as served, that is exported with its content.
    pub(crate) max_bytes: u64,
    /// Longest time for one file, from the first request to the last byte,
    /// retries included.
    pub(crate) deadline: Duration,
    /// Attempts per file for retryable failures.
    pub(crate) retries: u32,
    /// Content (base64) held by fetches not yet taken by a worker, in bytes.
    pub(crate) buffer_bytes: usize,
}

impl Default for FileSettings {
    fn default() -> Self {
        FileSettings {
            concurrency: 64,
            max_bytes: 4 << 20,
            deadline: Duration::from_secs(120),
            retries: 3,
            buffer_bytes: 8 << 20,
        }
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The config file read, if any.
    pub(crate) file: Option<PathBuf>,
    opencti: Result<OpenCti, ConfigError>,
    stream: Result<StreamSettings, ConfigError>,
    /// `connector.name`, used in logs and metrics.
    pub(crate) connector_name: String,
    /// Registration on the platform's connectors page, when `connector.id` is set.
    pub(crate) connector: Option<ConnectorSettings>,
    /// Log level from `connector.log_level`.
    pub(crate) log_level: log::LevelFilter,
    /// Worker threads that turn events into lines.
    pub(crate) consumer_count: usize,
    /// Events in flight between the reader and the batcher.
    pub(crate) queue_size: usize,
    /// Batch cutting rules.
    pub(crate) batch: BatchLimits,
    /// Object key prefix (`minio.folder`), without slashes at the ends.
    pub(crate) folder: String,
    output: Result<Output, ConfigError>,
    /// The state file.
    pub(crate) state_path: PathBuf,
    /// Fetch attached files from OpenCTI.
    pub(crate) fetch_files: bool,
    /// How attached files are fetched: concurrency, size cap, deadline,
    /// attempts, memory for files fetched ahead.
    pub(crate) files: FileSettings,
    /// Longest output line, in bytes (`output.max_line_bytes`): what the
    /// importer can publish to its broker.
    pub(crate) max_line_bytes: usize,
    /// What may leave: types, labels, TLP ceiling.
    pub(crate) policy: std::sync::Arc<Policy>,
    /// Serve Prometheus metrics on this port (`connector.expose_metrics`).
    pub(crate) metrics_port: Option<u16>,
    /// Write the metrics here at exit, for node-exporter's textfile collector.
    pub(crate) metrics_textfile: Option<PathBuf>,
    /// How often a progress line is logged when not on a terminal.
    pub(crate) log_every: Duration,
    /// Under `run --once`, how long OpenCTI or the storage may fail with
    /// nothing getting through before the run gives up.
    pub(crate) once_max_outage: Duration,
}

impl Config {
    /// The OpenCTI settings, or why they are missing.
    pub(crate) fn opencti(&self) -> Result<&OpenCti, ConfigError> {
        self.opencti.as_ref().map_err(Clone::clone)
    }

    /// The stream settings, or why they are missing.
    pub(crate) fn stream(&self) -> Result<&StreamSettings, ConfigError> {
        self.stream.as_ref().map_err(Clone::clone)
    }

    /// The destination, or why it cannot be used.
    pub(crate) fn output(&self) -> Result<&Output, ConfigError> {
        self.output.as_ref().map_err(Clone::clone)
    }

    /// Fails with the first problem among the settings a run needs.
    pub(crate) fn check_for_run(&self) -> Result<(), ConfigError> {
        self.opencti()?;
        self.stream()?;
        self.output()?;
        Ok(())
    }
}

/// Values given on the command line, which win over the file and the environment.
#[derive(Debug, Default, Clone)]
pub(crate) struct Overrides {
    /// `--state`.
    pub(crate) state_path: Option<PathBuf>,
    /// `--output-dir`: forces the directory destination.
    pub(crate) output_dir: Option<PathBuf>,
    /// `--consumer-count`.
    pub(crate) consumer_count: Option<String>,
    /// `--metrics-textfile`.
    pub(crate) metrics_textfile: Option<PathBuf>,
}

/// Which config file to read: `--config`, else `./config.yml` when present.
pub(crate) fn find_file(flag: Option<&Path>) -> Result<Option<PathBuf>, ConfigError> {
    match flag {
        Some(p) if p.is_file() => Ok(Some(p.to_path_buf())),
        Some(p) => Err(ConfigError {
            key: "--config".into(),
            origin: "command line".into(),
            message: format!(
                "no file at `{}`: give the path of a YAML config file",
                p.display()
            ),
        }),
        None => {
            let p = PathBuf::from("config.yml");
            Ok(p.is_file().then_some(p))
        }
    }
}

/// Reads and validates the configuration from a file, the process
/// environment and command-line overrides.
pub(crate) fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
    let env: HashMap<String, String> = std::env::vars().collect();
    load_from(file, &env, overrides)
}

/// As [`load`], with the environment given (for tests).
pub(crate) fn load_from(
    file: Option<&Path>,
    env: &HashMap<String, String>,
    overrides: &Overrides,
) -> Result<Config, ConfigError> {
    let yaml = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                key: "--config".into(),
                origin: path.display().to_string(),
                message: format!("cannot read the file ({e})"),
            })?;
            let value: serde_yaml::Value =
                serde_yaml::from_str(&text).map_err(|e| ConfigError {
                    key: "--config".into(),
                    origin: path.display().to_string(),
                    message: format!("not valid YAML ({e}); compare with config.example.yml"),
                })?;
            check_tree(path, &value)?;
            Some((path, value))
        }
        None => None,
    };
    let src = Sources {
        yaml: yaml.as_ref().map(|(p, v)| (*p, v)),
        env,
    };
    build(&src, file, overrides)
}

/// Refuses what the file holds besides known keys with usable values: an
/// unknown section or key (a misspelt `minio.endpoint` would otherwise turn
/// an S3 export into a local one without a word), and a list or a map where
/// a single value is expected. Driven by [`KEYS`] and [`IGNORED_KEYS`]: a key
/// added there is accepted here.
fn check_tree(file: &Path, root: &serde_yaml::Value) -> Result<(), ConfigError> {
    use serde_yaml::Value;
    let origin = file.display().to_string();
    let sections = match root {
        Value::Null => return Ok(()),
        Value::Mapping(m) => m,
        _ => {
            return Err(ConfigError {
                key: "--config".into(),
                origin,
                message: "the file must hold sections such as `opencti:` and `minio:`; compare with config.example.yml".into(),
            })
        }
    };
    let unknown = |path: String| {
        let message = match closest_key(&path) {
            Some(best) => format!(
                "is not a known key: did you mean `{best}`? (config.example.yml lists every key)"
            ),
            None => "is not a known key: config.example.yml lists every key".to_string(),
        };
        ConfigError {
            key: path,
            origin: origin.clone(),
            message,
        }
    };
    for (name, section) in sections {
        let name = scalar_text(name).unwrap_or_else(|| format!("{name:?}"));
        let entries = match section {
            Value::Null => continue,
            Value::Mapping(m) => m,
            _ => {
                let has_keys = KEYS
                    .iter()
                    .any(|k| k.path.split_once('.').is_some_and(|(s, _)| s == name));
                if !has_keys {
                    return Err(unknown(name));
                }
                return Err(ConfigError {
                    key: name.clone(),
                    origin,
                    message: format!(
                        "is a section: write its keys below it, e.g. `{name}:` then `  key: value`"
                    ),
                });
            }
        };
        for (k, v) in entries {
            let k = scalar_text(k).unwrap_or_else(|| format!("{k:?}"));
            let path = format!("{name}.{k}");
            let list = match KEYS.iter().find(|k| k.path == path) {
                Some(spec) => spec.list,
                None if IGNORED_KEYS.contains(&path.as_str()) => false,
                None => return Err(unknown(path)),
            };
            let single = matches!(
                v,
                Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_)
            );
            let list_given = list && matches!(v, Value::Sequence(_));
            if !(single || list_given) {
                let what = match v {
                    Value::Sequence(_) => "a list",
                    Value::Mapping(_) => "a map",
                    _ => "a tagged value",
                };
                let expected = if list {
                    "a list of names or one comma-separated text"
                } else {
                    "a single value (text, number or boolean)"
                };
                return Err(ConfigError {
                    key: path,
                    origin,
                    message: format!("is {what}, but {expected} is expected"),
                });
            }
        }
    }
    Ok(())
}

/// A YAML scalar as text; `None` for lists, maps and tagged values.
fn scalar_text(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// The known key nearest to `path` by edit distance, when one is near enough
/// to be a likely misspelling.
fn closest_key(path: &str) -> Option<&'static str> {
    KEYS.iter()
        .map(|k| k.path)
        .chain(IGNORED_KEYS.iter().copied())
        .map(|known| (strsim::damerau_levenshtein(path, known), known))
        .filter(|(d, _)| *d <= 3.max(path.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, known)| known)
}

struct Sources<'a> {
    yaml: Option<(&'a Path, &'a serde_yaml::Value)>,
    env: &'a HashMap<String, String>,
}

impl Sources<'_> {
    fn key(path: &str) -> Key {
        *KEYS
            .iter()
            .find(|k| k.path == path)
            .expect("every key read is listed in KEYS")
    }

    fn get(&self, path: &str) -> Option<Raw> {
        let k = Self::key(path);
        if let Some(v) = self.env.get(k.env) {
            if !v.is_empty() {
                return Some(Raw {
                    value: v.clone(),
                    origin: k.env.to_string(),
                });
            }
        }
        let (file, root) = self.yaml?;
        let (section, name) = path.split_once('.').expect("keys are section.key");
        let v = root.get(section)?.get(name)?;
        // Lists and maps were refused by `check_tree`; a list key is read by
        // `list`, not here.
        let value = scalar_text(v)?;
        Some(Raw {
            value,
            origin: file.display().to_string(),
        })
    }

    fn err(&self, path: &str, raw: Option<&Raw>, message: impl Into<String>) -> ConfigError {
        let k = Self::key(path);
        let message = message.into();
        match raw {
            Some(r) => {
                let shown = if k.secret {
                    "***".to_string()
                } else {
                    crate::secret::redact_url(&r.value)
                };
                ConfigError {
                    key: path.into(),
                    origin: r.origin.clone(),
                    message: format!("`{shown}` {message}"),
                }
            }
            None => ConfigError {
                key: path.into(),
                origin: format!("set `{path}` in the config file or {}", k.env),
                message,
            },
        }
    }

    fn string(&self, path: &str) -> Option<String> {
        // `ChangeMe` is the placeholder of the sample configs: not a value.
        self.get(path)
            .map(|r| r.value.trim().to_string())
            .filter(|s| !s.is_empty() && s != "ChangeMe")
    }

    fn required(&self, path: &str, what: &str) -> Result<String, ConfigError> {
        self.string(path)
            .ok_or_else(|| self.err(path, None, format!("is required: {what}")))
    }

    fn boolean(&self, path: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(path) {
            None => Ok(default),
            Some(r) => parse_bool(&r.value)
                .ok_or_else(|| self.err(path, Some(&r), "is not a boolean: use true or false")),
        }
    }

    /// A list: a YAML sequence, or comma-separated text (environment).
    fn list(&self, path: &str) -> Result<Vec<String>, ConfigError> {
        let k = Self::key(path);
        let split = |v: &str| -> Vec<String> {
            v.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        };
        if let Some(v) = self.env.get(k.env).filter(|v| !v.trim().is_empty()) {
            return Ok(split(v));
        }
        let Some((file, root)) = self.yaml else {
            return Ok(Vec::new());
        };
        let (section, name) = path.split_once('.').expect("keys are section.key");
        let bad = || ConfigError {
            key: path.into(),
            origin: file.display().to_string(),
            message: "must be a list of names".into(),
        };
        match root.get(section).and_then(|s| s.get(name)) {
            None | Some(serde_yaml::Value::Null) => Ok(Vec::new()),
            Some(serde_yaml::Value::Sequence(items)) => items
                .iter()
                .map(|i| match i {
                    serde_yaml::Value::String(s) => Ok(s.trim().to_string()),
                    serde_yaml::Value::Number(n) => Ok(n.to_string()),
                    _ => Err(bad()),
                })
                .collect(),
            Some(serde_yaml::Value::String(s)) => Ok(split(s)),
            Some(_) => Err(bad()),
        }
    }

    fn number(
        &self,
        path: &str,
        default: u64,
        min: u64,
        max: u64,
        unit: &str,
    ) -> Result<u64, ConfigError> {
        match self.get(path) {
            None => Ok(default),
            Some(r) => match r.value.trim().parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(self.err(
                    path,
                    Some(&r),
                    format!("is not a whole number of {unit} from {min} to {max}"),
                )),
            },
        }
    }
}

/// Reads a boolean the way the reference does: true/false/yes/no/1/0 (and
/// on/off, y/n, t/f) in any case.
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "on" | "y" | "t" => Some(true),
        "false" | "no" | "0" | "off" | "n" | "f" => Some(false),
        _ => None,
    }
}

/// `connector.live_stream_start_timestamp` as the reference takes it: `0`
/// (pycti sends `0-0`: the beginning of the stream), epoch milliseconds,
/// `<ms>-<seq>`, or an ISO date (one without a zone is UTC, as the
/// platform reads dates). Epoch seconds stay refused: pycti would send them
/// as milliseconds of January 1970.
pub(crate) fn parse_start_timestamp(value: &str) -> Result<EventId, String> {
    let v = value.trim();
    if v == "0" {
        return Ok(EventId::default());
    }
    match id::parse_position(v) {
        Ok(p) => Ok(p),
        Err(e) => match parse_iso_utc(v) {
            Some(ms) => Ok(EventId::at_ms(ms)),
            None => Err(e),
        },
    }
}

/// `connector.live_stream_recover_iso_date` as pycti reads it: `false`,
/// `no`, `none` (any case; pycti's list is `no`, `none`, `false` with a
/// capital or not) turn recovery off; `true` (or unset) recovers up to the
/// start of the run; otherwise an ISO date, UTC when it has no zone.
pub(crate) fn parse_recover(value: &str) -> Result<Recover, String> {
    let v = value.trim();
    if v.eq_ignore_ascii_case("none") {
        return Ok(Recover::Off);
    }
    match parse_bool(v) {
        Some(false) => return Ok(Recover::Off),
        Some(true) => return Ok(Recover::UntilNow),
        None => {}
    }
    match id::parse_iso_ms(v) {
        Ok(ms) => Ok(Recover::Until(ms)),
        Err(e) => parse_iso_utc(v).map(Recover::Until).ok_or(e),
    }
}

/// An ISO-8601 date or date-time without a zone, read as UTC (the platform
/// parses such dates as UTC): `2024-06-15`, `2024-06-15T10:00`,
/// `2024-06-15T10:00:00`, `2024-06-15 10:00:00.250`. `None` for anything else.
fn parse_iso_utc(v: &str) -> Option<u64> {
    let b = v.as_bytes();
    let dated = b.len() >= 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[8..10].iter().all(u8::is_ascii_digit);
    if !dated {
        return None;
    }
    let (date, time) = match v.len() {
        10 => (v, "00:00:00"),
        _ => {
            let sep = b[10];
            if sep != b'T' && sep != b't' && sep != b' ' {
                return None;
            }
            (&v[..10], &v[11..])
        }
    };
    if time.ends_with(['Z', 'z']) || time.contains(['+', '-']) {
        return None;
    }
    let time = if time.len() == 5 {
        format!("{time}:00")
    } else {
        time.to_string()
    };
    id::parse_iso_ms(&format!("{date}T{time}Z")).ok()
}

fn build(src: &Sources, file: Option<&Path>, ov: &Overrides) -> Result<Config, ConfigError> {
    let opencti = opencti(src);
    let stream = stream(src);

    let log_level = log_level(src)?;
    let consumer_count = consumer_count(src, ov)?;
    let queue_size = src.number("queue.size", 2048, 1, 1_000_000, "events")? as usize;
    let batch = BatchLimits {
        max_age: Duration::from_secs(src.number("write.every_sec", 900, 1, 86_400, "seconds")?),
        max_events: src.number("write.max_events", 20_000, 1, 10_000_000, "events")? as usize,
        max_bytes: src.number("write.max_bytes", 4 << 20, 1024, 4 << 30, "bytes")? as usize,
    };
    let folder = folder(src)?;
    let state_path = state_path(src, file, ov);

    let output = output(src, ov);
    let fetch_files = src.boolean("files.fetch", true)?;
    let files = file_settings(src)?;
    let max_line_bytes = src.number(
        "output.max_line_bytes",
        DEFAULT_MAX_LINE_BYTES as u64,
        4096,
        4 << 30,
        "bytes",
    )? as usize;
    let connector_name = src
        .string("connector.name")
        .unwrap_or_else(|| "StreamExporter".to_string());
    let connector = connector(src, &connector_name)?;
    let policy = policy(src)?;
    // The port is checked even when metrics are off, like every value.
    let port = src.number("connector.metrics_port", 9095, 1, 65535, "port")? as u16;
    let metrics_port = src
        .boolean("connector.expose_metrics", false)?
        .then_some(port);
    let metrics_textfile = ov
        .metrics_textfile
        .clone()
        .or_else(|| src.string("metrics.textfile").map(PathBuf::from));
    let log_every =
        Duration::from_secs(src.number("metrics.log_every_sec", 60, 1, 86_400, "seconds")?);
    let once_max_outage =
        Duration::from_secs(src.number("run.once_max_outage_sec", 300, 1, 86_400, "seconds")?);

    // Values checked even when the destination does not use them (or the
    // reference read them but they have no effect here), so that a typo
    // never goes unnoticed.
    src.number("connector.confidence_level", 100, 0, 100, "percent")?;
    src.boolean("minio.secure", false)?;
    src.boolean("minio.cert_check", true)?;

    value_errors(&opencti, &stream, &output)?;

    Ok(Config {
        file: file.map(Path::to_path_buf),
        opencti,
        stream,
        connector_name,
        connector,
        log_level,
        consumer_count,
        queue_size,
        batch,
        folder,
        output,
        state_path,
        fetch_files,
        files,
        max_line_bytes,
        policy,
        metrics_port,
        metrics_textfile,
        log_every,
        once_max_outage,
    })
}

/// `connector.log_level`, Python's level names included.
fn log_level(src: &Sources) -> Result<log::LevelFilter, ConfigError> {
    let level = match src.get("connector.log_level") {
        None => log::LevelFilter::Info,
        Some(r) => match r.value.trim().to_ascii_lowercase().as_str() {
            "debug" => log::LevelFilter::Debug,
            "info" => log::LevelFilter::Info,
            "warn" | "warning" => log::LevelFilter::Warn,
            // Python's levels above error: this tool logs nothing above
            // error, so its errors are what these levels show.
            "error" | "critical" | "fatal" => log::LevelFilter::Error,
            "trace" => log::LevelFilter::Trace,
            // Python's `NOTSET` on the root logger lets everything through.
            "notset" => log::LevelFilter::Debug,
            _ => {
                return Err(src.err(
                    "connector.log_level",
                    Some(&r),
                    "is not a log level: use debug, info, warning, error or critical",
                ))
            }
        },
    };
    Ok(level)
}

/// `connector.consumer_count`, or `--consumer-count` over it: 1 to 64 threads.
fn consumer_count(src: &Sources, ov: &Overrides) -> Result<usize, ConfigError> {
    let count = match &ov.consumer_count {
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=64).contains(n))
            .ok_or_else(|| ConfigError {
                key: "connector.consumer_count".into(),
                origin: "--consumer-count".into(),
                message: format!("`{v}` is not a number of threads from 1 to 64"),
            })?,
        None => src.number("connector.consumer_count", 4, 1, 64, "threads")? as usize,
    };
    Ok(count)
}

/// `minio.folder` without its surrounding slashes; must be a usable folder name.
fn folder(src: &Sources) -> Result<String, ConfigError> {
    let folder = src
        .string("minio.folder")
        .unwrap_or_else(|| "opencti".to_string());
    let folder = folder.trim_matches('/').to_string();
    if let Err(why) = check_folder(&folder) {
        return Err(src.err(
            "minio.folder",
            src.get("minio.folder").as_ref(),
            format!(
                "is not a usable folder ({why}): use a name like `opencti` or `exports/opencti`"
            ),
        ));
    }
    Ok(folder)
}

/// The state file: `--state`, else `state.path`, else beside the configuration file; never empty.
fn state_path(src: &Sources, file: Option<&Path>, ov: &Overrides) -> PathBuf {
    let config_dir = file
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let state_path = match (&ov.state_path, src.string("state.path")) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => PathBuf::from(p),
        (None, None) => config_dir.join("opencti-stream-exporter.state.json"),
    };
    if state_path.as_os_str().is_empty() {
        PathBuf::from("opencti-stream-exporter.state.json")
    } else {
        state_path
    }
}

/// The `files.*` settings of fetching the files of events.
fn file_settings(src: &Sources) -> Result<FileSettings, ConfigError> {
    Ok(FileSettings {
        retries: src.number("files.retries", 3, 1, 100, "attempts")? as u32,
        concurrency: src.number("files.concurrency", 64, 1, 256, "requests")? as usize,
        max_bytes: src.number("files.max_bytes", 4 << 20, 1, 4 << 30, "bytes")?,
        deadline: Duration::from_secs(src.number(
            "files.deadline_sec",
            120,
            1,
            86_400,
            "seconds",
        )?),
        buffer_bytes: src.number("files.buffer_bytes", 8 << 20, 1 << 20, 1 << 32, "bytes")?
            as usize,
    })
}

/// Fails on a value error in the OpenCTI, stream or output settings; a missing required key
/// only fails the commands that need it (`state show` works without OpenCTI).
fn value_errors(
    opencti: &Result<OpenCti, ConfigError>,
    stream: &Result<StreamSettings, ConfigError>,
    output: &Result<Output, ConfigError>,
) -> Result<(), ConfigError> {
    for part in [
        opencti.as_ref().err(),
        stream.as_ref().err(),
        output.as_ref().err(),
    ]
    .into_iter()
    .flatten()
    {
        if !part.origin.starts_with("set `") {
            return Err(part.clone());
        }
    }
    Ok(())
}

fn policy(src: &Sources) -> Result<std::sync::Arc<Policy>, ConfigError> {
    let unknown_raw = src.get("policy.unknown_marking");
    let unknown_marking = match &unknown_raw {
        None => UnknownMarking::default(),
        Some(r) => UnknownMarking::parse(&r.value).map_err(|e| {
            src.err(
                "policy.unknown_marking",
                Some(r),
                format!("is refused: {e}"),
            )
        })?,
    };
    let settings = PolicySettings {
        allow_types: src.list("policy.allow_types")?,
        deny_types: src.list("policy.deny_types")?,
        require_labels: src.list("policy.require_labels")?,
        forbid_labels: src.list("policy.forbid_labels")?,
        tlp_ceiling: src.string("policy.tlp_ceiling"),
        unknown_marking,
    };
    Policy::new(&settings)
        .map(std::sync::Arc::new)
        .map_err(|e| ConfigError {
            key: "policy".into(),
            origin: "the `policy` section or the POLICY_* variables".into(),
            message: e,
        })
}

fn connector(src: &Sources, name: &str) -> Result<Option<ConnectorSettings>, ConfigError> {
    if let Some(r) = src.get("connector.type") {
        if !r.value.trim().eq_ignore_ascii_case("STREAM") {
            return Err(src.err(
                "connector.type",
                Some(&r),
                "is not this connector's type: it is a `STREAM` connector (set `STREAM` or remove the key)",
            ));
        }
    }
    if src.boolean("connector.auto_create_service_account", false)? {
        return Err(src.err(
            "connector.auto_create_service_account",
            src.get("connector.auto_create_service_account").as_ref(),
            "is refused: this tool creates no service account and never runs as one; it reads the stream, \
             the files and registers with `opencti.token` itself. Give the token of a user that can read \
             the live stream and set it to false",
        ));
    }
    let Some(id) = src.string("connector.id") else {
        return Ok(None);
    };
    if id.contains(char::is_whitespace) || id.len() > 200 {
        return Err(src.err(
            "connector.id",
            src.get("connector.id").as_ref(),
            "is not a connector id: use a UUID, e.g. from `uuidgen`",
        ));
    }
    let scope = src
        .string("connector.scope")
        .unwrap_or_else(|| "stream-exporter".to_string())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    Ok(Some(ConnectorSettings {
        id,
        name: name.to_string(),
        scope,
    }))
}

/// Parses `OPENCTI_CUSTOM_HEADERS` as pycti does: `name:value` pairs
/// separated by `;`, each split at its first `:`, both sides trimmed, empty
/// pairs skipped. pycti skips a pair without `:` with a warning; it is
/// refused here, as is a header this tool sets itself.
pub(crate) fn parse_custom_headers(text: &str) -> Result<Vec<(String, Secret)>, String> {
    let mut out = Vec::new();
    for pair in text.trim().split(';') {
        if pair.trim().is_empty() {
            continue;
        }
        let Some((name, value)) = pair.split_once(':') else {
            return Err(format!(
                "has a pair without `:` (pair {}): write `name1:value1;name2:value2`",
                out.len() + 1
            ));
        };
        let name = name.trim();
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid {
            return Err(format!(
                "has a header name that is not a token (pair {}): write `name1:value1;name2:value2`",
                out.len() + 1
            ));
        }
        let lower = name.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "authorization" | "host" | "content-length" | "transfer-encoding" | "connection"
        ) {
            return Err(format!(
                "sets `{name}`, which this tool sets itself (the token goes in `opencti.token`)"
            ));
        }
        if value.contains(['\r', '\n']) {
            return Err(format!("has a line break in the value of `{name}`"));
        }
        out.push((name.to_string(), Secret::new(value.trim())));
    }
    Ok(out)
}

/// The proxy for `url`, from the environment the way Python's requests
/// picks it: `<scheme>_proxy` then `all_proxy`, the lower-case name winning
/// over the upper-case one; none when `no_proxy` matches the host. Returns
/// the variable it came from and its value.
pub(crate) fn proxy_for(url: &str, env: &HashMap<String, String>) -> Option<(String, String)> {
    let get = |name: &str| -> Option<(String, String)> {
        let lower = name.to_ascii_lowercase();
        let upper = name.to_ascii_uppercase();
        [lower, upper].into_iter().find_map(|n| {
            env.get(&n)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .map(|v| (n, v))
        })
    };
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let (host, port) = split_host_port(authority);
    let default_port = if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    };
    if let Some((_, no_proxy)) = get("no_proxy") {
        if no_proxy_matches(&no_proxy, &host, port.unwrap_or(default_port)) {
            return None;
        }
    }
    get(&format!("{}_proxy", scheme.to_ascii_lowercase())).or_else(|| get("all_proxy"))
}

fn split_host_port(authority: &str) -> (String, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest.split_once(']').unwrap_or((rest, ""));
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return (h.to_ascii_lowercase(), port);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty() => {
            (h.to_ascii_lowercase(), p.parse().ok())
        }
        _ => (authority.to_ascii_lowercase(), None),
    }
}

/// `NO_PROXY` as requests and curl read it: comma-separated entries; `*`
/// matches every host; an IP address or CIDR block matches addresses; a
/// name matches itself and its subdomains (a leading `.` is ignored); an
/// entry with `:port` only matches that port.
fn no_proxy_matches(list: &str, host: &str, port: u16) -> bool {
    let ip: Option<std::net::IpAddr> = host.parse().ok();
    list.split(',')
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            if let (Some(ip), Some((net, bits))) = (ip, entry.split_once('/')) {
                return match (net.parse::<std::net::IpAddr>(), bits.parse::<u32>()) {
                    (Ok(std::net::IpAddr::V4(n)), Ok(b)) if b <= 32 => match ip {
                        std::net::IpAddr::V4(a) => {
                            let mask = if b == 0 { 0 } else { u32::MAX << (32 - b) };
                            u32::from(a) & mask == u32::from(n) & mask
                        }
                        _ => false,
                    },
                    (Ok(std::net::IpAddr::V6(n)), Ok(b)) if b <= 128 => match ip {
                        std::net::IpAddr::V6(a) => {
                            let mask = if b == 0 { 0 } else { u128::MAX << (128 - b) };
                            u128::from(a) & mask == u128::from(n) & mask
                        }
                        _ => false,
                    },
                    _ => false,
                };
            }
            if let Ok(addr) = entry.parse::<std::net::IpAddr>() {
                return ip == Some(addr);
            }
            let (name, entry_port) = split_host_port(&entry);
            if entry_port.is_some_and(|p| p != port) {
                return false;
            }
            let name = name.trim_start_matches('.');
            host == name || host.ends_with(&format!(".{name}"))
        })
}

/// The HTTP settings of the OpenCTI side: extra CA, custom headers, proxy.
type OpenCtiHttp = (Option<ExtraCa>, Vec<(String, Secret)>, Option<Secret>);

fn opencti_http(src: &Sources, url: &str) -> Result<OpenCtiHttp, ConfigError> {
    let custom_headers = match src.get("opencti.custom_headers") {
        None => Vec::new(),
        Some(r) => parse_custom_headers(&r.value)
            .map_err(|e| src.err("opencti.custom_headers", Some(&r), e))?,
    };
    let extra_ca = match src.get("opencti.https_ca_certificates") {
        None => None,
        Some(r) => {
            let v = r.value.trim();
            if v.is_empty() {
                None
            } else if v.starts_with("-----BEGIN") {
                Some(ExtraCa::Inline(v.to_string()))
            } else if Path::new(v).is_file() {
                Some(ExtraCa::File(PathBuf::from(v)))
            } else {
                return Err(src.err(
                    "opencti.https_ca_certificates",
                    Some(&r),
                    "is neither PEM text (starting with `-----BEGIN`) nor the path of a readable file",
                ));
            }
        }
    };
    let proxy = match proxy_for(url, src.env) {
        None => None,
        Some((var, value)) => {
            let scheme = value.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
            match scheme.as_deref() {
                None | Some("http") => Some(Secret::new(value)),
                Some(other) => {
                    return Err(ConfigError {
                        key: var,
                        origin: "environment".into(),
                        message: format!(
                            "a `{other}://` proxy cannot be used for OpenCTI: this tool speaks to proxies in plain HTTP \
                             (CONNECT for https); give an `http://host:port` proxy, or list the OpenCTI host in NO_PROXY"
                        ),
                    })
                }
            }
        }
    };
    Ok((extra_ca, custom_headers, proxy))
}

fn opencti(src: &Sources) -> Result<OpenCti, ConfigError> {
    let ssl_verify = src.boolean("opencti.ssl_verify", true)?;
    let ca_file = src.string("opencti.ca_file").map(PathBuf::from);
    if let Some(ca) = &ca_file {
        if !ca.is_file() {
            return Err(src.err(
                "opencti.ca_file",
                src.get("opencti.ca_file").as_ref(),
                "is not a readable file: give the path of a PEM CA bundle",
            ));
        }
    }
    let url_raw = src.get("opencti.url");
    let url = src.required(
        "opencti.url",
        "the base URL of OpenCTI, e.g. `https://opencti.example.org`",
    )?;
    let url = url.trim_end_matches('/').to_string();
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
        return Err(src.err(
            "opencti.url",
            url_raw.as_ref(),
            "is not an http(s) URL: write it like `https://opencti.example.org`",
        ));
    }
    let token = src.required(
        "opencti.token",
        "an OpenCTI API token of a user that can read the live stream",
    )?;
    let (extra_ca_pem, custom_headers, proxy) = opencti_http(src, &url)?;
    Ok(OpenCti {
        url,
        token: Secret::new(token),
        ssl_verify,
        ca_file,
        extra_ca_pem,
        custom_headers,
        proxy,
    })
}

fn stream(src: &Sources) -> Result<StreamSettings, ConfigError> {
    let start = match src.get("connector.live_stream_start_timestamp") {
        Some(r) if !r.value.trim().is_empty() => {
            Some(parse_start_timestamp(&r.value).map_err(|e| {
                src.err(
                    "connector.live_stream_start_timestamp",
                    Some(&r),
                    format!("is refused: {e}"),
                )
            })?)
        }
        _ => None,
    };
    let recover = match src.get("connector.live_stream_recover_iso_date") {
        None => Recover::UntilNow,
        Some(r) => parse_recover(&r.value).map_err(|e| {
            src.err(
                "connector.live_stream_recover_iso_date",
                Some(&r),
                format!("is neither false, none nor a date: {e}"),
            )
        })?,
    };
    let listen_delete = src.boolean("connector.live_stream_listen_delete", true)?;
    let no_dependencies = src.boolean("connector.live_stream_no_dependencies", true)?;
    let with_inferences = src.boolean("connector.live_stream_with_inferences", false)?;
    let idle_timeout =
        Duration::from_secs(src.number("stream.idle_timeout_sec", 60, 6, 3600, "seconds")?);
    let max_event_bytes =
        src.number("stream.max_event_bytes", 64 << 20, 1024, 1 << 30, "bytes")? as usize;
    let reconnect_max =
        Duration::from_secs(src.number("stream.reconnect_max_sec", 60, 1, 3600, "seconds")?);
    let id_raw = src.get("connector.live_stream_id");
    let live_stream_id = src.required(
        "connector.live_stream_id",
        "the id of the live stream to export (Data > Data sharing > Live streams)",
    )?;
    if live_stream_id.contains('/') || live_stream_id.contains(char::is_whitespace) {
        return Err(src.err(
            "connector.live_stream_id",
            id_raw.as_ref(),
            "is not a live stream id: copy the id of the stream from OpenCTI",
        ));
    }
    Ok(StreamSettings {
        live_stream_id,
        start,
        recover,
        listen_delete,
        no_dependencies,
        with_inferences,
        idle_timeout,
        max_event_bytes,
        reconnect_max,
    })
}

fn output(src: &Sources, ov: &Overrides) -> Result<Output, ConfigError> {
    let kind_raw = src.get("output.kind");
    let kind = output_kind(src, ov, kind_raw.as_ref());
    match kind.as_str() {
        "directory" | "dir" => Ok(directory_output(src, ov)),
        "s3" | "minio" => s3_output(src),
        _ => Err(src.err(
            "output.kind",
            kind_raw.as_ref(),
            "is not a destination: use `s3` or `directory`",
        )),
    }
}

/// The destination kind: a directory under `--output-dir`, else `output.kind`, else S3 when
/// `minio.endpoint` is set, else a directory.
fn output_kind(src: &Sources, ov: &Overrides, kind_raw: Option<&Raw>) -> String {
    match (
        &ov.output_dir,
        kind_raw.map(|r| r.value.trim().to_ascii_lowercase()),
    ) {
        (Some(_), _) => "directory".to_string(),
        (None, Some(k)) => k,
        (None, None) if src.string("minio.endpoint").is_some() => "s3".to_string(),
        (None, None) => "directory".to_string(),
    }
}

/// The directory destination: `--output-dir` or `output.directory`, dead letters beside it.
fn directory_output(src: &Sources, ov: &Overrides) -> Output {
    let root = ov
        .output_dir
        .clone()
        .or_else(|| src.string("output.directory").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("export"));
    let dead_letter_root = src
        .string("dead_letter.directory")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let mut name = root
                .file_name()
                .map(|n| n.to_os_string())
                .unwrap_or_else(|| "export".into());
            name.push("-dead-letter");
            root.with_file_name(name)
        });
    Output::Directory {
        root,
        dead_letter_root,
    }
}

/// The S3 destination from the `minio.*` and `dead_letter.bucket` settings.
fn s3_output(src: &Sources) -> Result<Output, ConfigError> {
    let endpoint = src.required(
        "minio.endpoint",
        "the S3/MinIO host name, e.g. `minio.example.org`",
    )?;
    let port = minio_port(src)?;
    let bucket_raw = src.get("minio.bucket");
    let bucket = src.required("minio.bucket", "the bucket the stream-importer reads")?;
    if !valid_bucket(&bucket) {
        return Err(src.err(
            "minio.bucket",
            bucket_raw.as_ref(),
            "is not a valid bucket name: 3-63 lowercase letters, digits, dots or hyphens",
        ));
    }
    let access_key = src.required("minio.access_key", "the S3 access key")?;
    let secret_key = Secret::new(src.required("minio.secret_key", "the S3 secret key")?);
    let ca_file = src.string("minio.ca_file").map(PathBuf::from);
    if let Some(ca) = &ca_file {
        if !ca.is_file() {
            return Err(src.err(
                "minio.ca_file",
                src.get("minio.ca_file").as_ref(),
                "is not a readable file: give the path of a PEM CA bundle",
            ));
        }
    }
    let dead_letter_bucket = dead_letter_bucket(src, &bucket)?;
    let settings = S3Settings {
        endpoint,
        port,
        secure: src.boolean("minio.secure", false)?,
        cert_check: src.boolean("minio.cert_check", true)?,
        ca_file,
        region: src.string("minio.region"),
        bucket,
        access_key,
        secret_key,
        timeout: Duration::from_secs(src.number("minio.timeout_sec", 120, 1, 3600, "seconds")?),
    };
    Ok(Output::S3 {
        settings,
        bucket_done: src.string("minio.bucket_done"),
        dead_letter_bucket,
    })
}

/// `minio.port`, when set: a port number from 1 to 65535.
fn minio_port(src: &Sources) -> Result<Option<u16>, ConfigError> {
    let port = match src.get("minio.port") {
        None => None,
        Some(r) => Some(
            r.value
                .trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    src.err(
                        "minio.port",
                        Some(&r),
                        "is not a port number: give a number from 1 to 65535",
                    )
                })?,
        ),
    };
    Ok(port)
}

/// `dead_letter.bucket`, else `<minio.bucket>-dead-letter`; a valid bucket other than `minio.bucket`.
fn dead_letter_bucket(src: &Sources, bucket: &str) -> Result<String, ConfigError> {
    let dead_letter_bucket = src.string("dead_letter.bucket").unwrap_or_else(|| {
        let b = format!("{bucket}-dead-letter");
        if b.len() > 63 {
            "opencti-dead-letter".to_string()
        } else {
            b
        }
    });
    if !valid_bucket(&dead_letter_bucket) || dead_letter_bucket == bucket {
        return Err(src.err("dead_letter.bucket", src.get("dead_letter.bucket").as_ref(), "must be a valid bucket name other than `minio.bucket` (the importer reads every key of that bucket)"));
    }
    Ok(dead_letter_bucket)
}

/// Whether `folder` (outer `/` already removed) is a key prefix both
/// destinations and the importer take as meant: segments that are not empty,
/// `.` or `..` (the directory destination would write outside its root), no
/// backslash or control character, and short enough to leave room for the
/// file name in S3's 1024-byte keys.
fn check_folder(folder: &str) -> Result<(), String> {
    if folder.is_empty() {
        return Err("it is empty".into());
    }
    if folder.len() > 512 {
        return Err(format!("{} bytes, more than 512", folder.len()));
    }
    if let Some(c) = folder.chars().find(|c| c.is_control() || *c == '\\') {
        return Err(format!("it holds the character {c:?}"));
    }
    for segment in folder.split('/') {
        match segment {
            "" => return Err("it has an empty segment (`//`)".into()),
            "." | ".." => return Err(format!("it has a `{segment}` segment")),
            _ => {}
        }
    }
    Ok(())
}

fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.as_bytes()[0].is_ascii_alphanumeric()
        && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recover_sets_the_end_of_the_snapshot_of_a_new_state() {
        let now = 1_718_446_500_000;
        assert_eq!(Recover::Off.until_ms(now), None);
        assert_eq!(Recover::UntilNow.until_ms(now), Some(now));
        assert_eq!(Recover::Until(1_000).until_ms(now), Some(1_000));
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const BASE: &[(&str, &str)] = &[
        ("OPENCTI_URL", "http://localhost:4000/"),
        ("OPENCTI_TOKEN", "tok-123456"),
        ("CONNECTOR_LIVE_STREAM_ID", "live-1"),
    ];

    fn with(extra: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut e = env(BASE);
        e.extend(env(extra));
        load_from(None, &e, &Overrides::default())
    }

    #[test]
    fn reference_environment_works_with_defaults() {
        let c = with(&[]).unwrap();
        assert_eq!(c.opencti().unwrap().url, "http://localhost:4000");
        assert_eq!(c.stream().unwrap().recover, Recover::UntilNow);
        assert!(c.stream().unwrap().listen_delete);
        assert_eq!(c.batch.max_age, Duration::from_secs(900));
        assert_eq!(c.queue_size, 2048);
        assert!(matches!(c.output().unwrap(), Output::Directory { .. }));
        assert_eq!(c.folder, "opencti");
    }

    #[test]
    fn minio_endpoint_selects_s3() {
        let c = with(&[
            ("MINIO_ENDPOINT", "127.0.0.1"),
            ("MINIO_PORT", "9000"),
            ("MINIO_BUCKET", "exports"),
            ("MINIO_ACCESS_KEY", "ak"),
            ("MINIO_SECRET_KEY", "sk-secret"),
            ("MINIO_SECURE", "False"),
            ("MINIO_FOLDER", "/opencti/"),
        ])
        .unwrap();
        match c.output().unwrap() {
            Output::S3 {
                settings,
                dead_letter_bucket,
                ..
            } => {
                assert_eq!(settings.port, Some(9000));
                assert!(!settings.secure);
                assert_eq!(dead_letter_bucket, "exports-dead-letter");
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(c.folder, "opencti");
        assert!(!format!("{c:?}").contains("sk-secret"));
        assert!(!format!("{c:?}").contains("tok-123456"));
    }

    #[test]
    fn bad_values_name_the_key_the_origin_and_the_fix() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: &[Case] = &[
            (
                &[("MINIO_ENDPOINT", "h"), ("MINIO_PORT", "abc")],
                "minio.port",
                "MINIO_PORT",
            ),
            (
                &[("WRITE_EVERY_SEC", "0")],
                "write.every_sec",
                "WRITE_EVERY_SEC",
            ),
            (
                &[("CONNECTOR_LIVE_STREAM_START_TIMESTAMP", "1718446500")],
                "connector.live_stream_start_timestamp",
                "epoch seconds",
            ),
            (
                &[("CONNECTOR_LIVE_STREAM_LISTEN_DELETE", "maybe")],
                "connector.live_stream_listen_delete",
                "true or false",
            ),
            (
                &[("CONNECTOR_LIVE_STREAM_ID", "live/1")],
                "connector.live_stream_id",
                "copy the id",
            ),
            (
                &[("OPENCTI_URL", "localhost:4000")],
                "opencti.url",
                "http(s) URL",
            ),
            (
                &[("OUTPUT_KIND", "ftp")],
                "output.kind",
                "`s3` or `directory`",
            ),
            (&[("QUEUE_SIZE", "-1")], "queue.size", "whole number"),
        ];
        for (extra, key, hint) in cases {
            let e = with(extra).unwrap_err();
            let text = e.to_string();
            assert_eq!(e.key, *key, "{text}");
            assert!(text.contains(hint), "{text}");
        }
    }

    #[test]
    fn missing_required_keys_only_fail_the_commands_that_need_them() {
        let c = load_from(None, &env(&[]), &Overrides::default()).unwrap();
        let e = c.check_for_run().unwrap_err();
        assert_eq!(e.key, "opencti.url");
        assert!(e.to_string().contains("OPENCTI_URL"));
    }

    #[test]
    fn a_missing_secret_key_fails_the_destination_not_the_load() {
        let c = with(&[
            ("MINIO_ENDPOINT", "h"),
            ("MINIO_BUCKET", "bkt"),
            ("MINIO_ACCESS_KEY", "a"),
        ])
        .unwrap();
        let e = c.output().unwrap_err();
        assert_eq!(e.key, "minio.secret_key");
        assert!(e.to_string().contains("MINIO_SECRET_KEY"), "{e}");
    }

    #[test]
    fn yaml_file_is_read_and_environment_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yml");
        std::fs::write(
            &path,
            "opencti:\n  url: http://a:1\n  token: t\nconnector:\n  live_stream_id: s1\n  live_stream_recover_iso_date: false\n  consumer_count: 4\nwrite:\n  every_sec: 5\n",
        )
        .unwrap();
        let c = load_from(
            Some(&path),
            &env(&[("WRITE_EVERY_SEC", "7")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.consumer_count, 4);
        assert_eq!(c.batch.max_age, Duration::from_secs(7));
        assert_eq!(c.stream().unwrap().recover, Recover::Off);
        assert_eq!(
            c.state_path,
            dir.path().join("opencti-stream-exporter.state.json")
        );
    }

    #[test]
    fn the_example_config_is_valid_and_its_placeholders_count_as_unset() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.yml");
        let c = load_from(Some(&path), &env(&[]), &Overrides::default()).unwrap();
        let e = c.check_for_run().unwrap_err();
        assert_eq!(e.key, "opencti.token", "{e}");
        let c = load_from(
            Some(&path),
            &env(&[("OPENCTI_TOKEN", "t"), ("CONNECTOR_LIVE_STREAM_ID", "s")]),
            &Overrides::default(),
        )
        .unwrap();
        c.check_for_run().unwrap();
        assert_eq!(c.batch.max_bytes, 4 << 20);
        assert!(c.opencti().unwrap().ssl_verify);
    }

    fn load_yaml(yaml: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yml");
        std::fs::write(&path, yaml).unwrap();
        load_from(Some(&path), &env(BASE), &Overrides::default())
    }

    #[test]
    fn a_list_or_a_map_where_one_value_is_expected_is_refused_naming_the_key() {
        for (yaml, key, what) in [
            ("minio:\n  folder: [a, b]\n", "minio.folder", "is a list"),
            ("opencti:\n  token: {a: 1}\n", "opencti.token", "is a map"),
            (
                "write:\n  every_sec:\n    - 5\n",
                "write.every_sec",
                "is a list",
            ),
        ] {
            let e = load_yaml(yaml).unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(e.to_string().contains(what), "{e}");
            assert!(!e.to_string().contains("not a single value>"), "{e}");
        }
        // List keys take lists.
        let c = load_yaml("policy:\n  allow_types: [indicator, report]\n").unwrap();
        assert!(c.policy.is_active());
    }

    #[test]
    fn unknown_keys_are_refused_with_the_closest_known_key() {
        for (yaml, key, hint) in [
            (
                "minio:\n  endpiont: h\n",
                "minio.endpiont",
                "`minio.endpoint`",
            ),
            (
                "write:\n  every_secs: 5\n",
                "write.every_secs",
                "`write.every_sec`",
            ),
            (
                "mino:\n  endpoint: h\n",
                "mino.endpoint",
                "`minio.endpoint`",
            ),
            (
                "opencti:\n  colour: blue\n",
                "opencti.colour",
                "config.example.yml",
            ),
            (
                "nothing_like_it:\n  at_all_here: 1\n",
                "nothing_like_it.at_all_here",
                "config.example.yml",
            ),
        ] {
            let e = load_yaml(yaml).unwrap_err();
            assert_eq!(e.key, key, "{e}");
            assert!(e.to_string().contains("not a known key"), "{e}");
            assert!(e.to_string().contains(hint), "{e}");
        }
        let e = load_yaml("minio: exports\n").unwrap_err();
        assert_eq!(e.key, "minio", "{e}");
        // The reference's sample keys still load.
        load_yaml("connector:\n  type: STREAM\n  scope: stream-exporter\n").unwrap();
    }

    #[test]
    fn every_known_key_is_accepted_in_a_file() {
        for k in KEYS {
            let (section, name) = k.path.split_once('.').unwrap();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("config.yml");
            std::fs::write(&path, format!("{section}:\n  {name}:\n")).unwrap();
            load_from(Some(&path), &env(BASE), &Overrides::default())
                .unwrap_or_else(|e| panic!("{}: {e}", k.path));
        }
    }

    #[test]
    fn folders_that_leave_the_root_or_that_s3_mangles_are_refused() {
        for bad in [
            "../..", "..", "a/../b", "./a", "a//b", "a\\b", "a\tb", "a\nb", "/",
        ] {
            let e = with(&[("MINIO_FOLDER", bad)]).unwrap_err();
            assert_eq!(e.key, "minio.folder", "{bad:?}: {e}");
        }
        let long = "a".repeat(600);
        assert_eq!(
            with(&[("MINIO_FOLDER", &long)]).unwrap_err().key,
            "minio.folder"
        );
        for good in [
            "opencti",
            "exports/opencti",
            "/opencti/",
            "a.b/c-d_e",
            "été",
        ] {
            let c = with(&[("MINIO_FOLDER", good)]).unwrap();
            assert_eq!(c.folder, good.trim_matches('/'));
        }
    }

    #[test]
    fn the_reference_values_are_read_with_its_meaning() {
        // (variable, value, what the stream settings or log level become)
        let d = |s: &str| id::parse_iso_ms(s).unwrap();
        type Case<'a> = (&'a str, &'a str, &'a dyn Fn(&Config) -> bool);
        let cases: &[Case] = &[
            ("CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE", "None", &|c| {
                c.stream().unwrap().recover == Recover::Off
            }),
            ("CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE", "none", &|c| {
                c.stream().unwrap().recover == Recover::Off
            }),
            ("CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE", "No", &|c| {
                c.stream().unwrap().recover == Recover::Off
            }),
            ("CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE", "False", &|c| {
                c.stream().unwrap().recover == Recover::Off
            }),
            ("CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE", "true", &|c| {
                c.stream().unwrap().recover == Recover::UntilNow
            }),
            (
                "CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE",
                "2024-06-15T10:00:00Z",
                &|c| c.stream().unwrap().recover == Recover::Until(d("2024-06-15T10:00:00Z")),
            ),
            (
                "CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE",
                "2024-06-15T10:00:00",
                &|c| c.stream().unwrap().recover == Recover::Until(d("2024-06-15T10:00:00Z")),
            ),
            (
                "CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE",
                "2024-06-15T10:00:00.250",
                &|c| c.stream().unwrap().recover == Recover::Until(d("2024-06-15T10:00:00.250Z")),
            ),
            (
                "CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE",
                "2024-06-15 10:00",
                &|c| c.stream().unwrap().recover == Recover::Until(d("2024-06-15T10:00:00Z")),
            ),
            (
                "CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE",
                "2024-06-15",
                &|c| c.stream().unwrap().recover == Recover::Until(d("2024-06-15T00:00:00Z")),
            ),
            (
                "CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE",
                "2024-06-15T12:00:00+02:00",
                &|c| c.stream().unwrap().recover == Recover::Until(d("2024-06-15T10:00:00Z")),
            ),
            ("CONNECTOR_LIVE_STREAM_START_TIMESTAMP", "0", &|c| {
                c.stream().unwrap().start == Some(EventId::default())
            }),
            (
                "CONNECTOR_LIVE_STREAM_START_TIMESTAMP",
                "1718446500000",
                &|c| c.stream().unwrap().start == Some(EventId::at_ms(1_718_446_500_000)),
            ),
            (
                "CONNECTOR_LIVE_STREAM_START_TIMESTAMP",
                "1718446500000-3",
                &|c| {
                    c.stream().unwrap().start
                        == Some(EventId {
                            ms: 1_718_446_500_000,
                            seq: 3,
                        })
                },
            ),
            (
                "CONNECTOR_LIVE_STREAM_START_TIMESTAMP",
                "2024-06-15T10:00:00",
                &|c| c.stream().unwrap().start == Some(EventId::at_ms(d("2024-06-15T10:00:00Z"))),
            ),
            ("CONNECTOR_LOG_LEVEL", "critical", &|c| {
                c.log_level == log::LevelFilter::Error
            }),
            ("CONNECTOR_LOG_LEVEL", "CRITICAL", &|c| {
                c.log_level == log::LevelFilter::Error
            }),
            ("CONNECTOR_LOG_LEVEL", "fatal", &|c| {
                c.log_level == log::LevelFilter::Error
            }),
            ("CONNECTOR_LOG_LEVEL", "error", &|c| {
                c.log_level == log::LevelFilter::Error
            }),
            ("CONNECTOR_LOG_LEVEL", "warning", &|c| {
                c.log_level == log::LevelFilter::Warn
            }),
            ("CONNECTOR_LOG_LEVEL", "WARN", &|c| {
                c.log_level == log::LevelFilter::Warn
            }),
            ("CONNECTOR_LOG_LEVEL", "Info", &|c| {
                c.log_level == log::LevelFilter::Info
            }),
            ("CONNECTOR_LOG_LEVEL", "debug", &|c| {
                c.log_level == log::LevelFilter::Debug
            }),
            ("CONNECTOR_LOG_LEVEL", "notset", &|c| {
                c.log_level == log::LevelFilter::Debug
            }),
            ("CONNECTOR_TYPE", "STREAM", &|c| c.connector.is_none()),
            ("CONNECTOR_TYPE", "stream", &|c| c.connector.is_none()),
            ("CONNECTOR_AUTO_CREATE_SERVICE_ACCOUNT", "false", &|c| {
                c.connector.is_none()
            }),
            ("CONNECTOR_ID", "ChangeMe", &|c| c.connector.is_none()),
            (
                "CONNECTOR_ID",
                "7c8a0e1e-1c47-4f1b-9d6a-1f1c2d3e4f50",
                &|c| {
                    c.connector
                        == Some(ConnectorSettings {
                            id: "7c8a0e1e-1c47-4f1b-9d6a-1f1c2d3e4f50".into(),
                            name: "StreamExporter".into(),
                            scope: vec!["stream-exporter".into()],
                        })
                },
            ),
        ];
        for (var, value, check) in cases {
            let c = with(&[(var, value)]).unwrap_or_else(|e| panic!("{var}={value}: {e}"));
            assert!(check(&c), "{var}={value}: {c:?}");
        }
    }

    #[test]
    fn reference_values_this_tool_does_not_share_are_refused_with_the_reason() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "CONNECTOR_LIVE_STREAM_START_TIMESTAMP",
                "1718446500",
                "epoch seconds",
            ),
            (
                "CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE",
                "yesterday",
                "neither false, none nor a date",
            ),
            (
                "CONNECTOR_LIVE_STREAM_RECOVER_ISO_DATE",
                "2024-06-15X10",
                "neither false, none nor a date",
            ),
            ("CONNECTOR_LOG_LEVEL", "verbose", "critical"),
            ("CONNECTOR_TYPE", "EXTERNAL_IMPORT", "`STREAM` connector"),
            (
                "CONNECTOR_AUTO_CREATE_SERVICE_ACCOUNT",
                "true",
                "creates no service account",
            ),
            ("CONNECTOR_ID", "not an id", "UUID"),
            ("OPENCTI_CUSTOM_HEADERS", "x-a:1;broken", "without `:`"),
            (
                "OPENCTI_CUSTOM_HEADERS",
                "Authorization:Bearer x",
                "sets itself",
            ),
            (
                "HTTPS_CA_CERTIFICATES",
                "/no/such/ca.pem",
                "neither PEM text",
            ),
        ];
        for (var, value, hint) in cases {
            let e = with(&[(var, value)]).expect_err(&format!("{var}={value} accepted"));
            let text = e.to_string();
            assert!(text.contains(hint), "{var}={value}: {text}");
        }
        // A custom header's value is never printed, not even in an error.
        let e = with(&[("OPENCTI_CUSTOM_HEADERS", "x-key:hunter22;oops")]).unwrap_err();
        assert!(!e.to_string().contains("hunter22"), "{e}");
    }

    #[test]
    fn custom_headers_are_read_like_pycti() {
        let h = parse_custom_headers(" X-Api-Key : abc:def ; ;cf-access-client-id:id1;").unwrap();
        let h: Vec<(&str, &str)> = h.iter().map(|(n, v)| (n.as_str(), v.expose())).collect();
        assert_eq!(
            h,
            vec![("X-Api-Key", "abc:def"), ("cf-access-client-id", "id1")]
        );
        assert!(parse_custom_headers("").unwrap().is_empty());
        let c = with(&[("OPENCTI_CUSTOM_HEADERS", "x-secret:s3cr3t-value")]).unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t-value"));
    }

    #[test]
    fn the_proxy_is_chosen_like_python_requests() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
        let cases: &[Case] = &[
            (
                "https://cti.example.org",
                &[("HTTPS_PROXY", "http://p:3128")],
                Some("http://p:3128"),
            ),
            (
                "https://cti.example.org",
                &[
                    ("https_proxy", "http://low:1"),
                    ("HTTPS_PROXY", "http://up:1"),
                ],
                Some("http://low:1"),
            ),
            (
                "https://cti.example.org",
                &[("HTTP_PROXY", "http://p:3128")],
                None,
            ),
            (
                "http://cti.example.org",
                &[("HTTP_PROXY", "http://p:3128")],
                Some("http://p:3128"),
            ),
            (
                "http://cti.example.org",
                &[("ALL_PROXY", "http://all:1")],
                Some("http://all:1"),
            ),
            (
                "https://cti.example.org",
                &[("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", "example.org")],
                None,
            ),
            (
                "https://cti.example.org",
                &[("HTTPS_PROXY", "http://p:1"), ("no_proxy", ".example.org")],
                None,
            ),
            (
                "https://cti.example.org",
                &[("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", "*")],
                None,
            ),
            (
                "https://cti.example.org",
                &[("HTTPS_PROXY", "http://p:1"), ("NO_PROXY", "ample.org")],
                Some("http://p:1"),
            ),
            (
                "https://cti.example.org:8443",
                &[
                    ("HTTPS_PROXY", "http://p:1"),
                    ("NO_PROXY", "cti.example.org:443"),
                ],
                Some("http://p:1"),
            ),
            (
                "https://cti.example.org:8443",
                &[
                    ("HTTPS_PROXY", "http://p:1"),
                    ("NO_PROXY", "cti.example.org:8443"),
                ],
                None,
            ),
            (
                "http://10.1.2.3:4000",
                &[("HTTP_PROXY", "http://p:1"), ("NO_PROXY", "10.0.0.0/8")],
                None,
            ),
            (
                "http://11.1.2.3:4000",
                &[
                    ("HTTP_PROXY", "http://p:1"),
                    ("NO_PROXY", "10.0.0.0/8, localhost"),
                ],
                Some("http://p:1"),
            ),
            (
                "http://localhost:4000",
                &[
                    ("HTTP_PROXY", "http://p:1"),
                    ("NO_PROXY", "10.0.0.0/8, localhost"),
                ],
                None,
            ),
            (
                "http://[::1]:4000",
                &[("HTTP_PROXY", "http://p:1"), ("NO_PROXY", "::1")],
                None,
            ),
        ];
        for (url, vars, want) in cases {
            let got = proxy_for(url, &env(vars)).map(|(_, v)| v);
            assert_eq!(got.as_deref(), *want, "{url} {vars:?}");
        }
        let e = with(&[
            ("OPENCTI_URL", "https://cti.example.org"),
            ("HTTPS_PROXY", "socks5://p:1080"),
        ])
        .unwrap_err();
        assert_eq!(e.key, "HTTPS_PROXY", "{e}");
        let c = with(&[("HTTP_PROXY", "http://user:pw-secret@p:3128")]).unwrap();
        assert!(c.opencti().unwrap().proxy.is_some());
        assert!(!format!("{c:?}").contains("pw-secret"));
    }
}
